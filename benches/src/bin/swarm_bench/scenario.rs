//! Running the scenarios on the emulated network.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::daemon::{Daemon, UdpCounters};
use crate::host_memory::{self, HotReserve};
use crate::netns::{self, Host, Network, ShaperCounters, TcpSegments};
use crate::report::{self, ScenarioResult};
use crate::timeline::{Sampler, Timeline};

/// Options of `swarm-bench run`.
#[derive(clap::Args, Clone)]
pub struct RunArgs {
    /// Node hosts.
    #[arg(long, default_value = "8")]
    pub nodes: usize,
    /// Link rate of every host, origin included (tc syntax).
    #[arg(long, default_value = "200mbit")]
    pub rate: String,
    /// MTU of every link (9000 for a jumbo-frame network).
    #[arg(long, default_value = "1500", value_parser = clap::value_parser!(u32).range(1280..=65535))]
    pub mtu: u32,
    /// Total size of the weight layers.
    #[arg(long, default_value = "512MiB", value_parser = shoal_daemon::config::parse_size)]
    pub size: u64,
    /// Weight layers the size is split into.
    #[arg(long, default_value = "4")]
    pub layers: usize,
    /// shoald's chunk size.
    #[arg(long, default_value = shoal_daemon::config::DEFAULT_CHUNK_SIZE_ARG)]
    pub chunk_size: String,
    /// Scenarios to run, in order.
    #[arg(long, value_delimiter = ',', default_value = "direct,cold,warm,churn")]
    pub scenarios: Vec<String>,
    /// Output folder (results.md, completion.svg, timeline-SCENARIO.csv, logs/).
    #[arg(long, default_value = "swarm-bench-out")]
    pub out: PathBuf,
    /// The shoald binary (default: next to this one).
    #[arg(long)]
    pub shoald: Option<PathBuf>,
    /// The daemons' log filter (`SHOAL_LOG`); `info,shoal_daemon::swarm=debug` adds each
    /// download's progress every 2 s.
    #[arg(long, default_value = "info")]
    pub log: String,
    /// An extra shoald flag for every node, repeatable: `--shoald-arg=--max-uploads=16`.
    #[arg(long, allow_hyphen_values = true)]
    pub shoald_arg: Vec<String>,
    /// Where the registry's storage and every node's store go (default: `$TMPDIR`).
    /// Every emulated node writes to this one file system, which real nodes do not
    /// share: `/dev/shm` takes the shared disk out of the measurement.
    #[arg(long)]
    pub store_dir: Option<PathBuf>,
    /// Memory to write before each scenario and free as the scenario fills memory, so
    /// that no run pays for memory the machine handed back to its host
    /// (`host_memory.rs`): `auto` is (nodes + 1) × the model, `0` turns it off.
    #[arg(long, default_value = "auto", value_parser = parse_prefault)]
    pub prefault: Prefault,
}

/// `--prefault`: how much memory to write before each scenario.
#[derive(Clone, Copy, Debug)]
pub enum Prefault {
    /// What the scenario's stores will hold, and one store more.
    Auto,
    Bytes(u64),
}

fn parse_prefault(s: &str) -> Result<Prefault, String> {
    if s == "auto" {
        return Ok(Prefault::Auto);
    }
    shoal_daemon::config::parse_size(s).map(Prefault::Bytes)
}

/// Pulls running in a scenario's timed part, and what is measured over it.
struct TimedPulls {
    /// Frees the pre-faulted memory as the pulls fill memory; dropped when they end.
    _release: host_memory::Release,
    pulls: Vec<(usize, Child)>,
    net_before: NetCounters,
    sampler: Sampler,
}

/// What a scenario's timed part measured: each pulling node's completion seconds, what
/// the origin sent and the links dropped, and the timeline.
struct TimedResult {
    times: Vec<(usize, f64)>,
    net: NetCounters,
    timeline: Timeline,
}

/// The network's counters (the origin's link, every link's shaper), or their change
/// over a scenario's timed part.
struct NetCounters {
    origin_bytes: u64,
    origin_tcp: TcpSegments,
    shapers: ShaperCounters,
}

impl NetCounters {
    fn since(self, before: NetCounters) -> NetCounters {
        NetCounters {
            origin_bytes: self.origin_bytes - before.origin_bytes,
            origin_tcp: self.origin_tcp.since(before.origin_tcp),
            shapers: self.shapers.since(before.shapers),
        }
    }
}

struct Bench {
    args: RunArgs,
    net: Network,
    shoald: PathBuf,
    work: tempfile::TempDir,
    model_bytes: u64,
    rate: f64,
    /// docker-registry's process, through which the timeline reads the origin's link.
    origin_pid: u32,
}

pub async fn run(args: RunArgs) -> Result<()> {
    for tool in ["ip", "tc", "docker-registry"] {
        which(tool)?;
    }
    let shoald = match &args.shoald {
        Some(p) => p.clone(),
        None => crate::self_exe()?.with_file_name("shoald"),
    };
    if !shoald.exists() {
        bail!(
            "{} not found: build it (cargo build --release -p shoal-daemon) or pass --shoald",
            shoald.display()
        );
    }
    // `ip netns exec` looks a bare name up in PATH: a relative path that exists here
    // would start no daemon at all.
    let shoald = std::fs::canonicalize(&shoald)
        .with_context(|| format!("resolving {}", shoald.display()))?;
    let rate = netns::rate_bytes_per_sec(&args.rate)?;
    std::fs::create_dir_all(args.out.join("logs"))?;
    let net = Network::build(args.nodes, &args.rate, args.mtu)
        .context("building the emulated network (root needed)")?;
    let work = match &args.store_dir {
        Some(dir) => tempfile::tempdir_in(dir)
            .with_context(|| format!("creating a work folder in {}", dir.display()))?,
        None => tempfile::tempdir()?,
    };
    std::fs::write(work.path().join("secret"), "swarm-bench secret\n")?;
    let registry = start_registry(&net.origin, work.path())?;
    let model_bytes = push_model(&net.origin, &args)?;
    let mut bench = Bench {
        args: args.clone(),
        net,
        shoald,
        work,
        model_bytes,
        rate,
        origin_pid: registry.0.id(),
    };
    let mut results = Vec::new();
    for name in &args.scenarios {
        eprintln!("== scenario {name}");
        let r = bench
            .scenario(name)
            .await
            .with_context(|| format!("scenario {name}"))?;
        eprintln!("{}", report::row(&r));
        results.push(r);
    }
    drop(registry);
    let stores = report::file_system_of(bench.work.path());
    let md = report::markdown(&args, model_bytes, rate, &stores, &results);
    std::fs::write(args.out.join("results.md"), &md)?;
    std::fs::write(args.out.join("completion.svg"), report::svg(&results))?;
    println!("{md}");
    Ok(())
}

fn which(tool: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()))
        .unwrap_or(false);
    if !found {
        bail!("{tool} not found (apt-get install iproute2 docker-registry)");
    }
    Ok(())
}

struct Registry(Child);

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_registry(origin: &Host, work: &Path) -> Result<Registry> {
    let config = work.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {}:5000\n",
            work.join("registry").display(),
            origin.ip
        ),
    )?;
    let child = Command::new("ip")
        .args(["netns", "exec", &origin.ns, "docker-registry", "serve"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.join("registry.log"))?)
        .spawn()?;
    Ok(Registry(child))
}

fn push_model(origin: &Host, args: &RunArgs) -> Result<u64> {
    let registry = format!("{}:5000", origin.ip);
    // The registry needs a moment; push retries for a few seconds.
    for attempt in 0..50 {
        let out = Command::new("ip")
            .args(["netns", "exec", &origin.ns])
            .arg(crate::self_exe()?)
            .args([
                "push",
                "--registry",
                &registry,
                "--size",
                &args.size.to_string(),
                "--layers",
                &args.layers.to_string(),
            ])
            .output()?;
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .context("push output");
        }
        if attempt == 49 {
            bail!("push failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    unreachable!()
}

impl Bench {
    fn t_limit(&self) -> f64 {
        self.model_bytes as f64 / self.rate
    }

    fn daemon_args(&self, i: usize, scenario: &str) -> Vec<String> {
        let node = &self.net.nodes[i];
        let origin = format!("{}:5000", self.net.origin.ip);
        let mut a: Vec<String> = vec![
            "--data-dir".into(),
            self.work
                .path()
                .join(scenario)
                .join(format!("n{i}"))
                .display()
                .to_string(),
            "--mirror-addr".into(),
            "127.0.0.1:5050".into(),
            "--p2p-addr".into(),
            format!("{}:4001", node.ip),
            "--transfer-addr".into(),
            format!("{}:4002", node.ip),
            "--insecure-registry".into(),
            origin.clone(),
            "--default-upstream".into(),
            origin,
            "--cluster-secret-file".into(),
            self.work.path().join("secret").display().to_string(),
            "--chunk-size".into(),
            self.args.chunk_size.clone(),
        ];
        a.extend(self.args.shoald_arg.iter().cloned());
        if i > 0 {
            a.push("--bootstrap".into());
            a.push(format!("{}:4001", self.net.nodes[0].ip));
        }
        a
    }

    fn start_daemons(&self, scenario: &str) -> Result<Vec<Daemon>> {
        let mut daemons = Vec::new();
        for (i, node) in self.net.nodes.iter().enumerate() {
            let log = self
                .args
                .out
                .join("logs")
                .join(format!("{scenario}-n{i}.log"));
            let _ = std::fs::remove_file(&log);
            daemons.push(Daemon::spawn(
                &node.ns,
                &self.shoald,
                self.daemon_args(i, scenario),
                log,
                &self.args.log,
            )?);
        }
        // Every node should know every other before the rollout starts.
        let want = self.net.nodes.len() - 1;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            for (i, d) in daemons.iter_mut().enumerate() {
                if let Ok(Some(status)) = d.child.try_wait() {
                    let logs = d.logs();
                    let tail: Vec<&str> = logs.lines().rev().take(5).collect();
                    bail!(
                        "shoald on node {i} exited at start ({status}); its log ends:\n{}",
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                }
            }
            if daemons
                .iter()
                .all(|d| d.logs().matches("peer identified").count() >= want)
            {
                return Ok(daemons);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!("warning: not every node identified all {want} peers within 30 s");
        Ok(daemons)
    }

    /// Spawns a pull in every node of `which`; returns the children.
    fn spawn_pulls(
        &self,
        which: &[usize],
        base: &str,
    ) -> Result<Vec<(usize, std::process::Child)>> {
        let exe = crate::self_exe()?;
        which
            .iter()
            .map(|&i| {
                let child = Command::new("ip")
                    .args(["netns", "exec", &self.net.nodes[i].ns])
                    .arg(&exe)
                    .args(["pull", "--base", base])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()?;
                Ok((i, child))
            })
            .collect()
    }

    fn collect(pulls: Vec<(usize, Child)>) -> Result<Vec<(usize, f64)>> {
        let mut times = Vec::new();
        for (i, child) in pulls {
            let out = child.wait_with_output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() {
                bail!("node {i}'s pull failed");
            }
            let secs: f64 = text
                .split_whitespace()
                .next()
                .and_then(|s| s.parse().ok())
                .context("pull output")?;
            times.push((i, secs));
        }
        Ok(times)
    }

    /// What the origin has sent so far (bytes on its link, its TCP segments), and what
    /// the links' shapers have passed and dropped.
    fn net_counters(&self) -> Result<NetCounters> {
        Ok(NetCounters {
            origin_bytes: Network::tx_bytes(&self.net.origin)?,
            origin_tcp: Network::tcp_segments(&self.net.origin)?,
            shapers: self.net.shaper_counters()?,
        })
    }

    /// Starts the timed part: pulls on the `which` nodes from `base`, with the network's
    /// counters read just before and the timeline sampled from then on.
    fn start_timed(
        &self,
        which: &[usize],
        base: &str,
        daemons: &[Daemon],
        reserve: HotReserve,
    ) -> Result<TimedPulls> {
        let net_before = self.net_counters()?;
        let release = reserve.release_on_demand();
        let pulls = self.spawn_pulls(which, base)?;
        let sampler = self.sample_nodes(&pulls, daemons);
        Ok(TimedPulls {
            _release: release,
            pulls,
            net_before,
            sampler,
        })
    }

    /// Waits for the timed pulls; their times, the change in the network's counters
    /// meanwhile, and the timeline. The sampler stops even when a pull failed.
    fn finish_timed(&self, timed: TimedPulls) -> Result<TimedResult> {
        let times = Bench::collect(timed.pulls);
        let timeline = timed.sampler.finish();
        Ok(TimedResult {
            times: times?,
            net: self.net_counters()?.since(timed.net_before),
            timeline,
        })
    }

    /// Samples every node while `pulls` run, through its daemon's process (which serves
    /// peers after its own pull is done) or, without one (`direct`, or a churned daemon
    /// killed), its pull client's.
    fn sample_nodes(&self, pulls: &[(usize, Child)], daemons: &[Daemon]) -> Sampler {
        let pids = (0..self.net.nodes.len())
            .map(|i| {
                let daemon = daemons.get(i).map(|d| d.child.id());
                let pull = pulls.iter().find(|(n, _)| *n == i).map(|(_, c)| c.id());
                daemon.into_iter().chain(pull).collect()
            })
            .collect();
        Sampler::start(self.origin_pid, pids)
    }

    /// Writes the memory the next scenario will fill (`--prefault`), to be freed as it
    /// does; how much, and how long the write took.
    fn prefault(&self) -> (HotReserve, Duration) {
        let bytes = match self.args.prefault {
            Prefault::Auto => host_memory::reserve_size(self.net.nodes.len(), self.model_bytes),
            Prefault::Bytes(b) => b,
        };
        HotReserve::fill(bytes)
    }

    async fn scenario(&mut self, name: &str) -> Result<ScenarioResult> {
        let all: Vec<usize> = (0..self.net.nodes.len()).collect();
        let (reserve, took) = self.prefault();
        let prefault = (reserve.held(), took);
        eprintln!(
            "prefaulted {:.1} GiB in {:.2} s",
            prefault.0 as f64 / (1u64 << 30) as f64,
            prefault.1.as_secs_f64()
        );
        let origin_base = format!("http://{}:5000", self.net.origin.ip);
        let mirror = "http://127.0.0.1:5050";
        let mut daemons = Vec::new();
        let mut udp_before: Vec<UdpCounters> = Vec::new();
        let TimedResult {
            times,
            net,
            timeline,
        } = match name {
            "direct" => {
                let timed = self.start_timed(&all, &origin_base, &daemons, reserve)?;
                self.finish_timed(timed)?
            }
            "cold" | "churn" => {
                daemons = self.start_daemons(name)?;
                udp_before = daemons.iter().map(Daemon::udp_counters).collect();
                let timed = self.start_timed(&all, mirror, &daemons, reserve)?;
                if name == "churn" {
                    std::thread::sleep(Duration::from_secs_f64(self.t_limit() * 0.4));
                    let victims: Vec<usize> = all.iter().copied().filter(|i| i % 3 == 1).collect();
                    for &v in &victims {
                        daemons[v].kill();
                    }
                    eprintln!("killed nodes {victims:?}");
                    std::thread::sleep(Duration::from_secs(1));
                    for &v in &victims {
                        let d = &daemons[v];
                        daemons[v] = Daemon::spawn(
                            &d.ns,
                            &self.shoald,
                            d.args.clone(),
                            d.log.clone(),
                            &self.args.log,
                        )?;
                    }
                }
                self.finish_timed(timed)?
            }
            "warm" => {
                daemons = self.start_daemons(name)?;
                Bench::collect(self.spawn_pulls(&[0], mirror)?)?;
                udp_before = daemons.iter().map(Daemon::udp_counters).collect();
                let timed = self.start_timed(&all[1..], mirror, &daemons, reserve)?;
                self.finish_timed(timed)?
            }
            other => bail!("unknown scenario {other:?} (direct, cold, warm, churn)"),
        };
        let usage: Vec<(u64, f64)> = daemons.iter().map(Daemon::usage).collect();
        let udp = daemons
            .iter()
            .zip(&udp_before)
            .map(|(d, before)| d.udp_counters().since(*before))
            .fold(UdpCounters::default(), |sum, u| UdpCounters {
                received: sum.received + u.received,
                dropped: sum.dropped + u.dropped,
            });
        drop(daemons);
        let _ = std::fs::remove_dir_all(self.work.path().join(name));
        std::fs::write(
            self.args.out.join(format!("timeline-{name}.csv")),
            timeline.csv(self.rate),
        )?;
        Ok(ScenarioResult {
            name: name.to_owned(),
            times: times.into_iter().map(|(_, t)| t).collect(),
            t_limit: self.t_limit(),
            egress: net.origin_bytes,
            origin_tcp: net.origin_tcp,
            shapers: net.shapers,
            model_bytes: self.model_bytes,
            peak_rss: usage.iter().map(|u| u.0).max().unwrap_or(0),
            cpu_secs: usage.iter().map(|u| u.1).sum(),
            udp,
            cpu_busy: timeline.cpu_busy(),
            prefault,
        })
    }
}
