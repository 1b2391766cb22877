//! Dispatch: the failover plan's attempts, one at a time, until one answers well
//! enough to relay; otherwise the plan's final error. The plan
//! (`weir_filters::failover`) decides every step and keeps health; this file waits,
//! sends (`exchange`) and reports back.

use super::bodies::Bodies;
use super::ctx::Ctx;
use super::exchange::{discard, exchange, Outbound};
use super::failure::Failure;
use super::relay::{relay, stopped, RelayPlan};
use super::request::Inbound;
use super::request::Request;
use crate::state::AppState;
use pingora_core::protocols::http::ServerSession as Session;
use rand::SeedableRng;
use std::time::{Duration, Instant};
use weir_filters::adapters;
use weir_filters::config::{Channel, Route};
use weir_filters::failover::{Attempt, BackoffPolicy, Plan, Rules};
use weir_filters::health::HealthPolicy;
use weir_filters::GatewayError;

pub async fn run(
    state: &AppState,
    session: &mut Session,
    ctx: &mut Ctx,
    req: &Request<'_>,
    routes: &[Route],
    bodies: &mut Bodies<'_>,
) -> Result<(), Failure> {
    let snap = req.snap;
    let rules = rules(req);
    let mut plan = Plan::new(routes, &snap.channels, &state.health, rules, small_rng()?);
    let accept = session
        .req_header()
        .headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let dns_ttl = snap.server().dns_ttl.0;
    // A native Messages call carries the client's Anthropic headers (betas).
    let client_headers = match &req.inbound {
        Some(i) if i.dialect == super::request::Dialect::Messages => {
            let headers = session.req_header().headers.iter();
            adapters::anthropic::client_headers(
                headers.filter_map(|(n, v)| Some((n.as_str(), v.to_str().ok()?))),
            )
        }
        _ => Vec::new(),
    };
    let allowed = req
        .gateway
        .timeout
        .unwrap_or(snap.server().request_timeout.0);
    let deadline = ctx.started + allowed;
    // One wait for the graceful stop's cut for the whole request, the attempts and
    // the relayed answer alike: it registers once.
    let stop = stopped(state);
    tokio::pin!(stop);
    while let Some(attempt) = plan.next_attempt() {
        // A wait that would end past the deadline is not worth starting.
        if Instant::now() + attempt.delay >= deadline {
            return Err(out_of_time(
                ctx,
                &plan,
                allowed,
                bodies.client_model(),
                None,
            ));
        }
        count_attempt(state, ctx, req, &attempt);
        // Dropping the attempt (here or on any early return) gives its trials back.
        if !attempt.delay.is_zero() && left_while_waiting(session, attempt.delay).await {
            ctx.reply.client_gone = true;
            return Err(client_left());
        }
        let channel = attempt.channel;
        let native = native(req, channel);
        let (body, upstream_model) = match native {
            Some(a) => (
                native_body(&a.raw, attempt.upstream_model)?,
                attempt.upstream_model.to_string(),
            ),
            None => bodies.for_model(attempt.upstream_model)?,
        };
        let (endpoint, rest) = match native {
            Some(a) => (a.dialect.endpoint(), a.rest.as_str()),
            None => (req.endpoint, req.rest.as_str()),
        };
        let out = Outbound {
            client_headers: match native {
                Some(_) => &client_headers,
                None => &[],
            },
            endpoint,
            rest,
            body,
            accept: accept.as_deref(),
            upstream_model: &upstream_model,
            client_model: bodies.client_model(),
        };
        let started = Instant::now();
        // Boxed, like the connect and release futures: a request's future is kept for
        // as long as its stream is relayed, and should not reserve room for them.
        let sent = Box::pin(exchange(
            state,
            Some(&mut *session),
            channel,
            attempt.key,
            &out,
            dns_ttl,
        ));
        // The request's deadline cuts the attempt short: nothing is learned about a
        // channel that was not given its own timeouts (its trial goes back).
        let waited = tokio::select! {
            biased;
            r = tokio::time::timeout_at(deadline.into(), sent) => Some(r),
            () = stop.as_mut() => None,
        };
        let Some(waited) = waited else {
            // Cut by the stop while waiting for the answer: the client is told, the
            // row written; the channel did nothing wrong.
            count_outcome(state, channel, Some("stopped"));
            return Err(cut_at_stop(ctx, &plan, channel));
        };
        let Ok(sent) = waited else {
            count_outcome(state, channel, Some("deadline"));
            drop(attempt);
            let cut = Some(channel.name.as_str());
            return Err(out_of_time(ctx, &plan, allowed, bodies.client_model(), cut));
        };
        match sent {
            Ok(answer) => {
                let settled = plan.settle(attempt, answer.outcome());
                count_outcome(state, channel, settled.outcome);
                if settled.relays() {
                    note_answered(ctx, &plan, channel, &upstream_model, &answer, bodies);
                    let own = started + channel.total_timeout;
                    let mut how = relay_plan(req, bodies, channel, &rules, own.min(deadline));
                    if let Some(a) = native {
                        how.native(a.dialect);
                    }
                    how.channel_deadline = own <= deadline;
                    return relay(state, session, ctx, answer, how, stop.as_mut()).await;
                }
                if let Some(code) = Box::pin(discard(state, answer)).await {
                    plan.note_code(code);
                }
            }
            Err(e) => {
                let Some(outcome) = e.outcome() else {
                    ctx.reply.client_gone = true;
                    return Err(client_left());
                };
                let settled = plan.settle(attempt, outcome);
                count_outcome(state, channel, settled.outcome);
            }
        }
    }
    ctx.tries.tried = plan.tried(None);
    let (e, log) = plan.give_up(bodies.client_model());
    // The log gets upstream error codes and key hints; the client does not.
    ctx.reply.error = Some(log);
    Err(e.into())
}

/// The grace period of a graceful stop ended while `channel` was still to answer.
fn cut_at_stop(ctx: &mut Ctx, plan: &Plan<'_>, channel: &Channel) -> Failure {
    let tried = match plan.tried(None) {
        Some(t) => format!("{t}; {}: cut at the stop", channel.name),
        None => format!("{}: cut at the stop", channel.name),
    };
    let detail = format!(
        "the grace period ended before channel `{}` answered; retry the request",
        channel.name
    );
    ctx.reply.error = Some(format!("{detail} ({tried})"));
    ctx.tries.tried = Some(tried);
    GatewayError::ShuttingDown(detail).into()
}

/// The request's deadline passed before any answer: 504, with what was tried.
fn out_of_time(
    ctx: &mut Ctx,
    plan: &Plan<'_>,
    allowed: Duration,
    model: &str,
    cut: Option<&str>,
) -> Failure {
    let tried = match (plan.tried(None), cut) {
        (Some(t), Some(c)) => Some(format!("{t}; {c}: cut at the deadline")),
        (None, Some(c)) => Some(format!("{c}: cut at the deadline")),
        (t, None) => t,
    };
    let detail = format!(
        "the request's deadline of {} passed after {} attempt{}{}",
        humantime::format_duration(allowed),
        ctx.tries.attempts,
        if ctx.tries.attempts == 1 { "" } else { "s" },
        tried
            .as_deref()
            .map(|t| format!(" ({t})"))
            .unwrap_or_default(),
    );
    ctx.reply.error = Some(detail.clone());
    ctx.tries.tried = tried;
    GatewayError::UpstreamTimeout {
        model: model.to_string(),
        detail,
    }
    .into()
}

/// A Send rng: the attempt loop awaits. It only spreads load over weighted
/// channels, so a small fast one, seeded from the thread rng (no syscall), is enough.
pub(super) fn small_rng() -> Result<rand::rngs::SmallRng, GatewayError> {
    rand::rngs::SmallRng::from_rng(rand::thread_rng())
        .map_err(|e| GatewayError::Internal(e.to_string()))
}

/// The failover rules for this request: health and backoff from the server, the
/// attempt cap from the gateway.
pub(super) fn rules(req: &Request<'_>) -> Rules {
    let server = req.snap.server();
    Rules {
        health: HealthPolicy::from(&req.snap.server().health),
        backoff: BackoffPolicy {
            base: server.backoff.base.0,
            max: server.backoff.max.0,
        },
        max_attempts: req.gateway.retries.map(|r| r + 1),
    }
}

fn relay_plan<'a>(
    req: &'a Request<'_>,
    bodies: &'a Bodies<'_>,
    channel: &Channel,
    rules: &'a Rules,
    deadline: Instant,
) -> RelayPlan<'a> {
    RelayPlan {
        strip_usage: bodies.strip_usage,
        expect_done: req.endpoint.streams_chunks(),
        deadline,
        channel_deadline: true,
        request: &bodies.parsed,
        gateway: &req.gateway.name,
        health: &rules.health,
        translate: adapters::translates(channel.kind).then_some(channel.kind),
        cache: req.snap.cache.as_ref(),
        model: bodies.client_model(),
        restore: bodies
            .masked
            .as_ref()
            .filter(|_| req.gateway.masking.as_ref().is_some_and(|m| m.restore)),
        guard: req
            .gateway
            .safety
            .as_ref()
            .filter(|s| s.answers && req.endpoint.streams_chunks()),
        to_client: req
            .inbound
            .as_ref()
            .map(|i| (i.dialect, bodies.client_model())),
        moderate: answer_moderation(req),
        native_usage: false,
    }
}

/// The moderation endpoint for JSON answers, when the gateway asks for it.
fn answer_moderation<'a>(req: &'a Request<'_>) -> Option<super::safety::AnswerModeration<'a>> {
    let s = req.gateway.safety.as_ref().filter(|s| s.answers)?;
    let m = s.moderation.as_ref().filter(|m| m.answers)?;
    Some(super::safety::AnswerModeration {
        snap: req.snap,
        gateway: &req.gateway.name,
        masking: req.gateway.masking.as_deref(),
        moderation: m,
    })
}

/// A Messages or Responses request goes to a channel that speaks its API
/// (Anthropic, OpenAI) as the client sent it, unless the gateway must change the
/// body or read the answer (templates, parameter rules, masking, answer checks):
/// then as its chat translation.
pub(super) fn native<'r>(req: &'r Request<'_>, channel: &Channel) -> Option<&'r Inbound> {
    let g = req.gateway;
    let reads_answers = g.safety.as_ref().is_some_and(|s| s.answers);
    let plain = !g.rewrites() && g.masking.is_none() && !reads_answers;
    req.inbound
        .as_ref()
        .filter(|i| plain && channel.kind == i.dialect.native_kind())
}

/// The client's own body, naming the channel's model.
fn native_body(raw: &bytes::Bytes, model: &str) -> Result<bytes::Bytes, GatewayError> {
    let mut body = weir_filters::request_body::JsonBody::parse(raw)?;
    body.set("model", &model)?;
    Ok(body.to_bytes())
}

/// Counts the attempt in the request's story and in the retry and failover metrics.
fn count_attempt(state: &AppState, ctx: &mut Ctx, req: &Request<'_>, attempt: &Attempt<'_>) {
    let gateway = req.gateway.name.as_str();
    let channel = attempt.channel.name.as_str();
    if attempt.is_retry {
        ctx.tries.retries += 1;
        state
            .metrics
            .retries
            .with_label_values(&[gateway, channel])
            .inc();
    }
    if attempt.is_failover {
        ctx.tries.failovers += 1;
        state
            .metrics
            .failovers
            .with_label_values(&[gateway, ctx.route.model_label.as_str()])
            .inc();
    }
    ctx.tries.attempts += 1;
    ctx.tries.channel.clone_from(&attempt.channel.name);
    ctx.tries.upstream = attempt.channel.upstream.as_ref().map(|u| u.url.clone());
}

/// What the call log says of the answering attempt: the name it was sent, and the
/// attempts before it.
fn note_answered(
    ctx: &mut Ctx,
    plan: &Plan<'_>,
    channel: &Channel,
    upstream_model: &str,
    answer: &super::exchange::Answer,
    bodies: &Bodies<'_>,
) {
    if upstream_model != bodies.client_model() {
        ctx.route.upstream_model = Some(upstream_model.to_string());
    }
    ctx.tries.tried = plan.tried(Some((&channel.name, answer.status())));
}

fn count_outcome(state: &AppState, channel: &Channel, outcome: Option<&'static str>) {
    if let Some(outcome) = outcome {
        state
            .metrics
            .upstream_attempts
            .with_label_values(&[channel.name.as_str(), outcome])
            .inc();
    }
}

/// Waits out a backoff, watching the client: true when it left meanwhile.
async fn left_while_waiting(session: &mut Session, delay: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => false,
        _ = session.read_body_or_idle(true) => true,
    }
}

fn client_left() -> Failure {
    Failure::Abort(pingora_error::Error::explain(
        pingora_error::ErrorType::ConnectionClosed,
        "client went away while waiting for the upstream",
    ))
}
