//! Clients that speak Anthropic's Messages API (`POST {gateway}/messages`, Claude
//! Code and the `anthropic` SDKs) served by any channel. The request becomes an
//! OpenAI chat request, so routing, limits, masking, safety, the cache and every
//! provider adapter apply unchanged; the answer comes back the other way: a chat
//! completion becomes a Messages answer, a chunk stream becomes Messages events
//! (`message_start` … `message_stop`), an error becomes Anthropic's error shape.
//! Anthropic channels can take the client's body as it is (see `proxy::call`).

use super::sse::{Event, EventReader, Splitter};
use crate::GatewayError;
use serde_json::{json, Map, Value};

/// Anthropic's error `type` for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        400 | 405 | 409 | 422 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        _ => "api_error",
    }
}

/// An error body in Anthropic's shape.
pub fn error_json(status: u16, message: &str) -> Vec<u8> {
    json!({"type": "error", "error": {"type": error_type(status), "message": message}})
        .to_string()
        .into_bytes()
}

/// An OpenAI error body (weir's or an upstream's) in Anthropic's shape.
pub fn error_from_openai(status: u16, body: &[u8]) -> Vec<u8> {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = v
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("the upstream refused the request");
    error_json(status, message)
}

fn bad(param: &str, message: String) -> GatewayError {
    GatewayError::InvalidParam {
        param: param.to_string(),
        code: "invalid_value",
        message,
    }
}

/// The text of a `system` or `tool_result` content: a string or text blocks.
fn text_of(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// A Messages request as an OpenAI chat request, as far as it goes: the chat
/// body (always, for the checks that read its text) and the first thing it
/// could not translate, which refuses the request unless an Anthropic channel
/// takes it natively. `count_only`: a `count_tokens` body (no `max_tokens`).
pub fn to_chat(
    req: &Value,
    count_only: bool,
) -> Result<(Value, Option<GatewayError>), GatewayError> {
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("model", "`model` must be a string".into()))?;
    let list = req
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("messages", "`messages` must be a list of messages".into()))?;
    let mut messages = Vec::new();
    let system = text_of(req.get("system"));
    if !system.is_empty() {
        messages.push(json!({"role": "system", "content": system}));
    }
    let mut untranslatable = None;
    for (i, m) in list.iter().enumerate() {
        turn(i, m, &mut messages, &mut untranslatable)?;
    }
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    out.insert("messages".into(), Value::Array(messages));
    match req.get("max_tokens") {
        Some(n) if n.as_u64().is_some_and(|n| n > 0) => {
            out.insert("max_tokens".into(), n.clone());
        }
        None if count_only => {}
        _ => {
            return Err(bad(
                "max_tokens",
                "`max_tokens` must be a positive integer".into(),
            ))
        }
    }
    for k in ["temperature", "top_p"] {
        if let Some(v) = req.get(k) {
            out.insert(k.into(), v.clone());
        }
    }
    if let Some(stop) = req.get("stop_sequences").filter(|s| s.is_array()) {
        out.insert("stop".into(), stop.clone());
    }
    if let Some(user) = req.pointer("/metadata/user_id").filter(|u| u.is_string()) {
        out.insert("user".into(), user.clone());
    }
    if req.get("stream").and_then(Value::as_bool) == Some(true) {
        out.insert("stream".into(), json!(true));
        // The answer's `message_delta` carries the usage: always asked for.
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Err(e) = tools(req, &mut out) {
        untranslatable.get_or_insert(e);
    }
    Ok((Value::Object(out), untranslatable))
}

/// One Messages turn as chat messages: tool results first (each its own `tool`
/// message, answering the assistant's calls just before), then the rest.
fn turn(
    i: usize,
    m: &Value,
    out: &mut Vec<Value>,
    untranslatable: &mut Option<GatewayError>,
) -> Result<(), GatewayError> {
    let at = format!("messages[{i}]");
    let role = m.get("role").and_then(Value::as_str).unwrap_or("");
    if role != "user" && role != "assistant" {
        return Err(bad(
            &format!("{at}.role"),
            format!("`{at}.role` must be `user` or `assistant`"),
        ));
    }
    let blocks = match m.get("content") {
        Some(Value::String(s)) => {
            out.push(json!({"role": role, "content": s}));
            return Ok(());
        }
        Some(Value::Array(b)) => b,
        _ => {
            return Err(bad(
                &format!("{at}.content"),
                format!("`{at}.content` must be a string or a list of blocks"),
            ))
        }
    };
    let (mut parts, mut calls) = (Vec::new(), Vec::new());
    for (j, b) in blocks.iter().enumerate() {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => parts.push(json!({"type": "text", "text": b.get("text").cloned().unwrap_or(json!(""))})),
            Some("image") => parts.push(image(b).ok_or_else(|| {
                bad(&format!("{at}.content[{j}].source"), "an image needs a base64 or url `source`".into())
            })?),
            Some("tool_use") => calls.push(json!({
                "id": b.get("id"), "type": "function",
                "function": {"name": b.get("name"), "arguments": b.get("input").unwrap_or(&json!({})).to_string()},
            })),
            Some("tool_result") => out.push(json!({
                "role": "tool",
                "tool_call_id": b.get("tool_use_id"),
                "content": text_of(b.get("content")),
            })),
            // Thinking is the model's own; another provider cannot take it back.
            Some("thinking") | Some("redacted_thinking") => {}
            other => {
                untranslatable.get_or_insert(bad(
                    &format!("{at}.content[{j}].type"),
                    format!("content blocks of type `{}` are served only by Anthropic channels", other.unwrap_or("?")),
                ));
            }
        }
    }
    if role == "assistant" {
        let text: String = parts.iter().filter_map(|p| p["text"].as_str()).collect();
        let mut msg = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
        if !calls.is_empty() {
            msg["tool_calls"] = Value::Array(calls);
        }
        out.push(msg);
    } else if !parts.is_empty() {
        out.push(json!({"role": "user", "content": parts}));
    }
    Ok(())
}

fn image(b: &Value) -> Option<Value> {
    let src = b.get("source")?;
    let url = match src.get("type").and_then(Value::as_str)? {
        "base64" => format!(
            "data:{};base64,{}",
            src.get("media_type")?.as_str()?,
            src.get("data")?.as_str()?
        ),
        "url" => src.get("url")?.as_str()?.to_string(),
        _ => return None,
    };
    Some(json!({"type": "image_url", "image_url": {"url": url}}))
}

fn tools(req: &Value, out: &mut Map<String, Value>) -> Result<(), GatewayError> {
    let mut list = Vec::new();
    for (i, t) in req
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        // Anthropic's own tools (web search, code execution…) run on its servers.
        if let Some(kind) = t
            .get("type")
            .and_then(Value::as_str)
            .filter(|k| *k != "custom")
        {
            return Err(bad(
                &format!("tools[{i}].type"),
                format!("the server tool `{kind}` is served only by Anthropic channels"),
            ));
        }
        list.push(json!({"type": "function", "function": {
            "name": t.get("name"),
            "description": t.get("description").cloned().unwrap_or(json!("")),
            "parameters": t.get("input_schema").cloned().unwrap_or(json!({"type": "object"})),
        }}));
    }
    if !list.is_empty() {
        out.insert("tools".into(), Value::Array(list));
    }
    if let Some(choice) = req.get("tool_choice") {
        let c = match choice.get("type").and_then(Value::as_str) {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => json!({"type": "function", "function": {"name": choice.get("name")}}),
            _ => {
                return Err(bad(
                    "tool_choice",
                    "`tool_choice.type` must be auto, any, tool or none".into(),
                ))
            }
        };
        out.insert("tool_choice".into(), c);
        if choice
            .get("disable_parallel_tool_use")
            .and_then(Value::as_bool)
            == Some(true)
        {
            out.insert("parallel_tool_calls".into(), json!(false));
        }
    }
    Ok(())
}

fn stop_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls") | Some("function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

fn usage_json(usage: Option<&Value>) -> Value {
    let n = |k: &str| {
        usage
            .and_then(|u| u.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    json!({"input_tokens": n("prompt_tokens"), "output_tokens": n("completion_tokens")})
}

/// A Messages id (`msg_…`) for a chat completion's.
fn message_id(chat_id: Option<&str>) -> String {
    format!(
        "msg_{}",
        chat_id.unwrap_or("weir").trim_start_matches("chatcmpl-")
    )
}

/// A chat completion as a Messages answer, for the model the client named.
pub fn answer_from_chat(body: &[u8], model: &str) -> Vec<u8> {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return error_json(502, "the upstream's answer was not JSON");
    };
    let choice = v.pointer("/choices/0").unwrap_or(&Value::Null);
    let msg = choice.get("message").unwrap_or(&Value::Null);
    let mut content = Vec::new();
    if let Some(t) = msg
        .get("reasoning_content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        content.push(json!({"type": "thinking", "thinking": t, "signature": ""}));
    }
    if let Some(t) = msg
        .get("content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        content.push(json!({"type": "text", "text": t}));
    }
    for call in msg
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let args = call
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .unwrap_or("{}");
        content.push(
            json!({"type": "tool_use", "id": call.get("id"), "name": call.pointer("/function/name"),
            "input": serde_json::from_str::<Value>(args).unwrap_or(json!({}))}),
        );
    }
    let id = message_id(v.get("id").and_then(Value::as_str));
    json!({
        "id": id, "type": "message", "role": "assistant", "model": model, "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason").and_then(Value::as_str)),
        "stop_sequence": null, "usage": usage_json(v.get("usage")),
    })
    .to_string()
    .into_bytes()
}

/// The block a Messages stream has open.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Block {
    Text,
    Thinking,
    /// A tool call, by its OpenAI index.
    Tool(u64),
}

/// An OpenAI chunk stream as Messages events.
pub struct EventsFromChunks {
    splitter: Splitter,
    model: String,
    started: bool,
    open: Option<(Block, u64)>,
    next_index: u64,
    stop: Option<&'static str>,
    usage: Option<Value>,
    done: bool,
}

impl EventsFromChunks {
    pub fn new(model: &str) -> EventsFromChunks {
        EventsFromChunks {
            splitter: Splitter::default(),
            model: model.to_string(),
            started: false,
            open: None,
            next_index: 0,
            stop: None,
            usage: None,
            done: false,
        }
    }

    fn on_event(&mut self, ev: Event, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        if ev.data.trim() == "[DONE]" {
            self.close(out);
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(&ev.data) else {
            return;
        };
        if let Some(e) = v.get("error") {
            let message = e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("upstream error");
            emit(
                out,
                "error",
                &json!({"type": "error", "error": {"type": "api_error", "message": message}}),
            );
            self.done = true;
            return;
        }
        self.start(&v, out);
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(u.clone());
        }
        let Some(choice) = v.pointer("/choices/0") else {
            return;
        };
        let delta = choice.get("delta").unwrap_or(&Value::Null);
        if let Some(t) = delta
            .get("reasoning_content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            self.block(
                Block::Thinking,
                json!({"type": "thinking", "thinking": ""}),
                out,
            );
            self.delta(json!({"type": "thinking_delta", "thinking": t}), out);
        }
        if let Some(t) = delta
            .get("content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            self.block(Block::Text, json!({"type": "text", "text": ""}), out);
            self.delta(json!({"type": "text_delta", "text": t}), out);
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let at = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            if self.open.map(|(b, _)| b) != Some(Block::Tool(at)) {
                let start = json!({"type": "tool_use", "id": call.get("id"),
                    "name": call.pointer("/function/name"), "input": {}});
                self.block(Block::Tool(at), start, out);
            }
            if let Some(args) = call
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .filter(|a| !a.is_empty())
            {
                self.delta(
                    json!({"type": "input_json_delta", "partial_json": args}),
                    out,
                );
            }
        }
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.stop = Some(stop_reason(Some(f)));
        }
    }

    fn start(&mut self, v: &Value, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let id = message_id(v.get("id").and_then(Value::as_str));
        emit(
            out,
            "message_start",
            &json!({"type": "message_start", "message": {
            "id": id, "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0}}}),
        );
    }

    /// Opens `kind` unless it is the open block (closing that one first).
    fn block(&mut self, kind: Block, start: Value, out: &mut Vec<u8>) {
        if self.open.map(|(b, _)| b) == Some(kind) {
            return;
        }
        self.close_block(out);
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some((kind, index));
        emit(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": start}),
        );
    }

    fn delta(&self, delta: Value, out: &mut Vec<u8>) {
        if let Some((_, index)) = self.open {
            emit(
                out,
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index, "delta": delta}),
            );
        }
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if let Some((_, index)) = self.open.take() {
            emit(
                out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            );
        }
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        self.done = true;
        self.close_block(out);
        let usage = usage_json(self.usage.as_ref());
        emit(
            out,
            "message_delta",
            &json!({"type": "message_delta",
            "delta": {"stop_reason": self.stop.unwrap_or("end_turn"), "stop_sequence": null}, "usage": usage}),
        );
        emit(out, "message_stop", &json!({"type": "message_stop"}));
    }
}

fn emit(out: &mut Vec<u8>, name: &str, data: &Value) {
    crate::chunk_text::emit(out, Some(name), &data.to_string());
}

impl EventReader for EventsFromChunks {
    fn splitter(&mut self) -> &mut Splitter {
        &mut self.splitter
    }

    fn event(&mut self, ev: Event, out: &mut Vec<u8>) {
        self.on_event(ev, out);
    }

    /// The chunks ended: a stream that finished gets its closing events (one cut
    /// before its finish gets none, so the client sees it end short).
    fn end(&mut self, out: &mut Vec<u8>) {
        if self.stop.is_some() {
            self.close(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_messages_request_becomes_a_chat_request() {
        let req = json!({
            "model": "claude-x", "max_tokens": 100, "system": [{"type": "text", "text": "Be brief."}],
            "stream": true, "stop_sequences": ["END"], "metadata": {"user_id": "u1"},
            "tools": [{"name": "get_weather", "description": "w", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any"},
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": [{"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "tu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu_1", "content": "sunny"},
                    {"type": "text", "text": "And tomorrow?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}}]}
            ]
        });
        let (chat, untranslatable) = to_chat(&req, false).unwrap();
        assert!(untranslatable.is_none());
        assert_eq!(chat["model"], "claude-x");
        assert_eq!(chat["max_tokens"], 100);
        assert_eq!(chat["stop"], json!(["END"]));
        assert_eq!(chat["user"], "u1");
        assert_eq!(chat["stream_options"]["include_usage"], true);
        assert_eq!(chat["tool_choice"], "required");
        assert_eq!(chat["tools"][0]["function"]["name"], "get_weather");
        let m = chat["messages"].as_array().unwrap();
        assert_eq!(m[0], json!({"role": "system", "content": "Be brief."}));
        assert_eq!(
            m[1],
            json!({"role": "user", "content": "Weather in Paris?"})
        );
        assert_eq!(
            m[2]["tool_calls"][0]["function"]["arguments"],
            r#"{"city":"Paris"}"#
        );
        assert_eq!(
            m[3],
            json!({"role": "tool", "tool_call_id": "tu_1", "content": "sunny"})
        );
        assert_eq!(
            m[4]["content"][1]["image_url"]["url"],
            "data:image/png;base64,AAA"
        );
    }

    #[test]
    fn bad_requests_name_their_field() {
        let e = to_chat(&json!({"model": "m", "messages": []}), false).unwrap_err();
        assert_eq!(e.param(), Some("max_tokens"));
        assert!(to_chat(&json!({"model": "m", "messages": []}), true).is_ok());
        let e = to_chat(&json!({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}), false).unwrap_err();
        assert_eq!(e.param(), Some("messages[0].role"));
        let (chat, e) = to_chat(
            &json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
            false,
        )
        .unwrap();
        assert!(e
            .unwrap()
            .to_string()
            .contains("only by Anthropic channels"));
        assert_eq!(chat["messages"][0]["content"], "hi", "the text still comes");
    }

    #[test]
    fn a_chat_answer_becomes_a_messages_answer() {
        let chat = json!({"id": "chatcmpl-1", "choices": [{"index": 0, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": "Let me look.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}});
        let v: Value =
            serde_json::from_slice(&answer_from_chat(chat.to_string().as_bytes(), "claude-x"))
                .unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["model"], "claude-x");
        assert_eq!(v["stop_reason"], "tool_use");
        assert_eq!(
            v["content"][0],
            json!({"type": "text", "text": "Let me look."})
        );
        assert_eq!(v["content"][1]["input"], json!({"a": 1}));
        assert_eq!(v["usage"], json!({"input_tokens": 12, "output_tokens": 7}));
    }

    fn events(sse: &[u8]) -> Vec<Value> {
        String::from_utf8_lossy(sse)
            .split("\n\n")
            .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    #[test]
    fn a_chunk_stream_becomes_messages_events_in_any_split() {
        let chunks = [
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"content": "Hel"}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"content": "lo"}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": ""}}]}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":1}"}}]}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
            json!({"id": "c1", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}}),
        ];
        let mut sse: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
        sse.push_str("data: [DONE]\n\n");
        for step in [1, 2, 7, 64, sse.len()] {
            let mut t = EventsFromChunks::new("claude-x");
            let mut out = Vec::new();
            for piece in sse.as_bytes().chunks(step) {
                out.extend(t.feed(piece));
            }
            out.extend(t.finish());
            let ev = events(&out);
            let types: Vec<&str> = ev.iter().map(|e| e["type"].as_str().unwrap()).collect();
            assert_eq!(
                types,
                [
                    "message_start",
                    "content_block_start",
                    "content_block_delta",
                    "content_block_delta",
                    "content_block_stop",
                    "content_block_start",
                    "content_block_delta",
                    "content_block_stop",
                    "message_delta",
                    "message_stop"
                ],
                "step {step}"
            );
            assert_eq!(ev[0]["message"]["model"], "claude-x");
            assert_eq!(ev[5]["content_block"]["name"], "f");
            assert_eq!(ev[6]["delta"]["partial_json"], "{\"a\":1}");
            assert_eq!(ev[8]["delta"]["stop_reason"], "tool_use");
            assert_eq!(
                ev[8]["usage"],
                json!({"input_tokens": 9, "output_tokens": 4})
            );
        }
    }

    #[test]
    fn a_stream_cut_before_its_finish_gets_no_stop() {
        let mut t = EventsFromChunks::new("m");
        let mut out = t.feed(
            format!(
                "data: {}\n\n",
                json!({"choices": [{"index": 0, "delta": {"content": "Hi"}}]})
            )
            .as_bytes(),
        );
        out.extend(t.finish());
        let types: Vec<String> = events(&out)
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_string())
            .collect();
        assert!(!types.contains(&"message_stop".to_string()), "{types:?}");
    }

    #[test]
    fn errors_take_anthropic_s_shape() {
        let e = error_from_openai(
            429,
            br#"{"error":{"message":"slow down","type":"rate_limit_error"}}"#,
        );
        let v: Value = serde_json::from_slice(&e).unwrap();
        assert_eq!(
            v,
            json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}})
        );
        assert_eq!(error_type(503), "overloaded_error");
    }
}
