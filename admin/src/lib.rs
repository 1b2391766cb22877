//! The admin listener (A1): admin API under `/admin/`, `/metrics` for Prometheus and
//! `/health` for load balancers, on its own address. The gateway implements
//! [`AdminBackend`]; this crate only routes, authenticates and shapes JSON.

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde_json::json;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use weir_filters::GatewayError;

/// What the admin API needs from the running gateway.
#[async_trait]
pub trait AdminBackend: Send + Sync + 'static {
    /// Who holds this bearer token: the bootstrap admin key or a stored key.
    fn authenticate(&self, token: &str) -> Option<api::Caller>;
    /// Runs a command the caller is permitted; returns the status and JSON answer.
    async fn execute(
        &self,
        caller: api::Caller,
        cmd: api::Command,
    ) -> Result<(u16, serde_json::Value), GatewayError>;
    /// Prometheus text exposition.
    fn metrics(&self) -> Vec<u8>;
}

pub struct AdminApp<B: AdminBackend> {
    backend: Arc<B>,
}

impl<B: AdminBackend> AdminApp<B> {
    pub fn new(backend: Arc<B>) -> Self {
        AdminApp { backend }
    }
}

/// Largest admin request body read.
const MAX_ADMIN_BODY: usize = 1024 * 1024;

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
    respond(e.status(), "application/json", e.to_json())
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
impl<B: AdminBackend> ServeHttp for AdminApp<B> {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.as_str().to_string();
        let path = session.req_header().uri.path().to_string();
        let auth = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);

        // Read (and bound) the body so keep-alive stays correct.
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    body.extend_from_slice(&chunk);
                    if body.len() > MAX_ADMIN_BODY {
                        session.set_keepalive(None);
                        return error_response(&GatewayError::BodyTooLarge {
                            limit: MAX_ADMIN_BODY as u64,
                        });
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    session.set_keepalive(None);
                    return error_response(&GatewayError::BadRequest(
                        "cannot read the request body".into(),
                    ));
                }
            }
        }

        let query = session.req_header().uri.query().unwrap_or("").to_string();
        match (method.as_str(), path.as_str()) {
            ("GET", "/metrics") => {
                respond(200, "text/plain; version=0.0.4", self.backend.metrics())
            }
            ("GET", "/health") => json_response(200, &json!({"status": "ok"})),
            (_, p) if p == "/admin" || p.starts_with("/admin/") => {
                let Some(token) = bearer(auth.as_deref()) else {
                    return error_response(&GatewayError::AdminUnauthorized(
                        "missing `Authorization: Bearer <key>`".into(),
                    ));
                };
                let Some(caller) = self.backend.authenticate(token) else {
                    return error_response(&GatewayError::AdminUnauthorized(
                        "invalid admin key".into(),
                    ));
                };
                let result = async {
                    let cmd = api::route(&method, p, &query, &body)?;
                    api::permitted(caller, &cmd)?;
                    self.backend.execute(caller, cmd).await
                }
                .await;
                match result {
                    Ok((status, v)) => json_response(status, &v),
                    Err(e) => error_response(&e),
                }
            }
            ("GET", _) | ("POST", _) => {
                error_response(&GatewayError::RouteNotFound { method, path })
            }
            _ => error_response(&GatewayError::MethodNotAllowed { method, path }),
        }
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
