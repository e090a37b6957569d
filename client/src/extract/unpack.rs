//! The blocking side of extraction: bytes in, files out, nothing outside the root.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use shoal_proto::Digest;

use super::kind::Packing;
use super::paths::{normalise, safe_join, symlink_target};
use super::{ExtractedFile, Filter};
use crate::error::{ClientError, Result};

/// Reads pieces a download task sends, hashing everything that passes.
pub struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<std::result::Result<bytes::Bytes, String>>,
    current: bytes::Bytes,
    sha: Sha256,
    total: u64,
}

impl ChannelReader {
    /// Reads from `rx`, starting the hash from `prefix` (a resumed file's bytes).
    pub fn new(
        rx: tokio::sync::mpsc::Receiver<std::result::Result<bytes::Bytes, String>>,
        sha: Sha256,
    ) -> ChannelReader {
        ChannelReader {
            rx,
            current: bytes::Bytes::new(),
            sha,
            total: 0,
        }
    }

    /// Reads to the end and returns the digest of everything read (and the prefix).
    pub fn finish(mut self) -> std::io::Result<(Digest, u64)> {
        std::io::copy(&mut self, &mut std::io::sink())?;
        Ok((
            Digest::from_sha256_bytes(self.sha.finalize().into()),
            self.total,
        ))
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(piece)) => self.current = piece,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        let piece = self.current.split_to(n);
        buf[..n].copy_from_slice(&piece);
        self.sha.update(&piece);
        self.total += n as u64;
        Ok(n)
    }
}

/// Writes `reader` to `partial` (appending from `offset`), checks the digest, and
/// renames it to `dest`.
pub fn write_raw(
    mut reader: ChannelReader,
    partial: &Path,
    dest: &Path,
    offset: u64,
    expected: Digest,
) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(offset > 0)
        .write(true)
        .truncate(offset == 0)
        .open(partial)
        .map_err(|e| ClientError::io(format!("creating {}", partial.display()), e))?;
    std::io::copy(&mut reader, &mut file)
        .map_err(|e| ClientError::io(format!("writing {}", partial.display()), e))?;
    file.sync_all()
        .map_err(|e| ClientError::io(format!("syncing {}", partial.display()), e))?;
    let (actual, _) = reader
        .finish()
        .map_err(|e| ClientError::io("reading layer", e))?;
    if actual != expected {
        let _ = std::fs::remove_file(partial);
        return Err(ClientError::Refused(format!(
            "{}: content hashed to {actual}, expected {expected}; discarded",
            dest.display()
        )));
    }
    std::fs::rename(partial, dest)
        .map_err(|e| ClientError::io(format!("renaming into {}", dest.display()), e))
}

/// The sha256 of a file's first `len` bytes (all of it when `None`).
pub fn hash_file(path: &Path, len: Option<u64>) -> std::io::Result<(Sha256, u64)> {
    let file = File::open(path)?;
    let mut reader: Box<dyn Read> = match len {
        Some(l) => Box::new(file.take(l)),
        None => Box::new(file),
    };
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let got = reader.read(&mut buf)?;
        if got == 0 {
            return Ok((sha, n));
        }
        sha.update(&buf[..got]);
        n += got as u64;
    }
}

/// Unpacks a tar layer into `root`; returns the regular files written. The caller
/// checks the layer digest (via the reader) before trusting them.
pub fn unpack_tar(
    reader: &mut ChannelReader,
    packing: Packing,
    root: &Path,
    filter: &Filter,
    image_layer: bool,
) -> Result<Vec<ExtractedFile>> {
    let decoded: Box<dyn Read + '_> = match packing {
        Packing::Tar => Box::new(reader),
        Packing::TarGzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        Packing::TarZstd => Box::new(
            ruzstd::decoding::StreamingDecoder::new(reader)
                .map_err(|e| ClientError::Refused(format!("bad zstd stream: {e}")))?,
        ),
        Packing::Raw => {
            return Err(ClientError::Other(
                "raw layer given to the tar unpacker".into(),
            ))
        }
    };
    let mut archive = tar::Archive::new(decoded);
    let mut written: Vec<ExtractedFile> = Vec::new();
    let entries = archive
        .entries()
        .map_err(|e| ClientError::Refused(format!("bad tar layer: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ClientError::Refused(format!("bad tar layer: {e}")))?;
        let raw_path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let rel = match normalise(&raw_path) {
            Ok(p) => p,
            // The archive's own root entry ("./").
            Err(_) if raw_path.trim_end_matches('/') == "." => continue,
            Err(e) => return Err(ClientError::Refused(format!("unsafe path in layer: {e}"))),
        };
        let rel_str = rel.to_string_lossy().into_owned();
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if image_layer && name.starts_with(".wh.") {
            apply_whiteout(root, &rel, &name, &written)?;
            continue;
        }
        let kind = entry.header().entry_type();
        if !kind.is_dir() && !filter.wants(&rel_str) {
            continue;
        }
        let dest = safe_join(root, &rel_str)?;
        if kind.is_dir() {
            std::fs::create_dir_all(&dest)
                .map_err(|e| ClientError::io(format!("creating {}", dest.display()), e))?;
            continue;
        }
        make_parent(&dest)?;
        if kind.is_file() {
            let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
            let file = write_entry(&mut entry, &dest, mode)?;
            written.retain(|f| f.path != rel_str);
            written.push(ExtractedFile {
                path: rel_str,
                ..file
            });
        } else if kind.is_symlink() {
            let target =
                entry.link_name().ok().flatten().ok_or_else(|| {
                    ClientError::Refused(format!("symlink {rel_str} has no target"))
                })?;
            let text = symlink_target(&rel, &target)
                .map_err(|e| ClientError::Refused(format!("unsafe path in layer: {e}")))?;
            remove_existing(&dest)?;
            std::os::unix::fs::symlink(&text, &dest)
                .map_err(|e| ClientError::io(format!("creating symlink {}", dest.display()), e))?;
        } else if kind.is_hard_link() {
            let target = entry.link_name().ok().flatten().ok_or_else(|| {
                ClientError::Refused(format!("hard link {rel_str} has no target"))
            })?;
            let source = safe_join(root, &target.to_string_lossy())?;
            remove_existing(&dest)?;
            std::fs::hard_link(&source, &dest).map_err(|e| {
                ClientError::io(
                    format!("linking {} to {}", dest.display(), source.display()),
                    e,
                )
            })?;
        }
        // Devices and FIFOs have no place in a model directory: skipped.
    }
    Ok(written)
}

fn make_parent(dest: &Path) -> Result<()> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| ClientError::io(format!("creating {}", parent.display()), e))?;
    }
    Ok(())
}

/// Removes a file or symlink (never following it) so an entry can take its place.
fn remove_existing(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => Ok(()),
    }
    .map_err(|e| ClientError::io(format!("replacing {}", path.display()), e))
}

/// Writes one regular file next to its destination, then renames it into place, so an
/// interrupted extraction never leaves a truncated file under the real name.
fn write_entry(reader: &mut impl Read, dest: &Path, mode: u32) -> Result<ExtractedFile> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = tmp_name(dest);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(mode | 0o600)
        .open(&tmp)
        .map_err(|e| ClientError::io(format!("creating {}", tmp.display()), e))?;
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut size = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| ClientError::Refused(format!("reading layer: {e}")))?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        file.write_all(&buf[..n])
            .map_err(|e| ClientError::io(format!("writing {}", tmp.display()), e))?;
        size += n as u64;
    }
    drop(file);
    remove_existing(dest)?;
    std::fs::rename(&tmp, dest)
        .map_err(|e| ClientError::io(format!("renaming into {}", dest.display()), e))?;
    Ok(ExtractedFile {
        path: String::new(),
        size,
        sha256: hex::encode(sha.finalize()),
    })
}

fn tmp_name(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_owned();
    name.push(".shoal-tmp");
    dest.with_file_name(name)
}

/// OCI whiteouts: `.wh.NAME` deletes NAME from lower layers; `.wh..wh..opq` empties
/// the directory of everything lower layers put there.
fn apply_whiteout(root: &Path, rel: &Path, name: &str, this_layer: &[ExtractedFile]) -> Result<()> {
    let dir = rel.parent().unwrap_or(Path::new(""));
    if name == ".wh..wh..opq" {
        let dir_path = if dir.as_os_str().is_empty() {
            root.to_path_buf()
        } else {
            safe_join(root, &dir.to_string_lossy())?
        };
        let Ok(children) = std::fs::read_dir(&dir_path) else {
            return Ok(());
        };
        for child in children.flatten() {
            let child_rel = dir.join(child.file_name());
            let keep = this_layer
                .iter()
                .any(|f| Path::new(&f.path).starts_with(&child_rel));
            if !keep {
                remove_existing(&child.path())?;
            }
        }
        return Ok(());
    }
    let victim = dir.join(&name[".wh.".len()..]);
    let path = safe_join(root, &victim.to_string_lossy())?;
    remove_existing(&path)
}
