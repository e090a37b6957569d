//! The node identity and the cluster secret.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use libp2p_identity::Keypair;

use super::NetError;

/// File name of the identity inside the data directory.
pub const IDENTITY_FILE: &str = "identity.key";

/// Loads the node's keypair from `<data_dir>/identity.key`, creating it (mode 0600) on
/// first start. A DaemonSet pod that restarts on the same hostPath keeps its PeerId.
pub fn load_or_create(data_dir: &Path) -> Result<Keypair, NetError> {
    let path = data_dir.join(IDENTITY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|e| {
            NetError::BadKey(format!("{} is not a libp2p keypair: {e}", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let keypair = Keypair::generate_ed25519();
            let bytes = keypair
                .to_protobuf_encoding()
                .map_err(|e| NetError::BadKey(format!("encoding new keypair: {e}")))?;
            let tmp = path.with_extension("tmp");
            let io = |context: &str| {
                let context = format!("{context} {}", path.display());
                move |source| NetError::Io { context, source }
            };
            std::fs::create_dir_all(data_dir).map_err(io("creating data dir for"))?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io("writing"))?;
            f.write_all(&bytes)
                .and_then(|()| f.sync_all())
                .map_err(io("writing"))?;
            std::fs::rename(&tmp, &path).map_err(io("writing"))?;
            tracing::info!(peer_id = %keypair.public().to_peer_id(), file = %path.display(), "created node identity");
            Ok(keypair)
        }
        Err(source) => Err(NetError::Io {
            context: format!("reading {}", path.display()),
            source,
        }),
    }
}

/// Reads the cluster secret (surrounding whitespace ignored). An empty file is refused:
/// it would silently mean "no secret".
pub fn read_secret(path: &Path) -> Result<Vec<u8>, NetError> {
    let raw = std::fs::read(path).map_err(|source| NetError::Io {
        context: format!("reading cluster secret {}", path.display()),
        source,
    })?;
    let trimmed = raw.trim_ascii();
    if trimmed.is_empty() {
        return Err(NetError::BadKey(format!(
            "cluster secret file {} is empty",
            path.display()
        )));
    }
    Ok(trimmed.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn identity_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        let mode = std::fs::metadata(dir.path().join(IDENTITY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join(IDENTITY_FILE), b"garbage").unwrap();
        assert!(load_or_create(dir.path())
            .unwrap_err()
            .to_string()
            .contains("not a libp2p keypair"));
    }

    #[test]
    fn secret_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        std::fs::write(&p, "  s3cret\n").unwrap();
        assert_eq!(read_secret(&p).unwrap(), b"s3cret");
        std::fs::write(&p, "\n").unwrap();
        assert!(read_secret(&p).is_err());
    }
}
