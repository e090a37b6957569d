//! What a layer is, from its media type and annotations: how it is packed and, for a
//! single file, where it goes.

use shoal_proto::oci::Descriptor;

/// How a layer's bytes become files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    /// The blob is one file, as is.
    Raw,
    /// A tar archive.
    Tar,
    /// A gzip-compressed tar archive.
    TarGzip,
    /// A zstd-compressed tar archive.
    TarZstd,
}

/// A layer to extract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerPlan {
    /// How it is packed.
    pub packing: Packing,
    /// For raw layers, the file's path relative to the target directory.
    pub path: Option<String>,
    /// Container image layers (OCI/Docker rootfs): whiteout files delete.
    pub image_layer: bool,
}

/// Annotations naming a layer's file, most specific first.
const PATH_ANNOTATIONS: [&str; 3] = [
    "org.cncf.model.filepath",
    "org.cnai.model.filepath",
    "org.opencontainers.image.title",
];

/// How to extract `layer`, or `None` for layers that hold no files (configs, empty
/// descriptors, unknown types), which are skipped.
pub fn plan(layer: &Descriptor) -> Option<LayerPlan> {
    let t = layer.media_type.as_str();
    let image_layer = t.starts_with("application/vnd.oci.image.layer.")
        || t.starts_with("application/vnd.docker.image.rootfs.");
    let packing = if t.ends_with("tar+gzip") || t.ends_with("tar.gzip") || t.ends_with("tar+gz") {
        Packing::TarGzip
    } else if t.ends_with("tar+zstd") || t.ends_with("tar.zstd") {
        Packing::TarZstd
    } else if t.ends_with(".tar") || t.ends_with("+tar") {
        Packing::Tar
    } else if is_raw_file(t) {
        Packing::Raw
    } else {
        return None;
    };
    let path = (packing == Packing::Raw).then(|| raw_path(layer));
    Some(LayerPlan {
        packing,
        path,
        image_layer,
    })
}

/// Media types whose blob is one file: ModelPack/CNAI `.raw`, Docker Model Runner's
/// `vnd.docker.ai.*` (GGUF, safetensors, licenses, projectors), OMLMD, KitOps raw parts.
fn is_raw_file(t: &str) -> bool {
    (t.starts_with("application/vnd.cncf.model.") && t.ends_with(".raw"))
        || (t.starts_with("application/vnd.cnai.model.") && t.ends_with(".raw"))
        || (t.starts_with("application/vnd.kitops.modelkit.") && t.ends_with(".raw"))
        || (t.starts_with("application/vnd.docker.ai.") && !t.contains(".config."))
        || t == "application/x-mlmodel"
}

/// Where a raw layer's file goes: its path annotation, else a name from its type.
fn raw_path(layer: &Descriptor) -> String {
    if let Some(p) = PATH_ANNOTATIONS
        .iter()
        .find_map(|k| layer.annotations.get(*k))
        .filter(|p| !p.is_empty())
    {
        return p.clone();
    }
    let t = layer.media_type.as_str();
    let short = &layer.digest.hex()[..12];
    if t.starts_with("application/vnd.docker.ai.gguf") {
        format!("model-{short}.gguf")
    } else if t.starts_with("application/vnd.docker.ai.license") {
        format!("LICENSE-{short}")
    } else if t.starts_with("application/vnd.docker.ai.safetensors") {
        format!("model-{short}.safetensors")
    } else {
        format!("sha256-{}", layer.digest.hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(media_type: &str, annotations: &[(&str, &str)]) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: format!("sha256:{}", "ab".repeat(32)).parse().unwrap(),
            size: 1,
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            platform: None,
            artifact_type: None,
        }
    }

    #[test]
    fn families() {
        let p = plan(&layer(
            "application/vnd.cncf.model.weight.v1.raw",
            &[("org.cncf.model.filepath", "w/model.safetensors")],
        ))
        .unwrap();
        assert_eq!(p.packing, Packing::Raw);
        assert_eq!(p.path.as_deref(), Some("w/model.safetensors"));
        let p = plan(&layer("application/vnd.cnai.model.doc.v1.tar+zstd", &[])).unwrap();
        assert_eq!(p.packing, Packing::TarZstd);
        let p = plan(&layer(
            "application/vnd.kitops.modelkit.model.v1.tar+gzip",
            &[],
        ))
        .unwrap();
        assert_eq!(p.packing, Packing::TarGzip);
        let p = plan(&layer("application/vnd.docker.ai.gguf.v3", &[])).unwrap();
        assert_eq!(p.packing, Packing::Raw);
        assert!(p.path.unwrap().ends_with(".gguf"));
        let p = plan(&layer(
            "application/x-mlmodel",
            &[("org.opencontainers.image.title", "model.onnx")],
        ))
        .unwrap();
        assert_eq!(p.path.as_deref(), Some("model.onnx"));
        let p = plan(&layer(
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            &[],
        ))
        .unwrap();
        assert!(p.image_layer && p.packing == Packing::TarGzip);
        assert!(plan(&layer("application/vnd.oci.empty.v1+json", &[])).is_none());
        assert!(plan(&layer(
            "application/vnd.docker.ai.model.config.v0.1+json",
            &[]
        ))
        .is_none());
    }
}
