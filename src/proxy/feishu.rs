//! `POST /bot/feishu/{name}/webhook/event` on the proxy listener (A9): the webhook
//! is looked up in the snapshot (so one added, changed or removed counts from the
//! next event), the event opened and checked, the URL challenge answered, and a
//! message acknowledged at once (Feishu wants an answer within 3 s) and answered
//! afterwards (`feishu_api`). A retried delivery is recognised by its event id.

use super::{feishu_api, respond, Weir};
use crate::proxy::ctx::Ctx;
use bytes::Bytes;
use pingora_core::apps::ReusedHttpStream;
use pingora_core::protocols::http::ServerSession;
use pingora_http::ResponseHeader;
use serde_json::{json, Value};
use weir_filters::feishu::{self, Event};
use weir_filters::GatewayError;

/// Feishu's events are small; anything larger is not one.
const MAX_EVENT: usize = 1024 * 1024;

/// The webhook's name in `/bot/feishu/{name}/webhook/event`.
fn webhook_name(path: &str) -> Option<&str> {
    let name = path
        .strip_prefix("/bot/feishu/")?
        .strip_suffix("/webhook/event")?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

impl Weir {
    pub(super) async fn bot_event(&self, mut session: ServerSession) -> Option<ReusedHttpStream> {
        let answer = match read_body(&mut session).await {
            Ok(body) => self.event(&session, &body),
            Err(e) => Err(e),
        };
        match answer {
            Ok(v) => write_json(&mut session, 200, &v).await?,
            Err(e) => respond::error(&mut session, &mut Ctx::new(), &e)
                .await
                .ok()?,
        }
        super::reusable(session).await
    }

    /// What an event callback is answered, after the work it starts.
    fn event(&self, session: &ServerSession, body: &[u8]) -> Result<Value, GatewayError> {
        let head = session.req_header();
        let path = head.uri.path().to_string();
        let not_found = || GatewayError::RouteNotFound {
            method: head.method.to_string(),
            path: path.clone(),
        };
        let name = webhook_name(&path).ok_or_else(not_found)?;
        if head.method != http::Method::POST {
            return Err(GatewayError::MethodNotAllowed {
                method: head.method.to_string(),
                path: path.clone(),
            });
        }
        let rt = self.state.snapshot();
        let (hook, _) = rt
            .webhook(name)
            .ok_or_else(|| GatewayError::NotFound(format!("no webhook named `{name}`")))?;
        let c = &hook.config;
        let cb = feishu::parse(body, c.encrypt_key.as_deref())
            .map_err(|e| GatewayError::BadRequest(format!("event: {e}")))?;
        if let Some(want) = c.verification_token.as_deref().filter(|t| !t.is_empty()) {
            if cb.token.as_deref() != Some(want) {
                return Err(GatewayError::AdminUnauthorized(
                    "the event's token is not the webhook's verificationToken".into(),
                ));
            }
        }
        if !matches!(cb.event, Event::Challenge { .. }) {
            check_signature(session, c.encrypt_key.as_deref(), body)?;
        }
        match cb.event {
            Event::Challenge { challenge } => Ok(json!({ "challenge": challenge })),
            Event::Message(msg) => {
                if self.state.bots.first(name, &msg.event_id) {
                    let (state, hook) = (self.state.clone(), hook.clone());
                    tokio::spawn(feishu_api::answer(state, hook, msg));
                } else {
                    tracing::info!(webhook = name, event_id = %msg.event_id, "repeated event ignored");
                }
                Ok(json!({"msg": "success"}))
            }
            Event::Other { .. } => Ok(json!({"msg": "success"})),
        }
    }
}

/// With an encrypt key Feishu signs every event: it must carry the right signature.
fn check_signature(
    session: &ServerSession,
    encrypt_key: Option<&str>,
    body: &[u8],
) -> Result<(), GatewayError> {
    let Some(key) = encrypt_key.filter(|k| !k.is_empty()) else {
        return Ok(());
    };
    let header = |name: &str| {
        session
            .req_header()
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let given = header("x-lark-signature");
    if given.is_empty() {
        return Err(GatewayError::AdminUnauthorized(
            "the event has no X-Lark-Signature, and the webhook has an encryptKey".into(),
        ));
    }
    let want = feishu::signature(
        header("x-lark-request-timestamp"),
        header("x-lark-request-nonce"),
        key,
        body,
    );
    if given.eq_ignore_ascii_case(&want) {
        Ok(())
    } else {
        Err(GatewayError::AdminUnauthorized(
            "the event's X-Lark-Signature does not match".into(),
        ))
    }
}

async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, GatewayError> {
    let mut body = Vec::new();
    while let Some(chunk) = session
        .read_request_body()
        .await
        .map_err(|_| GatewayError::BadRequest("the event body could not be read".into()))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_EVENT {
            return Err(GatewayError::BodyTooLarge {
                limit: MAX_EVENT as u64,
            });
        }
    }
    Ok(body)
}

async fn write_json(session: &mut ServerSession, status: u16, v: &Value) -> Option<()> {
    let body = Bytes::from(v.to_string());
    let mut header = ResponseHeader::build(status, Some(2)).ok()?;
    header
        .insert_header("content-type", "application/json; charset=utf-8")
        .ok()?;
    header
        .insert_header("content-length", body.len().to_string())
        .ok()?;
    session.write_response_header(Box::new(header)).await.ok()?;
    session.write_response_body(body, true).await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_webhook_name_comes_from_the_path() {
        assert_eq!(webhook_name("/bot/feishu/team/webhook/event"), Some("team"));
        assert_eq!(webhook_name("/bot/feishu//webhook/event"), None);
        assert_eq!(webhook_name("/bot/feishu/a/b/webhook/event"), None);
        assert_eq!(webhook_name("/bot/slack/a/webhook/event"), None);
    }
}
