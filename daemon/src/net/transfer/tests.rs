//! Two or three real endpoints on loopback, in one process.

use std::sync::Arc;

use sha2::{Digest as _, Sha256};
use shoal_proto::wire::{Message, RejectReason, VERSION};
use shoal_proto::Digest;

use super::*;
use crate::store::Store;

struct Node {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    transfer: Arc<Transfer>,
}

fn node(secret: &[u8]) -> Node {
    node_with_budget(secret, TransferOptions::default().receive_budget)
}

fn node_with_budget(secret: &[u8], receive_budget: u64) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), 64 * 1024, 0).unwrap());
    let keypair = Keypair::generate_ed25519();
    let options = TransferOptions {
        secret: secret.to_vec(),
        receive_budget,
        ..TransferOptions::default()
    };
    let transfer = Transfer::bind(
        "127.0.0.1:0".parse().unwrap(),
        keypair,
        options,
        store.clone(),
    )
    .unwrap();
    Node {
        _dir: dir,
        store,
        transfer,
    }
}

fn blob(len: usize) -> (Vec<u8>, Digest) {
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 253) as u8).collect();
    let d = Digest::from_sha256_bytes(Sha256::digest(&data).into());
    (data, d)
}

/// Node b holds a 300 kB blob; a is connected to b. Returns the nodes (kept alive),
/// the blob, its digest and record, and a's connection.
async fn connected_to_a_holder() -> (
    (Node, Node),
    Vec<u8>,
    Digest,
    crate::store::BlobRecord,
    PeerConnection,
) {
    let (a, b) = (node(b"secret"), node(b"secret"));
    let (data, d) = blob(300_000);
    let record = b.store.put_bytes(d, &data, None).unwrap();
    let conn = a
        .transfer
        .connect(b.transfer.local_addr().unwrap(), Some(b.transfer.peer_id()))
        .await
        .unwrap();
    ((a, b), data, d, record, conn)
}

#[tokio::test]
async fn serves_chunks_and_index_to_an_authenticated_peer() {
    let ((_a, b), data, d, record, conn) = connected_to_a_holder().await;
    assert_eq!(conn.remote, b.transfer.peer_id());
    let index = conn.fetch_index(d).await.unwrap();
    assert_eq!(index, record.chunks);
    for chunk in 0..index.layout.count() {
        let bytes = conn.fetch_chunk(d, chunk, 0, 1 << 20).await.unwrap();
        let range = index.layout.range(chunk).unwrap();
        assert_eq!(&bytes[..], &data[range.start as usize..range.end as usize]);
        assert_eq!(
            blake3::hash(&bytes).as_bytes(),
            &index.hashes[chunk as usize].0
        );
    }
    let (_, unknown) = blob(10);
    assert!(matches!(
        conn.fetch_chunk(unknown, 0, 0, 1 << 20).await,
        Err(NetError::Rejected(RejectReason::NotPresent))
    ));
    assert!(matches!(
        conn.fetch_chunk(d, 99, 0, 1 << 20).await,
        Err(NetError::Rejected(RejectReason::NotPresent))
    ));
    // A chunk larger than the caller allows is refused, not read.
    assert!(matches!(
        conn.fetch_chunk(d, 0, 0, 1000).await,
        Err(NetError::Protocol(_))
    ));
}

/// The swarm's link reader relies on this: a complete provider answers an interest link
/// with its full have-map and then ends its side cleanly (a peer still downloading
/// ends cleanly only when its download is over).
#[tokio::test]
async fn a_complete_provider_ends_its_interest_link_after_the_map() {
    let (_nodes, _, d, record, conn) = connected_to_a_holder().await;
    let mut link = conn.subscribe(d, None, Vec::new()).await.unwrap();
    assert_eq!(link.layout, Some(record.chunks.layout));
    let count = record.chunks.layout.count();
    assert!((0..count).all(|i| wire::bitfield::get(&link.bitfield, i)));
    assert!(matches!(PeerLink::next(&mut link.recv).await, Ok(None)));
}

#[tokio::test]
async fn wrong_secret_can_neither_fetch_nor_serve() {
    let (good, intruder) = (node(b"cluster-secret"), node(b"guess"));
    let (data, d) = blob(100_000);
    good.store.put_bytes(d, &data, None).unwrap();
    intruder.store.put_bytes(d, &data, None).unwrap();
    let to_good = intruder
        .transfer
        .connect(good.transfer.local_addr().unwrap(), None)
        .await;
    assert!(
        matches!(to_good, Err(NetError::Unauthenticated(_))),
        "intruder fetched"
    );
    let to_intruder = good
        .transfer
        .connect(intruder.transfer.local_addr().unwrap(), None)
        .await;
    assert!(
        matches!(to_intruder, Err(NetError::Unauthenticated(_))),
        "intruder served"
    );
}

#[tokio::test]
async fn wrong_peer_id_fails_the_tls_handshake() {
    let (a, b, c) = (node(b"s"), node(b"s"), node(b"s"));
    let r = a
        .transfer
        .connect(b.transfer.local_addr().unwrap(), Some(c.transfer.peer_id()))
        .await;
    assert!(
        matches!(r, Err(NetError::Connect { .. })),
        "connected to an impostor"
    );
}

#[tokio::test]
async fn malformed_and_oversized_messages_drop_only_that_connection() {
    let (a, b) = (node(b"s"), node(b"s"));
    let (data, d) = blob(100_000);
    b.store.put_bytes(d, &data, None).unwrap();
    let addr = b.transfer.local_addr().unwrap();
    let hostile: Vec<Vec<u8>> = vec![
        vec![0xff, 0xff, 0xff, 0xff, VERSION, 3], // oversized length
        vec![0, 0, 0, 3, 9, 3, 0],                // unknown version
        vec![0, 0, 0, 6, VERSION, 4, 1, 2, 3, 4], // Request cut short
        Message::Have {
            digest: d,
            chunk: 0,
        }
        .to_bytes(), // not a request
    ];
    for bytes in hostile {
        let conn = a.transfer.connect(addr, None).await.unwrap();
        conn.send_raw(&bytes).await.unwrap();
        assert!(
            conn.fetch_index(d).await.is_err(),
            "connection survived {bytes:?}"
        );
        // Everyone else is still served.
        let fresh = a.transfer.connect(addr, None).await.unwrap();
        assert_eq!(
            fresh.fetch_chunk(d, 0, 0, 1 << 20).await.unwrap().len(),
            64 * 1024
        );
    }
}

/// A pull starts every layer at once, and each layer's download asks for a connection
/// to the same peers: they share one handshake instead of racing their own.
#[tokio::test]
async fn simultaneous_callers_share_one_connection_attempt() {
    let (a, b) = (node(b"s"), node(b"s"));
    let (addr, peer) = (b.transfer.local_addr().unwrap(), b.transfer.peer_id());
    let attempts = (0..8).map(|_| a.transfer.connection(addr, peer));
    let conns: Vec<_> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(|c| c.unwrap())
        .collect();
    assert!(conns.iter().all(|c| Arc::ptr_eq(c, &conns[0])));
    assert_eq!(a.transfer.endpoint.open_connections(), 1);
    // A failed attempt (here: a node of another cluster) is shared too, and leaves
    // nothing behind for the next caller.
    let stranger = node(b"other");
    let (addr, peer) = (
        stranger.transfer.local_addr().unwrap(),
        stranger.transfer.peer_id(),
    );
    let failed = futures::future::join_all((0..3).map(|_| a.transfer.connection(addr, peer))).await;
    assert!(failed
        .iter()
        .all(|r| matches!(r, Err(NetError::Connect { .. }))));
    let connections = a.transfer.connections.lock().unwrap();
    assert!(!connections.contains_key(&peer));
    assert!(connections.contains_key(&b.transfer.peer_id()));
}

/// A second download connection gets half the node's budget, and a peer cannot send
/// more than that before the node reads: 1 MiB asked for, about 256 KiB received.
#[tokio::test]
async fn download_connections_share_the_receive_budget() {
    let budget = 512 << 10;
    let a = node_with_budget(b"s", budget);
    let (b, c) = (node(b"s"), node(b"s"));
    let (data, d) = blob(1 << 20);
    c.store.put_bytes(d, &data, None).unwrap();
    let to = |n: &Node| (n.transfer.local_addr().unwrap(), n.transfer.peer_id());
    let (addr, peer) = to(&b);
    a.transfer.connection(addr, peer).await.unwrap();
    let (addr, peer) = to(&c);
    let conn = a.transfer.connection(addr, peer).await.unwrap();

    let before = conn.conn.stats().udp_rx.bytes;
    let mut unread = Vec::new();
    for chunk in 0..16 {
        let (mut send, recv) = conn.conn.open_bi().await.unwrap();
        let request = Message::Request {
            digest: d,
            chunk,
            held: 0,
        };
        write_message(&mut send, &request).await.unwrap();
        send.finish().unwrap();
        unread.push(recv);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = conn.conn.stats().udp_rx.bytes - before;
    let share = budget / 2;
    assert!(
        received > share / 2 && received < share + (64 << 10),
        "received {received} bytes with a {share}-byte window"
    );
}

/// The budget grows while chunks arrive faster than the floor covers, and falls back to
/// the floor when they stop. Loopback is far faster than the 6.4 MB/s it takes here.
#[tokio::test]
async fn the_receive_budget_follows_the_receive_rate() {
    let floor = window::MIN_RECEIVE_WINDOW;
    let a = node_with_budget(b"s", floor);
    let b = node(b"s");
    let (data, d) = blob(1 << 20);
    b.store.put_bytes(d, &data, None).unwrap();
    let conn = a
        .transfer
        .connection(b.transfer.local_addr().unwrap(), b.transfer.peer_id())
        .await
        .unwrap();
    let chunks = conn.fetch_index(d).await.unwrap().layout.count();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut chunk = 0;
    while a.transfer.receive_budget.current() == floor {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the budget stayed at its floor"
        );
        conn.fetch_chunk(d, chunk, 0, 1 << 20).await.unwrap();
        chunk = (chunk + 1) % chunks;
    }
    while a.transfer.receive_budget.current() != floor {
        assert!(
            tokio::time::Instant::now() < deadline + Duration::from_secs(5),
            "the budget stayed above its floor while idle"
        );
        tokio::time::sleep(window::RESIZE_EVERY).await;
    }
}
