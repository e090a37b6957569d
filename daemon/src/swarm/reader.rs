//! Streaming a byte range of a blob to a local client, from the committed file or from
//! a staging file while a download is still writing it.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use futures::Stream;
use tokio::sync::{mpsc, watch};

use super::Progress;
use crate::buffers::BufferPool;

/// Read size per step. Large enough for loopback throughput, small enough that a slow
/// client costs little memory.
const READ_SIZE: usize = 512 * 1024;
/// Piece size for committed blobs, and how many pieces may wait for the socket
/// (8 MiB of mapped page cache per client at most).
const COMMITTED_READ_SIZE: usize = 2 * 1024 * 1024;
const READ_AHEAD: usize = 4;
/// Idle piece buffers kept for the streams of running downloads, shared by all clients.
const READ_BUFFERS_RETAINED: usize = 8 << 20;

/// Piece buffers for streaming running downloads ([`crate::buffers`]): every byte a
/// client pulls while the blob downloads passes through one, so fresh ones would fault
/// in the whole blob again.
static READ_BUFFERS: LazyLock<BufferPool> =
    LazyLock::new(|| BufferPool::new(READ_BUFFERS_RETAINED));

/// Where the bytes come from.
pub enum BlobSource {
    /// A committed blob: everything is readable.
    Committed(Arc<File>),
    /// A running download: read up to what it has written.
    Download {
        /// The staging file.
        file: Arc<File>,
        /// The download's progress.
        progress: watch::Receiver<Progress>,
    },
}

/// Streams bytes `start..end` of the blob. A download that fails mid-way ends the stream
/// with an error, so the HTTP response is aborted rather than completed with bad bytes.
pub fn stream_range(
    source: BlobSource,
    start: u64,
    end: u64,
) -> impl Stream<Item = io::Result<Bytes>> + Send {
    async_stream::try_stream! {
        let (file, mut progress) = match source {
            BlobSource::Committed(f) => {
                let mut pieces = read_ahead(f, start, end);
                while let Some(piece) = pieces.recv().await {
                    yield piece?;
                }
                return;
            }
            BlobSource::Download { file, progress } => (file, Some(progress)),
        };
        // An empty blob has no final piece to hold back: wait for the verdict instead.
        if start >= end {
            if let Some(rx) = progress.as_mut() {
                wait_outcome(rx).await?;
            }
        }
        let mut pos = start;
        while pos < end {
            let readable = match progress.as_mut() {
                None => end,
                Some(rx) => wait_for(rx, pos).await?,
            };
            let want = (readable.min(end) - pos).min(READ_SIZE as u64) as usize;
            let f = file.clone();
            let at = pos;
            let chunk = tokio::task::spawn_blocking(move || -> io::Result<Bytes> {
                let mut buf = READ_BUFFERS.take(want);
                f.read_exact_at(&mut buf, at)?;
                Ok(buf.freeze())
            })
            .await
            .map_err(io::Error::other)??;
            pos += chunk.len() as u64;
            // The final sha256 check comes after the last byte is readable. Hold the
            // piece that completes the blob until it passes: once all Content-Length
            // bytes are out, the client would take the response as complete.
            if let Some(rx) = progress.as_mut() {
                if pos == end && rx.borrow().size == Some(end) {
                    wait_outcome(rx).await?;
                }
            }
            yield chunk;
        }
    }
}

/// Pieces of a committed blob prepared on a blocking thread a few pieces ahead of the
/// socket, so disk reads never stall the runtime and overlap sending the previous
/// pieces. Each piece is a populated memory mapping of the file, which hyper writes
/// straight from the page cache: one copy fewer than reading into a buffer
/// (docker-registry uses `sendfile`). Where mapping fails, the piece is read instead.
/// Stops when the client goes away (the receiver is dropped).
fn read_ahead(file: Arc<File>, start: u64, end: u64) -> mpsc::Receiver<io::Result<Bytes>> {
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    tokio::task::spawn_blocking(move || {
        let mut pos = start;
        while pos < end {
            let want = (end - pos).min(COMMITTED_READ_SIZE as u64) as usize;
            let piece = match map_piece(&file, pos, want) {
                Some(mapped) => Ok(mapped),
                None => read_piece(&file, pos, want),
            };
            let failed = piece.is_err();
            if tx.blocking_send(piece).is_err() || failed {
                return;
            }
            pos += want as u64;
        }
    });
    rx
}

/// Maps and pre-faults `len` bytes at `at`; `None` if this file cannot be mapped.
fn map_piece(file: &File, at: u64, len: usize) -> Option<Bytes> {
    // SAFETY: a mapping is unsound if the file changes underneath it. Committed blobs
    // never do: they are written under `partial/` or `tmp/`, renamed into place once
    // their sha256 is verified, and afterwards only ever unlinked (garbage collection),
    // which keeps the pages of a live mapping valid.
    let map = unsafe {
        memmap2::MmapOptions::new()
            .offset(at)
            .len(len)
            .populate()
            .map(file)
    };
    match map {
        Ok(map) => Some(Bytes::from_owner(map)),
        Err(e) => {
            tracing::debug!(error = %e, "mapping a blob piece failed; reading it instead");
            None
        }
    }
}

fn read_piece(file: &File, at: u64, len: usize) -> io::Result<Bytes> {
    let mut buf = vec![0; len];
    file.read_exact_at(&mut buf, at)?;
    Ok(Bytes::from(buf))
}

/// Waits until more than `pos` bytes are readable; returns how many are.
async fn wait_for(rx: &mut watch::Receiver<Progress>, pos: u64) -> io::Result<u64> {
    loop {
        {
            let p = rx.borrow_and_update();
            if let Some(Err(e)) = &p.outcome {
                return Err(io::Error::other(format!("download failed: {e}")));
            }
            if p.available > pos {
                return Ok(p.available);
            }
            if let (Some(Ok(())), Some(size)) = (&p.outcome, p.size) {
                return Ok(size);
            }
        }
        rx.changed()
            .await
            .map_err(|_| io::Error::other("download ended without a result"))?;
    }
}

async fn wait_outcome(rx: &mut watch::Receiver<Progress>) -> io::Result<()> {
    loop {
        match &rx.borrow_and_update().outcome {
            Some(Ok(())) => return Ok(()),
            Some(Err(e)) => return Err(io::Error::other(format!("download failed: {e}"))),
            None => {}
        }
        rx.changed()
            .await
            .map_err(|_| io::Error::other("download ended without a result"))?;
    }
}
