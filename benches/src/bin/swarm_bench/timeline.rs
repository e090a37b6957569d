//! What the machine and every link did while a scenario's pulls ran, sampled every half
//! second: the share of the machine's CPU that was busy, the origin's bytes up its link,
//! and each node's bytes down and up its link and over its loopback (the local client
//! reading from the mirror). Written as `timeline-<scenario>.csv`; the report's "CPU busy" column is its
//! mean. On a machine this benchmark saturates, that column says so in every run.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const INTERVAL: Duration = Duration::from_millis(500);

/// Cumulative CPU ticks of the whole machine (`/proc/stat`'s first line).
#[derive(Clone, Copy, Default, Debug, PartialEq)]
pub struct CpuTicks {
    /// Everything but idle and iowait (steal included: the vCPU was not ours).
    pub busy: u64,
    pub total: u64,
}

/// Cumulative bytes of one host's interfaces, from its namespace's `/proc/net/dev`.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
pub struct HostBytes {
    /// Received on `eth0`: a node's download.
    pub down: u64,
    /// Sent on `eth0`: a node's upload, the origin's egress.
    pub up: u64,
    /// Sent on `lo`: between the local client and the mirror.
    pub local: u64,
}

struct Sample {
    at: Duration,
    cpu: CpuTicks,
    /// The origin first, then the nodes in order.
    hosts: Vec<HostBytes>,
}

/// A running sampler; [`Sampler::finish`] stops it.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Sample>>,
}

impl Sampler {
    /// Samples until finished. `origin` is a process in the origin's namespace (the
    /// registry); `nodes` holds, per node in order, processes in that node's namespace,
    /// read through the first one still running (a namespace's counters are reachable
    /// only through a live process). When none is, the host's last counters stand, so
    /// it shows no traffic rather than a drop to zero.
    pub fn start(origin: u32, nodes: Vec<Vec<u32>>) -> Sampler {
        let pids: Vec<Vec<u32>> = std::iter::once(vec![origin]).chain(nodes).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut samples: Vec<Sample> = Vec::new();
            loop {
                let hosts = pids
                    .iter()
                    .enumerate()
                    .map(|(i, candidates)| {
                        candidates
                            .iter()
                            .find_map(|&p| read_host(p))
                            .or_else(|| samples.last().map(|s| s.hosts[i]))
                            .unwrap_or_default()
                    })
                    .collect();
                samples.push(Sample {
                    at: started.elapsed(),
                    cpu: read_cpu(),
                    hosts,
                });
                if flag.load(Ordering::Relaxed) {
                    return samples;
                }
                std::thread::sleep(INTERVAL);
            }
        });
        Sampler { stop, thread }
    }

    /// Stops after one more sample (within an interval) and returns the timeline.
    pub fn finish(self) -> Timeline {
        self.stop.store(true, Ordering::Relaxed);
        Timeline {
            samples: self.thread.join().unwrap_or_default(),
        }
    }
}

/// The samples of one scenario.
pub struct Timeline {
    samples: Vec<Sample>,
}

impl Timeline {
    /// The machine's busy share from the first sample to the last, if there were two.
    pub fn cpu_busy(&self) -> Option<f64> {
        let (first, last) = (self.samples.first()?, self.samples.last()?);
        let total = last.cpu.total.checked_sub(first.cpu.total)?;
        (total > 0).then(|| last.cpu.busy.saturating_sub(first.cpu.busy) as f64 / total as f64)
    }

    /// One row per interval: its start, the CPU busy share, the origin's rate up, and
    /// per node the rates down, up and to the local client, all as shares of
    /// `link_rate` bytes per second (the local rate can exceed 1).
    pub fn csv(&self, link_rate: f64) -> String {
        let nodes = self
            .samples
            .first()
            .map_or(0, |s| s.hosts.len().saturating_sub(1));
        let mut out = String::from("t_s,cpu_busy,origin_up");
        for i in 0..nodes {
            let _ = write!(out, ",n{i}_down,n{i}_up,n{i}_local");
        }
        out.push('\n');
        for pair in self.samples.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            let secs = (b.at - a.at).as_secs_f64().max(1e-3);
            let ticks = b.cpu.total.saturating_sub(a.cpu.total).max(1);
            let busy = b.cpu.busy.saturating_sub(a.cpu.busy) as f64 / ticks as f64;
            let share = |from: u64, to: u64| to.saturating_sub(from) as f64 / secs / link_rate;
            let origin = match (a.hosts.first(), b.hosts.first()) {
                (Some(x), Some(y)) => share(x.up, y.up),
                _ => 0.0,
            };
            let _ = write!(out, "{:.2},{busy:.2},{origin:.2}", a.at.as_secs_f64());
            for (x, y) in a.hosts.iter().zip(&b.hosts).skip(1) {
                let _ = write!(
                    out,
                    ",{:.2},{:.2},{:.2}",
                    share(x.down, y.down),
                    share(x.up, y.up),
                    share(x.local, y.local)
                );
            }
            out.push('\n');
        }
        out
    }
}

fn read_cpu() -> CpuTicks {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| parse_cpu(&s))
        .unwrap_or_default()
}

/// The machine-wide `cpu` line of `/proc/stat`: user nice system idle iowait irq
/// softirq steal (guest time is already counted in user).
pub fn parse_cpu(stat: &str) -> Option<CpuTicks> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let total: u64 = ticks.iter().sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some(CpuTicks {
        busy: total - idle,
        total,
    })
}

/// `None` once the process has exited.
fn read_host(pid: u32) -> Option<HostBytes> {
    std::fs::read_to_string(format!("/proc/{pid}/net/dev"))
        .ok()
        .map(|s| parse_net_dev(&s))
}

/// `eth0`'s received and sent bytes and `lo`'s sent bytes from `/proc/net/dev`.
pub fn parse_net_dev(dev: &str) -> HostBytes {
    let mut bytes = HostBytes::default();
    for line in dev.lines() {
        let Some((name, fields)) = line.split_once(':') else {
            continue;
        };
        let f: Vec<u64> = fields
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        let (rx, tx) = (
            f.first().copied().unwrap_or(0),
            f.get(8).copied().unwrap_or(0),
        );
        match name.trim() {
            "eth0" => (bytes.down, bytes.up) = (rx, tx),
            "lo" => bytes.local = tx,
            _ => {}
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET_DEV: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 5000      10    0    0    0     0          0         0     5000      10    0    0    0     0       0          0
  eth0: 123456    100    0    0    0     0          0         0     654321    90    0    0    0     0       0          0
";

    #[test]
    fn net_dev_gives_the_node_link_and_loopback() {
        assert_eq!(
            parse_net_dev(NET_DEV),
            HostBytes {
                down: 123456,
                up: 654321,
                local: 5000
            }
        );
        assert_eq!(parse_net_dev("garbage"), HostBytes::default());
    }

    #[test]
    fn cpu_line_counts_steal_as_busy_and_iowait_as_idle() {
        let stat = "cpu  100 0 50 800 20 0 10 20 0 0\ncpu0 50 0 25 400 10 0 5 10 0 0\n";
        assert_eq!(
            parse_cpu(stat),
            Some(CpuTicks {
                busy: 180,
                total: 1000
            })
        );
        assert_eq!(parse_cpu("intr 1 2 3"), None);
    }

    #[test]
    fn rates_are_shares_of_the_link() {
        let sample = |secs: u64, busy: u64, down: u64| Sample {
            at: Duration::from_secs(secs),
            cpu: CpuTicks {
                busy,
                total: secs * 200,
            },
            hosts: vec![
                HostBytes {
                    up: down / 2,
                    ..HostBytes::default()
                },
                HostBytes {
                    down,
                    up: 0,
                    local: 2 * down,
                },
            ],
        };
        let timeline = Timeline {
            samples: vec![sample(0, 0, 0), sample(1, 150, 500), sample(2, 350, 1000)],
        };
        assert_eq!(
            timeline.csv(1000.0),
            "t_s,cpu_busy,origin_up,n0_down,n0_up,n0_local\n0.00,0.75,0.25,0.50,0.00,1.00\n1.00,1.00,0.25,0.50,0.00,1.00\n"
        );
        assert_eq!(timeline.cpu_busy(), Some(350.0 / 400.0));
        assert_eq!(Timeline { samples: vec![] }.cpu_busy(), None);
    }
}
