//! The `logging` phase: one structured line and the metrics for every request, and
//! its usage row for the accounting store (spend, balance, the call log).

use super::ctx::Ctx;
use crate::accounts::now_unix;
use crate::logbuf::AccessLine;
use crate::state::AppState;
use crate::store::{FailedBodies, UsageEvent};
use std::time::Duration;
use weir_filters::auth::KeyPosition;
use weir_filters::calllog;
use weir_filters::config::Runtime;
use weir_filters::usage::cost;

/// Bills a routed request (K5) and queues its call-log row: the ledger at once, so
/// the next request already sees the spend; the store within `flush_interval`.
/// Every request that reached a gateway gets a row, refused ones too.
fn account(state: &AppState, ctx: &Ctx, gateway: &str, status: u16, elapsed: Duration) {
    let Some(snap) = &ctx.snapshot else {
        return;
    };
    if ctx.route.gateway.is_none() {
        return;
    }
    let usage = ctx.reply.usage.unwrap_or_default();
    // Priced by the name the client asked for (`gpt-4o` served through a catch-all
    // channel is still `gpt-4o`), then by the configured name it routed to.
    let model = ctx
        .route
        .requested_model
        .as_deref()
        .unwrap_or(&ctx.route.model_label);
    let now = now_unix();
    // Only a routed request is priced and counted; a refused one is logged at 0.
    let cost = if ctx.route.model_label != "-" {
        let (price_in, price_out) = state.accounts.price(snap, &[model, &ctx.route.model_label]);
        let cost = cost(&usage, price_in, price_out);
        let tokens = usage.prompt_tokens + usage.completion_tokens;
        state
            .accounts
            .charge(ctx.who.key_id, gateway, tokens, cost, now);
        if let Some(shared) = &state.shared {
            let month = crate::accounts::month_of(now);
            let charge = &ctx.who.rate_charge;
            shared.charge(charge, ctx.who.key_id, month, gateway, tokens, cost);
        }
        cost
    } else {
        0.0
    };
    let failed = status >= 400 || ctx.reply.broken;
    state.store.record(UsageEvent {
        ts: now,
        key_id: ctx.who.key_id,
        identity: if ctx.who.key_id.is_some() {
            None
        } else {
            ctx.who.identity.clone()
        },
        gateway: gateway.to_string(),
        model: if model == "-" {
            String::new()
        } else {
            model.to_string()
        },
        channel: ctx.tries.channel.clone(),
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        cost,
        estimated: usage.estimated,
        status,
        latency_ms: elapsed.as_millis() as u64,
        stream: ctx.route.stream,
        upstream_model: ctx.route.upstream_model.clone(),
        upstream: ctx.tries.upstream.clone(),
        error_code: ctx.reply.error_code.clone(),
        error: ctx.reply.error.clone(),
        ttft_ms: ctx.reply.first_byte.map(|d| d.as_millis() as u64),
        cache: cache_state(ctx),
        tried: ctx.tries.tried.clone(),
        client_ip: ctx.route.client_ip.map(|ip| ip.to_string()),
        masked: ctx.route.masked.as_ref().map(|t| t.summary()),
        bodies: failed.then(|| failed_bodies(snap, ctx, gateway)),
    });
}

/// `hit`, `miss` (looked up, not found) or `off`.
fn cache_state(ctx: &Ctx) -> &'static str {
    if ctx.reply.cache_hit {
        "hit"
    } else if ctx.reply.cache_fill.is_some() {
        "miss"
    } else {
        "off"
    }
}

/// A failed call's bodies as the log keeps them: no client key, no provider key,
/// each cut at `logs.max_body`.
fn failed_bodies(snap: &Runtime, ctx: &Ctx, gateway: &str) -> Box<FailedBodies> {
    let cap = snap.file.logs.max_body.0 as usize;
    let key_field = snap
        .gateways
        .iter()
        .find(|g| g.name == gateway)
        .and_then(|g| g.auth.as_ref())
        .and_then(|a| match &a.position {
            KeyPosition::Body(field) => Some(field.as_str()),
            _ => None,
        });
    let provider_keys = snap
        .channels
        .iter()
        .find(|c| c.name == ctx.tries.channel)
        .map(|c| c.keys.as_slice())
        .unwrap_or_default();
    Box::new(FailedBodies {
        request: ctx
            .route
            .body
            .as_deref()
            .map(|b| calllog::kept_request_body(b, key_field, cap)),
        error: ctx
            .reply
            .error_body
            .as_deref()
            .map(|b| calllog::kept_error_body(b, provider_keys, cap)),
    })
}

pub fn record(state: &AppState, ctx: &Ctx, pingora_error: Option<&pingora_error::Error>) {
    let m = &state.metrics;
    let gateway = ctx.route.gateway.as_deref().unwrap_or("-");
    let elapsed = ctx.started.elapsed();
    let status = if ctx.reply.status == 0 && pingora_error.is_some() {
        0
    } else {
        ctx.reply.status
    };
    let series = m.series(gateway, &ctx.route.model_label, &ctx.tries.channel);
    series.request(m, status).inc();
    series.duration(m).observe(elapsed.as_secs_f64());
    if let Some(fb) = ctx.reply.first_byte {
        series.ttft(m).observe(fb.as_secs_f64());
    }
    if let Some(u) = &ctx.reply.usage {
        series.tokens(m, false).inc_by(u.prompt_tokens);
        series.tokens(m, true).inc_by(u.completion_tokens);
    }
    account(state, ctx, gateway, status, elapsed);
    let (prompt, completion, estimated) = ctx
        .reply
        .usage
        .map(|u| (u.prompt_tokens, u.completion_tokens, u.estimated))
        .unwrap_or((0, 0, false));
    let endpoint = ctx.route.endpoint.map(|e| e.as_str()).unwrap_or("-");
    let cache = match cache_state(ctx) {
        "off" => "-",
        c => c,
    };
    let latency_ms = elapsed.as_secs_f64() * 1e3;
    let ttft_ms = ctx.reply.first_byte.map(|d| d.as_secs_f64() * 1e3);
    let error = ctx
        .reply
        .error
        .as_deref()
        .or(pingora_error.map(|_| "proxy error"))
        .unwrap_or("");
    if status >= 500 || ctx.reply.broken {
        tracing::warn!(
            target: "weir::access", gateway, endpoint, model = %ctx.route.model_label, channel = %ctx.tries.channel,
            status, stream = ctx.route.stream, latency_ms, ttft_ms, attempts = ctx.tries.attempts, retries = ctx.tries.retries,
            failovers = ctx.tries.failovers, prompt_tokens = prompt, completion_tokens = completion, estimated,
            client_gone = ctx.reply.client_gone, cache, error, "request"
        );
    } else if tracing::enabled!(target: "weir::access", tracing::Level::INFO) {
        // The common case, written without tracing's field machinery: at 20k
        // requests/s the generic formatter cost 8% of throughput.
        let line = AccessLine {
            gateway,
            endpoint,
            model: &ctx.route.model_label,
            channel: &ctx.tries.channel,
            status,
            stream: ctx.route.stream,
            latency_ms,
            ttft_ms,
            attempts: ctx.tries.attempts,
            retries: ctx.tries.retries,
            failovers: ctx.tries.failovers,
            prompt_tokens: prompt,
            completion_tokens: completion,
            estimated,
            client_gone: ctx.reply.client_gone,
            cache,
            error,
        };
        // The request's own snapshot: no second config load per request.
        let format = ctx
            .snapshot
            .as_ref()
            .map(|s| s.server().log_format)
            .unwrap_or(weir_filters::config::LogFormat::Text);
        crate::logbuf::access(&line, format);
    }
}
