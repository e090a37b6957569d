//! The real `shoald` binary, one process per node.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct Shoald {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Shoald {
    /// Where the store keeps the committed blob `digest` (`sha256:<hex>` or `<hex>`).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.data_dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// Starts shoald with a fresh data dir and `extra` flags.
    pub async fn start(extra: &[&str]) -> Shoald {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().join("data");
        let mut s = Shoald::start_in(&data_dir, extra).await;
        s._dir = Some(dir);
        s
    }

    /// Starts shoald on an existing data dir.
    pub async fn start_in(data_dir: &Path, extra: &[&str]) -> Shoald {
        Shoald::start_with_env(data_dir, extra, &[]).await
    }

    /// Starts shoald on an existing data dir with extra environment variables.
    pub async fn start_with_env(data_dir: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Shoald {
        let addr = super::free_addr();
        let mut args = vec![
            "--data-dir".to_owned(),
            data_dir.display().to_string(),
            "--mirror-addr".to_owned(),
            addr.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = data_dir.with_extension(format!("log-{}", addr.port()));
        let mut s = Shoald {
            child: None,
            addr,
            data_dir: data_dir.to_owned(),
            args,
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log,
            _dir: None,
        };
        s.spawn().await;
        s
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_shoald"))
            .args(&self.args)
            .env("SHOAL_LOG", "info,shoal_daemon=debug")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn shoald");
        self.child = Some(child);
        let url = format!("http://{}/healthz", self.addr);
        for _ in 0..200 {
            if reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("shoald exited with {status}: {}", self.logs());
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("shoald did not become healthy: {}", self.logs());
    }

    /// Peak resident set size (VmHWM) of the running daemon, in bytes.
    pub fn peak_rss(&self) -> u64 {
        let pid = self.child.as_ref().map(|c| c.id()).expect("shoald running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmHWM")
            * 1024
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id of the running daemon.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("shoald running")
    }

    /// SIGKILL, no cleanup: what a crash or OOM kill does.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    /// Starts the same configuration again (same data dir and port).
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// The `/metrics` exposition text.
    pub async fn metrics_text(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// A Prometheus counter's value (summing all label sets of `name`).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .filter(|l| {
                l.starts_with(name)
                    && (l[name.len()..].starts_with(' ') || l[name.len()..].starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Shoald {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let logs = self.logs();
            let tail: Vec<&str> = logs.lines().rev().take(60).collect();
            eprintln!("---- shoald {} log (last lines) ----", self.addr);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}
