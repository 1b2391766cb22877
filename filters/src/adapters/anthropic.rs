//! Anthropic Messages API (`POST /v1/messages`, `x-api-key`, `anthropic-version`).
//!
//! Request: system and developer messages become `system`; user and assistant turns
//! become content blocks (text, images as base64 or URL sources, tool calls as
//! `tool_use`, tool answers as `tool_result`); consecutive turns of one role are
//! merged; `max_tokens` is required, so a default fills in. Answer: text and
//! `tool_use` blocks become the message and its `tool_calls`; `stop_reason` becomes
//! `finish_reason`; usage comes from `input_tokens` (+ cache tokens) and
//! `output_tokens`. Stream: `message_start` … `message_stop` become chunks. Models:
//! `GET /v1/models` lists them as `data[].id`, as OpenAI does.

use super::answer::{error_fields, error_json, not_json, Completion};
use super::request::{
    content_text, copy_options, data_url, functions, max_tokens, messages, stop_list, tool_choice,
    turns, turns_json, Dialect, ToolChoice,
};
use super::stream::{ChunkStream, Chunks, EventMapper};
use super::{
    base_path, chat_body, features, items, says_400, Incoming, Outgoing, Provider, Translation,
};
use crate::config::{Channel, Upstream};
use crate::route::Endpoint;
use crate::GatewayError;
use serde_json::{json, Map, Value};

pub const VERSION: &str = "2023-06-01";
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// The Messages API, for chat completions only.
pub struct Anthropic;

impl Provider for Anthropic {
    fn supports(&self, endpoint: Endpoint) -> bool {
        matches!(
            endpoint,
            Endpoint::ChatCompletions | Endpoint::Messages | Endpoint::CountTokens
        )
    }

    fn prepare(&self, channel: &Channel, req: Incoming) -> Result<Outgoing, GatewayError> {
        // A Messages client's own body, natively: only the model name was set.
        if req.endpoint.speaks_anthropic() {
            let path = format!("{}/v1{}", base_path(channel), req.rest);
            return Ok(Outgoing {
                path,
                headers: headers(req.key),
                body: req.body,
            });
        }
        let max_tokens = channel.default_max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
        let out = to_messages_request(
            &chat_body("anthropic", &req)?,
            req.upstream_model,
            max_tokens,
        )?;
        let path = format!("{}/v1/messages", base_path(channel));
        Outgoing::json(path, headers(req.key), &out)
    }

    fn translation(&self) -> Option<Translation> {
        Some(TRANSLATION)
    }

    /// An exhausted account is a 400 that names the credit balance.
    fn key_rejected(&self, status: u16, body: &[u8]) -> bool {
        says_400(status, body, &["credit balance"])
    }

    /// `GET /v1/models`, 1,000 to a page (the API's most; it gives 20 unasked).
    fn models_request(&self, up: &Upstream, key: Option<&str>) -> Result<Outgoing, GatewayError> {
        let path = format!("{}/v1/models?limit=1000", up.base_path);
        Ok(Outgoing::get(path, headers(key)))
    }
}

/// The client's own `anthropic-version` and `anthropic-beta`, for calls that
/// pass its request natively (its beta fields need their header).
pub fn client_headers<'h>(
    headers: impl Iterator<Item = (&'h str, &'h str)>,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for (name, value) in headers {
        for known in ["anthropic-version", "anthropic-beta"] {
            if name.eq_ignore_ascii_case(known) {
                out.push((known, value.to_string()));
            }
        }
    }
    out
}

/// `headers` with the client's own in place of weir's of the same name.
pub fn with_client_headers(
    mut headers: Vec<(&'static str, String)>,
    client: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    headers.retain(|(n, _)| !client.iter().any(|(c, _)| c == n));
    headers.extend(client.iter().cloned());
    headers
}

pub(crate) fn headers(key: Option<&str>) -> Vec<(&'static str, String)> {
    let mut headers = vec![("anthropic-version", VERSION.to_string())];
    if let Some(k) = key {
        headers.push(("x-api-key", k.to_string()));
    }
    headers
}

/// Messages as content blocks; system texts apart.
#[derive(Default)]
struct Blocks {
    system: Vec<String>,
}

impl Dialect for Blocks {
    const ASSISTANT: &'static str = "assistant";

    fn system(&mut self, text: String) {
        self.system.push(text);
    }

    fn text(&self, text: &str) -> Value {
        json!({"type": "text", "text": text})
    }

    fn image(&self, url: &str) -> Value {
        match data_url(url) {
            Some((mime, data)) => {
                json!({"type": "image", "source": {"type": "base64", "media_type": mime, "data": data}})
            }
            None => json!({"type": "image", "source": {"type": "url", "url": url}}),
        }
    }

    fn tool_call(&mut self, call: &Value, args: Value) -> Value {
        json!({
            "type": "tool_use",
            "id": call.get("id").cloned().unwrap_or(Value::Null),
            "name": call.pointer("/function/name").cloned().unwrap_or(Value::Null),
            "input": args,
        })
    }

    fn tool_result(&self, m: &Value) -> Value {
        json!({
            "type": "tool_result",
            "tool_use_id": m.get("tool_call_id").cloned().unwrap_or(Value::Null),
            "content": content_text(m.get("content")),
        })
    }
}

/// The OpenAI chat request as a Messages API request.
pub fn to_messages_request(
    req: &Value,
    model: &str,
    default_max_tokens: u32,
) -> Result<Value, GatewayError> {
    let mut blocks = Blocks::default();
    let mut turns = turns(&mut blocks, messages(req)?);
    // Anthropic wants tool results first in their turn, and no empty turns.
    for (_, blocks) in &mut turns {
        blocks.sort_by_key(|b| b.get("type").and_then(|t| t.as_str()) != Some("tool_result"));
    }
    turns.retain(|(_, blocks)| !blocks.is_empty());
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    let max = max_tokens(req)
        .and_then(|v| v.as_u64())
        .unwrap_or(u64::from(default_max_tokens));
    out.insert("max_tokens".into(), json!(max));
    if !blocks.system.is_empty() {
        out.insert("system".into(), json!(blocks.system.join("\n\n")));
    }
    out.insert("messages".into(), turns_json(turns, "content"));
    let same = ["temperature", "top_p", "top_k", "stream"].map(|k| (k, k));
    copy_options(req, &mut out, &same);
    if let Some(stop) = stop_list(req.get("stop")) {
        out.insert("stop_sequences".into(), json!(stop));
    }
    if let Some(user) = req.get("user").and_then(|u| u.as_str()) {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    let tools: Vec<Value> = functions(req).map(tool_declaration).collect();
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = tool_choice(req) {
        out.insert("tool_choice".into(), tool_choice_json(choice));
    }
    features::anthropic(req, &mut out)?;
    Ok(Value::Object(out))
}

fn tool_declaration(f: &Value) -> Value {
    json!({
        "name": f.get("name").cloned().unwrap_or(Value::Null),
        "description": f.get("description").cloned().unwrap_or(json!("")),
        "input_schema": f.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object", "properties": {}})),
    })
}

fn tool_choice_json(choice: ToolChoice) -> Value {
    match choice {
        ToolChoice::Auto => json!({"type": "auto"}),
        ToolChoice::Required => json!({"type": "any"}),
        ToolChoice::Never => json!({"type": "none"}),
        ToolChoice::Function(name) => json!({"type": "tool", "name": name}),
    }
}

fn finish_reason(stop: Option<&str>) -> &'static str {
    match stop {
        Some("max_tokens") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        _ => "stop",
    }
}

/// Input tokens with the prompt-cache reads and writes Anthropic counts apart.
fn prompt_tokens(usage: &Value) -> u64 {
    [
        "input_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ]
    .iter()
    .filter_map(|k| usage.get(*k).and_then(|v| v.as_u64()))
    .sum()
}

fn output_tokens(usage: &Value) -> u64 {
    usage
        .get("output_tokens")
        .and_then(|v| v.as_u64())
        .unwrap_or(0)
}

/// What a message's content blocks say, in OpenAI's terms.
#[derive(Default)]
struct Said {
    text: String,
    calls: Vec<Value>,
    reasoning: String,
    annotations: Vec<Value>,
}

/// A text block's web search citations, over its span of the answer's text.
fn citations(block: &Value, start: usize, end: usize) -> impl Iterator<Item = Value> + '_ {
    items(block, "/citations")
        .filter(|c| c.get("url").is_some())
        .map(move |c| features::url_citation(&c["url"], &c["title"], start as u64, end as u64))
}

/// The text, tool calls, thinking and citations of a message's content blocks.
fn content_of(msg: &Value) -> Said {
    let mut said = Said::default();
    let (text, calls) = (&mut said.text, &mut said.calls);
    for block in items(msg, "/content") {
        match block.get("type").and_then(|t| t.as_str()) {
            Some("text") => {
                let start = text.chars().count();
                text.push_str(block.get("text").and_then(|t| t.as_str()).unwrap_or(""));
                let end = text.chars().count();
                said.annotations.extend(citations(block, start, end));
            }
            Some("thinking") => said
                .reasoning
                .push_str(block.get("thinking").and_then(|t| t.as_str()).unwrap_or("")),
            Some("tool_use") => calls.push(json!({
                "id": block.get("id"),
                "type": "function",
                "function": {"name": block.get("name"), "arguments": block.get("input").map(|i| i.to_string()).unwrap_or_else(|| "{}".into())},
            })),
            _ => {}
        }
    }
    said
}

pub fn translate_answer(body: &[u8], model: &str) -> Vec<u8> {
    let Ok(msg) = serde_json::from_slice::<Value>(body) else {
        return not_json();
    };
    let said = content_of(&msg);
    let usage = msg.get("usage").unwrap_or(&Value::Null);
    Completion {
        id: msg
            .get("id")
            .cloned()
            .unwrap_or_else(|| json!("chatcmpl-anthropic")),
        model,
        text: said.text,
        calls: said.calls,
        finish: finish_reason(msg.get("stop_reason").and_then(|s| s.as_str())),
        usage: (prompt_tokens(usage), output_tokens(usage)),
        reasoning: said.reasoning,
        annotations: said.annotations,
        // Anthropic counts thinking in its output tokens without a split.
        reasoning_tokens: 0,
    }
    .into_json()
}

/// Anthropic's error `type` as OpenAI's, where they differ in name only.
fn openai_type(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "invalid_request_error" | "not_found_error" | "request_too_large" => {
            "invalid_request_error"
        }
        "authentication_error" => "authentication_error",
        "permission_error" => "permission_error",
        "rate_limit_error" => "rate_limit_error",
        _ => return None,
    })
}

pub fn translate_error(status: u16, body: &[u8]) -> Vec<u8> {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let default = "the Anthropic upstream refused the request";
    let (kind, message) = error_fields(&v, "type", "api_error", default);
    error_json(status, kind, message, openai_type(kind))
}

const TRANSLATION: Translation = Translation::new(translate_answer, translate_error, Stream::boxed);

/// `message_start` … `message_stop` → OpenAI chunks.
pub type Stream = ChunkStream<Events>;

/// What a Messages stream's events mean. A stream is complete only with
/// `message_stop`: no `[DONE]` is made up for one that just ended, so the relay
/// reports it broken.
#[derive(Default)]
pub struct Events {
    /// Anthropic block index → OpenAI tool-call index, and whether arguments came.
    tools: Vec<(u64, usize, bool)>,
}

impl EventMapper for Events {
    const DEFAULT_ID: &'static str = "chatcmpl-anthropic";
    const ENDS_WITH_RESPONSE: bool = false;

    fn event(&mut self, v: &Value, out: &mut Chunks) {
        match v.get("type").and_then(|t| t.as_str()) {
            Some("message_start") => {
                out.set_id(v.pointer("/message/id").and_then(|i| i.as_str()));
                let usage = v.pointer("/message/usage").unwrap_or(&Value::Null);
                out.prompt = prompt_tokens(usage);
                out.completion = output_tokens(usage);
                out.delta(json!({"content": ""}));
            }
            Some("content_block_start") => self.block_start(v, out),
            Some("content_block_delta") => self.block_delta(v, out),
            Some("content_block_stop") => self.block_stop(v, out),
            Some("message_delta") => {
                if let Some(o) = v.pointer("/usage/output_tokens").and_then(|o| o.as_u64()) {
                    out.completion = o;
                }
                if let Some(usage) = v.get("usage") {
                    // Newer streams repeat the final input counts here.
                    out.prompt = out.prompt.max(prompt_tokens(usage));
                }
                out.finish(finish_reason(
                    v.pointer("/delta/stop_reason").and_then(|s| s.as_str()),
                ));
            }
            Some("message_stop") => out.close(),
            Some("error") => {
                let (kind, message) = error_fields(v, "type", "api_error", "upstream error");
                out.error(message, kind);
            }
            _ => {}
        }
    }
}

impl Events {
    fn block_start(&mut self, v: &Value, out: &mut Chunks) {
        let block = v.get("content_block").unwrap_or(&Value::Null);
        if block.get("type").and_then(|t| t.as_str()) == Some("tool_use") {
            let n = self.tools.len();
            self.tools.push((block_index(v), n, false));
            out.delta(json!({"tool_calls": [{"index": n, "id": block.get("id"), "type": "function", "function": {"name": block.get("name"), "arguments": ""}}]}));
        }
    }

    fn block_delta(&mut self, v: &Value, out: &mut Chunks) {
        let delta = v.get("delta").unwrap_or(&Value::Null);
        match delta.get("type").and_then(|t| t.as_str()) {
            Some("text_delta") => {
                let text = delta.get("text").cloned().unwrap_or(json!(""));
                out.delta(json!({"content": text}));
            }
            Some("thinking_delta") => {
                let thought = delta.get("thinking").cloned().unwrap_or(json!(""));
                out.delta(json!({"reasoning_content": thought}));
            }
            Some("citations_delta") => {
                let c = delta.get("citation").unwrap_or(&Value::Null);
                if c.get("url").is_some() {
                    let a = features::url_citation(&c["url"], &c["title"], 0, 0);
                    out.delta(json!({"annotations": [a]}));
                }
            }
            Some("input_json_delta") => {
                let partial = delta
                    .get("partial_json")
                    .and_then(|p| p.as_str())
                    .unwrap_or("");
                let index = block_index(v);
                if let Some(tool) = self.tools.iter_mut().find(|(i, _, _)| *i == index) {
                    tool.2 |= !partial.is_empty();
                    out.delta(json!({"tool_calls": [{"index": tool.1, "function": {"arguments": partial}}]}));
                }
            }
            _ => {}
        }
    }

    fn block_stop(&mut self, v: &Value, out: &mut Chunks) {
        // A tool called with no arguments still needs valid JSON for them.
        let index = block_index(v);
        if let Some(tool) = self
            .tools
            .iter_mut()
            .find(|(i, _, sent)| *i == index && !sent)
        {
            tool.2 = true;
            out.delta(json!({"tool_calls": [{"index": tool.1, "function": {"arguments": "{}"}}]}));
        }
    }
}

fn block_index(v: &Value) -> u64 {
    v.get("index").and_then(|i| i.as_u64()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::answer::read_back;
    use crate::adapters::stream::tap_cut;
    use crate::adapters::StreamTranslator;
    use crate::config::ChannelType;

    #[test]
    fn request_follows_the_messages_api() {
        let req = json!({
            "model": "claude", "max_tokens": 300, "temperature": 0.5, "stop": "END", "stream": true,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"x\"}"}}]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "found"},
                {"role": "user", "content": "thanks"},
            ],
            "tools": [{"type": "function", "function": {"name": "lookup", "description": "d", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}],
            "tool_choice": "required",
        });
        let out = to_messages_request(&req, "claude-sonnet-4-5", 4096).unwrap();
        assert_eq!(out["model"], "claude-sonnet-4-5");
        assert_eq!(out["max_tokens"], 300);
        assert_eq!(out["system"], "Be brief.");
        assert_eq!(out["stop_sequences"], json!(["END"]));
        let msgs = out["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 3, "{out}");
        assert_eq!(
            msgs[0]["content"][1]["source"],
            json!({"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="})
        );
        assert_eq!(msgs[1]["content"][0]["type"], "tool_use");
        assert_eq!(msgs[1]["content"][0]["input"], json!({"q": "x"}));
        // The tool result and the next user turn merge into one user turn.
        assert_eq!(msgs[2]["content"][0]["type"], "tool_result");
        assert_eq!(msgs[2]["content"][1]["text"], "thanks");
        assert_eq!(
            out["tools"][0]["input_schema"]["properties"]["q"]["type"],
            "string"
        );
        assert_eq!(out["tool_choice"], json!({"type": "any"}));
        let plain = to_messages_request(
            &json!({"messages": [{"role": "user", "content": "hi"}]}),
            "m",
            1024,
        )
        .unwrap();
        assert_eq!(plain["max_tokens"], 1024);
    }

    #[test]
    fn tool_results_lead_their_turn_and_empty_turns_go() {
        let req = json!({"messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "", "tool_calls": [{"id": "t1", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "user", "content": "also this"},
            {"role": "tool", "tool_call_id": "t1", "content": "r"},
            {"role": "assistant", "content": ""},
        ]});
        let out = to_messages_request(&req, "m", 10).unwrap();
        let msgs = out["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 3, "{out}");
        assert_eq!(msgs[2]["content"][0]["type"], "tool_result");
        assert_eq!(msgs[2]["content"][1]["text"], "also this");
    }

    #[test]
    fn answer_maps_to_chat_completion() {
        // The documented example response of the Messages API.
        let body = br#"{"id":"msg_013Zva2CMHLNnXjNJJKqJ2EF","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Hi! My name is Claude."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":2095,"output_tokens":503}}"#;
        let (choice, u) = read_back(&translate_answer(body, "claude"));
        assert_eq!(
            choice,
            json!({"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Hi! My name is Claude."}})
        );
        assert_eq!((u.prompt_tokens, u.completion_tokens), (2095, 503));
        let tool = br#"{"id":"m","content":[{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"city":"Paris"}}],"stop_reason":"tool_use","usage":{"input_tokens":5,"output_tokens":7,"cache_read_input_tokens":100}}"#;
        let (choice, u) = read_back(&translate_answer(tool, "c"));
        assert_eq!(
            choice["message"],
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]})
        );
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(u.prompt_tokens, 105);
    }

    #[test]
    fn errors_map_to_openai_shape() {
        let body = br#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}"#;
        let v: Value = serde_json::from_slice(&translate_error(429, body)).unwrap();
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(v["error"]["code"], "rate_limit_error");
        let v: Value = serde_json::from_slice(&translate_error(401, br#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#)).unwrap();
        assert_eq!(v["error"]["type"], "authentication_error");
        let v: Value = serde_json::from_slice(&translate_error(529, b"overloaded")).unwrap();
        assert_eq!(v["error"]["type"], "server_error");
    }

    /// The documented streaming example, cut at every byte.
    pub const STREAM: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\nevent: ping\ndata: {\"type\": \"ping\"}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"!\"}}\n\nevent: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    #[test]
    fn stream_becomes_chunks_with_usage() {
        for cut in [1, 100, 400, STREAM.len() - 3] {
            let tap = tap_cut(&mut Stream::new("claude", true), STREAM.as_bytes(), cut);
            assert_eq!(tap.completion_text().0, "Hello!");
            assert!(tap.saw_done && tap.saw_finish, "cut {cut}");
            let u = tap.usage.unwrap();
            assert_eq!((u.prompt_tokens, u.completion_tokens), (25, 15));
        }
    }

    #[test]
    fn a_cut_stream_gets_no_done() {
        let mut s = Stream::new("claude", true);
        let half = &STREAM[..STREAM.find("event: message_delta").unwrap()];
        let mut out = s.feed(half.as_bytes());
        out.extend(s.finish());
        assert!(!String::from_utf8(out).unwrap().contains("[DONE]"));
    }

    #[test]
    fn tool_use_streams_as_tool_call_deltas() {
        let ev = |v: Value| format!("data: {v}\n\n");
        let stream = [
            ev(json!({"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 3, "output_tokens": 1}}})),
            ev(json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_9", "name": "f", "input": {}}})),
            ev(json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"a\":"}})),
            ev(json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "1}"}})),
            ev(json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}})),
            ev(json!({"type": "message_stop"})),
        ]
        .concat();
        let mut s = Stream::new("c", false);
        let out = String::from_utf8(s.feed(stream.as_bytes())).unwrap();
        let no_args = [
            ev(json!({"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 3}}})),
            ev(json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": "now", "input": {}}})),
            ev(json!({"type": "content_block_stop", "index": 0})),
        ]
        .concat();
        let args = String::from_utf8(Stream::new("c", false).feed(no_args.as_bytes())).unwrap();
        assert!(args.contains("\"arguments\":\"{}\""), "{args}");
        assert!(
            out.contains("\"id\":\"toolu_9\"")
                && out.contains("\"arguments\":\"1}\"")
                && out.contains("\"finish_reason\":\"tool_calls\""),
            "{out}"
        );
        assert!(!out.contains("usage") && out.ends_with("data: [DONE]\n\n"));
    }

    #[test]
    fn models_list_asks_for_the_largest_page() {
        let up = Upstream::parse("https://gw.example/anthropic/").unwrap();
        let req =
            super::super::models_request(ChannelType::Anthropic, &up, Some("sk-ant")).unwrap();
        assert_eq!(req.path, "/anthropic/v1/models?limit=1000");
        assert_eq!(
            req.headers,
            vec![
                ("anthropic-version", VERSION.to_string()),
                ("x-api-key", "sk-ant".to_string())
            ]
        );
        assert!(req.body.is_empty());
        // Shaped as the documented `GET /v1/models` answer.
        let body = br#"{"data":[{"type":"model","id":"claude-sonnet-4-5-20250929","display_name":"Claude Sonnet 4.5","created_at":"2025-09-29T00:00:00Z"},{"type":"model","id":"claude-3-5-haiku-20241022","display_name":"Claude Haiku 3.5","created_at":"2024-10-22T00:00:00Z"}],"has_more":false,"first_id":"claude-sonnet-4-5-20250929","last_id":"claude-3-5-haiku-20241022"}"#;
        assert_eq!(
            super::super::parse_models(ChannelType::Anthropic, body).unwrap(),
            ["claude-sonnet-4-5-20250929", "claude-3-5-haiku-20241022"]
        );
        let refused = br#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#;
        assert_eq!(Anthropic.parse_models(refused), None);
    }
}
