//! Provider adapters (P8): the OpenAI request a client sent, turned into what a
//! channel's provider expects, and the provider's answer (JSON, SSE, errors) turned
//! back into OpenAI's shapes, so everything after (usage, stripping, cache) is the
//! same for every provider. One module per provider, each from its API reference.

pub mod anthropic;
pub mod azure;
pub mod gemini;
pub mod sse;

use crate::config::{Channel, ChannelType};
use crate::route::Endpoint;
use crate::GatewayError;
use bytes::Bytes;

/// The request as it goes upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Path and query on the channel's host.
    pub path: String,
    /// Authentication and protocol headers (content type and length are added later).
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

/// Builds the upstream request. `rest` is the path after `/v1` (with its query);
/// `body` the OpenAI body after every rewrite.
pub fn prepare(
    channel: &Channel,
    endpoint: Endpoint,
    rest: &str,
    body: Bytes,
    upstream_model: &str,
    key: Option<&str>,
) -> Result<Outgoing, GatewayError> {
    let base = channel
        .upstream
        .as_ref()
        .map(|u| u.base_path.as_str())
        .unwrap_or("");
    match channel.kind {
        ChannelType::Openai | ChannelType::Mock => Ok(Outgoing {
            path: format!("{base}/v1{rest}"),
            headers: key
                .map(|k| vec![("authorization", format!("Bearer {k}"))])
                .unwrap_or_default(),
            body,
        }),
        ChannelType::Azure => {
            azure::prepare(channel, base, endpoint, rest, body, upstream_model, key)
        }
        ChannelType::Anthropic => {
            anthropic::prepare(channel, base, endpoint, &body, upstream_model, key)
        }
        ChannelType::Gemini => gemini::prepare(base, endpoint, &body, upstream_model, key),
    }
}

/// Whether a channel of this type can serve the endpoint at all.
pub fn supports(kind: ChannelType, endpoint: Endpoint) -> bool {
    match kind {
        ChannelType::Openai | ChannelType::Mock => true,
        ChannelType::Azure => matches!(
            endpoint,
            Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings
        ),
        ChannelType::Anthropic | ChannelType::Gemini => endpoint == Endpoint::ChatCompletions,
    }
}

/// Whether a provider's error answer says the key (not the request) is the problem:
/// Gemini answers a bad API key with 400 `API_KEY_INVALID`; Anthropic an exhausted
/// account with 400 "credit balance". Such answers move to the next key.
pub fn key_rejected(kind: ChannelType, status: u16, body: &[u8]) -> bool {
    if status != 400 {
        return false;
    }
    let text = String::from_utf8_lossy(body);
    match kind {
        ChannelType::Gemini => {
            text.contains("API_KEY_INVALID")
                || text.contains("API key not valid")
                || text.contains("API key expired")
        }
        ChannelType::Anthropic => text.contains("credit balance"),
        _ => false,
    }
}

/// Whether answers of this channel type need translating into OpenAI's shapes.
pub fn translates(kind: ChannelType) -> bool {
    matches!(kind, ChannelType::Anthropic | ChannelType::Gemini)
}

/// A complete JSON answer (success or error) in OpenAI's shape.
pub fn translate_json(kind: ChannelType, status: u16, body: &[u8], model: &str) -> Vec<u8> {
    match kind {
        ChannelType::Anthropic if status < 300 => anthropic::translate_answer(body, model),
        ChannelType::Anthropic => anthropic::translate_error(status, body),
        ChannelType::Gemini if status < 300 => gemini::translate_answer(body, model),
        ChannelType::Gemini => gemini::translate_error(status, body),
        _ => body.to_vec(),
    }
}

/// Turns a provider's event stream into OpenAI `chat.completion.chunk` events.
pub trait StreamTranslator: Send {
    /// Takes upstream bytes; returns OpenAI SSE bytes to pass on.
    fn feed(&mut self, chunk: &[u8]) -> Vec<u8>;
    /// The upstream ended cleanly: what is still owed (usage chunk, `[DONE]`).
    fn finish(&mut self) -> Vec<u8>;
}

pub fn stream_translator(
    kind: ChannelType,
    model: &str,
    include_usage: bool,
) -> Option<Box<dyn StreamTranslator>> {
    match kind {
        ChannelType::Anthropic => Some(Box::new(anthropic::Stream::new(model, include_usage))),
        ChannelType::Gemini => Some(Box::new(gemini::Stream::new(model, include_usage))),
        _ => None,
    }
}

/// OpenAI's error `type` for an HTTP status.
pub fn error_type_for(status: u16) -> &'static str {
    match status {
        400 | 404 | 409 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        _ => "server_error",
    }
}

pub fn openai_error(message: &str, kind: &str, code: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "error": {"message": message, "type": kind, "param": null, "code": code}
    }))
    .unwrap_or_default()
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// OpenAI's `stop` (a string or a list) as a list.
pub(crate) fn stop_list(v: Option<&serde_json::Value>) -> Option<Vec<String>> {
    match v? {
        serde_json::Value::String(s) => Some(vec![s.clone()]),
        serde_json::Value::Array(a) => Some(
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect(),
        ),
        _ => None,
    }
}

/// The text of OpenAI message content: a string, or the text parts of a list.
pub(crate) fn content_text(v: Option<&serde_json::Value>) -> String {
    match v {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// `data:image/png;base64,AAAA` → (`image/png`, `AAAA`).
pub(crate) fn data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let mime = meta.strip_suffix(";base64")?;
    Some((mime, data))
}

/// One OpenAI chunk event.
pub(crate) fn chunk_event(
    id: &str,
    model: &str,
    created: u64,
    delta: serde_json::Value,
    finish: Option<&str>,
) -> Vec<u8> {
    let v = serde_json::json!({
        "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    });
    format!("data: {v}\n\n").into_bytes()
}

pub(crate) fn usage_event(
    id: &str,
    model: &str,
    created: u64,
    prompt: u64,
    completion: u64,
) -> Vec<u8> {
    let v = serde_json::json!({
        "id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt.saturating_add(completion)},
    });
    format!("data: {v}\n\n").into_bytes()
}

pub(crate) const DONE: &[u8] = b"data: [DONE]\n\n";

pub(crate) fn parse_json(body: &Bytes) -> Result<serde_json::Value, GatewayError> {
    serde_json::from_slice(body).map_err(|e| GatewayError::InvalidJson(e.to_string()))
}

pub(crate) fn unsupported(kind: &str, endpoint: Endpoint) -> GatewayError {
    GatewayError::BadRequest(format!(
        "`{}` is not available through a `{kind}` channel; it serves chat completions",
        endpoint.as_str()
    ))
}
