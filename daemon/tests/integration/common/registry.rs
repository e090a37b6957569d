//! docker-registry (CNCF distribution 2.8, Debian package) as the origin.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// How the registry authenticates pulls and pushes.
pub enum RegistryAuth {
    /// Anonymous.
    None,
    /// htpasswd (bcrypt) basic auth.
    Basic { user: String, password: String },
    /// Bearer tokens from `realm`, signed by the key of the certificate at `cert`.
    Token {
        realm: String,
        service: String,
        issuer: String,
        cert: PathBuf,
    },
}

pub struct Registry {
    child: Option<Child>,
    pub addr: SocketAddr,
    config: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Registry {
    /// Starts docker-registry on a free loopback port. `None` if not installed (outside CI).
    pub async fn start(auth: RegistryAuth) -> Option<Registry> {
        super::require("docker-registry")?;
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = super::free_addr();
        let auth_yaml = match &auth {
            RegistryAuth::None => String::new(),
            RegistryAuth::Basic { user, password } => {
                let hash = bcrypt::hash(password, 5).expect("bcrypt");
                let path = dir.path().join("htpasswd");
                std::fs::write(&path, format!("{user}:{hash}\n")).expect("htpasswd");
                format!("auth:\n  htpasswd:\n    realm: basic-realm\n    path: {}\n", path.display())
            }
            RegistryAuth::Token { realm, service, issuer, cert } => format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {}\n",
                cert.display()
            ),
        };
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth_yaml}",
                dir.path().join("data").display()
            ),
        )
        .expect("registry config");
        let mut r = Registry {
            child: None,
            addr,
            config,
            dir,
        };
        r.spawn().await;
        Some(r)
    }

    async fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("registry.log")).expect("log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry");
        self.child = Some(child);
        let url = format!("http://{}/v2/", self.addr);
        for _ in 0..200 {
            if reqwest::get(&url).await.is_ok() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!(
            "docker-registry did not start: {}",
            std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
        );
    }

    /// `host:port` as used in image references and `?ns=`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stops the origin (the "uplink is gone" case).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}
