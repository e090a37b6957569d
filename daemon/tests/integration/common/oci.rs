//! Building real OCI content (tar layers, configs, manifests, ModelPack artifacts) and
//! pushing it to a registry with the distribution push API.

use std::io::Write;

use super::sha256_digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MODEL_ARTIFACT: &str = "application/vnd.cncf.model.manifest.v1+json";
pub const MODEL_CONFIG: &str = "application/vnd.cncf.model.config.v1+json";
pub const MODEL_WEIGHT_RAW: &str = "application/vnd.cncf.model.weight.v1.raw";

/// One blob with its descriptor fields.
#[derive(Clone)]
pub struct Blob {
    pub media_type: String,
    pub bytes: Vec<u8>,
    pub digest: String,
    pub annotations: Option<serde_json::Value>,
}

impl Blob {
    pub fn new(media_type: &str, bytes: Vec<u8>) -> Blob {
        Blob {
            media_type: media_type.into(),
            digest: sha256_digest(&bytes),
            bytes,
            annotations: None,
        }
    }

    /// The same blob with one annotation added.
    pub fn annotated(mut self, key: &str, value: &str) -> Blob {
        let a = self
            .annotations
            .get_or_insert_with(|| serde_json::json!({}));
        a[key] = value.into();
        self
    }

    pub fn descriptor(&self) -> serde_json::Value {
        let mut d = serde_json::json!({"mediaType": self.media_type, "digest": self.digest, "size": self.bytes.len()});
        if let Some(a) = &self.annotations {
            d["annotations"] = a.clone();
        }
        d
    }
}

/// A manifest plus everything it references.
pub struct Artifact {
    pub manifest: Vec<u8>,
    pub manifest_type: String,
    pub digest: String,
    pub config: Blob,
    pub layers: Vec<Blob>,
}

/// A tar archive holding `files` (path, contents).
pub fn tar_layer(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append_data(&mut h, path, *data).expect("tar append");
    }
    b.into_inner().expect("tar finish")
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("gzip finish")
}

/// A runnable-shaped linux/amd64 image: one gzip layer and one plain tar layer.
pub fn image(seed: u64, manifest_type: &str) -> Artifact {
    let big = super::random_bytes(300_000, seed);
    let plain = tar_layer(&[
        (
            "etc/hello.txt",
            format!("hello from image {seed}\n").as_bytes(),
        ),
        ("data/random.bin", &big),
    ]);
    let second = tar_layer(&[("usr/share/doc/readme", b"second layer\n")]);
    let (gz_type, tar_type, config_type) = if manifest_type == DOCKER_MANIFEST {
        (
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "application/vnd.docker.container.image.v1+json",
        )
    } else {
        (
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.layer.v1.tar",
            "application/vnd.oci.image.config.v1+json",
        )
    };
    let layer1 = Blob::new(gz_type, gzip(&plain));
    // Docker schema 2 has no uncompressed layer type; gzip both there.
    let layer2 = if manifest_type == DOCKER_MANIFEST {
        Blob::new(tar_type, gzip(&second))
    } else {
        Blob::new(tar_type, second.clone())
    };
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(&plain), sha256_digest(&second)]},
    });
    let config = Blob::new(
        config_type,
        serde_json::to_vec(&config).expect("config json"),
    );
    let layers = vec![layer1, layer2];
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": config.descriptor(),
        "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
    });
    let manifest = serde_json::to_vec(&manifest).expect("manifest json");
    Artifact {
        digest: sha256_digest(&manifest),
        manifest,
        manifest_type: manifest_type.into(),
        config,
        layers,
    }
}

/// A ModelPack-style artifact: raw weight layers with file-path annotations.
pub fn model(seed: u64, weight_sizes: &[usize]) -> Artifact {
    let config = serde_json::json!({
        "descriptor": {"name": format!("test-model-{seed}"), "family": "test"},
        "config": {"format": "safetensors"},
        "modelfs": {"type": "layers", "diffIds": []},
    });
    let config = Blob::new(MODEL_CONFIG, serde_json::to_vec(&config).expect("json"));
    let layers: Vec<Blob> = weight_sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            let mut b = Blob::new(
                MODEL_WEIGHT_RAW,
                super::random_bytes(size, seed * 1000 + i as u64),
            );
            b.annotations = Some(
                serde_json::json!({"org.cncf.model.filepath": format!("model-{i:05}.safetensors")}),
            );
            b
        })
        .collect();
    artifact(Some(MODEL_ARTIFACT), config, layers)
}

/// An OCI manifest of `config` and `layers`, with `artifactType` when given.
pub fn artifact(artifact_type: Option<&str>, config: Blob, layers: Vec<Blob>) -> Artifact {
    let mut manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
    });
    if let Some(t) = artifact_type {
        manifest["artifactType"] = t.into();
    }
    let manifest = serde_json::to_vec(&manifest).expect("json");
    Artifact {
        digest: sha256_digest(&manifest),
        manifest,
        manifest_type: OCI_MANIFEST.into(),
        config,
        layers,
    }
}

/// An OCI index pointing at `manifests` (digest, size, media type) for linux/amd64.
pub fn index(manifests: &[&Artifact]) -> (Vec<u8>, String) {
    let idx = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests.iter().map(|a| serde_json::json!({
            "mediaType": a.manifest_type, "digest": a.digest, "size": a.manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"}
        })).collect::<Vec<_>>(),
    });
    let bytes = serde_json::to_vec(&idx).expect("json");
    let d = sha256_digest(&bytes);
    (bytes, d)
}

/// Pushes with the distribution API. `auth` is a full `Authorization` value.
pub struct Pusher {
    pub base: String,
    pub auth: Option<String>,
    client: reqwest::Client,
}

impl Pusher {
    pub fn new(registry_host: &str, auth: Option<String>) -> Pusher {
        Pusher {
            base: format!("http://{registry_host}"),
            auth,
            client: super::http(),
        }
    }

    fn req(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let rb = self.client.request(method, url);
        match &self.auth {
            Some(a) => rb.header("authorization", a),
            None => rb,
        }
    }

    pub async fn blob(&self, repo: &str, blob: &Blob) {
        let r = self
            .req(
                reqwest::Method::POST,
                &format!("{}/v2/{repo}/blobs/uploads/", self.base),
            )
            .send()
            .await
            .expect("start upload");
        assert_eq!(
            r.status(),
            202,
            "start upload: {}",
            r.text().await.unwrap_or_default()
        );
        let loc = r.headers()["location"]
            .to_str()
            .expect("location")
            .to_owned();
        let loc = if loc.starts_with("http") {
            loc
        } else {
            format!("{}{loc}", self.base)
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = self
            .req(
                reqwest::Method::PUT,
                &format!("{loc}{sep}digest={}", blob.digest),
            )
            .header("content-type", "application/octet-stream")
            .body(blob.bytes.clone())
            .send()
            .await
            .expect("upload");
        assert_eq!(
            r.status(),
            201,
            "upload: {}",
            r.text().await.unwrap_or_default()
        );
    }

    pub async fn manifest(&self, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) {
        let r = self
            .req(
                reqwest::Method::PUT,
                &format!("{}/v2/{repo}/manifests/{reference}", self.base),
            )
            .header("content-type", media_type)
            .body(bytes.to_vec())
            .send()
            .await
            .expect("put manifest");
        assert_eq!(
            r.status(),
            201,
            "put manifest: {}",
            r.text().await.unwrap_or_default()
        );
    }

    /// Pushes config, layers and the manifest under `tag`.
    pub async fn artifact(&self, repo: &str, tag: &str, a: &Artifact) {
        self.blob(repo, &a.config).await;
        for l in &a.layers {
            self.blob(repo, l).await;
        }
        self.manifest(repo, tag, &a.manifest_type, &a.manifest)
            .await;
    }
}
