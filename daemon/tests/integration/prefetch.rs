//! `--prefetch`: a manifest GET starts the downloads of the blobs it names.

use crate::common::oci::{self, Blob, Pusher, OCI_MANIFEST};
use crate::common::registry::{Registry, RegistryAuth};
use crate::common::shoald::Shoald;
use crate::common::{http, wait_until};

fn committed(s: &Shoald, blob: &Blob) -> bool {
    let hex = blob.digest.trim_start_matches("sha256:");
    s.data_dir.join("blobs/sha256").join(hex).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_get_prefetches_its_blobs_only_when_enabled_and_within_the_limit() {
    let Some(mut reg) = Registry::start(RegistryAuth::None).await else {
        return;
    };
    let img = oci::image(31, OCI_MANIFEST);
    Pusher::new(&reg.host(), None)
        .artifact("models/llm", "v1", &img)
        .await;
    let host = reg.host();
    let common = ["--insecure-registry", &host, "--upstream-retries", "0"];
    let with = |extra: &[&'static str]| -> Vec<&str> {
        common
            .iter()
            .copied()
            .chain(extra.iter().copied())
            .collect()
    };
    let on = Shoald::start(&with(&["--prefetch", "1GiB"])).await;
    let off = Shoald::start(&with(&[])).await;
    let too_small = Shoald::start(&with(&["--prefetch", "1KiB"])).await;
    let blobs: Vec<&Blob> = std::iter::once(&img.config).chain(&img.layers).collect();
    let total: usize = blobs.iter().map(|b| b.bytes.len()).sum();
    assert!(total > 1024, "the 1KiB limit must be below the image");

    let c = http();
    for s in [&on, &off, &too_small] {
        // HEAD names no blobs to the client, so it starts nothing.
        let url = s.url(&format!("/v2/models/llm/manifests/v1?ns={host}"));
        let r = c.head(&url).header("accept", OCI_MANIFEST).send().await;
        assert_eq!(r.expect("HEAD manifest").status(), 200);
        let r = c.get(&url).header("accept", OCI_MANIFEST).send().await;
        let r = r.expect("GET manifest");
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.expect("manifest body"), img.manifest);
    }
    assert!(
        wait_until(30, || blobs.iter().all(|b| committed(&on, b))).await,
        "prefetch did not fetch every blob: {}",
        on.logs()
    );
    assert!(
        too_small.logs().contains("OverLimit"),
        "{}",
        too_small.logs()
    );

    // With the origin gone, only the prefetching node has the blobs.
    reg.stop();
    for b in &blobs {
        let path = format!("/v2/models/llm/blobs/{}?ns={host}", b.digest);
        let r = c.get(on.url(&path)).send().await.expect("GET blob");
        assert_eq!(r.status(), 200, "{}", b.digest);
        assert_eq!(r.bytes().await.expect("blob body"), b.bytes);
        for s in [&off, &too_small] {
            assert!(
                !committed(s, b),
                "{} was fetched without prefetch",
                b.digest
            );
            let r = c.get(s.url(&path)).send().await.expect("GET blob");
            assert!(r.status().is_server_error(), "{}: {}", b.digest, r.status());
        }
    }
}
