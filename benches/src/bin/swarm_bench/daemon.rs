//! One node's shoald, started in its network namespace: its log, what it used (peak
//! RSS, CPU) and its namespace's UDP counters.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, Result};

use crate::host_memory::kib_field;
use crate::netns::snmp_field;

/// A running shoald, killed when dropped.
pub struct Daemon {
    pub child: Child,
    /// Its command line, to restart it the same way (churn).
    pub args: Vec<String>,
    pub ns: String,
    pub log: PathBuf,
}

impl Daemon {
    pub fn spawn(
        ns: &str,
        shoald: &Path,
        args: Vec<String>,
        log: PathBuf,
        filter: &str,
    ) -> Result<Daemon> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(shoald)
            .args(&args)
            .env("SHOAL_LOG", filter)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .context("starting shoald")?;
        Ok(Daemon {
            child,
            args,
            ns: ns.to_owned(),
            log,
        })
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// (peak RSS bytes, CPU seconds) from /proc while it runs.
    pub fn usage(&self) -> (u64, f64) {
        let pid = self.child.id();
        let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| kib_field(&s, "VmHWM:"))
            .unwrap_or(0);
        let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let after = s.rsplit_once(')')?.1;
                let f: Vec<&str> = after.split_whitespace().collect();
                let ticks: f64 =
                    f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
                Some(ticks / 100.0)
            })
            .unwrap_or(0.0);
        (rss, cpu)
    }

    /// Its network namespace's UDP counters (datagrams received, datagrams dropped
    /// because a socket's receive buffer was full). The namespace outlives a killed
    /// daemon, so a restarted one continues the same counters.
    pub fn udp_counters(&self) -> UdpCounters {
        let pid = self.child.id();
        let snmp = std::fs::read_to_string(format!("/proc/{pid}/net/snmp")).unwrap_or_default();
        UdpCounters {
            received: snmp_field(&snmp, "Udp", "InDatagrams"),
            dropped: snmp_field(&snmp, "Udp", "RcvbufErrors"),
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A namespace's UDP counters, or the change in them over a scenario.
#[derive(Clone, Copy, Default)]
pub struct UdpCounters {
    pub received: u64,
    pub dropped: u64,
}

impl UdpCounters {
    pub fn since(self, before: UdpCounters) -> UdpCounters {
        UdpCounters {
            received: self.received.saturating_sub(before.received),
            dropped: self.dropped.saturating_sub(before.dropped),
        }
    }
}
