//! shoald configuration: command-line flags, `SHOAL_*` environment variables and an
//! optional TOML file (`--config`).
//!
//! Precedence is flag > environment > file > built-in default. The TOML keys are the
//! long flag names (`data-dir`, `insecure-registry = ["a", "b"]`, ...); an unknown key
//! fails start-up with its name, like an unknown flag does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, ValueEnum};

/// `--chunk-size`'s default as written: [`shoal_proto::DEFAULT_CHUNK_SIZE`] (a test keeps
/// them one value). The benchmark and the simulator take it as their default too.
pub const DEFAULT_CHUNK_SIZE_ARG: &str = "512KiB";

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The shoald configuration.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "shoald",
    version,
    about = "shoal node daemon: a chunked, verified pull-through OCI registry mirror for container runtimes",
    long_about = None
)]
pub struct Config {
    /// TOML file with any of these options (keys are the long flag names, e.g. `data-dir`).
    #[arg(long, env = "SHOAL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Directory for blobs, partial downloads and the metadata index.
    #[arg(
        long,
        env = "SHOAL_DATA_DIR",
        value_name = "PATH",
        default_value = "/var/lib/shoal"
    )]
    pub data_dir: PathBuf,

    /// Address of the registry-mirror HTTP endpoint (also serves /metrics and /healthz).
    #[arg(
        long,
        env = "SHOAL_MIRROR_ADDR",
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:5050"
    )]
    pub mirror_addr: SocketAddr,

    /// Also serve `/metrics` and `/healthz` on this address (for Prometheus and probes
    /// when the mirror itself listens on loopback only).
    #[arg(long, env = "SHOAL_METRICS_ADDR", value_name = "HOST:PORT")]
    pub metrics_addr: Option<SocketAddr>,

    /// How long shoald waits on SIGTERM for in-flight peer uploads (and mirror requests)
    /// before exiting.
    #[arg(long, env = "SHOAL_SHUTDOWN_GRACE", value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Unix socket of the control API the `shoal` CLI talks to (default:
    /// `<data-dir>/shoald.sock`). Access is whoever may open the file (mode 0660).
    #[arg(long, env = "SHOAL_CONTROL_SOCKET", value_name = "PATH")]
    pub control_socket: Option<PathBuf>,

    /// Also serve the control API on this TCP address. Off loopback it needs
    /// --cluster-secret-file, and clients send the secret as `Authorization: Bearer`.
    #[arg(long, env = "SHOAL_CONTROL_ADDR", value_name = "HOST:PORT")]
    pub control_addr: Option<SocketAddr>,

    /// Upstream registry reached over plain HTTP instead of HTTPS (repeatable).
    #[arg(
        long,
        env = "SHOAL_INSECURE_REGISTRY",
        value_name = "HOST[:PORT]",
        value_delimiter = ','
    )]
    pub insecure_registry: Vec<String>,

    /// Upstream used when a request carries no `?ns=` query parameter.
    #[arg(
        long,
        env = "SHOAL_DEFAULT_UPSTREAM",
        value_name = "HOST",
        default_value = "docker.io"
    )]
    pub default_upstream: String,

    /// Docker `config.json` whose `auths` hold credentials for upstream registries.
    #[arg(long, env = "SHOAL_CREDENTIALS", value_name = "FILE")]
    pub credentials: Option<PathBuf>,

    /// Log format.
    #[arg(long, env = "SHOAL_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Disk quota for the content store (e.g. `200GiB`, `0` = unlimited). Least recently
    /// used unpinned blobs are evicted to stay under it.
    #[arg(long, env = "SHOAL_MAX_DISK", value_name = "SIZE", default_value = "0", value_parser = parse_size)]
    pub max_disk: u64,

    /// Chunk size for new blobs (64KiB..64MiB).
    #[arg(long, env = "SHOAL_CHUNK_SIZE", value_name = "SIZE", default_value = DEFAULT_CHUNK_SIZE_ARG, value_parser = parse_chunk_size)]
    pub chunk_size: u64,

    /// How long a tag→digest resolution is trusted before asking the upstream again.
    #[arg(long, env = "SHOAL_TAG_TTL", value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub tag_ttl: Duration,

    /// Serve the last known digest of a tag when the upstream is unreachable.
    #[arg(long, env = "SHOAL_STALE_IF_ERROR", value_name = "BOOL", default_value = "true", action = clap::ArgAction::Set)]
    pub stale_if_error: bool,

    /// When a pull begins (a whole-blob GET of a layer of a manifest served in the last
    /// 10 minutes), start downloading the image's other blobs that the store lacks, if
    /// they total at most SIZE and fit the quota's free room (`0` = off). containerd
    /// pulls three layers at a time; this lets a model's later layers flow from the
    /// first second. A manifest or config GET alone (`skopeo inspect`) and ranged reads
    /// (lazy-pulling snapshotters) start nothing.
    #[arg(long, env = "SHOAL_PREFETCH", value_name = "SIZE", default_value = "1TiB", value_parser = parse_size)]
    pub prefetch: u64,

    /// Timeout for connecting to an upstream and for each upstream read.
    #[arg(long, env = "SHOAL_UPSTREAM_TIMEOUT", value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub upstream_timeout: Duration,

    /// UDP address of the peer chunk-transfer endpoint (QUIC). Unset: this node does not
    /// serve peers. Peers must be able to reach it, so bind the node IP or 0.0.0.0.
    #[arg(long, env = "SHOAL_TRANSFER_ADDR", value_name = "HOST:PORT")]
    pub transfer_addr: Option<SocketAddr>,

    /// UDP address of the libp2p discovery socket (QUIC: Kademlia, identify, mDNS).
    /// Needs --transfer-addr too. Unset: no swarm, the origin is the only source.
    #[arg(long, env = "SHOAL_P2P_ADDR", value_name = "HOST:PORT")]
    pub p2p_addr: Option<SocketAddr>,

    /// The IP peers should dial, when it is not the bound one (e.g. the node IP under
    /// hostNetwork with 0.0.0.0 bound).
    #[arg(long, env = "SHOAL_ADVERTISE_ADDR", value_name = "IP")]
    pub advertise_addr: Option<std::net::IpAddr>,

    /// A peer to start discovery from; repeatable. `IP:PORT` of its --p2p-addr, a
    /// multiaddr with or without `/p2p/<id>`, or `dns:NAME:PORT` (every address of NAME,
    /// e.g. a headless Service; re-resolved every 30 s).
    #[arg(
        long,
        env = "SHOAL_BOOTSTRAP",
        value_name = "ADDR",
        value_delimiter = ','
    )]
    pub bootstrap: Vec<crate::net::discovery::Bootstrap>,

    /// Discover peers on the local network with mDNS (edge fleets without a bootstrap list).
    #[arg(long, env = "SHOAL_MDNS", value_name = "BOOL", default_value = "false", default_missing_value = "true", num_args = 0..=1, action = clap::ArgAction::Set)]
    pub mdns: bool,

    /// Lifetime of this node's provider records in the DHT (republished at a third of
    /// it): how long a dead node may still be listed as holding a blob.
    #[arg(long, env = "SHOAL_PROVIDER_TTL", value_name = "DURATION", default_value = "3m", value_parser = humantime::parse_duration)]
    pub provider_ttl: Duration,

    /// File holding the swarm's shared cluster secret. Without it any node can join.
    #[arg(long, env = "SHOAL_CLUSTER_SECRET_FILE", value_name = "PATH")]
    pub cluster_secret_file: Option<PathBuf>,

    /// Chunk uploads this node serves to peers at once; each requesting node gets at most
    /// this many divided by the nodes requesting at the time.
    #[arg(long, env = "SHOAL_MAX_UPLOADS", value_name = "N", default_value = "8")]
    pub max_uploads: usize,

    /// Upload bandwidth this node gives peers, in bytes per second (e.g. `200MiB`;
    /// `0` = unlimited).
    #[arg(long, env = "SHOAL_MAX_UPLOAD_RATE", value_name = "SIZE", default_value = "0", value_parser = parse_size)]
    pub max_upload_rate: u64,

    /// Download bandwidth this node takes from peers, in bytes per second (`0` = unlimited).
    #[arg(long, env = "SHOAL_MAX_DOWNLOAD_RATE", value_name = "SIZE", default_value = "0", value_parser = parse_size)]
    pub max_download_rate: u64,

    /// The least this node's peers may have in flight towards it at once, split among
    /// the peers it downloads from (QUIC flow control). It bounds the queue the swarm
    /// builds in front of the node's downlink; on a fast link it grows to 20 ms of what
    /// the node receives (at most 32 MiB).
    #[arg(long, env = "SHOAL_RECEIVE_BUDGET", value_name = "SIZE", default_value = "1MiB", value_parser = parse_size)]
    pub receive_budget: u64,

    /// Async worker threads (`0`: one per CPU core). Hashing and file I/O run on separate
    /// blocking threads either way. On a node with few cores and slow links, 1 spends less
    /// CPU on waking threads for the same transfer (benches/RESULTS.md, session 21).
    #[arg(
        long,
        env = "SHOAL_WORKER_THREADS",
        value_name = "N",
        default_value = "0"
    )]
    pub worker_threads: usize,

    /// Retries of a failed upstream request (with exponential backoff) before giving up.
    #[arg(
        long,
        env = "SHOAL_UPSTREAM_RETRIES",
        value_name = "N",
        default_value = "3"
    )]
    pub upstream_retries: u32,
}

impl Config {
    /// Where the control socket is: the flag, or `shoald.sock` in the data directory.
    pub fn control_socket_path(&self) -> PathBuf {
        self.control_socket
            .clone()
            .unwrap_or_else(|| self.data_dir.join("shoald.sock"))
    }
}

pub use shoal_proto::size::parse_size;

fn parse_chunk_size(s: &str) -> Result<u64, String> {
    let v = parse_size(s)?;
    let (min, max) = (
        shoal_proto::chunk::MIN_CHUNK_SIZE,
        shoal_proto::chunk::MAX_CHUNK_SIZE,
    );
    if v < u64::from(min) || v > u64::from(max) {
        return Err(format!("chunk size must be between {min} and {max} bytes"));
    }
    Ok(v)
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Bad flags or environment (clap's message names the option).
    #[error(transparent)]
    Cli(#[from] clap::Error),
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has an unknown or invalid key.
    #[error("config file {path}: {message}")]
    File {
        /// File path.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
}

impl Config {
    /// Loads the configuration from `args` (including argv\[0\]), the environment and
    /// the file named by `--config`.
    pub fn load_from<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        let matches = Config::command().try_get_matches_from(&args)?;
        let Some(path) = matches.get_one::<PathBuf>("config").cloned() else {
            return Ok(Config::from_arg_matches(&matches)?);
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::File {
                path: path.clone(),
                message: e.message().to_owned(),
            })?;
        // Re-parse with the file's values inserted as flags *before* the real ones,
        // but only for options the command line and environment left at default.
        let mut merged: Vec<std::ffi::OsString> =
            vec![args.first().cloned().unwrap_or_else(|| "shoald".into())];
        let cmd = Config::command();
        for (key, value) in &table {
            let known = cmd
                .get_arguments()
                .any(|a| a.get_long() == Some(key.as_str()) && key != "config");
            if !known {
                return Err(ConfigError::File {
                    path,
                    message: format!("unknown option {key:?}"),
                });
            }
            if !from_default(&matches, key) {
                continue;
            }
            for v in toml_values(key, value).map_err(|message| ConfigError::File {
                path: path.clone(),
                message,
            })? {
                merged.push(format!("--{key}").into());
                merged.push(v.into());
            }
        }
        merged.extend(args.into_iter().skip(1));
        let matches = Config::command()
            .try_get_matches_from(&merged)
            .map_err(|e| ConfigError::File {
                path: path.clone(),
                message: e.to_string().lines().next().unwrap_or_default().to_owned(),
            })?;
        Ok(Config::from_arg_matches(&matches)?)
    }
}

fn from_default(matches: &ArgMatches, key: &str) -> bool {
    let id = key.replace('-', "_");
    matches!(
        matches.value_source(&id),
        None | Some(ValueSource::DefaultValue)
    )
}

fn toml_values(key: &str, value: &toml::Value) -> Result<Vec<String>, String> {
    let scalar = |v: &toml::Value| match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(format!(
            "option {key:?} has unsupported value type {}",
            other.type_str()
        )),
    };
    match value {
        toml::Value::Array(items) => items.iter().map(scalar).collect(),
        v => Ok(vec![scalar(v)?]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4MiB").unwrap(), 4 << 20);
        assert_eq!(parse_size("10k").unwrap(), 10_000);
        assert_eq!(parse_size("0").unwrap(), 0);
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }

    #[test]
    fn file_values_apply_below_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("shoald.toml");
        std::fs::write(
            &f,
            "data-dir = \"/from/file\"\nmax-disk = \"1GiB\"\ninsecure-registry = [\"a:5000\", \"b\"]\nstale-if-error = false\n",
        )
        .unwrap();
        let c = Config::load_from([
            "shoald",
            "--config",
            f.to_str().unwrap(),
            "--data-dir",
            "/from/flag",
        ])
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(c.max_disk, 1 << 30);
        assert_eq!(c.insecure_registry, vec!["a:5000", "b"]);
        assert!(!c.stale_if_error);
    }

    #[test]
    fn the_default_chunk_size_is_the_protocol_default() {
        let c = Config::load_from(["shoald"]).unwrap();
        assert_eq!(c.chunk_size, u64::from(shoal_proto::DEFAULT_CHUNK_SIZE));
    }

    /// The flag's default and the transfer endpoint's (`TransferOptions::default`, which
    /// the tests use) are written twice; this keeps them one value.
    #[test]
    fn the_default_receive_budget_is_the_transfer_default() {
        let c = Config::load_from(["shoald"]).unwrap();
        assert_eq!(
            c.receive_budget,
            crate::net::transfer::window::DEFAULT_RECEIVE_BUDGET
        );
    }

    #[test]
    fn worker_threads_default_to_one_per_core_and_take_a_count() {
        assert_eq!(Config::load_from(["shoald"]).unwrap().worker_threads, 0);
        let c = Config::load_from(["shoald", "--worker-threads", "1"]).unwrap();
        assert_eq!(c.worker_threads, 1);
        let err = Config::load_from(["shoald", "--worker-threads", "some"]).unwrap_err();
        assert!(err.to_string().contains("--worker-threads"), "{err}");
    }

    #[test]
    fn shipped_example_config_parses() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/shoald.toml");
        let c = Config::load_from(["shoald", "--config", example]).unwrap();
        assert_eq!(c.max_disk, 200 << 30);
        assert_eq!(c.log_format, LogFormat::Json);
    }

    #[test]
    fn unknown_file_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("shoald.toml");
        std::fs::write(&f, "data-dri = \"/x\"\n").unwrap();
        let err = Config::load_from(["shoald", "--config", f.to_str().unwrap()]).unwrap_err();
        assert!(err.to_string().contains("data-dri"), "{err}");
    }

    #[test]
    fn invalid_flag_value_is_named() {
        let err = Config::load_from(["shoald", "--chunk-size", "1"]).unwrap_err();
        assert!(err.to_string().contains("--chunk-size"), "{err}");
        let err = Config::load_from(["shoald", "--bogus"]).unwrap_err();
        assert!(err.to_string().contains("--bogus"), "{err}");
    }
}
