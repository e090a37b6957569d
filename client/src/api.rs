//! A typed client of shoald's control API.

use std::path::PathBuf;

use serde::de::DeserializeOwned;
use shoal_proto::control::{
    ApiError, BlobStored, GcReport, GcRequest, Listing, Peer, PinReport, PinRequest, PreheatReport,
    PreheatRequest, Status, TagRequest,
};
use shoal_proto::Digest;

use crate::error::{ClientError, Result};

/// The control socket shoald uses when started with the default data directory.
pub const DEFAULT_SOCKET: &str = "/var/lib/shoal/shoald.sock";

/// Where the daemon's control API is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonAddr {
    /// A unix socket path.
    Socket(PathBuf),
    /// `http://HOST:PORT` of a `--control-addr`.
    Tcp(String),
}

impl std::str::FromStr for DaemonAddr {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        if s.starts_with("http://") || s.starts_with("https://") {
            Ok(DaemonAddr::Tcp(s.trim_end_matches('/').to_owned()))
        } else if s.is_empty() {
            Err("empty daemon address".into())
        } else {
            Ok(DaemonAddr::Socket(PathBuf::from(s)))
        }
    }
}

impl std::fmt::Display for DaemonAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DaemonAddr::Socket(p) => write!(f, "{}", p.display()),
            DaemonAddr::Tcp(u) => f.write_str(u),
        }
    }
}

/// The control API client.
#[derive(Clone)]
pub struct ControlClient {
    http: reqwest::Client,
    base: String,
    addr: DaemonAddr,
    token: Option<String>,
}

impl ControlClient {
    /// A client of the daemon at `addr`; `token` is sent as a bearer token (TCP).
    pub fn new(addr: DaemonAddr, token: Option<String>) -> Result<ControlClient> {
        let builder = reqwest::Client::builder().no_proxy();
        let (builder, base) = match &addr {
            DaemonAddr::Socket(p) => (builder.unix_socket(p.clone()), "http://shoald".to_owned()),
            DaemonAddr::Tcp(u) => (builder, u.clone()),
        };
        let http = builder
            .build()
            .map_err(|e| ClientError::Other(format!("HTTP client: {e}")))?;
        Ok(ControlClient {
            http,
            base,
            addr,
            token,
        })
    }

    /// Where the daemon is.
    pub fn addr(&self) -> &DaemonAddr {
        &self.addr
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        match resp.json::<ApiError>().await {
            Ok(e) => Err(ClientError::Api {
                code: e.code,
                message: e.message,
            }),
            Err(_) => Err(ClientError::Other(format!(
                "shoald at {} answered {status}",
                self.addr
            ))),
        }
    }

    async fn json<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T> {
        self.send(req)
            .await?
            .json()
            .await
            .map_err(|e| ClientError::Other(format!("bad answer from shoald: {e}")))
    }

    fn transport_error(&self, e: &reqwest::Error) -> ClientError {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = source {
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::PermissionDenied {
                    return ClientError::PermissionDenied(format!(
                        "cannot open the control socket {}: run as root or as a member of the socket's group",
                        self.addr
                    ));
                }
                return ClientError::DaemonUnreachable {
                    at: self.addr.to_string(),
                    reason: io.to_string(),
                };
            }
            source = err.source();
        }
        ClientError::DaemonUnreachable {
            at: self.addr.to_string(),
            reason: e.to_string(),
        }
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<Status> {
        self.json(self.request(reqwest::Method::GET, "/v1/status"))
            .await
    }

    /// `GET /v1/peers`.
    pub async fn peers(&self) -> Result<Vec<Peer>> {
        self.json(self.request(reqwest::Method::GET, "/v1/peers"))
            .await
    }

    /// `GET /v1/ls`.
    pub async fn ls(&self) -> Result<Listing> {
        self.json(self.request(reqwest::Method::GET, "/v1/ls"))
            .await
    }

    /// `POST /v1/pin`: fetches what is missing, then pins.
    pub async fn pin(&self, reference: &str) -> Result<PinReport> {
        let body = PinRequest {
            reference: reference.to_owned(),
        };
        self.json(self.request(reqwest::Method::POST, "/v1/pin").json(&body))
            .await
    }

    /// `POST /v1/unpin`.
    pub async fn unpin(&self, reference: &str) -> Result<PinReport> {
        let body = PinRequest {
            reference: reference.to_owned(),
        };
        self.json(self.request(reqwest::Method::POST, "/v1/unpin").json(&body))
            .await
    }

    /// `POST /v1/preheat` (also the progress poll).
    pub async fn preheat(&self, request: &PreheatRequest) -> Result<PreheatReport> {
        self.json(
            self.request(reqwest::Method::POST, "/v1/preheat")
                .json(request),
        )
        .await
    }

    /// `POST /v1/gc`.
    pub async fn gc(&self, request: &GcRequest) -> Result<GcReport> {
        self.json(self.request(reqwest::Method::POST, "/v1/gc").json(request))
            .await
    }

    /// `HEAD /v1/blobs/<digest>`: whether the store holds the blob.
    pub async fn has_blob(&self, digest: &Digest) -> Result<bool> {
        let resp = self
            .request(reqwest::Method::HEAD, &format!("/v1/blobs/{digest}"))
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        Ok(resp.status().is_success())
    }

    /// `PUT /v1/blobs/<digest>`: uploads a blob, which the daemon verifies.
    pub async fn put_blob(
        &self,
        digest: &Digest,
        size: u64,
        media_type: &str,
        body: reqwest::Body,
    ) -> Result<BlobStored> {
        let req = self
            .request(reqwest::Method::PUT, &format!("/v1/blobs/{digest}"))
            .query(&[
                ("size", size.to_string()),
                ("media_type", media_type.into()),
            ])
            .body(body);
        self.json(req).await
    }

    /// `PUT /v1/tags`.
    pub async fn put_tag(&self, reference: &str, digest: Digest) -> Result<()> {
        let body = TagRequest {
            reference: reference.to_owned(),
            digest,
        };
        self.send(self.request(reqwest::Method::PUT, "/v1/tags").json(&body))
            .await
            .map(|_| ())
    }

    /// The mirror's base URL, as reachable from here: an unspecified bind address
    /// (`0.0.0.0`) means loopback for a socket client, the control host for TCP.
    pub fn mirror_base(&self, status: &Status) -> Result<String> {
        let addr: std::net::SocketAddr = status.mirror_addr.parse().map_err(|_| {
            ClientError::Other(format!("bad mirror address {:?}", status.mirror_addr))
        })?;
        if !addr.ip().is_unspecified() {
            return Ok(format!("http://{addr}"));
        }
        let host = match &self.addr {
            DaemonAddr::Tcp(u) => url_host(u).unwrap_or_else(|| "127.0.0.1".into()),
            DaemonAddr::Socket(_) => "127.0.0.1".into(),
        };
        Ok(format!("http://{host}:{}", addr.port()))
    }
}

fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split_once(']').map(|(h, _)| format!("[{h}]"));
    }
    Some(
        authority
            .rsplit_once(':')
            .map_or(authority, |(h, _)| h)
            .to_owned(),
    )
}
