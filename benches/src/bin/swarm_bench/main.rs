//! The swarm benchmark on an emulated network.
//!
//! Builds one network namespace per host (an origin running docker-registry, N nodes
//! running `shoald`), joined by veth pairs to a bridge, every link shaped to the same
//! rate with `tc tbf`; pushes a ModelPack-style model to the origin; then runs the
//! scenarios and reports per-node completion times against T_limit = model size / link
//! rate, origin egress counted on the origin's interface, packets the links' shapers
//! dropped (the network's only loss), peak RSS and CPU time of every daemon. Needs
//! root, `ip`, `tc`, `docker-registry` and a built `shoald`:
//!
//! ```sh
//! cargo build --release -p shoal-daemon -p shoal-benches && \
//!   sudo target/release/swarm-bench run --nodes 8 --rate 200mbit --size 512MiB --layers 4
//! ```
//!
//! Scenarios: `direct` (every node pulls from the origin, no shoal), `cold` (all nodes
//! pull through their mirrors at once, nobody has the model), `warm` (one node has it,
//! the others pull at once), `churn` (as cold, with every third node SIGKILLed mid-way
//! and restarted). Results go to `--out` as `results.md`, `completion.svg`, and per
//! scenario `timeline-<scenario>.csv` (the machine's CPU, the origin's link and every
//! node's, every 0.5 s).

mod daemon;
mod host_memory;
mod model;
mod netns;
mod report;
mod scenario;
mod timeline;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "swarm-bench",
    about = "shoal's swarm benchmark on an emulated network (run as root)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the network, run the scenarios, write the report, tear everything down.
    Run(scenario::RunArgs),
    /// (inside the origin namespace) Push the benchmark model.
    Push {
        #[arg(long)]
        registry: String,
        #[arg(long, value_parser = shoal_daemon::config::parse_size)]
        size: u64,
        #[arg(long)]
        layers: usize,
    },
    /// (inside a node namespace) Pull the model like containerd; prints seconds and bytes.
    Pull {
        #[arg(long)]
        base: String,
        #[arg(long, default_value = "3")]
        parallel: usize,
        #[arg(long, default_value = "900")]
        deadline_secs: u64,
    },
}

/// Repository and tag of the benchmark model.
pub const REPO: &str = "bench/model";
pub const TAG: &str = "v1";

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Run(args) => scenario::run(args).await,
        Command::Push {
            registry,
            size,
            layers,
        } => {
            let total = model::push(&registry, REPO, TAG, size, layers).await?;
            println!("{total}");
            Ok(())
        }
        Command::Pull {
            base,
            parallel,
            deadline_secs,
        } => {
            let started = std::time::Instant::now();
            let bytes = model::pull(
                &base,
                REPO,
                TAG,
                parallel,
                Duration::from_secs(deadline_secs),
            )
            .await
            .context("pull")?;
            println!("{} {bytes}", started.elapsed().as_secs_f64());
            Ok(())
        }
    }
}

/// Where this binary is (it runs itself inside the namespaces).
pub fn self_exe() -> Result<PathBuf> {
    std::env::current_exe().context("locating swarm-bench")
}
