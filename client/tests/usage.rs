//! The CLI without a daemon: help, usage errors and the "not running" exit code.
//! (Tests against real daemons are in the daemon crate's integration tests, which find
//! this binary next to shoald; this file also makes `cargo test` build it.)

use std::process::Command;

fn shoal(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(args)
        .env_remove("SHOAL_DAEMON")
        .output()
        .expect("run shoal")
}

#[test]
fn help_lists_every_command_and_the_exit_codes() {
    let out = shoal(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "status",
        "peers",
        "ls",
        "pull",
        "preheat",
        "pin",
        "unpin",
        "export",
        "import",
        "gc",
        "containerd-config",
    ] {
        assert!(text.contains(cmd), "--help mentions {cmd}: {text}");
    }
    assert!(text.contains("3 shoald unreachable"), "{text}");
    for cmd in ["pull", "preheat", "export", "import", "containerd-config"] {
        assert!(shoal(&[cmd, "--help"]).status.success(), "{cmd} --help");
    }
}

#[test]
fn a_missing_daemon_is_exit_3_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("shoald.sock");
    let out = shoal(&["--daemon", sock.to_str().unwrap(), "status"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Is shoald running?"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn bad_references_and_platforms_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("shoald.sock");
    let sock = sock.to_str().unwrap();
    let out = shoal(&["--daemon", sock, "pull", "reg.io/../etc:1"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = shoal(&[
        "--daemon",
        sock,
        "pull",
        "reg.io/a:1",
        "--platform",
        "linux",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = shoal(&["containerd-config"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "--registry is required: {out:?}"
    );
}
