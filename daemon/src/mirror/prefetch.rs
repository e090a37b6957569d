//! Starting the downloads of a manifest's blobs when the manifest is fetched
//! (`--prefetch`).
//!
//! containerd pulls three layers at a time, so on a cold rollout the fourth layer of a
//! model starts only when one of the first three ends: the origin sits idle while the
//! swarm finishes the first three, and every node then waits on the last layer alone.
//! Starting every blob when the manifest body is served keeps the origin and the peers
//! busy from the first second; containerd's later requests join the running downloads.
//! It matters in large swarms: the fourth layer then starts on every node at once
//! rather than staggered as nodes finish their first three, which gives the early
//! starters a small view of the swarm, each owning many chunks. Simulated cold starts,
//! 512 MiB in 4 layers (benches/RESULTS.md, session 11): containerd's order gave 1000
//! nodes 1.96x T_limit and 1.30x the model from the origin, 200 nodes 1.74x and 1.074x;
//! every layer at once 1.44x and 1.020x, 1.31x and 1.000x. The CPU-bound 8-node
//! emulation was no faster with it (sessions 8 and 11).
//!
//! A manifest GET is not always a pull (`skopeo inspect` fetches one too), so this is
//! off by default and bounded: only image manifests (an index names no blobs), only
//! when the blobs the store lacks fit under the limit and under the quota's free room.

use std::sync::Arc;

use http::HeaderValue;
use shoal_proto::oci::{Descriptor, Manifest};

use super::Mirror;
use crate::upstream::Target;

/// Blobs one manifest may start; a manifest listing more is not prefetched at all.
const MAX_PREFETCH_BLOBS: usize = 256;

/// Why a manifest's blobs were not prefetched.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Skipped {
    /// The body is an index or not a manifest: it names no blobs.
    NoBlobs,
    /// More blobs than [`MAX_PREFETCH_BLOBS`].
    TooManyBlobs(usize),
    /// The missing blobs exceed `--prefetch`.
    OverLimit { missing: u64, limit: u64 },
    /// The missing blobs exceed the quota's free room; prefetching would evict.
    OverQuotaRoom { missing: u64, room: u64 },
}

/// The blobs of `body` to prefetch: those the store lacks, if they fit.
pub(super) fn plan(
    body: &[u8],
    limit: u64,
    quota: u64,
    used: u64,
    have: impl Fn(&Descriptor) -> bool,
) -> Result<Vec<Descriptor>, Skipped> {
    let manifest: Manifest = serde_json::from_slice(body).map_err(|_| Skipped::NoBlobs)?;
    if !manifest.manifests.is_empty() {
        return Err(Skipped::NoBlobs);
    }
    let listed = manifest.blobs().count();
    if listed > MAX_PREFETCH_BLOBS {
        return Err(Skipped::TooManyBlobs(listed));
    }
    let mut missing: Vec<Descriptor> = manifest.blobs().filter(|d| !have(d)).cloned().collect();
    missing.sort_by_key(|d| d.digest);
    missing.dedup_by_key(|d| d.digest);
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
    // containerd asks for the layers in manifest order; start them in that order too.
    let order: Vec<_> = manifest.blobs().map(|d| d.digest).collect();
    missing.sort_by_key(|d| order.iter().position(|o| *o == d.digest));
    Ok(missing)
}

/// Starts the downloads of the blobs `body` references, when `--prefetch` allows.
pub(super) fn start(m: &Arc<Mirror>, target: &Target, body: &[u8], auth: Option<HeaderValue>) {
    if m.prefetch_limit == 0 {
        return;
    }
    let have = |d: &Descriptor| m.store.get(&d.digest).ok().flatten().is_some();
    match plan(
        body,
        m.prefetch_limit,
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
                "prefetching the manifest's blobs"
            );
            for blob in blobs {
                m.downloads.get_or_start(blob.digest, target, auth.clone());
            }
        }
        Err(Skipped::NoBlobs) => {}
        Err(why) => tracing::info!(?why, "manifest's blobs not prefetched"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::Digest;

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

    fn digests(plan: &[Descriptor]) -> Vec<Digest> {
        plan.iter().map(|d| d.digest).collect()
    }

    #[test]
    fn missing_blobs_in_manifest_order_without_duplicates() {
        let body = manifest(&[(3, 100), (1, 100), (3, 100), (2, 100)]);
        let have = |d: &Descriptor| d.digest == digest(2);
        let plan = plan(&body, 1000, 0, 0, have).unwrap();
        assert_eq!(digests(&plan), vec![digest(0), digest(3), digest(1)]);
    }

    #[test]
    fn limits_and_quota_room_are_respected() {
        let body = manifest(&[(1, 600), (2, 600)]);
        let none = |_: &Descriptor| false;
        assert_eq!(
            plan(&body, 1000, 0, 0, none),
            Err(Skipped::OverLimit {
                missing: 1210,
                limit: 1000
            })
        );
        assert_eq!(
            plan(&body, 2000, 1500, 400, none),
            Err(Skipped::OverQuotaRoom {
                missing: 1210,
                room: 1100
            })
        );
        assert_eq!(plan(&body, 2000, 1500, 200, none).unwrap().len(), 3);
        // What the store has does not count against the limit.
        let have_one = |d: &Descriptor| d.digest == digest(1);
        assert_eq!(plan(&body, 700, 0, 0, have_one).unwrap().len(), 2);
    }

    #[test]
    fn indexes_garbage_and_huge_manifests_start_nothing() {
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest(1).to_string(),
                "size": 10,
            }],
        }))
        .unwrap();
        let none = |_: &Descriptor| false;
        assert_eq!(plan(&index, u64::MAX, 0, 0, none), Err(Skipped::NoBlobs));
        assert_eq!(
            plan(b"not json", u64::MAX, 0, 0, none),
            Err(Skipped::NoBlobs)
        );
        let many: Vec<(u8, u64)> = (1..=255).map(|n| (n, 1)).chain([(1, 1), (2, 1)]).collect();
        assert_eq!(
            plan(&manifest(&many), u64::MAX, 0, 0, none),
            Err(Skipped::TooManyBlobs(258))
        );
    }
}
