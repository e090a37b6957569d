//! The markdown table and the SVG plot.

use std::fmt::Write as _;

use crate::daemon::UdpCounters;
use crate::netns::{ShaperCounters, TcpSegments};
use crate::scenario::RunArgs;

/// What one scenario measured.
pub struct ScenarioResult {
    pub name: String,
    /// Per-node completion seconds.
    pub times: Vec<f64>,
    pub t_limit: f64,
    /// Bytes the origin sent during the timed part.
    pub egress: u64,
    /// The origin's TCP segments sent and retransmitted during the timed part.
    pub origin_tcp: TcpSegments,
    /// Packets every link's shaper passed and dropped during the timed part.
    pub shapers: ShaperCounters,
    pub model_bytes: u64,
    /// Largest peak RSS among the daemons (0 for `direct`).
    pub peak_rss: u64,
    /// CPU seconds of all daemons.
    pub cpu_secs: f64,
    /// The nodes' UDP datagrams received and dropped at full receive buffers.
    pub udp: UdpCounters,
    /// Share of the machine's CPU busy while the pulls ran (`timeline.rs`).
    pub cpu_busy: Option<f64>,
    /// Memory written before the scenario (freed as it filled memory), and how long
    /// the write took.
    pub prefault: (u64, std::time::Duration),
}

impl ScenarioResult {
    fn sorted(&self) -> Vec<f64> {
        let mut t = self.times.clone();
        t.sort_by(f64::total_cmp);
        t
    }

    fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(0.0)
    }
}

const HEADER: &str = "| scenario | nodes | min s | median s | max s | T_limit s | max/T_limit | origin egress | egress/model | peak RSS (max) | daemon CPU s | UDP receive drops | origin TCP retransmitted | link drops | machine CPU busy |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";

/// One table row.
pub fn row(r: &ScenarioResult) -> String {
    let t = r.sorted();
    let (min, med) = (
        t.first().copied().unwrap_or(0.0),
        t.get(t.len() / 2).copied().unwrap_or(0.0),
    );
    // No daemons (the direct scenario): no RSS and no CPU to report. (An empty f64 sum
    // is -0.0, which would print as such.)
    let (rss, cpu, drops) = if r.peak_rss == 0 {
        ("—".to_owned(), "—".to_owned(), "—".to_owned())
    } else {
        (
            format!("{:.0} MiB", r.peak_rss as f64 / 1048576.0),
            format!("{:.1}", r.cpu_secs),
            share_of(r.udp.dropped, r.udp.received),
        )
    };
    let retransmitted = share_of(r.origin_tcp.retransmitted, r.origin_tcp.sent);
    let link_drops = share_of(r.shapers.dropped, r.shapers.sent + r.shapers.dropped);
    let busy = r
        .cpu_busy
        .map_or_else(|| "—".to_owned(), |b| format!("{:.0} %", 100.0 * b));
    format!(
        "| {} | {} | {min:.1} | {med:.1} | {:.1} | {:.1} | {:.2} | {:.0} MiB | {:.3} | {rss} | {cpu} | {drops} | {retransmitted} | {link_drops} | {busy} |",
        r.name,
        r.times.len(),
        r.max(),
        r.t_limit,
        r.max() / r.t_limit,
        r.egress as f64 / 1048576.0,
        r.egress as f64 / r.model_bytes as f64,
    )
}

/// A counter column: `part` as a share of `total`, and the total ("x.xx % of N").
fn share_of(part: u64, total: u64) -> String {
    format!(
        "{:.2} % of {total}",
        100.0 * part as f64 / total.max(1) as f64
    )
}

pub fn markdown(
    args: &RunArgs,
    model_bytes: u64,
    rate: f64,
    stores: &str,
    results: &[ScenarioResult],
) -> String {
    let mut s = format!(
        "Model {:.0} MiB ({} weight layers + config + 2 doc layers), {} nodes, every link {} ({:.1} MB/s), chunk size {}. T_limit = model / link rate = {:.1} s. Registry and stores on {stores}.\n\n",
        model_bytes as f64 / 1048576.0,
        args.layers,
        args.nodes,
        args.rate,
        rate / 1e6,
        args.chunk_size,
        model_bytes as f64 / rate
    );
    if !args.shoald_arg.is_empty() {
        s.push_str(&format!(
            "Extra shoald flags: `{}`.\n\n",
            args.shoald_arg.join(" ")
        ));
    }
    s.push_str(HEADER);
    for r in results {
        s.push_str(&row(r));
        s.push('\n');
    }
    s.push_str("\nMemory written before each scenario and freed as it filled memory (`--prefault`; a slow write means the machine had handed it back to its host):");
    for r in results {
        let (bytes, took) = r.prefault;
        s.push_str(&format!(
            " {} {:.1} GiB in {:.2} s;",
            r.name,
            bytes as f64 / (1u64 << 30) as f64,
            took.as_secs_f64()
        ));
    }
    s.push('\n');
    s
}

/// Per-node completion time per scenario, with T_limit as a dashed line.
pub fn svg(results: &[ScenarioResult]) -> String {
    let (w, h, pad) = (640.0, 360.0, 50.0);
    let ymax = results
        .iter()
        .map(|r| r.max().max(r.t_limit))
        .fold(1.0, f64::max)
        * 1.1;
    let y = |v: f64| h - pad - (v / ymax) * (h - 2.0 * pad);
    let band = (w - 2.0 * pad) / results.len().max(1) as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{pad}" y="20">per-node completion time (s); dashed: T_limit</text>"#
    );
    let _ = writeln!(
        s,
        r#"<line x1="{pad}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
        h - pad,
        w - pad,
        h - pad
    );
    let _ = writeln!(
        s,
        r#"<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{}" stroke="black"/>"#,
        h - pad
    );
    for tick in 0..=4 {
        let v = ymax * tick as f64 / 4.0;
        let _ = writeln!(s, r#"<text x="5" y="{:.1}">{v:.0}</text>"#, y(v) + 4.0);
    }
    for (i, r) in results.iter().enumerate() {
        let x0 = pad + band * i as f64;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}">{}</text>"#,
            x0 + band / 2.0 - 20.0,
            h - pad + 20.0,
            r.name
        );
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="gray" stroke-dasharray="4"/>"#,
            x0 + 5.0,
            y(r.t_limit),
            x0 + band - 5.0,
            y(r.t_limit)
        );
        let n = r.times.len().max(1) as f64;
        for (j, t) in r.times.iter().enumerate() {
            let x = x0 + band * (j as f64 + 0.5) / n;
            let _ = writeln!(
                s,
                r#"<circle cx="{x:.1}" cy="{:.1}" r="3" fill="steelblue"/>"#,
                y(*t)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

/// The mount point and file-system type holding `path` (from `/proc/mounts`), for the
/// report: every emulated node's store shares it.
pub fn file_system_of(path: &std::path::Path) -> String {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, dir, fs) = (fields.next()?, fields.next()?, fields.next()?);
            path.starts_with(dir)
                .then(|| (dir.len(), format!("{dir} ({fs})")))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| path.display().to_string(), |(_, m)| m)
}
