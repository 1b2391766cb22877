//! Content safety on the request (`gateways[].safety`): the client's text
//! against the deny rules, then, when set, the moderation endpoint. Checked
//! before the cache, the template and any channel, on the text the client wrote.
//! The moderation endpoint gets the text as data masking would send it.

use super::ctx::Ctx;
use super::exchange::call;
use super::request::Request;
use crate::state::AppState;
use bytes::Bytes;
use rand::Rng;
use weir_filters::adapters;
use weir_filters::config::Runtime;
use weir_filters::masking::Table;
use weir_filters::request_body::{prompt_text, JsonBody};
use weir_filters::safety::{self, Moderation, OnError, Safety, Verdict};
use weir_filters::GatewayError;

/// Refuses the request when its text breaks a rule or the moderation endpoint
/// flags it (or cannot judge it and `on_error` is `closed`).
pub async fn check_request(
    state: &AppState,
    ctx: &mut Ctx,
    req: &Request<'_>,
    body: &JsonBody,
) -> Result<(), GatewayError> {
    let Some(rules) = req.gateway.safety.as_ref().filter(|s| s.requests) else {
        return Ok(());
    };
    let (text, _) = prompt_text(body);
    if text.is_empty() {
        return Ok(());
    }
    let refusal = match rules.check(&text) {
        Some(f) => Some((f.rule, None)),
        None => moderate(state, req, rules, &text).await?,
    };
    let Some((rule, categories)) = refusal else {
        return Ok(());
    };
    count(state, &req.gateway.name, "request", &rule);
    keep_masked_body(ctx, req, body);
    let why = match categories {
        Some(c) if !c.is_empty() => format!("the moderation endpoint flagged it ({c})"),
        Some(_) => "the moderation endpoint flagged it".to_string(),
        None => format!("it matches the gateway's rule safety.{rule}"),
    };
    ctx.reply.error = Some(format!("refused by content safety: {why}"));
    Err(GatewayError::ContentFiltered(format!(
        "this request was refused by the gateway's content safety: {why}"
    )))
}

/// What the moderation endpoint makes of the text: `None` when it passes, the
/// rule (`moderation`) and the categories flagged when it does not.
async fn moderate(
    state: &AppState,
    req: &Request<'_>,
    rules: &Safety,
    text: &str,
) -> Result<Option<(String, Option<String>)>, GatewayError> {
    let Some(m) = &rules.moderation else {
        return Ok(None);
    };
    let masked;
    let text = match &req.gateway.masking {
        Some(masker) => {
            masked = masker.mask(text, &mut Table::default());
            masked.as_deref().unwrap_or(text)
        }
        None => text,
    };
    match ask(state, req.snap, m, text).await {
        Ok(Verdict::Pass) => Ok(None),
        Ok(Verdict::Flagged(cats)) => Ok(Some(("moderation".into(), Some(cats.join(", "))))),
        Err(why) => {
            let closed = m.on_error == OnError::Closed;
            let outcome = if closed {
                "unavailable_closed"
            } else {
                "unavailable_open"
            };
            count(state, &req.gateway.name, "moderation", outcome);
            tracing::warn!(gateway = %req.gateway.name, channel = %m.channel, error = %why,
                on_error = if closed { "closed" } else { "open" }, "moderation failed");
            match closed {
                true => Err(GatewayError::ModerationUnavailable(format!(
                    "the gateway's moderation endpoint could not judge this request ({why}); \
                     its safety.moderation.on_error is closed"
                ))),
                false => Ok(None),
            }
        }
    }
}

/// One moderation call within its timeout.
async fn ask(
    state: &AppState,
    snap: &Runtime,
    m: &Moderation,
    text: &str,
) -> Result<Verdict, String> {
    if text.len() > safety::MAX_MODERATED {
        return Err(format!(
            "the text is {} bytes, over the {} sent for moderation",
            text.len(),
            safety::MAX_MODERATED
        ));
    }
    let channel = snap
        .channels
        .get(m.channel_index)
        .filter(|c| c.name == m.channel)
        .ok_or("its channel is gone from the config")?;
    let key = match channel.keys.len() {
        0 => None,
        n => Some(channel.keys[rand::thread_rng().gen_range(0..n)].as_str()),
    };
    let body = Bytes::from(safety::moderation_body(m.model.as_deref(), text));
    let model = m.model.as_deref().unwrap_or("");
    let out = adapters::prepare(
        channel,
        weir_filters::route::Endpoint::Other,
        "/moderations",
        body,
        model,
        key,
    )
    .map_err(|e| e.to_string())?;
    let answer = tokio::time::timeout(m.timeout, call(state, channel, &out, true)).await;
    match answer {
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(m.timeout)
        )),
        Ok(Err(e)) => Err(e.describe()),
        Ok(Ok((status, body))) => safety::read_verdict(status, &body, &m.categories),
    }
}

/// A JSON answer judged by the moderation endpoint (`moderation.answers`), as
/// masking would send it: the rule to refuse it by, or `None` to let it out.
pub async fn moderate_answer(
    state: &AppState,
    am: &AnswerModeration<'_>,
    text: &str,
) -> Option<&'static str> {
    let masked = am.masking.and_then(|m| m.mask(text, &mut Table::default()));
    let text = masked.as_deref().unwrap_or(text);
    match ask(state, am.snap, am.moderation, text).await {
        Ok(Verdict::Pass) => None,
        Ok(Verdict::Flagged(_)) => Some("moderation"),
        Err(why) => {
            let closed = am.moderation.on_error == OnError::Closed;
            let outcome = if closed {
                "unavailable_closed"
            } else {
                "unavailable_open"
            };
            count(state, am.gateway, "moderation", outcome);
            tracing::warn!(gateway = %am.gateway, error = %why, "moderation of an answer failed");
            closed.then_some("moderation")
        }
    }
}

/// What judging an answer needs: the snapshot (for the moderation channel),
/// the gateway's masking, its moderation settings.
pub struct AnswerModeration<'a> {
    pub snap: &'a Runtime,
    pub gateway: &'a str,
    pub masking: Option<&'a weir_filters::masking::Masker>,
    pub moderation: &'a Moderation,
}

/// A refused request's body is kept for the call log as masking would have
/// sent it: its values never reach the log.
fn keep_masked_body(ctx: &mut Ctx, req: &Request<'_>, body: &JsonBody) {
    let (Some(masker), Some(_)) = (&req.gateway.masking, &ctx.route.body) else {
        return;
    };
    let mut copy = body.clone();
    ctx.route.body = match masker.mask_body(&mut copy, req.endpoint) {
        Ok(_) => Some(copy.to_bytes()),
        // Never the unmasked text: nothing is kept rather than that.
        Err(_) => None,
    };
}

/// `weir_safety_total{gateway,stage,rule}`.
pub fn count(state: &AppState, gateway: &str, stage: &str, rule: &str) {
    state
        .metrics
        .safety
        .with_label_values(&[gateway, stage, rule])
        .inc();
}
