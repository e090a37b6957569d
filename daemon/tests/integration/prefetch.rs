//! `--prefetch`: the first whole GET of a layer starts the downloads of the image's
//! other blobs; a manifest or config GET, or a ranged read, starts nothing.

use crate::common::oci::{self, Blob, Pusher, OCI_MANIFEST};
use crate::common::registry::{Registry, RegistryAuth};
use crate::common::shoald::Shoald;
use crate::common::{http, wait_until};

fn committed(s: &Shoald, blob: &Blob) -> bool {
    s.blob_path(&blob.digest).exists()
}

const PULL_BEGAN: &str = "a layer GET began a pull";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_get_prefetches_the_image_by_default_within_the_limit() {
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
    let on = Shoald::start(&with(&[])).await;
    let off = Shoald::start(&with(&["--prefetch", "0"])).await;
    let too_small = Shoald::start(&with(&["--prefetch", "1KiB"])).await;
    let [big, small] = [&img.layers[0], &img.layers[1]];
    assert!(
        big.bytes.len() > 1024,
        "the 1KiB limit must be below the big layer"
    );
    let blob_url =
        |s: &Shoald, b: &Blob| s.url(&format!("/v2/models/llm/blobs/{}?ns={host}", b.digest));

    let c = http();
    for s in [&on, &off, &too_small] {
        // What `skopeo inspect` does: the manifest, then the config.
        let url = s.url(&format!("/v2/models/llm/manifests/v1?ns={host}"));
        let r = c.head(&url).header("accept", OCI_MANIFEST).send().await;
        assert_eq!(r.expect("HEAD manifest").status(), 200);
        let r = c.get(&url).header("accept", OCI_MANIFEST).send().await;
        let r = r.expect("GET manifest");
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.expect("manifest body"), img.manifest);
        let r = c
            .get(blob_url(s, &img.config))
            .send()
            .await
            .expect("GET config");
        assert_eq!(r.bytes().await.expect("config body"), img.config.bytes);
        // What a lazy-pulling snapshotter does: a ranged read of a layer.
        let r = c
            .get(blob_url(s, small))
            .header("range", "bytes=0-9")
            .send()
            .await;
        let r = r.expect("ranged GET");
        assert_eq!(r.status(), 206);
        assert_eq!(r.bytes().await.expect("range body"), small.bytes[..10]);
    }
    // The decision is taken inside the request, so the log is complete here.
    assert!(!on.logs().contains(PULL_BEGAN), "{}", on.logs());
    assert!(!committed(&on, big), "prefetched before any layer GET");

    // containerd's pull: a whole GET of a layer (here the small one first).
    for s in [&on, &off, &too_small] {
        let r = c.get(blob_url(s, small)).send().await.expect("GET layer");
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.expect("layer body"), small.bytes);
    }
    assert!(
        wait_until(30, || committed(&on, big)).await,
        "prefetch did not fetch the big layer: {}",
        on.logs()
    );
    assert!(on.logs().contains(PULL_BEGAN), "{}", on.logs());
    assert!(
        too_small.logs().contains("OverLimit"),
        "{}",
        too_small.logs()
    );
    assert!(!off.logs().contains(PULL_BEGAN), "{}", off.logs());

    // With the origin gone, only the prefetching node has the big layer.
    reg.stop();
    let r = c.get(blob_url(&on, big)).send().await.expect("GET blob");
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.expect("blob body"), big.bytes);
    for s in [&off, &too_small] {
        assert!(!committed(s, big), "fetched without prefetch");
        let r = c.get(blob_url(s, big)).send().await.expect("GET blob");
        assert!(r.status().is_server_error(), "{}", r.status());
    }
}
