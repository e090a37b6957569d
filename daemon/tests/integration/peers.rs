//! The real shoald serving chunks to peers over its authenticated QUIC endpoint. (The
//! swarm that consumes them is issue 3's next step; here a test-process client plays
//! the peer.)

use std::sync::Arc;

use shoal_daemon::net::identity;
use shoal_daemon::net::transfer::{Transfer, TransferOptions};
use shoal_daemon::net::NetError;
use shoal_daemon::store::Store;
use shoal_proto::Digest;

use crate::common::http;
use crate::common::oci::{self, Pusher};
use crate::common::registry::{Registry, RegistryAuth};
use crate::common::shoald::Shoald;
use crate::common::swarm::free_udp_port;

fn client(secret: &[u8]) -> (tempfile::TempDir, Arc<Transfer>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), 64 * 1024, 0).unwrap());
    let options = TransferOptions {
        secret: secret.to_vec(),
        ..TransferOptions::default()
    };
    let t = Transfer::bind(
        "127.0.0.1:0".parse().unwrap(),
        libp2p_identity::Keypair::generate_ed25519(),
        options,
        store,
    )
    .unwrap();
    (dir, t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shoald_serves_verified_chunks_to_authenticated_peers_only() {
    let Some(reg) = Registry::start(RegistryAuth::None).await else {
        return;
    };
    let model = oci::model(80, &[5 * 1024 * 1024]);
    Pusher::new(&reg.host(), None)
        .artifact("models/served", "v1", &model)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "swarm-secret\n").unwrap();
    let transfer_addr = format!("127.0.0.1:{}", free_udp_port("127.0.0.1"));
    let data_dir = dir.path().join("data");
    let args = [
        "--insecure-registry",
        &reg.host(),
        "--transfer-addr",
        &transfer_addr,
        "--cluster-secret-file",
        secret_file.to_str().unwrap(),
    ];
    let mut s = Shoald::start_in(&data_dir, &args).await;
    let layer = &model.layers[0];
    let r = http()
        .get(s.url(&format!(
            "/v2/models/served/blobs/{}?ns={}",
            layer.digest,
            reg.host()
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap(), layer.bytes);

    let peer_id = identity::load_or_create(&data_dir)
        .unwrap()
        .public()
        .to_peer_id();
    assert!(
        s.logs().contains(&peer_id.to_string()),
        "shoald logs its PeerId"
    );
    let digest: Digest = layer.digest.parse().unwrap();
    let addr = transfer_addr.parse().unwrap();
    let (_d1, peer) = client(b"swarm-secret");
    let conn = peer.connect(addr, Some(peer_id)).await.unwrap();
    let index = conn.fetch_index(digest).await.unwrap();
    assert_eq!(index.layout.size, layer.bytes.len() as u64);
    for chunk in 0..index.layout.count() {
        let bytes = conn.fetch_chunk(digest, chunk, 0, 64 << 20).await.unwrap();
        assert_eq!(
            blake3::hash(&bytes).as_bytes(),
            &index.hashes[chunk as usize].0,
            "chunk {chunk} matches the index"
        );
        let range = index.layout.range(chunk).unwrap();
        assert_eq!(
            &bytes[..],
            &layer.bytes[range.start as usize..range.end as usize]
        );
    }

    // Malformed and oversized frames drop that connection; the daemon keeps serving.
    #[cfg(feature = "fault-injection")]
    let version = shoal_proto::wire::VERSION;
    #[cfg(feature = "fault-injection")]
    for hostile in [
        vec![0xff, 0xff, 0xff, 0xff, version, 4], // 4 GiB length prefix
        vec![0, 0, 0, 3, 9, 4, 0],                // unknown version
        vec![0, 0, 0, 8, version, 4, 1, 2, 3, 4, 5, 6], // Request cut short
        vec![0, 0, 0, 2, version, 200],           // unknown type
    ] {
        let bad = peer.connect(addr, Some(peer_id)).await.unwrap();
        bad.send_raw(&hostile).await.unwrap();
        assert!(
            bad.fetch_index(digest).await.is_err(),
            "survived {hostile:?}"
        );
        let good = peer.connect(addr, Some(peer_id)).await.unwrap();
        assert!(good.fetch_chunk(digest, 0, 0, 64 << 20).await.is_ok());
    }

    // The wrong secret is refused, and the refusal is logged.
    let (_d2, intruder) = client(b"not-the-secret");
    assert!(matches!(
        intruder.connect(addr, None).await,
        Err(NetError::Unauthenticated(_))
    ));
    assert!(
        crate::common::wait_until(5, || s.logs().contains("cannot prove the cluster secret")).await
    );

    // The identity survives a restart.
    s.restart().await;
    let conn = peer
        .connect(addr, Some(peer_id))
        .await
        .expect("same PeerId after restart");
    assert_eq!(
        conn.fetch_chunk(digest, 0, 0, 64 << 20)
            .await
            .unwrap()
            .len(),
        shoal_proto::DEFAULT_CHUNK_SIZE as usize
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shoald_without_a_secret_warns_loudly() {
    let transfer_addr = format!("127.0.0.1:{}", free_udp_port("127.0.0.1"));
    let s = Shoald::start(&["--transfer-addr", &transfer_addr]).await;
    assert!(s.logs().contains("NO CLUSTER SECRET"));
}

/// A daemon that does not drain its transfer socket in time loses datagrams in the
/// kernel. Those drops show in `/metrics` and in a warning that names the sysctl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_dropped_at_the_transfer_socket_are_counted_and_reported() {
    let transfer_addr = format!("127.0.0.1:{}", free_udp_port("127.0.0.1"));
    let s = Shoald::start(&["--transfer-addr", &transfer_addr]).await;
    let body = s.metrics_text().await;
    assert!(
        body.contains("shoal_transfer_receive_drops_total 0"),
        "{body}"
    );
    // An idle node's receive budget is its configured floor, 1 MiB by default (read
    // into the metrics at start and every 10 s).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while s.metric("shoal_transfer_receive_budget_bytes").await != 1048576.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "receive budget never reported"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Stopped, the daemon reads nothing; 20,000 datagrams are more than its 8 MiB
    // receive buffer holds.
    let signal = |sig: &str| {
        let pid = s.pid().to_string();
        let status = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill {sig} {pid}");
    };
    signal("-STOP");
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..20_000 {
        sender.send_to(&[0u8; 1200], &transfer_addr).unwrap();
    }
    signal("-CONT");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut dropped = 0.0;
    while dropped == 0.0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        dropped = s.metric("shoal_transfer_receive_drops_total").await;
    }
    assert!(
        dropped > 0.0 && dropped < 20_000.0,
        "dropped {dropped}: {}",
        s.logs()
    );
    let warned = "dropped datagrams at the transfer socket";
    while !s.logs().contains(warned) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let logs = s.logs();
    assert!(
        logs.contains(warned) && logs.contains("net.core.rmem_max"),
        "{logs}"
    );
}
