//! The upstream (origin registry) client.
//!
//! Handles what a registry client must: HTTPS or plain HTTP per host, anonymous access,
//! Basic credentials, the Bearer token flow with a per-scope token cache, the local
//! client's own `Authorization` forwarded, redirects followed by hand so that
//! `Authorization` never reaches another origin (object-storage signed URLs), and
//! bounded retries with exponential backoff.

pub mod auth;

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::header::{HeaderMap, HeaderValue, AUTHORIZATION, LOCATION, WWW_AUTHENTICATE};
use http::{Method, StatusCode};

pub use auth::{BasicCredentials, Challenge, Credentials};
use auth::{CachedToken, TokenResponse};

/// Where a repository lives upstream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// Registry host (and port) to dial, e.g. `registry-1.docker.io` or `127.0.0.1:5000`.
    pub host: String,
    /// Repository name on that registry, e.g. `library/ubuntu`.
    pub repo: String,
}

impl Target {
    /// Maps a mirror request to its upstream: `ns` (containerd's `?ns=`) or the default
    /// upstream; `docker.io` is dialled as `registry-1.docker.io` and its single-segment
    /// names get `library/`.
    pub fn resolve(ns: Option<&str>, default_upstream: &str, name: &str) -> Target {
        let registry = ns.unwrap_or(default_upstream);
        match registry {
            "docker.io" | "index.docker.io" | "registry-1.docker.io" => Target {
                host: "registry-1.docker.io".to_owned(),
                repo: if name.contains('/') {
                    name.to_owned()
                } else {
                    format!("library/{name}")
                },
            },
            other => Target {
                host: other.to_owned(),
                repo: name.to_owned(),
            },
        }
    }

    /// Key under which this repository's tags are cached.
    pub fn tag_key(&self, tag: &str) -> String {
        format!("{}/{}:{}", self.host, self.repo, tag)
    }
}

/// Why an upstream request failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Could not connect or the connection broke.
    #[error("upstream {host} unreachable: {message}")]
    Unreachable {
        /// Registry host.
        host: String,
        /// Transport error.
        message: String,
    },
    /// No answer within the configured timeout.
    #[error("upstream {host} timed out: {message}")]
    Timeout {
        /// Registry host.
        host: String,
        /// Transport error.
        message: String,
    },
    /// The upstream answered, but not with what was needed.
    #[error("upstream {host} answered {status}")]
    Status {
        /// Registry host.
        host: String,
        /// HTTP status.
        status: StatusCode,
    },
    /// The upstream's answer broke the protocol (bad digest, missing length, too big).
    #[error("upstream {host}: {message}")]
    Protocol {
        /// Registry host.
        host: String,
        /// What was wrong.
        message: String,
    },
    /// Bad client configuration (credentials file, TLS setup).
    #[error("{0}")]
    Config(String),
}

impl UpstreamError {
    /// Whether retrying the same request may help.
    fn is_transient(&self) -> bool {
        match self {
            UpstreamError::Unreachable { .. } | UpstreamError::Timeout { .. } => true,
            UpstreamError::Status { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }

    /// True when the upstream could not be reached at all (so cached data may stand in).
    pub fn is_unavailable(&self) -> bool {
        self.is_transient()
    }

    fn from_reqwest(host: &str, e: reqwest::Error) -> UpstreamError {
        let message = error_chain(&e);
        if e.is_timeout() {
            UpstreamError::Timeout {
                host: host.to_owned(),
                message,
            }
        } else {
            UpstreamError::Unreachable {
                host: host.to_owned(),
                message,
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// Settings for [`Upstream::new`].
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// Hosts dialled over plain HTTP.
    pub insecure: Vec<String>,
    /// Basic credentials per host.
    pub credentials: Credentials,
    /// Connect and read timeout.
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub retries: u32,
}

/// One request to a registry's `/v2/` API.
#[derive(Debug, Clone)]
pub struct UpstreamRequest<'a> {
    /// GET or HEAD.
    pub method: Method,
    /// Registry and repository.
    pub target: &'a Target,
    /// Path after `/v2/<repo>/`, e.g. `blobs/sha256:...`.
    pub path: String,
    /// Query string without `?`, if any.
    pub query: Option<String>,
    /// Extra headers (`Accept`, `Range`).
    pub headers: HeaderMap,
    /// The local client's own `Authorization`, forwarded instead of ours when present.
    pub client_auth: Option<HeaderValue>,
}

/// The upstream client. Shared by all requests.
pub struct Upstream {
    http: reqwest::Client,
    insecure: HashSet<String>,
    credentials: Credentials,
    retries: u32,
    tokens: Mutex<HashMap<(String, String), CachedToken>>,
    /// Hosts that asked for Basic auth, so later requests send it up front.
    basic_hosts: Mutex<HashSet<String>>,
}

/// Max redirects followed for one request.
const MAX_REDIRECTS: usize = 8;

impl Upstream {
    /// Builds the client.
    pub fn new(opts: UpstreamOptions) -> Result<Upstream, UpstreamError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(opts.timeout)
            .read_timeout(opts.timeout)
            .user_agent(concat!("shoald/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| UpstreamError::Config(format!("building HTTP client: {e}")))?;
        Ok(Upstream {
            http,
            insecure: opts.insecure.into_iter().collect(),
            credentials: opts.credentials,
            retries: opts.retries,
            tokens: Mutex::new(HashMap::new()),
            basic_hosts: Mutex::new(HashSet::new()),
        })
    }

    /// Retries configured after the first attempt.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// Backoff before retry number `attempt` (1-based): 100 ms, 200 ms, 400 ms, ... capped at 5 s.
    pub fn backoff(attempt: u32) -> Duration {
        Duration::from_millis(100u64.saturating_mul(1 << attempt.saturating_sub(1).min(6)))
            .min(Duration::from_secs(5))
    }

    fn url(&self, req: &UpstreamRequest<'_>) -> String {
        let scheme = if self.insecure.contains(&req.target.host) {
            "http"
        } else {
            "https"
        };
        let mut url = format!(
            "{scheme}://{}/v2/{}/{}",
            req.target.host, req.target.repo, req.path
        );
        if let Some(q) = &req.query {
            url.push('?');
            url.push_str(q);
        }
        url
    }

    /// A blob's size from a HEAD (no body bytes leave the origin).
    pub async fn blob_size(
        &self,
        target: &Target,
        digest: &shoal_proto::Digest,
        client_auth: Option<HeaderValue>,
    ) -> Result<u64, UpstreamError> {
        let req = UpstreamRequest {
            method: Method::HEAD,
            target,
            path: format!("blobs/{digest}"),
            query: None,
            headers: HeaderMap::new(),
            client_auth,
        };
        let resp = self.send(&req).await?;
        if resp.status() != StatusCode::OK {
            return Err(UpstreamError::Status {
                host: target.host.clone(),
                status: resp.status(),
            });
        }
        resp.headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| UpstreamError::Protocol {
                host: target.host.clone(),
                message: format!("no Content-Length for {digest}"),
            })
    }

    /// Sends the request with auth and retries. Returns any response whose status is not
    /// a server error; the caller decides what a 404 means.
    #[tracing::instrument(level = "debug", skip_all, fields(host = %req.target.host, repo = %req.target.repo, path = %req.path))]
    pub async fn send(
        &self,
        req: &UpstreamRequest<'_>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut attempt = 0;
        loop {
            let result = match self.send_authenticated(req).await {
                Ok(resp)
                    if resp.status().is_server_error()
                        || resp.status() == StatusCode::TOO_MANY_REQUESTS =>
                {
                    Err(UpstreamError::Status {
                        host: req.target.host.clone(),
                        status: resp.status(),
                    })
                }
                other => other,
            };
            match result {
                Err(e) if e.is_transient() && attempt < self.retries => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "upstream request failed; retrying");
                    tokio::time::sleep(Self::backoff(attempt)).await;
                }
                other => return other,
            }
        }
    }

    async fn send_authenticated(
        &self,
        req: &UpstreamRequest<'_>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let host = &req.target.host;
        let scope = format!("repository:{}:pull", req.target.repo);
        let auth = match &req.client_auth {
            Some(a) => Some(a.clone()),
            None => self.cached_auth(host, &scope),
        };
        let resp = self.send_following_redirects(req, auth).await?;
        if resp.status() != StatusCode::UNAUTHORIZED || req.client_auth.is_some() {
            return Ok(resp);
        }
        let Some(challenge) = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(auth::parse_challenge)
        else {
            return Ok(resp);
        };
        let auth = match challenge {
            Challenge::Basic => {
                let Some(creds) = self.credentials.for_host(host) else {
                    return Ok(resp);
                };
                lock(&self.basic_hosts).insert(host.clone());
                header(&creds.header_value())?
            }
            Challenge::Bearer {
                realm,
                service,
                scope: asked,
            } => {
                let token = self
                    .fetch_token(
                        host,
                        &realm,
                        service.as_deref(),
                        asked.as_deref().unwrap_or(&scope),
                    )
                    .await?;
                lock(&self.tokens).insert((host.clone(), scope.clone()), token.clone());
                header(&format!("Bearer {}", token.value))?
            }
        };
        self.send_following_redirects(req, Some(auth)).await
    }

    fn cached_auth(&self, host: &str, scope: &str) -> Option<HeaderValue> {
        if let Some(token) = lock(&self.tokens).get(&(host.to_owned(), scope.to_owned())) {
            if token.expires > Instant::now() {
                return HeaderValue::from_str(&format!("Bearer {}", token.value)).ok();
            }
        }
        if lock(&self.basic_hosts).contains(host) {
            return self
                .credentials
                .for_host(host)
                .and_then(|c| HeaderValue::from_str(&c.header_value()).ok());
        }
        None
    }

    async fn fetch_token(
        &self,
        host: &str,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<CachedToken, UpstreamError> {
        let mut url = reqwest::Url::parse(realm).map_err(|e| UpstreamError::Protocol {
            host: host.to_owned(),
            message: format!("bad token realm {realm:?}: {e}"),
        })?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let mut rb = self.http.get(url);
        if let Some(creds) = self.credentials.for_host(host) {
            rb = rb.basic_auth(&creds.username, Some(&creds.password));
        }
        let resp = rb
            .send()
            .await
            .map_err(|e| UpstreamError::from_reqwest(host, e))?;
        if !resp.status().is_success() {
            tracing::warn!(host, realm, status = %resp.status(), "token endpoint refused");
            return Err(UpstreamError::Status {
                host: host.to_owned(),
                status: StatusCode::UNAUTHORIZED,
            });
        }
        let body: TokenResponse = resp.json().await.map_err(|e| UpstreamError::Protocol {
            host: host.to_owned(),
            message: format!("bad token response: {e}"),
        })?;
        body.into_cached().ok_or_else(|| UpstreamError::Protocol {
            host: host.to_owned(),
            message: "token response has no token".into(),
        })
    }

    async fn send_following_redirects(
        &self,
        req: &UpstreamRequest<'_>,
        mut auth: Option<HeaderValue>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let host = &req.target.host;
        let mut url = reqwest::Url::parse(&self.url(req)).map_err(|e| UpstreamError::Protocol {
            host: host.clone(),
            message: format!("bad upstream URL: {e}"),
        })?;
        for _ in 0..=MAX_REDIRECTS {
            let mut rb = self
                .http
                .request(req.method.clone(), url.clone())
                .headers(req.headers.clone());
            if let Some(a) = &auth {
                rb = rb.header(AUTHORIZATION, a.clone());
            }
            let resp = rb
                .send()
                .await
                .map_err(|e| UpstreamError::from_reqwest(host, e))?;
            if !resp.status().is_redirection() {
                return Ok(resp);
            }
            let Some(location) = resp.headers().get(LOCATION).and_then(|l| l.to_str().ok()) else {
                return Ok(resp);
            };
            let next = url.join(location).map_err(|e| UpstreamError::Protocol {
                host: host.clone(),
                message: format!("bad redirect {location:?}: {e}"),
            })?;
            if next.origin() != url.origin() {
                // Signed object-storage URLs carry their own authorisation; ours must not leak.
                auth = None;
            }
            tracing::debug!(to = %next, "following upstream redirect");
            url = next;
        }
        Err(UpstreamError::Protocol {
            host: host.clone(),
            message: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }
}

fn header(value: &str) -> Result<HeaderValue, UpstreamError> {
    HeaderValue::from_str(value).map_err(|_| {
        UpstreamError::Config("credentials contain characters not allowed in a header".into())
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_mapping() {
        assert_eq!(
            Target::resolve(Some("docker.io"), "x", "ubuntu"),
            Target {
                host: "registry-1.docker.io".into(),
                repo: "library/ubuntu".into()
            }
        );
        assert_eq!(Target::resolve(None, "docker.io", "a/b").repo, "a/b");
        assert_eq!(Target::resolve(Some("ghcr.io"), "docker.io", "x").repo, "x");
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(Upstream::backoff(1), Duration::from_millis(100));
        assert_eq!(Upstream::backoff(3), Duration::from_millis(400));
        assert_eq!(Upstream::backoff(30), Duration::from_secs(5));
    }
}
