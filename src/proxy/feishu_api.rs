//! What the Feishu bot (A9) does after an event is acknowledged: ask the model
//! through weir's own listener under the webhook's `apiKey` (so its grants, limits,
//! billing and call log apply as to any client), then reply through Feishu's open
//! API with a `tenant_access_token` kept until shortly before it expires, and
//! fetched again when the API says it is no longer valid.

use super::exchange::call;
use super::probe::endpoint;
use crate::state::AppState;
use bytes::Bytes;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weir_filters::adapters::Outgoing;
use weir_filters::config::{FeishuConfig, WebhookConfig};
use weir_filters::feishu::{self, Message, SeenEvents};

/// Feishu retries a delivery for about 7 hours.
const DEDUPE_WINDOW: Duration = Duration::from_secs(8 * 3600);
const DEDUPE_MAX: usize = 100_000;
/// A token is fetched again this long before Feishu says it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(180);

/// The bots' long-lived state: events seen, tokens and bot ids per app.
pub struct Bots {
    seen: Mutex<SeenEvents>,
    tokens: Mutex<HashMap<(String, String), (String, Instant)>>,
    bot_ids: Mutex<HashMap<(String, String), String>>,
}

impl Default for Bots {
    fn default() -> Self {
        Bots {
            seen: Mutex::new(SeenEvents::new(DEDUPE_WINDOW, DEDUPE_MAX)),
            tokens: Mutex::default(),
            bot_ids: Mutex::default(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Bots {
    /// True the first time an event id arrives for the webhook `name`.
    pub fn first(&self, name: &str, event_id: &str) -> bool {
        lock(&self.seen).first(&format!("{name}/{event_id}"), Instant::now())
    }
}

fn app(c: &FeishuConfig) -> (String, String) {
    (c.api_base.clone(), c.app_id.clone())
}

/// Answers `msg` for the webhook `hook`; every failure is logged, none reaches Feishu.
pub async fn answer(state: Arc<AppState>, hook: WebhookConfig, msg: Message) {
    let c = &hook.config;
    let bot = if msg.chat_type == "p2p" {
        None
    } else {
        bot_open_id(&state, c).await
    };
    let Some(question) = feishu::question(&msg, bot.as_deref()) else {
        return;
    };
    let text = match ask(&state, &hook, &question).await {
        Ok(t) => t,
        Err(e) => format!("⚠ {e}"),
    };
    match reply(&state, c, &msg, &text).await {
        Ok(()) => tracing::info!(webhook = %hook.name, event_id = %msg.event_id, "bot replied"),
        Err(e) => {
            tracing::warn!(webhook = %hook.name, event_id = %msg.event_id, error = %e, "bot reply failed")
        }
    }
}

/// The model's answer to `question`, asked of weir's own proxy listener.
async fn ask(state: &AppState, hook: &WebhookConfig, question: &str) -> Result<String, String> {
    let rt = state.snapshot();
    let gateway = rt
        .webhook_gateway(hook)
        .ok_or("the webhook's gateway is gone")?;
    let addr = state.proxy_addr().ok_or("the proxy listener is not up")?;
    let channel =
        endpoint("openai", &format!("http://{addr}"), "300s").map_err(|e| e.to_string())?;
    let body = json!({
        "model": hook.config.model_id,
        "messages": [{"role": "user", "content": question}],
    });
    let out = Outgoing {
        path: format!("{}/chat/completions", gateway.path.trim_end_matches('/')),
        headers: vec![("authorization", format!("Bearer {}", hook.config.api_key))],
        body: Bytes::from(body.to_string()),
    };
    let (status, answer) = call(state, &channel, &out, true)
        .await
        .map_err(|e| format!("the gateway did not answer: {}", e.describe()))?;
    let v: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
    if status != 200 {
        let why = v
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("no reason given");
        return Err(format!(
            "{} could not answer (HTTP {status}): {why}",
            hook.config.model_id
        ));
    }
    v.pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| "the answer had no text".to_string())
}

/// One open API call; the answer's JSON whatever the HTTP status (Feishu puts its
/// error code in the body).
async fn open_api(
    state: &AppState,
    c: &FeishuConfig,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Result<Value, String> {
    let channel = endpoint("openai", &c.api_base, "15s").map_err(|e| e.to_string())?;
    let headers = token
        .map(|t| vec![("authorization", format!("Bearer {t}"))])
        .unwrap_or_default();
    let post = body.is_some();
    let out = Outgoing {
        path: path.to_string(),
        headers,
        body: Bytes::from(body.map(|b| b.to_string()).unwrap_or_default()),
    };
    let (status, answer) = call(state, &channel, &out, post)
        .await
        .map_err(|e| format!("{}{path}: {}", c.api_base, e.describe()))?;
    serde_json::from_slice(&answer)
        .map_err(|_| format!("{}{path} answered HTTP {status} without JSON", c.api_base))
}

fn code(v: &Value) -> i64 {
    v.get("code").and_then(Value::as_i64).unwrap_or(-1)
}

/// The app's tenant_access_token, from the cache unless `fresh`.
async fn tenant_token(state: &AppState, c: &FeishuConfig, fresh: bool) -> Result<String, String> {
    let key = app(c);
    if !fresh {
        if let Some((t, until)) = lock(&state.bots.tokens).get(&key) {
            if Instant::now() < *until {
                return Ok(t.clone());
            }
        }
    }
    let body = json!({"app_id": c.app_id, "app_secret": c.app_secret});
    let v = open_api(
        state,
        c,
        "/open-apis/auth/v3/tenant_access_token/internal",
        None,
        Some(body),
    )
    .await?;
    let token = match (
        code(&v),
        v.get("tenant_access_token").and_then(Value::as_str),
    ) {
        (0, Some(t)) => t.to_string(),
        _ => {
            let msg = v.get("msg").and_then(Value::as_str).unwrap_or("");
            return Err(format!(
                "Feishu refused the app's credentials (code {}: {msg})",
                code(&v)
            ));
        }
    };
    let expire = Duration::from_secs(v.get("expire").and_then(Value::as_u64).unwrap_or(0));
    let keep = expire
        .saturating_sub(TOKEN_MARGIN)
        .max(Duration::from_secs(30));
    lock(&state.bots.tokens).insert(key, (token.clone(), Instant::now() + keep));
    Ok(token)
}

/// Calls the open API with the token, once more with a new token when Feishu says
/// the one it got is no longer valid.
async fn with_token(
    state: &AppState,
    c: &FeishuConfig,
    path: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let token = tenant_token(state, c, false).await?;
    let v = open_api(state, c, path, Some(&token), body.clone()).await?;
    if !feishu::token_expired(code(&v)) {
        return Ok(v);
    }
    tracing::info!(app_id = %c.app_id, code = code(&v), "tenant_access_token refused; fetching a new one");
    let token = tenant_token(state, c, true).await?;
    open_api(state, c, path, Some(&token), body).await
}

/// The bot's own `open_id`, to tell its mentions from others' in groups.
async fn bot_open_id(state: &AppState, c: &FeishuConfig) -> Option<String> {
    let key = app(c);
    if let Some(id) = lock(&state.bots.bot_ids).get(&key) {
        return Some(id.clone());
    }
    let v = with_token(state, c, "/open-apis/bot/v3/info", None)
        .await
        .ok()?;
    let id = v
        .pointer("/bot/open_id")
        .and_then(Value::as_str)?
        .to_string();
    lock(&state.bots.bot_ids).insert(key, id.clone());
    Some(id)
}

async fn reply(
    state: &AppState,
    c: &FeishuConfig,
    msg: &Message,
    text: &str,
) -> Result<(), String> {
    if msg.message_id.is_empty()
        || !msg
            .message_id
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
    {
        return Err(format!("`{}` is not a message id", msg.message_id));
    }
    let path = format!("/open-apis/im/v1/messages/{}/reply", msg.message_id);
    let v = with_token(
        state,
        c,
        &path,
        Some(feishu::reply_body(&msg.event_id, text)),
    )
    .await?;
    match code(&v) {
        0 => Ok(()),
        n => Err(format!(
            "Feishu refused the reply (code {n}: {})",
            v.get("msg").and_then(Value::as_str).unwrap_or("")
        )),
    }
}
