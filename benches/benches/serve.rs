//! Serving a cached 1 GiB blob to a local HTTP client: shoald against docker-registry
//! serving the same blob from its own storage, in the same run.
//!
//! ```sh
//! cargo build --release -p shoal-daemon && cargo bench -p shoal-benches --bench serve
//! ```
//!
//! Both servers run on loopback; the client streams the body and discards it. Five
//! alternating rounds after one warm-up each; medians and their ratio are printed.
//! (A custom harness, like `ingest`: one sample is a 1 GiB transfer of a second or so,
//! and criterion's statistics over that would take minutes on two cores for nothing a
//! median of alternating rounds does not show.)

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt as _;

const SIZE: usize = 1 << 30;
const ROUNDS: usize = 5;

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

fn shoald_path() -> PathBuf {
    let exe = std::env::current_exe().expect("bench path");
    // target/release/deps/serve-<hash> -> target/release/shoald
    let p = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("shoald"))
        .expect("target dir");
    assert!(
        p.exists(),
        "{} missing: run `cargo build --release -p shoal-daemon` first",
        p.display()
    );
    p
}

async fn wait_up(url: &str) {
    for _ in 0..200 {
        if reqwest::get(url).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} did not come up");
}

/// Seconds to stream `url`'s body, checking its length.
async fn fetch(client: &reqwest::Client, url: &str) -> f64 {
    let started = Instant::now();
    let r = client.get(url).send().await.expect("GET");
    assert!(r.status().is_success(), "{url}: {}", r.status());
    let mut n = 0usize;
    let mut body = r.bytes_stream();
    while let Some(piece) = body.next().await {
        n += piece.expect("body").len();
    }
    assert_eq!(n, SIZE, "{url}");
    started.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reg_port = free_port();
    let config = dir.path().join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{reg_port}\n",
            dir.path().join("registry").display()
        ),
    )
    .expect("config");
    let _registry = Kill(
        Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (apt-get install docker-registry)"),
    );
    let registry = format!("127.0.0.1:{reg_port}");
    wait_up(&format!("http://{registry}/v2/")).await;

    let client = reqwest::Client::new();
    let blob = shoal_benches::random_bytes(SIZE, 1);
    let digest = shoal_benches::push_blob(&client, &registry, "bench/serve", blob)
        .await
        .expect("push");

    let mirror_port = free_port();
    let _shoald = Kill(
        Command::new(shoald_path())
            .args([
                "--data-dir",
                &dir.path().join("shoal").display().to_string(),
            ])
            .args(["--mirror-addr", &format!("127.0.0.1:{mirror_port}")])
            .args([
                "--insecure-registry",
                &registry,
                "--default-upstream",
                &registry,
            ])
            .env("SHOAL_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("shoald"),
    );
    wait_up(&format!("http://127.0.0.1:{mirror_port}/healthz")).await;

    let from_registry = format!("http://{registry}/v2/bench/serve/blobs/{digest}");
    let from_shoald = format!("http://127.0.0.1:{mirror_port}/v2/bench/serve/blobs/{digest}");
    // Warm-up: fills shoald's store and both page caches.
    fetch(&client, &from_shoald).await;
    fetch(&client, &from_registry).await;
    let (mut reg, mut sho) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        reg.push(fetch(&client, &from_registry).await);
        sho.push(fetch(&client, &from_shoald).await);
    }
    let (reg, sho) = (median(reg), median(sho));
    let gbps = |s: f64| SIZE as f64 / s / 1e9;
    println!("serving a cached 1 GiB blob over loopback, median of {ROUNDS} alternating rounds:");
    println!("| server | median | GB/s | throughput ratio to docker-registry |");
    println!("|---|---|---|---|");
    println!(
        "| docker-registry (reference) | {:.0} ms | {:.2} | 1.00 |",
        reg * 1e3,
        gbps(reg)
    );
    println!(
        "| shoald | {:.0} ms | {:.2} | {:.2} |",
        sho * 1e3,
        gbps(sho),
        reg / sho
    );
}
