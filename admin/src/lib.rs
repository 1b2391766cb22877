//! The admin listener (A1): admin API under `/admin/`, `/metrics` for Prometheus and
//! `/health` for load balancers, on its own address. The gateway implements
//! [`AdminBackend`]; this crate only routes, authenticates and shapes JSON.

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde_json::json;
use std::sync::Arc;
use weir_filters::GatewayError;

/// What the admin API needs from the running gateway.
#[async_trait]
pub trait AdminBackend: Send + Sync + 'static {
    /// The admin key of the config in use; `None` disables `/admin/*`.
    fn admin_key(&self) -> Option<String>;
    /// Re-reads the YAML file; `Ok` carries a JSON report, `Err` the problems found.
    async fn reload(&self, trigger: &str) -> Result<serde_json::Value, String>;
    /// Channels with their health.
    fn channels(&self) -> serde_json::Value;
    /// The config in use, secrets redacted.
    fn config(&self) -> serde_json::Value;
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

/// Compares in time independent of where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks `Authorization: Bearer <admin key>`.
pub fn check_admin(expected: Option<&str>, header: Option<&str>) -> Result<(), GatewayError> {
    let Some(expected) = expected.filter(|k| !k.is_empty()) else {
        return Err(GatewayError::AdminUnauthorized(
            "the admin API is disabled: set server.admin_key".into(),
        ));
    };
    let given = header
        .map(|h| h.trim())
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(|| {
            GatewayError::AdminUnauthorized("missing `Authorization: Bearer <admin key>`".into())
        })?;
    if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(GatewayError::AdminUnauthorized("invalid admin key".into()))
    }
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
        let mut read = 0usize;
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    read += chunk.len();
                    if read > MAX_ADMIN_BODY {
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

        match (method.as_str(), path.as_str()) {
            ("GET", "/metrics") => {
                respond(200, "text/plain; version=0.0.4", self.backend.metrics())
            }
            ("GET", "/health") => json_response(200, &json!({"status": "ok"})),
            (_, p) if p == "/admin" || p.starts_with("/admin/") => {
                if let Err(e) = check_admin(self.backend.admin_key().as_deref(), auth.as_deref()) {
                    return error_response(&e);
                }
                match (method.as_str(), p.trim_end_matches('/')) {
                    ("POST", "/admin/reload") => match self.backend.reload("admin").await {
                        Ok(report) => json_response(200, &report),
                        Err(problems) => error_response(&GatewayError::BadRequest(format!(
                            "config rejected, the previous config keeps serving: {problems}"
                        ))),
                    },
                    ("GET", "/admin/channels") => json_response(200, &self.backend.channels()),
                    ("GET", "/admin/config") => json_response(200, &self.backend.config()),
                    (_, "/admin/reload" | "/admin/channels" | "/admin/config") => {
                        error_response(&GatewayError::MethodNotAllowed { method, path })
                    }
                    _ => error_response(&GatewayError::RouteNotFound { method, path }),
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
    fn admin_key_is_checked() {
        assert!(check_admin(Some("k-1"), Some("Bearer k-1")).is_ok());
        assert!(check_admin(Some("k-1"), Some("Bearer k-2")).is_err());
        assert!(check_admin(Some("k-1"), Some("k-1")).is_err());
        assert!(check_admin(Some("k-1"), None).is_err());
        let disabled = check_admin(None, Some("Bearer x")).unwrap_err();
        assert!(disabled.to_string().contains("disabled"));
        assert!(check_admin(Some(""), Some("Bearer ")).is_err());
    }

    #[test]
    fn constant_time_eq_compares_fully() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
pub mod api;
