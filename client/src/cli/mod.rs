//! The commands: argument definitions and dispatch.

mod model;
mod show;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use shoal_client::api::{ControlClient, DaemonAddr, DEFAULT_SOCKET};
use shoal_client::error::{ClientError, Result};

/// Drive and inspect a shoal node: status, models, pulls, preheats, pins, runtime config.
///
/// Exit codes: 0 ok, 1 failure, 2 usage, 3 shoald unreachable, 4 not found,
/// 5 registry unreachable, 6 permission denied, 7 disk full, 8 timeout,
/// 9 content refused (digest mismatch, unsafe path).
#[derive(Parser)]
#[command(name = "shoal", version, about, long_about)]
pub struct Cli {
    /// shoald's control socket, or `http://HOST:PORT` of its --control-addr.
    #[arg(long, global = true, env = "SHOAL_DAEMON", value_name = "SOCKET|URL", default_value = DEFAULT_SOCKET)]
    daemon: DaemonAddr,

    /// File holding the bearer token (the cluster secret) for a TCP control address.
    #[arg(long, global = true, env = "SHOAL_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

/// Output format of read commands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people.
    #[default]
    Text,
    /// One JSON document on stdout, for scripts.
    Json,
}

#[derive(clap::Args, Clone, Copy)]
struct OutputArg {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "text")]
    output: Format,
}

#[derive(Subcommand)]
enum Command {
    /// Node id, addresses, peers, store use, running transfers, bytes from peers vs origin.
    Status(OutputArg),
    /// Peers this node knows.
    Peers(OutputArg),
    /// Cached models and blobs: size, completeness, pinned, last used.
    Ls(OutputArg),
    /// Fetch a model or image through the node (so the swarm is used), optionally
    /// extracting its files.
    Pull(model::PullArgs),
    /// Have nodes fetch a model ahead of time; shows progress per node.
    Preheat(model::PreheatArgs),
    /// Keep a model from eviction (fetching what is missing); survives restarts.
    Pin {
        /// Image or model reference.
        reference: String,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Let a pinned model be evicted again.
    Unpin {
        /// Image or model reference.
        reference: String,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Write a model as an OCI image layout (a directory, or FILE.tar).
    Export(model::ExportArgs),
    /// Load an OCI image layout into the node: it then serves it with no registry.
    Import(model::ImportArgs),
    /// Evict unpinned blobs, least recently used first, down to the quota.
    Gc {
        /// Say what would be evicted; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Evict down to this size instead of the quota (e.g. `50GiB`, `0`).
        #[arg(long, value_name = "SIZE", value_parser = show::parse_size)]
        to: Option<u64>,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Point containerd at shoald: hosts.toml files naming it as the first mirror.
    ContainerdConfig(show::ContainerdConfigArgs),
}

fn client(cli: &Cli) -> Result<ControlClient> {
    let token = match &cli.token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| ClientError::io(format!("reading token file {}", p.display()), e))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    ControlClient::new(cli.daemon.clone(), token)
}

/// Runs one command.
pub async fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::ContainerdConfig(args) => show::containerd_config(args),
        Command::Status(o) => show::status(&client(&cli)?, o.output).await,
        Command::Peers(o) => show::peers(&client(&cli)?, o.output).await,
        Command::Ls(o) => show::ls(&client(&cli)?, o.output).await,
        Command::Gc { dry_run, to, out } => {
            show::gc(&client(&cli)?, *dry_run, *to, out.output).await
        }
        Command::Pin { reference, out } => {
            show::pin(&client(&cli)?, reference, true, out.output).await
        }
        Command::Unpin { reference, out } => {
            show::pin(&client(&cli)?, reference, false, out.output).await
        }
        Command::Pull(args) => model::pull(&client(&cli)?, args).await,
        Command::Preheat(args) => model::preheat(&client(&cli)?, args).await,
        Command::Export(args) => model::export(&client(&cli)?, args).await,
        Command::Import(args) => model::import(&client(&cli)?, args).await,
    }
}

/// Prints `value` as JSON on stdout.
fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| ClientError::Other(e.to_string()))?;
    println!("{text}");
    Ok(())
}
