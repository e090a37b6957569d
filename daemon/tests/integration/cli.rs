//! The real `shoald` binary's start-up: `--help`, and clear failures for bad options.

use std::process::Command;

fn shoald(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_shoald"))
        .args(args)
        .output()
        .expect("run shoald")
}

#[test]
fn help_documents_every_option_with_defaults() {
    let out = shoald(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for opt in [
        "--config",
        "--data-dir",
        "--mirror-addr",
        "--insecure-registry",
        "--default-upstream",
        "--credentials",
        "--log-format",
        "--max-disk",
        "--chunk-size",
        "--tag-ttl",
        "--stale-if-error",
        "--upstream-timeout",
        "--upstream-retries",
        "--transfer-addr",
        "--cluster-secret-file",
        "--max-uploads",
        "--metrics-addr",
        "--shutdown-grace",
        "--control-socket",
        "--control-addr",
        "--worker-threads",
    ] {
        assert!(help.contains(opt), "--help lacks {opt}");
    }
    assert!(help.contains("[default: 127.0.0.1:5050]"));
    assert!(help.contains("SHOAL_DATA_DIR"));
}

#[test]
fn bad_options_fail_at_start_with_the_option_named() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--no-such-flag".into()], "--no-such-flag"),
        (
            vec!["--mirror-addr".into(), "nowhere".into()],
            "--mirror-addr",
        ),
        (vec!["--max-disk".into(), "lots".into()], "--max-disk"),
        (vec!["--log-format".into(), "xml".into()], "--log-format"),
        (vec!["--tag-ttl".into(), "soon".into()], "--tag-ttl"),
    ];
    for (args, named) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = shoald(&args);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(named),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let bad_toml = dir.path().join("bad.toml");
    std::fs::write(&bad_toml, "mirror-adr = \"127.0.0.1:1\"\n").unwrap();
    let out = shoald(&["--config", bad_toml.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("mirror-adr"));
    // An unreadable credentials file stops start-up naming the file.
    let out = shoald(&[
        "--data-dir",
        dir.path().join("d").to_str().unwrap(),
        "--mirror-addr",
        "127.0.0.1:0",
        "--credentials",
        "/nonexistent/config.json",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/config.json"));
}
