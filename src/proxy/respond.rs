//! Writing gateway-made answers (errors, model lists) to the client.

use super::ctx::Ctx;
use crate::accounts::RateHeadroom;
use bytes::Bytes;
use http::HeaderValue;
use pingora_core::protocols::http::ServerSession as Session;
use pingora_error::Result;
use pingora_http::ResponseHeader;
use weir_filters::GatewayError;

/// The OpenAI-style headroom headers of the tightest request limit.
pub fn rate_headers(h: &mut ResponseHeader, r: &RateHeadroom) -> Result<()> {
    h.insert_header("x-ratelimit-limit-requests", HeaderValue::from(r.limit))?;
    h.insert_header(
        "x-ratelimit-remaining-requests",
        HeaderValue::from(r.remaining),
    )?;
    h.insert_header("x-ratelimit-reset-requests", format!("{}s", r.reset_secs))?;
    Ok(())
}

pub async fn json(
    session: &mut Session,
    ctx: &mut Ctx,
    status: u16,
    body: Vec<u8>,
    extra: &[(&str, String)],
) -> Result<()> {
    let mut h = ResponseHeader::build_no_case(status, Some(4))?;
    h.insert_header("content-type", HeaderValue::from_static("application/json"))?;
    h.insert_header("content-length", HeaderValue::from(body.len()))?;
    for (k, v) in extra {
        h.insert_header(k.to_string(), v.as_str())?;
    }
    ctx.reply.status = status;
    session.write_response_header(Box::new(h)).await?;
    session.write_response_body(Bytes::from(body), true).await?;
    Ok(())
}

/// Sends an OpenAI-shaped error, unless an answer already started (then nothing can
/// be said any more and the caller must end the connection).
pub async fn error(session: &mut Session, ctx: &mut Ctx, e: &GatewayError) -> Result<()> {
    ctx.reply.error.get_or_insert_with(|| e.to_string());
    ctx.reply
        .error_code
        .get_or_insert_with(|| e.code().to_string());
    if session.response_written().is_some() {
        return Ok(());
    }
    let mut extra = Vec::new();
    if let Some(secs) = e.retry_after() {
        extra.push(("retry-after", secs.to_string()));
    }
    extra.extend(e.rate_limit_headers());
    if e.status() == 401 {
        extra.push(("www-authenticate", "Bearer".to_string()));
    }
    // A Messages client reads Anthropic's error shape.
    let anthropic = ctx.route.endpoint.is_some_and(|e| e.speaks_anthropic());
    let body = match anthropic {
        true => weir_filters::adapters::messages_in::error_json(e.status(), &e.to_string()),
        false => e.to_json(),
    };
    ctx.reply.error_body = Some(body.clone());
    json(session, ctx, e.status(), body, &extra).await
}
