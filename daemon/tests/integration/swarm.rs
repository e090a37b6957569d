//! Several real shoald processes forming a swarm over libp2p discovery and the QUIC
//! transfer endpoint, with docker-registry (behind a counting proxy) as the origin.

use std::sync::atomic::Ordering;

use crate::common::oci::{self, Pusher};
use crate::common::swarm::Swarm;

/// A 2-node swarm (Kademlia's smallest case): B gets a blob from A with the origin down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_blob_from_peer_with_origin_down() {
    let Some(mut swarm) = Swarm::origin().await else {
        return;
    };
    let model = oci::model(90, &[9 * 1024 * 1024 + 123]);
    Pusher::new(&swarm.registry.host(), None)
        .artifact("models/two", "v1", &model)
        .await;
    swarm.add_node(None, &[]).await;
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
