//! Google Gemini (`POST /v1beta/models/{model}:generateContent`, streaming with
//! `:streamGenerateContent?alt=sse`, key in `x-goog-api-key`).
//!
//! Request: system and developer messages become `systemInstruction`; assistant is
//! role `model`; images become `inlineData` (data URLs) or `fileData`; tool calls and
//! results become `functionCall` / `functionResponse` parts; sampling options go to
//! `generationConfig`. Answer: the first candidate's parts become the message,
//! `finishReason` the finish reason, `usageMetadata` the usage. A stream is a series
//! of such answers; it ends with the connection, after a `finishReason`. Models:
//! `GET /v1beta/models` lists them as `models[].name`, `models/…`.

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
use std::collections::HashMap;

/// The Gemini API, for chat completions only.
pub struct Gemini;

impl Provider for Gemini {
    fn supports(&self, endpoint: Endpoint) -> bool {
        endpoint == Endpoint::ChatCompletions
    }

    fn prepare(&self, channel: &Channel, req: Incoming) -> Result<Outgoing, GatewayError> {
        let body = chat_body("gemini", &req)?;
        let stream = body
            .get("stream")
            .and_then(|s| s.as_bool())
            .unwrap_or(false);
        let out = to_generate_request(&body)?;
        let model: String =
            form_urlencoded::byte_serialize(req.upstream_model.as_bytes()).collect();
        let base = base_path(channel);
        let path = if stream {
            format!("{base}/v1beta/models/{model}:streamGenerateContent?alt=sse")
        } else {
            format!("{base}/v1beta/models/{model}:generateContent")
        };
        Outgoing::json(path, headers(req.key), &out)
    }

    fn translation(&self) -> Option<Translation> {
        Some(TRANSLATION)
    }

    /// Gemini answers a bad or expired key with 400 `API_KEY_INVALID`.
    fn key_rejected(&self, status: u16, body: &[u8]) -> bool {
        says_400(
            status,
            body,
            &["API_KEY_INVALID", "API key not valid", "API key expired"],
        )
    }

    /// `GET /v1beta/models`, 1,000 to a page (the API's most; it gives 50 unasked).
    /// The key goes in its header, as for requests, not in a `?key=` that logs keep.
    fn models_request(&self, up: &Upstream, key: Option<&str>) -> Result<Outgoing, GatewayError> {
        let path = format!("{}/v1beta/models?pageSize=1000", up.base_path);
        Ok(Outgoing::get(path, headers(key)))
    }

    /// Names without their `models/`, of the models that `generateContent` serves
    /// (the only method a Gemini channel calls; embedding models are left out).
    fn parse_models(&self, body: &[u8]) -> Option<Vec<String>> {
        let v: Value = serde_json::from_slice(body).ok()?;
        let models = v.get("models")?.as_array()?;
        Some(models.iter().filter_map(chat_model_name).collect())
    }
}

fn chat_model_name(m: &Value) -> Option<String> {
    let methods = m
        .get("supportedGenerationMethods")
        .and_then(|s| s.as_array());
    if methods.is_some_and(|ms| !ms.iter().any(|s| s == "generateContent")) {
        return None;
    }
    let name = m.get("name")?.as_str()?;
    Some(name.strip_prefix("models/").unwrap_or(name).to_string())
}

fn headers(key: Option<&str>) -> Vec<(&'static str, String)> {
    key.map(|k| vec![("x-goog-api-key", k.to_string())])
        .unwrap_or_default()
}

/// Messages as `contents` parts; system texts apart.
#[derive(Default)]
struct Parts {
    system: Vec<Value>,
    /// Gemini answers a function by name; OpenAI by call id.
    call_names: HashMap<String, String>,
}

impl Dialect for Parts {
    const ASSISTANT: &'static str = "model";

    fn system(&mut self, text: String) {
        self.system.push(json!({ "text": text }));
    }

    fn text(&self, text: &str) -> Value {
        json!({ "text": text })
    }

    fn image(&self, url: &str) -> Value {
        match data_url(url) {
            Some((mime, data)) => json!({"inlineData": {"mimeType": mime, "data": data}}),
            None => json!({"fileData": {"fileUri": url}}),
        }
    }

    fn tool_call(&mut self, call: &Value, args: Value) -> Value {
        let name = call
            .pointer("/function/name")
            .and_then(|n| n.as_str())
            .unwrap_or("");
        let id = call.get("id").and_then(|i| i.as_str());
        if let Some(id) = id {
            self.call_names.insert(id.to_string(), name.to_string());
        }
        let mut part = json!({"functionCall": {"name": name, "args": args}});
        // The thought signature Gemini attached to this call travels in its id.
        if let Some(sig) = id.and_then(signature_of) {
            part["thoughtSignature"] = json!(sig);
        }
        part
    }

    fn tool_result(&self, m: &Value) -> Value {
        let id = m.get("tool_call_id").and_then(|i| i.as_str()).unwrap_or("");
        let name = self
            .call_names
            .get(id)
            .cloned()
            .or_else(|| m.get("name").and_then(|n| n.as_str()).map(str::to_string))
            .unwrap_or_default();
        json!({"functionResponse": {"name": name, "response": {"content": content_text(m.get("content"))}}})
    }
}

/// The OpenAI chat request as a `generateContent` request.
pub fn to_generate_request(req: &Value) -> Result<Value, GatewayError> {
    let mut parts = Parts::default();
    let mut contents = turns(&mut parts, messages(req)?);
    contents.retain(|(_, parts)| !parts.is_empty());
    let mut out = Map::new();
    out.insert("contents".into(), turns_json(contents, "parts"));
    if !parts.system.is_empty() {
        out.insert("systemInstruction".into(), json!({"parts": parts.system}));
    }
    let mut gen = generation_config(req);
    let decls: Vec<Value> = functions(req).map(function_declaration).collect();
    let mut tools = Vec::new();
    if !decls.is_empty() {
        tools.push(json!({"functionDeclarations": decls}));
    }
    features::gemini(req, &mut gen, &mut tools)?;
    if !gen.is_empty() {
        out.insert("generationConfig".into(), Value::Object(gen));
    }
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
    }
    if let Some(cfg) = tool_choice(req).map(calling_config) {
        out.insert("toolConfig".into(), json!({"functionCallingConfig": cfg}));
    }
    Ok(Value::Object(out))
}

fn generation_config(req: &Value) -> Map<String, Value> {
    let mut gen = Map::new();
    let names = [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("top_k", "topK"),
        ("n", "candidateCount"),
        ("seed", "seed"),
    ];
    copy_options(req, &mut gen, &names);
    if let Some(max) = max_tokens(req).filter(|v| !v.is_null()) {
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
    gen
}

fn function_declaration(f: &Value) -> Value {
    let mut d = json!({"name": f.get("name"), "description": f.get("description").cloned().unwrap_or(json!(""))});
    // Full JSON Schema (what OpenAI clients send), not Gemini's OpenAPI subset.
    if let Some(p) = f.get("parameters") {
        d["parametersJsonSchema"] = p.clone();
    }
    d
}

fn calling_config(choice: ToolChoice) -> Value {
    match choice {
        ToolChoice::Never => json!({"mode": "NONE"}),
        ToolChoice::Required => json!({"mode": "ANY"}),
        ToolChoice::Auto => json!({"mode": "AUTO"}),
        ToolChoice::Function(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
    }
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

/// Text, thoughts and tool calls of the first candidate.
fn parts_of(v: &Value, call_base: usize) -> (String, Vec<Value>, String) {
    let mut text = String::new();
    let mut calls = Vec::new();
    let mut thought = String::new();
    for p in items(v, "/candidates/0/content/parts") {
        if p.get("thought").and_then(|t| t.as_bool()) == Some(true) {
            thought.push_str(p.get("text").and_then(|t| t.as_str()).unwrap_or(""));
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
    (text, calls, thought)
}

fn finish_reason_of(v: &Value) -> Option<&str> {
    v.pointer("/candidates/0/finishReason")
        .and_then(|r| r.as_str())
}

fn prompt_blocked(v: &Value) -> bool {
    v.pointer("/promptFeedback/blockReason").is_some()
}

pub fn translate_answer(body: &[u8], model: &str) -> Vec<u8> {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return not_json();
    };
    let (text, mut calls, reasoning) = parts_of(&v, 0);
    for c in &mut calls {
        if let Some(o) = c.as_object_mut() {
            o.remove("index");
        }
    }
    let no_candidates = v
        .get("candidates")
        .and_then(|c| c.as_array())
        .is_none_or(|c| c.is_empty());
    let finish = if prompt_blocked(&v) && no_candidates {
        "content_filter"
    } else {
        finish_reason(finish_reason_of(&v).unwrap_or(""), !calls.is_empty())
    };
    Completion {
        id: v
            .get("responseId")
            .cloned()
            .unwrap_or_else(|| json!("chatcmpl-gemini")),
        model,
        text,
        calls,
        finish,
        usage: usage(v.get("usageMetadata").unwrap_or(&Value::Null)),
        reasoning,
        annotations: features::grounding(&v),
        reasoning_tokens: v
            .pointer("/usageMetadata/thoughtsTokenCount")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    }
    .into_json()
}

/// Gemini's error `status` as OpenAI's error type.
fn openai_type(status: &str) -> Option<&'static str> {
    Some(match status {
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "NOT_FOUND" | "OUT_OF_RANGE" => {
            "invalid_request_error"
        }
        "UNAUTHENTICATED" => "authentication_error",
        "PERMISSION_DENIED" => "permission_error",
        "RESOURCE_EXHAUSTED" => "rate_limit_error",
        _ => return None,
    })
}

pub fn translate_error(status: u16, body: &[u8]) -> Vec<u8> {
    // Errors come as one object, or (from streaming endpoints) a list holding one.
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let v = v.get(0).unwrap_or(&v);
    let default = "the Gemini upstream refused the request";
    let (code, message) = error_fields(v, "status", "UNKNOWN", default);
    error_json(status, code, message, openai_type(code))
}

const TRANSLATION: Translation = Translation::new(translate_answer, translate_error, Stream::boxed);

/// A series of `generateContent` answers → OpenAI chunks.
pub type Stream = ChunkStream<Events>;

/// What a Gemini stream's answers mean. Gemini ends a stream by ending the
/// response: complete once a candidate has finished, then usage and `[DONE]` follow.
#[derive(Default)]
pub struct Events {
    /// Tool calls so far, to number the next ones.
    calls: usize,
}

impl EventMapper for Events {
    const DEFAULT_ID: &'static str = "chatcmpl-gemini";
    const ENDS_WITH_RESPONSE: bool = true;

    fn event(&mut self, v: &Value, out: &mut Chunks) {
        if v.get("error").is_some() {
            let (code, message) = error_fields(v, "status", "UNKNOWN", "upstream error");
            out.error(message, code);
            return;
        }
        out.set_id(v.get("responseId").and_then(|i| i.as_str()));
        if let Some(meta) = v.get("usageMetadata") {
            (out.prompt, out.completion) = usage(meta);
        }
        let (text, calls, thought) = parts_of(v, self.calls);
        let mut delta = Map::new();
        if !thought.is_empty() {
            delta.insert("reasoning_content".into(), json!(thought));
        }
        if !text.is_empty() {
            delta.insert("content".into(), json!(text));
        }
        let sources = features::grounding(v);
        if !sources.is_empty() {
            delta.insert("annotations".into(), Value::Array(sources));
        }
        if !calls.is_empty() {
            self.calls += calls.len();
            delta.insert("tool_calls".into(), Value::Array(calls));
        }
        out.delta(Value::Object(delta));
        match finish_reason_of(v) {
            Some(r) => out.finish(finish_reason(r, self.calls > 0)),
            None if prompt_blocked(v) => out.finish("content_filter"),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::answer::read_back;
    use crate::adapters::stream::tap_cut;
    use crate::adapters::StreamTranslator;
    use crate::config::ChannelType;
    use bytes::Bytes;

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
        let rt = crate::config::parse("channels:\n  - {name: g, type: gemini, models: [gemini]}\n")
            .unwrap();
        let p = super::super::prepare(
            &rt.channels[0],
            Endpoint::ChatCompletions,
            "/chat/completions",
            Bytes::from(req.to_string()),
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
        let (choice, u) = read_back(&translate_answer(body, "g"));
        assert_eq!(
            choice,
            json!({"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "AI learns patterns from data."}})
        );
        assert_eq!(u.total_tokens, 14);
        let call = br#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","args":{"a":1}}}],"role":"model"},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":1,"candidatesTokenCount":2,"thoughtsTokenCount":3}}"#;
        let (choice, u) = read_back(&translate_answer(call, "g"));
        assert_eq!(
            (&choice["finish_reason"], &choice["message"]["content"]),
            (&json!("tool_calls"), &Value::Null)
        );
        assert_eq!(
            choice["message"]["tool_calls"],
            json!([{"id": "call_0", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}])
        );
        assert_eq!(u.completion_tokens, 5);
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
            let tap = tap_cut(&mut Stream::new("g", true), stream.as_bytes(), cut);
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

    #[test]
    fn models_list_names_the_chat_models() {
        let up = Upstream::parse("https://generativelanguage.googleapis.com").unwrap();
        let req = super::super::models_request(ChannelType::Gemini, &up, Some("AIza-k")).unwrap();
        assert_eq!(req.path, "/v1beta/models?pageSize=1000");
        assert_eq!(req.headers, vec![("x-goog-api-key", "AIza-k".to_string())]);
        assert!(req.body.is_empty());
        // Shaped as the documented `models.list` answer: an embedding model (not
        // served by `generateContent`) is left out; one without the list is kept.
        let body = br#"{"models":[{"name":"models/gemini-2.5-flash","version":"001","displayName":"Gemini 2.5 Flash","inputTokenLimit":1048576,"outputTokenLimit":65536,"supportedGenerationMethods":["generateContent","countTokens","createCachedContent","batchGenerateContent"]},{"name":"models/gemini-embedding-001","version":"001","displayName":"Gemini Embedding 001","inputTokenLimit":2048,"outputTokenLimit":1,"supportedGenerationMethods":["embedContent","countTextTokens","countTokens"]},{"name":"models/gemini-2.5-pro","displayName":"Gemini 2.5 Pro"}],"nextPageToken":"Cg5nZW1pbmktMi41LXBybw"}"#;
        assert_eq!(
            super::super::parse_models(ChannelType::Gemini, body).unwrap(),
            ["gemini-2.5-flash", "gemini-2.5-pro"]
        );
        let refused = br#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT"}}"#;
        assert_eq!(Gemini.parse_models(refused), None);
    }
}
