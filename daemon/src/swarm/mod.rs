//! Getting blobs the node does not have yet.
//!
//! [`Downloads`] keeps at most one running download per digest. Every local request for
//! that blob (full GETs and Ranges alike) follows the same download, reading the
//! staging file up to the bytes already written, so N concurrent pulls cost one fetch.
//! A download runs in its own task: a client that disconnects stops reading, not
//! fetching.
//!
//! Today the only source is the origin ([`crate::upstream`]); the peer swarm
//! (issue 3) plugs in here as another source of chunks for the same staging file.
//! Its decision-making core, [`scheduler`], is a sans-IO state machine that is
//! written and tested but not yet driven by the daemon.

mod fetch;
mod reader;
pub mod scheduler;

use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Mutex};

use http::HeaderValue;
use shoal_proto::Digest;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use crate::upstream::{Target, Upstream, UpstreamError};

pub use reader::{stream_range, BlobSource};

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

/// Shared context of all downloads.
pub(crate) struct Context {
    pub(crate) store: Arc<Store>,
    pub(crate) upstream: Arc<Upstream>,
    pub(crate) metrics: Arc<Metrics>,
}

/// The registry of running downloads.
pub struct Downloads {
    ctx: Arc<Context>,
    running: Arc<Mutex<HashMap<Digest, Arc<Download>>>>,
}

impl Downloads {
    /// A registry fetching from `upstream` into `store`.
    pub fn new(store: Arc<Store>, upstream: Arc<Upstream>, metrics: Arc<Metrics>) -> Downloads {
        Downloads {
            ctx: Arc::new(Context {
                store,
                upstream,
                metrics,
            }),
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
        tokio::spawn(async move {
            let tx = Arc::new(tx);
            let result = fetch::run(&ctx, digest, &target, client_auth, &tx).await;
            if let Err(e) = &result {
                tracing::warn!(digest = %digest, error = %e, "download failed");
            }
            // Leave the registry before publishing the outcome: a request that arrives
            // after this sees the committed blob in the store, or starts afresh.
            registry
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&digest);
            tx.send_modify(|p| p.outcome = Some(result.map_err(Arc::new)));
        });
        download
    }

    /// Size of a running download, if one runs and its size is known.
    pub fn running_size(&self, digest: &Digest) -> Option<u64> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.get(digest).and_then(|d| d.progress.borrow().size)
    }
}
