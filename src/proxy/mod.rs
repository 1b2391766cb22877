//! weir's HTTP application on Pingora: one request's story, one file per step.
//!
//! `intake` (gateway, endpoint, key in a header) → `admission` (who calls, may
//! they) → `call` (key in the body, route, `cached`, `bodies`) → `dispatch` (the
//! failover plan's attempts, each an `exchange`) → `relay` (the answer to the
//! client) → `logging` (access line, metrics, usage row). What the steps share:
//! `request` (the request as intake found it), `caller` (who calls), `ctx` (what
//! each step noted), `failure` (how it ended badly), `respond` (answers weir makes
//! itself). Imports point down this list, never back. The rules each step applies
//! live in `weir_filters`.

mod admission;
mod bodies;
mod cached;
mod call;
mod caller;
pub mod ctx;
mod dispatch;
mod exchange;
mod failure;
mod feishu;
pub mod feishu_api;
mod forward;
mod forward_proxy;
mod intake;
mod logging;
mod models;
mod passes;
pub mod probe;
mod relay;
mod request;
mod respond;
mod safety;
mod self_service;

use crate::admin_backend::Admin;
use crate::state::AppState;
use async_trait::async_trait;
use ctx::Ctx;
use failure::Failure;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora_core::protocols::http::v2::server::H2Options;
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_error::{Error, ErrorType};
use std::sync::Arc;
use weir_admin::manager::Manager;
use weir_filters::GatewayError;

/// The gateway's HTTP application. Weir answers every request itself (see
/// `intake`), so it is a Pingora `HttpServerApp` rather than a `ProxyHttp`:
/// pingora-proxy's request future carries its whole proxy state machine (12.5 KiB),
/// which weir never uses, for as long as each connection lives.
pub struct Weir {
    pub state: Arc<AppState>,
    /// The manager's self-service pages, served here with `server.public_manager`.
    pub manager: Arc<Manager<Admin>>,
    /// `server.h2c`: cleartext HTTP/2 by prior knowledge.
    pub options: pingora_core::apps::HttpServerOptions,
}

#[async_trait]
impl HttpServerApp for Weir {
    fn server_options(&self) -> Option<&pingora_core::apps::HttpServerOptions> {
        Some(&self.options)
    }

    /// `server.max_header` for HTTP/2 too (as a decoded header list: h2 answers a
    /// larger one 431), read when a connection starts.
    fn h2_options(&self) -> Option<H2Options> {
        let max = self.state.snapshot().server().max_header.0;
        Some(h2_options(max))
    }

    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        // A keep-alive connection waits here for its next request; a shutdown ends
        // the wait (a request already arriving is read first).
        let mut stopping = shutdown.clone();
        // Pipelined requests are answered in order (RFC 9112 §9.3.2); without
        // this, Pingora closes the connection and drops the request that followed.
        session.set_pipelining_enabled(true);
        let read = tokio::select! {
            biased;
            r = session.read_request() => r,
            _ = stopping.wait_for(|s| *s) => return None,
        };
        match read {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                if matches!(e.etype(), ErrorType::InvalidHTTPHeader) {
                    let bad = weir_filters::framing::unreadable(&e.to_string());
                    return self.refuse(session, &bad).await;
                }
                session.shutdown().await;
                return None;
            }
        }
        // The request's config snapshot from here to its end (intake takes it over).
        let snap = self.state.snapshot();
        // HTTP/1 only: HTTP/2 frames its bodies itself, and h2 bounds its headers.
        if let Some(h1) = session.as_http1() {
            let max_header = snap.server().max_header.0 as usize;
            let raw = h1.get_headers_raw_bytes();
            if let Err(bad) =
                weir_filters::framing::check(&raw, &h1.req_header().headers, max_header)
            {
                return self.refuse(session, &bad).await;
            }
        }
        if *shutdown.borrow() {
            // Stopping soon: this connection takes no further request.
            session.set_keepalive(None);
        }
        let path = session.req_header().uri.path();
        if path.starts_with("/manager") && snap.server().public_manager {
            return self.manager_page(session).await;
        }
        if path.starts_with("/bot/") {
            return self.bot_event(session).await;
        }
        let mut ctx = Ctx::new();
        ctx.snapshot = Some(snap);
        self.state.metrics.in_flight.inc();
        let failed = serve(&self.state, &mut session, &mut ctx).await;
        logging::record(&self.state, &ctx, failed.as_deref());
        // Only once its usage is queued: a graceful stop writes the queue and
        // leaves as soon as nothing is in flight.
        self.state.metrics.in_flight.dec();
        if failed.is_some() {
            return None;
        }
        reusable(session).await
    }
}

impl Weir {
    /// Answers a request whose head cannot be trusted, then closes the connection
    /// (what follows on it cannot be told apart from a smuggled request).
    async fn refuse(
        &self,
        mut session: ServerSession,
        bad: &GatewayError,
    ) -> Option<ReusedHttpStream> {
        session.set_keepalive(None);
        let mut ctx = Ctx::new();
        let _ = respond::error(&mut session, &mut ctx, bad).await;
        tracing::debug!("refused a request head: {bad}");
        session.shutdown().await;
        None
    }
}

/// Ends the exchange and hands the connection back for its next request, when it
/// can carry one.
pub(crate) async fn reusable(session: ServerSession) -> Option<ReusedHttpStream> {
    let settings = HttpPersistentSettings::for_session(&session);
    session
        .finish()
        .await
        .ok()
        .flatten()
        .map(|s| ReusedHttpStream::from_reusable_stream(s, settings))
}

/// One request, answered: `None` when the connection may carry the next one.
async fn serve(state: &AppState, session: &mut ServerSession, ctx: &mut Ctx) -> Option<Box<Error>> {
    let e = match intake::handle(state, session, ctx).await {
        Ok(()) => return None,
        Err(Failure::Client(e)) => {
            // Refused after the limits counted it (unknown or forbidden model, bad
            // body): it was never served, so it does not count.
            if matches!(e.status(), 400 | 403 | 404 | 405 | 413) {
                let charge = std::mem::take(&mut ctx.who.rate_charge);
                if let Some(shared) = &state.shared {
                    shared.refund(&charge);
                }
                state.accounts.refund(charge);
            }
            if matches!(e.status(), 401 | 402 | 403 | 429) {
                let gateway = ctx.route.gateway.as_deref().unwrap_or("-");
                state
                    .metrics
                    .refused
                    .with_label_values(&[gateway, e.code()])
                    .inc();
            }
            match respond::error(session, ctx, &e).await {
                Ok(()) => return None,
                Err(e) => e,
            }
        }
        Err(Failure::Abort(e)) => {
            session.set_keepalive(None);
            if session.response_written().is_none() && !ctx.reply.client_gone {
                let err = GatewayError::Internal(format!("proxy error: {}", e.etype().as_str()));
                let _ = respond::error(session, ctx, &err).await;
            }
            e
        }
    };
    // Our own access line says what happened to broken answers and departed
    // clients; anything else is worth an error line (never with the query, which
    // may carry a key).
    if !(ctx.reply.client_gone || ctx.reply.broken) {
        let req = session.req_header();
        tracing::error!("request failed: {e}, {} {}", req.method, req.uri.path());
    }
    Some(e)
}

/// Pingora's bounded HTTP/2 defaults (concurrent streams), with `max_header` as
/// the decoded header-list limit.
pub fn h2_options(max_header: u64) -> H2Options {
    let mut options = pingora_core::protocols::http::v2::server::default_h2_options();
    options.max_header_list_size(u32::try_from(max_header).unwrap_or(u32::MAX));
    options
}
