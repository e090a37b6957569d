//! The swarm simulator: the daemon's real download scheduler on every node, with virtual
//! time and a modelled network, for swarms far larger than one machine can emulate.
//!
//! ```sh
//! cargo build --release -p shoal-benches && \
//!   target/release/swarm-sim --nodes 8,100,1000 --size 512MiB --layers 4 --rate 200mbit
//! ```
//!
//! For each N and scenario (`cold`: all N nodes start at once and nobody has the model;
//! `warm`: one extra node holds it and the N others start at once) it reports per-node
//! completion (min, median, max), T_limit = model size / link rate, max/T_limit, and
//! origin egress as a multiple of the model size. The network model and what it leaves
//! out are described in `world.rs`. `--trace 5s` prints the swarm's state every 5
//! simulated seconds to stderr (chunks held, origin flows and their receivers, peer
//! flows active and waiting for an upload slot, idle nodes): where a slow run loses time.

mod world;

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Parser;

#[derive(Parser)]
#[command(name = "swarm-sim", about = "shoal's scheduler on a simulated network")]
struct Args {
    /// Node counts to simulate (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "8,100,1000")]
    nodes: Vec<usize>,
    /// Model size (split evenly over --layers).
    #[arg(long, default_value = "512MiB", value_parser = shoal_daemon::config::parse_size)]
    size: u64,
    /// Number of layers (blobs) of the model, all pulled at once.
    #[arg(long, default_value = "4")]
    layers: usize,
    /// Every node's link rate, each way (tc notation).
    #[arg(long, default_value = "200mbit")]
    rate: String,
    /// The origin's uplink (default: the same as the nodes').
    #[arg(long)]
    origin_rate: Option<String>,
    /// Chunk size.
    #[arg(long, default_value = shoal_daemon::config::DEFAULT_CHUNK_SIZE_ARG, value_parser = shoal_daemon::config::parse_size)]
    chunk_size: u64,
    /// One-way latency between any two hosts.
    #[arg(long, default_value = "500us", value_parser = humantime::parse_duration)]
    latency: Duration,
    /// Network time step.
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    step: Duration,
    /// Scenarios to run (cold, warm).
    #[arg(long, value_delimiter = ',', default_value = "cold,warm")]
    scenarios: Vec<String>,
    /// Seed of the link graph and node ids.
    #[arg(long, default_value = "1")]
    seed: u64,
    /// Override the scheduler's origin requests in flight per blob (exploration).
    #[arg(long)]
    origin_requests: Option<usize>,
    /// Override the scheduler's requests in flight to the fastest peer (exploration).
    #[arg(long)]
    peer_depth: Option<usize>,
    /// Override the node-wide cap on peer requests in flight (exploration).
    #[arg(long)]
    peer_cap: Option<usize>,
    /// Fix each download's peer requests in flight (exploration; default: the daemon's
    /// share of the node-wide cap over the node's unfinished layers).
    #[arg(long)]
    download_peer_requests: Option<usize>,
    /// Chunk uploads a node serves at once (the daemon's `--max-uploads`).
    #[arg(long, default_value = "8")]
    upload_slots: usize,
    /// How long a chunk request waits for an upload slot before the uploader refuses it
    /// (default: the daemon's rule, a little more than the average interval at which the
    /// uploader's freed slots go to waiting requests, 50 ms before one is measured).
    #[arg(long, value_parser = humantime::parse_duration)]
    upload_queue_wait: Option<Duration>,
    /// Which waiting request an uploader admits to a free slot (the daemon's:
    /// least-served-then-behind).
    #[arg(long, value_enum, default_value = "least-served-then-behind")]
    upload_order: world::UploadOrder,
    /// Let a requester take every free upload slot of a node, not only its share of them
    /// (the slots over the requesters running or waiting there): the daemon before
    /// session 17 (exploration).
    #[arg(long)]
    no_requester_share: bool,
    /// Override the stream window, in chunks (exploration).
    #[arg(long)]
    stream_window: Option<u32>,
    /// Override the linked downloaders up to which owners take a seed's chunks in index
    /// order (exploration; 0: never, the node count or more: always).
    #[arg(long)]
    seeds_in_order_up_to: Option<usize>,
    /// Override the scheduler's origin frontier, in chunks (exploration; 0: none).
    #[arg(long)]
    origin_frontier: Option<u32>,
    /// Override the interested nodes from which the origin frontier doubles
    /// (exploration; the daemon's `LARGE_SWARM`).
    #[arg(long)]
    large_swarm: Option<usize>,
    /// How nodes learn of downloaders beyond their own links.
    #[arg(long, value_enum, default_value = "on")]
    gossip: world::Gossip,
    /// Print the swarm's state to stderr every this many simulated seconds.
    #[arg(long, value_parser = humantime::parse_duration)]
    trace: Option<Duration>,
    /// Layers each node pulls at once, in order, the next as one completes, as a client
    /// does (containerd: 3) with `--prefetch 0`; default: every layer from the start, as the
    /// daemon's default prefetch makes containerd's pull.
    #[arg(long)]
    client_parallel: Option<usize>,
    /// What relaying a chunk while it arrives would buy (exploration; the daemon relays
    /// a chunk only once it is whole): a node announces a chunk it receives from a peer
    /// as soon as the bytes start to arrive, and serves it no faster than they do.
    /// Chunks arriving from the origin are relayed whole still (relaying those too made
    /// 33 nodes cold 1.75x T_limit, against 1.17x).
    #[arg(long)]
    cut_through: bool,
    /// Stop a run after this much simulated time.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    limit: Duration,
}

/// The daemon's scheduler configuration, with any exploration overrides.
fn config(args: &Args) -> shoal_daemon::swarm::scheduler::Config {
    let mut c =
        shoal_daemon::swarm::scheduler_config(u32::try_from(args.chunk_size).unwrap_or(u32::MAX));
    if let Some(n) = args.origin_requests {
        c.max_origin_requests = n;
        c.shared_origin_requests = n;
    }
    if let Some(n) = args.peer_depth {
        c.max_requests_per_peer = n;
    }
    if let Some(n) = args.stream_window {
        c.stream_window = n;
    }
    if let Some(n) = args.large_swarm {
        c.large_swarm = n;
    }
    if let Some(n) = args.seeds_in_order_up_to {
        c.seeds_in_order_up_to = n;
    }
    // All layers start at once here, as the blobs of one pull do in the daemon.
    c.origin_frontier = args
        .origin_frontier
        .unwrap_or_else(|| shoal_daemon::swarm::origin_frontier(args.layers));
    c
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rate = shoal_benches::rate_bytes_per_sec(&args.rate).map_err(anyhow::Error::msg)?;
    let origin_rate = match &args.origin_rate {
        Some(r) => shoal_benches::rate_bytes_per_sec(r).map_err(anyhow::Error::msg)?,
        None => rate,
    };
    if args.layers == 0 || args.size < args.layers as u64 {
        bail!("--layers must be at least 1 and at most --size bytes");
    }
    let per_layer = args.size / args.layers as u64;
    let layer_sizes = vec![per_layer; args.layers];
    let model: u64 = layer_sizes.iter().sum();
    let t_limit = model as f64 / rate;
    println!(
        "model {} MiB in {} layers, chunk {} KiB, link {}, origin {}, latency {:?}, step {:?}; T_limit {:.1} s\n",
        model >> 20,
        args.layers,
        args.chunk_size >> 10,
        args.rate,
        args.origin_rate.as_deref().unwrap_or(&args.rate),
        args.latency,
        args.step,
        t_limit
    );
    println!("| nodes | scenario | min s | median s | max s | max/T_limit | origin egress/model | peer bytes/model | finished | sim wall s |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &args.nodes {
        for scenario in &args.scenarios {
            let warm = match scenario.as_str() {
                "cold" => false,
                "warm" => true,
                other => bail!("unknown scenario {other:?} (cold, warm)"),
            };
            let params = world::Params {
                nodes: n,
                layer_sizes: layer_sizes.clone(),
                chunk_size: u32::try_from(args.chunk_size)?,
                node_rate: rate,
                origin_rate,
                latency: args.latency,
                warm,
                links: shoal_daemon::swarm::MAX_LINKED,
                peer_cap: args
                    .peer_cap
                    .unwrap_or(shoal_daemon::swarm::MAX_PEER_REQUESTS),
                upload_slots: args.upload_slots.max(1),
                upload_queue_wait: args.upload_queue_wait,
                upload_order: args.upload_order,
                requester_share: !args.no_requester_share,
                step: args.step,
                settle: startup(n, warm),
                seed: args.seed,
                config: config(&args),
                download_peer_requests: args.download_peer_requests,
                limit: args.limit,
                gossip: args.gossip,
                trace: args.trace.map(|d| d.as_secs_f64()),
                client_parallel: args.client_parallel.map(|n| n.max(1)),
                cut_through: args.cut_through,
            };
            let started = Instant::now();
            let out = world::run(&params);
            let wall = started.elapsed().as_secs_f64();
            let mut done: Vec<f64> = out.completion.iter().flatten().copied().collect();
            done.sort_by(f64::total_cmp);
            let (min, median, max) = match (done.first(), done.last()) {
                (Some(&a), Some(&b)) => (a, done[done.len() / 2], b),
                _ => (f64::NAN, f64::NAN, f64::NAN),
            };
            println!(
                "| {n} | {scenario} | {min:.1} | {median:.1} | {max:.1} | {:.2} | {:.3} | {:.2} | {}/{n} | {wall:.1} |",
                max / t_limit,
                out.origin_bytes as f64 / model as f64,
                out.peer_bytes as f64 / model as f64,
                done.len(),
            );
        }
    }
    Ok(())
}

/// Time from the pull to every node's first view of its links: finding providers and
/// linking them (about 0.35 s on the emulated network, session 22) and, in a cold
/// start, the driver's settle. The settle ends as soon as a node has linked every node
/// it knows of, which in a swarm of at most one node's links (`MAX_LINKED` + 1) is
/// at once; in a larger swarm it runs its full 500 ms.
fn startup(nodes: usize, warm: bool) -> Duration {
    let discovery = Duration::from_millis(350);
    if warm || nodes <= shoal_daemon::swarm::MAX_LINKED + 1 {
        discovery
    } else {
        discovery + Duration::from_millis(500)
    }
}
