//! The simulator keeps working: a small run of the real scheduler on the modelled
//! network completes every node, with the origin sending each chunk about once.
//! (Behaviour only; the figures are in benches/RESULTS.md.)

use std::process::Command;

#[test]
fn eight_node_cold_and_warm_runs_complete() {
    let out = Command::new(env!("CARGO_BIN_EXE_swarm-sim"))
        .args([
            "--nodes", "8", "--size", "64MiB", "--layers", "2", "--limit", "10m",
        ])
        .output()
        .expect("run swarm-sim");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Vec<&str>> = text
        .lines()
        .filter(|l| l.starts_with("| 8 |"))
        .map(|l| l.split('|').map(str::trim).collect())
        .collect();
    assert_eq!(rows.len(), 2, "cold and warm rows: {text}");
    for row in rows {
        // | nodes | scenario | min | median | max | max/T | egress | peer | finished | wall |
        assert_eq!(row[9], "8/8", "every node finished: {text}");
        let egress: f64 = row[7].parse().unwrap();
        match row[2] {
            "cold" => assert!(
                (1.0..=1.05).contains(&egress),
                "cold egress {egress}: {text}"
            ),
            "warm" => assert_eq!(egress, 0.0, "warm takes nothing from the origin: {text}"),
            other => panic!("unexpected scenario {other}"),
        }
    }
}
