//! The files in `deploy/` are what users install, so they are tested like code: the
//! Kubernetes manifests render and validate against the API schemas, the shipped TOML
//! configurations start the real shoald, the systemd unit verifies and its ExecStart
//! flags are shoald's, and podman (containers/image, the library CRI-O uses) pulls through
//! shoald with the registries.conf snippet deploy/README.md documents.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::containerd::check;
use crate::common::oci::{self, Pusher, OCI_MANIFEST};
use crate::common::registry::{Registry, RegistryAuth};
use crate::common::shoald::Shoald;
use crate::common::{free_addr, require_root, swarm::free_udp_ports};
use crate::need;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

#[test]
fn kubernetes_manifests_render_and_validate() {
    let kubectl = need!("kubectl");
    let validate = need!("kubernetes-validate");
    // Render a copy: the cluster secret is generated per install, never committed.
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("kubernetes");
    std::fs::create_dir_all(k.join("monitoring")).unwrap();
    for entry in std::fs::read_dir(deploy_dir().join("kubernetes"))
        .unwrap()
        .flatten()
    {
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), k.join(entry.file_name())).unwrap();
        }
    }
    std::fs::write(k.join("cluster-secret"), "test-secret\n").unwrap();
    let rendered = check(
        &Command::new(&kubectl)
            .args(["kustomize"])
            .arg(&k)
            .output()
            .unwrap(),
        "kubectl kustomize",
    );
    let out = dir.path().join("rendered.yaml");
    std::fs::write(&out, &rendered).unwrap();
    let report = check(
        &Command::new(&validate)
            .args(["--strict", "-k", "1.31.0"])
            .arg(&out)
            .output()
            .unwrap(),
        "kubernetes-validate",
    );
    for kind in [
        "namespace/shoal",
        "serviceaccount/shoald",
        "configmap/shoald-config-",
        "secret/shoal-cluster-secret-",
        "service/shoal-peers",
        "priorityclass/shoal-node-critical",
        "daemonset/shoald",
    ] {
        assert!(
            report.contains(&format!("passed for resource {kind}")),
            "{kind}: {report}"
        );
    }
    // The DaemonSet mounts the generated (hash-suffixed) ConfigMap and Secret.
    let config_name = rendered
        .lines()
        .find_map(|l| l.trim().strip_prefix("name: shoald-config-"))
        .expect("configmap name");
    assert!(rendered.contains(&format!("name: shoald-config-{config_name}")));
    assert!(
        rendered
            .matches(&format!("shoald-config-{config_name}"))
            .count()
            >= 2,
        "{rendered}"
    );
    assert!(rendered.contains("fieldPath: status.hostIP"));
    assert!(rendered.contains("hostNetwork: true"));
}

/// Starts shoald with a shipped TOML file, overriding only what collides on a test host.
async fn start_with(config: &Path, dir: &Path) -> Shoald {
    let secret = dir.join("secret");
    std::fs::write(&secret, "s").unwrap();
    let [p2p, transfer] = free_udp_ports("127.0.0.1").map(|port| format!("127.0.0.1:{port}"));
    let metrics = free_addr().to_string();
    Shoald::start_in(
        &dir.join("data"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--p2p-addr",
            &p2p,
            "--transfer-addr",
            &transfer,
            "--cluster-secret-file",
            secret.to_str().unwrap(),
            "--metrics-addr",
            &metrics,
            "--log-format",
            "text",
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_configurations_start_shoald() {
    for config in ["kubernetes/shoald.toml", "systemd/edge.toml", "shoald.toml"] {
        let dir = tempfile::tempdir().unwrap();
        let s = start_with(&deploy_dir().join(config), dir.path()).await;
        let health = reqwest::get(s.url("/healthz")).await.unwrap();
        assert!(health.status().is_success(), "{config}");
        assert!(
            s.logs().contains("shoald listening"),
            "{config}: {}",
            s.logs()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_unit_verifies_and_its_flags_are_shoalds() {
    let analyze = need!("systemd-analyze");
    let unit = std::fs::read_to_string(deploy_dir().join("systemd/shoald.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/shoald"));
    let args: Vec<String> = words.map(str::to_owned).collect();
    // The unit's own flags, with the config it names replaced by the shipped edge.toml
    // and the data dir by a temporary one: shoald must accept them and run.
    let dir = tempfile::tempdir().unwrap();
    let edge = deploy_dir().join("systemd/edge.toml");
    let mut flags: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" => {
                assert_eq!(
                    it.next().map(String::as_str),
                    Some("/etc/shoal/shoald.toml")
                );
                flags.extend(["--config".into(), edge.display().to_string()]);
            }
            "--data-dir" => {
                assert_eq!(it.next().map(String::as_str), Some("/var/lib/shoal"));
            }
            other => flags.push(other.to_owned()),
        }
    }
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s").unwrap();
    let [p2p, transfer] = free_udp_ports("127.0.0.1").map(|port| format!("127.0.0.1:{port}"));
    flags.extend([
        "--cluster-secret-file".into(),
        secret.display().to_string(),
        "--p2p-addr".into(),
        p2p,
        "--transfer-addr".into(),
        transfer,
    ]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let s = Shoald::start_in(&dir.path().join("data"), &flags).await;
    assert!(s.logs().contains("shoald listening"));

    // systemd's own checker, on a copy whose ExecStart names the binary just built.
    let copy = dir.path().join("shoald.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/shoald", env!("CARGO_BIN_EXE_shoald")),
    )
    .unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Complaints about units this one orders against (absent in a test container) are
    // not about this file; anything naming shoald.service is.
    let own: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("shoald.service") && !l.contains("containerd.service"))
        .collect();
    assert!(own.is_empty(), "systemd-analyze verify: {stderr}");
}

/// The `[[registry]]` snippet deploy/README.md documents for CRI-O.
fn documented_registries_conf() -> String {
    let readme = std::fs::read_to_string(deploy_dir().join("README.md")).unwrap();
    let start = readme
        .find("# /etc/containers/registries.conf.d/shoal.conf")
        .expect("CRI-O snippet in deploy/README.md");
    let end = readme[start..].find("```").expect("end of snippet") + start;
    readme[start..end].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_pulls_through_shoald_with_the_documented_registries_conf() {
    let podman = need!("podman");
    if !require_root() {
        return;
    }
    let Some(mut reg) = Registry::start(RegistryAuth::None).await else {
        return;
    };
    let host = reg.host();
    let img = oci::image(121, OCI_MANIFEST);
    Pusher::new(&host, None)
        .artifact("library/app", "v1", &img)
        .await;
    // containers/image sends no ?ns=, so shoald's default upstream is this registry.
    let s = Shoald::start(&["--insecure-registry", &host, "--default-upstream", &host]).await;
    let snippet = documented_registries_conf()
        .replace("prefix = \"docker.io\"", &format!("prefix = \"{host}\""))
        .replace(
            "location = \"registry-1.docker.io\"",
            &format!("location = \"{host}\"\ninsecure = true"),
        )
        .replace("127.0.0.1:5050", &s.addr.to_string());
    assert!(snippet.contains(&s.addr.to_string()), "{snippet}");
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("registries.conf");
    std::fs::write(&conf, &snippet).unwrap();
    let pull = |root: &str| {
        Command::new(&podman)
            .env("CONTAINERS_REGISTRIES_CONF", &conf)
            .args(["--root", &dir.path().join(root).to_string_lossy()])
            .args([
                "--runroot",
                &dir.path().join(format!("{root}-run")).to_string_lossy(),
            ])
            .args(["--storage-driver", "vfs"])
            .args(["pull", "--quiet", &format!("{host}/library/app:v1")])
            .output()
            .unwrap()
    };
    check(&pull("first"), "podman pull through shoald");
    let layer_bytes: usize = img.layers.iter().map(|l| l.bytes.len()).sum();
    assert!(
        s.metric("shoal_served_bytes_total").await >= layer_bytes as f64,
        "the layers came through shoald"
    );
    // With the registry gone, a fresh podman store still pulls: only shoald can answer.
    reg.stop();
    check(&pull("second"), "podman pull with the registry stopped");
}
