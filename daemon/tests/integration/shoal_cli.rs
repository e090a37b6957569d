//! The `shoal` CLI end to end: the real binary against real shoald processes, with
//! docker-registry as the origin and containerd pulling what `shoal import` loaded.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::containerd::{check, Containerd};
use crate::common::oci::{self, Pusher, OCI_MANIFEST};
use crate::common::registry::{Registry, RegistryAuth};
use crate::common::shoald::Shoald;
use crate::common::swarm::Swarm;

mod extract;

/// The `shoal` binary, built next to shoald by `cargo test --workspace`.
fn shoal_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_shoald")).with_file_name("shoal");
    assert!(
        p.is_file(),
        "{} missing: run the workspace's tests (cargo test --workspace) so the CLI is built",
        p.display()
    );
    p
}

fn shoal(daemon: &Shoald, args: &[&str]) -> Output {
    Command::new(shoal_bin())
        .arg("--daemon")
        .arg(daemon.data_dir.join("shoald.sock"))
        .args(args)
        .output()
        .expect("run shoal")
}

/// Runs `shoal`, asserting success; returns stdout.
fn ok(daemon: &Shoald, args: &[&str]) -> String {
    check(&shoal(daemon, args), &format!("shoal {}", args.join(" ")))
}

fn json(daemon: &Shoald, args: &[&str]) -> serde_json::Value {
    let out = ok(daemon, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("shoal {args:?}: not JSON ({e}): {out}"))
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// Registry + one shoald using it.
async fn origin() -> Option<(Registry, Shoald, Pusher)> {
    let reg = Registry::start(RegistryAuth::None).await?;
    let s = Shoald::start(&["--insecure-registry", &reg.host()]).await;
    let push = Pusher::new(&reg.host(), None);
    Some((reg, s, push))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import_serves_containerd_with_the_origin_stopped() {
    let Some((mut reg, a, push)) = origin().await else {
        return;
    };
    let host = reg.host();
    let img = oci::image(81, OCI_MANIFEST);
    push.artifact("library/app", "v1", &img).await;
    let reference = format!("{host}/library/app:v1");
    let work = tempfile::tempdir().unwrap();
    let tar = work.path().join("app.tar");
    let dir = work.path().join("app-layout");
    ok(
        &a,
        &["export", &reference, "--output", tar.to_str().unwrap()],
    );
    ok(
        &a,
        &["export", &reference, "--output", dir.to_str().unwrap()],
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], img.digest.as_str());
    assert_eq!(
        index["manifests"][0]["annotations"]["io.containerd.image.name"],
        reference.as_str()
    );
    for l in &img.layers {
        let on_disk = std::fs::read(dir.join("blobs/sha256").join(&l.digest[7..])).unwrap();
        assert_eq!(on_disk, l.bytes, "layer {} exported intact", l.digest);
    }

    // A fresh node that has never seen the image; the origin goes away.
    reg.stop();
    let b = Shoald::start(&["--insecure-registry", &host]).await;
    let r = json(&b, &["import", tar.to_str().unwrap(), "-o", "json"]);
    assert_eq!(r["tags"][0], reference.as_str(), "{r}");
    assert_eq!(
        r["uploaded"], 4,
        "index? no: manifest, config, 2 layers: {r}"
    );
    // The directory form is the same content: all present now.
    let r = json(&b, &["import", dir.to_str().unwrap(), "-o", "json"]);
    assert_eq!(r["uploaded"], 0, "{r}");

    // containerd, pointed at node B by `shoal containerd-config`, pulls by tag.
    let hosts = tempfile::tempdir().unwrap();
    ok(
        &b,
        &[
            "containerd-config",
            "--registry",
            &host,
            "--mirror",
            &format!("http://{}", b.addr),
            "--config-path",
            hosts.path().to_str().unwrap(),
        ],
    );
    let Some(ctrd) = Containerd::start().await else {
        return;
    };
    check(
        &ctrd.pull_image(hosts.path().to_str().unwrap(), &reference),
        "ctr pull of an imported image with the origin stopped",
    );

    // A layout with a corrupted blob is refused and stores nothing bad.
    let victim = dir.join("blobs/sha256").join(&img.layers[0].digest[7..]);
    std::fs::write(&victim, b"corrupt").unwrap();
    let c = Shoald::start(&[]).await;
    let out = shoal(&c, &["import", dir.to_str().unwrap()]);
    assert_eq!(code(&out), 9, "digest mismatch refused: {out:?}");
    let ls = json(&c, &["ls", "-o", "json"]);
    assert!(
        ls["blobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|bl| bl["digest"] != img.layers[0].digest.as_str()),
        "{ls}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_survive_restart_and_gc() {
    let Some((reg, mut s, push)) = origin().await else {
        return;
    };
    let host = reg.host();
    let keep = oci::model(91, &[400_000, 300_000]);
    let lose = oci::model(92, &[500_000]);
    push.artifact("models/keep", "v1", &keep).await;
    push.artifact("models/lose", "v1", &lose).await;
    let keep_ref = format!("{host}/models/keep:v1");
    let pinned = json(&s, &["pin", &keep_ref, "-o", "json"]);
    assert_eq!(pinned["digest"], keep.digest.as_str());
    ok(&s, &["pull", &format!("{host}/models/lose:v1")]);

    let digests = |s: &Shoald| -> Vec<String> {
        json(s, &["ls", "-o", "json"])["blobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["digest"].as_str().unwrap().to_owned())
            .collect()
    };
    let dry = json(&s, &["gc", "--dry-run", "--to", "0", "-o", "json"]);
    assert!(!dry["evicted"].as_array().unwrap().is_empty());
    assert!(
        digests(&s).contains(&lose.layers[0].digest),
        "dry run removed nothing"
    );

    s.restart().await;
    let gc = json(&s, &["gc", "--to", "0", "-o", "json"]);
    let evicted: Vec<&str> = gc["evicted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["digest"].as_str().unwrap())
        .collect();
    assert!(evicted.contains(&lose.layers[0].digest.as_str()), "{gc}");
    let left = digests(&s);
    for blob in keep.layers.iter().chain([&keep.config]) {
        assert!(
            left.contains(&blob.digest),
            "pinned {} kept after restart + gc",
            blob.digest
        );
    }
    assert!(left.contains(&keep.digest), "pinned manifest kept");
    let ls = json(&s, &["ls", "-o", "json"]);
    let model = ls["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["digest"] == keep.digest.as_str())
        .unwrap_or_else(|| panic!("pinned model listed: {ls}"));
    assert_eq!(model["pinned"], true);
    assert_eq!(model["complete"], true);

    ok(&s, &["unpin", &keep_ref]);
    json(&s, &["gc", "--to", "0", "-o", "json"]);
    assert!(
        !digests(&s).contains(&keep.layers[0].digest),
        "unpinned model evicted"
    );
    let again = shoal(&s, &["unpin", &keep_ref]);
    assert_eq!(code(&again), 4, "unpinning twice: not found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preheat_fills_a_three_node_swarm() {
    let Some(mut swarm) = Swarm::origin().await else {
        return;
    };
    let model = oci::model(101, &[6 << 20, 6 << 20]);
    Pusher::new(&swarm.registry.host(), None)
        .artifact("models/pre", "v1", &model)
        .await;
    for _ in 0..3 {
        swarm.add_node(None, &[]).await;
    }
    for n in 0..3 {
        swarm.wait_peers(n, 2).await;
    }
    let node0 = &swarm.nodes[0].shoald;
    let peers = json(node0, &["peers", "-o", "json"]);
    assert_eq!(peers.as_array().unwrap().len(), 2, "{peers}");
    let status = json(node0, &["status", "-o", "json"]);
    assert_eq!(status["peers"], 2);

    let reference = format!("{}/models/pre:v1", swarm.proxy.host());
    let report = json(
        node0,
        &[
            "preheat",
            &reference,
            "--all",
            "--timeout",
            "120s",
            "-o",
            "json",
        ],
    );
    let nodes = report.as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{report}");
    let total: u64 = model
        .layers
        .iter()
        .map(|l| l.bytes.len() as u64)
        .sum::<u64>()
        + model.config.bytes.len() as u64;
    for n in nodes {
        assert_eq!(n["state"], "done", "{report}");
        assert_eq!(n["total"], total, "{report}");
    }
    for node in &swarm.nodes {
        let ls = json(&node.shoald, &["ls", "-o", "json"]);
        let held: Vec<&str> = ls["blobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["digest"].as_str().unwrap())
            .collect();
        for l in &model.layers {
            assert!(
                held.contains(&l.digest.as_str()),
                "layer preheated on every node: {ls}"
            );
        }
    }
    // Three nodes fetched the model at once through the swarm: far less than 3x.
    let egress = swarm.proxy.egress() as f64 / total as f64;
    assert!(egress < 2.0, "origin egress {egress:.2}x the model");

    // Unknown node ids are reported, not ignored.
    let out = Command::new(shoal_bin())
        .arg("--daemon")
        .arg(node0.data_dir.join("shoald.sock"))
        .args([
            "preheat",
            &reference,
            "--nodes",
            "12D3KooWnotanode",
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), 1, "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("unreachable"),
        "{out:?}"
    );
}

#[test]
fn containerd_config_keeps_existing_hosts_and_restores_them() {
    let dir = tempfile::tempdir().unwrap();
    let existing = "server = \"https://registry-1.docker.io\"\n\n[host.\"https://cache.corp\"]\n  capabilities = [\"pull\"]\n  skip_verify = true\n";
    std::fs::create_dir_all(dir.path().join("docker.io")).unwrap();
    std::fs::write(dir.path().join("docker.io/hosts.toml"), existing).unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "containerd-config",
            "--registry",
            "docker.io",
            "--registry",
            "ghcr.io",
            "--mirror",
            "http://127.0.0.1:5050",
            "--config-path",
            dir.path().to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = Command::new(shoal_bin()).args(&args).output().unwrap();
        check(&out, "shoal containerd-config")
    };
    let first = run(&[]);
    assert!(first.contains("docker.io: updated"), "{first}");
    assert!(first.contains("ghcr.io: created"), "{first}");
    let docker = std::fs::read_to_string(dir.path().join("docker.io/hosts.toml")).unwrap();
    let mirror_at = docker.find("http://127.0.0.1:5050").unwrap();
    let cache_at = docker.find("https://cache.corp").unwrap();
    assert!(mirror_at < cache_at, "shoald first: {docker}");
    assert!(
        docker.contains("skip_verify = true"),
        "settings kept: {docker}"
    );

    let second = run(&["-o", "json"]);
    let changes: serde_json::Value = serde_json::from_str(&second).unwrap();
    assert!(
        changes
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["action"] == "unchanged"),
        "{second}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("docker.io/hosts.toml")).unwrap(),
        docker
    );

    run(&["--restore"]);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("docker.io/hosts.toml")).unwrap(),
        existing
    );
    assert!(!dir.path().join("ghcr.io").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_problem_and_set_the_exit_code() {
    let Some(mut reg) = Registry::start(RegistryAuth::None).await else {
        return;
    };
    let host = reg.host();
    let model = oci::model(111, &[600_000]);
    Pusher::new(&host, None)
        .artifact("models/big", "v1", &model)
        .await;
    // A store quota smaller than the model: disk full, exit 7.
    let small = Shoald::start(&["--insecure-registry", &host, "--max-disk", "200KiB"]).await;
    let out = shoal(&small, &["pin", &format!("{host}/models/big:v1")]);
    assert_eq!(code(&out), 7, "{out:?}");
    // The origin is gone and nobody has the model: registry unreachable, exit 5.
    reg.stop();
    let s = Shoald::start(&["--insecure-registry", &host]).await;
    let out = shoal(&s, &["pull", &format!("{host}/models/big:v1")]);
    assert_eq!(code(&out), 5, "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unreachable"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_control_needs_the_cluster_secret() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret-token\n").unwrap();
    let addr = crate::common::free_addr();
    let s = Shoald::start(&[
        "--control-addr",
        &addr.to_string(),
        "--cluster-secret-file",
        secret.to_str().unwrap(),
    ])
    .await;
    let url = format!("http://{addr}");
    let run = |extra: &[&str]| {
        Command::new(shoal_bin())
            .args(["--daemon", &url])
            .args(extra)
            .args(["status", "-o", "json"])
            .output()
            .unwrap()
    };
    let denied = run(&[]);
    assert_eq!(code(&denied), 6, "no token: permission denied: {denied:?}");
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token").unwrap();
    let allowed = run(&["--token-file", token.to_str().unwrap()]);
    let status: serde_json::Value =
        serde_json::from_slice(&check(&allowed, "status over TCP").into_bytes()).unwrap();
    assert_eq!(status["mirror_addr"], s.addr.to_string());

    // Off loopback without a secret, shoald refuses to start.
    let out = Command::new(env!("CARGO_BIN_EXE_shoald"))
        .args(["--data-dir", dir.path().join("d2").to_str().unwrap()])
        .args(["--mirror-addr", &crate::common::free_addr().to_string()])
        .args(["--control-addr", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--cluster-secret-file"),
        "{out:?}"
    );
}
