//! A reduced run of the swarm benchmark (3 nodes, small model), so the harness keeps
//! working: it must build the namespaces, run the scenarios, report, and clean up.
//! It checks behaviour only (every pull completes, the cold rollout's origin egress
//! stays near one copy, the report is written); speed is for the full benchmark.

use std::path::Path;
use std::process::Command;

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

#[test]
fn swarm_bench_smoke_run() {
    let exe = env!("CARGO_BIN_EXE_swarm-bench");
    let shoald = Path::new(exe).with_file_name("shoald");
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let missing = ["ip", "tc", "docker-registry"]
        .into_iter()
        .filter(|t| {
            !std::env::var_os("PATH")
                .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(t).exists()))
        })
        .collect::<Vec<_>>();
    if !is_root || !missing.is_empty() || !shoald.exists() {
        let why = format!(
            "needs root, {missing:?} installed, and {} built",
            shoald.display()
        );
        assert!(!ci(), "swarm benchmark smoke run {why}");
        eprintln!("skipping: {why}");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(exe)
        .args([
            "run", "--nodes", "3", "--rate", "1gbit", "--size", "24MiB", "--layers", "2",
        ])
        .args(["--scenarios", "direct,cold,warm,churn", "--out"])
        .arg(out.path())
        .arg("--shoald")
        .arg(&shoald)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "swarm-bench failed: {stderr}");
    let report = std::fs::read_to_string(out.path().join("results.md")).unwrap();
    for scenario in ["direct", "cold", "warm", "churn"] {
        assert!(report.contains(&format!("| {scenario} |")), "{report}");
    }
    let cold = report.lines().find(|l| l.starts_with("| cold |")).unwrap();
    let egress_ratio: f64 = cold.split('|').nth(9).unwrap().trim().parse().unwrap();
    assert!(
        egress_ratio <= 1.1,
        "cold rollout origin egress {egress_ratio} x model: {report}"
    );
    // Counter columns read "x.xx % of N"; N, the count the share is of.
    let count_of = |row: &str, column: usize, what: &str| -> u64 {
        row.split('|')
            .nth(column)
            .and_then(|c| c.trim().rsplit_once(" of "))
            .and_then(|(_, n)| n.parse().ok())
            .unwrap_or_else(|| panic!("{what} column: {report}"))
    };
    // The peers' UDP datagrams are counted in the nodes' namespaces.
    let received = count_of(cold, 12, "UDP drops");
    assert!(received > 0, "no UDP datagrams counted: {report}");
    // The origin's TCP segments are counted in its namespace.
    let direct = report
        .lines()
        .find(|l| l.starts_with("| direct |"))
        .unwrap();
    let segments = count_of(direct, 13, "origin TCP");
    assert!(segments > 0, "no origin TCP segments counted: {report}");
    // Every link's shaper, counted in the namespaces. Three nodes each download the
    // 24 MiB model over their shaped link, in frames of at most 1,514 bytes, so at
    // least that many packets passed.
    let link_packets = count_of(cold, 14, "link drops");
    assert!(
        link_packets >= 3 * (24 << 20) / 1514,
        "{link_packets} packets counted at the shapers: {report}"
    );
    // The machine's CPU, sampled while the pulls ran: "NN %".
    let busy: f64 = cold
        .split('|')
        .nth(15)
        .and_then(|c| c.trim().strip_suffix(" %"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("CPU busy column: {report}"));
    assert!(busy > 0.0 && busy <= 100.0, "CPU busy {busy} %: {report}");
    // Its timeline: a header naming every node, and rows in which the nodes received.
    let timeline = std::fs::read_to_string(out.path().join("timeline-cold.csv")).unwrap();
    let mut rows = timeline.lines();
    assert_eq!(
        rows.next(),
        Some("t_s,cpu_busy,origin_up,n0_down,n0_up,n0_local,n1_down,n1_up,n1_local,n2_down,n2_up,n2_local")
    );
    let rows: Vec<Vec<f64>> = rows
        .map(|r| r.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    let origin_sent: f64 = rows.iter().map(|r| r[2]).sum();
    assert!(origin_sent > 0.0, "the origin sent nothing: {timeline}");
    let downloaded: f64 = rows
        .iter()
        .map(|r| r.iter().skip(3).step_by(3).sum::<f64>())
        .sum();
    assert!(downloaded > 0.0, "no node received anything: {timeline}");
    let svg = std::fs::read_to_string(out.path().join("completion.svg")).unwrap();
    assert!(svg.contains("<circle"), "plot has points");
    let left = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&left.stdout).contains("shb-"),
        "namespaces cleaned up"
    );
}
