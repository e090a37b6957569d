//! One upstream fetch, many readers; broken connections resume with Range.

use std::sync::atomic::Ordering;

use futures::StreamExt;
use sha2::Digest as _;

use crate::common::oci::{Blob, Pusher};
use crate::common::proxy::Proxy;
use crate::common::registry::{Registry, RegistryAuth};
use crate::common::shoald::Shoald;
use crate::common::{http, random_bytes};

const MIB: usize = 1024 * 1024;

pub async fn fetch_digest(c: reqwest::Client, url: String) -> (u16, String, usize) {
    fetch_range_digest(c, url, None).await
}

async fn fetch_range_digest(
    c: reqwest::Client,
    url: String,
    range: Option<String>,
) -> (u16, String, usize) {
    let mut req = c.get(url);
    if let Some(r) = range {
        req = req.header("range", r);
    }
    let r = req.send().await.expect("GET");
    let status = r.status().as_u16();
    let mut h = sha2::Sha256::new();
    let mut n = 0;
    let mut body = r.bytes_stream();
    while let Some(piece) = body.next().await {
        let piece = piece.expect("body");
        n += piece.len();
        h.update(&piece);
    }
    (status, format!("sha256:{}", hex::encode(h.finalize())), n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_concurrent_clients_cause_one_upstream_fetch() {
    let Some(reg) = Registry::start(RegistryAuth::None).await else {
        return;
    };
    let blob = Blob::new("application/octet-stream", random_bytes(256 * MIB, 7));
    Pusher::new(&reg.host(), None)
        .blob("big/model", &blob)
        .await;
    let proxy = Proxy::start(reg.addr).await;
    // Slow the origin so every client joins while the download is running.
    proxy.state.rate.store(160 * MIB as u64, Ordering::SeqCst);
    let s = Shoald::start(&["--insecure-registry", &proxy.host()]).await;
    let url = s.url(&format!(
        "/v2/big/model/blobs/{}?ns={}",
        blob.digest,
        proxy.host()
    ));
    let c = http();

    // One client gives up early; that must not cancel the fetch for the others.
    let quitter = {
        let (c, url) = (c.clone(), url.clone());
        tokio::spawn(async move {
            let r = c
                .get(url)
                .header("range", "bytes=0-")
                .send()
                .await
                .expect("GET");
            let mut body = r.bytes_stream();
            let _ = body.next().await;
        })
    };
    // Every third client asks for a Range (the tail from 100 MiB on) instead of it all.
    let tail_from = 100 * MIB;
    let tail_digest = crate::common::sha256_digest(&blob.bytes[tail_from..]);
    let clients: Vec<_> = (0..10)
        .map(|i| {
            let (c, url) = (c.clone(), url.clone());
            let range = (i % 3 == 2).then(|| format!("bytes={tail_from}-"));
            tokio::spawn(async move {
                if i % 3 == 1 {
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                }
                (i, fetch_range_digest(c, url, range).await)
            })
        })
        .collect();
    quitter.await.unwrap();
    for c in clients {
        let (i, (status, digest, n)) = c.await.unwrap();
        if i % 3 == 2 {
            assert_eq!((status, n), (206, blob.bytes.len() - tail_from));
            assert_eq!(digest, tail_digest);
        } else {
            assert_eq!((status, n), (200, blob.bytes.len()));
            assert_eq!(digest, blob.digest);
        }
    }
    // Streaming, not buffering: serving 256 MiB to ten clients stays far below its size.
    let peak = s.peak_rss();
    eprintln!("shoald peak RSS: {} MiB", peak / MIB as u64);
    assert!(
        peak < 96 * MIB as u64,
        "shoald peak RSS {} MiB for a 256 MiB blob",
        peak / MIB as u64
    );
    let egress = proxy.egress();
    assert!(egress >= blob.bytes.len() as u64, "egress {egress}");
    assert!(
        egress < (blob.bytes.len() + MIB) as u64,
        "upstream served the blob once, not {egress} bytes"
    );
    // Cached now: another GET costs the origin nothing.
    let (_, digest, _) = fetch_digest(c.clone(), url).await;
    assert_eq!(digest, blob.digest);
    assert_eq!(proxy.egress(), egress);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_upstream_body_resumes_with_range() {
    let Some(reg) = Registry::start(RegistryAuth::None).await else {
        return;
    };
    let blob = Blob::new("application/octet-stream", random_bytes(48 * MIB, 8));
    Pusher::new(&reg.host(), None)
        .blob("big/resume", &blob)
        .await;
    let proxy = Proxy::start(reg.addr).await;
    proxy
        .state
        .cut_after
        .store(20 * MIB as u64, Ordering::SeqCst);
    let s = Shoald::start(&["--insecure-registry", &proxy.host()]).await;
    let url = s.url(&format!(
        "/v2/big/resume/blobs/{}?ns={}",
        blob.digest,
        proxy.host()
    ));
    let (status, digest, n) = fetch_digest(http(), url).await;
    assert_eq!((status, n), (200, blob.bytes.len()));
    assert_eq!(digest, blob.digest);
    let egress = proxy.egress();
    assert!(
        egress < (blob.bytes.len() + MIB) as u64,
        "resumed, not restarted: {egress} bytes from origin"
    );
    assert!(s.logs().contains("resuming with Range"));
}
