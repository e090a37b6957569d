//! Test support: real components started by the tests themselves.
//!
//! Under `CI=true` a missing component fails the test; elsewhere it is skipped with a
//! message, so a developer without containerd can still run the rest.

pub mod containerd;
pub mod oci;
pub mod proxy;
pub mod registry;
pub mod shoald;
pub mod swarm;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;

/// Finds `bin` on PATH (and the sbin dirs). Under CI a missing binary panics.
pub fn require(bin: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"])
        .map(|d| PathBuf::from(d).join(bin))
        .find(|p| p.is_file());
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{bin} is required under CI=true but is not installed (apt-get install it; see .ci/run)");
        }
        eprintln!("SKIP: {bin} not installed");
    }
    found
}

/// True when running as root (containerd needs it). Under CI not being root panics.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("this test needs root under CI=true");
        }
        eprintln!("SKIP: needs root");
    }
    root
}

/// Skips the calling test (returns) when a component is missing outside CI.
#[macro_export]
macro_rules! need {
    ($bin:expr) => {
        match $crate::common::require($bin) {
            Some(p) => p,
            None => return,
        }
    };
}

/// A currently free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// A currently free loopback address.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Deterministic pseudo-random bytes (xorshift), fast enough for hundreds of MiB.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    out
}

/// `sha256:<hex>` of bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// Polls `f` every 50 ms until it returns true or `secs` pass.
pub async fn wait_until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    f()
}

/// An HTTP client for talking to shoald and registries in tests.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// docker-registry holding one OCI image at `repo:tag`, and a shoald whose default
/// upstream (and only insecure registry) it is. `None` outside CI without docker-registry.
pub async fn origin_with_image(
    repo: &str,
    tag: &str,
    seed: u64,
) -> Option<(registry::Registry, oci::Artifact, shoald::Shoald)> {
    let reg = registry::Registry::start(registry::RegistryAuth::None).await?;
    let img = oci::image(seed, oci::OCI_MANIFEST);
    oci::Pusher::new(&reg.host(), None)
        .artifact(repo, tag, &img)
        .await;
    let host = reg.host();
    let s =
        shoald::Shoald::start(&["--insecure-registry", &host, "--default-upstream", &host]).await;
    Some((reg, img, s))
}
