//! Upstream credentials: Docker `config.json` basic credentials and the registry
//! Bearer token flow (`WWW-Authenticate: Bearer realm=..,service=..,scope=..`).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;

use super::UpstreamError;

/// Username and password for one registry host.
#[derive(Clone)]
pub struct BasicCredentials {
    /// Username.
    pub username: String,
    /// Password or identity token.
    pub password: String,
}

impl std::fmt::Debug for BasicCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BasicCredentials({}, ***)", self.username)
    }
}

impl BasicCredentials {
    /// The `Authorization: Basic ...` value.
    pub fn header_value(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// Basic credentials per registry host, loaded from a Docker `config.json`.
#[derive(Debug, Default, Clone)]
pub struct Credentials {
    by_host: HashMap<String, BasicCredentials>,
}

#[derive(serde::Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, DockerAuth>,
}

#[derive(serde::Deserialize)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// Normalises a `config.json` key (`https://index.docker.io/v1/`, `ghcr.io`, ...) to the
/// host the upstream client dials.
fn normalise_host(key: &str) -> String {
    let without_scheme = key.split_once("://").map_or(key, |(_, rest)| rest);
    let host = without_scheme.split('/').next().unwrap_or_default();
    match host {
        "docker.io" | "index.docker.io" => "registry-1.docker.io".to_owned(),
        h => h.to_owned(),
    }
}

impl Credentials {
    /// Loads a Docker `config.json`. Entries that are neither `auth` nor
    /// `username`/`password` (e.g. credential helpers) are rejected by name.
    pub fn load(path: &Path) -> Result<Credentials, UpstreamError> {
        let bad =
            |m: String| UpstreamError::Config(format!("credentials file {}: {m}", path.display()));
        let text = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let cfg: DockerConfig = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
        let mut by_host = HashMap::new();
        for (key, entry) in cfg.auths {
            let creds = match (entry.auth, entry.username, entry.password) {
                (Some(auth), _, _) => {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .map_err(|e| bad(format!("auths.{key}.auth is not base64: {e}")))?;
                    let decoded = String::from_utf8(decoded)
                        .map_err(|_| bad(format!("auths.{key}.auth is not UTF-8")))?;
                    let (u, p) = decoded.split_once(':').ok_or_else(|| {
                        bad(format!("auths.{key}.auth is not base64(user:password)"))
                    })?;
                    BasicCredentials {
                        username: u.to_owned(),
                        password: p.to_owned(),
                    }
                }
                (None, Some(username), Some(password)) => BasicCredentials { username, password },
                _ => {
                    return Err(bad(format!(
                        "auths.{key} has neither auth nor username/password"
                    )))
                }
            };
            by_host.insert(normalise_host(&key), creds);
        }
        Ok(Credentials { by_host })
    }

    /// Credentials for `host`, if configured.
    pub fn for_host(&self, host: &str) -> Option<&BasicCredentials> {
        self.by_host.get(host)
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm=...`
    Basic,
    /// `Bearer realm=...,service=...,scope=...`
    Bearer {
        /// Token endpoint.
        realm: String,
        /// `service` parameter for the token request.
        service: Option<String>,
        /// `scope` the registry asked for, if it said.
        scope: Option<String>,
    },
}

/// Parses the first challenge of a `WWW-Authenticate` header value.
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest);
    Some(Challenge::Bearer {
        realm: params.get("realm")?.clone(),
        service: params.get("service").cloned(),
        scope: params.get("scope").cloned(),
    })
}

/// `key="value", key2=value2` (quoted values may contain commas, e.g. multiple scopes).
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        out.insert(key, value.trim().to_owned());
        rest = remaining.trim_start_matches([',', ' ']);
    }
    out
}

/// A bearer token with its expiry.
#[derive(Clone)]
pub(super) struct CachedToken {
    pub(super) value: String,
    pub(super) expires: Instant,
}

#[derive(serde::Deserialize)]
pub(super) struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

impl TokenResponse {
    /// Converts to a cache entry; tokens are refreshed 10 s before they expire.
    /// Registries that omit `expires_in` mean 60 s (distribution's token spec).
    pub(super) fn into_cached(self) -> Option<CachedToken> {
        let value = self.token.or(self.access_token)?;
        let lifetime = Duration::from_secs(self.expires_in.unwrap_or(60).max(1));
        let expires = Instant::now()
            + lifetime
                .saturating_sub(Duration::from_secs(10))
                .max(Duration::from_secs(1));
        Some(CachedToken { value, expires })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenge() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull,push".into()),
            }
        );
        assert_eq!(parse_challenge("Basic realm=\"x\""), Some(Challenge::Basic));
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge("Bearer service=x"), None);
    }

    #[test]
    fn loads_docker_config() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(
            &p,
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz"},"ghcr.io":{"username":"u","password":"p"}}}"#,
        )
        .unwrap();
        let c = Credentials::load(&p).unwrap();
        assert_eq!(c.for_host("registry-1.docker.io").unwrap().password, "pass");
        assert_eq!(c.for_host("ghcr.io").unwrap().username, "u");
        std::fs::write(&p, r#"{"auths":{"x":{"auth":"!!!"}}}"#).unwrap();
        assert!(Credentials::load(&p)
            .unwrap_err()
            .to_string()
            .contains("auths.x.auth"));
    }
}
