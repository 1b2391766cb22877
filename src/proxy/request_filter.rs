//! The `request_filter` phase: route to a gateway and endpoint, read and check the
//! body, then run the failover loop (upstream_peer) and relay the answer
//! (response_body). Weir answers every request here (`proxy/mod.rs` writes the
//! access line and keeps the connection alive afterwards).

use super::admission::{admit, authenticate, key_from_request, Caller};
use super::ctx::Ctx;
use super::response_body::{relay, RelayPlan};
use super::upstream_peer::{
    discard, exchange, judge, judge_error, note_attempt, AttemptError, Outbound,
};
use super::{respond, Failure};
use crate::cache::CachedAnswer;
use crate::health::HealthId;
use crate::state::AppState;
use bytes::{Bytes, BytesMut};
use pingora_core::protocols::http::ServerSession as Session;
use rand::Rng;
use rand::SeedableRng;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use weir_filters::adapters;
use weir_filters::auth::{remove_query_param, KeyPosition};
use weir_filters::cache_key::{cache_key, KeyContext};
use weir_filters::config::{CacheModels, CachePolicy};
use weir_filters::config::{Gateway, Runtime};
use weir_filters::health::Admission;
use weir_filters::request_body::JsonBody;
use weir_filters::route::{classify, Endpoint};
use weir_filters::upstream_peer::{BackoffPolicy, Failover, Target, Verdict};
use weir_filters::GatewayError;

pub async fn handle(state: &AppState, session: &mut Session, ctx: &mut Ctx) -> Result<(), Failure> {
    let snap = state.snapshot();
    ctx.snapshot = Some(snap.clone());
    let method = session.req_header().method.as_str().to_string();
    let path = session.req_header().uri.path().to_string();
    let query = session.req_header().uri.query().map(str::to_string);

    let (gateway, rest) = snap
        .gateway_for(&path)
        .ok_or_else(|| GatewayError::RouteNotFound {
            method: method.clone(),
            path: path.clone(),
        })?;
    ctx.gateway = Some(gateway.name.clone());
    if !gateway.active {
        return Err(GatewayError::GatewayInactive(gateway.name.clone()).into());
    }
    if gateway.expires_at.is_some_and(|t| t <= SystemTime::now()) {
        return Err(GatewayError::GatewayExpired(gateway.name.clone()).into());
    }
    let endpoint = classify(&method, rest, &path)?;
    ctx.endpoint = Some(endpoint);

    // Authentication, unless the key travels in the body (then after it is read).
    let client_ip = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let body_key = match &gateway.auth {
        Some(auth) => match &auth.position {
            KeyPosition::Body(field) => Some(field.clone()),
            _ => {
                let key = key_from_request(auth, &session.req_header().headers, query.as_deref());
                let caller = authenticate(state, auth, key.as_deref())?;
                ctx.identity.clone_from(&caller.identity);
                ctx.key_id = caller.key.as_ref().map(|k| k.id);
                (ctx.rate, ctx.rate_charge) =
                    admit(state, gateway, &caller, key.as_deref(), client_ip)?;
                ctx.caller = Some(caller);
                None
            }
        },
        None => {
            let caller = Caller::anonymous();
            (ctx.rate, ctx.rate_charge) = admit(state, gateway, &caller, None, client_ip)?;
            ctx.caller = Some(caller);
            None
        }
    };
    match endpoint {
        Endpoint::ListModels | Endpoint::GetModel if body_key.is_some() => Err(GatewayError::InvalidKey(
            "this gateway takes its key from the request body; list models with a POST-less client is not possible"
                .into(),
        )
        .into()),
        Endpoint::ListModels => list_models(session, ctx, &snap, gateway).await,
        Endpoint::GetModel => {
            let id = rest.trim_end_matches('/').trim_start_matches("/models/");
            get_model(session, ctx, &snap, gateway, id).await
        }
        _ => {
            let mut rest_q = rest.to_string();
            // A key passed as a query parameter never travels upstream.
            let upstream_query = match (&query, gateway.auth.as_ref().map(|a| &a.position)) {
                (Some(q), Some(KeyPosition::Arg(name))) => Some(remove_query_param(q, name)),
                (q, _) => q.clone(),
            };
            if let Some(q) = upstream_query.filter(|q| !q.is_empty()) {
                rest_q.push('?');
                rest_q.push_str(&q);
            }
            let raw = read_body(session, snap.server().max_body.0).await?;
            let request = Request {
                gateway,
                endpoint,
                rest: &rest_q,
                body_key: body_key.as_deref(),
                client_ip,
            };
            proxy(state, session, ctx, &snap, request, raw).await
        }
    }
}

/// What `proxy` needs to know about the request beyond its body.
struct Request<'a> {
    gateway: &'a Gateway,
    endpoint: Endpoint,
    /// Path after `/v1`, with the query to forward.
    rest: &'a str,
    /// The body field that carries the key, for `body:` gateways.
    body_key: Option<&'a str>,
    client_ip: Option<std::net::IpAddr>,
}

fn model_object(id: &str) -> serde_json::Value {
    serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": "weir"})
}

/// The models this caller may use on this gateway.
fn visible_models(snap: &Runtime, gateway: &Gateway, caller: Option<&Caller>) -> Vec<String> {
    let group = caller.map(|c| c.group.as_str()).unwrap_or("default");
    let mut models = snap.list_models(gateway, group);
    if let Some(c) = caller {
        models.retain(|m| c.may_use(m, m));
    }
    models
}

async fn list_models(
    session: &mut Session,
    ctx: &mut Ctx,
    snap: &Runtime,
    gateway: &Gateway,
) -> Result<(), Failure> {
    let data: Vec<serde_json::Value> = visible_models(snap, gateway, ctx.caller.as_ref())
        .iter()
        .map(|m| model_object(m))
        .collect();
    let body = serde_json::to_vec(&serde_json::json!({"object": "list", "data": data}))
        .unwrap_or_default();
    respond::json(session, ctx, 200, body, &[])
        .await
        .map_err(Failure::Abort)
}

async fn get_model(
    session: &mut Session,
    ctx: &mut Ctx,
    snap: &Runtime,
    gateway: &Gateway,
    id: &str,
) -> Result<(), Failure> {
    if !visible_models(snap, gateway, ctx.caller.as_ref())
        .iter()
        .any(|m| m == id)
    {
        return Err(GatewayError::ModelNotFound(id.to_string()).into());
    }
    let body = serde_json::to_vec(&model_object(id)).unwrap_or_default();
    respond::json(session, ctx, 200, body, &[])
        .await
        .map_err(Failure::Abort)
}

/// Reads the whole body, refusing more than `max` bytes (413) before reading it
/// when `Content-Length` already says so.
async fn read_body(session: &mut Session, max: u64) -> Result<Bytes, Failure> {
    let too_large = |session: &mut Session| {
        // The rest of the body is never read: the connection cannot be reused.
        session.set_keepalive(None);
        Failure::from(GatewayError::BodyTooLarge { limit: max })
    };
    let declared = session
        .req_header()
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large(session));
    }
    // We read the body ourselves, so we answer `Expect: 100-continue` ourselves too
    // (curl sends it for bodies over 1 MiB and would otherwise wait a second).
    let expects_continue = session.req_header().version == http::Version::HTTP_11
        && session
            .req_header()
            .headers
            .get("expect")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        if let Err(e) = session.write_continue_response().await {
            return Err(Failure::Abort(e));
        }
    }
    // Trust a declared length only so far: the buffer grows as bytes really arrive.
    let mut buf =
        BytesMut::with_capacity(declared.unwrap_or(16 * 1024).min(max).min(1024 * 1024) as usize);
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if (buf.len() + chunk.len()) as u64 > max {
                    return Err(too_large(session));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                session.set_keepalive(None);
                return Err(GatewayError::BadRequest(format!(
                    "cannot read the request body: {}",
                    e.etype().as_str()
                ))
                .into());
            }
        }
    }
    Ok(buf.freeze())
}

/// The upstream body for one upstream model name: the client's bytes untouched when
/// nothing changes, otherwise the rewritten body, made once per distinct model.
///
/// Order of rewrites: the key field out (G2), the prompt template (G6), usage asked
/// for (P9), then per upstream model: the model name (P6), `param_map`, then
/// `param_fixed` (G7), so a gateway can still map or pin the model a channel chose.
struct Bodies<'a> {
    raw: Bytes,
    parsed: JsonBody,
    client_model: String,
    rewritten: bool,
    made: Vec<(String, Bytes, String)>,
    gateway: &'a Gateway,
}

impl Bodies<'_> {
    /// The body for a channel's upstream model, and the model it finally names
    /// (`param_map`/`param_fixed` may have changed it; adapters put it in URLs).
    fn for_model(&mut self, model: &str) -> Result<(Bytes, String), GatewayError> {
        if !self.rewritten && model == self.client_model {
            return Ok((self.raw.clone(), model.to_string()));
        }
        if let Some((_, b, m)) = self.made.iter().find(|(m, _, _)| m == model) {
            return Ok((b.clone(), m.clone()));
        }
        self.parsed.set("model", &model)?;
        self.parsed.map_params(&self.gateway.param_map)?;
        self.parsed.fix_params(&self.gateway.param_fixed)?;
        let effective = self
            .parsed
            .get_path("model")
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| model.to_string());
        let b = self.parsed.to_bytes();
        self.made
            .push((model.to_string(), b.clone(), effective.clone()));
        Ok((b, effective))
    }
}

#[allow(clippy::too_many_arguments)]
async fn proxy(
    state: &AppState,
    session: &mut Session,
    ctx: &mut Ctx,
    snap: &Arc<Runtime>,
    req: Request<'_>,
    raw: Bytes,
) -> Result<(), Failure> {
    let Request {
        gateway,
        endpoint,
        rest,
        body_key,
        client_ip,
    } = req;
    let mut parsed = JsonBody::parse(&raw)?;
    let mut rewritten = false;
    if let Some(field) = body_key {
        // G2 `body:FIELD`: the key is taken out before the body goes upstream.
        let key = parsed.take_string(field);
        rewritten = true;
        let auth = gateway
            .auth
            .as_ref()
            .ok_or_else(|| GatewayError::Internal("body key without auth".into()))?;
        let caller = authenticate(state, auth, key.as_deref())?;
        ctx.identity.clone_from(&caller.identity);
        ctx.key_id = caller.key.as_ref().map(|k| k.id);
        (ctx.rate, ctx.rate_charge) = admit(state, gateway, &caller, key.as_deref(), client_ip)?;
        ctx.caller = Some(caller);
    }
    let caller = ctx.caller.clone().unwrap_or_else(Caller::anonymous);
    let facts = parsed.facts()?;
    ctx.stream = facts.stream;
    ctx.requested_model = Some(facts.model.clone());
    let (mut routes, label) = snap
        .routes(gateway, &facts.model, &caller.group)
        .ok_or_else(|| GatewayError::ModelNotFound(facts.model.clone()))?;
    // Only channels whose provider has this endpoint (Anthropic and Gemini serve chat).
    routes.retain(|r| adapters::supports(snap.channels[r.channel].kind, endpoint));
    if routes.is_empty() {
        return Err(GatewayError::BadRequest(format!(
            "`{}` is not served for the model `{}`: its channels' providers serve chat completions only",
            endpoint.as_str(),
            facts.model
        ))
        .into());
    }
    if !caller.may_use(&facts.model, &label) {
        return Err(GatewayError::Forbidden {
            code: "model_not_allowed",
            message: format!(
                "this key may not use the model `{}`; an admin can grant it to the key or its group",
                facts.model
            ),
        }
        .into());
    }
    ctx.model_label = label;

    // P10: an identical earlier answer, when this model is cached.
    if let Some(policy) = &snap.cache {
        if cacheable(
            state,
            snap,
            policy,
            endpoint,
            &facts.model,
            &ctx.model_label,
        ) {
            let route_names: Vec<(&str, &str)> = routes
                .iter()
                .map(|r| {
                    (
                        snap.channels[r.channel].name.as_str(),
                        r.upstream_model.as_str(),
                    )
                })
                .collect();
            let cx = KeyContext {
                gateway: &gateway.name,
                rewrites: &gateway.rewrite_digest,
                endpoint: endpoint.as_str(),
                query: rest.split_once('?').map(|(_, q)| q).unwrap_or(""),
                model: &facts.model,
                routes: &route_names,
            };
            let key = cache_key(&cx, &parsed);
            let slot = rand::thread_rng().gen_range(0..policy.max_per_request);
            let labels = [gateway.name.as_str(), ctx.model_label.as_str()];
            if let Some(hit) = state.cache.get(&key, slot).await {
                state
                    .metrics
                    .cache
                    .with_label_values(&[labels[0], labels[1], "hit"])
                    .inc();
                ctx.cache_hit = true;
                return serve_cached(session, ctx, &hit).await;
            }
            state
                .metrics
                .cache
                .with_label_values(&[labels[0], labels[1], "miss"])
                .inc();
            ctx.cache_fill = Some((key, slot));
        }
    }

    if let Some(template) = &gateway.prompt_template {
        rewritten |= parsed.apply_template(template)?;
    }
    rewritten |= !gateway.param_map.is_empty() || !gateway.param_fixed.is_empty();

    // P9: a stream always asks for usage; the client sees it only if it asked too.
    let ask_usage = facts.stream && endpoint.streams_chunks();
    let strip_usage = ask_usage && !facts.client_wants_usage;
    if strip_usage {
        parsed.ensure_stream_usage()?;
        rewritten = true;
    }
    let mut bodies = Bodies {
        raw,
        parsed,
        client_model: facts.model.clone(),
        rewritten,
        made: Vec::new(),
        gateway,
    };
    let accept = session
        .req_header()
        .headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);

    let server = snap.server();
    let policy = AppState::health_policy(snap);
    let backoff = BackoffPolicy {
        base: server.backoff.base.0,
        max: server.backoff.max.0,
    };
    // A Send rng: the loop awaits. It only spreads load over weighted channels, so a
    // small fast one, seeded from the thread rng (no syscall), is enough.
    let mut rng = rand::rngs::SmallRng::from_rng(rand::thread_rng())
        .map_err(|e| GatewayError::Internal(e.to_string()))?;
    let mut failover = Failover::new(
        &routes,
        &snap.channels,
        gateway.retries.map(|r| r + 1),
        &mut rng,
    );
    let mut last: Option<Verdict> = None;
    // What the client is told was tried, and the fuller story for the log.
    let mut tried = String::new();
    let mut tried_log = String::new();
    // Set while every attempt so far found a channel that cannot serve the endpoint.
    let mut refused: Option<GatewayError> = None;
    let (mut all_rate_limited, mut all_timeouts, mut any_attempt) = (true, true, false);
    let mut shortest_wait: Option<Duration> = None;

    loop {
        let mut granted: Vec<HealthId> = Vec::new();
        let attempt = {
            let mut admit = |t: Target| {
                let (id, probe) = match t {
                    Target::Channel(c) => {
                        let ch = &snap.channels[c];
                        (
                            HealthId::channel(&ch.name),
                            ch.connect_timeout + ch.first_byte_timeout,
                        )
                    }
                    Target::Key { channel, key } => {
                        let ch = &snap.channels[channel];
                        (
                            HealthId::key(&ch.name, &ch.keys[key]),
                            ch.connect_timeout + ch.first_byte_timeout,
                        )
                    }
                };
                match state.health.admit(&id, probe) {
                    Ok(Admission::Trial) => {
                        granted.push(id);
                        Ok(())
                    }
                    Ok(_) => Ok(()),
                    Err(wait) => Err(wait),
                }
            };
            failover.next(
                last,
                &routes,
                &snap.channels,
                &backoff,
                &mut admit,
                &mut rng,
            )
        };
        let used = attempt.map(|a| {
            let ch = &snap.channels[a.channel];
            (
                HealthId::channel(&ch.name),
                a.key.map(|k| HealthId::key(&ch.name, &ch.keys[k])),
            )
        });
        // Trials granted while looking for this attempt but not part of it go back.
        for id in granted {
            let part_of_it = used
                .as_ref()
                .is_some_and(|(c, k)| *c == id || k.as_ref() == Some(&id));
            if !part_of_it {
                state.health.release_trial(&id);
            }
        }
        let Some(attempt) = attempt else { break };
        let channel = &snap.channels[attempt.channel];
        let key = attempt.key.map(|k| channel.keys[k].as_str());
        if attempt.is_retry {
            ctx.retries += 1;
            state
                .metrics
                .retries
                .with_label_values(&[gateway.name.as_str(), channel.name.as_str()])
                .inc();
        }
        if attempt.is_failover {
            ctx.failovers += 1;
            state
                .metrics
                .failovers
                .with_label_values(&[gateway.name.as_str(), ctx.model_label.as_str()])
                .inc();
        }
        if !attempt.delay.is_zero() {
            let gone = tokio::select! {
                _ = tokio::time::sleep(attempt.delay) => false,
                _ = session.read_body_or_idle(true) => true,
            };
            if gone {
                if let Some((c, k)) = &used {
                    state.health.release_trial(c);
                    if let Some(k) = k {
                        state.health.release_trial(k);
                    }
                }
                ctx.client_gone = true;
                return Err(client_left());
            }
        }
        note_attempt(ctx, channel);
        any_attempt = true;
        let (body, upstream_model) = bodies.for_model(&routes[attempt.route].upstream_model)?;
        let out = Outbound {
            endpoint,
            rest,
            body,
            accept: accept.as_deref(),
            upstream_model: &upstream_model,
            client_model: &facts.model,
        };
        let started = Instant::now();
        // Named in the log only when the attempt failed.
        let key_label = || {
            key.map(|k| format!(" key {}", weir_filters::config::key_hint(k)))
                .unwrap_or_default()
        };
        // Boxed, like the connect and release futures: a request's future is kept for
        // as long as its stream is relayed, and should not reserve room for them.
        match Box::pin(exchange(
            state,
            session,
            channel,
            key,
            &out,
            server.dns_ttl.0,
        ))
        .await
        {
            Ok(answer) => {
                refused = None;
                let verdict = judge(state, &policy, backoff.max, channel, key, &answer);
                if matches!(verdict, Verdict::Success | Verdict::Final) {
                    let plan = RelayPlan {
                        strip_usage,
                        expect_done: endpoint.streams_chunks(),
                        deadline: started + channel.total_timeout,
                        request: &bodies.parsed,
                        gateway: &gateway.name,
                        health: &policy,
                        translate: adapters::translates(channel.kind).then_some(channel.kind),
                        cache: snap.cache.as_ref(),
                        model: &facts.model,
                    };
                    return relay(state, session, ctx, answer, plan).await;
                }
                let status = answer.status();
                all_timeouts = false;
                if status != 429 {
                    all_rate_limited = false;
                }
                let code = Box::pin(discard(state, answer)).await;
                let _ = write!(tried, "{}{}: HTTP {status}", sep(&tried), channel.name);
                let _ = write!(
                    tried_log,
                    "{}{}: HTTP {status}",
                    sep(&tried_log),
                    channel.name
                );
                if let Some(code) = code {
                    let _ = write!(tried_log, " ({code})");
                }
                tried_log.push_str(&key_label());
                if let Verdict::Retryable {
                    retry_after: Some(ra),
                    ..
                } = verdict
                {
                    shortest_wait = Some(shortest_wait.map_or(ra, |s| s.min(ra)));
                }
                last = Some(verdict);
            }
            Err(e @ AttemptError::ClientGone) => {
                judge_error(state, &policy, channel, key, &e);
                ctx.client_gone = true;
                return Err(client_left());
            }
            Err(AttemptError::Refused(e)) => {
                // This channel's provider lacks the endpoint: try another channel; if
                // none can, the client gets this answer. Nothing was learned.
                state
                    .health
                    .release_trial(&HealthId::channel(&channel.name));
                if let Some(k) = key {
                    state.health.release_trial(&HealthId::key(&channel.name, k));
                }
                refused.get_or_insert(e);
                last = Some(Verdict::Unserved);
            }
            Err(e) => {
                refused = None;
                all_rate_limited = false;
                if !matches!(e, AttemptError::Timeout(_)) {
                    all_timeouts = false;
                }
                let _ = write!(tried, "{}{}: {}", sep(&tried), channel.name, short(&e));
                let _ = write!(
                    tried_log,
                    "{}{}: {}{}",
                    sep(&tried_log),
                    channel.name,
                    e.describe(),
                    key_label()
                );
                last = Some(judge_error(state, &policy, channel, key, &e));
            }
        }
    }

    // Nothing answered well.
    for (c, wait) in &failover.skipped {
        shortest_wait = Some(shortest_wait.map_or(*wait, |s| s.min(*wait)));
        let note = format!(
            "{}: suspended for {}s",
            snap.channels[*c].name,
            wait.as_secs().max(1)
        );
        let _ = write!(tried, "{}{note}", sep(&tried));
        let _ = write!(tried_log, "{}{note}", sep(&tried_log));
    }
    // The log gets upstream error codes and key hints; the client does not.
    ctx.error = Some(format!(
        "no usable answer for `{}`: {tried_log}",
        facts.model
    ));
    let model = facts.model;
    let detail = if tried.is_empty() {
        "no channel could be tried".to_string()
    } else {
        format!("tried {tried}")
    };
    let retry_after_secs = shortest_wait
        .map(|d| d.as_secs_f64().ceil() as u64)
        .unwrap_or(1);
    if let Some(e) = refused {
        return Err(e.into());
    }
    let e = if !any_attempt {
        GatewayError::NoChannelAvailable {
            model,
            detail,
            retry_after_secs,
        }
    } else if all_rate_limited {
        GatewayError::UpstreamRateLimited {
            model,
            detail,
            retry_after_secs,
        }
    } else if all_timeouts {
        GatewayError::UpstreamTimeout { model, detail }
    } else {
        GatewayError::UpstreamFailed { model, detail }
    };
    Err(e.into())
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
async fn serve_cached(
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
        if let Some(r) = ctx.rate {
            super::respond::rate_headers(&mut h, &r)?;
        }
        Ok(h)
    };
    let h = build().map_err(Failure::Abort)?;
    ctx.status = 200;
    let written = async {
        session.write_response_header(Box::new(h)).await?;
        session.write_response_body(hit.body.clone(), true).await
    };
    ctx.first_byte = Some(ctx.started.elapsed());
    written.await.map_err(|e| {
        ctx.client_gone = true;
        Failure::Abort(e)
    })
}

fn client_left() -> Failure {
    Failure::Abort(pingora_error::Error::explain(
        pingora_error::ErrorType::ConnectionClosed,
        "client went away while waiting for the upstream",
    ))
}

fn sep(s: &str) -> &'static str {
    if s.is_empty() {
        ""
    } else {
        "; "
    }
}

/// A short reason without addresses or internals.
fn short(e: &AttemptError) -> &'static str {
    match e {
        AttemptError::Connect(_) => "connect failed",
        AttemptError::Timeout(_) => "timed out",
        AttemptError::Io(_) => "connection broke before the answer",
        AttemptError::ClientGone => "client went away",
        AttemptError::Refused(_) => "cannot serve this endpoint",
    }
}
