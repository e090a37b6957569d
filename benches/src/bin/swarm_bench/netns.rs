//! The emulated network: one network namespace per host, each with an `eth0` veth
//! whose other end sits on a bridge in a core namespace. Both directions of every link
//! (the origin's too) are shaped to the same rate with `tc tbf`: the host side shapes
//! its uploads, the bridge side its downloads.

use std::process::{Command, Output};

use anyhow::{bail, Context as _, Result};

/// Namespace names start with this; a run first removes leftovers of a failed one.
pub const PREFIX: &str = "shb-";
const CORE: &str = "shb-core";
const SUBNET: &str = "10.77.0";

/// One host of the emulated network.
#[derive(Debug, Clone)]
pub struct Host {
    /// Namespace name.
    pub ns: String,
    /// Its address on the bridge.
    pub ip: String,
}

/// The namespaces of one run; removed on drop.
pub struct Network {
    pub origin: Host,
    pub nodes: Vec<Host>,
}

fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

fn ip(args: &[&str]) -> Result<Output> {
    run(Command::new("ip").args(args))
}

/// Removes every namespace this harness may have left behind.
pub fn cleanup() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if name.starts_with(PREFIX) {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// A namespace's TCP segment counters, or their change over a scenario.
#[derive(Clone, Copy, Default)]
pub struct TcpSegments {
    pub sent: u64,
    pub retransmitted: u64,
}

impl TcpSegments {
    pub fn since(self, before: TcpSegments) -> TcpSegments {
        TcpSegments {
            sent: self.sent.saturating_sub(before.sent),
            retransmitted: self.retransmitted.saturating_sub(before.retransmitted),
        }
    }
}

/// The link shapers' packet counters over every link, both directions, or their change
/// over a scenario. A `tbf` drops what arrives at a full queue: on this network, where
/// nothing else drops, that is every packet lost, the loss QUIC's congestion control
/// reacts to and retransmits.
#[derive(Clone, Copy, Default)]
pub struct ShaperCounters {
    pub sent: u64,
    pub dropped: u64,
}

impl ShaperCounters {
    pub fn since(self, before: ShaperCounters) -> ShaperCounters {
        ShaperCounters {
            sent: self.sent.saturating_sub(before.sent),
            dropped: self.dropped.saturating_sub(before.dropped),
        }
    }
}

impl Network {
    /// Builds the origin and `nodes` node hosts with links of `rate` (a tc rate, e.g.
    /// `200mbit`) and `mtu`.
    pub fn build(nodes: usize, rate: &str, mtu: u32) -> Result<Network> {
        cleanup();
        let mtu = mtu.to_string();
        ip(&["netns", "add", CORE])?;
        ip(&[
            "-n", CORE, "link", "add", "br0", "mtu", &mtu, "type", "bridge",
        ])?;
        ip(&["-n", CORE, "link", "set", "br0", "up"])?;
        let origin = Network::add_host("shb-origin", 1, rate, &mtu)?;
        let mut hosts = Vec::new();
        for i in 0..nodes {
            hosts.push(Network::add_host(&format!("shb-n{i}"), 10 + i, rate, &mtu)?);
        }
        Ok(Network {
            origin,
            nodes: hosts,
        })
    }

    fn add_host(ns: &str, octet: usize, rate: &str, mtu: &str) -> Result<Host> {
        let host_if = format!("h{octet}");
        let core_if = format!("c{octet}");
        let addr = format!("{SUBNET}.{octet}");
        ip(&["netns", "add", ns])?;
        ip(&[
            "link", "add", &host_if, "mtu", mtu, "type", "veth", "peer", "name", &core_if, "mtu",
            mtu,
        ])?;
        ip(&["link", "set", &host_if, "netns", ns])?;
        ip(&["link", "set", &core_if, "netns", CORE])?;
        ip(&["-n", CORE, "link", "set", &core_if, "master", "br0"])?;
        ip(&["-n", CORE, "link", "set", &core_if, "up"])?;
        ip(&["-n", ns, "link", "set", &host_if, "name", "eth0"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        shape(ns, "eth0", rate)?;
        shape(CORE, &core_if, rate)?;
        Ok(Host {
            ns: ns.to_owned(),
            ip: addr,
        })
    }

    /// TCP segments `host` has sent so far, and how many of them were retransmissions.
    pub fn tcp_segments(host: &Host) -> Result<TcpSegments> {
        let out =
            run(Command::new("ip").args(["netns", "exec", &host.ns, "cat", "/proc/net/snmp"]))?;
        let snmp = String::from_utf8_lossy(&out.stdout);
        Ok(TcpSegments {
            sent: snmp_field(&snmp, "Tcp", "OutSegs"),
            retransmitted: snmp_field(&snmp, "Tcp", "RetransSegs"),
        })
    }

    /// The shapers' counters so far, summed over every link: uploads are shaped in each
    /// host's namespace, downloads on the bridge side in the core one.
    pub fn shaper_counters(&self) -> Result<ShaperCounters> {
        let namespaces = std::iter::once(CORE)
            .chain(std::iter::once(self.origin.ns.as_str()))
            .chain(self.nodes.iter().map(|h| h.ns.as_str()));
        let mut sum = ShaperCounters::default();
        for ns in namespaces {
            let out =
                run(Command::new("ip")
                    .args(["netns", "exec", ns, "tc", "-s", "-j", "qdisc", "show"]))?;
            let qdiscs: serde_json::Value = serde_json::from_slice(&out.stdout)
                .with_context(|| format!("`tc -s -j qdisc show` output in {ns}"))?;
            for q in qdiscs.as_array().into_iter().flatten() {
                if q["kind"] == "tbf" {
                    sum.sent += q["packets"].as_u64().unwrap_or(0);
                    sum.dropped += q["drops"].as_u64().unwrap_or(0);
                }
            }
        }
        Ok(sum)
    }

    /// Bytes `host` has sent on its link so far.
    pub fn tx_bytes(host: &Host) -> Result<u64> {
        let out = ip(&["-n", &host.ns, "-j", "-s", "link", "show", "dev", "eth0"])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        v[0]["stats64"]["tx"]["bytes"]
            .as_u64()
            .context("no tx byte counter in `ip -s link` output")
    }
}

/// One counter of `/proc/net/snmp` text: `field` of the `protocol` rows (`Udp`, `Tcp`),
/// 0 if absent.
pub fn snmp_field(snmp: &str, protocol: &str, field: &str) -> u64 {
    let prefix = format!("{protocol}:");
    let mut rows = snmp.lines().filter_map(|l| l.strip_prefix(prefix.as_str()));
    let (Some(names), Some(values)) = (rows.next(), rows.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == field)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// A token bucket on `dev`'s egress: burst of 64 KiB per 100 Mbit/s-ish, latency cap 50 ms.
fn shape(ns: &str, dev: &str, rate: &str) -> Result<()> {
    run(Command::new("ip").args([
        "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate,
        "burst", "256kb", "latency", "50ms",
    ]))?;
    Ok(())
}

impl Drop for Network {
    fn drop(&mut self) {
        cleanup();
    }
}

/// Parses a tc-style rate into bytes per second (see [`shoal_benches::rate_bytes_per_sec`]).
pub fn rate_bytes_per_sec(rate: &str) -> Result<f64> {
    shoal_benches::rate_bytes_per_sec(rate).map_err(anyhow::Error::msg)
}
