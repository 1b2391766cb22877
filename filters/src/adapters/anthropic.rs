//! Anthropic Messages API (`POST /v1/messages`, `x-api-key`, `anthropic-version`).
//!
//! Request: system and developer messages become `system`; user and assistant turns
//! become content blocks (text, images as base64 or URL sources, tool calls as
//! `tool_use`, tool answers as `tool_result`); consecutive turns of one role are
//! merged; `max_tokens` is required, so a default fills in. Answer: text and
//! `tool_use` blocks become the message and its `tool_calls`; `stop_reason` becomes
//! `finish_reason`; usage comes from `input_tokens` (+ cache tokens) and
//! `output_tokens`. Stream: `message_start` … `message_stop` become chunks.

use super::sse::Splitter;
use super::{
    chunk_event, content_text, data_url, openai_error, parse_json, stop_list, unix_now,
    unsupported, usage_event, Outgoing, StreamTranslator, DONE,
};
use crate::config::Channel;
use crate::route::Endpoint;
use crate::GatewayError;
use bytes::Bytes;
use serde_json::{json, Map, Value};

pub const VERSION: &str = "2023-06-01";
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

pub fn prepare(
    channel: &Channel,
    base: &str,
    endpoint: Endpoint,
    body: &Bytes,
    model: &str,
    key: Option<&str>,
) -> Result<Outgoing, GatewayError> {
    if endpoint != Endpoint::ChatCompletions {
        return Err(unsupported("anthropic", endpoint));
    }
    let req = parse_json(body)?;
    let out = to_messages_request(
        &req,
        model,
        channel.default_max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
    )?;
    let mut headers = vec![("anthropic-version", VERSION.to_string())];
    if let Some(k) = key {
        headers.push(("x-api-key", k.to_string()));
    }
    Ok(Outgoing {
        path: format!("{base}/v1/messages"),
        headers,
        body: Bytes::from(
            serde_json::to_vec(&out).map_err(|e| GatewayError::Internal(e.to_string()))?,
        ),
    })
}

fn image_block(url: &str) -> Value {
    match data_url(url) {
        Some((mime, data)) => {
            json!({"type": "image", "source": {"type": "base64", "media_type": mime, "data": data}})
        }
        None => json!({"type": "image", "source": {"type": "url", "url": url}}),
    }
}

fn user_blocks(content: Option<&Value>) -> Vec<Value> {
    match content {
        Some(Value::String(s)) if s.is_empty() => Vec::new(),
        Some(Value::String(s)) => vec![json!({"type": "text", "text": s})],
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| match p.get("type").and_then(|t| t.as_str()) {
                Some("text") => p
                    .get("text")
                    .and_then(|t| t.as_str())
                    .filter(|t| !t.is_empty())
                    .map(|t| json!({"type": "text", "text": t})),
                Some("image_url") => {
                    let url = p.pointer("/image_url/url").and_then(|u| u.as_str())?;
                    Some(image_block(url))
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The OpenAI chat request as a Messages API request.
pub fn to_messages_request(
    req: &Value,
    model: &str,
    default_max_tokens: u32,
) -> Result<Value, GatewayError> {
    let messages = req
        .get("messages")
        .and_then(|m| m.as_array())
        .ok_or_else(|| GatewayError::BadRequest("`messages` must be an array".into()))?;
    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<(String, Vec<Value>)> = Vec::new();
    for m in messages {
        let role = m.get("role").and_then(|r| r.as_str()).unwrap_or("user");
        let (role, blocks) = match role {
            "system" | "developer" => {
                system.push(content_text(m.get("content")));
                continue;
            }
            "assistant" => {
                let mut blocks = Vec::new();
                let text = content_text(m.get("content"));
                if !text.is_empty() {
                    blocks.push(json!({"type": "text", "text": text}));
                }
                for call in m
                    .get("tool_calls")
                    .and_then(|t| t.as_array())
                    .into_iter()
                    .flatten()
                {
                    let args = call
                        .pointer("/function/arguments")
                        .and_then(|a| a.as_str())
                        .unwrap_or("{}");
                    blocks.push(json!({
                        "type": "tool_use",
                        "id": call.get("id").cloned().unwrap_or(Value::Null),
                        "name": call.pointer("/function/name").cloned().unwrap_or(Value::Null),
                        "input": serde_json::from_str::<Value>(args).unwrap_or_else(|_| json!({})),
                    }));
                }
                ("assistant", blocks)
            }
            "tool" | "function" => (
                "user",
                vec![json!({
                    "type": "tool_result",
                    "tool_use_id": m.get("tool_call_id").cloned().unwrap_or(Value::Null),
                    "content": content_text(m.get("content")),
                })],
            ),
            _ => ("user", user_blocks(m.get("content"))),
        };
        match turns.last_mut() {
            Some((last, existing)) if last == role => existing.extend(blocks),
            _ => turns.push((role.to_string(), blocks)),
        }
    }
    // Anthropic wants tool results first in their turn, and no empty turns.
    for (_, blocks) in &mut turns {
        blocks.sort_by_key(|b| b.get("type").and_then(|t| t.as_str()) != Some("tool_result"));
    }
    turns.retain(|(_, blocks)| !blocks.is_empty());
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    let max = req
        .get("max_completion_tokens")
        .or_else(|| req.get("max_tokens"))
        .and_then(|v| v.as_u64())
        .unwrap_or(u64::from(default_max_tokens));
    out.insert("max_tokens".into(), json!(max));
    if !system.is_empty() {
        out.insert("system".into(), json!(system.join("\n\n")));
    }
    out.insert(
        "messages".into(),
        Value::Array(
            turns
                .into_iter()
                .map(|(role, content)| json!({"role": role, "content": content}))
                .collect(),
        ),
    );
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("top_k", "top_k"),
        ("stream", "stream"),
    ] {
        if let Some(v) = req.get(from).filter(|v| !v.is_null()) {
            out.insert(to.into(), v.clone());
        }
    }
    if let Some(stop) = stop_list(req.get("stop")) {
        out.insert("stop_sequences".into(), json!(stop));
    }
    if let Some(user) = req.get("user").and_then(|u| u.as_str()) {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    if let Some(tools) = req.get("tools").and_then(|t| t.as_array()) {
        let tools: Vec<Value> = tools
            .iter()
            .filter_map(|t| t.get("function"))
            .map(|f| {
                json!({
                    "name": f.get("name").cloned().unwrap_or(Value::Null),
                    "description": f.get("description").cloned().unwrap_or(json!("")),
                    "input_schema": f.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                })
            })
            .collect();
        if !tools.is_empty() {
            out.insert("tools".into(), Value::Array(tools));
        }
    }
    match req.get("tool_choice") {
        Some(Value::String(s)) if s == "auto" => {
            out.insert("tool_choice".into(), json!({"type": "auto"}));
        }
        Some(Value::String(s)) if s == "required" => {
            out.insert("tool_choice".into(), json!({"type": "any"}));
        }
        Some(Value::String(s)) if s == "none" => {
            out.insert("tool_choice".into(), json!({"type": "none"}));
        }
        Some(Value::Object(o)) => {
            if let Some(name) = o.get("function").and_then(|f| f.get("name")) {
                out.insert("tool_choice".into(), json!({"type": "tool", "name": name}));
            }
        }
        _ => {}
    }
    Ok(Value::Object(out))
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

pub fn translate_answer(body: &[u8], model: &str) -> Vec<u8> {
    let Ok(msg) = serde_json::from_slice::<Value>(body) else {
        return openai_error(
            "the upstream answered with something that is not JSON",
            "server_error",
            "bad_upstream_answer",
        );
    };
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in msg
        .get("content")
        .and_then(|c| c.as_array())
        .into_iter()
        .flatten()
    {
        match block.get("type").and_then(|t| t.as_str()) {
            Some("text") => text.push_str(block.get("text").and_then(|t| t.as_str()).unwrap_or("")),
            Some("tool_use") => calls.push(json!({
                "id": block.get("id"),
                "type": "function",
                "function": {"name": block.get("name"), "arguments": block.get("input").map(|i| i.to_string()).unwrap_or_else(|| "{}".into())},
            })),
            _ => {}
        }
    }
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    let usage = msg.get("usage").cloned().unwrap_or(Value::Null);
    let (prompt, completion) = (
        prompt_tokens(&usage),
        usage
            .get("output_tokens")
            .and_then(|v| v.as_u64())
            .unwrap_or(0),
    );
    let out = json!({
        "id": msg.get("id").cloned().unwrap_or_else(|| json!("chatcmpl-anthropic")),
        "object": "chat.completion",
        "created": unix_now(),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(msg.get("stop_reason").and_then(|s| s.as_str()))}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt.saturating_add(completion)},
    });
    serde_json::to_vec(&out).unwrap_or_default()
}

pub fn translate_error(status: u16, body: &[u8]) -> Vec<u8> {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let kind = v
        .pointer("/error/type")
        .and_then(|t| t.as_str())
        .unwrap_or("api_error");
    let message = v
        .pointer("/error/message")
        .and_then(|m| m.as_str())
        .unwrap_or("the Anthropic upstream refused the request");
    let openai_type = match kind {
        "invalid_request_error" | "not_found_error" | "request_too_large" => {
            "invalid_request_error"
        }
        "authentication_error" => "authentication_error",
        "permission_error" => "permission_error",
        "rate_limit_error" => "rate_limit_error",
        _ => super::error_type_for(status),
    };
    openai_error(message, openai_type, kind)
}

/// `message_start` … `message_stop` → OpenAI chunks.
pub struct Stream {
    split: Splitter,
    model: String,
    include_usage: bool,
    id: String,
    created: u64,
    prompt: u64,
    completion: u64,
    /// Anthropic block index → OpenAI tool-call index, and whether arguments came.
    tools: Vec<(u64, usize, bool)>,
    done: bool,
}

impl Stream {
    pub fn new(model: &str, include_usage: bool) -> Self {
        Stream {
            split: Splitter::default(),
            model: model.to_string(),
            include_usage,
            id: "chatcmpl-anthropic".into(),
            created: unix_now(),
            prompt: 0,
            completion: 0,
            tools: Vec::new(),
            done: false,
        }
    }

    fn event(&mut self, v: &Value, out: &mut Vec<u8>) {
        let chunk = |s: &Self, delta: Value, finish: Option<&str>| {
            chunk_event(&s.id, &s.model, s.created, delta, finish)
        };
        match v.get("type").and_then(|t| t.as_str()) {
            Some("message_start") => {
                if let Some(id) = v.pointer("/message/id").and_then(|i| i.as_str()) {
                    self.id = id.to_string();
                }
                let usage = v.pointer("/message/usage").cloned().unwrap_or(Value::Null);
                self.prompt = prompt_tokens(&usage);
                self.completion = usage
                    .get("output_tokens")
                    .and_then(|o| o.as_u64())
                    .unwrap_or(0);
                out.extend(chunk(
                    self,
                    json!({"role": "assistant", "content": ""}),
                    None,
                ));
            }
            Some("content_block_start") => {
                let block = v.get("content_block").cloned().unwrap_or(Value::Null);
                if block.get("type").and_then(|t| t.as_str()) == Some("tool_use") {
                    let index = v.get("index").and_then(|i| i.as_u64()).unwrap_or(0);
                    let n = self.tools.len();
                    self.tools.push((index, n, false));
                    let delta = json!({"tool_calls": [{"index": n, "id": block.get("id"), "type": "function", "function": {"name": block.get("name"), "arguments": ""}}]});
                    out.extend(chunk(self, delta, None));
                }
            }
            Some("content_block_delta") => {
                let delta = v.get("delta").cloned().unwrap_or(Value::Null);
                match delta.get("type").and_then(|t| t.as_str()) {
                    Some("text_delta") => {
                        let text = delta.get("text").cloned().unwrap_or(json!(""));
                        out.extend(chunk(self, json!({"content": text}), None));
                    }
                    Some("input_json_delta") => {
                        let index = v.get("index").and_then(|i| i.as_u64()).unwrap_or(0);
                        let partial = delta
                            .get("partial_json")
                            .and_then(|p| p.as_str())
                            .unwrap_or("")
                            .to_string();
                        if let Some(tool) = self.tools.iter_mut().find(|(i, _, _)| *i == index) {
                            tool.2 |= !partial.is_empty();
                            let n = tool.1;
                            let delta = json!({"tool_calls": [{"index": n, "function": {"arguments": partial}}]});
                            out.extend(chunk(self, delta, None));
                        }
                    }
                    _ => {}
                }
            }
            Some("content_block_stop") => {
                // A tool called with no arguments still needs valid JSON for them.
                let index = v.get("index").and_then(|i| i.as_u64()).unwrap_or(0);
                if let Some(tool) = self
                    .tools
                    .iter_mut()
                    .find(|(i, _, sent)| *i == index && !sent)
                {
                    tool.2 = true;
                    let n = tool.1;
                    out.extend(chunk(
                        self,
                        json!({"tool_calls": [{"index": n, "function": {"arguments": "{}"}}]}),
                        None,
                    ));
                }
            }
            Some("message_delta") => {
                if let Some(o) = v.pointer("/usage/output_tokens").and_then(|o| o.as_u64()) {
                    self.completion = o;
                }
                if let Some(usage) = v.get("usage") {
                    // Newer streams repeat the final input counts here.
                    self.prompt = self.prompt.max(prompt_tokens(usage));
                }
                let reason =
                    finish_reason(v.pointer("/delta/stop_reason").and_then(|s| s.as_str()));
                out.extend(chunk(self, json!({}), Some(reason)));
            }
            Some("message_stop") => out.extend(self.close()),
            Some("error") => {
                let kind = v
                    .pointer("/error/type")
                    .and_then(|t| t.as_str())
                    .unwrap_or("api_error");
                let message = v
                    .pointer("/error/message")
                    .and_then(|m| m.as_str())
                    .unwrap_or("upstream error");
                out.extend(b"data: ");
                out.extend(openai_error(message, super::error_type_for(500), kind));
                out.extend(b"\n\n");
                self.done = true;
            }
            _ => {}
        }
    }

    fn close(&mut self) -> Vec<u8> {
        if self.done {
            return Vec::new();
        }
        self.done = true;
        let mut out = Vec::new();
        if self.include_usage {
            out.extend(usage_event(
                &self.id,
                &self.model,
                self.created,
                self.prompt,
                self.completion,
            ));
        }
        out.extend(DONE);
        out
    }
}

impl StreamTranslator for Stream {
    fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for ev in self.split.push(chunk) {
            if let Ok(v) = serde_json::from_str::<Value>(&ev.data) {
                self.event(&v, &mut out);
            }
        }
        out
    }

    /// A stream is complete only with `message_stop`: no `[DONE]` is made up for one
    /// that just ended, so the relay reports it broken.
    fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(ev) = self.split.rest() {
            if let Ok(v) = serde_json::from_str::<Value>(&ev.data) {
                self.event(&v, &mut out);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::response_body::{json_usage, SseTap};

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
        let out = translate_answer(body, "claude");
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["choices"][0]["message"]["content"],
            "Hi! My name is Claude."
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        let (u, _) = json_usage(&out);
        assert_eq!(
            (u.unwrap().prompt_tokens, u.unwrap().completion_tokens),
            (2095, 503)
        );
        let tool = br#"{"id":"m","content":[{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"city":"Paris"}}],"stop_reason":"tool_use","usage":{"input_tokens":5,"output_tokens":7,"cache_read_input_tokens":100}}"#;
        let v: Value = serde_json::from_slice(&translate_answer(tool, "c")).unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Paris\"}"
        );
        assert_eq!(v["usage"]["prompt_tokens"], 105);
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
            let mut s = Stream::new("claude", true);
            let mut out = s.feed(&STREAM.as_bytes()[..cut]);
            out.extend(s.feed(&STREAM.as_bytes()[cut..]));
            out.extend(s.finish());
            let mut tap = SseTap::new(false);
            tap.feed(Bytes::from(out));
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
}
