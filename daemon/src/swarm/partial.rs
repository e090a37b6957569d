//! What the transfer server may see of the node's running downloads: their layout,
//! which chunks are written, and a queue for peers' interest links.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use shoal_proto::wire::bitfield;
use shoal_proto::{ChunkLayout, Digest};
use tokio::sync::mpsc;

use crate::net::transfer::{LocalBlobs, PeerLink};

/// The shared state of one running download.
pub(crate) struct PartialBlob {
    layout: OnceLock<ChunkLayout>,
    file: OnceLock<Arc<File>>,
    bits: Mutex<Vec<u8>>,
    /// Chunks set in `bits`.
    held: AtomicU32,
    links: mpsc::UnboundedSender<Box<PeerLink>>,
}

impl PartialBlob {
    /// Publishes the layout and staging file once the download knows them.
    pub(crate) fn set_layout(&self, layout: ChunkLayout, file: Arc<File>) {
        let _ = self.file.set(file);
        if self.layout.set(layout).is_ok() {
            *lock(&self.bits) = bitfield::new(layout.count());
        }
    }

    /// Marks a chunk written (after the write returned).
    pub(crate) fn set_present(&self, chunk: u32) {
        let mut bits = lock(&self.bits);
        if chunk < self.layout.get().map_or(0, |l| l.count()) && !bitfield::get(&bits, chunk) {
            bitfield::set(&mut bits, chunk);
            self.held.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many chunks are written: what this node's chunk requests tell uploaders.
    pub(crate) fn held(&self) -> u32 {
        self.held.load(Ordering::Relaxed)
    }

    /// Layout and bitfield now.
    pub(crate) fn snapshot(&self) -> (Option<ChunkLayout>, Vec<u8>) {
        (self.layout.get().copied(), lock(&self.bits).clone())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Running downloads by digest.
#[derive(Default)]
pub(crate) struct Partials {
    map: Mutex<HashMap<Digest, Arc<PartialBlob>>>,
}

impl Partials {
    /// Registers a download; peers' links about it arrive on the receiver.
    pub(crate) fn register(
        &self,
        digest: Digest,
    ) -> (Arc<PartialBlob>, mpsc::UnboundedReceiver<Box<PeerLink>>) {
        let (links, rx) = mpsc::unbounded_channel();
        let blob = Arc::new(PartialBlob {
            layout: OnceLock::new(),
            file: OnceLock::new(),
            bits: Mutex::new(Vec::new()),
            held: AtomicU32::new(0),
            links,
        });
        lock(&self.map).insert(digest, blob.clone());
        (blob, rx)
    }

    /// Swarm downloads running on this node.
    pub(crate) fn count(&self) -> usize {
        lock(&self.map).len()
    }

    /// Removes a download (finished or failed).
    pub(crate) fn unregister(&self, digest: &Digest) {
        lock(&self.map).remove(digest);
    }

    fn get(&self, digest: &Digest) -> Option<Arc<PartialBlob>> {
        lock(&self.map).get(digest).cloned()
    }
}

impl LocalBlobs for Partials {
    fn have_map(&self, digest: &Digest) -> Option<(Option<ChunkLayout>, Vec<u8>)> {
        self.get(digest).map(|b| b.snapshot())
    }

    fn chunk_source(&self, digest: &Digest, chunk: u32) -> Option<(Arc<File>, Range<u64>)> {
        let blob = self.get(digest)?;
        let layout = *blob.layout.get()?;
        if !bitfield::get(&lock(&blob.bits), chunk) {
            return None;
        }
        Some((blob.file.get()?.clone(), layout.range(chunk)?))
    }

    fn attach(&self, digest: Digest, link: Box<PeerLink>) -> Result<(), Box<PeerLink>> {
        match self.get(&digest) {
            Some(blob) => blob.links.send(link).map_err(|e| e.0),
            None => Err(link),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_counts_each_written_chunk_once() {
        let partials = Partials::default();
        let (blob, _links) = partials.register(Digest::from_sha256_bytes([1; 32]));
        let file = Arc::new(tempfile::tempfile().unwrap());
        blob.set_layout(ChunkLayout::new(10 * 65_536, 65_536), file);
        for chunk in [3, 3, 0, 9, 10, u32::MAX] {
            blob.set_present(chunk);
        }
        assert_eq!(
            blob.held(),
            3,
            "chunks 0, 3 and 9; repeats and out-of-range ignored"
        );
    }
}
