//! Reading an OpenAI chat request, for the providers that rewrite it into their own
//! format. Walking the messages is the same for each of them; what a provider
//! writes for each kind of message is its [`Dialect`].

use super::items;
use crate::GatewayError;
use bytes::Bytes;
use serde_json::{json, Map, Value};

/// How one provider writes the parts of OpenAI chat messages.
pub(crate) trait Dialect {
    /// The provider's role for assistant turns.
    const ASSISTANT: &'static str;
    /// A system or developer message's text: providers keep these out of the turns.
    fn system(&mut self, text: String);
    fn text(&self, text: &str) -> Value;
    /// An `image_url` part: a `data:` URL or a link.
    fn image(&self, url: &str) -> Value;
    /// One of an assistant message's `tool_calls`, with its arguments parsed.
    fn tool_call(&mut self, call: &Value, args: Value) -> Value;
    /// A `tool` message: the answer to a call.
    fn tool_result(&self, m: &Value) -> Value;
}

/// The conversation as turns of (role, parts). Consecutive messages of one role
/// share a turn, since providers want the roles to alternate; empty turns stay, for
/// the caller to drop after any reordering.
pub(crate) fn turns<D: Dialect>(d: &mut D, messages: &[Value]) -> Vec<(&'static str, Vec<Value>)> {
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for m in messages {
        let (role, parts) = match m.get("role").and_then(|r| r.as_str()).unwrap_or("user") {
            "system" | "developer" => {
                d.system(content_text(m.get("content")));
                continue;
            }
            "assistant" => (D::ASSISTANT, assistant_parts(d, m)),
            "tool" | "function" => ("user", vec![d.tool_result(m)]),
            _ => ("user", user_parts(d, m.get("content"))),
        };
        match turns.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(parts),
            _ => turns.push((role, parts)),
        }
    }
    turns
}

/// Turns as a JSON list of `{"role": …, parts_key: […]}`.
pub(crate) fn turns_json(turns: Vec<(&'static str, Vec<Value>)>, parts_key: &str) -> Value {
    let turn = |(role, parts): (&str, Vec<Value>)| {
        let mut t = Map::new();
        t.insert("role".into(), json!(role));
        t.insert(parts_key.into(), Value::Array(parts));
        Value::Object(t)
    };
    Value::Array(turns.into_iter().map(turn).collect())
}

fn assistant_parts<D: Dialect>(d: &mut D, m: &Value) -> Vec<Value> {
    let mut parts = Vec::new();
    let text = content_text(m.get("content"));
    if !text.is_empty() {
        parts.push(d.text(&text));
    }
    for call in items(m, "/tool_calls") {
        let args = call
            .pointer("/function/arguments")
            .and_then(|a| a.as_str())
            .unwrap_or("{}");
        // Arguments that are not JSON still make a call; providers want an object.
        let args = serde_json::from_str::<Value>(args).unwrap_or_else(|_| json!({}));
        parts.push(d.tool_call(call, args));
    }
    parts
}

/// A user message's text and image parts (empty texts dropped).
fn user_parts<D: Dialect>(d: &D, content: Option<&Value>) -> Vec<Value> {
    match content {
        Some(Value::String(s)) if s.is_empty() => Vec::new(),
        Some(Value::String(s)) => vec![d.text(s)],
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| match p.get("type").and_then(|t| t.as_str()) {
                Some("text") => p
                    .get("text")
                    .and_then(|t| t.as_str())
                    .filter(|t| !t.is_empty())
                    .map(|t| d.text(t)),
                Some("image_url") => p
                    .pointer("/image_url/url")
                    .and_then(|u| u.as_str())
                    .map(|u| d.image(u)),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

pub(crate) fn parse_json(body: &Bytes) -> Result<Value, GatewayError> {
    serde_json::from_slice(body).map_err(|e| GatewayError::InvalidJson(e.to_string()))
}

pub(crate) fn messages(req: &Value) -> Result<&[Value], GatewayError> {
    req.get("messages")
        .and_then(|m| m.as_array())
        .map(Vec::as_slice)
        .ok_or_else(|| GatewayError::BadRequest("`messages` must be an array".into()))
}

/// Copies the options the request sets (not null) under the provider's names.
pub(crate) fn copy_options(req: &Value, out: &mut Map<String, Value>, names: &[(&str, &str)]) {
    for (from, to) in names {
        if let Some(v) = req.get(*from).filter(|v| !v.is_null()) {
            out.insert((*to).into(), v.clone());
        }
    }
}

/// `max_completion_tokens`, or the older `max_tokens`.
pub(crate) fn max_tokens(req: &Value) -> Option<&Value> {
    req.get("max_completion_tokens")
        .or_else(|| req.get("max_tokens"))
}

/// The `function` of each of the request's `tools`.
pub(crate) fn functions(req: &Value) -> impl Iterator<Item = &Value> {
    items(req, "/tools").filter_map(|t| t.get("function"))
}

/// OpenAI's `tool_choice`, for a provider to name its way.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum ToolChoice<'a> {
    Auto,
    Required,
    Never,
    /// This function, by its name.
    Function(&'a Value),
}

pub(crate) fn tool_choice(req: &Value) -> Option<ToolChoice<'_>> {
    match req.get("tool_choice")? {
        Value::String(s) if s == "auto" => Some(ToolChoice::Auto),
        Value::String(s) if s == "required" => Some(ToolChoice::Required),
        Value::String(s) if s == "none" => Some(ToolChoice::Never),
        Value::Object(o) => o
            .get("function")
            .and_then(|f| f.get("name"))
            .map(ToolChoice::Function),
        _ => None,
    }
}

/// OpenAI's `stop` (a string or a list) as a list.
pub(crate) fn stop_list(v: Option<&Value>) -> Option<Vec<String>> {
    match v? {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(a) => Some(
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect(),
        ),
        _ => None,
    }
}

/// The text of OpenAI message content: a string, or the text parts of a list.
pub(crate) fn content_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes every part as a tagged string, and logs the system texts, to see
    /// what the walk did.
    #[derive(Default)]
    struct Tags(Vec<String>);

    impl Dialect for Tags {
        const ASSISTANT: &'static str = "bot";
        fn system(&mut self, text: String) {
            self.0.push(format!("system:{text}"));
        }
        fn text(&self, text: &str) -> Value {
            json!(format!("text:{text}"))
        }
        fn image(&self, url: &str) -> Value {
            json!(format!("image:{url}"))
        }
        fn tool_call(&mut self, call: &Value, args: Value) -> Value {
            json!(format!("call:{}:{args}", call["id"].as_str().unwrap_or("")))
        }
        fn tool_result(&self, m: &Value) -> Value {
            json!(format!("result:{}", content_text(m.get("content"))))
        }
    }

    #[test]
    fn turns_merge_roles_and_keep_system_apart() {
        let req = json!({"messages": [
            {"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "user", "content": [{"type": "text", "text": ""}, {"type": "image_url", "image_url": {"url": "u"}}, {"type": "input_audio"}]},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "function": {"arguments": "not json"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "r"},
            {"role": "assistant", "content": ""},
        ]});
        let mut d = Tags::default();
        let turns = turns(&mut d, messages(&req).unwrap());
        assert_eq!(d.0, ["system:a\nb"]);
        assert_eq!(
            turns_json(turns, "parts"),
            json!([
                {"role": "user", "parts": ["image:u", "text:hi"]},
                {"role": "bot", "parts": ["call:c1:{}"]},
                {"role": "user", "parts": ["result:r"]},
                {"role": "bot", "parts": []},
            ])
        );
        assert!(messages(&json!({"messages": "x"})).is_err());
    }

    #[test]
    fn options_read_as_openai_defines_them() {
        let req = json!({"max_tokens": 5, "top_p": null, "temperature": 0.5, "stop": "x",
            "tools": [{"type": "function", "function": {"name": "f"}}, {"type": "web"}],
            "tool_choice": {"type": "function", "function": {"name": "f"}}});
        let mut out = Map::new();
        copy_options(&req, &mut out, &[("temperature", "t"), ("top_p", "p")]);
        assert_eq!(Value::Object(out), json!({"t": 0.5}));
        assert_eq!(max_tokens(&req), Some(&json!(5)));
        assert_eq!(
            max_tokens(&json!({"max_tokens": 5, "max_completion_tokens": 7})),
            Some(&json!(7))
        );
        assert_eq!(stop_list(req.get("stop")), Some(vec!["x".to_string()]));
        assert_eq!(functions(&req).count(), 1);
        assert_eq!(tool_choice(&req), Some(ToolChoice::Function(&json!("f"))));
        assert_eq!(
            tool_choice(&json!({"tool_choice": "none"})),
            Some(ToolChoice::Never)
        );
        assert_eq!(tool_choice(&json!({"tool_choice": "sometimes"})), None);
        assert_eq!(
            data_url("data:image/png;base64,AA"),
            Some(("image/png", "AA"))
        );
        assert_eq!(data_url("https://x/y.png"), None);
    }
}
