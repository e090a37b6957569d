//! Keeping every write inside the target directory.
//!
//! A path from a layer (an annotation or a tar entry) must be relative, free of `..`,
//! and must not pass through a symlink: an earlier entry could have planted
//! `dir -> /etc` and a later one `dir/passwd`. Symlink entries may only point inside
//! the target; absolute targets (normal in image layers, `bin/sh -> /bin/busybox`) are
//! rewritten relative to the target directory instead of the host's root.

use std::path::{Component, Path, PathBuf};

use crate::error::ClientError;

/// Lexically normalised relative components of `rel`, or why it escapes.
pub fn normalise(rel: &str) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err(format!("{rel:?} contains '..'")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("{rel:?} is absolute"))
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(format!("{rel:?} names no file"));
    }
    Ok(out)
}

/// `root/rel`, refused when `rel` escapes `root` or an existing ancestor under `root` is
/// a symlink.
pub fn safe_join(root: &Path, rel: &str) -> Result<PathBuf, ClientError> {
    let rel = normalise(rel).map_err(|e| ClientError::Refused(format!("unsafe path: {e}")))?;
    let mut at = root.to_path_buf();
    let mut parts = rel.components().peekable();
    while let Some(part) = parts.next() {
        at.push(part);
        if parts.peek().is_none() {
            break;
        }
        if let Ok(meta) = std::fs::symlink_metadata(&at) {
            if meta.file_type().is_symlink() {
                return Err(ClientError::Refused(format!(
                    "unsafe path: {} passes through the symlink {}",
                    rel.display(),
                    at.display()
                )));
            }
        }
    }
    Ok(at)
}

/// The link text to write for a symlink entry at `entry` (relative) pointing at
/// `target`, or why it would point outside the root.
pub fn symlink_target(entry: &Path, target: &Path) -> Result<PathBuf, String> {
    let parent = entry.parent().unwrap_or(Path::new(""));
    // Where the link resolves to, relative to the root.
    let mut resolved: Vec<std::ffi::OsString> = if target.is_absolute() {
        Vec::new()
    } else {
        parent
            .components()
            .map(|c| c.as_os_str().to_owned())
            .collect()
    };
    for c in target.components() {
        match c {
            Component::Normal(p) => resolved.push(p.to_owned()),
            Component::ParentDir => {
                if resolved.pop().is_none() {
                    return Err(format!(
                        "symlink {} -> {} points outside the target directory",
                        entry.display(),
                        target.display()
                    ));
                }
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    if !target.is_absolute() {
        return Ok(target.to_path_buf());
    }
    // Rewrite an absolute target relative to the link's directory.
    let depth = parent.components().count();
    let mut out = PathBuf::new();
    for _ in 0..depth {
        out.push("..");
    }
    for p in resolved {
        out.push(p);
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_refused() {
        for bad in ["../x", "a/../../x", "/etc/passwd", "", ".", "a/.."] {
            assert!(normalise(bad).is_err(), "{bad:?}");
        }
        assert_eq!(normalise("./a/./b").unwrap(), PathBuf::from("a/b"));
    }

    #[test]
    fn writes_through_symlinks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/tmp", dir.path().join("link")).unwrap();
        assert!(safe_join(dir.path(), "link/x").is_err());
        assert!(
            safe_join(dir.path(), "link").is_ok(),
            "the link itself may be replaced"
        );
        assert_eq!(
            safe_join(dir.path(), "a/b").unwrap(),
            dir.path().join("a/b")
        );
    }

    #[test]
    fn symlink_targets_stay_inside() {
        let t = |e: &str, t: &str| symlink_target(Path::new(e), Path::new(t));
        assert_eq!(
            t("bin/sh", "/bin/busybox").unwrap(),
            PathBuf::from("../bin/busybox")
        );
        assert_eq!(t("bin/sh", "busybox").unwrap(), PathBuf::from("busybox"));
        assert_eq!(t("a/b/c", "../d").unwrap(), PathBuf::from("../d"));
        assert!(t("a", "../../etc/passwd").is_err());
        assert!(t("a/b", "../../x").is_err());
        assert!(t("a", "/../../etc").is_err());
    }
}
