//! Several real shoald processes forming a swarm over libp2p discovery and the QUIC
//! transfer endpoint, with docker-registry (behind a counting proxy) as the origin.

use std::sync::atomic::Ordering;

use crate::common::oci::{self, Pusher};
use crate::common::swarm::Swarm;
use crate::common::wait_until;

/// A 2-node swarm (Kademlia's smallest case): B gets a blob from A with the origin down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_blob_from_peer_with_origin_down() {
    b_gets_the_blob_from_a_with_the_origin_down(90, &[]).await;
}

/// After an upgrade that changed the chunk size: B, at the default 512 KiB, gets a blob
/// that A stored in 1 MiB chunks, from A, with the origin down (peers trade a blob only
/// in one layout, so B takes A's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_chunk_size_takes_the_blob_from_a_peer() {
    b_gets_the_blob_from_a_with_the_origin_down(93, &["--chunk-size", "1MiB"]).await;
}

/// A (started with `a_args`) pulls a 9 MiB blob from the origin; then, with the origin
/// down, B pulls it: every byte from A, none from the origin.
async fn b_gets_the_blob_from_a_with_the_origin_down(seed: u64, a_args: &[&str]) {
    let Some(mut swarm) = Swarm::origin().await else {
        return;
    };
    let model = oci::model(seed, &[9 * 1024 * 1024 + 123]);
    Pusher::new(&swarm.registry.host(), None)
        .artifact("models/two", "v1", &model)
        .await;
    swarm.add_node(None, a_args).await;
    swarm.add_node(None, &[]).await;
    swarm.wait_peers(1, 1).await;
    let layer = &model.layers[0];
    let r = swarm.get_blob(0, "models/two", &layer.digest).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), layer.bytes);
    let egress_after_a = swarm.egress();

    swarm.proxy.state.down.store(true, Ordering::SeqCst);
    let r = swarm.get_blob(1, "models/two", &layer.digest).await;
    assert_eq!(r.status(), 200, "{}", swarm.nodes[1].shoald.logs());
    assert_eq!(r.bytes().await.unwrap(), layer.bytes);
    assert_eq!(
        swarm.egress(),
        egress_after_a,
        "B must not touch the origin"
    );
    let from_peers = swarm.nodes[1].shoald.metric("shoal_peer_bytes_total").await;
    assert_eq!(from_peers as usize, layer.bytes.len());
}

/// B left a partial blob in 1 MiB chunks; A then stored the whole blob in 512 KiB
/// chunks. With the origin down, B must drop its partial and take the blob from A:
/// resuming in its own layout would leave only the origin to finish it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_no_peer_can_finish_is_dropped_for_a_complete_peers_layout() {
    const MIB: u64 = 1024 * 1024;
    let Some(mut swarm) = Swarm::origin().await else {
        return;
    };
    let model = oci::model(94, &[64 * MIB as usize + 321]);
    Pusher::new(&swarm.registry.host(), None)
        .artifact("models/partial", "v1", &model)
        .await;
    let layer = model.layers[0].clone();
    swarm.add_node(None, &[]).await;
    swarm.add_node(None, &["--chunk-size", "1MiB"]).await;
    swarm.wait_peers(1, 1).await;

    // B gets part of the blob from a slow origin, then dies.
    // (The rate is per origin connection, and B has several ranges out.)
    swarm.proxy.state.rate.store(2 * MIB, Ordering::SeqCst);
    let url = swarm.nodes[1]
        .shoald
        .url(&format!("/v2/models/partial/blobs/{}", layer.digest));
    let pull = tokio::spawn(async move {
        let _ = crate::common::http().get(url).send().await;
    });
    let proxy = swarm.proxy.state.clone();
    let started = wait_until(60, || {
        proxy.downstream_bytes.load(Ordering::SeqCst) >= 16 * MIB
    })
    .await;
    assert!(
        started,
        "B made no progress: {}",
        swarm.nodes[1].shoald.logs()
    );
    // Past the store index's periodic flush (500 ms), as a crash would usually be.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    swarm.nodes[1].shoald.kill9();
    pull.abort();

    // A stores the whole blob in its own 512 KiB chunks.
    swarm.proxy.state.rate.store(0, Ordering::SeqCst);
    let r = swarm.get_blob(0, "models/partial", &layer.digest).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), layer.bytes);

    // B comes back with the origin down.
    swarm.proxy.state.down.store(true, Ordering::SeqCst);
    let egress = swarm.egress();
    swarm.nodes[1].shoald.restart().await;
    let b = &swarm.nodes[1].shoald;
    let relinked = wait_until(20, || b.logs().matches("peer identified").count() >= 2).await;
    assert!(relinked, "B did not find A again: {}", b.logs());
    let r = swarm.get_blob(1, "models/partial", &layer.digest).await;
    assert_eq!(r.status(), 200, "{}", b.logs());
    assert_eq!(r.bytes().await.unwrap(), layer.bytes);
    assert_eq!(swarm.egress(), egress, "B must not touch the origin");
    assert!(
        b.logs().contains("dropping partial blob"),
        "B should have dropped its 1 MiB partial: {}",
        b.logs()
    );
}

/// Cooperative cold start: 4 nodes ask for the same 256 MiB blob at the same moment;
/// the origin sends it about once and every node's bytes verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_four_nodes_fetch_the_blob_from_the_origin_about_once() {
    let Some(mut swarm) = Swarm::origin().await else {
        return;
    };
    const SIZE: usize = 256 * 1024 * 1024;
    let model = oci::model(91, &[SIZE]);
    Pusher::new(&swarm.registry.host(), None)
        .artifact("models/cold", "v1", &model)
        .await;
    for _ in 0..4 {
        swarm.add_node(None, &[]).await;
    }
    for n in 0..4 {
        swarm.wait_peers(n, 3).await;
    }
    let before = swarm.egress();
    let digest = model.layers[0].digest.clone();
    let pulls = (0..4).map(|n| swarm.get_blob_verified(n, "models/cold", &digest));
    let results = futures::future::join_all(pulls).await;
    for (n, r) in results.iter().enumerate() {
        assert_eq!(
            r.as_ref().ok(),
            Some(&(SIZE as u64)),
            "node {n}: {r:?}\n{}",
            swarm.nodes[n].shoald.logs()
        );
    }
    let egress = swarm.egress() - before;
    let ratio = egress as f64 / SIZE as f64;
    println!("cold start, 4 nodes x 256 MiB: origin egress {egress} bytes = {ratio:.3} x blob");
    assert!(ratio <= 1.1, "origin egress {ratio:.3} x blob size");
    let mut from_peers = 0.0;
    for n in 0..4 {
        from_peers += swarm.nodes[n].shoald.metric("shoal_peer_bytes_total").await;
    }
    assert!(
        from_peers >= 2.9 * SIZE as f64,
        "nodes should have exchanged chunks, got {from_peers} bytes from peers"
    );
    // Each node told the others whom it is linked to (the origin assignment's view).
    for n in 0..4 {
        let lists = swarm.nodes[n]
            .shoald
            .metric("shoal_interested_lists_total")
            .await;
        assert!(lists >= 1.0, "node {n} heard {lists} interested lists");
    }
}

/// A 3-node swarm: two nodes pull at once from the one that has the blob, origin down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_two_pull_at_once_from_the_third() {
    let Some(mut swarm) = Swarm::origin().await else {
        return;
    };
    let model = oci::model(92, &[21 * 1024 * 1024]);
    Pusher::new(&swarm.registry.host(), None)
        .artifact("models/three", "v1", &model)
        .await;
    // The serving node and one of the pullers run a single async worker: one thread
    // serves two peers at once and downloads, with hashing and I/O on blocking threads.
    for worker_threads in ["1", "1", "0"] {
        swarm
            .add_node(None, &["--worker-threads", worker_threads])
            .await;
    }
    for n in [0, 1] {
        let logs = swarm.nodes[n].shoald.logs();
        assert!(logs.contains("workers=1"), "node {n}: {logs}");
        // Its log is a file, not a terminal: no colour codes in it.
        assert!(!logs.contains('\u{1b}'), "node {n}: {logs:?}");
    }
    swarm.wait_peers(1, 1).await;
    swarm.wait_peers(2, 1).await;
    let digest = model.layers[0].digest.clone();
    swarm
        .get_blob_verified(0, "models/three", &digest)
        .await
        .unwrap();
    swarm.proxy.state.down.store(true, Ordering::SeqCst);
    let (b, c) = tokio::join!(
        swarm.get_blob_verified(1, "models/three", &digest),
        swarm.get_blob_verified(2, "models/three", &digest)
    );
    assert!(b.is_ok(), "{b:?}\n{}", swarm.nodes[1].shoald.logs());
    assert!(c.is_ok(), "{c:?}\n{}", swarm.nodes[2].shoald.logs());
}

/// SIGKILL one of two serving peers mid-transfer: the download completes from the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_serving_peer_mid_transfer_loses_nothing() {
    let Some(mut swarm) = Swarm::origin().await else {
        return;
    };
    const SIZE: usize = 96 * 1024 * 1024;
    let model = oci::model(93, &[SIZE]);
    Pusher::new(&swarm.registry.host(), None)
        .artifact("models/kill", "v1", &model)
        .await;
    // Slow uploads keep the transfer going long enough to kill a server in the middle.
    for _ in 0..3 {
        swarm.add_node(None, &["--max-upload-rate", "24MiB"]).await;
    }
    swarm.wait_peers(2, 2).await;
    let digest = model.layers[0].digest.clone();
    swarm
        .get_blob_verified(0, "models/kill", &digest)
        .await
        .unwrap();
    swarm
        .get_blob_verified(1, "models/kill", &digest)
        .await
        .unwrap();
    swarm.proxy.state.down.store(true, Ordering::SeqCst);

    let victim = swarm.nodes[0].shoald.pid();
    let node = &swarm.nodes[2].shoald;
    let pull = swarm.get_blob_verified(2, "models/kill", &digest);
    let kill = async {
        let receiving =
            crate::common::wait_until(30, || node.logs().contains("swarm download starting")).await;
        assert!(receiving, "{}", node.logs());
        // About a quarter of the blob in at 2 x 24 MiB/s.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        // SAFETY: kill(2) on a child process of this test.
        unsafe { libc::kill(victim as i32, libc::SIGKILL) };
        node.metric("shoal_peer_bytes_total").await
    };
    let (result, before_kill) = tokio::join!(pull, kill);
    assert_eq!(result, Ok(SIZE as u64), "{}", node.logs());
    assert!(
        before_kill > 0.0 && before_kill < SIZE as f64,
        "the kill must land mid-transfer ({before_kill} bytes in)"
    );
}

/// SIGTERM a serving peer mid-transfer (a rolling update): it refuses new chunk requests,
/// lets the uploads in flight finish, exits cleanly, and the download completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_uploads_before_exiting() {
    let Some(mut swarm) = Swarm::origin().await else {
        return;
    };
    const SIZE: usize = 64 * 1024 * 1024;
    let model = oci::model(94, &[SIZE]);
    Pusher::new(&swarm.registry.host(), None)
        .artifact("models/term", "v1", &model)
        .await;
    // The leaving node uploads at 256 KiB/s, so a chunk of it is in flight for seconds.
    for rate in ["256KiB", "16MiB", "16MiB"] {
        swarm.add_node(None, &["--max-upload-rate", rate]).await;
    }
    swarm.wait_peers(2, 2).await;
    let digest = model.layers[0].digest.clone();
    // Node 1 first (from the origin), so node 0 then copies it from node 1 quickly.
    for n in [1, 0] {
        swarm
            .get_blob_verified(n, "models/term", &digest)
            .await
            .unwrap();
    }
    swarm.proxy.state.down.store(true, Ordering::SeqCst);
    let leaving = &swarm.nodes[0].shoald;
    let node = &swarm.nodes[2].shoald;
    let pull = swarm.get_blob_verified(2, "models/term", &digest);
    let term = async {
        // Bytes flowing from the peers means both have a chunk request in flight (one
        // per peer at a time, and the leaving node takes seconds per chunk).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while node.metric("shoal_peer_bytes_total").await <= 0.0 {
            assert!(std::time::Instant::now() < deadline, "{}", node.logs());
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        // SAFETY: kill(2) on a child process of this test.
        unsafe { libc::kill(leaving.pid() as i32, libc::SIGTERM) };
        crate::common::wait_until(40, || leaving.logs().contains("shoald stopped")).await
    };
    let (result, stopped) = tokio::join!(pull, term);
    assert_eq!(result, Ok(SIZE as u64), "{}", node.logs());
    assert!(stopped, "shoald exits after draining: {}", leaving.logs());
    let logs = leaving.logs();
    assert!(
        logs.contains("waiting for in-flight uploads to finish"),
        "SIGTERM landed mid-upload: {logs}"
    );
    assert!(logs.contains("uploads drained"), "{logs}");
}

/// A peer built with fault injection serves corrupt chunks: the downloader checks them
/// against the chunk index, bans it and completes from the honest peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs `--features fault-injection` (the README's test command enables it)"
)]
async fn a_corrupting_peer_is_detected_and_banned() {
    let Some(mut swarm) = Swarm::origin().await else {
        return;
    };
    let model = oci::model(94, &[33 * 1024 * 1024]);
    Pusher::new(&swarm.registry.host(), None)
        .artifact("models/liar", "v1", &model)
        .await;
    swarm
        .add_node_with_env(None, &[], &[("SHOAL_FAULT_CORRUPT_CHUNKS", "1")])
        .await;
    swarm.add_node(None, &[]).await;
    swarm.add_node(None, &[]).await;
    swarm.wait_peers(2, 2).await;
    let digest = model.layers[0].digest.clone();
    swarm
        .get_blob_verified(0, "models/liar", &digest)
        .await
        .unwrap();
    swarm
        .get_blob_verified(1, "models/liar", &digest)
        .await
        .unwrap();
    swarm.proxy.state.down.store(true, Ordering::SeqCst);

    let node = &swarm.nodes[2].shoald;
    let got = swarm.get_blob_verified(2, "models/liar", &digest).await;
    assert_eq!(got, Ok(33 * 1024 * 1024), "{}", node.logs());
    assert!(
        node.metric("shoal_peer_bad_chunks_total").await >= 1.0,
        "{}",
        node.logs()
    );
    assert!(node.logs().contains("banned"), "{}", node.logs());
}

/// A node with the wrong cluster secret can neither fetch from the swarm nor serve it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_wrong_secret_can_neither_fetch_nor_serve() {
    let Some(mut swarm) = Swarm::origin().await else {
        return;
    };
    let model = oci::model(95, &[5 * 1024 * 1024, 6 * 1024 * 1024]);
    Pusher::new(&swarm.registry.host(), None)
        .artifact("models/secret", "v1", &model)
        .await;
    let wrong = swarm.dir.path().join("wrong-secret");
    std::fs::write(&wrong, "not the swarm's secret").unwrap();
    swarm.add_node(None, &[]).await;
    swarm.add_node(Some(&wrong), &[]).await;
    swarm.wait_peers(1, 1).await;
    let (good_blob, wrong_blob) = (&model.layers[0].digest, &model.layers[1].digest);
    swarm
        .get_blob_verified(0, "models/secret", good_blob)
        .await
        .unwrap();
    swarm
        .get_blob_verified(1, "models/secret", wrong_blob)
        .await
        .unwrap();
    swarm.proxy.state.down.store(true, Ordering::SeqCst);

    let r = swarm.get_blob(1, "models/secret", good_blob).await;
    assert!(
        !r.status().is_success(),
        "the outsider fetched from the swarm"
    );
    let r = swarm.get_blob(0, "models/secret", wrong_blob).await;
    assert!(
        !r.status().is_success(),
        "the swarm fetched from the outsider"
    );
    for n in 0..2 {
        let node = &swarm.nodes[n].shoald;
        assert_eq!(node.metric("shoal_peer_bytes_total").await, 0.0);
    }
    let logs = swarm.nodes[0].shoald.logs();
    assert!(logs.contains("cluster secret"), "{logs}");
}

/// Warm swarm: node A pulls an image; the origin goes down; B and C pull it by tag
/// through their own mirrors and D with containerd: tags, manifests and blobs all come
/// from peers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_swarm_serves_an_image_with_the_origin_down() {
    use crate::common::containerd::{check, Containerd};
    let Some(mut swarm) = Swarm::origin().await else {
        return;
    };
    let img = oci::image(96, oci::OCI_MANIFEST);
    Pusher::new(&swarm.registry.host(), None)
        .artifact("library/warm", "v1", &img)
        .await;
    for _ in 0..4 {
        swarm.add_node(None, &[]).await;
    }
    for n in 1..4 {
        swarm.wait_peers(n, 1).await;
    }
    let pull_http = |n: usize| {
        let swarm = &swarm;
        let img = &img;
        async move {
            let url = swarm.nodes[n].shoald.url("/v2/library/warm/manifests/v1");
            let r = crate::common::http()
                .get(url)
                .header("Accept", oci::OCI_MANIFEST)
                .send()
                .await
                .unwrap();
            assert_eq!(
                r.status(),
                200,
                "node {n}: {}",
                swarm.nodes[n].shoald.logs()
            );
            assert_eq!(r.bytes().await.unwrap(), img.manifest, "node {n} manifest");
            for blob in std::iter::once(&img.config).chain(&img.layers) {
                let got = swarm
                    .get_blob_verified(n, "library/warm", &blob.digest)
                    .await;
                assert_eq!(got, Ok(blob.bytes.len() as u64), "node {n}");
            }
        }
    };
    pull_http(0).await;
    swarm.proxy.state.down.store(true, Ordering::SeqCst);
    let egress = swarm.egress();
    pull_http(1).await;
    pull_http(2).await;

    let hosts = tempfile::tempdir().unwrap();
    let mirror = swarm.nodes[3].shoald.addr.to_string();
    Containerd::write_hosts(hosts.path(), &swarm.proxy.host(), &mirror);
    let Some(ctrd) = Containerd::start().await else {
        return;
    };
    let reference = format!("{}/library/warm:v1", swarm.proxy.host());
    let hosts_dir = hosts.path().to_str().unwrap();
    check(
        &ctrd.pull_image(hosts_dir, &reference),
        "ctr images pull from a swarm without origin",
    );
    assert_eq!(swarm.egress(), egress, "nothing came from the origin");
    let layer_bytes: usize = img.layers.iter().map(|l| l.bytes.len()).sum();
    let from_peers = swarm.nodes[3].shoald.metric("shoal_peer_bytes_total").await;
    assert!(
        from_peers >= layer_bytes as f64,
        "D's layers came from peers"
    );
}

/// In a cold start nobody has a chunk index yet, so a corrupting peer's chunks are only
/// caught by the final sha256: the local client's response is aborted, never completed
/// with bad bytes, and the node recovers the blob from the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs `--features fault-injection` (the README's test command enables it)"
)]
async fn cold_start_with_a_corrupting_peer_aborts_then_recovers_from_the_origin() {
    let Some(mut swarm) = Swarm::origin().await else {
        return;
    };
    const SIZE: usize = 48 * 1024 * 1024;
    let model = oci::model(97, &[SIZE]);
    Pusher::new(&swarm.registry.host(), None)
        .artifact("models/cold-liar", "v1", &model)
        .await;
    swarm
        .add_node_with_env(None, &[], &[("SHOAL_FAULT_CORRUPT_CHUNKS", "1")])
        .await;
    swarm.add_node(None, &[]).await;
    swarm.wait_peers(1, 1).await;
    let digest = model.layers[0].digest.clone();
    let (liar, victim) = tokio::join!(
        swarm.get_blob_verified(0, "models/cold-liar", &digest),
        swarm.get_blob_verified(1, "models/cold-liar", &digest)
    );
    let node = &swarm.nodes[1].shoald;
    assert_eq!(liar, Ok(SIZE as u64), "the liar's own copy is fine");
    assert!(
        victim.is_err(),
        "a response with bad bytes must not complete: {victim:?}"
    );
    assert!(
        crate::common::wait_until(30, || node.logs().contains("refetching from the origin")).await,
        "{}",
        node.logs()
    );
    let again = swarm
        .get_blob_verified(1, "models/cold-liar", &digest)
        .await;
    assert_eq!(again, Ok(SIZE as u64), "{}", node.logs());
}
