//! The Pingora `ProxyHttp` implementation. Each phase delegates to the file named
//! after it; the logic those files apply lives in `weir_filters`.

mod admission;
pub mod ctx;
mod logging;
pub use logging::AccessLine;
mod request_filter;
mod respond;
mod response_body;
mod upstream_peer;

use crate::state::AppState;
use async_trait::async_trait;
use ctx::Ctx;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::Arc;
use weir_filters::GatewayError;

pub struct Weir {
    pub state: Arc<AppState>,
}

/// How a request handled in `request_filter` ended badly.
pub enum Failure {
    /// Tell the client, as OpenAI-shaped JSON.
    Client(GatewayError),
    /// Nothing more can be said (the answer already started or the client left):
    /// end the connection.
    Abort(Box<Error>),
}

impl From<GatewayError> for Failure {
    fn from(e: GatewayError) -> Self {
        Failure::Client(e)
    }
}

#[async_trait]
impl ProxyHttp for Weir {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        self.state.metrics.in_flight.inc();
        ctx.in_flight = true;
        match request_filter::handle(&self.state, session, ctx).await {
            Ok(()) => Ok(true),
            Err(Failure::Client(e)) => {
                // Refused after the limits counted it (unknown or forbidden model, bad
                // body): it was never served, so it does not count.
                if matches!(e.status(), 400 | 403 | 404 | 405 | 413) {
                    self.state
                        .accounts
                        .refund(std::mem::take(&mut ctx.rate_charge));
                }
                if matches!(e.status(), 401 | 402 | 403 | 429) {
                    let gateway = ctx.gateway.as_deref().unwrap_or("-");
                    self.state
                        .metrics
                        .refused
                        .with_label_values(&[gateway, e.code()])
                        .inc();
                }
                respond::error(session, ctx, &e).await?;
                Ok(true)
            }
            Err(Failure::Abort(e)) => {
                session.set_keepalive(None);
                Err(e)
            }
        }
    }

    /// Never reached: `request_filter` answers every request (see its module doc).
    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        Err(Error::explain(
            ErrorType::InternalError,
            "weir relays every request from request_filter",
        ))
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(c) => *c,
            _ => 502,
        };
        if session.response_written().is_none() && !ctx.client_gone {
            let err = GatewayError::Internal(format!("proxy error: {}", e.etype().as_str()));
            let _ = respond::error(session, ctx, &err).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// What Pingora prints about a request in its own error lines: never the query,
    /// which may carry a key (`arg:` positions).
    fn request_summary(&self, session: &Session, _ctx: &Ctx) -> String {
        let req = session.req_header();
        format!("{} {}", req.method, req.uri.path())
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &Ctx, _e: &Error) -> bool {
        // Our own access line already says what happened.
        ctx.client_gone || ctx.broken
    }

    async fn logging(&self, _session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        if ctx.in_flight {
            self.state.metrics.in_flight.dec();
        }
        logging::record(&self.state, ctx, e);
    }
}
