//! Clients of OpenAI's Responses API (`POST {gateway}/responses`: Codex, new
//! OpenAI SDK code) served by channels that only speak chat completions. OpenAI
//! channels take the request as it is (see `proxy::dispatch`); for the others it
//! becomes a chat request, and the answer comes back the other way: a chat
//! completion becomes a `response` object, a chunk stream becomes the Responses
//! events (`response.created` … `response.completed`), text and function calls.

use super::sse::{Event, EventReader, Splitter};
use crate::GatewayError;
use serde_json::{json, Map, Value};

fn bad(param: &str, message: String) -> GatewayError {
    GatewayError::InvalidParam {
        param: param.to_string(),
        code: "invalid_value",
        message,
    }
}

fn only_openai(param: &str, what: &str) -> GatewayError {
    bad(
        param,
        format!("{what} is served only by OpenAI channels (the model routed to another provider)"),
    )
}

/// A Responses request as a chat request, as far as it goes: the chat body
/// (always, for the checks that read the text) and the first thing it could
/// not translate, which refuses the request unless a channel takes it natively.
pub fn to_chat(req: &Value) -> Result<(Value, Option<GatewayError>), GatewayError> {
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("model", "`model` must be a string".into()))?;
    let mut untranslatable = None;
    let mut note = |e: GatewayError| {
        untranslatable.get_or_insert(e);
    };
    let mut messages = Vec::new();
    if let Some(i) = req.get("instructions").and_then(Value::as_str) {
        messages.push(json!({"role": "system", "content": i}));
    }
    match req.get("input") {
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let mut skipped = None;
                if let Err(e) = input_item(i, item, &mut messages, &mut skipped) {
                    note(e);
                }
                if let Some(e) = skipped {
                    note(e);
                }
            }
        }
        _ => {
            return Err(bad(
                "input",
                "`input` must be a string or a list of items".into(),
            ))
        }
    }
    for (field, what) in [
        (
            "previous_response_id",
            "`previous_response_id` (stored conversations)",
        ),
        ("conversation", "`conversation`"),
        ("background", "`background`"),
    ] {
        if req
            .get(field)
            .is_some_and(|v| !v.is_null() && v != &json!(false))
        {
            note(only_openai(field, what));
        }
    }
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    out.insert("messages".into(), Value::Array(messages));
    if let Some(n) = req.get("max_output_tokens").filter(|n| n.is_u64()) {
        out.insert("max_tokens".into(), n.clone());
    }
    for k in ["temperature", "top_p", "user", "parallel_tool_calls"] {
        if let Some(v) = req.get(k).filter(|v| !v.is_null()) {
            out.insert(k.into(), v.clone());
        }
    }
    if req.get("stream").and_then(Value::as_bool) == Some(true) {
        out.insert("stream".into(), json!(true));
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(e) = req.pointer("/reasoning/effort").filter(|e| e.is_string()) {
        out.insert("reasoning_effort".into(), e.clone());
    }
    if let Some(f) = req.pointer("/text/format") {
        match f.get("type").and_then(Value::as_str) {
            Some("json_schema") => {
                let mut schema = f.clone();
                if let Some(o) = schema.as_object_mut() {
                    o.remove("type");
                }
                out.insert(
                    "response_format".into(),
                    json!({"type": "json_schema", "json_schema": schema}),
                );
            }
            Some("json_object") => {
                out.insert("response_format".into(), json!({"type": "json_object"}));
            }
            _ => {}
        }
    }
    if let Err(e) = tools(req, &mut out) {
        note(e);
    }
    Ok((Value::Object(out), untranslatable))
}

/// The text of an input message's content: a string or `input_text` parts, as
/// chat content (images as `image_url` parts). A part chat cannot carry is
/// left out and noted in `skipped`; the rest (its text for the checks) stays.
fn content(
    c: Option<&Value>,
    at: &str,
    skipped: &mut Option<GatewayError>,
) -> Result<Value, GatewayError> {
    let parts = match c {
        Some(Value::String(s)) => return Ok(json!(s)),
        Some(Value::Array(p)) => p,
        _ => {
            return Err(bad(
                &format!("{at}.content"),
                "must be a string or a list of parts".into(),
            ))
        }
    };
    let mut out = Vec::new();
    for (j, p) in parts.iter().enumerate() {
        match p.get("type").and_then(Value::as_str) {
            Some("input_text") | Some("output_text") | Some("text") => out
                .push(json!({"type": "text", "text": p.get("text").cloned().unwrap_or(json!(""))})),
            Some("input_image") => match p.get("image_url").and_then(Value::as_str) {
                Some(url) => out.push(json!({"type": "image_url", "image_url": {"url": url}})),
                None => {
                    skipped.get_or_insert(only_openai(
                        &format!("{at}.content[{j}]"),
                        "an image by `file_id`",
                    ));
                }
            },
            other => {
                skipped.get_or_insert(only_openai(
                    &format!("{at}.content[{j}].type"),
                    &format!("a `{}` part", other.unwrap_or("?")),
                ));
            }
        }
    }
    Ok(Value::Array(out))
}

fn input_item(
    i: usize,
    item: &Value,
    out: &mut Vec<Value>,
    skipped: &mut Option<GatewayError>,
) -> Result<(), GatewayError> {
    let at = format!("input[{i}]");
    let kind = item
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message");
    match kind {
        "message" => {
            let role = match item.get("role").and_then(Value::as_str) {
                Some(r @ ("user" | "assistant" | "system")) => r,
                Some("developer") => "system",
                _ => return Err(bad(&format!("{at}.role"), "must be user, assistant, system or developer".into())),
            };
            let mut c = content(item.get("content"), &at, skipped)?;
            if role != "user" {
                // Chat takes text only from these roles.
                if let Value::Array(parts) = &c {
                    c = json!(parts.iter().filter_map(|p| p["text"].as_str()).collect::<String>());
                }
            }
            out.push(json!({"role": role, "content": c}));
        }
        "function_call" => {
            let call = json!({"id": item.get("call_id"), "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments").cloned().unwrap_or(json!("{}"))}});
            // Consecutive calls are one assistant turn.
            match out.last_mut() {
                Some(last) if last["role"] == "assistant" && last["tool_calls"].is_array() => {
                    if let Some(calls) = last["tool_calls"].as_array_mut() {
                        calls.push(call);
                    }
                }
                _ => out.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
            }
        }
        "function_call_output" => out.push(json!({
            "role": "tool", "tool_call_id": item.get("call_id"),
            "content": match item.get("output") { Some(Value::String(s)) => s.clone(), Some(v) => v.to_string(), None => String::new() },
        })),
        // The model's own reasoning from an earlier turn: chat has no place for it.
        "reasoning" => {}
        other => return Err(only_openai(&format!("{at}.type"), &format!("an input item of type `{other}`"))),
    }
    Ok(())
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
        match t.get("type").and_then(Value::as_str) {
            Some("function") => list.push(json!({"type": "function", "function": {
                "name": t.get("name"), "description": t.get("description").cloned().unwrap_or(json!("")),
                "parameters": t.get("parameters").cloned().unwrap_or(json!({"type": "object"})),
            }})),
            other => {
                return Err(only_openai(
                    &format!("tools[{i}].type"),
                    &format!("the built-in tool `{}`", other.unwrap_or("?")),
                ))
            }
        }
    }
    if !list.is_empty() {
        out.insert("tools".into(), Value::Array(list));
    }
    match req.get("tool_choice") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            out.insert("tool_choice".into(), json!(s));
        }
        Some(c) if c.get("type").and_then(Value::as_str) == Some("function") => {
            out.insert(
                "tool_choice".into(),
                json!({"type": "function", "function": {"name": c.get("name")}}),
            );
        }
        Some(_) => return Err(only_openai("tool_choice", "this `tool_choice`")),
    }
    Ok(())
}

fn usage_json(u: Option<&Value>) -> Value {
    let n = |k: &str| {
        u.and_then(|u| u.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let (i, o) = (n("prompt_tokens"), n("completion_tokens"));
    let reasoning = u
        .and_then(|u| u.pointer("/completion_tokens_details/reasoning_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let cached = u
        .and_then(|u| u.pointer("/prompt_tokens_details/cached_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    json!({"input_tokens": i, "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": o, "output_tokens_details": {"reasoning_tokens": reasoning}, "total_tokens": i + o})
}

/// A `response` object around `output`.
fn response(
    id: &str,
    model: &str,
    created: u64,
    status: &str,
    output: Vec<Value>,
    usage: Value,
) -> Value {
    json!({
        "id": id, "object": "response", "created_at": created, "status": status, "model": model,
        "output": output, "usage": usage, "error": null, "incomplete_details": null,
        "instructions": null, "metadata": {}, "parallel_tool_calls": true, "temperature": null,
        "top_p": null, "tool_choice": "auto", "tools": [], "text": {"format": {"type": "text"}},
    })
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    let content = match text.is_empty() && status == "in_progress" {
        true => json!([]),
        false => json!([{"type": "output_text", "text": text, "annotations": []}]),
    };
    json!({"id": id, "type": "message", "status": status, "role": "assistant", "content": content})
}

fn call_item(id: &str, call_id: &Value, name: &Value, args: &str, status: &str) -> Value {
    json!({"id": id, "type": "function_call", "status": status, "call_id": call_id, "name": name, "arguments": args})
}

fn resp_id(chat_id: Option<&str>) -> String {
    format!(
        "resp_{}",
        chat_id.unwrap_or("weir").trim_start_matches("chatcmpl-")
    )
}

/// A chat completion as a `response` object, for the model the client named.
pub fn answer_from_chat(body: &[u8], model: &str) -> Vec<u8> {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return super::openai_error(
            "the upstream's answer was not JSON",
            "server_error",
            "bad_upstream_answer",
        );
    };
    let id = resp_id(v.get("id").and_then(Value::as_str));
    let msg = v.pointer("/choices/0/message").unwrap_or(&Value::Null);
    let mut output = Vec::new();
    if let Some(r) = msg
        .get("reasoning_content")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
    {
        output.push(json!({"id": format!("rs_{id}"), "type": "reasoning", "summary": [{"type": "summary_text", "text": r}]}));
    }
    if let Some(t) = msg
        .get("content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        output.push(message_item(&format!("msg_{id}"), t, "completed"));
    }
    for (n, c) in msg
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let args = c
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .unwrap_or("{}");
        let name = c.pointer("/function/name").cloned().unwrap_or(Value::Null);
        output.push(call_item(
            &format!("fc_{id}_{n}"),
            c.get("id").unwrap_or(&Value::Null),
            &name,
            args,
            "completed",
        ));
    }
    let status = match v
        .pointer("/choices/0/finish_reason")
        .and_then(Value::as_str)
    {
        Some("length") | Some("content_filter") => "incomplete",
        _ => "completed",
    };
    let created = v
        .get("created")
        .and_then(Value::as_u64)
        .unwrap_or_else(super::unix_now);
    let mut r = response(
        &id,
        model,
        created,
        status,
        output,
        usage_json(v.get("usage")),
    );
    if status == "incomplete" {
        let reason = match v
            .pointer("/choices/0/finish_reason")
            .and_then(Value::as_str)
        {
            Some("length") => "max_output_tokens",
            _ => "content_filter",
        };
        r["incomplete_details"] = json!({"reason": reason});
    }
    r.to_string().into_bytes()
}

/// An output item being streamed.
enum Item {
    /// The model's thinking, as a reasoning item's summary text.
    Reasoning {
        id: String,
        text: String,
    },
    Text {
        id: String,
        text: String,
    },
    Call {
        id: String,
        call_id: Value,
        name: Value,
        args: String,
        index: u64,
    },
}

/// An OpenAI chunk stream as Responses events.
pub struct EventsFromChunks {
    splitter: Splitter,
    model: String,
    id: String,
    created: u64,
    seq: u64,
    started: bool,
    open: Option<Item>,
    done_items: Vec<Value>,
    finish: Option<String>,
    usage: Option<Value>,
    done: bool,
}

impl EventsFromChunks {
    pub fn new(model: &str) -> EventsFromChunks {
        EventsFromChunks {
            splitter: Splitter::default(),
            model: model.to_string(),
            id: resp_id(None),
            created: super::unix_now(),
            seq: 0,
            started: false,
            open: None,
            done_items: Vec::new(),
            finish: None,
            usage: None,
            done: false,
        }
    }

    /// Writes one event, numbered (`v` is always an object weir built).
    fn emit(&mut self, out: &mut Vec<u8>, mut v: Value) {
        let kind = v["type"].as_str().unwrap_or("").to_string();
        v["sequence_number"] = json!(self.seq);
        self.seq += 1;
        crate::chunk_text::emit(out, Some(&kind), &v.to_string());
    }

    fn on_event(&mut self, ev: Event, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        if ev.data.trim() == "[DONE]" {
            self.complete(out);
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(&ev.data) else {
            return;
        };
        if let Some(e) = v.get("error") {
            let message = e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("upstream error")
                .to_string();
            self.emit(out, json!({"type": "error", "code": "upstream_error", "message": message, "param": null}));
            self.done = true;
            return;
        }
        if !self.started {
            self.started = true;
            self.id = resp_id(v.get("id").and_then(Value::as_str));
            let r = response(
                &self.id,
                &self.model,
                self.created,
                "in_progress",
                vec![],
                Value::Null,
            );
            self.emit(
                out,
                json!({"type": "response.created", "response": r.clone()}),
            );
            self.emit(out, json!({"type": "response.in_progress", "response": r}));
        }
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
            self.reasoning(t, out);
        }
        if let Some(t) = delta
            .get("content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            self.text(t, out);
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            self.call(call, out);
        }
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(f.to_string());
        }
    }

    fn output_index(&self) -> usize {
        self.done_items.len()
    }

    fn reasoning(&mut self, t: &str, out: &mut Vec<u8>) {
        if !matches!(self.open, Some(Item::Reasoning { .. })) {
            self.close_item(out);
            let id = format!("rs_{}_{}", self.id, self.output_index());
            let at = self.output_index();
            self.emit(
                out,
                json!({"type": "response.output_item.added", "output_index": at,
                "item": {"id": id, "type": "reasoning", "summary": []}}),
            );
            self.emit(out, json!({"type": "response.reasoning_summary_part.added", "item_id": id,
                "output_index": at, "summary_index": 0, "part": {"type": "summary_text", "text": ""}}));
            self.open = Some(Item::Reasoning {
                id,
                text: String::new(),
            });
        }
        let at = self.output_index();
        if let Some(Item::Reasoning { id, text }) = &mut self.open {
            text.push_str(t);
            let id = id.clone();
            self.emit(
                out,
                json!({"type": "response.reasoning_summary_text.delta", "item_id": id,
                "output_index": at, "summary_index": 0, "delta": t}),
            );
        }
    }

    fn text(&mut self, t: &str, out: &mut Vec<u8>) {
        if !matches!(self.open, Some(Item::Text { .. })) {
            self.close_item(out);
            let id = format!("msg_{}_{}", self.id, self.output_index());
            let at = self.output_index();
            self.emit(out, json!({"type": "response.output_item.added", "output_index": at, "item": message_item(&id, "", "in_progress")}));
            self.emit(out, json!({"type": "response.content_part.added", "item_id": id, "output_index": at, "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": []}}));
            self.open = Some(Item::Text {
                id,
                text: String::new(),
            });
        }
        let at = self.output_index();
        if let Some(Item::Text { id, text }) = &mut self.open {
            text.push_str(t);
            let id = id.clone();
            self.emit(
                out,
                json!({"type": "response.output_text.delta", "item_id": id, "output_index": at,
                "content_index": 0, "delta": t, "logprobs": []}),
            );
        }
    }

    fn call(&mut self, call: &Value, out: &mut Vec<u8>) {
        let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        let same = matches!(&self.open, Some(Item::Call { index: i, .. }) if *i == index);
        if !same {
            self.close_item(out);
            let id = format!("fc_{}_{}", self.id, self.output_index());
            let call_id = call.get("id").cloned().unwrap_or(Value::Null);
            let name = call
                .pointer("/function/name")
                .cloned()
                .unwrap_or(Value::Null);
            let at = self.output_index();
            self.emit(
                out,
                json!({"type": "response.output_item.added", "output_index": at,
                "item": call_item(&id, &call_id, &name, "", "in_progress")}),
            );
            self.open = Some(Item::Call {
                id,
                call_id,
                name,
                args: String::new(),
                index,
            });
        }
        let at = self.output_index();
        let Some(piece) = call
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
        else {
            return;
        };
        if let Some(Item::Call { id, args, .. }) = &mut self.open {
            args.push_str(piece);
            let id = id.clone();
            self.emit(out, json!({"type": "response.function_call_arguments.delta", "item_id": id, "output_index": at, "delta": piece}));
        }
    }

    fn close_item(&mut self, out: &mut Vec<u8>) {
        let at = self.output_index();
        let item = match self.open.take() {
            None => return,
            Some(Item::Reasoning { id, text }) => {
                self.emit(
                    out,
                    json!({"type": "response.reasoning_summary_text.done", "item_id": id,
                    "output_index": at, "summary_index": 0, "text": text}),
                );
                let part = json!({"type": "summary_text", "text": text});
                self.emit(
                    out,
                    json!({"type": "response.reasoning_summary_part.done", "item_id": id,
                    "output_index": at, "summary_index": 0, "part": part}),
                );
                json!({"id": id, "type": "reasoning", "summary": [part]})
            }
            Some(Item::Text { id, text }) => {
                self.emit(
                    out,
                    json!({"type": "response.output_text.done", "item_id": id, "output_index": at,
                    "content_index": 0, "text": text, "logprobs": []}),
                );
                self.emit(out, json!({"type": "response.content_part.done", "item_id": id, "output_index": at,
                    "content_index": 0, "part": {"type": "output_text", "text": text, "annotations": []}}));
                message_item(&id, &text, "completed")
            }
            Some(Item::Call {
                id,
                call_id,
                name,
                args,
                ..
            }) => {
                self.emit(
                    out,
                    json!({"type": "response.function_call_arguments.done", "item_id": id,
                    "output_index": at, "arguments": args}),
                );
                call_item(&id, &call_id, &name, &args, "completed")
            }
        };
        self.emit(
            out,
            json!({"type": "response.output_item.done", "output_index": at, "item": item.clone()}),
        );
        self.done_items.push(item);
    }

    fn complete(&mut self, out: &mut Vec<u8>) {
        if self.done || !self.started {
            return;
        }
        self.done = true;
        self.close_item(out);
        let (kind, status) = match self.finish.as_deref() {
            Some("length") | Some("content_filter") => ("response.incomplete", "incomplete"),
            _ => ("response.completed", "completed"),
        };
        let items = std::mem::take(&mut self.done_items);
        let mut r = response(
            &self.id,
            &self.model,
            self.created,
            status,
            items,
            usage_json(self.usage.as_ref()),
        );
        if status == "incomplete" {
            let reason = if self.finish.as_deref() == Some("length") {
                "max_output_tokens"
            } else {
                "content_filter"
            };
            r["incomplete_details"] = json!({"reason": reason});
        }
        self.emit(out, json!({"type": kind, "response": r}));
    }
}

impl EventReader for EventsFromChunks {
    fn splitter(&mut self) -> &mut Splitter {
        &mut self.splitter
    }

    fn event(&mut self, ev: Event, out: &mut Vec<u8>) {
        self.on_event(ev, out);
    }

    /// The chunks ended: a stream that finished gets `response.completed`.
    fn end(&mut self, out: &mut Vec<u8>) {
        if self.finish.is_some() {
            self.complete(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_responses_request_becomes_a_chat_request() {
        let req = json!({"model": "m", "instructions": "Be brief.", "max_output_tokens": 50, "stream": true,
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "Weather?"},
                    {"type": "input_image", "image_url": "https://x/y.png"}]},
                {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"}],
            "tools": [{"type": "function", "name": "w", "parameters": {"type": "object"}}],
            "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}}});
        let (chat, untranslatable) = to_chat(&req).unwrap();
        assert!(untranslatable.is_none());
        let m = chat["messages"].as_array().unwrap();
        assert_eq!(m[0], json!({"role": "system", "content": "Be brief."}));
        assert_eq!(m[1]["content"][1]["image_url"]["url"], "https://x/y.png");
        assert_eq!(m[2]["tool_calls"][0]["id"], "c1");
        assert_eq!(
            m[3],
            json!({"role": "tool", "tool_call_id": "c1", "content": "sunny"})
        );
        assert_eq!(chat["max_tokens"], 50);
        assert_eq!(chat["tools"][0]["function"]["name"], "w");
        assert_eq!(chat["response_format"]["json_schema"]["name"], "x");
        assert_eq!(chat["stream_options"]["include_usage"], true);
    }

    #[test]
    fn what_chat_cannot_carry_is_named_and_the_text_still_comes() {
        let req = json!({"model": "m", "input": "hi", "previous_response_id": "resp_1",
            "tools": [{"type": "web_search"}]});
        let (chat, untranslatable) = to_chat(&req).unwrap();
        assert_eq!(chat["messages"][0]["content"], "hi");
        let e = untranslatable.unwrap();
        assert_eq!(e.param(), Some("previous_response_id"));
        assert!(e.to_string().contains("only by OpenAI channels"), "{e}");
        assert!(to_chat(&json!({"model": "m"})).is_err());
    }

    #[test]
    fn a_part_chat_cannot_carry_leaves_the_rest_of_its_message() {
        let req = json!({"model": "m", "input": [{"role": "user", "content": [
            {"type": "input_text", "text": "read this"}, {"type": "input_file", "file_id": "f"}]}]});
        let (chat, e) = to_chat(&req).unwrap();
        assert_eq!(chat["messages"][0]["content"][0]["text"], "read this");
        assert_eq!(e.unwrap().param(), Some("input[0].content[1].type"));
    }

    #[test]
    fn a_chat_answer_becomes_a_response() {
        let chat = json!({"id": "chatcmpl-9", "created": 7, "choices": [{"index": 0, "finish_reason": "tool_calls",
            "message": {"content": "Looking.", "tool_calls": [{"id": "c1", "function": {"name": "w", "arguments": "{}"}}]}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 3}});
        let v: Value =
            serde_json::from_slice(&answer_from_chat(chat.to_string().as_bytes(), "m")).unwrap();
        assert_eq!(v["object"], "response");
        assert_eq!(v["status"], "completed");
        assert_eq!(v["output"][0]["content"][0]["text"], "Looking.");
        assert_eq!(v["output"][1]["call_id"], "c1");
        assert_eq!(v["usage"]["input_tokens"], 10);
        assert_eq!(v["usage"]["total_tokens"], 13);
    }

    #[test]
    fn thinking_streams_as_a_reasoning_item_before_the_message() {
        let sse = [
            json!({"id": "chatcmpl-2", "choices": [{"index": 0, "delta": {"reasoning_content": "Hmm"}}]}),
            json!({"id": "chatcmpl-2", "choices": [{"index": 0, "delta": {"reasoning_content": " ok"}}]}),
            json!({"id": "chatcmpl-2", "choices": [{"index": 0, "delta": {"content": "Yes"}, "finish_reason": "stop"}]}),
        ]
        .iter()
        .map(|c| format!("data: {c}\n\n"))
        .collect::<String>()
            + "data: [DONE]\n\n";
        let mut t = EventsFromChunks::new("m");
        let mut out = t.feed(sse.as_bytes());
        out.extend(t.finish());
        let events: Vec<Value> = String::from_utf8(out)
            .unwrap()
            .split("\n\n")
            .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            &types[2..6],
            [
                "response.output_item.added",
                "response.reasoning_summary_part.added",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_text.delta"
            ]
        );
        let done = &events.last().unwrap()["response"];
        assert_eq!(done["output"][0]["summary"][0]["text"], "Hmm ok");
        assert_eq!(done["output"][1]["content"][0]["text"], "Yes");
    }

    #[test]
    fn a_chunk_stream_becomes_responses_events_in_any_split() {
        let chunks = [
            json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]}),
            json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"content": "lo"}}]}),
            json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "w", "arguments": "{\"a\""}}]}}]}),
            json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}}]}),
            json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
            json!({"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}}),
        ];
        let mut sse: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
        sse.push_str("data: [DONE]\n\n");
        for step in [1, 5, 33, sse.len()] {
            let mut t = EventsFromChunks::new("m");
            let mut out = Vec::new();
            for piece in sse.as_bytes().chunks(step) {
                out.extend(t.feed(piece));
            }
            out.extend(t.finish());
            let events: Vec<Value> = String::from_utf8(out)
                .unwrap()
                .split("\n\n")
                .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
                .map(|d| serde_json::from_str(d).unwrap())
                .collect();
            let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
            assert_eq!(
                types,
                [
                    "response.created",
                    "response.in_progress",
                    "response.output_item.added",
                    "response.content_part.added",
                    "response.output_text.delta",
                    "response.output_text.delta",
                    "response.output_text.done",
                    "response.content_part.done",
                    "response.output_item.done",
                    "response.output_item.added",
                    "response.function_call_arguments.delta",
                    "response.function_call_arguments.delta",
                    "response.function_call_arguments.done",
                    "response.output_item.done",
                    "response.completed"
                ],
                "step {step}"
            );
            let seqs: Vec<u64> = events
                .iter()
                .map(|e| e["sequence_number"].as_u64().unwrap())
                .collect();
            assert_eq!(seqs, (0..15).collect::<Vec<u64>>());
            let done = &events[14]["response"];
            assert_eq!(done["output"][0]["content"][0]["text"], "Hello");
            assert_eq!(done["output"][1]["arguments"], "{\"a\":1}");
            assert_eq!(done["usage"]["input_tokens"], 9);
            assert_eq!(done["usage"]["output_tokens"], 4);
        }
    }
}
