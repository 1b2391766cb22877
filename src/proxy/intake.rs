//! Intake: what a request is before its body is read. Finds the gateway and the
//! endpoint, admits the caller when the key travels in a header or the query,
//! answers the model list itself and hands everything else to `call`.

use super::admission::{admit_caller, key_from_request};
use super::ctx::Ctx;
use super::failure::Failure;
use super::request::{Dialect, Inbound, Request};
use super::{call, forward, models};
use crate::state::AppState;
use bytes::{Bytes, BytesMut};
use pingora_core::protocols::http::ServerSession as Session;
use std::net::IpAddr;
use std::time::SystemTime;
use weir_filters::auth::{remove_query_param, KeyPosition};
use weir_filters::config::Gateway;
use weir_filters::route::{classify, Endpoint};
use weir_filters::GatewayError;

pub async fn handle(state: &AppState, session: &mut Session, ctx: &mut Ctx) -> Result<(), Failure> {
    // Loaded when the request was read (one load per request), or here.
    let snap = match &ctx.snapshot {
        Some(snap) => snap.clone(),
        None => {
            let snap = state.snapshot();
            ctx.snapshot = Some(snap.clone());
            snap
        }
    };
    let head = session.req_header();
    let path = head.uri.path().to_string();
    let query = head.uri.query().map(str::to_string);
    let (gateway, rest) = snap
        .gateway_for(&path)
        .ok_or_else(|| GatewayError::RouteNotFound {
            method: head.method.as_str().to_string(),
            path: path.clone(),
        })?;
    ctx.route.gateway = Some(gateway.name.clone());
    open_now(gateway)?;
    let endpoint = classify(head.method.as_str(), rest, &path)?;
    ctx.route.endpoint = Some(endpoint);
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let client_ip =
        weir_filters::client_addr::client_ip(peer, &head.headers, &snap.trusted_proxies);
    ctx.route.client_ip = client_ip;
    let body_key =
        admit_by_header(state, session, ctx, gateway, query.as_deref(), client_ip).await?;
    match endpoint {
        Endpoint::ListModels | Endpoint::GetModel if body_key.is_some() => Err(GatewayError::InvalidKey(
            "this gateway takes its key from the request body; list models with a POST-less client is not possible"
                .into(),
        )
        .into()),
        Endpoint::ListModels => models::list(session, ctx, &snap, gateway).await,
        Endpoint::GetModel => {
            let id = rest.trim_end_matches('/').trim_start_matches("/models/");
            models::get(session, ctx, &snap, gateway, id).await
        }
        // Admitted only once a JSON body is read: a request without one cannot be.
        Endpoint::Forward | Endpoint::Other if body_key.is_some() && !has_json_body(session, endpoint) => {
            Err(GatewayError::InvalidKey(
                "this gateway takes its key from a JSON body's field; this request has none"
                    .into(),
            )
            .into())
        }
        Endpoint::Forward => {
            let req = request(&snap, gateway, endpoint, rest, query.as_deref(), client_ip);
            forward::passthrough_request(state, session, ctx, &req, None).await
        }
        Endpoint::Other if !is_json(session) => {
            let req = request(&snap, gateway, endpoint, rest, query.as_deref(), client_ip);
            let ct = content_type(session).unwrap_or_default();
            match weir_filters::multipart::boundary(&ct) {
                Some(_) => forward::upload(state, session, ctx, &req, &ct).await,
                // Another body (a file's bytes): verbatim, to the passthrough channel.
                None => forward::passthrough_request(state, session, ctx, &req, None).await,
            }
        }
        _ => {
            let raw = read_body(session, snap.server().max_body.0).await?;
            ctx.route.body = Some(raw.clone());
            let passes = endpoint == Endpoint::Other && body_key.is_none();
            if passes && gateway.passthrough.is_some() && names_no_model(&raw) {
                let req = request(&snap, gateway, endpoint, rest, query.as_deref(), client_ip);
                return forward::passthrough_request(state, session, ctx, &req, Some(raw)).await;
            }
            let mut req = Request {
                snap: &snap,
                gateway,
                endpoint,
                rest: forwarded_rest(rest, query.as_deref(), gateway),
                body_key,
                client_ip,
                inbound: None,
            };
            let raw = match dialect(endpoint) {
                Some(d) => as_chat(&mut req, d, raw)?,
                None => raw,
            };
            call::proxy(state, session, ctx, &req, raw).await
        }
    }
}

/// A request for what names no body's model (passthrough, uploads).
fn request<'a>(
    snap: &'a std::sync::Arc<weir_filters::config::Runtime>,
    gateway: &'a Gateway,
    endpoint: Endpoint,
    rest: &str,
    query: Option<&str>,
    client_ip: Option<IpAddr>,
) -> Request<'a> {
    Request {
        snap,
        gateway,
        endpoint,
        rest: forwarded_rest(rest, query, gateway),
        body_key: None,
        client_ip,
        inbound: None,
    }
}

/// The body's declared length (`Content-Length`), when it has one.
pub(super) fn declared_length(session: &Session) -> Option<u64> {
    session
        .req_header()
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

pub(super) fn content_type(session: &Session) -> Option<String> {
    session
        .req_header()
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// A body that can carry a key field: a JSON `POST`.
fn has_json_body(session: &Session, endpoint: Endpoint) -> bool {
    endpoint != Endpoint::Forward && is_json(session)
}

/// JSON, or no content type at all (curl's `-d` sends a form type; OpenAI
/// clients always say JSON).
fn is_json(session: &Session) -> bool {
    content_type(session).is_none_or(|ct| {
        let ct = ct.to_ascii_lowercase();
        ct.starts_with("application/json") || ct.starts_with("application/x-www-form-urlencoded")
    })
}

/// A JSON body without a `model` (a batch, a file's metadata).
fn names_no_model(raw: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(raw).is_ok_and(|v| v.get("model").is_none())
}

fn dialect(endpoint: Endpoint) -> Option<Dialect> {
    match endpoint {
        Endpoint::Messages | Endpoint::CountTokens => Some(Dialect::Messages),
        Endpoint::Responses => Some(Dialect::Responses),
        _ => None,
    }
}

/// A Messages or Responses request goes on as its chat translation (every
/// channel, limit and rule applies to it); the client's own body is kept for the
/// channels that take it natively.
fn as_chat(req: &mut Request<'_>, dialect: Dialect, raw: Bytes) -> Result<Bytes, GatewayError> {
    let mut v: serde_json::Value =
        serde_json::from_slice(&raw).map_err(|e| GatewayError::InvalidJson(e.to_string()))?;
    // A key in the body (`body:FIELD`) moves to the chat body, where admission
    // takes it out; the body kept for native calls goes on without it.
    let key = req
        .body_key
        .and_then(|field| Some((field, v.as_object_mut()?.remove(field)?)));
    let raw = match &key {
        Some(_) => Bytes::from(v.to_string()),
        None => raw,
    };
    let count_only = req.endpoint == Endpoint::CountTokens;
    let (mut chat, untranslatable) = match dialect {
        Dialect::Messages => weir_filters::adapters::messages_in::to_chat(&v, count_only)?,
        Dialect::Responses => weir_filters::adapters::responses_in::to_chat(&v)?,
    };
    // Its path and query (`?beta=true`) are its API's: a native call keeps them,
    // a chat one asks for chat.
    let rest = std::mem::replace(&mut req.rest, "/chat/completions".into());
    req.inbound = Some(Inbound {
        dialect,
        raw,
        count_only,
        rest,
        untranslatable,
    });
    req.endpoint = Endpoint::ChatCompletions;
    if let (Some((field, key)), Some(o)) = (key, chat.as_object_mut()) {
        o.insert(field.to_string(), key);
    }
    Ok(Bytes::from(chat.to_string()))
}

/// A gateway switched off or past its expiry refuses every request.
fn open_now(gateway: &Gateway) -> Result<(), GatewayError> {
    if !gateway.active {
        return Err(GatewayError::GatewayInactive(gateway.name.clone()));
    }
    if gateway.expires_at.is_some_and(|t| t <= SystemTime::now()) {
        return Err(GatewayError::GatewayExpired(gateway.name.clone()));
    }
    Ok(())
}

/// Admits the caller now unless the key travels in the body (then `call` admits
/// it once the body is read): returns that body field.
async fn admit_by_header<'g>(
    state: &AppState,
    session: &Session,
    ctx: &mut Ctx,
    gateway: &'g Gateway,
    query: Option<&str>,
    client_ip: Option<IpAddr>,
) -> Result<Option<&'g str>, GatewayError> {
    let key = match &gateway.auth {
        Some(auth) => match &auth.position {
            KeyPosition::Body(field) => return Ok(Some(field.as_str())),
            _ => key_from_request(auth, &session.req_header().headers, query),
        },
        None => None,
    };
    admit_caller(state, ctx, gateway, key.as_deref(), client_ip).await?;
    Ok(None)
}

/// The path and query sent upstream: a key passed as a query parameter never
/// travels on.
fn forwarded_rest(rest: &str, query: Option<&str>, gateway: &Gateway) -> String {
    let query = match (query, gateway.auth.as_ref().map(|a| &a.position)) {
        (Some(q), Some(KeyPosition::Arg(name))) => Some(remove_query_param(q, name)),
        (q, _) => q.map(str::to_string),
    };
    match query.filter(|q| !q.is_empty()) {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    }
}

/// We read bodies ourselves, so we answer `Expect: 100-continue` ourselves too
/// (curl sends it for bodies over 1 MiB and would otherwise wait a second).
pub(super) async fn answer_continue(session: &mut Session) -> Result<(), Failure> {
    let expects_continue = session.req_header().version == http::Version::HTTP_11
        && session
            .req_header()
            .headers
            .get("expect")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        session
            .write_continue_response()
            .await
            .map_err(Failure::Abort)?;
    }
    Ok(())
}

/// Reads the whole body, refusing more than `max` bytes (413) before reading it
/// when `Content-Length` already says so.
async fn read_body(session: &mut Session, max: u64) -> Result<Bytes, Failure> {
    let too_large = |session: &mut Session| {
        // The rest of the body is never read: the connection cannot be reused.
        session.set_keepalive(None);
        Failure::from(GatewayError::BodyTooLarge { limit: max })
    };
    let declared = declared_length(session);
    if declared.is_some_and(|n| n > max) {
        return Err(too_large(session));
    }
    answer_continue(session).await?;
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
