//! Several real shoald processes forming a swarm, each on its own loopback address
//! (127.0.0.x), behind one counting proxy in front of docker-registry.

use std::path::{Path, PathBuf};

use super::proxy::Proxy;
use super::registry::{Registry, RegistryAuth};
use super::shoald::Shoald;

/// A free UDP port on `ip`.
pub fn free_udp_port(ip: &str) -> u16 {
    let [port] = free_udp_ports(ip);
    port
}

/// `N` distinct free UDP ports on `ip`. All are held at once before any is released:
/// asked one at a time, the OS can hand the same port out twice, and a node whose
/// libp2p and transfer addresses collide fails to start (seen in CI: "libp2p listen on
/// /ip4/127.0.0.11/udp/56136/quic-v1" with the transfer endpoint already there).
pub fn free_udp_ports<const N: usize>(ip: &str) -> [u16; N] {
    let sockets: Vec<std::net::UdpSocket> = (0..N)
        .map(|_| std::net::UdpSocket::bind((ip, 0)).expect("udp port"))
        .collect();
    std::array::from_fn(|i| sockets[i].local_addr().expect("udp port").port())
}

/// One node's addresses.
pub struct Node {
    pub shoald: Shoald,
    /// `IP:PORT` of its libp2p socket.
    pub p2p: String,
}

/// The origin behind a counting proxy, plus the nodes.
pub struct Swarm {
    pub registry: Registry,
    pub proxy: Proxy,
    pub nodes: Vec<Node>,
    pub dir: tempfile::TempDir,
    pub secret: PathBuf,
}

impl Swarm {
    /// docker-registry and a proxy; no nodes yet. `None` outside CI without docker-registry.
    pub async fn origin() -> Option<Swarm> {
        let registry = Registry::start(RegistryAuth::None).await?;
        let proxy = Proxy::start(registry.addr).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("cluster-secret");
        std::fs::write(&secret, "the shoal test swarm\n").expect("secret");
        Some(Swarm {
            registry,
            proxy,
            nodes: Vec::new(),
            dir,
            secret,
        })
    }

    /// Starts node number `self.nodes.len()` on 127.0.0.(10+n), bootstrapping from
    /// node 0, with the swarm's secret unless `secret` overrides it.
    pub async fn add_node(&mut self, secret: Option<&Path>, extra: &[&str]) -> usize {
        self.add_node_with_env(secret, extra, &[]).await
    }

    /// [`Swarm::add_node`] with extra environment variables (fault injection).
    pub async fn add_node_with_env(
        &mut self,
        secret: Option<&Path>,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> usize {
        let n = self.nodes.len();
        let ip = format!("127.0.0.{}", 10 + n);
        let [p2p, transfer] = free_udp_ports(&ip).map(|port| format!("{ip}:{port}"));
        let data_dir = self.dir.path().join(format!("node{n}"));
        let origin = self.proxy.host();
        let secret = secret
            .unwrap_or(&self.secret)
            .to_str()
            .expect("utf-8 path")
            .to_owned();
        let mut args: Vec<String> = [
            "--insecure-registry",
            &origin,
            "--default-upstream",
            &origin,
            "--p2p-addr",
            &p2p,
            "--transfer-addr",
            &transfer,
            "--cluster-secret-file",
            &secret,
            "--upstream-retries",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(first) = self.nodes.first() {
            args.push("--bootstrap".into());
            args.push(first.p2p.clone());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let shoald = Shoald::start_with_env(&data_dir, &args, envs).await;
        self.nodes.push(Node { shoald, p2p });
        n
    }

    /// Waits until node `n` has identified `peers` other nodes (from its log).
    pub async fn wait_peers(&self, n: usize, peers: usize) {
        let node = &self.nodes[n].shoald;
        let ok = super::wait_until(20, || {
            node.logs().matches("peer identified").count() >= peers
        })
        .await;
        assert!(ok, "node {n} did not see {peers} peers: {}", node.logs());
    }

    /// GETs a blob through node `n`'s mirror.
    pub async fn get_blob(&self, n: usize, repo: &str, digest: &str) -> reqwest::Response {
        super::http()
            .get(
                self.nodes[n]
                    .shoald
                    .url(&format!("/v2/{repo}/blobs/{digest}")),
            )
            .send()
            .await
            .expect("mirror reachable")
    }

    /// GETs a blob through node `n` and checks its bytes against `digest` (streaming).
    pub async fn get_blob_verified(
        &self,
        n: usize,
        repo: &str,
        digest: &str,
    ) -> Result<u64, String> {
        use futures::StreamExt as _;
        use sha2::Digest as _;
        let r = self.get_blob(n, repo, digest).await;
        if r.status() != 200 {
            return Err(format!("node {n}: status {}", r.status()));
        }
        let mut sha = sha2::Sha256::new();
        let mut len = 0u64;
        let mut body = r.bytes_stream();
        while let Some(piece) = body.next().await {
            let piece = piece.map_err(|e| format!("node {n}: body broke: {e}"))?;
            len += piece.len() as u64;
            sha.update(&piece);
        }
        let got = format!("sha256:{}", hex::encode(sha.finalize()));
        if got != digest {
            return Err(format!("node {n}: got {got}, want {digest}"));
        }
        Ok(len)
    }

    /// Origin egress so far (bytes the origin sent through the proxy).
    pub fn egress(&self) -> u64 {
        self.proxy.egress()
    }
}
