//! `shoal containerd-config`: point containerd at shoald through `hosts.toml` files
//! (`config_path`, containerd 1.5+ and 2.x), keeping whatever hosts a file already has.
//!
//! For each registry, `<config-path>/<registry>/hosts.toml` gets a `[host."<mirror>"]`
//! with `pull` and `resolve` ahead of the existing hosts (containerd tries hosts in file
//! order, then `server`). The first change keeps the original as
//! `hosts.toml.shoal-backup`, or leaves a `.shoal-created` marker when there was none,
//! so `--restore` puts back exactly what was there. Running it twice changes nothing.

use std::path::{Path, PathBuf};

use crate::error::{ClientError, Result};

const BACKUP: &str = "hosts.toml.shoal-backup";
const CREATED_MARKER: &str = ".shoal-created";

/// What happened to one registry's file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    /// The registry.
    pub registry: String,
    /// The hosts.toml path.
    pub path: PathBuf,
    /// `created`, `updated`, `unchanged`, `restored`, `removed` or `not-configured`.
    pub action: &'static str,
}

/// The upstream `server` containerd would use for `registry` without a hosts.toml.
fn default_server(registry: &str) -> String {
    match registry {
        "docker.io" => "https://registry-1.docker.io".to_owned(),
        other => format!("https://{other}"),
    }
}

fn check_registry(registry: &str) -> Result<()> {
    let ok = !registry.is_empty()
        && registry != "."
        && registry != ".."
        && registry
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'));
    if ok {
        Ok(())
    } else {
        Err(ClientError::Usage(format!(
            "{registry:?} is not a registry host (e.g. docker.io, ghcr.io, 10.0.0.1:5000)"
        )))
    }
}

fn parse(path: &Path, text: &str) -> Result<toml_edit::DocumentMut> {
    text.parse().map_err(|e| {
        ClientError::Refused(format!(
            "{} is not valid TOML, left untouched: {e}",
            path.display()
        ))
    })
}

/// The file with `mirror` as its first host and every other setting kept.
fn with_mirror_first(doc: &toml_edit::DocumentMut, mirror: &str) -> String {
    let mut rest = doc.clone();
    let old_hosts = rest.remove("host");
    let mut hosts = toml_edit::Table::new();
    hosts.set_implicit(true);
    let mut ours = toml_edit::Table::new();
    ours.insert(
        "capabilities",
        toml_edit::value(toml_edit::Array::from_iter(["pull", "resolve"])),
    );
    ours.set_position(0);
    hosts.insert(mirror, toml_edit::Item::Table(ours));
    if let Some(toml_edit::Item::Table(old)) = old_hosts {
        for (i, (name, item)) in old.iter().enumerate() {
            if name == mirror {
                continue;
            }
            let mut item = item.clone();
            if let toml_edit::Item::Table(t) = &mut item {
                t.set_position(i + 1);
            }
            hosts.insert(name, item);
        }
    }
    let mut host_doc = toml_edit::DocumentMut::new();
    host_doc.insert("host", toml_edit::Item::Table(hosts));
    let head = rest.to_string();
    let head = head.trim_end();
    if head.is_empty() {
        host_doc.to_string()
    } else {
        format!("{head}\n\n{host_doc}")
    }
}

fn first_host(doc: &toml_edit::DocumentMut) -> Option<String> {
    doc.get("host")?
        .as_table()?
        .iter()
        .next()
        .map(|(k, _)| k.to_owned())
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("toml.shoal-tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| ClientError::io(format!("writing {}", path.display()), e))
}

/// The registry's directory and hosts.toml under `config_path`, after checking the name.
fn registry_files(config_path: &Path, registry: &str) -> Result<(PathBuf, PathBuf)> {
    check_registry(registry)?;
    let dir = config_path.join(registry);
    let path = dir.join("hosts.toml");
    Ok((dir, path))
}

/// Adds `mirror` ahead of the hosts of `registry` under `config_path`.
pub fn apply(config_path: &Path, registry: &str, mirror: &str) -> Result<Change> {
    let (dir, path) = registry_files(config_path, registry)?;
    let change = |action| Change {
        registry: registry.to_owned(),
        path: path.clone(),
        action,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let doc = parse(&path, &text)?;
            if first_host(&doc).as_deref() == Some(mirror) {
                return Ok(change("unchanged"));
            }
            let backup = dir.join(BACKUP);
            if !backup.exists() && !dir.join(CREATED_MARKER).exists() {
                std::fs::copy(&path, &backup)
                    .map_err(|e| ClientError::io(format!("backing up {}", path.display()), e))?;
            }
            write_atomic(&path, &with_mirror_first(&doc, mirror))?;
            Ok(change("updated"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(&dir)
                .map_err(|e| ClientError::io(format!("creating {}", dir.display()), e))?;
            let mut doc = toml_edit::DocumentMut::new();
            doc.insert("server", toml_edit::value(default_server(registry)));
            std::fs::write(dir.join(CREATED_MARKER), b"")
                .map_err(|e| ClientError::io(format!("writing in {}", dir.display()), e))?;
            write_atomic(&path, &with_mirror_first(&doc, mirror))?;
            Ok(change("created"))
        }
        Err(e) => Err(ClientError::io(format!("reading {}", path.display()), e)),
    }
}

/// Undoes [`apply`] for `registry`: the backup comes back, or a file shoal created goes.
pub fn restore(config_path: &Path, registry: &str) -> Result<Change> {
    let (dir, path) = registry_files(config_path, registry)?;
    let change = |action| Change {
        registry: registry.to_owned(),
        path: path.clone(),
        action,
    };
    let backup = dir.join(BACKUP);
    if backup.exists() {
        std::fs::rename(&backup, &path)
            .map_err(|e| ClientError::io(format!("restoring {}", path.display()), e))?;
        return Ok(change("restored"));
    }
    let marker = dir.join(CREATED_MARKER);
    if marker.exists() {
        for p in [&path, &marker] {
            if let Err(e) = std::fs::remove_file(p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(ClientError::io(format!("removing {}", p.display()), e));
                }
            }
        }
        let _ = std::fs::remove_dir(&dir); // only if empty
        return Ok(change("removed"));
    }
    Ok(change("not-configured"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXISTING: &str = r#"# our corporate cache
server = "https://registry-1.docker.io"

[host."https://cache.corp:5000"]
  capabilities = ["pull", "resolve"]
  ca = "/etc/certs/corp.pem"

[host."https://backup.corp"]
  capabilities = ["pull"]
"#;

    #[test]
    fn mirror_goes_first_and_everything_else_stays() {
        let dir = tempfile::tempdir().unwrap();
        let reg = dir.path().join("docker.io");
        std::fs::create_dir_all(&reg).unwrap();
        std::fs::write(reg.join("hosts.toml"), EXISTING).unwrap();
        let mirror = "http://127.0.0.1:5050";
        assert_eq!(
            apply(dir.path(), "docker.io", mirror).unwrap().action,
            "updated"
        );
        let text = std::fs::read_to_string(reg.join("hosts.toml")).unwrap();
        let doc: toml_edit::DocumentMut = text.parse().unwrap();
        let hosts: Vec<&str> = doc["host"]
            .as_table()
            .unwrap()
            .iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            hosts,
            [mirror, "https://cache.corp:5000", "https://backup.corp"],
            "{text}"
        );
        assert_eq!(doc["server"].as_str(), Some("https://registry-1.docker.io"));
        assert_eq!(
            doc["host"]["https://cache.corp:5000"]["ca"].as_str(),
            Some("/etc/certs/corp.pem")
        );
        assert!(text.contains("# our corporate cache"));
        // Idempotent: a second run changes nothing, and the backup is the original.
        assert_eq!(
            apply(dir.path(), "docker.io", mirror).unwrap().action,
            "unchanged"
        );
        assert_eq!(
            std::fs::read_to_string(reg.join("hosts.toml")).unwrap(),
            text
        );
        assert_eq!(restore(dir.path(), "docker.io").unwrap().action, "restored");
        assert_eq!(
            std::fs::read_to_string(reg.join("hosts.toml")).unwrap(),
            EXISTING
        );
    }

    #[test]
    fn created_files_are_removed_on_restore() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            apply(dir.path(), "ghcr.io", "http://10.0.0.1:5050")
                .unwrap()
                .action,
            "created"
        );
        let text = std::fs::read_to_string(dir.path().join("ghcr.io/hosts.toml")).unwrap();
        assert!(text.contains("server = \"https://ghcr.io\""), "{text}");
        assert!(text.contains("[host.\"http://10.0.0.1:5050\"]"), "{text}");
        assert_eq!(restore(dir.path(), "ghcr.io").unwrap().action, "removed");
        assert!(!dir.path().join("ghcr.io").exists());
        assert_eq!(
            restore(dir.path(), "ghcr.io").unwrap().action,
            "not-configured"
        );
    }

    #[test]
    fn hostile_registry_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["..", "a/b", "", "x y"] {
            assert!(apply(dir.path(), bad, "http://m").is_err(), "{bad:?}");
        }
    }
}
