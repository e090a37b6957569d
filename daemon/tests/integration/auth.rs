//! Upstream authentication: htpasswd Basic, the Bearer token flow with real JWTs, the
//! client's own Authorization, and redirects that must not leak credentials.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

use crate::common::oci::{self, Pusher, OCI_MANIFEST};
use crate::common::registry::{Registry, RegistryAuth};
use crate::common::shoald::Shoald;
use crate::common::{free_port, http, random_bytes, sha256_digest};

fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

fn docker_config(dir: &std::path::Path, host: &str, user: &str, pass: &str) -> std::path::PathBuf {
    let p = dir.join("config.json");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    std::fs::write(
        &p,
        serde_json::json!({"auths": {host: {"auth": auth}}}).to_string(),
    )
    .unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_upstream() {
    let Some(reg) = Registry::start(RegistryAuth::Basic {
        user: "alice".into(),
        password: "s3cret".into(),
    })
    .await
    else {
        return;
    };
    let img = oci::image(50, OCI_MANIFEST);
    Pusher::new(&reg.host(), Some(basic("alice", "s3cret")))
        .artifact("private/app", "v1", &img)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let creds = docker_config(dir.path(), &reg.host(), "alice", "s3cret");
    let ns = reg.host();
    let with_creds = Shoald::start(&[
        "--insecure-registry",
        &ns,
        "--credentials",
        creds.to_str().unwrap(),
    ])
    .await;
    let anonymous = Shoald::start(&["--insecure-registry", &ns]).await;
    let c = http();
    let layer = &img.layers[0];

    let r = c
        .get(with_creds.url(&format!("/v2/private/app/manifests/v1?ns={ns}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(with_creds.url(&format!("/v2/private/app/blobs/{}?ns={ns}", layer.digest)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap(), layer.bytes);

    // No credentials: the upstream's 401 is passed on as UNAUTHORIZED.
    let r = c
        .get(anonymous.url(&format!("/v2/private/app/manifests/v1?ns={ns}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // ...unless the local client brings its own, which is forwarded.
    let r = c
        .get(anonymous.url(&format!(
            "/v2/private/app/blobs/{}?ns={ns}",
            img.layers[1].digest
        )))
        .header("authorization", basic("alice", "s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), img.layers[1].bytes);
}

/// A token server in the test process, signing ES256 JWTs the way distribution expects.
struct TokenServer {
    addr: SocketAddr,
    cert: std::path::PathBuf,
    requests: Arc<AtomicU64>,
    key: Arc<jsonwebtoken::EncodingKey>,
    kid: String,
    _dir: tempfile::TempDir,
}

const SERVICE: &str = "shoal-test-registry";
const ISSUER: &str = "shoal-test-issuer";

/// libtrust key id: base32 of the first 240 bits of sha256(SPKI DER), in 4-char groups.
fn libtrust_kid(spki_der: &[u8]) -> String {
    use sha2::Digest as _;
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let hash = sha2::Sha256::digest(spki_der);
    let bytes = &hash[..30];
    let mut bits = 0u32;
    let mut nbits = 0;
    let mut out = String::new();
    for &b in bytes {
        bits = (bits << 8) | u32::from(b);
        nbits += 8;
        while nbits >= 5 {
            nbits -= 5;
            out.push(ALPHABET[((bits >> nbits) & 31) as usize] as char);
        }
    }
    out.as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":")
}

fn mint(key: &jsonwebtoken::EncodingKey, kid: &str, scope: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let access: Vec<serde_json::Value> = scope
        .split(' ')
        .filter_map(|s| {
            let mut parts = s.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            Some(serde_json::json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
        })
        .collect();
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": "tester", "aud": SERVICE, "exp": now + 600, "nbf": now - 10, "iat": now,
        "jti": format!("{}", random_bytes(8, now)[0]), "access": access,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

impl TokenServer {
    async fn start() -> TokenServer {
        let dir = tempfile::tempdir().unwrap();
        let key_pair = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["token-issuer".to_owned()]).unwrap();
        let cert = params.self_signed(&key_pair).unwrap();
        let cert_path = dir.path().join("token.crt");
        std::fs::write(&cert_path, cert.pem()).unwrap();
        let key = Arc::new(jsonwebtoken::EncodingKey::from_ec_der(
            &key_pair.serialize_der(),
        ));
        let kid = libtrust_kid(&key_pair.public_key_der());
        let requests = Arc::new(AtomicU64::new(0));
        #[derive(Clone)]
        struct St(Arc<jsonwebtoken::EncodingKey>, String, Arc<AtomicU64>);
        async fn token(
            State(st): State<St>,
            Query(q): Query<std::collections::HashMap<String, String>>,
        ) -> Response {
            st.2.fetch_add(1, Ordering::SeqCst);
            if q.get("service").map(String::as_str) != Some(SERVICE) {
                return StatusCode::BAD_REQUEST.into_response();
            }
            let scope = q.get("scope").cloned().unwrap_or_default();
            axum::Json(serde_json::json!({"token": mint(&st.0, &st.1, &scope), "expires_in": 600}))
                .into_response()
        }
        let app = axum::Router::new()
            .route("/token", axum::routing::get(token))
            .with_state(St(key.clone(), kid.clone(), requests.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        TokenServer {
            addr,
            cert: cert_path,
            requests,
            key,
            kid,
            _dir: dir,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_upstream() {
    let tokens = TokenServer::start().await;
    let Some(reg) = Registry::start(RegistryAuth::Token {
        realm: format!("http://{}/token", tokens.addr),
        service: SERVICE.into(),
        issuer: ISSUER.into(),
        cert: tokens.cert.clone(),
    })
    .await
    else {
        return;
    };
    let push_token = mint(&tokens.key, &tokens.kid, "repository:secure/app:pull,push");
    let img = oci::image(60, OCI_MANIFEST);
    Pusher::new(&reg.host(), Some(format!("Bearer {push_token}")))
        .artifact("secure/app", "v1", &img)
        .await;
    let ns = reg.host();
    // Without a token the registry refuses: the challenge is real.
    let direct = http()
        .get(reg.url("/v2/secure/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 401);
    assert!(direct.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer realm="));

    let s = Shoald::start(&["--insecure-registry", &ns]).await;
    let c = http();
    let before = tokens.requests.load(Ordering::SeqCst);
    let r = c
        .get(s.url(&format!("/v2/secure/app/manifests/v1?ns={ns}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for l in &img.layers {
        let r = c
            .get(s.url(&format!("/v2/secure/app/blobs/{}?ns={ns}", l.digest)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap(), l.bytes);
    }
    let used = tokens.requests.load(Ordering::SeqCst) - before;
    assert_eq!(used, 1, "one token per scope, cached until expiry");
}

#[derive(Default)]
struct Seen {
    origin_auth: Vec<bool>,
    storage_auth: Vec<bool>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_never_leak_authorization_to_another_host() {
    let content = random_bytes(3 * 1024 * 1024, 70);
    let digest = sha256_digest(&content);
    let seen = Arc::new(Mutex::new(Seen::default()));
    // "Object storage" on another loopback address, serving the signed URL.
    let storage_addr: SocketAddr = format!("127.0.0.2:{}", free_port()).parse().unwrap();
    let storage_listener = tokio::net::TcpListener::bind(storage_addr).await.unwrap();
    let (st, body) = (seen.clone(), content.clone());
    let storage = axum::Router::new().fallback(move |headers: HeaderMap| {
        let (st, body) = (st.clone(), body.clone());
        async move {
            st.lock()
                .unwrap()
                .storage_auth
                .push(headers.contains_key("authorization"));
            body
        }
    });
    tokio::spawn(async move { axum::serve(storage_listener, storage).await.unwrap() });
    // The registry: requires Basic auth and redirects blob GETs to storage.
    let origin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin_addr = origin_listener.local_addr().unwrap();
    let (st, d, len) = (seen.clone(), digest.clone(), content.len());
    let origin = axum::Router::new().fallback(move |headers: HeaderMap| {
        let (st, d) = (st.clone(), d.clone());
        async move {
            let ok = headers.get("authorization").and_then(|v| v.to_str().ok())
                == Some(basic("bob", "pw").as_str());
            st.lock().unwrap().origin_auth.push(ok);
            if !ok {
                return (
                    StatusCode::UNAUTHORIZED,
                    [("www-authenticate", "Basic realm=\"test\"")],
                )
                    .into_response();
            }
            let _ = len;
            (
                StatusCode::TEMPORARY_REDIRECT,
                [(
                    "location",
                    format!("http://{storage_addr}/bucket/{d}?X-Amz-Signature=abc"),
                )],
            )
                .into_response()
        }
    });
    tokio::spawn(async move { axum::serve(origin_listener, origin).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let creds = docker_config(dir.path(), &origin_addr.to_string(), "bob", "pw");
    let ns = origin_addr.to_string();
    let s = Shoald::start(&[
        "--insecure-registry",
        &ns,
        "--credentials",
        creds.to_str().unwrap(),
    ])
    .await;
    let r = http()
        .get(s.url(&format!("/v2/org/blob/blobs/{digest}?ns={ns}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), content);
    let seen = seen.lock().unwrap();
    assert!(
        seen.origin_auth.contains(&true),
        "credentials were sent to the registry"
    );
    assert!(!seen.storage_auth.is_empty(), "the redirect was followed");
    assert!(
        seen.storage_auth.iter().all(|a| !a),
        "Authorization leaked to the storage host"
    );
}
