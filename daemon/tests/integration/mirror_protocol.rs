//! Exact answers of the mirror endpoint: headers, ranges, statuses and OCI error bodies.

use std::io::{Read, Write};

use crate::common::oci::{self, Pusher, DOCKER_MANIFEST, MODEL_ARTIFACT, OCI_INDEX, OCI_MANIFEST};
use crate::common::registry::{Registry, RegistryAuth};
use crate::common::shoald::Shoald;
use crate::common::{http, random_bytes, sha256_digest};

/// Sends a request byte-for-byte (no client-side path normalisation of `..`).
fn raw(addr: std::net::SocketAddr, request_line: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "{request_line} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

fn error_code(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    v["errors"][0]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no errors[0].code in {body}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_headers_ranges_and_errors() {
    let Some((reg, img, s)) = crate::common::origin_with_image("library/app", "v1", 1).await else {
        return;
    };
    let c = http();
    let layer = &img.layers[0];
    let size = layer.bytes.len();
    let url = s.url(&format!(
        "/v2/library/app/blobs/{}?ns={}",
        layer.digest,
        reg.host()
    ));

    // /v2/ (GET and HEAD)
    for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
        let r = c.request(method, s.url("/v2/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["docker-distribution-api-version"],
            "registry/2.0"
        );
    }

    // HEAD before the blob is cached answers from the upstream, with the exact length.
    let r = c.head(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], size.to_string().as_str());
    assert_eq!(r.headers()["docker-content-digest"], layer.digest.as_str());
    assert_eq!(r.headers()["accept-ranges"], "bytes");

    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(r.headers()["content-length"], size.to_string().as_str());
    assert_eq!(r.bytes().await.unwrap(), layer.bytes);

    // Cached now: HEAD still has length and digest.
    let r = c.head(&url).send().await.unwrap();
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["content-length"].to_str().unwrap()
        ),
        (200, size.to_string().as_str())
    );

    // Ranges: a-b, a-, -n.
    for (spec, lo, hi) in [
        ("bytes=0-9", 0, 9),
        ("bytes=100-", 100, size - 1),
        ("bytes=-5", size - 5, size - 1),
        ("bytes=10-99999999", 10, size - 1),
    ] {
        let r = c.get(&url).header("range", spec).send().await.unwrap();
        assert_eq!(r.status(), 206, "{spec}");
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes {lo}-{hi}/{size}").as_str(),
            "{spec}"
        );
        assert_eq!(
            r.headers()["content-length"],
            (hi - lo + 1).to_string().as_str(),
            "{spec}"
        );
        assert_eq!(r.bytes().await.unwrap(), &layer.bytes[lo..=hi], "{spec}");
    }
    let r = c
        .get(&url)
        .header("range", format!("bytes={size}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{size}").as_str()
    );
    assert_eq!(error_code(&r.text().await.unwrap()), "UNKNOWN");

    // Unknown blob: the upstream says 404, so do we (HEAD and GET).
    let missing = sha256_digest(&random_bytes(100, 99));
    let murl = s.url(&format!(
        "/v2/library/app/blobs/{missing}?ns={}",
        reg.host()
    ));
    assert_eq!(c.head(&murl).send().await.unwrap().status(), 404);
    let r = c.get(&murl).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(&r.text().await.unwrap()), "BLOB_UNKNOWN");

    // Malformed input, sent raw so no client normalises it first.
    let d = &layer.digest;
    let cases: Vec<(String, u16, &str)> = vec![
        (
            "GET /v2/library/app/blobs/sha256:xyz".to_string(),
            400,
            "DIGEST_INVALID",
        ),
        (
            "GET /v2/library/app/blobs/md5:abc".to_string(),
            400,
            "DIGEST_INVALID",
        ),
        (format!("GET /v2/../../etc/blobs/{d}"), 400, "NAME_INVALID"),
        (
            format!("GET /v2/library/%2e%2e/blobs/{d}"),
            400,
            "NAME_INVALID",
        ),
        (format!("GET /v2/UPPER/blobs/{d}"), 400, "NAME_INVALID"),
        (
            "GET /v2/library/app/manifests/..bad".to_string(),
            400,
            "MANIFEST_INVALID",
        ),
        (
            format!("GET /v2/library/app/blobs/{d}?ns=evil.host/path"),
            400,
            "NAME_INVALID",
        ),
        (
            "POST /v2/library/app/blobs/uploads/".to_string(),
            405,
            "UNSUPPORTED",
        ),
        (
            "PUT /v2/library/app/manifests/v1".to_string(),
            405,
            "UNSUPPORTED",
        ),
        (
            format!("DELETE /v2/library/app/blobs/{d}"),
            405,
            "UNSUPPORTED",
        ),
        (
            "PATCH /v2/library/app/blobs/uploads/123".to_string(),
            405,
            "UNSUPPORTED",
        ),
        ("GET /v2/library/app/nothing".to_string(), 404, "NOT_FOUND"),
    ];
    for (line, status, code) in cases {
        let (got, body) = raw(s.addr, &line);
        assert_eq!(got, status, "{line}: {body}");
        assert_eq!(error_code(&body), code, "{line}");
    }
    // Nothing was written outside the data dir by the hostile names.
    assert!(!s.data_dir.parent().unwrap().join("etc").exists());

    let metrics = s.metrics_text().await;
    assert!(
        metrics.contains("shoal_http_requests_total{route=\"blob\",method=\"GET\",status=\"206\"}"),
        "{metrics}"
    );
    assert!(s.metric("shoal_cache_hits_total").await >= 1.0);
    assert!(s.metric("shoal_upstream_bytes_total").await >= size as f64);
    assert_eq!(reqwest::get(s.url("/healthz")).await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_keep_their_media_types() {
    let Some(reg) = Registry::start(RegistryAuth::None).await else {
        return;
    };
    let push = Pusher::new(&reg.host(), None);
    let oci_img = oci::image(2, OCI_MANIFEST);
    let docker_img = oci::image(3, DOCKER_MANIFEST);
    let model = oci::model(4, &[50_000, 70_000]);
    push.artifact("team/oci", "v1", &oci_img).await;
    push.artifact("team/docker", "v1", &docker_img).await;
    push.artifact("team/model", "v1", &model).await;
    let (index, index_digest) = oci::index(&[&oci_img]);
    push.manifest("team/oci", "multi", OCI_INDEX, &index).await;

    let s = Shoald::start(&["--insecure-registry", &reg.host()]).await;
    let c = http();
    let ns = reg.host();
    let cases = [
        (
            "team/oci",
            "v1",
            OCI_MANIFEST,
            &oci_img.manifest,
            &oci_img.digest,
        ),
        (
            "team/docker",
            "v1",
            DOCKER_MANIFEST,
            &docker_img.manifest,
            &docker_img.digest,
        ),
        (
            "team/model",
            "v1",
            OCI_MANIFEST,
            &model.manifest,
            &model.digest,
        ),
        ("team/oci", "multi", OCI_INDEX, &index, &index_digest),
    ];
    for (repo, tag, media_type, body, digest) in cases {
        for reference in [tag, digest.as_str()] {
            let url = s.url(&format!("/v2/{repo}/manifests/{reference}?ns={ns}"));
            let accept = format!("{OCI_MANIFEST}, {OCI_INDEX}, {DOCKER_MANIFEST}");
            for method in [reqwest::Method::HEAD, reqwest::Method::GET] {
                let r = c
                    .request(method.clone(), &url)
                    .header("accept", &accept)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "{method} {repo}:{reference}");
                assert_eq!(r.headers()["content-type"], media_type);
                assert_eq!(
                    r.headers()["content-length"],
                    body.len().to_string().as_str()
                );
                assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
                let got = r.bytes().await.unwrap();
                let expected: &[u8] = if method == reqwest::Method::GET {
                    body
                } else {
                    &[]
                };
                assert_eq!(&got[..], expected);
            }
        }
    }
    let got = get_json(&c, &s.url(&format!("/v2/team/model/manifests/v1?ns={ns}"))).await;
    assert_eq!(got["artifactType"], MODEL_ARTIFACT);

    // Unknown tag and unknown repository: 404 MANIFEST_UNKNOWN, as the upstream says.
    for url in [
        format!("/v2/team/oci/manifests/nope?ns={ns}"),
        format!("/v2/no/such/manifests/v1?ns={ns}"),
    ] {
        let r = c.get(s.url(&url)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{url}");
        assert_eq!(error_code(&r.text().await.unwrap()), "MANIFEST_UNKNOWN");
    }

    // Referrers and tag lists pass through with the upstream's own answer.
    let direct = c
        .get(reg.url(&format!("/v2/team/oci/referrers/{}", oci_img.digest)))
        .send()
        .await
        .unwrap()
        .status();
    let via = c
        .get(s.url(&format!(
            "/v2/team/oci/referrers/{}?ns={ns}",
            oci_img.digest
        )))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(via, direct);
    let tags = get_json(&c, &s.url(&format!("/v2/team/oci/tags/list?ns={ns}"))).await;
    let mut names: Vec<String> = tags["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["multi", "v1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_cache_and_stale_if_error() {
    let Some(mut reg) = Registry::start(RegistryAuth::None).await else {
        return;
    };
    let push = Pusher::new(&reg.host(), None);
    let first = oci::image(10, OCI_MANIFEST);
    let second = oci::image(11, OCI_MANIFEST);
    push.artifact("app", "latest", &first).await;
    let ns = reg.host();
    let long_ttl = Shoald::start(&["--insecure-registry", &ns, "--tag-ttl", "1h"]).await;
    let no_ttl = Shoald::start(&[
        "--insecure-registry",
        &ns,
        "--tag-ttl",
        "0s",
        "--upstream-retries",
        "1",
    ])
    .await;
    let strict = Shoald::start(&[
        "--insecure-registry",
        &ns,
        "--tag-ttl",
        "0s",
        "--stale-if-error",
        "false",
        "--upstream-retries",
        "0",
    ])
    .await;
    let c = http();
    let digest_of = |s: &Shoald, reference: &str| {
        let url = s.url(&format!("/v2/app/manifests/{reference}?ns={ns}"));
        let c = c.clone();
        async move {
            let r = c.get(url).send().await.unwrap();
            (
                r.status().as_u16(),
                r.headers()
                    .get("docker-content-digest")
                    .map(|v| v.to_str().unwrap().to_owned()),
            )
        }
    };
    for s in [&long_ttl, &no_ttl, &strict] {
        assert_eq!(
            digest_of(s, "latest").await,
            (200, Some(first.digest.clone()))
        );
    }
    push.artifact("app", "latest", &second).await;
    // Within the TTL the cached resolution stands; with TTL 0 the tag is re-resolved.
    assert_eq!(
        digest_of(&long_ttl, "latest").await.1,
        Some(first.digest.clone())
    );
    assert_eq!(
        digest_of(&no_ttl, "latest").await.1,
        Some(second.digest.clone())
    );
    // Pull the layer through no_ttl so it is cached there.
    let layer = &second.layers[1];
    let blob = c
        .get(no_ttl.url(&format!("/v2/app/blobs/{}?ns={ns}", layer.digest)))
        .send()
        .await
        .unwrap();
    assert_eq!(blob.bytes().await.unwrap(), layer.bytes);

    reg.stop();
    // Upstream down: the last known digest is served (stale-if-error), and by digest too.
    assert_eq!(
        digest_of(&no_ttl, "latest").await,
        (200, Some(second.digest.clone()))
    );
    assert_eq!(digest_of(&no_ttl, &second.digest).await.0, 200);
    let r = c
        .get(no_ttl.url(&format!("/v2/app/blobs/{}?ns={ns}", layer.digest)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), layer.bytes);
    assert!(
        no_ttl.logs().contains("serving last known digest"),
        "stale serving is logged"
    );
    // Without stale-if-error, and for anything never cached: 502 with an OCI error body.
    let (status, _) = digest_of(&strict, "latest").await;
    assert_eq!(status, 502);
    let r = c
        .get(no_ttl.url(&format!(
            "/v2/app/blobs/{}?ns={ns}",
            second.layers[0].digest
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(error_code(&r.text().await.unwrap()), "UNKNOWN");
    let (status, _) = digest_of(&no_ttl, "never-seen").await;
    assert_eq!(status, 502);
}

async fn get_json(c: &reqwest::Client, url: &str) -> serde_json::Value {
    c.get(url).send().await.unwrap().json().await.unwrap()
}
