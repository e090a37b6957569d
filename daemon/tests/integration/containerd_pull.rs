//! Real clients pulling through the mirror: containerd's `ctr` (with hosts.toml, as a
//! kubelet's containerd would) and skopeo.

use crate::common::containerd::{check, Containerd};
use crate::common::oci::{self, Pusher, OCI_MANIFEST};
use crate::common::registry::{Registry, RegistryAuth};
use crate::common::shoald::Shoald;
use crate::need;

/// Finds `rel` inside any native snapshot of this containerd.
fn snapshot_file(c: &Containerd, rel: &str) -> Option<String> {
    let snaps = c
        .dir
        .path()
        .join("root/io.containerd.snapshotter.v1.native/snapshots");
    std::fs::read_dir(snaps)
        .ok()?
        .flatten()
        .find_map(|e| std::fs::read_to_string(e.path().join(rel)).ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_pulls_through_mirror_and_survives_origin_loss() {
    let Some(mut reg) = Registry::start(RegistryAuth::None).await else {
        return;
    };
    let img = oci::image(20, OCI_MANIFEST);
    let model = oci::model(21, &[200_000, 300_000]);
    let push = Pusher::new(&reg.host(), None);
    push.artifact("library/app", "v1", &img).await;
    push.artifact("models/tiny", "v1", &model).await;
    let s = Shoald::start(&["--insecure-registry", &reg.host()]).await;
    let hosts = tempfile::tempdir().unwrap();
    Containerd::write_hosts(hosts.path(), &reg.host(), &s.addr.to_string());
    let hosts_dir = hosts.path().to_str().unwrap();
    let Some(ctrd) = Containerd::start().await else {
        return;
    };

    let by_tag = format!("{}/library/app:v1", reg.host());
    let pull = |c: &Containerd, r: &str| c.pull_image(hosts_dir, r);
    check(&pull(&ctrd, &by_tag), "ctr images pull");
    // containerd's own requests are what the default prefetch takes for a pull.
    assert!(
        s.logs().contains("a layer GET began a pull"),
        "containerd's pull did not begin a prefetch: {}",
        s.logs()
    );
    assert_eq!(
        snapshot_file(&ctrd, "etc/hello.txt").as_deref(),
        Some("hello from image 20\n"),
        "image unpacked"
    );
    let layer_bytes: usize = img.layers.iter().map(|l| l.bytes.len()).sum();
    assert!(
        s.metric("shoal_served_bytes_total").await >= layer_bytes as f64,
        "layers came through shoald"
    );

    // A ModelPack artifact: content fetch (no unpack) through the mirror.
    let model_ref = format!("{}/models/tiny:v1", reg.host());
    check(
        &ctrd.ctr(&[
            "content",
            "fetch",
            "--hosts-dir",
            hosts_dir,
            "--plain-http",
            &model_ref,
        ]),
        "ctr content fetch",
    );
    let listed = check(&ctrd.ctr(&["content", "ls", "-q"]), "ctr content ls");
    for l in &model.layers {
        assert!(
            listed.contains(&l.digest),
            "model layer {} fetched",
            l.digest
        );
    }

    // The origin goes away; a fresh containerd pulls by tag and by digest from shoald.
    reg.stop();
    drop(ctrd);
    let fresh = Containerd::start().await.expect("containerd");
    check(&pull(&fresh, &by_tag), "ctr pull by tag with origin down");
    assert_eq!(
        snapshot_file(&fresh, "etc/hello.txt").as_deref(),
        Some("hello from image 20\n")
    );
    let by_digest = format!("{}/library/app@{}", reg.host(), img.digest);
    check(
        &pull(&fresh, &by_digest),
        "ctr pull by digest with origin down",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_copies_through_mirror() {
    need!("skopeo");
    let Some((_reg, img, s)) = crate::common::origin_with_image("library/tool", "v2", 30).await
    else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let layout = out.path().join("layout");
    let status = std::process::Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--src-tls-verify=false",
            "--src-no-creds",
        ])
        .arg(format!("docker://{}/library/tool:v2", s.addr))
        .arg(format!("oci:{}:v2", layout.display()))
        .output()
        .expect("run skopeo");
    check(&status, "skopeo copy");
    assert!(layout.join("index.json").is_file());
    // skopeo may recompress the uncompressed layer for the OCI layout; the config and
    // the gzip layer travel unchanged, and every blob it wrote must hash to its name.
    for b in [&img.config, &img.layers[0]] {
        let path = layout
            .join("blobs/sha256")
            .join(b.digest.trim_start_matches("sha256:"));
        assert_eq!(std::fs::read(&path).expect("blob in layout"), b.bytes);
    }
    for e in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let bytes = std::fs::read(e.path()).unwrap();
        assert_eq!(
            crate::common::sha256_digest(&bytes),
            format!("sha256:{}", e.file_name().to_string_lossy())
        );
    }
    assert!(s.metric("shoal_served_bytes_total").await > 0.0);
}
