//! The admin listener (A1): admin API under `/admin/`, `/metrics` for Prometheus and
//! `/health` for load balancers, on its own address. The gateway implements
//! [`AdminBackend`]; this crate only routes, authenticates and shapes JSON.

use async_trait::async_trait;
use bytes::Bytes;
use http::{Response, StatusCode};
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_http::ResponseHeader;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use weir_filters::GatewayError;

/// What the admin API needs from the running gateway.
#[async_trait]
pub trait AdminBackend: Send + Sync + 'static {
    /// Who holds this bearer token: the bootstrap admin key or a stored key.
    fn authenticate(&self, token: &str) -> Option<api::Caller>;
    /// Who holds the key with this hash (`weir_filters::auth::hash_key`), asked
    /// again on every manager request so a session ends with its key.
    fn session_caller(&self, key_hash: &str) -> Option<api::Caller>;
    /// The base URL clients call (for the manager's "how to call" page): the proxy
    /// listener's address, with the host the browser used when it listens on all.
    fn base_url(&self, host: Option<&str>) -> String;
    /// The client's address: `peer`, or what a trusted proxy in front of it
    /// forwarded (`server.trusted_proxies`).
    fn client_ip(
        &self,
        peer: Option<std::net::IpAddr>,
        headers: &http::HeaderMap,
    ) -> Option<std::net::IpAddr>;
    /// Runs a command the caller is permitted.
    async fn execute(&self, caller: api::Caller, cmd: api::Command)
        -> Result<Answer, GatewayError>;
    /// Prometheus text exposition.
    fn metrics(&self) -> Vec<u8>;
    /// `GET /health`: `{"status": "ok"|"degraded", "backends": {...}}`, always
    /// answered 200 while the process serves (degraded still serves).
    fn health(&self) -> serde_json::Value;
}

/// What a command answers: JSON, or a body streamed as it is produced (exports).
pub enum Answer {
    Json(u16, serde_json::Value),
    Stream {
        content_type: &'static str,
        /// The download's file name (`Content-Disposition`).
        filename: String,
        /// The body in pieces; an `Err` ends it early, and the client sees the
        /// transfer cut off rather than a body that looks whole.
        chunks: tokio::sync::mpsc::Receiver<Result<Bytes, String>>,
    },
}

/// A response about to be written.
enum Reply {
    Full(Response<Vec<u8>>),
    Stream {
        content_type: &'static str,
        filename: String,
        chunks: tokio::sync::mpsc::Receiver<Result<Bytes, String>>,
    },
}

impl From<Response<Vec<u8>>> for Reply {
    fn from(r: Response<Vec<u8>>) -> Self {
        Reply::Full(r)
    }
}

pub struct AdminApp<B: AdminBackend> {
    backend: Arc<B>,
    manager: Arc<manager::Manager<B>>,
}

impl<B: AdminBackend> AdminApp<B> {
    /// The manager is shared with the proxy listener's self-service pages, so one
    /// sign-in is one session wherever it is used.
    pub fn new(backend: Arc<B>, manager: Arc<manager::Manager<B>>) -> Self {
        AdminApp { backend, manager }
    }
}

/// Largest admin request body read.
const MAX_ADMIN_BODY: usize = 1024 * 1024;
/// Largest admin request head; larger gets 431.
const MAX_ADMIN_HEADER: usize = 64 * 1024;

fn respond(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    let len = r.body().len();
    r.headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    r
}

fn json_response(status: u16, v: &serde_json::Value) -> Response<Vec<u8>> {
    respond(
        status,
        "application/json",
        serde_json::to_vec(v).unwrap_or_default(),
    )
}

fn error_response(e: &GatewayError) -> Response<Vec<u8>> {
    let mut r = respond(e.status(), "application/json", e.to_json());
    if let Some(secs) = e.retry_after() {
        r.headers_mut()
            .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
    }
    r
}

/// Compares in time independent of where the first difference is. The length
/// is not secret (any key's length is public in the docs), so it is checked first.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// The bearer token of an `Authorization` header.
fn bearer(header: Option<&str>) -> Option<&str> {
    let h = header?.trim();
    if !h.get(..7)?.eq_ignore_ascii_case("bearer ") {
        return None;
    }
    Some(h[7..].trim()).filter(|t| !t.is_empty())
}

/// Checks a presented token against the bootstrap admin key, in constant time.
pub fn is_bootstrap_key(expected: Option<&str>, token: &str) -> bool {
    expected
        .filter(|k| !k.is_empty())
        .is_some_and(|k| constant_time_eq(token.as_bytes(), k.as_bytes()))
}

#[async_trait]
impl<B: AdminBackend> HttpServerApp for AdminApp<B> {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        session.set_pipelining_enabled(true);
        let refusal = match session.read_request().await {
            Ok(true) => session.as_http1().and_then(|h1| {
                let raw = h1.get_headers_raw_bytes();
                weir_filters::framing::check(&raw, &h1.req_header().headers, MAX_ADMIN_HEADER).err()
            }),
            Ok(false) => return None,
            Err(e) if e.etype() == &pingora_core::ErrorType::InvalidHTTPHeader => {
                Some(weir_filters::framing::unreadable(&e.to_string()))
            }
            Err(_) => return None,
        };
        if let Some(bad) = refusal {
            // What follows on this connection cannot be trusted: answer and close.
            session.set_keepalive(None);
            let _ = write_full(&mut session, error_response(&bad)).await;
            session.shutdown().await;
            return None;
        }
        session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
        let written = match self.handle(&mut session).await {
            Reply::Full(r) => write_full(&mut session, r).await,
            Reply::Stream {
                content_type,
                filename,
                chunks,
            } => write_stream(&mut session, content_type, &filename, chunks).await,
        };
        if written.is_err() {
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&session);
        session
            .finish()
            .await
            .ok()
            .flatten()
            .map(|s| ReusedHttpStream::from_reusable_stream(s, settings))
    }
}

async fn write_full(session: &mut ServerSession, r: Response<Vec<u8>>) -> pingora_core::Result<()> {
    let (parts, body) = r.into_parts();
    let header: ResponseHeader = parts.into();
    session.write_response_header(Box::new(header)).await?;
    session.write_response_body(Bytes::from(body), true).await?;
    Ok(())
}

/// A chunked body, written as the backend produces it; an error mid-way cuts the
/// connection, so a partial export never looks complete.
async fn write_stream(
    session: &mut ServerSession,
    content_type: &'static str,
    filename: &str,
    mut chunks: tokio::sync::mpsc::Receiver<Result<Bytes, String>>,
) -> pingora_core::Result<()> {
    let mut h = ResponseHeader::build(200, Some(4))?;
    h.insert_header("content-type", content_type)?;
    h.insert_header(
        "content-disposition",
        format!("attachment; filename=\"{filename}\""),
    )?;
    h.insert_header("transfer-encoding", "chunked")?;
    session.write_response_header(Box::new(h)).await?;
    while let Some(chunk) = chunks.recv().await {
        match chunk {
            Ok(bytes) => session.write_response_body(bytes, false).await?,
            Err(e) => {
                session.set_keepalive(None);
                return Err(pingora_core::Error::explain(
                    pingora_core::ErrorType::WriteError,
                    format!("export stopped: {e}"),
                ));
            }
        }
    }
    session.write_response_body(Bytes::new(), true).await?;
    Ok(())
}

impl<B: AdminBackend> AdminApp<B> {
    /// Reads (and bounds) the body so keep-alive stays correct.
    async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, GatewayError> {
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    body.extend_from_slice(&chunk);
                    if body.len() > MAX_ADMIN_BODY {
                        session.set_keepalive(None);
                        return Err(GatewayError::BodyTooLarge {
                            limit: MAX_ADMIN_BODY as u64,
                        });
                    }
                }
                Ok(None) => return Ok(body),
                Err(_) => {
                    session.set_keepalive(None);
                    return Err(GatewayError::BadRequest(
                        "cannot read the request body".into(),
                    ));
                }
            }
        }
    }

    async fn handle(&self, session: &mut ServerSession) -> Reply {
        let method = session.req_header().method.as_str().to_string();
        let path = session.req_header().uri.path().to_string();
        let auth = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = match Self::read_body(session).await {
            Ok(b) => b,
            Err(e) => return error_response(&e).into(),
        };
        let query = session.req_header().uri.query().unwrap_or("").to_string();
        // Behind an ingress, the address it forwarded (per `server.trusted_proxies`):
        // else one bad script there would lock every operator out.
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let client = self.backend.client_ip(peer, &session.req_header().headers);
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        match (method.as_str(), path.as_str()) {
            ("GET", "/metrics") => {
                respond(200, "text/plain; version=0.0.4", self.backend.metrics()).into()
            }
            ("GET", "/health") => json_response(200, &self.backend.health()).into(),
            (_, p) if p == "/manager" || p.starts_with("/manager/") => {
                let req =
                    manager::ManagerRequest::from_head(session.req_header(), &body, false, client)
                        .with_tls(tls);
                match self.manager.serve(&req).await {
                    manager::ManagerReply::Page(r) => r.into(),
                    manager::ManagerReply::Export(a) => answer_reply(a),
                }
            }
            (_, p) if p == "/admin" || p.starts_with("/admin/") => {
                self.admin(&method, p, &query, &body, auth.as_deref(), client)
                    .await
            }
            ("GET", _) | ("POST", _) => {
                error_response(&GatewayError::RouteNotFound { method, path }).into()
            }
            _ => error_response(&GatewayError::MethodNotAllowed { method, path }).into(),
        }
    }

    async fn admin(
        &self,
        method: &str,
        path: &str,
        query: &str,
        body: &[u8],
        auth: Option<&str>,
        client: Option<std::net::IpAddr>,
    ) -> Reply {
        let Some(token) = bearer(auth) else {
            return error_response(&GatewayError::AdminUnauthorized(
                "missing `Authorization: Bearer <key>`".into(),
            ))
            .into();
        };
        let now = std::time::Instant::now();
        // A locked-out address is not even told whether its key is right.
        let caller = match self
            .manager
            .lockout
            .attempt(client, now, || self.backend.authenticate(token).ok_or(()))
        {
            Ok(Ok(caller)) => caller,
            Ok(Err(())) => {
                return error_response(&GatewayError::AdminUnauthorized("invalid admin key".into()))
                    .into()
            }
            Err(wait) => {
                let retry_after_secs = wait.as_secs_f64().ceil() as u64;
                return error_response(&GatewayError::TooManyAuthFailures { retry_after_secs })
                    .into();
            }
        };
        let result = async {
            let cmd = api::route(method, path, query, body)?;
            api::permitted(caller, &cmd)?;
            self.backend.execute(caller, cmd).await
        }
        .await;
        match result {
            Ok(a) => answer_reply(a),
            Err(e) => error_response(&e).into(),
        }
    }
}

fn answer_reply(a: Answer) -> Reply {
    match a {
        Answer::Json(status, v) => json_response(status, &v).into(),
        Answer::Stream {
            content_type,
            filename,
            chunks,
        } => Reply::Stream {
            content_type,
            filename,
            chunks,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_and_the_bootstrap_key() {
        assert_eq!(bearer(Some("Bearer k-1")), Some("k-1"));
        assert_eq!(bearer(Some("bearer  k-1 ")), Some("k-1"));
        assert_eq!(bearer(Some("k-1")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
        assert!(is_bootstrap_key(Some("k-1"), "k-1"));
        assert!(!is_bootstrap_key(Some("k-1"), "k-2"));
        assert!(!is_bootstrap_key(Some(""), ""));
        assert!(!is_bootstrap_key(None, "k-1"));
    }

    #[test]
    fn constant_time_eq_compares_fully() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
pub mod api;
pub mod manager;
