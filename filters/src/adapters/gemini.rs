//! Google Gemini (`POST /v1beta/models/{model}:generateContent`, streaming with
//! `:streamGenerateContent?alt=sse`, key in `x-goog-api-key`).
//!
//! Request: system and developer messages become `systemInstruction`; assistant is
//! role `model`; images become `inlineData` (data URLs) or `fileData`; tool calls and
//! results become `functionCall` / `functionResponse` parts; sampling options go to
//! `generationConfig`. Answer: the first candidate's parts become the message,
//! `finishReason` the finish reason, `usageMetadata` the usage. A stream is a series
//! of such answers; it ends with the connection, after a `finishReason`.

use super::sse::Splitter;
use super::{
    chunk_event, content_text, data_url, openai_error, parse_json, stop_list, unix_now,
    unsupported, usage_event, Outgoing, StreamTranslator, DONE,
};
use crate::route::Endpoint;
use crate::GatewayError;
use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

pub fn prepare(
    base: &str,
    endpoint: Endpoint,
    body: &Bytes,
    model: &str,
    key: Option<&str>,
) -> Result<Outgoing, GatewayError> {
    if endpoint != Endpoint::ChatCompletions {
        return Err(unsupported("gemini", endpoint));
    }
    let req = parse_json(body)?;
    let stream = req.get("stream").and_then(|s| s.as_bool()).unwrap_or(false);
    let out = to_generate_request(&req)?;
    let model: String = form_urlencoded::byte_serialize(model.as_bytes()).collect();
    let path = if stream {
        format!("{base}/v1beta/models/{model}:streamGenerateContent?alt=sse")
    } else {
        format!("{base}/v1beta/models/{model}:generateContent")
    };
    Ok(Outgoing {
        path,
        headers: key
            .map(|k| vec![("x-goog-api-key", k.to_string())])
            .unwrap_or_default(),
        body: Bytes::from(
            serde_json::to_vec(&out).map_err(|e| GatewayError::Internal(e.to_string()))?,
        ),
    })
}

fn media_part(url: &str) -> Value {
    match data_url(url) {
        Some((mime, data)) => json!({"inlineData": {"mimeType": mime, "data": data}}),
        None => json!({"fileData": {"fileUri": url}}),
    }
}

fn user_parts(content: Option<&Value>) -> Vec<Value> {
    match content {
        Some(Value::String(s)) if s.is_empty() => Vec::new(),
        Some(Value::String(s)) => vec![json!({"text": s})],
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| match p.get("type").and_then(|t| t.as_str()) {
                Some("text") => p
                    .get("text")
                    .and_then(|t| t.as_str())
                    .filter(|t| !t.is_empty())
                    .map(|t| json!({"text": t})),
                Some("image_url") => p
                    .pointer("/image_url/url")
                    .and_then(|u| u.as_str())
                    .map(media_part),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The OpenAI chat request as a `generateContent` request.
pub fn to_generate_request(req: &Value) -> Result<Value, GatewayError> {
    let messages = req
        .get("messages")
        .and_then(|m| m.as_array())
        .ok_or_else(|| GatewayError::BadRequest("`messages` must be an array".into()))?;
    let mut system = Vec::new();
    let mut contents: Vec<(String, Vec<Value>)> = Vec::new();
    // Gemini answers a function by name; OpenAI by call id.
    let mut call_names: HashMap<String, String> = HashMap::new();
    for m in messages {
        let (role, parts) = match m.get("role").and_then(|r| r.as_str()).unwrap_or("user") {
            "system" | "developer" => {
                system.push(json!({"text": content_text(m.get("content"))}));
                continue;
            }
            "assistant" => {
                let mut parts = Vec::new();
                let text = content_text(m.get("content"));
                if !text.is_empty() {
                    parts.push(json!({"text": text}));
                }
                for call in m
                    .get("tool_calls")
                    .and_then(|t| t.as_array())
                    .into_iter()
                    .flatten()
                {
                    let name = call
                        .pointer("/function/name")
                        .and_then(|n| n.as_str())
                        .unwrap_or("");
                    if let Some(id) = call.get("id").and_then(|i| i.as_str()) {
                        call_names.insert(id.to_string(), name.to_string());
                    }
                    let args = call
                        .pointer("/function/arguments")
                        .and_then(|a| a.as_str())
                        .unwrap_or("{}");
                    let args = serde_json::from_str::<Value>(args).unwrap_or_else(|_| json!({}));
                    let mut part = json!({"functionCall": {"name": name, "args": args}});
                    // The thought signature Gemini attached to this call travels in its id.
                    let sig = call
                        .get("id")
                        .and_then(|i| i.as_str())
                        .and_then(signature_of);
                    if let Some(sig) = sig {
                        part["thoughtSignature"] = json!(sig);
                    }
                    parts.push(part);
                }
                ("model", parts)
            }
            "tool" | "function" => {
                let id = m.get("tool_call_id").and_then(|i| i.as_str()).unwrap_or("");
                let name = call_names
                    .get(id)
                    .cloned()
                    .or_else(|| m.get("name").and_then(|n| n.as_str()).map(str::to_string))
                    .unwrap_or_default();
                (
                    "user",
                    vec![
                        json!({"functionResponse": {"name": name, "response": {"content": content_text(m.get("content"))}}}),
                    ],
                )
            }
            _ => ("user", user_parts(m.get("content"))),
        };
        match contents.last_mut() {
            Some((last, existing)) if last == role => existing.extend(parts),
            _ => contents.push((role.to_string(), parts)),
        }
    }
    contents.retain(|(_, parts)| !parts.is_empty());
    let mut out = Map::new();
    out.insert(
        "contents".into(),
        Value::Array(
            contents
                .into_iter()
                .map(|(role, parts)| json!({"role": role, "parts": parts}))
                .collect(),
        ),
    );
    if !system.is_empty() {
        out.insert("systemInstruction".into(), json!({"parts": system}));
    }
    let mut gen = Map::new();
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("top_k", "topK"),
        ("n", "candidateCount"),
        ("seed", "seed"),
    ] {
        if let Some(v) = req.get(from).filter(|v| !v.is_null()) {
            gen.insert(to.into(), v.clone());
        }
    }
    if let Some(max) = req
        .get("max_completion_tokens")
        .or_else(|| req.get("max_tokens"))
        .filter(|v| !v.is_null())
    {
        gen.insert("maxOutputTokens".into(), max.clone());
    }
    if let Some(stop) = stop_list(req.get("stop")) {
        gen.insert("stopSequences".into(), json!(stop));
    }
    match req
        .pointer("/response_format/type")
        .and_then(|t| t.as_str())
    {
        Some("json_object") => {
            gen.insert("responseMimeType".into(), json!("application/json"));
        }
        Some("json_schema") => {
            gen.insert("responseMimeType".into(), json!("application/json"));
            if let Some(schema) = req.pointer("/response_format/json_schema/schema") {
                gen.insert("responseJsonSchema".into(), schema.clone());
            }
        }
        _ => {}
    }
    if !gen.is_empty() {
        out.insert("generationConfig".into(), Value::Object(gen));
    }
    if let Some(tools) = req.get("tools").and_then(|t| t.as_array()) {
        let decls: Vec<Value> = tools
            .iter()
            .filter_map(|t| t.get("function"))
            .map(|f| {
                let mut d = json!({"name": f.get("name"), "description": f.get("description").cloned().unwrap_or(json!(""))});
                // Full JSON Schema (what OpenAI clients send), not Gemini's OpenAPI subset.
                if let Some(p) = f.get("parameters") {
                    d["parametersJsonSchema"] = p.clone();
                }
                d
            })
            .collect();
        if !decls.is_empty() {
            out.insert("tools".into(), json!([{"functionDeclarations": decls}]));
        }
    }
    let mode = match req.get("tool_choice") {
        Some(Value::String(s)) if s == "none" => Some(json!({"mode": "NONE"})),
        Some(Value::String(s)) if s == "required" => Some(json!({"mode": "ANY"})),
        Some(Value::String(s)) if s == "auto" => Some(json!({"mode": "AUTO"})),
        Some(Value::Object(o)) => o
            .get("function")
            .and_then(|f| f.get("name"))
            .map(|n| json!({"mode": "ANY", "allowedFunctionNames": [n]})),
        _ => None,
    };
    if let Some(cfg) = mode {
        out.insert("toolConfig".into(), json!({"functionCallingConfig": cfg}));
    }
    Ok(Value::Object(out))
}

fn finish_reason(reason: &str, has_calls: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            "content_filter"
        }
        _ if has_calls => "tool_calls",
        _ => "stop",
    }
}

/// Prompt and completion tokens (thinking tokens are output Gemini bills).
fn usage(meta: &Value) -> (u64, u64) {
    let get = |k: &str| meta.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
    (
        get("promptTokenCount"),
        get("candidatesTokenCount").saturating_add(get("thoughtsTokenCount")),
    )
}

/// Tool-call ids carry Gemini's thought signature: `call_<n>_ts_<signature>`.
const SIG_MARK: &str = "_ts_";

fn call_id(n: usize, signature: Option<&str>) -> String {
    match signature {
        Some(sig) => format!("call_{n}{SIG_MARK}{sig}"),
        None => format!("call_{n}"),
    }
}

fn signature_of(id: &str) -> Option<&str> {
    id.split_once(SIG_MARK)
        .map(|(_, sig)| sig)
        .filter(|s| !s.is_empty())
}

/// Text and tool calls of the first candidate.
fn parts_of(v: &Value, call_base: usize) -> (String, Vec<Value>) {
    let mut text = String::new();
    let mut calls = Vec::new();
    for p in v
        .pointer("/candidates/0/content/parts")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
    {
        if p.get("thought").and_then(|t| t.as_bool()) == Some(true) {
            continue;
        }
        if let Some(t) = p.get("text").and_then(|t| t.as_str()) {
            text.push_str(t);
        }
        if let Some(fc) = p.get("functionCall") {
            let i = call_base + calls.len();
            let sig = p.get("thoughtSignature").and_then(|s| s.as_str());
            calls.push(json!({
                "index": i,
                "id": call_id(i, sig),
                "type": "function",
                "function": {"name": fc.get("name"), "arguments": fc.get("args").map(|a| a.to_string()).unwrap_or_else(|| "{}".into())},
            }));
        }
    }
    (text, calls)
}

pub fn translate_answer(body: &[u8], model: &str) -> Vec<u8> {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return openai_error(
            "the upstream answered with something that is not JSON",
            "server_error",
            "bad_upstream_answer",
        );
    };
    let (text, mut calls) = parts_of(&v, 0);
    for c in &mut calls {
        if let Some(o) = c.as_object_mut() {
            o.remove("index");
        }
    }
    let reason = v
        .pointer("/candidates/0/finishReason")
        .and_then(|r| r.as_str())
        .unwrap_or("");
    let no_candidates = v
        .get("candidates")
        .and_then(|c| c.as_array())
        .is_none_or(|c| c.is_empty());
    let blocked = v.pointer("/promptFeedback/blockReason").is_some() && no_candidates;
    let finish = if blocked {
        "content_filter"
    } else {
        finish_reason(reason, !calls.is_empty())
    };
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    let (prompt, completion) = usage(v.get("usageMetadata").unwrap_or(&Value::Null));
    let out = json!({
        "id": v.get("responseId").cloned().unwrap_or_else(|| json!("chatcmpl-gemini")),
        "object": "chat.completion",
        "created": unix_now(),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt.saturating_add(completion)},
    });
    serde_json::to_vec(&out).unwrap_or_default()
}

pub fn translate_error(status: u16, body: &[u8]) -> Vec<u8> {
    // Errors come as one object, or (from streaming endpoints) a list holding one.
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let v = v.get(0).cloned().unwrap_or(v);
    let message = v
        .pointer("/error/message")
        .and_then(|m| m.as_str())
        .unwrap_or("the Gemini upstream refused the request");
    let code = v
        .pointer("/error/status")
        .and_then(|s| s.as_str())
        .unwrap_or("UNKNOWN");
    let kind = match code {
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "NOT_FOUND" | "OUT_OF_RANGE" => {
            "invalid_request_error"
        }
        "UNAUTHENTICATED" => "authentication_error",
        "PERMISSION_DENIED" => "permission_error",
        "RESOURCE_EXHAUSTED" => "rate_limit_error",
        _ => super::error_type_for(status),
    };
    openai_error(message, kind, code)
}

pub struct Stream {
    split: Splitter,
    model: String,
    include_usage: bool,
    id: String,
    created: u64,
    started: bool,
    calls: usize,
    finished: bool,
    prompt: u64,
    completion: u64,
}

impl Stream {
    pub fn new(model: &str, include_usage: bool) -> Self {
        Stream {
            split: Splitter::default(),
            model: model.to_string(),
            include_usage,
            id: "chatcmpl-gemini".into(),
            created: unix_now(),
            started: false,
            calls: 0,
            finished: false,
            prompt: 0,
            completion: 0,
        }
    }

    fn event(&mut self, v: &Value, out: &mut Vec<u8>) {
        if let Some(e) = v.get("error") {
            let message = e
                .get("message")
                .and_then(|m| m.as_str())
                .unwrap_or("upstream error");
            let code = e
                .get("status")
                .and_then(|s| s.as_str())
                .unwrap_or("UNKNOWN");
            out.extend(b"data: ");
            out.extend(openai_error(message, "server_error", code));
            out.extend(b"\n\n");
            return;
        }
        if let Some(id) = v.get("responseId").and_then(|i| i.as_str()) {
            self.id = id.to_string();
        }
        if let Some(meta) = v.get("usageMetadata") {
            (self.prompt, self.completion) = usage(meta);
        }
        let (text, calls) = parts_of(v, self.calls);
        let mut delta = Map::new();
        if !self.started {
            delta.insert("role".into(), json!("assistant"));
            self.started = true;
        }
        if !text.is_empty() {
            delta.insert("content".into(), json!(text));
        }
        if !calls.is_empty() {
            self.calls += calls.len();
            delta.insert("tool_calls".into(), Value::Array(calls));
        }
        if !delta.is_empty() {
            out.extend(chunk_event(
                &self.id,
                &self.model,
                self.created,
                Value::Object(delta),
                None,
            ));
        }
        let reason = v
            .pointer("/candidates/0/finishReason")
            .and_then(|r| r.as_str());
        if reason.is_some() || v.pointer("/promptFeedback/blockReason").is_some() {
            self.finished = true;
            let finish = match reason {
                Some(r) => finish_reason(r, self.calls > 0),
                None => "content_filter",
            };
            out.extend(chunk_event(
                &self.id,
                &self.model,
                self.created,
                json!({}),
                Some(finish),
            ));
        }
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

    /// Gemini ends a stream by ending the response: complete once a candidate has
    /// finished, then usage and `[DONE]` follow.
    fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(ev) = self.split.rest() {
            if let Ok(v) = serde_json::from_str::<Value>(&ev.data) {
                self.event(&v, &mut out);
            }
        }
        if self.finished {
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
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::response_body::{json_usage, SseTap};

    #[test]
    fn request_follows_generate_content() {
        let req = json!({
            "model": "gemini", "temperature": 0.3, "max_tokens": 100, "stop": ["x"], "stream": true,
            "response_format": {"type": "json_object"},
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Describe"}, {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}}]},
                {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "find", "arguments": "{\"q\":1}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "result"},
            ],
            "tools": [{"type": "function", "function": {"name": "find", "parameters": {"type": "object"}}}],
            "tool_choice": "auto",
        });
        let out = to_generate_request(&req).unwrap();
        assert_eq!(out["systemInstruction"]["parts"][0]["text"], "Be brief.");
        let c = out["contents"].as_array().unwrap();
        assert_eq!(c[0]["role"], "user");
        assert_eq!(
            c[0]["parts"][1]["inlineData"],
            json!({"mimeType": "image/jpeg", "data": "/9j/4AAQ"})
        );
        assert_eq!(c[1]["role"], "model");
        assert_eq!(
            c[1]["parts"][0]["functionCall"],
            json!({"name": "find", "args": {"q": 1}})
        );
        assert_eq!(c[2]["parts"][0]["functionResponse"]["name"], "find");
        assert_eq!(
            out["generationConfig"],
            json!({"temperature": 0.3, "maxOutputTokens": 100, "stopSequences": ["x"], "responseMimeType": "application/json"})
        );
        assert_eq!(out["tools"][0]["functionDeclarations"][0]["name"], "find");
        assert_eq!(
            out["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"],
            json!({"type": "object"})
        );
        assert_eq!(out["toolConfig"]["functionCallingConfig"]["mode"], "AUTO");
        let p = prepare(
            "",
            Endpoint::ChatCompletions,
            &Bytes::from(req.to_string()),
            "gemini-2.5-flash",
            Some("g"),
        )
        .unwrap();
        assert_eq!(
            p.path,
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        );
        assert_eq!(p.headers, vec![("x-goog-api-key", "g".to_string())]);
    }

    #[test]
    fn answer_maps_to_chat_completion() {
        // Shaped as the documented generateContent response.
        let body = br#"{"candidates":[{"content":{"parts":[{"text":"AI learns patterns from data."}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":6,"totalTokenCount":14},"modelVersion":"gemini-2.5-flash","responseId":"r1"}"#;
        let out = translate_answer(body, "g");
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["choices"][0]["message"]["content"],
            "AI learns patterns from data."
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        let (u, _) = json_usage(&out);
        assert_eq!(u.unwrap().total_tokens, 14);
        let call = br#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","args":{"a":1}}}],"role":"model"},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":1,"candidatesTokenCount":2,"thoughtsTokenCount":3}}"#;
        let v: Value = serde_json::from_slice(&translate_answer(call, "g")).unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        assert_eq!(v["usage"]["completion_tokens"], 5);
        let max: Value = serde_json::from_slice(&translate_answer(
            br#"{"candidates":[{"content":{"parts":[{"text":"x"}]},"finishReason":"MAX_TOKENS"}]}"#,
            "g",
        ))
        .unwrap();
        assert_eq!(max["choices"][0]["finish_reason"], "length");
        let blocked: Value = serde_json::from_slice(&translate_answer(
            br#"{"candidates":[],"promptFeedback":{"blockReason":"SAFETY"}}"#,
            "g",
        ))
        .unwrap();
        assert_eq!(blocked["choices"][0]["finish_reason"], "content_filter");
    }

    #[test]
    fn thought_signatures_round_trip_through_tool_call_ids() {
        let answer = br#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","args":{}},"thoughtSignature":"c2lnbmF0dXJl"}],"role":"model"},"finishReason":"STOP"}]}"#;
        let v: Value = serde_json::from_slice(&translate_answer(answer, "g")).unwrap();
        let id = v["choices"][0]["message"]["tool_calls"][0]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let next = json!({"messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "tool_calls": [{"id": id, "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": id, "content": "r"},
        ]});
        let req = to_generate_request(&next).unwrap();
        assert_eq!(
            req["contents"][1]["parts"][0]["thoughtSignature"],
            "c2lnbmF0dXJl"
        );
        assert_eq!(
            req["contents"][2]["parts"][0]["functionResponse"]["name"],
            "f"
        );
    }

    #[test]
    fn errors_map_to_openai_shape() {
        let body = br#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}"#;
        let v: Value = serde_json::from_slice(&translate_error(429, body)).unwrap();
        assert_eq!(
            (v["error"]["type"].as_str(), v["error"]["code"].as_str()),
            (Some("rate_limit_error"), Some("RESOURCE_EXHAUSTED"))
        );
        let v: Value = serde_json::from_slice(&translate_error(400, br#"[{"error":{"code":400,"message":"API key not valid.","status":"INVALID_ARGUMENT"}}]"#)).unwrap();
        assert_eq!(v["error"]["message"], "API key not valid.");
        let v: Value = serde_json::from_slice(&translate_error(500, b"")).unwrap();
        assert_eq!(v["error"]["type"], "server_error");
    }

    #[test]
    fn stream_becomes_chunks_with_usage() {
        let ev = |v: Value| format!("data: {v}\r\n\r\n");
        let stream = [
            ev(json!({"candidates": [{"content": {"parts": [{"text": "Hel"}], "role": "model"}}], "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 1}})),
            ev(json!({"candidates": [{"content": {"parts": [{"text": "lo"}], "role": "model"}, "finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 2, "totalTokenCount": 6}})),
        ]
        .concat();
        for cut in [5, 60, stream.len() - 1] {
            let mut s = Stream::new("g", true);
            let mut out = s.feed(&stream.as_bytes()[..cut]);
            out.extend(s.feed(&stream.as_bytes()[cut..]));
            out.extend(s.finish());
            let mut tap = SseTap::new(false);
            tap.feed(Bytes::from(out));
            assert_eq!(tap.completion_text().0, "Hello", "cut {cut}");
            assert!(tap.saw_done);
            assert_eq!(tap.usage.unwrap().total_tokens, 6);
        }
        // Cut before any finishReason: no [DONE].
        let mut s = Stream::new("g", true);
        let mut out = s.feed(&stream.as_bytes()[..stream.find("\r\n\r\n").unwrap() + 4]);
        out.extend(s.finish());
        assert!(!String::from_utf8(out).unwrap().contains("[DONE]"));
    }
}
