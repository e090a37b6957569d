//! Crash safety and integrity: SIGKILL mid-download, a lost or corrupt index, a lying
//! origin, the disk quota and a full filesystem.

use std::sync::atomic::Ordering;

use crate::common::oci::{self, Blob, Pusher, OCI_MANIFEST};
use crate::common::proxy::Proxy;
use crate::common::registry::{Registry, RegistryAuth};
use crate::common::shoald::Shoald;
use crate::common::{http, random_bytes, wait_until};
use crate::shared_download::fetch_digest;

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_download_resumes_from_stored_chunks() {
    let Some(reg) = Registry::start(RegistryAuth::None).await else {
        return;
    };
    let blob = Blob::new("application/octet-stream", random_bytes(256 * MIB, 9));
    Pusher::new(&reg.host(), None)
        .blob("big/crash", &blob)
        .await;
    let proxy = Proxy::start(reg.addr).await;
    proxy.state.rate.store(64 * MIB as u64, Ordering::SeqCst);
    let mut s = Shoald::start(&["--insecure-registry", &proxy.host()]).await;
    let url = s.url(&format!(
        "/v2/big/crash/blobs/{}?ns={}",
        blob.digest,
        proxy.host()
    ));
    let client = tokio::spawn(fetch_digest_lenient(url.clone()));
    let partial = s
        .data_dir
        .join("partial")
        .join(blob.digest.trim_start_matches("sha256:"));
    let reached = wait_until(60, || {
        std::fs::metadata(&partial).is_ok_and(|m| m.len() >= 96 * MIB as u64)
    })
    .await;
    assert!(reached, "download did not progress: {}", s.logs());
    s.kill9();
    let _ = client.await;
    let before = proxy.egress();
    proxy.state.rate.store(0, Ordering::SeqCst);

    s.restart().await;
    let (status, digest, n) = fetch_digest(http(), url).await;
    assert_eq!((status, n), (200, blob.bytes.len()));
    assert_eq!(digest, blob.digest, "resumed blob verifies");
    let refetched = proxy.egress() - before;
    assert!(
        refetched <= (blob.bytes.len() - 64 * MIB) as u64,
        "resumed from stored chunks, but refetched {refetched} bytes"
    );
    assert!(s.logs().contains("resuming partial blob"));
    assert!(!partial.exists(), "staging file moved into place");
}

async fn fetch_digest_lenient(url: String) {
    if let Ok(r) = http().get(url).send().await {
        let _ = r.bytes().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_or_corrupt_index_is_rebuilt_from_data_files() {
    let Some(mut reg) = Registry::start(RegistryAuth::None).await else {
        return;
    };
    let img = oci::image(40, OCI_MANIFEST);
    Pusher::new(&reg.host(), None)
        .artifact("library/keep", "v1", &img)
        .await;
    let ns = reg.host();
    let mut s = Shoald::start(&["--insecure-registry", &ns]).await;
    let c = http();
    let manifest_url = s.url(&format!(
        "/v2/library/keep/manifests/{}?ns={ns}",
        img.digest
    ));
    assert_eq!(c.get(&manifest_url).send().await.unwrap().status(), 200);
    for l in img.layers.iter().chain([&img.config]) {
        let r = c
            .get(s.url(&format!("/v2/library/keep/blobs/{}?ns={ns}", l.digest)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.bytes().await.unwrap(), l.bytes);
    }
    reg.stop();

    let check_all = |s: &Shoald| {
        let c = c.clone();
        let manifest_url = s.url(&format!(
            "/v2/library/keep/manifests/{}?ns={ns}",
            img.digest
        ));
        let blob_urls: Vec<(String, Vec<u8>)> = img
            .layers
            .iter()
            .chain([&img.config])
            .map(|l| {
                (
                    s.url(&format!("/v2/library/keep/blobs/{}?ns={ns}", l.digest)),
                    l.bytes.clone(),
                )
            })
            .collect();
        let manifest = img.manifest.clone();
        async move {
            let r = c.get(&manifest_url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(
                r.headers()["content-type"],
                OCI_MANIFEST,
                "media type survives the rebuild"
            );
            assert_eq!(r.bytes().await.unwrap(), manifest);
            for (url, bytes) in blob_urls {
                let r = c.get(&url).send().await.unwrap();
                assert_eq!(r.status(), 200, "{url}");
                assert_eq!(r.bytes().await.unwrap(), bytes);
            }
        }
    };

    // Deleted index.
    s.stop();
    std::fs::remove_dir_all(s.data_dir.join("index")).unwrap();
    s.restart().await;
    check_all(&s).await;
    assert!(s.logs().contains("reconciled metadata index"));

    // Index files overwritten with garbage (what a torn sled write can look like).
    s.stop();
    for e in walk(&s.data_dir.join("index")) {
        std::fs::write(&e, random_bytes(4096, 3)).unwrap();
    }
    s.restart().await;
    check_all(&s).await;

    // A committed blob corrupted on disk is dropped at start-up, never served.
    s.stop();
    let victim = &img.layers[1];
    let path = s.blob_path(&victim.digest);
    std::fs::remove_dir_all(s.data_dir.join("index")).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    std::fs::remove_file(path.with_extension("meta")).unwrap();
    s.restart().await;
    let r = c
        .get(s.url(&format!("/v2/library/keep/blobs/{}?ns={ns}", victim.digest)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        502,
        "corrupt blob is not served (origin is down)"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_serving_wrong_bytes_is_never_committed() {
    let Some(mut reg) = Registry::start(RegistryAuth::None).await else {
        return;
    };
    let blob = Blob::new("application/octet-stream", random_bytes(6 * MIB, 12));
    Pusher::new(&reg.host(), None)
        .blob("lying/origin", &blob)
        .await;
    // Flip bytes inside the registry's own storage: it serves them without checking.
    let hex = blob.digest.trim_start_matches("sha256:");
    let data = reg.data_dir().join(format!(
        "data/docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[5 * MIB] ^= 0x55;
    std::fs::write(&data, bytes).unwrap();

    let s = Shoald::start(&["--insecure-registry", &reg.host()]).await;
    let url = s.url(&format!(
        "/v2/lying/origin/blobs/{}?ns={}",
        blob.digest,
        reg.host()
    ));
    let r = http().get(&url).send().await.unwrap();
    let body = r.bytes().await;
    assert!(
        body.is_err(),
        "a blob that fails sha256 must not be delivered as complete"
    );
    assert!(s.logs().contains("failed sha256 verification"));
    // Not committed: with the origin gone it is not served from the store.
    reg.stop();
    let r = http().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let blob_file = s.blob_path(hex);
    assert!(!blob_file.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_evicts_lru_and_refuses_what_cannot_fit() {
    let Some(reg) = Registry::start(RegistryAuth::None).await else {
        return;
    };
    let push = Pusher::new(&reg.host(), None);
    let blobs: Vec<Blob> = (0..3)
        .map(|i| Blob::new("application/octet-stream", random_bytes(4 * MIB, 20 + i)))
        .collect();
    let too_big = Blob::new("application/octet-stream", random_bytes(11 * MIB, 30));
    for b in blobs.iter().chain([&too_big]) {
        push.blob("quota/test", b).await;
    }
    let s = Shoald::start(&["--insecure-registry", &reg.host(), "--max-disk", "10MiB"]).await;
    let url = |b: &Blob| {
        s.url(&format!(
            "/v2/quota/test/blobs/{}?ns={}",
            b.digest,
            reg.host()
        ))
    };
    for b in &blobs {
        let (status, digest, _) = fetch_digest(http(), url(b)).await;
        assert_eq!((status, digest.as_str()), (200, b.digest.as_str()));
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await; // distinct access seconds
    }
    let stored = |b: &Blob| s.blob_path(&b.digest).exists();
    assert!(!stored(&blobs[0]), "least recently used blob evicted");
    assert!(stored(&blobs[1]) && stored(&blobs[2]));

    let r = http().get(url(&too_big)).send().await.unwrap();
    assert_eq!(r.status(), 507);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("quota"),
        "{body}"
    );
    assert!(!stored(&too_big));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_filesystem_is_a_clear_error_and_no_corrupt_blob() {
    if !crate::common::require_root() {
        return;
    }
    let Some(reg) = Registry::start(RegistryAuth::None).await else {
        return;
    };
    let small = Blob::new("application/octet-stream", random_bytes(MIB, 40));
    let big = Blob::new("application/octet-stream", random_bytes(24 * MIB, 41));
    let push = Pusher::new(&reg.host(), None);
    push.blob("disk/full", &small).await;
    push.blob("disk/full", &big).await;
    let mnt = tempfile::tempdir().unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(mnt.path())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "mounting a tmpfs needs root with CAP_SYS_ADMIN");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _guard = Unmount(mnt.path().to_owned());
    let mut s = Shoald::start_in(
        &mnt.path().join("data"),
        &["--insecure-registry", &reg.host()],
    )
    .await;
    let base = s.url("");
    let url = |b: &Blob| format!("{base}/v2/disk/full/blobs/{}?ns={}", b.digest, reg.host());
    let r = http().get(url(&big)).send().await.unwrap();
    // Headers may already be out when the disk fills: then the body is aborted.
    if r.status() == 200 {
        assert!(
            r.bytes().await.is_err(),
            "a download that hit a full disk must not complete"
        );
    } else {
        assert_eq!(r.status(), 507);
    }
    assert!(s.logs().contains("disk full"), "{}", s.logs());
    assert!(!s.blob_path(&big.digest).exists());
    // The store still works once space is there again, and restarts cleanly.
    assert!(
        !s.data_dir
            .join("partial")
            .join(big.digest.trim_start_matches("sha256:"))
            .exists(),
        "space given back"
    );
    let (status, digest, _) = fetch_digest(http(), url(&small)).await;
    assert_eq!((status, digest), (200, small.digest.clone()));
    s.restart().await;
    let (status, digest, _) = fetch_digest(http(), url(&small)).await;
    assert_eq!((status, digest), (200, small.digest.clone()));
}
