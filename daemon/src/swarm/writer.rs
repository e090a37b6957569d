//! The download's writer: one blocking thread writes (and hashes) every chunk into the
//! staging file in arrival order, and advances the in-order readable prefix.

use std::sync::Arc;

use bytes::Bytes;
use shoal_proto::ChunkHash;
use tokio::sync::{mpsc, oneshot, watch};

use super::partial::PartialBlob;
use super::{DownloadError, Progress};
use crate::store::{Ingest, StoreError};

/// How one chunk fetch ended.
pub(super) enum Fetched {
    Written,
    Invalid,
    Failed(String),
    Store(StoreError),
}

/// One chunk for the writer, and where to send the verdict.
pub(super) struct WriteJob {
    chunk: u32,
    bytes: Bytes,
    expected: Option<ChunkHash>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// Hands a fetched chunk to the writer and waits for its verdict.
pub(super) async fn write(
    writes: &mpsc::Sender<WriteJob>,
    chunk: u32,
    bytes: Bytes,
    expected: Option<ChunkHash>,
) -> Fetched {
    let (done, result) = oneshot::channel();
    let job = WriteJob {
        chunk,
        bytes,
        expected,
        done,
    };
    if writes.send(job).await.is_err() {
        return Fetched::Failed("download finished".into());
    }
    match result.await {
        Ok(Ok(())) => Fetched::Written,
        Ok(Err(StoreError::ChunkMismatch { .. })) => Fetched::Invalid,
        Ok(Err(e)) => Fetched::Store(e),
        Err(_) => Fetched::Failed("writer stopped".into()),
    }
}

/// One thread writes (and hashes) every chunk, in arrival order.
pub(super) fn spawn_writer(
    mut ingest: Ingest,
    partial: Arc<PartialBlob>,
    tx: Arc<watch::Sender<Progress>>,
) -> (
    mpsc::Sender<WriteJob>,
    tokio::task::JoinHandle<Result<Ingest, DownloadError>>,
) {
    let (jobs, mut rx) = mpsc::channel::<WriteJob>(16);
    let handle = tokio::task::spawn_blocking(move || {
        while let Some(job) = rx.blocking_recv() {
            let result = ingest.write_chunk(job.chunk, &job.bytes, job.expected.as_ref());
            match &result {
                Ok(()) => {
                    partial.set_present(job.chunk);
                    let available = ingest.offset();
                    tx.send_modify(|p| p.available = available);
                }
                Err(e) if e.is_out_of_space() => ingest.discard(),
                Err(_) => {}
            }
            let _ = job.done.send(result);
        }
        Ok(ingest)
    });
    (jobs, handle)
}
