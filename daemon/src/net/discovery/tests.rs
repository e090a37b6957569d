use super::*;

#[test]
fn bootstrap_entries_parse() {
    assert_eq!(
        "10.0.0.5:4001".parse::<Bootstrap>(),
        Ok(Bootstrap::Socket("10.0.0.5:4001".parse().unwrap()))
    );
    assert_eq!(
        "dns:shoal.kube-system.svc:4001".parse::<Bootstrap>(),
        Ok(Bootstrap::Dns {
            name: "shoal.kube-system.svc".into(),
            port: 4001
        })
    );
    let m = "/ip4/10.0.0.5/udp/4001/quic-v1"
        .parse::<Bootstrap>()
        .unwrap();
    assert!(matches!(m, Bootstrap::Multiaddr(_)));
    for bad in [
        "",
        "dns:",
        "dns:name",
        "dns::4001",
        "10.0.0.5",
        "/ip4/nope",
        "host:port",
    ] {
        let err = bad.parse::<Bootstrap>().unwrap_err();
        assert!(err.contains(bad), "error {err:?} names the input");
    }
}

#[test]
fn transfer_address_travels_in_the_agent_string() {
    let mut options = DiscoveryOptions {
        listen: "0.0.0.0:4001".parse().unwrap(),
        advertise_ip: None,
        bootstrap: Vec::new(),
        mdns: false,
        transfer: "0.0.0.0:4002".parse().unwrap(),
        provider_ttl: Duration::from_secs(60),
    };
    let seen: IpAddr = "10.1.2.3".parse().unwrap();
    // Bound to every interface: the peer uses the IP it reached us at.
    let agent = transfer_agent(&options);
    assert_eq!(
        parse_transfer_agent(&agent, Some(seen)),
        Some("10.1.2.3:4002".parse().unwrap())
    );
    assert_eq!(parse_transfer_agent(&agent, None), None);
    // An advertised IP wins.
    options.advertise_ip = Some("192.168.7.7".parse().unwrap());
    let agent = transfer_agent(&options);
    assert_eq!(
        parse_transfer_agent(&agent, Some(seen)),
        Some("192.168.7.7:4002".parse().unwrap())
    );
    assert_eq!(
        parse_transfer_agent("some-other-libp2p-node/1.0", Some(seen)),
        None
    );
}

fn options(listen: &str, bootstrap: Vec<Bootstrap>) -> DiscoveryOptions {
    DiscoveryOptions {
        listen: listen.parse().unwrap(),
        advertise_ip: None,
        bootstrap,
        mdns: false,
        transfer: "127.0.0.1:9".parse().unwrap(),
        provider_ttl: Duration::from_secs(60),
    }
}

/// A discovery node on loopback at `listen`, with a fresh identity.
async fn start(listen: SocketAddr, bootstrap: Vec<Bootstrap>) -> Arc<Discovery> {
    Discovery::start(
        Keypair::generate_ed25519(),
        options(&listen.to_string(), bootstrap),
    )
    .await
    .unwrap()
}

fn free_udp(ip: &str) -> SocketAddr {
    std::net::UdpSocket::bind((ip, 0))
        .and_then(|s| s.local_addr())
        .unwrap()
}

async fn wait_for(mut check: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..100 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// `dns:NAME:PORT` bootstrap finds a node whose PeerId nobody configured, and provider
/// records then flow between the two (Kademlia's smallest swarm).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_bootstrap_and_provider_lookup_between_two_nodes() {
    let a_addr = free_udp("127.0.0.1");
    let a = start(a_addr, vec![]).await;
    let dns = Bootstrap::Dns {
        name: "localhost".into(),
        port: a_addr.port(),
    };
    let b = start(free_udp("127.0.0.1"), vec![dns]).await;
    assert!(
        wait_for(async || b.peers().await.iter().any(|p| p.peer == a.local_peer)).await,
        "b found a through dns:localhost"
    );
    let digest = Digest::from_sha256_bytes([7; 32]);
    a.provide(digest);
    assert!(
        wait_for(async || {
            b.find_providers(digest)
                .await
                .iter()
                .any(|p| p.peer == a.local_peer && p.transfer.port() == 9)
        })
        .await,
        "b finds a as a provider, with its transfer address"
    );
}

/// mDNS alone (no bootstrap list, as on an edge LAN) finds the other node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mdns_finds_a_node_without_bootstrap() {
    // mDNS announces non-loopback addresses only: listen on every interface.
    let mut a_opts = options(&free_udp("0.0.0.0").to_string(), vec![]);
    a_opts.mdns = true;
    let mut b_opts = options(&free_udp("0.0.0.0").to_string(), vec![]);
    b_opts.mdns = true;
    let a = Discovery::start(Keypair::generate_ed25519(), a_opts)
        .await
        .unwrap();
    let b = Discovery::start(Keypair::generate_ed25519(), b_opts)
        .await
        .unwrap();
    assert!(
        wait_for(async || b.peers().await.iter().any(|p| p.peer == a.local_peer)).await,
        "b found a by mDNS"
    );
}

/// `members()` is every other node this one knows of, never itself: a cold start's
/// settle ends early once each of them is linked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_the_other_nodes() {
    let a_addr = free_udp("127.0.0.1");
    let a = start(a_addr, vec![]).await;
    let mut others = Vec::new();
    for _ in 0..2 {
        others.push(start(free_udp("127.0.0.1"), vec![Bootstrap::Socket(a_addr)]).await);
    }
    let expected: HashSet<PeerId> = others.iter().map(|n| n.local_peer).collect();
    assert!(
        wait_for(async || a.members().await.into_iter().collect::<HashSet<_>>() == expected).await,
        "a's members are b and c, got {:?}",
        a.members().await
    );
    for node in &others {
        let members = node.members().await;
        assert!(members.contains(&a.local_peer), "{members:?} lacks a");
        assert!(
            !members.contains(&node.local_peer),
            "{members:?} has itself"
        );
    }
}
