//! A ModelPack-style model (raw weight layers, a config, small doc layers) and the
//! OCI client side the benchmark needs: push it, and pull it the way containerd does.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use futures::StreamExt as _;
use sha2::{Digest as _, Sha256};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

struct Blob {
    media_type: &'static str,
    bytes: Vec<u8>,
    title: String,
}

impl Blob {
    fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(&self.bytes)))
    }

    fn descriptor(&self) -> serde_json::Value {
        serde_json::json!({
            "mediaType": self.media_type,
            "digest": self.digest(),
            "size": self.bytes.len(),
            "annotations": {"org.cncf.model.filepath": self.title},
        })
    }
}

/// Pushes a model of `weights` bytes in `layers` weight layers to `registry` (host:port)
/// as `repo:tag`; returns the total bytes of its blobs.
pub async fn push(
    registry: &str,
    repo: &str,
    tag: &str,
    weights: u64,
    layers: usize,
) -> Result<u64> {
    let client = reqwest::Client::new();
    let base = format!("http://{registry}/v2/{repo}");
    let seed = weights ^ layers as u64;
    let config = Blob {
        media_type: "application/vnd.cncf.model.config.v1+json",
        bytes: serde_json::to_vec(&serde_json::json!({
            "descriptor": {"name": "bench-model"},
            "config": {"format": "safetensors"},
            "modelfs": {"type": "layers", "diffIds": []},
        }))?,
        title: "config.json".into(),
    };
    let mut blobs = Vec::new();
    for i in 0..layers {
        let size = (weights / layers as u64) as usize;
        blobs.push(Blob {
            media_type: "application/vnd.cncf.model.weight.v1.raw",
            bytes: shoal_benches::random_bytes(size, seed * 100 + i as u64),
            title: format!("model-{i:05}-of-{layers:05}.safetensors"),
        });
    }
    for (i, name) in ["README.md", "LICENSE"].iter().enumerate() {
        blobs.push(Blob {
            media_type: "application/vnd.cncf.model.doc.v1.raw",
            bytes: shoal_benches::random_bytes(16 * 1024, seed * 1000 + i as u64),
            title: (*name).into(),
        });
    }
    let mut total = 0;
    for blob in std::iter::once(&config).chain(&blobs) {
        shoal_benches::push_blob(&client, registry, repo, blob.bytes.clone())
            .await
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("pushing {}", blob.title))?;
        total += blob.bytes.len() as u64;
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "artifactType": "application/vnd.cncf.model.manifest.v1+json",
        "config": config.descriptor(),
        "layers": blobs.iter().map(Blob::descriptor).collect::<Vec<_>>(),
    });
    let r = client
        .put(format!("{base}/manifests/{tag}"))
        .header("content-type", MANIFEST)
        .body(serde_json::to_vec(&manifest)?)
        .send()
        .await?;
    if r.status() != 201 {
        bail!("putting manifest: {}", r.status());
    }
    Ok(total)
}

/// Pulls `repo:tag` from `base` (a mirror or the registry) like containerd: manifest,
/// then config and layers, `parallel` blobs at a time, bodies discarded. A failing
/// request is retried (a restarted daemon) until `deadline`. Returns the blob bytes.
pub async fn pull(
    base: &str,
    repo: &str,
    tag: &str,
    parallel: usize,
    deadline: Duration,
) -> Result<u64> {
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .build()?;
    let give_up = Instant::now() + deadline;
    let manifest: serde_json::Value = retry(give_up, || async {
        let r = client
            .get(format!("{base}/v2/{repo}/manifests/{tag}"))
            .header("accept", MANIFEST)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("manifest: {}", r.status());
        }
        Ok(r.json().await?)
    })
    .await?;
    let mut digests = vec![manifest["config"]["digest"]
        .as_str()
        .context("config")?
        .to_owned()];
    for l in manifest["layers"].as_array().context("layers")? {
        digests.push(l["digest"].as_str().context("layer digest")?.to_owned());
    }
    let fetches = futures::stream::iter(digests.into_iter().map(|d| {
        let client = client.clone();
        async move {
            retry(give_up, || async {
                let r = client
                    .get(format!("{base}/v2/{repo}/blobs/{d}"))
                    .send()
                    .await?;
                if !r.status().is_success() {
                    bail!("blob {d}: {}", r.status());
                }
                let want = r.content_length();
                let mut got = 0u64;
                let mut body = r.bytes_stream();
                while let Some(piece) = body.next().await {
                    got += piece?.len() as u64;
                }
                if want.is_some_and(|w| w != got) {
                    bail!("blob {d}: {got} of {want:?} bytes");
                }
                Ok(got)
            })
            .await
        }
    }))
    .buffer_unordered(parallel);
    let sizes: Vec<Result<u64>> = fetches.collect().await;
    sizes.into_iter().sum()
}

async fn retry<T, F, Fut>(give_up: Instant, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() < give_up => {
                eprintln!("retrying: {e:#}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e),
        }
    }
}
