//! `shoal pull` extracting what it pulled: every artifact family lands where its
//! format says, and no archive entry escapes the target directory.

use std::path::{Path, PathBuf};

use super::{code, json, ok, origin, shoal};
use crate::common::oci::{self, Artifact, Blob};
use crate::common::random_bytes;

/// A tar entry: a file, a symlink, or a file under a raw (unchecked) name.
enum Entry<'a> {
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    RawName(&'a str, &'a [u8]),
}

fn tar_of(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        match e {
            Entry::File(path, data) => {
                h.set_size(data.len() as u64);
                h.set_cksum();
                b.append_data(&mut h, path, *data).expect("tar");
            }
            Entry::Symlink(path, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, path, target).expect("tar link");
            }
            Entry::RawName(name, data) => {
                // tar's builder refuses `..`; a hostile archive does not.
                let gnu = h.as_gnu_mut().expect("gnu header");
                gnu.name[..name.len()].copy_from_slice(name.as_bytes());
                h.set_size(data.len() as u64);
                h.set_cksum();
                b.append(&h, *data).expect("tar raw");
            }
        }
    }
    b.into_inner().expect("tar finish")
}

fn zstd(bytes: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(bytes, ruzstd::encoding::CompressionLevel::Fastest)
}

fn config(media_type: &str) -> Blob {
    Blob::new(media_type, br#"{"name":"test"}"#.to_vec())
}

fn read(dir: &Path, rel: &str) -> Vec<u8> {
    std::fs::read(dir.join(rel)).unwrap_or_else(|e| panic!("{rel} not extracted: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_extracts_every_artifact_family() {
    let Some((reg, s, push)) = origin().await else {
        return;
    };
    let host = reg.host();
    let weights = random_bytes(3 << 20, 71);
    let old_weights = random_bytes(100_000, 72);
    let docs = tar_of(&[
        Entry::File("README.md", b"# model\n"),
        Entry::File("docs/guide.md", b"guide\n"),
    ]);
    let code_tar = tar_of(&[Entry::File("tokenizer/tokenizer.json", b"{\"v\":1}")]);
    let cfg_tar = tar_of(&[Entry::File("config.json", b"{\"layers\":2}")]);
    // ModelPack: raw, tar, tar+gzip, tar+zstd; plus a layer with the older CNAI names.
    let modelpack = oci::artifact(
        Some(oci::MODEL_ARTIFACT),
        config(oci::MODEL_CONFIG),
        vec![
            Blob::new(oci::MODEL_WEIGHT_RAW, weights.clone())
                .annotated("org.cncf.model.filepath", "weights/model.safetensors"),
            Blob::new("application/vnd.cncf.model.doc.v1.tar", docs)
                .annotated("org.cncf.model.filepath", "docs"),
            Blob::new(
                "application/vnd.cncf.model.weight.config.v1.tar+gzip",
                oci::gzip(&cfg_tar),
            ),
            Blob::new(
                "application/vnd.cncf.model.code.v1.tar+zstd",
                zstd(&code_tar),
            ),
            Blob::new(
                "application/vnd.cnai.model.weight.v1.raw",
                old_weights.clone(),
            )
            .annotated("org.cnai.model.filepath", "old/extra.bin"),
        ],
    );
    let kit_model = tar_of(&[Entry::File("models/model.onnx", b"onnx bytes")]);
    let kitops = oci::artifact(
        Some("application/vnd.kitops.modelkit.manifest.v1+json"),
        config("application/vnd.kitops.modelkit.config.v1+json"),
        vec![
            Blob::new(
                "application/vnd.kitops.modelkit.model.v1.tar+gzip",
                oci::gzip(&kit_model),
            ),
            Blob::new(
                "application/vnd.kitops.modelkit.docs.v1.tar",
                tar_of(&[Entry::File("README.md", b"kit readme\n")]),
            ),
        ],
    );
    let gguf = [b"GGUF".as_slice(), &random_bytes(200_000, 73)].concat();
    let docker_model = oci::artifact(
        None,
        config("application/vnd.docker.ai.model.config.v0.1+json"),
        vec![
            Blob::new("application/vnd.docker.ai.gguf.v3", gguf.clone()),
            Blob::new(
                "application/vnd.docker.ai.license",
                b"Apache-2.0\n".to_vec(),
            ),
        ],
    );
    let omlmd = oci::artifact(
        None,
        config("application/x-config"),
        vec![Blob::new("application/x-mlmodel", b"mlmodel".to_vec())
            .annotated("org.opencontainers.image.title", "model.joblib")],
    );
    // A plain image whose second layer deletes a file and links with an absolute path.
    let base = oci::gzip(&tar_of(&[
        Entry::File("etc/hello.txt", b"hello\n"),
        Entry::File("etc/old.txt", b"old\n"),
        Entry::File("bin/busybox", b"#!busybox"),
    ]));
    let top = oci::gzip(&tar_of(&[
        Entry::File("etc/.wh.old.txt", b""),
        Entry::Symlink("bin/sh", "/bin/busybox"),
    ]));
    let image = oci::artifact(
        None,
        config("application/vnd.oci.image.config.v1+json"),
        vec![
            Blob::new("application/vnd.oci.image.layer.v1.tar+gzip", base),
            Blob::new("application/vnd.oci.image.layer.v1.tar+gzip", top),
        ],
    );
    for (repo, a) in [
        ("models/modelpack", &modelpack),
        ("models/kit", &kitops),
        ("models/gguf", &docker_model),
        ("models/omlmd", &omlmd),
        ("library/plain", &image),
    ] {
        push.artifact(repo, "v1", a).await;
    }
    let out = tempfile::tempdir().unwrap();
    let dir = |n: &str| out.path().join(n);
    let pull = |repo: &str, to: &Path, extra: &[&str]| {
        let reference = format!("{host}/{repo}:v1");
        let to = to.to_str().unwrap().to_owned();
        let mut args = vec!["pull", &reference, "--extract", &to, "-o", "json"];
        args.extend_from_slice(extra);
        json(&s, &args)
    };

    let report = pull("models/modelpack", &dir("mp"), &[]);
    assert_eq!(read(&dir("mp"), "weights/model.safetensors"), weights);
    assert_eq!(read(&dir("mp"), "README.md"), b"# model\n");
    assert_eq!(read(&dir("mp"), "docs/guide.md"), b"guide\n");
    assert_eq!(read(&dir("mp"), "config.json"), b"{\"layers\":2}");
    assert_eq!(read(&dir("mp"), "tokenizer/tokenizer.json"), b"{\"v\":1}");
    assert_eq!(read(&dir("mp"), "old/extra.bin"), old_weights);
    assert_eq!(
        report["layers"].as_array().unwrap().len(),
        6,
        "config + 5 layers: {report}"
    );

    pull("models/kit", &dir("kit"), &[]);
    assert_eq!(read(&dir("kit"), "models/model.onnx"), b"onnx bytes");
    assert_eq!(read(&dir("kit"), "README.md"), b"kit readme\n");

    pull("models/gguf", &dir("gguf"), &[]);
    let ggufs: Vec<PathBuf> = std::fs::read_dir(dir("gguf"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    assert_eq!(ggufs.len(), 1, "one GGUF file");
    assert_eq!(std::fs::read(&ggufs[0]).unwrap(), gguf);

    pull("models/omlmd", &dir("omlmd"), &[]);
    assert_eq!(read(&dir("omlmd"), "model.joblib"), b"mlmodel");

    pull("library/plain", &dir("img"), &[]);
    assert_eq!(read(&dir("img"), "etc/hello.txt"), b"hello\n");
    assert!(!dir("img").join("etc/old.txt").exists(), "whiteout applied");
    let link = std::fs::read_link(dir("img").join("bin/sh")).unwrap();
    assert_eq!(
        link,
        Path::new("../bin/busybox"),
        "absolute link made relative"
    );
    assert_eq!(read(&dir("img"), "bin/sh"), b"#!busybox");

    // A rerun downloads nothing: every file is present and verified.
    let served = s.metric("shoal_served_bytes_total").await;
    let again = pull("models/modelpack", &dir("mp"), &[]);
    let outcomes: Vec<&str> = again["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes.iter().filter(|o| **o == "already_present").count(),
        5,
        "{again}"
    );
    let reread = s.metric("shoal_served_bytes_total").await - served;
    assert_eq!(
        reread as usize,
        modelpack.manifest.len() + modelpack.config.bytes.len(),
        "only the manifest and config were read again"
    );

    // A damaged file is noticed and fetched again.
    std::fs::write(dir("mp").join("weights/model.safetensors"), b"tampered").unwrap();
    pull("models/modelpack", &dir("mp"), &[]);
    assert_eq!(read(&dir("mp"), "weights/model.safetensors"), weights);

    // An interrupted raw download resumes from its partial file.
    let half = &weights[..weights.len() / 2];
    std::fs::create_dir_all(dir("resume").join("weights")).unwrap();
    std::fs::write(
        dir("resume").join("weights/model.safetensors.shoal-partial"),
        half,
    )
    .unwrap();
    pull(
        "models/modelpack",
        &dir("resume"),
        &["--include", "weights/*"],
    );
    assert_eq!(read(&dir("resume"), "weights/model.safetensors"), weights);
    assert!(!dir("resume")
        .join("weights/model.safetensors.shoal-partial")
        .exists());
    assert!(
        !dir("resume").join("README.md").exists(),
        "--include filtered the docs"
    );

    // --exclude, and the JSON report says what was filtered.
    let r = pull(
        "models/modelpack",
        &dir("ex"),
        &["--exclude", "*.safetensors"],
    );
    assert!(!dir("ex").join("weights/model.safetensors").exists());
    assert!(dir("ex").join("README.md").exists());
    assert!(r["layers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["outcome"] == "filtered"));

    // Pull without --extract caches everything in the node; ls shows it complete.
    ok(&s, &["pull", &format!("{host}/models/kit:v1")]);
    let ls = json(&s, &["ls", "-o", "json"]);
    let kit = ls["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["reference"].as_str().unwrap().ends_with("models/kit:v1"))
        .unwrap_or_else(|| panic!("kit listed: {ls}"));
    assert_eq!(kit["complete"], true);

    // Unknown references and unknown platforms: exit 4 with one line saying so.
    let missing = shoal(&s, &["pull", &format!("{host}/models/nope:v1")]);
    assert_eq!(code(&missing), 4, "{missing:?}");
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extraction_refuses_paths_that_escape() {
    let Some((reg, s, push)) = origin().await else {
        return;
    };
    let host = reg.host();
    let doc_tar = |entries: &[Entry<'_>]| {
        oci::artifact(
            None,
            config(oci::MODEL_CONFIG),
            vec![Blob::new(
                "application/vnd.cncf.model.doc.v1.tar",
                tar_of(entries),
            )],
        )
    };
    let raw_at = |path: &str| {
        oci::artifact(
            None,
            config(oci::MODEL_CONFIG),
            vec![Blob::new(oci::MODEL_WEIGHT_RAW, b"gotcha".to_vec())
                .annotated("org.cncf.model.filepath", path)],
        )
    };
    let attempts: Vec<(&str, Artifact)> = vec![
        (
            "dotdot",
            doc_tar(&[Entry::RawName("../escaped.txt", b"gotcha")]),
        ),
        ("annotation", raw_at("../../escaped.txt")),
        ("absolute", raw_at("/tmp/escaped.txt")),
        (
            "symlink",
            doc_tar(&[
                Entry::Symlink("up", "../.."),
                Entry::File("up/escaped.txt", b"gotcha"),
            ]),
        ),
        (
            "through-link",
            doc_tar(&[
                Entry::Symlink("root", "/"),
                Entry::File("root/escaped.txt", b"gotcha"),
            ]),
        ),
    ];
    let outer = tempfile::tempdir().unwrap();
    for (name, a) in &attempts {
        push.artifact(&format!("evil/{name}"), "v1", a).await;
        let target = outer.path().join("a/b").join(name);
        let out = shoal(
            &s,
            &[
                "pull",
                &format!("{host}/evil/{name}:v1"),
                "--extract",
                target.to_str().unwrap(),
            ],
        );
        assert_eq!(code(&out), 9, "{name}: refused with exit 9: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("unsafe path"),
            "{name}: {out:?}"
        );
    }
    let escaped: Vec<_> = walk(outer.path())
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "escaped.txt"))
        .collect();
    assert!(escaped.is_empty(), "files escaped: {escaped:?}");
    assert!(!Path::new("/tmp/escaped.txt").exists());
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}
