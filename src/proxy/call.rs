//! One proxied request, after intake: admit a key that travels in the body, route
//! the model, answer from the cache when it can, prepare the upstream body, then
//! the attempts (`dispatch`).

use super::admission::admit_caller;
use super::bodies::Bodies;
use super::ctx::Ctx;
use super::failure::Failure;
use super::request::Request;
use super::{cached, dispatch};
use crate::state::AppState;
use bytes::Bytes;
use pingora_core::protocols::http::ServerSession as Session;
use weir_filters::adapters;
use weir_filters::config::Route;
use weir_filters::request_body::{self, JsonBody};
use weir_filters::GatewayError;

pub async fn proxy(
    state: &AppState,
    session: &mut Session,
    ctx: &mut Ctx,
    req: &Request<'_>,
    raw: Bytes,
) -> Result<(), Failure> {
    let mut parsed = JsonBody::parse(&raw)?;
    if let Some(field) = req.body_key {
        // G2 `body:FIELD`: the key is taken out before the body goes upstream.
        let key = parsed.take_string(field);
        admit_caller(state, ctx, req.gateway, key.as_deref(), req.client_ip).await?;
    }
    let mut facts = parsed.facts()?;
    // Before any channel sees it: a body the provider would refuse says nothing
    // about the channel, and must not count against its health.
    weir_filters::shape::check(req.endpoint, &parsed)?;
    if let Some(to) = req.gateway.mapped_model(&facts.model) {
        // G7 before routing: the mapped name is what is served, granted, priced.
        parsed.set("model", &to)?;
        facts.model = to.to_string();
    }
    ctx.route.stream = facts.stream;
    ctx.route.requested_model = Some(facts.model.clone());
    let mut routes = route(ctx, req, &facts.model)?;
    if let Some(e) = req.inbound.as_ref().and_then(|i| i.untranslatable.as_ref()) {
        // Only a channel that takes the request as it is can serve it.
        routes.retain(|r| dispatch::native(req, &req.snap.channels[r.channel]).is_some());
        if routes.is_empty() {
            return Err(e.clone().into());
        }
    }
    check_media(state, req, &facts.model, &ctx.route.model_label, &parsed)?;
    // Before the cache: an answer kept for a request is no reason to serve one
    // the rules now refuse.
    super::safety::check_request(state, ctx, req, &parsed).await?;
    let count_only = req.inbound.as_ref().is_some_and(|a| a.count_only);
    if count_only {
        routes.retain(|r| dispatch::native(req, &req.snap.channels[r.channel]).is_some());
        if routes.is_empty() {
            return count_tokens(session, ctx, &parsed).await;
        }
    } else if let Some(hit) = cached::lookup(state, ctx, req, &routes, &facts.model, &parsed).await
    {
        return cached::serve(session, ctx, &hit).await;
    }
    let mut bodies = Bodies::prepare(raw, parsed, &facts, req, req.body_key.is_some())?;
    if let Some(table) = &bodies.masked {
        note_masked(state, ctx, req, table, &bodies);
    }
    dispatch::run(state, session, ctx, req, &routes, &mut bodies).await
}

/// `count_tokens` where no Anthropic channel can count natively: our tokenizer's
/// count of the prompt, as Anthropic answers it. Nothing is billed.
async fn count_tokens(
    session: &mut Session,
    ctx: &mut Ctx,
    body: &JsonBody,
) -> Result<(), Failure> {
    let (text, messages) = request_body::prompt_text(body);
    let count = move || weir_filters::usage::estimate(&text, messages, "").prompt_tokens;
    let n = tokio::task::spawn_blocking(count)
        .await
        .map_err(|e| GatewayError::Internal(e.to_string()))?;
    let answer = serde_json::json!({ "input_tokens": n })
        .to_string()
        .into_bytes();
    let extra = [("x-weir-estimated", "true".to_string())];
    super::respond::json(session, ctx, 200, answer, &extra)
        .await
        .map_err(Failure::Abort)
}

/// Counts what masking found, and keeps only the masked body for the call log:
/// the values never leave the request.
fn note_masked(
    state: &AppState,
    ctx: &mut Ctx,
    req: &Request<'_>,
    table: &std::sync::Arc<weir_filters::masking::Table>,
    bodies: &Bodies<'_>,
) {
    for (detector, n) in &table.counts {
        state
            .metrics
            .masked
            .with_label_values(&[req.gateway.name.as_str(), detector.as_str()])
            .inc_by(*n);
    }
    ctx.route.masked = Some(table.clone());
    if ctx.route.body.is_some() {
        ctx.route.body = Some(bodies.parsed.to_bytes());
    }
}

/// An image or audio part to a model registered as text-only is refused (K3): the
/// name asked for, else the configured name it routed to. A model the registry
/// does not list is not checked (nor by the catch-all `default` entry, which only
/// prices).
fn check_media(
    state: &AppState,
    req: &Request<'_>,
    model: &str,
    label: &str,
    body: &JsonBody,
) -> Result<(), GatewayError> {
    let multimodal = state.accounts.multimodal(req.snap, model).or_else(|| {
        (label != weir_filters::config::CATCH_ALL_MODEL)
            .then(|| state.accounts.multimodal(req.snap, label))
            .flatten()
    });
    if multimodal == Some(false) && request_body::has_media(body) {
        return Err(GatewayError::ModelNotMultimodal(model.to_string()));
    }
    Ok(())
}

/// The routes that may serve this model for this caller, and the configured model
/// name it routed to (the metric label).
pub(super) fn route(
    ctx: &mut Ctx,
    req: &Request<'_>,
    model: &str,
) -> Result<Vec<Route>, GatewayError> {
    let snap = req.snap;
    let caller = ctx.who.caller.as_ref();
    let group = caller.map_or("default", |c| c.group.as_str());
    let (mut routes, label) = snap
        .routes(req.gateway, model, group)
        .ok_or_else(|| GatewayError::ModelNotFound(model.to_string()))?;
    // Only channels whose provider has this endpoint (Anthropic and Gemini serve chat).
    routes.retain(|r| adapters::supports(snap.channels[r.channel].kind, req.endpoint));
    if routes.is_empty() {
        return Err(GatewayError::BadRequest(format!(
            "`{}` is not served for the model `{model}`: its channels' providers serve chat completions only",
            req.endpoint.as_str(),
        )));
    }
    if !caller.is_none_or(|c| c.may_use(model, &label)) {
        return Err(GatewayError::Forbidden {
            code: "model_not_allowed",
            message: format!(
                "this key may not use the model `{model}`; an admin can grant it to the key or its group"
            ),
        });
    }
    ctx.route.model_label = label;
    Ok(routes)
}
