//! Who may drive the agent API: a bearer token on every route but the
//! health probe, the dashboard page and the API's description, a Host allowlist against DNS
//! rebinding, JSON bodies declared as JSON, a time limit per request and a
//! cap on open event streams (docs/api.md, "Access").
//!
//! The token is what stops a web page: a cross-site request cannot add an
//! `Authorization` header without a CORS preflight, and the API answers no
//! preflight. The Host check stops a page whose own name was re-pointed at
//! 127.0.0.1, which would otherwise be same-origin with the API.

use super::ApiError;
use anyhow::{Context, Result};
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The token file's name in the data directory.
pub const TOKEN_FILE: &str = "api-token";
/// Paths anyone on an allowed Host may read: the health probe, the
/// dashboard page (static; it asks for the token and sends it) and the
/// API's description. The description marks the same ones public (a test
/// checks both agree).
pub(crate) const PUBLIC_PATHS: [&str; 3] = ["/v1/health", "/", "/v1/openapi.json"];
/// A request's handler must finish within this (event streams only have to
/// start within it).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Training on many samples takes longer (and one runs at a time).
pub const TRAIN_TIMEOUT: Duration = Duration::from_secs(600);
/// Event streams open at once, over all channels.
pub const MAX_EVENT_STREAMS: usize = 64;
/// Shortest token accepted from a token file someone wrote by hand.
const MIN_TOKEN_CHARS: usize = 32;

#[derive(Clone)]
pub struct Guard {
    token: Arc<str>,
    token_file: Arc<Path>,
    /// Lowercased names and addresses a Host header may carry.
    hosts: Arc<[String]>,
    streams: Arc<Semaphore>,
}

impl Guard {
    pub fn new(
        token: String,
        token_file: PathBuf,
        api: SocketAddr,
        extra_hosts: &[String],
    ) -> Guard {
        let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "::1"]
            .iter()
            .map(|h| h.to_string())
            .collect();
        hosts.push(api.ip().to_string());
        hosts.extend(extra_hosts.iter().cloned());
        Guard {
            token: token.into(),
            token_file: token_file.into(),
            hosts: hosts.into(),
            streams: Arc::new(Semaphore::new(MAX_EVENT_STREAMS)),
        }
    }

    /// A place for one more event stream, held for as long as it is open.
    pub fn event_stream(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: format!(
                    "{MAX_EVENT_STREAMS} event streams are open already; close one first"
                ),
            })
    }

    fn host_allowed(&self, request: &Request) -> Result<(), ApiError> {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| request.uri().authority().map(|a| a.to_string()))
            .ok_or_else(|| ApiError::bad_request("the request has no Host header"))?;
        let name = host_name(&host).to_ascii_lowercase();
        if self.hosts.contains(&name) {
            return Ok(());
        }
        Err(ApiError {
            status: StatusCode::FORBIDDEN,
            message: format!(
                "Host {host:?} is not allowed (loopback names and the api.allowed_hosts setting are)"
            ),
        })
    }

    fn token_valid(&self, request: &Request) -> Result<(), ApiError> {
        let unauthorized = |what: &str| ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: format!(
                "{what}: send `Authorization: Bearer <token>`; the node keeps its token in {}",
                self.token_file.display()
            ),
        };
        let Some(value) = request.headers().get(header::AUTHORIZATION) else {
            return Err(unauthorized("missing API token"));
        };
        let presented = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or_default();
        if constant_time_eq(presented.as_bytes(), self.token.as_bytes()) {
            Ok(())
        } else {
            Err(unauthorized("wrong API token"))
        }
    }
}

/// The middleware in front of every route.
pub async fn check(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    use axum::response::IntoResponse;
    if let Err(e) = guard.host_allowed(&request) {
        return e.into_response();
    }
    let path = request.uri().path();
    // HEAD is GET without the body (axum answers it from the GET route).
    let public =
        matches!(*request.method(), Method::GET | Method::HEAD) && PUBLIC_PATHS.contains(&path);
    if !public {
        if let Err(e) = guard.token_valid(&request) {
            return e.into_response();
        }
    }
    if let Err(e) = json_declared(&request) {
        return e.into_response();
    }
    let limit = if path == "/v1/model/train" {
        TRAIN_TIMEOUT
    } else {
        REQUEST_TIMEOUT
    };
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError {
            status: StatusCode::REQUEST_TIMEOUT,
            message: format!("the request took over {} s", limit.as_secs()),
        }
        .into_response(),
    }
}

/// Bodies of POST and PUT requests must say they are JSON, except where
/// the body is the payload itself (a channel message, whose content type
/// travels with it, and a model checkpoint).
fn json_declared(request: &Request) -> Result<(), ApiError> {
    if !matches!(*request.method(), Method::POST | Method::PUT) {
        return Ok(());
    }
    let path = request.uri().path();
    let raw_body = (path.starts_with("/v1/channels/") && path.ends_with("/messages"))
        || path == "/v1/model/checkpoint";
    if raw_body {
        return Ok(());
    }
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        return Ok(());
    }
    Err(ApiError {
        status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
        message: format!(
            "this endpoint takes a JSON body: send Content-Type: application/json (got {content_type:?})"
        ),
    })
}

/// The host part of a Host header: `name:port`, `[v6]:port`, or bare.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Compares without an early exit, so timing does not tell how much of a
/// guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token in `path`, created (64 hex characters from the OS's random
/// source, mode 0600) if the file does not exist.
pub fn load_or_create_token(path: &Path) -> Result<String> {
    if path.exists() {
        crate::identity::warn_if_readable_by_others(path);
        let token = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the API token file {}", path.display()))?;
        let token = token.trim().to_string();
        if token.chars().count() < MIN_TOKEN_CHARS || token.chars().any(|c| c.is_whitespace()) {
            anyhow::bail!(
                "the API token file {} must hold one token of at least {MIN_TOKEN_CHARS} \
                 characters without spaces (delete it to have a new one made)",
                path.display()
            );
        }
        return Ok(token);
    }
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| anyhow::anyhow!("the OS random source failed"))?;
    let token = hex::encode(bytes);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create directory {}", dir.display()))?;
    }
    crate::identity::write_private_file(path, token.as_bytes(), "API token file")?;
    tracing::info!(path = %path.display(), "created the API token");
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_lose_their_port() {
        assert_eq!(host_name("localhost:7700"), "localhost");
        assert_eq!(host_name("[::1]:7700"), "::1");
        assert_eq!(host_name("127.0.0.1"), "127.0.0.1");
        assert_eq!(host_name("evil.example:80"), "evil.example");
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn a_token_file_is_made_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKEN_FILE);
        let token = load_or_create_token(&path).unwrap();
        assert_eq!(token.len(), 64);
        assert_eq!(load_or_create_token(&path).unwrap(), token);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "short").unwrap();
        let e = load_or_create_token(&path).unwrap_err().to_string();
        assert!(e.contains("at least 32"), "{e}");
    }
}
