//! Starting every blob of an image once a pull of it has begun (`--prefetch`).
//!
//! containerd pulls three layers at a time, so on a cold rollout the fourth layer of a
//! model starts only when one of the first three ends: the origin sits idle while the
//! swarm finishes the first three, and every node then waits on the last layer alone.
//! Starting every blob when the pull begins keeps the origin and the peers busy from the
//! first second; containerd's later requests join the running downloads. It matters in
//! large swarms: the fourth layer then starts on every node at once rather than
//! staggered as nodes finish their first three, which gives the early starters a small
//! view of the swarm, each owning many chunks. Simulated cold starts, 512 MiB in 4
//! layers (benches/RESULTS.md, session 11): containerd's order gave 1000 nodes 1.96x
//! T_limit and 1.30x the model from the origin, 200 nodes 1.74x and 1.074x; every layer
//! at once 1.44x and 1.020x, 1.31x and 1.000x.
//!
//! What counts as a pull: a whole-blob GET (no `Range`) of a *layer* of an image
//! manifest this mirror served by GET in the last [`PENDING_TTL`]. A manifest GET alone
//! is not one (`skopeo inspect` fetches the manifest and the config, never a layer), nor
//! is a ranged read (lazy-pulling snapshotters such as stargz read layers piecewise).
//! The first such GET starts the image's other blobs, once, if those the store lacks
//! fit under the limit and under the quota's free room.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderValue;
use shoal_proto::oci::{Descriptor, Manifest};
use shoal_proto::Digest;

use super::Mirror;
use crate::upstream::Target;

/// Blobs one manifest may start; a manifest listing more is not prefetched at all.
const MAX_PREFETCH_BLOBS: usize = 256;

/// How long a served manifest waits for the first GET of one of its layers.
pub const PENDING_TTL: Duration = Duration::from_secs(600);

/// Manifests remembered at once; the oldest is forgotten first.
const MAX_PENDING: usize = 64;

/// Why a manifest's blobs were not prefetched.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Skipped {
    /// More blobs than [`MAX_PREFETCH_BLOBS`].
    TooManyBlobs(usize),
    /// The missing blobs exceed `--prefetch`.
    OverLimit { missing: u64, limit: u64 },
    /// The missing blobs exceed the quota's free room; prefetching would evict.
    OverQuotaRoom { missing: u64, room: u64 },
}

/// An image manifest served by GET whose layers nobody has asked for yet.
struct PendingPull {
    target: Target,
    manifest: Digest,
    /// The config and the layers, in manifest order.
    blobs: Vec<Descriptor>,
    /// Where the layers start in `blobs` (after the config, if any).
    first_layer: usize,
    served_at: Instant,
}

impl PendingPull {
    fn layers(&self) -> impl Iterator<Item = &Descriptor> {
        self.blobs[self.first_layer..].iter()
    }
}

/// The `--prefetch` state: its limit and the manifests that may turn into pulls.
pub struct Prefetch {
    limit: u64,
    pending: Mutex<VecDeque<PendingPull>>,
}

impl Prefetch {
    /// Prefetching up to `limit` missing bytes per image (0: off).
    pub fn new(limit: u64) -> Self {
        Prefetch {
            limit,
            pending: Mutex::new(VecDeque::new()),
        }
    }

    /// Remembers an image manifest served by GET; indexes and bodies that are not
    /// manifests name no layers and are ignored.
    pub(super) fn remember(&self, target: &Target, manifest: Digest, body: &[u8], now: Instant) {
        if self.limit == 0 {
            return;
        }
        let Ok(parsed) = serde_json::from_slice::<Manifest>(body) else {
            return;
        };
        if !parsed.manifests.is_empty() || parsed.layers.is_empty() {
            return;
        }
        let mut pending = self.lock();
        pending.retain(|p| !(p.manifest == manifest && p.target == *target));
        if pending.len() >= MAX_PENDING {
            pending.pop_front();
        }
        pending.push_back(PendingPull {
            target: target.clone(),
            manifest,
            blobs: parsed.blobs().cloned().collect(),
            first_layer: usize::from(parsed.config.is_some()),
            served_at: now,
        });
    }

    /// The blobs of the remembered image that `layer` (of `target`) is a layer of, if
    /// any; the image is forgotten, so a pull starts its prefetch once.
    pub(super) fn take(
        &self,
        target: &Target,
        layer: &Digest,
        now: Instant,
    ) -> Option<Vec<Descriptor>> {
        let mut pending = self.lock();
        pending.retain(|p| now.saturating_duration_since(p.served_at) < PENDING_TTL);
        let at = pending
            .iter()
            .position(|p| p.target == *target && p.layers().any(|d| d.digest == *layer))?;
        pending.remove(at).map(|p| p.blobs)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<PendingPull>> {
        // The queue holds no invariant a panicking holder could break.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The blobs of an image to prefetch: those the store lacks, if they fit.
pub(super) fn plan(
    blobs: &[Descriptor],
    limit: u64,
    quota: u64,
    used: u64,
    have: impl Fn(&Descriptor) -> bool,
) -> Result<Vec<Descriptor>, Skipped> {
    if blobs.len() > MAX_PREFETCH_BLOBS {
        return Err(Skipped::TooManyBlobs(blobs.len()));
    }
    // In manifest order, as containerd asks for the layers; each blob once.
    let mut seen = HashSet::new();
    let missing: Vec<Descriptor> = blobs
        .iter()
        .filter(|d| !have(d) && seen.insert(d.digest))
        .cloned()
        .collect();
    let bytes: u64 = missing.iter().map(|d| d.size).sum();
    if bytes > limit {
        return Err(Skipped::OverLimit {
            missing: bytes,
            limit,
        });
    }
    let room = quota.saturating_sub(used);
    if quota > 0 && bytes > room {
        return Err(Skipped::OverQuotaRoom {
            missing: bytes,
            room,
        });
    }
    Ok(missing)
}

/// On a manifest GET: remembers the manifest, in case a pull of it follows.
pub(super) fn manifest_served(m: &Mirror, target: &Target, manifest: Digest, body: &[u8]) {
    m.prefetch.remember(target, manifest, body, Instant::now());
}

/// On a whole-blob GET: if `digest` is a layer of a remembered manifest, this is a
/// pull, and the image's other missing blobs start downloading.
pub(super) fn blob_requested(
    m: &Arc<Mirror>,
    target: &Target,
    digest: &Digest,
    auth: Option<HeaderValue>,
) {
    let Some(blobs) = m.prefetch.take(target, digest, Instant::now()) else {
        return;
    };
    let have = |d: &Descriptor| m.store.get(&d.digest).ok().flatten().is_some();
    match plan(
        &blobs,
        m.prefetch.limit,
        m.store.quota(),
        m.store.used_bytes(),
        have,
    ) {
        Ok(blobs) if blobs.is_empty() => {}
        Ok(blobs) => {
            let bytes: u64 = blobs.iter().map(|d| d.size).sum();
            tracing::info!(
                blobs = blobs.len(),
                bytes,
                "a layer GET began a pull: prefetching the image's blobs"
            );
            for blob in blobs {
                m.downloads.get_or_start(blob.digest, target, auth.clone());
            }
        }
        Err(why) => tracing::info!(?why, "the image's blobs not prefetched"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::from_sha256_bytes([n; 32])
    }

    fn manifest(layers: &[(u8, u64)]) -> Vec<u8> {
        let d = |(n, size): &(u8, u64)| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": digest(*n).to_string(),
                "size": size,
            })
        };
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": d(&(0, 10)),
            "layers": layers.iter().map(d).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    fn blobs(layers: &[(u8, u64)]) -> Vec<Descriptor> {
        let m: Manifest = serde_json::from_slice(&manifest(layers)).unwrap();
        m.blobs().cloned().collect()
    }

    fn digests(plan: &[Descriptor]) -> Vec<Digest> {
        plan.iter().map(|d| d.digest).collect()
    }

    fn target(repo: &str) -> Target {
        Target {
            host: "registry.example:5000".into(),
            repo: repo.into(),
        }
    }

    #[test]
    fn missing_blobs_in_manifest_order_without_duplicates() {
        let blobs = blobs(&[(3, 100), (1, 100), (3, 100), (2, 100)]);
        let have = |d: &Descriptor| d.digest == digest(2);
        let plan = plan(&blobs, 1000, 0, 0, have).unwrap();
        assert_eq!(digests(&plan), vec![digest(0), digest(3), digest(1)]);
    }

    #[test]
    fn limits_and_quota_room_are_respected() {
        let blobs = blobs(&[(1, 600), (2, 600)]);
        let none = |_: &Descriptor| false;
        assert_eq!(
            plan(&blobs, 1000, 0, 0, none),
            Err(Skipped::OverLimit {
                missing: 1210,
                limit: 1000
            })
        );
        assert_eq!(
            plan(&blobs, 2000, 1500, 400, none),
            Err(Skipped::OverQuotaRoom {
                missing: 1210,
                room: 1100
            })
        );
        assert_eq!(plan(&blobs, 2000, 1500, 200, none).unwrap().len(), 3);
        // What the store has does not count against the limit.
        let have_one = |d: &Descriptor| d.digest == digest(1);
        assert_eq!(plan(&blobs, 700, 0, 0, have_one).unwrap().len(), 2);
        let many: Vec<(u8, u64)> = (1..=255).map(|n| (n, 1)).chain([(1, 1), (2, 1)]).collect();
        assert_eq!(
            plan(&self::blobs(&many), u64::MAX, 0, 0, none),
            Err(Skipped::TooManyBlobs(258))
        );
    }

    #[test]
    fn only_a_layer_of_a_served_manifest_in_the_same_repository_starts_a_pull_once() {
        let p = Prefetch::new(u64::MAX);
        let now = Instant::now();
        p.remember(
            &target("models/llm"),
            digest(90),
            &manifest(&[(1, 5), (2, 5)]),
            now,
        );
        // The config is what `skopeo inspect` reads: not a pull.
        assert!(p.take(&target("models/llm"), &digest(0), now).is_none());
        // The same layer in another repository is another image.
        assert!(p.take(&target("models/other"), &digest(1), now).is_none());
        let got = p
            .take(&target("models/llm"), &digest(2), now)
            .expect("a pull");
        assert_eq!(digests(&got), vec![digest(0), digest(1), digest(2)]);
        // containerd's next layer GET joins the running downloads; no second prefetch.
        assert!(p.take(&target("models/llm"), &digest(1), now).is_none());
    }

    #[test]
    fn indexes_garbage_expired_and_disabled_start_nothing() {
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest(1).to_string(),
                "size": 10,
            }],
        }))
        .unwrap();
        let now = Instant::now();
        let t = target("models/llm");
        let p = Prefetch::new(u64::MAX);
        p.remember(&t, digest(90), &index, now);
        p.remember(&t, digest(91), b"not json", now);
        assert!(p.take(&t, &digest(1), now).is_none());

        p.remember(&t, digest(92), &manifest(&[(1, 5)]), now);
        assert!(
            p.take(&t, &digest(1), now + PENDING_TTL).is_none(),
            "expired"
        );

        let off = Prefetch::new(0);
        off.remember(&t, digest(92), &manifest(&[(1, 5)]), now);
        assert!(off.take(&t, &digest(1), now).is_none(), "off");
    }

    #[test]
    fn the_oldest_manifest_is_forgotten_first_and_a_repeat_refreshes() {
        let p = Prefetch::new(u64::MAX);
        let now = Instant::now();
        let t = target("models/llm");
        for n in 0..=MAX_PENDING as u8 {
            p.remember(&t, digest(n), &manifest(&[(100 + n, 5)]), now);
        }
        assert!(
            p.take(&t, &digest(100), now).is_none(),
            "the first was evicted"
        );
        assert!(p.take(&t, &digest(101), now).is_some());
        // Serving the same manifest twice keeps one entry, the newest.
        let later = now + Duration::from_secs(1);
        p.remember(&t, digest(2), &manifest(&[(102, 5)]), later);
        assert!(p.take(&t, &digest(102), later).is_some());
        assert!(p.take(&t, &digest(102), later).is_none());
    }
}
