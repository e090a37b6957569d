//! Getting blobs the node does not have yet.
//!
//! [`Downloads`] keeps at most one running download per digest. Every local request for
//! that blob (full GETs and Ranges alike) follows the same download, reading the
//! staging file up to the bytes already written, so N concurrent pulls cost one fetch.
//! A download runs in its own task: a client that disconnects stops reading, not
//! fetching.
//!
//! Without peer networking a download streams the blob from the origin
//! (`fetch.rs`, resuming with `Range`). With it, `driver.rs` runs the sans-IO
//! [`scheduler`] over peers found by [`crate::net::discovery`] and chunk-sized ranged
//! GETs at the origin (`driver/linking.rs` finds providers and keeps the download's
//! links); `partial.rs` lets peers fetch the chunks a running download has;
//! `tuning.rs` holds the settings both the driver and the simulator use.

mod driver;
mod fetch;
mod links;
mod offline;
mod partial;
mod reader;
pub mod scheduler;
mod tuning;
mod writer;

use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Mutex};

use http::HeaderValue;
use shoal_proto::Digest;
use tokio::sync::watch;

use crate::buffers::BufferPool;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use crate::upstream::{Target, Upstream, UpstreamError};

pub use reader::{stream_range, BlobSource};
pub use tuning::{
    origin_frontier, peer_requests_per_download, scheduler_config, MAX_LINKED, MAX_PEER_REQUESTS,
};

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The origin failed or refused.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// Writing to the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A background task died.
    #[error("download task failed: {0}")]
    Task(String),
    /// The swarm scheduler gave up (origin failing, nobody has the chunks).
    #[error("swarm download failed: {0}")]
    Swarm(String),
    /// The blob failed its sha256 after taking chunks from peers that could not be
    /// checked one by one; it is fetched again from the origin alone.
    #[error("{0} failed sha256 after a download from peers; refetching from the origin")]
    CorruptFromPeers(Digest),
}

/// What readers see of a download.
#[derive(Clone, Default)]
pub struct Progress {
    /// Blob size, once known.
    pub size: Option<u64>,
    /// Staging (or committed) file to read from, once it exists.
    pub file: Option<Arc<File>>,
    /// Bytes from offset 0 that are written and readable.
    pub available: u64,
    /// Set when the download ends.
    pub outcome: Option<Result<(), Arc<DownloadError>>>,
}

/// One running download.
pub struct Download {
    /// Blob digest.
    pub digest: Digest,
    progress: watch::Receiver<Progress>,
}

impl Download {
    /// A receiver that follows the download's progress.
    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// Waits until the size is known (headers in) or the download failed.
    pub async fn wait_started(&self) -> Result<(u64, Arc<File>), Arc<DownloadError>> {
        let mut rx = self.subscribe();
        loop {
            {
                let p = rx.borrow_and_update();
                if let (Some(size), Some(file)) = (p.size, &p.file) {
                    return Ok((size, file.clone()));
                }
                if let Some(Err(e)) = &p.outcome {
                    return Err(e.clone());
                }
            }
            if rx.changed().await.is_err() {
                return Err(Arc::new(DownloadError::Task(
                    "download ended without a result".into(),
                )));
            }
        }
    }
}

/// Publishes a blob committed while its download was being set up; `Ok(false)` when
/// it is not committed.
fn publish_committed(
    ctx: &Context,
    digest: Digest,
    tx: &watch::Sender<Progress>,
) -> Result<bool, DownloadError> {
    let Some((record, file)) = ctx.store.open_blob(&digest)? else {
        return Ok(false);
    };
    tx.send_modify(|p| {
        p.size = Some(record.size());
        p.available = record.size();
        p.file = Some(Arc::new(file));
    });
    Ok(true)
}

/// Waits for a download's writer to finish, then verifies the sha256 and commits.
async fn commit(
    writer: tokio::task::JoinHandle<Result<crate::store::Ingest, DownloadError>>,
    started: std::time::Instant,
    resumed: u64,
) -> Result<(), DownloadError> {
    let ingest = writer
        .await
        .map_err(|e| DownloadError::Task(e.to_string()))??;
    let record = tokio::task::spawn_blocking(move || ingest.commit())
        .await
        .map_err(|e| DownloadError::Task(e.to_string()))??;
    tracing::info!(
        size = record.size(),
        resumed_bytes = resumed,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "blob committed"
    );
    Ok(())
}

/// Shared context of all downloads.
pub(crate) struct Context {
    pub(crate) store: Arc<Store>,
    pub(crate) upstream: Arc<Upstream>,
    pub(crate) metrics: Arc<Metrics>,
    /// Where origin ranges are gathered ([`crate::buffers`]); they return once written.
    pub(crate) range_buffers: BufferPool,
}

/// Idle origin-range buffers kept: what a download alone keeps in flight
/// ([`tuning::origin_requests_alone`], 8 MiB).
const RANGE_BUFFERS_RETAINED: usize = 8 << 20;

/// The node's peer networking, as downloads use it.
pub struct PeerNetwork {
    /// The chunk-transfer endpoint.
    pub transfer: Arc<crate::net::transfer::Transfer>,
    /// Provider discovery.
    pub discovery: Arc<crate::net::discovery::Discovery>,
}

/// The registry of running downloads (a cheap handle: clones share it).
#[derive(Clone)]
pub struct Downloads {
    ctx: Arc<Context>,
    swarm: Option<Arc<driver::PeerSwarm>>,
    running: Arc<Mutex<HashMap<Digest, Arc<Download>>>>,
}

impl Downloads {
    /// A registry fetching from `upstream` into `store`, and from peers with `network`.
    pub fn new(
        store: Arc<Store>,
        upstream: Arc<Upstream>,
        metrics: Arc<Metrics>,
        network: Option<PeerNetwork>,
    ) -> Downloads {
        let swarm = network.map(|n| {
            let partials = Arc::new(partial::Partials::default());
            n.transfer.set_local_blobs(partials.clone());
            let discovery = n.discovery.clone();
            store.set_on_remove(Box::new(move |d| discovery.stop_providing(*d)));
            if let Ok(blobs) = store.list() {
                for b in blobs {
                    n.discovery.provide(b.digest);
                }
            }
            Arc::new(driver::PeerSwarm {
                me: links::node_id(&n.transfer.peer_id()),
                transfer: n.transfer,
                discovery: n.discovery,
                partials,
                config: tuning::scheduler_config(store.chunk_size()),
                peer_requests: Arc::new(tokio::sync::Semaphore::new(tuning::MAX_PEER_REQUESTS)),
            })
        });
        Downloads {
            ctx: Arc::new(Context {
                store,
                upstream,
                metrics,
                range_buffers: BufferPool::new(RANGE_BUFFERS_RETAINED),
            }),
            swarm,
            running: Arc::default(),
        }
    }

    /// The running download of `digest`, or a new one fetching it from `target`.
    pub fn get_or_start(
        &self,
        digest: Digest,
        target: &Target,
        client_auth: Option<HeaderValue>,
    ) -> Arc<Download> {
        self.start(digest, target, client_auth, false)
    }

    fn start(
        &self,
        digest: Digest,
        target: &Target,
        client_auth: Option<HeaderValue>,
        origin_only: bool,
    ) -> Arc<Download> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = running.get(&digest) {
            return d.clone();
        }
        let (tx, rx) = watch::channel(Progress::default());
        let download = Arc::new(Download {
            digest,
            progress: rx,
        });
        running.insert(digest, download.clone());
        let ctx = self.ctx.clone();
        let registry = self.running.clone();
        let target = target.clone();
        let swarm = self.swarm.clone().filter(|_| !origin_only);
        let this = self.clone();
        tokio::spawn(async move {
            let tx = Arc::new(tx);
            let result = match &swarm {
                Some(swarm) => {
                    driver::run(&ctx, swarm, digest, &target, client_auth.clone(), &tx).await
                }
                None => fetch::run(&ctx, digest, &target, client_auth.clone(), &tx).await,
            };
            if let Err(e) = &result {
                tracing::warn!(digest = %digest, error = %e, "download failed");
            }
            let refetch = matches!(result, Err(DownloadError::CorruptFromPeers(_)));
            // Leave the registry before publishing the outcome: a request that arrives
            // after this sees the committed blob in the store, or starts afresh.
            registry
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&digest);
            // Readers of the bad attempt are aborted; a new one fetches from the origin.
            tx.send_modify(|p| p.outcome = Some(result.map_err(Arc::new)));
            if refetch {
                this.start(digest, &target, client_auth, true);
            }
        });
        download
    }

    /// Running downloads: digest, size when known, bytes readable from the start.
    pub fn active(&self) -> Vec<(Digest, Option<u64>, u64)> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running
            .values()
            .map(|d| {
                let p = d.progress.borrow();
                (d.digest, p.size, p.available)
            })
            .collect()
    }

    /// Size of a running download, if one runs and its size is known.
    pub fn running_size(&self, digest: &Digest) -> Option<u64> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.get(digest).and_then(|d| d.progress.borrow().size)
    }
}
