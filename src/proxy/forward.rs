//! Requests passed on verbatim and streamed both ways, never held whole:
//! uploads (`multipart/form-data`: audio transcriptions, image edits) routed by
//! their `model` field, and what names no model (`GET`/`DELETE` of files and
//! batches, uploads and `POST`s without a `model`) to the gateway's
//! `passthrough` channel. Only the part of an upload before its `model` is held
//! (within `server.max_body`); the rest goes upstream as it arrives, so one
//! attempt serves it: there is no second copy to fail over with.

use super::ctx::Ctx;
use super::dispatch::small_rng;
use super::exchange::{self, Answer, AttemptError};
use super::failure::Failure;
use super::intake::declared_length;
use super::relay::{relay, stopped, RelayPlan};
use super::request::Request;
use crate::state::AppState;
use bytes::Bytes;
use pingora_core::protocols::http::ServerSession as Session;
use std::time::Instant;
use tokio::io::AsyncWriteExt;
use weir_filters::config::Route;
use weir_filters::failover::{Plan, Rules};
use weir_filters::health::HealthPolicy;
use weir_filters::multipart::{self, Scan};
use weir_filters::request_body::JsonBody;
use weir_filters::upstream_request::{self, Framing, RequestHead};
use weir_filters::GatewayError;

/// What is sent: the part of the body already read (maybe rewritten), and
/// whether more follows from the client.
struct Body {
    prefix: Bytes,
    rest_follows: bool,
    framing: Framing,
}

/// An upload: its `model` found in the first part of the body, the channel
/// routed for it, the rest streamed.
pub async fn upload(
    state: &AppState,
    session: &mut Session,
    ctx: &mut Ctx,
    req: &Request<'_>,
    content_type: &str,
) -> Result<(), Failure> {
    let boundary = multipart::boundary(content_type)
        .ok_or_else(|| GatewayError::BadRequest("a multipart body needs its `boundary`".into()))?
        .to_string();
    unreadable_body_allowed(req)?;
    super::intake::answer_continue(session).await?;
    let max = req.snap.server().max_body.0;
    let mut prefix = Vec::new();
    let mut ended = false;
    let found = loop {
        match multipart::find_field(&prefix, &boundary, "model", ended) {
            Scan::Found { value, at } => break Some((value, at)),
            Scan::Absent => break None,
            Scan::More => {}
        }
        match read_chunk(session).await? {
            Some(c) if (prefix.len() + c.len()) as u64 > max => {
                session.set_keepalive(None);
                return Err(GatewayError::BadRequest(format!(
                    "the upload's `model` field did not come within its first {max} bytes \
                     (server.max_body); send it before the file"
                ))
                .into());
            }
            Some(c) => prefix.extend_from_slice(&c),
            None => ended = true,
        }
    };
    let declared = declared_length(session);
    let Some((model, at)) = found else {
        let body = Body {
            prefix: Bytes::from(prefix),
            rest_follows: !ended,
            framing: framing(declared, true),
        };
        return passthrough(state, session, ctx, req, body).await;
    };
    ctx.route.requested_model = Some(model.clone());
    let model = req
        .gateway
        .mapped_model(&model)
        .unwrap_or(&model)
        .to_string();
    let routes = super::call::route(ctx, req, &model)?;
    // The channel's own name for the model goes in the field.
    let body = |upstream_model: &str| {
        let (prefix, delta) = match upstream_model != model {
            true => (
                multipart::replace(&prefix, at.clone(), upstream_model),
                upstream_model.len() as i64 - (at.end - at.start) as i64,
            ),
            false => (prefix.clone(), 0),
        };
        Body {
            prefix: Bytes::from(prefix),
            rest_follows: !ended,
            framing: framing(declared.map(|n| (n as i64 + delta).max(0) as u64), true),
        }
    };
    let busy = format!("every channel for `{model}` is cooling down");
    send_and_relay(state, session, ctx, req, &routes, &busy, body).await
}

/// What names no model, to the gateway's `passthrough` channel.
pub async fn passthrough_request(
    state: &AppState,
    session: &mut Session,
    ctx: &mut Ctx,
    req: &Request<'_>,
    read: Option<Bytes>,
) -> Result<(), Failure> {
    let declared = declared_length(session);
    // A GET or DELETE without a length has no body (HTTP/2 ones included).
    let post = session.req_header().method == http::Method::POST;
    let has_body = read.is_some() || declared.is_some_and(|n| n > 0) || (post && chunked(session));
    if has_body && read.is_none() {
        unreadable_body_allowed(req)?;
        super::intake::answer_continue(session).await?;
    }
    let body = Body {
        prefix: read.clone().unwrap_or_default(),
        rest_follows: read.is_none() && has_body,
        framing: match &read {
            Some(b) => Framing::Length(b.len() as u64),
            None => framing(declared, has_body),
        },
    };
    passthrough(state, session, ctx, req, body).await
}

/// A body weir does not read (a file, an upload) cannot be masked or checked:
/// a gateway that masks or checks requests does not pass one on.
fn unreadable_body_allowed(req: &Request<'_>) -> Result<(), GatewayError> {
    let g = req.gateway;
    let checks = g.safety.as_ref().is_some_and(|s| s.requests);
    if g.masking.is_none() && !checks {
        return Ok(());
    }
    Err(GatewayError::BadRequest(format!(
        "gateway `{}` masks or checks what clients send, and this body (an upload or a file) \
         cannot be read for it; send it through a gateway without `masking` or `safety`",
        g.name
    )))
}

async fn passthrough(
    state: &AppState,
    session: &mut Session,
    ctx: &mut Ctx,
    req: &Request<'_>,
    body: Body,
) -> Result<(), Failure> {
    let Some((name, index)) = &req.gateway.passthrough else {
        let head = session.req_header();
        if head.method != http::Method::POST {
            // Without a passthrough channel a GET or DELETE is one weir does not know.
            return Err(GatewayError::RouteNotFound {
                method: head.method.to_string(),
                path: head.uri.path().to_string(),
            }
            .into());
        }
        return Err(GatewayError::BadRequest(format!(
            "`{}` names no model, and gateway `{}` has no `passthrough` channel for such requests",
            req.rest.split('?').next().unwrap_or(""),
            req.gateway.name
        ))
        .into());
    };
    let channel = req
        .snap
        .channels
        .get(*index)
        .filter(|c| &c.name == name)
        .ok_or_else(|| GatewayError::Internal("the passthrough channel is gone".into()))?;
    if channel.upstream.is_none() || !channel.enabled {
        return Err(GatewayError::BadRequest(format!(
            "channel `{name}` cannot take requests verbatim"
        ))
        .into());
    }
    let routes = [Route {
        channel: *index,
        upstream_model: String::new(),
    }];
    let busy = format!("the passthrough channel `{name}` is cooling down");
    send_and_relay(state, session, ctx, req, &routes, &busy, |_| body).await
}

/// One attempt on the healthiest of `routes`: the body, made for the model name
/// that channel uses, sent and the answer relayed.
async fn send_and_relay(
    state: &AppState,
    session: &mut Session,
    ctx: &mut Ctx,
    req: &Request<'_>,
    routes: &[Route],
    busy: &str,
    body: impl FnOnce(&str) -> Body,
) -> Result<(), Failure> {
    let mut plan = Plan::new(
        routes,
        &req.snap.channels,
        &state.health,
        rules(req),
        small_rng()?,
    );
    let attempt = plan
        .next_attempt()
        .ok_or_else(|| GatewayError::NoChannelAvailable {
            model: ctx.route.model_label.clone(),
            detail: busy.to_string(),
            retry_after_secs: 1,
        })?;
    let body = body(attempt.upstream_model);
    let channel = attempt.channel;
    ctx.tries.attempts = 1;
    ctx.tries.channel.clone_from(&channel.name);
    ctx.tries.upstream = channel.upstream.as_ref().map(|u| u.url.clone());
    let deadline = ctx.started
        + req
            .gateway
            .timeout
            .unwrap_or(req.snap.server().request_timeout.0);
    let sent = send(state, session, req, channel, attempt.key, body);
    let answer = match tokio::time::timeout_at(deadline.into(), sent).await {
        Ok(Ok(a)) => a,
        Ok(Err(SendError::Client(e))) => return Err(e),
        Ok(Err(SendError::Upstream(e))) => {
            let detail = e.describe();
            if let Some(outcome) = e.outcome() {
                plan.settle(attempt, outcome);
            }
            return Err(GatewayError::UpstreamFailed {
                model: ctx.route.model_label.clone(),
                detail: format!("channel `{}`: {detail}", channel.name),
            }
            .into());
        }
        Err(_) => {
            return Err(GatewayError::UpstreamTimeout {
                model: ctx.route.model_label.clone(),
                detail: "the request's deadline passed before the upstream answered".into(),
            }
            .into())
        }
    };
    plan.settle(attempt, answer.outcome());
    let empty = JsonBody::parse(b"{}")?;
    let health = HealthPolicy::from(&req.snap.server().health);
    let model = ctx
        .route
        .requested_model
        .clone()
        .unwrap_or_else(|| "-".into());
    let how = RelayPlan {
        strip_usage: false,
        expect_done: false,
        deadline: deadline.min(Instant::now() + channel.total_timeout),
        channel_deadline: false,
        request: &empty,
        gateway: &req.gateway.name,
        health: &health,
        translate: None,
        model: &model,
        cache: None,
        restore: None,
        guard: None,
        to_client: None,
        moderate: None,
        native_usage: false,
    };
    let stop = stopped(state);
    tokio::pin!(stop);
    relay(state, session, ctx, answer, how, stop.as_mut()).await
}

enum SendError {
    /// The client's side failed (its body broke, or was too large).
    Client(Failure),
    Upstream(AttemptError),
}

/// Connects, writes the head and the body (streaming the client's rest as it
/// comes), and reads the answer's head.
async fn send(
    state: &AppState,
    session: &mut Session,
    req: &Request<'_>,
    channel: &weir_filters::config::Channel,
    key: Option<&str>,
    body: Body,
) -> Result<Answer, SendError> {
    let up = SendError::Upstream;
    let mut out = weir_filters::adapters::forward_request(channel, &req.rest, key)
        .map_err(|e| SendError::Client(e.into()))?;
    let head = session.req_header();
    if channel.kind == weir_filters::config::ChannelType::Anthropic {
        // Anthropic's files and batches are betas, named by the client's header.
        let named = head
            .headers
            .iter()
            .filter_map(|(n, v)| Some((n.as_str(), v.to_str().ok()?)));
        let client = weir_filters::adapters::anthropic::client_headers(named);
        out.headers = weir_filters::adapters::anthropic::with_client_headers(out.headers, &client);
    }
    let method = head.method.as_str().to_string();
    let content_type = super::intake::content_type(session);
    let accept = head
        .headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let dns_ttl = req.snap.server().dns_ttl.0;
    let (peer, path, headers) = exchange::forward_target(state, channel, &out, dns_ttl)
        .await
        .map_err(up)?;
    let Some(upstream) = &channel.upstream else {
        return Err(up(AttemptError::Failed(
            weir_filters::failover::FailKind::Connect,
            "no upstream".into(),
        )));
    };
    let rh = RequestHead {
        authority: upstream.authority.as_str(),
        path: &path,
        accept: accept.as_deref(),
        headers: &headers,
    };
    let mut wire = Vec::new();
    upstream_request::encode_forward(
        &method,
        &rh,
        content_type.as_deref(),
        body.framing,
        &mut wire,
    )
    .map_err(|e| SendError::Client(GatewayError::BadRequest(e.to_string()).into()))?;
    match body.framing {
        Framing::Chunked if !body.prefix.is_empty() => {
            upstream_request::chunk(&body.prefix, &mut wire)
        }
        Framing::Chunked | Framing::None => {}
        Framing::Length(_) => wire.extend_from_slice(&body.prefix),
    }
    let mut stream = exchange::connect(state, &peer).await.map_err(up)?;
    let write_err = |e: std::io::Error| {
        up(AttemptError::Failed(
            weir_filters::failover::FailKind::Io,
            e.to_string(),
        ))
    };
    stream.write_all(&wire).await.map_err(write_err)?;
    if body.rest_follows {
        let max = req.snap.server().max_upload.0;
        let mut sent = body.prefix.len() as u64;
        loop {
            let chunk = match read_chunk(session).await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => return Err(SendError::Client(e)),
            };
            sent += chunk.len() as u64;
            if sent > max {
                session.set_keepalive(None);
                return Err(SendError::Client(
                    GatewayError::BodyTooLarge { limit: max }.into(),
                ));
            }
            let mut piece = Vec::with_capacity(chunk.len() + 16);
            match body.framing {
                Framing::Chunked => upstream_request::chunk(&chunk, &mut piece),
                _ => piece.extend_from_slice(&chunk),
            }
            stream.write_all(&piece).await.map_err(write_err)?;
        }
    }
    if body.framing == Framing::Chunked {
        stream.write_all(b"0\r\n\r\n").await.map_err(write_err)?;
    }
    stream.flush().await.map_err(write_err)?;
    exchange::read_head(stream, &peer, channel)
        .await
        .map_err(up)
}

async fn read_chunk(session: &mut Session) -> Result<Option<Bytes>, Failure> {
    session.read_request_body().await.map_err(|e| {
        session.set_keepalive(None);
        GatewayError::BadRequest(format!(
            "cannot read the request body: {}",
            e.etype().as_str()
        ))
        .into()
    })
}

fn chunked(session: &Session) -> bool {
    session
        .req_header()
        .headers
        .get("transfer-encoding")
        .is_some()
        || session.is_http2()
}

fn framing(declared: Option<u64>, has_body: bool) -> Framing {
    match (declared, has_body) {
        (Some(n), _) => Framing::Length(n),
        (None, true) => Framing::Chunked,
        (None, false) => Framing::None,
    }
}

/// The failover rules with one attempt: a streamed body cannot be sent twice.
fn rules(req: &Request<'_>) -> Rules {
    Rules {
        max_attempts: Some(1),
        ..super::dispatch::rules(req)
    }
}
