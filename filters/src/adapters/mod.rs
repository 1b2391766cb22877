//! Provider adapters (P8): the OpenAI request a client sent, turned into what a
//! channel's provider expects, and the provider's answer (JSON, SSE, errors) turned
//! back into OpenAI's shapes, so everything after (usage, stripping, cache) is the
//! same for every provider.
//!
//! Each provider is a unit struct implementing [`Provider`], one file each, written
//! from that provider's API reference: `openai` (OpenAI-compatible and `mock`),
//! `azure`, `anthropic`, `gemini`. What they share lives once: `request` reads the
//! OpenAI chat request, `answer` writes OpenAI answers and errors, `stream` is the
//! skeleton of every translated event stream (on `sse`'s event splitter).
//!
//! Adding a provider:
//! 1. a `ChannelType` variant (config) for its `type:` name;
//! 2. one new file here with a unit struct implementing [`Provider`], overriding
//!    only what differs from OpenAI's wire format. A provider that answers in its
//!    own shapes returns a [`Translation`]: its answer and error translators, and a
//!    stream translator that is a [`stream::ChunkStream`] over its
//!    [`stream::EventMapper`] (the mapper says what each event means, the skeleton
//!    does the rest);
//! 3. one arm in [`provider`].
//!
//! The free functions (`prepare`, `translate_json`, …) are what the proxy calls:
//! each hands the call to the channel type's provider.

pub(crate) mod answer;
pub mod anthropic;
pub mod azure;
pub mod features;
pub mod gemini;
pub mod messages_in;
pub mod openai;
pub(crate) mod request;
pub mod responses_in;
pub mod sse;
pub mod stream;

use crate::config::{Channel, ChannelType, Upstream};
use crate::route::Endpoint;
use crate::GatewayError;
use bytes::Bytes;

/// The request as it reaches a provider: what `prepare` turns into an [`Outgoing`].
#[derive(Debug, Clone)]
pub struct Incoming<'a> {
    pub endpoint: Endpoint,
    /// The path after `/v1`, with its query.
    pub rest: &'a str,
    /// The OpenAI body after every rewrite.
    pub body: Bytes,
    /// The channel's name for the model.
    pub upstream_model: &'a str,
    pub key: Option<&'a str>,
}

/// The request as it goes upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Path and query on the channel's host.
    pub path: String,
    /// Authentication and protocol headers (content type and length are added later).
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

impl Outgoing {
    /// A request with this JSON body, for providers that rewrite the OpenAI one.
    pub fn json(
        path: String,
        headers: Vec<(&'static str, String)>,
        body: &serde_json::Value,
    ) -> Result<Self, GatewayError> {
        let body = serde_json::to_vec(body).map_err(|e| GatewayError::Internal(e.to_string()))?;
        Ok(Outgoing {
            path,
            headers,
            body: Bytes::from(body),
        })
    }

    /// A GET: no body.
    pub fn get(path: String, headers: Vec<(&'static str, String)>) -> Self {
        Outgoing {
            path,
            headers,
            body: Bytes::new(),
        }
    }
}

/// Turns a provider's event stream into OpenAI `chat.completion.chunk` events.
pub trait StreamTranslator: Send {
    /// Takes upstream bytes; returns OpenAI SSE bytes to pass on.
    fn feed(&mut self, chunk: &[u8]) -> Vec<u8>;
    /// The upstream ended cleanly: what is still owed (usage chunk, `[DONE]`).
    fn finish(&mut self) -> Vec<u8>;
}

/// How a provider that answers in its own format is read into OpenAI's.
#[derive(Clone, Copy)]
pub struct Translation {
    /// A complete 2xx answer, for the model the client asked for.
    answer: fn(&[u8], &str) -> Vec<u8>,
    /// An error answer, by its status.
    error: fn(u16, &[u8]) -> Vec<u8>,
    /// A stream translator, for the model and whether to add a usage chunk.
    stream: fn(&str, bool) -> Box<dyn StreamTranslator>,
}

impl Translation {
    pub const fn new(
        answer: fn(&[u8], &str) -> Vec<u8>,
        error: fn(u16, &[u8]) -> Vec<u8>,
        stream: fn(&str, bool) -> Box<dyn StreamTranslator>,
    ) -> Self {
        Translation {
            answer,
            error,
            stream,
        }
    }
}

/// One provider's wire format. The defaults are OpenAI's (`openai`), so a provider
/// overrides only what it does differently. Every method is pure: the proxy does
/// the I/O.
pub trait Provider: Send + Sync {
    /// Whether a channel of this provider can serve the endpoint at all.
    fn supports(&self, _endpoint: Endpoint) -> bool {
        true
    }

    /// Builds the upstream request for a channel of this provider.
    fn prepare(&self, channel: &Channel, req: Incoming) -> Result<Outgoing, GatewayError> {
        Ok(openai::prepare(base_path(channel), req))
    }

    /// How answers become OpenAI's; `None` (the default) where they already are.
    /// The three methods after it follow from it.
    fn translation(&self) -> Option<Translation> {
        None
    }

    /// Whether answers need [`Provider::translate_json`] and
    /// [`Provider::stream_translator`] before anything reads them as OpenAI's.
    fn translates(&self) -> bool {
        self.translation().is_some()
    }

    /// A complete JSON answer (success or error, by `status`) in OpenAI's shape;
    /// `model` is the name the client asked for.
    fn translate_json(&self, status: u16, body: &[u8], model: &str) -> Vec<u8> {
        match self.translation() {
            Some(t) if status < 300 => (t.answer)(body, model),
            Some(t) => (t.error)(status, body),
            None => body.to_vec(),
        }
    }

    /// A translator for this provider's event stream, or `None` when it already
    /// streams OpenAI's chunks.
    fn stream_translator(
        &self,
        model: &str,
        include_usage: bool,
    ) -> Option<Box<dyn StreamTranslator>> {
        self.translation().map(|t| (t.stream)(model, include_usage))
    }

    /// Whether an error answer says the key (not the request) is the problem where
    /// its status does not (401 and 403 always count as the key's, see
    /// `failover::verdict_for_status`). Such answers move to the next key.
    fn key_rejected(&self, _status: u16, _body: &[u8]) -> bool {
        false
    }

    /// The request (a GET) that lists the models a key can use on this upstream
    /// (A6, upstream docking); an error where the provider cannot list them with a
    /// key.
    fn models_request(&self, up: &Upstream, key: Option<&str>) -> Result<Outgoing, GatewayError> {
        Ok(openai::models_request(&up.base_path, key))
    }

    /// The model names in a successful answer to [`Provider::models_request`], as
    /// a channel's `models` would name them; `None` when the body is not such a list.
    fn parse_models(&self, body: &[u8]) -> Option<Vec<String>> {
        openai::parse_models(body)
    }
}

/// The one place a channel type picks its provider.
pub fn provider(kind: ChannelType) -> &'static dyn Provider {
    match kind {
        ChannelType::Openai | ChannelType::Mock => &openai::OpenAi,
        ChannelType::Azure => &azure::Azure,
        ChannelType::Anthropic => &anthropic::Anthropic,
        ChannelType::Gemini => &gemini::Gemini,
    }
}

/// [`Provider::prepare`] of the channel's provider.
pub fn prepare(
    channel: &Channel,
    endpoint: Endpoint,
    rest: &str,
    body: Bytes,
    upstream_model: &str,
    key: Option<&str>,
) -> Result<Outgoing, GatewayError> {
    let req = Incoming {
        endpoint,
        rest,
        body,
        upstream_model,
        key,
    };
    provider(channel.kind).prepare(channel, req)
}

/// [`Provider::supports`].
pub fn supports(kind: ChannelType, endpoint: Endpoint) -> bool {
    provider(kind).supports(endpoint)
}

/// [`Provider::key_rejected`]: Gemini answers a bad API key with 400
/// `API_KEY_INVALID`; Anthropic an exhausted account with 400 "credit balance".
pub fn key_rejected(kind: ChannelType, status: u16, body: &[u8]) -> bool {
    provider(kind).key_rejected(status, body)
}

/// [`Provider::translates`].
pub fn translates(kind: ChannelType) -> bool {
    provider(kind).translates()
}

/// [`Provider::translate_json`].
pub fn translate_json(kind: ChannelType, status: u16, body: &[u8], model: &str) -> Vec<u8> {
    provider(kind).translate_json(status, body, model)
}

/// [`Provider::stream_translator`].
pub fn stream_translator(
    kind: ChannelType,
    model: &str,
    include_usage: bool,
) -> Option<Box<dyn StreamTranslator>> {
    provider(kind).stream_translator(model, include_usage)
}

/// [`Provider::models_request`].
pub fn models_request(
    kind: ChannelType,
    upstream: &Upstream,
    key: Option<&str>,
) -> Result<Outgoing, GatewayError> {
    provider(kind).models_request(upstream, key)
}

/// [`Provider::parse_models`].
pub fn parse_models(kind: ChannelType, body: &[u8]) -> Option<Vec<String>> {
    provider(kind).parse_models(body)
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

/// The path before `/v1` on the channel's host (none for `mock`).
/// A request passed verbatim (files, batches, uploads): the path on the
/// channel's host and its key, as its provider takes them. Only OpenAI's and
/// Anthropic's APIs have such endpoints in the same place.
pub fn forward_request(
    channel: &Channel,
    rest: &str,
    key: Option<&str>,
) -> Result<Outgoing, GatewayError> {
    let path = format!("{}/v1{rest}", base_path(channel));
    let headers = match channel.kind {
        ChannelType::Openai => openai::bearer(key),
        ChannelType::Anthropic => anthropic::headers(key),
        other => {
            return Err(GatewayError::BadRequest(format!(
                "channel `{}` is a `{}` channel; only `openai` and `anthropic` ones take requests verbatim",
                channel.name,
                other.as_str()
            )))
        }
    };
    Ok(Outgoing::get(path, headers))
}

pub(crate) fn base_path(channel: &Channel) -> &str {
    channel
        .upstream
        .as_ref()
        .map(|u| u.base_path.as_str())
        .unwrap_or("")
}

/// A 400 whose body says one of `phrases`: how providers that answer a bad key
/// with 400 (not 401) say it is the key.
pub(crate) fn says_400(status: u16, body: &[u8], phrases: &[&str]) -> bool {
    status == 400 && {
        let text = String::from_utf8_lossy(body);
        phrases.iter().any(|p| text.contains(p))
    }
}

/// The items of the list at `pointer` in `v`; none where there is no list.
pub(crate) fn items<'a>(
    v: &'a serde_json::Value,
    pointer: &str,
) -> impl Iterator<Item = &'a serde_json::Value> {
    v.pointer(pointer)
        .and_then(|a| a.as_array())
        .into_iter()
        .flatten()
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The JSON body of a request to a provider that serves chat completions only.
pub(crate) fn chat_body(kind: &str, req: &Incoming) -> Result<serde_json::Value, GatewayError> {
    if req.endpoint != Endpoint::ChatCompletions {
        return Err(GatewayError::BadRequest(format!(
            "`{}` is not available through a `{kind}` channel; it serves chat completions",
            req.endpoint.as_str()
        )));
    }
    request::parse_json(&req.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ChannelType; 5] = [
        ChannelType::Openai,
        ChannelType::Azure,
        ChannelType::Anthropic,
        ChannelType::Gemini,
        ChannelType::Mock,
    ];

    #[test]
    fn each_type_reaches_its_provider() {
        let translating: Vec<_> = ALL.into_iter().filter(|k| translates(*k)).collect();
        assert_eq!(translating, [ChannelType::Anthropic, ChannelType::Gemini]);
        for kind in ALL {
            // A provider streams through a translator exactly when it translates.
            assert_eq!(
                stream_translator(kind, "m", true).is_some(),
                translates(kind),
                "{kind:?}"
            );
            assert!(supports(kind, Endpoint::ChatCompletions), "{kind:?}");
        }
        let embeddings: Vec<_> = ALL
            .into_iter()
            .filter(|k| supports(*k, Endpoint::Embeddings))
            .collect();
        assert_eq!(
            embeddings,
            [ChannelType::Openai, ChannelType::Azure, ChannelType::Mock]
        );
    }

    #[test]
    fn openai_answers_pass_through_untouched() {
        let body = br#"{"error":{"message":"credit balance API_KEY_INVALID"}}"#;
        for kind in [ChannelType::Openai, ChannelType::Azure, ChannelType::Mock] {
            assert_eq!(translate_json(kind, 400, body, "m"), body.to_vec());
            assert!(!key_rejected(kind, 400, body), "{kind:?}");
        }
    }

    #[test]
    fn key_rejections_are_400s_that_name_the_key() {
        let gemini = br#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"reason":"API_KEY_INVALID"}]}}"#;
        assert!(key_rejected(ChannelType::Gemini, 400, gemini));
        assert!(!key_rejected(ChannelType::Gemini, 500, gemini));
        assert!(!key_rejected(ChannelType::Anthropic, 400, gemini));
        let anthropic = br#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API."}}"#;
        assert!(key_rejected(ChannelType::Anthropic, 400, anthropic));
        assert!(!key_rejected(ChannelType::Gemini, 400, anthropic));
        assert!(!key_rejected(
            ChannelType::Anthropic,
            400,
            br#"{"error":{"message":"max_tokens: too large"}}"#
        ));
    }
}
