//! The response cache on the request path (P10): an identical earlier answer is
//! replayed, not billed; a miss notes where a clean answer is to be stored.

use super::ctx::Ctx;
use super::failure::Failure;
use super::request::Request;
use crate::cache::CachedAnswer;
use crate::state::AppState;
use pingora_core::protocols::http::ServerSession as Session;
use rand::Rng;
use weir_filters::cache_key::{cache_key, KeyContext};
use weir_filters::config::{CacheModels, CachePolicy, Route, Runtime};
use weir_filters::request_body::JsonBody;
use weir_filters::route::Endpoint;

/// An earlier answer to the same request, when this model is cached. On a miss,
/// `ctx.reply.cache_fill` says where the answer goes once it completed cleanly.
pub async fn lookup(
    state: &AppState,
    ctx: &mut Ctx,
    req: &Request<'_>,
    routes: &[Route],
    model: &str,
    body: &JsonBody,
) -> Option<std::sync::Arc<CachedAnswer>> {
    let snap = req.snap;
    let policy = snap.cache.as_ref()?;
    if !cacheable(
        state,
        snap,
        policy,
        req.endpoint,
        model,
        &ctx.route.model_label,
    ) {
        return None;
    }
    let route_names: Vec<(&str, &str)> = routes
        .iter()
        .map(|r| {
            let channel = &snap.channels[r.channel];
            (channel.name.as_str(), r.upstream_model.as_str())
        })
        .collect();
    // A Messages or Responses client's answer is kept as it reads it, under its
    // own request (which says more than its chat translation).
    let own;
    let (endpoint, body) = match &req.inbound {
        Some(i) => {
            own = JsonBody::parse(&i.raw).ok()?;
            (i.dialect.endpoint().as_str(), &own)
        }
        None => (req.endpoint.as_str(), body),
    };
    let cx = KeyContext {
        gateway: &req.gateway.name,
        rewrites: &req.gateway.rewrite_digest,
        endpoint,
        query: req.rest.split_once('?').map(|(_, q)| q).unwrap_or(""),
        model,
        routes: &route_names,
    };
    let key = cache_key(&cx, body);
    let slot = rand::thread_rng().gen_range(0..policy.max_per_request);
    let hit = state.cache.get(&key, slot).await;
    let outcome = if hit.is_some() { "hit" } else { "miss" };
    state
        .metrics
        .cache
        .with_label_values(&[
            req.gateway.name.as_str(),
            ctx.route.model_label.as_str(),
            outcome,
        ])
        .inc();
    if hit.is_some() {
        ctx.reply.cache_hit = true;
    } else {
        ctx.reply.cache_fill = Some((key, slot));
    }
    hit
}

/// Whether answers for this request may be cached: chat, completions and
/// embeddings of a model the cache policy names (or `*`, or `free` ones priced 0).
fn cacheable(
    state: &AppState,
    snap: &Runtime,
    policy: &CachePolicy,
    endpoint: Endpoint,
    requested: &str,
    label: &str,
) -> bool {
    if !matches!(
        endpoint,
        Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings
    ) {
        return false;
    }
    if policy.flagged.contains(requested) || policy.flagged.contains(label) {
        return true;
    }
    match &policy.models {
        CacheModels::All => true,
        CacheModels::Free => state.accounts.price(snap, &[requested, label]) == (0.0, 0.0),
        CacheModels::Names(names) => names.iter().any(|n| n == requested || n == label),
    }
}

/// Answers from the cache: the stored bytes, replayed as SSE or JSON, not billed.
pub async fn serve(
    session: &mut Session,
    ctx: &mut Ctx,
    hit: &CachedAnswer,
) -> Result<(), Failure> {
    let build = || -> pingora_error::Result<pingora_http::ResponseHeader> {
        let mut h = pingora_http::ResponseHeader::build_no_case(200, Some(6))?;
        h.insert_header("content-type", hit.content_type.as_str())?;
        h.insert_header("x-weir-cache", "hit")?;
        if hit.stream {
            h.insert_header("transfer-encoding", "chunked")?;
        } else {
            h.insert_header("content-length", hit.body.len().to_string())?;
        }
        if let Some(r) = ctx.who.rate {
            super::respond::rate_headers(&mut h, &r)?;
        }
        Ok(h)
    };
    let h = build().map_err(Failure::Abort)?;
    ctx.reply.status = 200;
    let written = async {
        session.write_response_header(Box::new(h)).await?;
        session.write_response_body(hit.body.clone(), true).await
    };
    ctx.reply.first_byte = Some(ctx.started.elapsed());
    written.await.map_err(|e| {
        ctx.reply.client_gone = true;
        Failure::Abort(e)
    })
}
