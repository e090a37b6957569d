//! containerd (Debian package) with its own root, state dir and socket, and `ctr`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub struct Containerd {
    child: Child,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Containerd {
    /// `None` outside CI when containerd is missing or we are not root.
    pub async fn start() -> Option<Containerd> {
        super::require("containerd")?;
        super::require("ctr")?;
        if !super::require_root() {
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[debug]
  address = "{socket}.debug"
[metrics]
  address = ""
"#,
                root = dir.path().join("root").display(),
                state = dir.path().join("state").display(),
                socket = socket.display(),
            ),
        )
        .expect("containerd config");
        let log = std::fs::File::create(dir.path().join("containerd.log")).expect("log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn containerd");
        let c = Containerd { child, socket, dir };
        for _ in 0..200 {
            if c.ctr(&["version"]).status.success() {
                return Some(c);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("containerd did not start: {}", c.logs());
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run ctr")
    }

    /// `ctr images pull` of `reference` through the hosts.toml files in `hosts_dir`
    /// (plain HTTP, native snapshotter: no overlayfs needed), as the kubelet's pull would.
    pub fn pull_image(&self, hosts_dir: &str, reference: &str) -> Output {
        self.ctr(&[
            "images",
            "pull",
            "--hosts-dir",
            hosts_dir,
            "--plain-http",
            "--snapshotter",
            "native",
            reference,
        ])
    }

    /// Writes `<hosts_dir>/<registry>/hosts.toml` naming `mirror` as a pull/resolve
    /// mirror ahead of the registry itself, exactly as an operator would.
    pub fn write_hosts(hosts_dir: &Path, registry: &str, mirror: &str) {
        let d = hosts_dir.join(registry);
        std::fs::create_dir_all(&d).expect("hosts dir");
        std::fs::write(
            d.join("hosts.toml"),
            format!("server = \"http://{registry}\"\n\n[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
        )
        .expect("hosts.toml");
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // containerd leaves native-snapshotter mounts only for running containers; none here.
    }
}

/// Asserts a command succeeded, showing its output otherwise.
pub fn check(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
