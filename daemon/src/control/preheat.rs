//! Preheat: fetching a model into a node's store before anyone pulls it.
//!
//! Each node runs at most one preheat per reference. A request for a reference that is
//! already running (or finished in the last minute) only reports, so asking again is how
//! callers poll. Nodes preheating the same model at the same time split the origin
//! fetches between them exactly as in a cold start, because each one pulls through its
//! own mirror and the swarm underneath.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_proto::control::{NodePreheat, PreheatState};
use shoal_proto::oci::{Platform, Reference};
use shoal_proto::wire::Message;
use tracing::Instrument;

use super::walk::{WalkProgress, Walker};

/// How long a finished preheat is reported instead of started again.
const KEEP_FINISHED: Duration = Duration::from_secs(60);

struct Job {
    progress: WalkProgress,
    /// `None` while running; the outcome and when it came.
    outcome: Mutex<Option<(Result<(), String>, Instant)>>,
    /// A failure is reported once before the next request retries.
    failure_reported: AtomicBool,
}

/// This node's preheats.
pub(crate) struct Preheats {
    node_id: String,
    walker: Walker,
    jobs: Mutex<HashMap<String, Arc<Job>>>,
}

impl Preheats {
    pub fn new(node_id: String, walker: Walker) -> Preheats {
        Preheats {
            node_id,
            walker,
            jobs: Mutex::default(),
        }
    }

    /// Starts preheating `reference` unless it runs (or just finished); reports its state.
    pub fn ensure(&self, reference: &Reference) -> NodePreheat {
        let key = reference.to_string();
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let job = match jobs.get(&key) {
            Some(job) if !is_stale(job) => job.clone(),
            _ => {
                let job = Arc::new(Job {
                    progress: WalkProgress::default(),
                    outcome: Mutex::new(None),
                    failure_reported: AtomicBool::new(false),
                });
                jobs.insert(key.clone(), job.clone());
                self.spawn(reference.clone(), job.clone());
                job
            }
        };
        drop(jobs);
        self.report(&job)
    }

    fn spawn(&self, reference: Reference, job: Arc<Job>) {
        let walker = self.walker.clone();
        let span = tracing::info_span!("preheat", reference = %reference);
        tokio::spawn(
            async move {
                let result = async {
                    let tree = walker.resolve(&reference, &Platform::host()).await?;
                    walker.fetch(&reference, &tree, &job.progress).await
                }
                .await
                .map_err(|e| e.to_string());
                match &result {
                    Ok(()) => tracing::info!(
                        bytes = job.progress.total.load(Ordering::Relaxed),
                        "preheat done"
                    ),
                    Err(e) => tracing::warn!(error = %e, "preheat failed"),
                }
                *job.outcome.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((result, Instant::now()));
            }
            .instrument(span),
        );
    }

    fn report(&self, job: &Job) -> NodePreheat {
        let outcome = job.outcome.lock().unwrap_or_else(|p| p.into_inner());
        let (state, error) = match &*outcome {
            None => (PreheatState::Running, None),
            Some((Ok(()), _)) => (PreheatState::Done, None),
            Some((Err(e), _)) => {
                job.failure_reported.store(true, Ordering::Relaxed);
                (PreheatState::Failed, Some(e.clone()))
            }
        };
        NodePreheat {
            node_id: self.node_id.clone(),
            state,
            done: job.progress.done.load(Ordering::Relaxed),
            total: job.progress.total.load(Ordering::Relaxed),
            error,
        }
    }
}

/// A failed job is retried once its failure was reported; a done one after
/// [`KEEP_FINISHED`].
fn is_stale(job: &Job) -> bool {
    match &*job.outcome.lock().unwrap_or_else(|p| p.into_inner()) {
        None => false,
        Some((Err(_), _)) => job.failure_reported.load(Ordering::Relaxed),
        Some((Ok(()), at)) => at.elapsed() > KEEP_FINISHED,
    }
}

impl crate::net::transfer::Preheater for Preheats {
    fn preheat(&self, reference: &str) -> Message {
        let status = match reference.parse::<Reference>() {
            Ok(r) => self.ensure(&r),
            Err(e) => NodePreheat {
                node_id: self.node_id.clone(),
                state: PreheatState::Failed,
                done: 0,
                total: 0,
                error: Some(e.to_string()),
            },
        };
        Message::PreheatStatus {
            reference: reference.to_owned(),
            state: status.state.code(),
            done: status.done,
            total: status.total,
            message: status.error.unwrap_or_default(),
        }
    }
}
