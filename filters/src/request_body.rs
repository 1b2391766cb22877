//! `request_body_filter` logic: the client's JSON body, parsed once into its top-level
//! fields kept as raw JSON, so routing reads `model` and a rewrite touches only the
//! fields it changes. A 1 MiB `messages` array is never re-parsed or re-formatted.

use crate::error::GatewayError;
use bytes::Bytes;
use indexmap::IndexMap;
use serde_json::value::RawValue;

/// SipHash was 2% of a request. Field names come from the client, so the seeded
/// `quality` variant of foldhash, not the `fast` one.
type Fields = IndexMap<String, Box<RawValue>, foldhash::quality::RandomState>;

#[derive(Debug, Clone)]
pub struct JsonBody {
    fields: Fields,
}

/// What the request asked for, read once from the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFacts {
    pub model: String,
    pub stream: bool,
    /// The client set `stream_options.include_usage: true` itself.
    pub client_wants_usage: bool,
}

impl JsonBody {
    pub fn parse(bytes: &[u8]) -> Result<JsonBody, GatewayError> {
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Err(GatewayError::BadRequest(
                "request body is empty; expected a JSON object".into(),
            ));
        }
        let fields: Fields =
            serde_json::from_slice(bytes).map_err(|e| GatewayError::InvalidJson(e.to_string()))?;
        Ok(JsonBody { fields })
    }

    pub fn get(&self, key: &str) -> Option<&RawValue> {
        self.fields.get(key).map(|v| v.as_ref())
    }

    /// Reads `model`, `stream` and `stream_options.include_usage`.
    pub fn facts(&self) -> Result<RequestFacts, GatewayError> {
        let model = match self.get("model") {
            None => {
                return Err(GatewayError::BadRequest(
                    "you must provide a model parameter".into(),
                ))
            }
            Some(raw) => serde_json::from_str::<String>(raw.get())
                .map_err(|_| GatewayError::BadRequest("`model` must be a string".into()))?,
        };
        if model.trim().is_empty() {
            return Err(GatewayError::BadRequest("`model` must not be empty".into()));
        }
        let stream = match self.get("stream") {
            None => false,
            Some(raw) => match serde_json::from_str::<Option<bool>>(raw.get()) {
                Ok(b) => b.unwrap_or(false),
                Err(_) => {
                    return Err(GatewayError::BadRequest(
                        "`stream` must be a boolean".into(),
                    ))
                }
            },
        };
        #[derive(serde::Deserialize)]
        struct StreamOptions {
            include_usage: Option<bool>,
        }
        let client_wants_usage = match self.get("stream_options") {
            None => false,
            Some(raw) => serde_json::from_str::<Option<StreamOptions>>(raw.get())
                .map_err(|_| GatewayError::BadRequest("`stream_options` must be an object".into()))?
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
        };
        Ok(RequestFacts {
            model,
            stream,
            client_wants_usage,
        })
    }

    /// Sets a top-level field to a JSON value.
    pub fn set(&mut self, key: &str, value: &impl serde::Serialize) -> Result<(), GatewayError> {
        let raw = serde_json::value::to_raw_value(value)
            .map_err(|e| GatewayError::Internal(format!("cannot encode `{key}`: {e}")))?;
        self.fields.insert(key.to_string(), raw);
        Ok(())
    }

    /// Removes a top-level field and returns it when it was a string (a key in the
    /// body must not travel upstream, whatever its type).
    pub fn take_string(&mut self, key: &str) -> Option<String> {
        let raw = self.fields.shift_remove(key)?;
        serde_json::from_str::<String>(raw.get()).ok()
    }

    /// Makes a streaming request report usage in its last chunk (P9), keeping any
    /// other `stream_options` the client sent.
    pub fn ensure_stream_usage(&mut self) -> Result<(), GatewayError> {
        let mut opts =
            match self.get("stream_options") {
                Some(raw) => serde_json::from_str::<
                    Option<serde_json::Map<String, serde_json::Value>>,
                >(raw.get())
                .ok()
                .flatten()
                .unwrap_or_default(),
                None => serde_json::Map::new(),
            };
        if opts.get("include_usage") == Some(&serde_json::Value::Bool(true)) {
            return Ok(());
        }
        opts.insert("include_usage".into(), serde_json::Value::Bool(true));
        self.set("stream_options", &opts)
    }

    /// Names of the top-level fields, in order.
    pub fn field_names(&self) -> impl Iterator<Item = &str> {
        self.fields.keys().map(String::as_str)
    }

    /// A top-level field as a JSON value.
    pub fn get_path_exact(&self, key: &str) -> Option<serde_json::Value> {
        serde_json::from_str(self.get(key)?.get()).ok()
    }

    /// The value at a dotted path (`temperature`, `response_format.type`,
    /// `messages.0.role`).
    pub fn get_path(&self, path: &str) -> Option<serde_json::Value> {
        let mut segs = path.split('.');
        let top = segs.next()?;
        let mut v: serde_json::Value = serde_json::from_str(self.get(top)?.get()).ok()?;
        for seg in segs {
            v = match v {
                serde_json::Value::Object(mut m) => m.remove(seg)?,
                serde_json::Value::Array(mut a) => {
                    let i: usize = seg.parse().ok()?;
                    (i < a.len()).then(|| a.swap_remove(i))?
                }
                _ => return None,
            };
        }
        Some(v)
    }

    /// Sets the value at a dotted path, creating objects on the way.
    pub fn set_path(&mut self, path: &str, value: serde_json::Value) -> Result<(), GatewayError> {
        let mut segs: Vec<&str> = path.split('.').collect();
        let top = segs.remove(0);
        if segs.is_empty() {
            return self.set(top, &value);
        }
        let mut root: serde_json::Value = match self.get(top) {
            Some(raw) => serde_json::from_str(raw.get()).unwrap_or(serde_json::Value::Null),
            None => serde_json::Value::Null,
        };
        let mut cur = &mut root;
        for seg in segs {
            if !cur.is_object() && !cur.is_array() {
                *cur = serde_json::Value::Object(serde_json::Map::new());
            }
            cur = match cur {
                serde_json::Value::Array(a) => match seg.parse::<usize>() {
                    Ok(i) if i < a.len() => &mut a[i],
                    // The client's array is shorter than the rule expects: nothing
                    // to set there.
                    _ => return Ok(()),
                },
                serde_json::Value::Object(m) => {
                    m.entry(seg.to_string()).or_insert(serde_json::Value::Null)
                }
                _ => unreachable_value(),
            };
        }
        *cur = value;
        self.set(top, &root)
    }

    /// G7 `param_map`: where the value at a path equals `old`, it becomes `new`.
    pub fn map_params<'a>(
        &mut self,
        map: impl IntoIterator<Item = (&'a String, &'a (serde_json::Value, serde_json::Value))>,
    ) -> Result<(), GatewayError> {
        for (path, (old, new)) in map {
            if self.get_path(path).is_some_and(|v| same_value(&v, old)) {
                self.set_path(path, new.clone())?;
            }
        }
        Ok(())
    }

    /// G7 `param_fixed`: the value at each path is set, whatever it was.
    pub fn fix_params<'a>(
        &mut self,
        fixed: impl IntoIterator<Item = (&'a String, &'a serde_json::Value)>,
    ) -> Result<(), GatewayError> {
        for (path, v) in fixed {
            self.set_path(path, v.clone())?;
        }
        Ok(())
    }

    /// G6: the last user message becomes `template` with `{{query}}` replaced by its
    /// text. In multimodal content the text parts become one templated text part
    /// (where the first was); images and other parts stay. Legacy completions
    /// template their `prompt`. Returns whether anything was templated.
    pub fn apply_template(&mut self, template: &str) -> Result<bool, GatewayError> {
        let fill = |q: &str| template.replace("{{query}}", q);
        if let Some(raw) = self.get("messages") {
            let mut messages: Vec<serde_json::Value> = serde_json::from_str(raw.get())
                .map_err(|_| GatewayError::BadRequest("`messages` must be an array".into()))?;
            let Some(last_user) = messages
                .iter_mut()
                .rev()
                .find(|m| m.get("role").and_then(|r| r.as_str()) == Some("user"))
            else {
                return Ok(false);
            };
            let content = last_user.get_mut("content");
            match content {
                Some(serde_json::Value::String(text)) => *text = fill(text),
                Some(serde_json::Value::Array(parts)) => {
                    let is_text = |p: &serde_json::Value| {
                        p.get("type").and_then(|t| t.as_str()) == Some("text")
                    };
                    let query: Vec<String> = parts
                        .iter()
                        .filter(|p| is_text(p))
                        .filter_map(|p| p.get("text").and_then(|t| t.as_str()).map(str::to_string))
                        .collect();
                    let templated =
                        serde_json::json!({"type": "text", "text": fill(&query.join("\n"))});
                    match parts.iter().position(is_text) {
                        Some(first) => {
                            let mut i = 0;
                            parts.retain(|p| {
                                let keep = i == first || !is_text(p);
                                i += 1;
                                keep
                            });
                            let at = parts.iter().position(is_text).unwrap_or(0);
                            if let Some(slot) = parts.get_mut(at) {
                                *slot = templated;
                            }
                        }
                        None => parts.insert(0, templated),
                    }
                }
                _ => return Ok(false),
            }
            self.set("messages", &messages)?;
            return Ok(true);
        }
        if let Some(raw) = self.get("prompt") {
            if let Ok(prompt) = serde_json::from_str::<String>(raw.get()) {
                self.set("prompt", &fill(&prompt))?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The body as bytes to send upstream.
    pub fn to_bytes(&self) -> Bytes {
        let len: usize = self
            .fields
            .iter()
            .map(|(k, v)| k.len() + v.get().len() + 8)
            .sum();
        let mut out = Vec::with_capacity(len + 2);
        out.push(b'{');
        for (i, (k, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            // Keys came out of a JSON parser; re-escaping them cannot fail.
            if serde_json::to_writer(&mut out, k).is_err() {
                out.extend_from_slice(b"\"\"");
            }
            out.push(b':');
            out.extend_from_slice(v.get().as_bytes());
        }
        out.push(b'}');
        Bytes::from(out)
    }
}

/// JSON equality where `1` and `1.0` are the same number.
fn same_value(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Only reached for values that were just made an object or array.
fn unreachable_value<'a>() -> &'a mut serde_json::Value {
    unreachable!("set_path makes every intermediate value an object or an array")
}

/// Content part types that carry an image or audio (OpenAI's `image_url` and
/// `input_audio`, and the `image` / `audio` some clients send).
const MEDIA_PARTS: &[&str] = &["image_url", "input_audio", "image", "audio"];

/// Whether any message has an image or audio part. Text-only bodies (most) are
/// told apart by a substring scan; only a body that names a media type is parsed.
pub fn has_media(body: &JsonBody) -> bool {
    let Some(messages) = body.get("messages") else {
        return false;
    };
    let raw = messages.get();
    let finder = |t: &str| memchr::memmem::find(raw.as_bytes(), t.as_bytes()).is_some();
    if !MEDIA_PARTS.iter().any(|t| finder(t)) {
        return false;
    }
    #[derive(serde::Deserialize)]
    struct Message {
        #[serde(default)]
        content: Option<serde_json::Value>,
    }
    let Ok(messages) = serde_json::from_str::<Vec<Message>>(raw) else {
        return false;
    };
    messages.iter().any(|m| match &m.content {
        Some(serde_json::Value::Array(parts)) => parts.iter().any(|p| {
            p.get("type")
                .and_then(|t| t.as_str())
                .is_some_and(|t| MEDIA_PARTS.contains(&t))
        }),
        _ => false,
    })
}

/// The text a tokenizer estimate counts for the prompt: every string in `messages`
/// (chat), `prompt` (completions) or `input` (embeddings), plus the number of messages.
pub fn prompt_text(body: &JsonBody) -> (String, usize) {
    let mut text = String::new();
    let mut messages = 0;
    if let Some(raw) = body.get("messages") {
        if let Ok(serde_json::Value::Array(list)) = serde_json::from_str(raw.get()) {
            messages = list.len();
            for m in &list {
                collect_text(
                    m.get("content").unwrap_or(&serde_json::Value::Null),
                    &mut text,
                );
            }
        }
    }
    for key in ["prompt", "input"] {
        if let Some(raw) = body.get(key) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(raw.get()) {
                collect_text(&v, &mut text);
            }
        }
    }
    (text, messages)
}

fn collect_text(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::String(s) => {
            out.push_str(s);
            out.push('\n');
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| collect_text(i, out)),
        // Multimodal parts: `{"type":"text","text":"..."}`.
        serde_json::Value::Object(map) => {
            if let Some(t) = map.get("text") {
                collect_text(t, out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_facts() {
        let b = JsonBody::parse(br#"{"model":"m","stream":true,"messages":[]}"#).unwrap();
        let f = b.facts().unwrap();
        assert_eq!(f.model, "m");
        assert!(f.stream);
        assert!(!f.client_wants_usage);
        let b = JsonBody::parse(
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
        )
        .unwrap();
        assert!(b.facts().unwrap().client_wants_usage);
    }

    #[test]
    fn rejects_bad_bodies() {
        assert!(matches!(
            JsonBody::parse(b"{nope").unwrap_err(),
            GatewayError::InvalidJson(_)
        ));
        assert!(matches!(
            JsonBody::parse(b"  ").unwrap_err(),
            GatewayError::BadRequest(_)
        ));
        assert!(matches!(
            JsonBody::parse(b"[1,2]").unwrap_err(),
            GatewayError::InvalidJson(_)
        ));
        let no_model = JsonBody::parse(br#"{"messages":[]}"#).unwrap();
        assert!(no_model.facts().is_err());
        let num_model = JsonBody::parse(br#"{"model":3}"#).unwrap();
        assert!(num_model.facts().is_err());
        let bad_stream = JsonBody::parse(br#"{"model":"m","stream":"yes"}"#).unwrap();
        assert!(bad_stream.facts().is_err());
    }

    #[test]
    fn rewrites_only_what_changes() {
        let src = br#"{"model":"a","messages":[{"role":"user","content":"hi \u00e9"}],"temperature":0.50}"#;
        let mut b = JsonBody::parse(src).unwrap();
        b.set("model", &"b").unwrap();
        let out = b.to_bytes();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"model":"b","messages":[{"role":"user","content":"hi \u00e9"}],"temperature":0.50}"#
        );
    }

    #[test]
    fn adds_include_usage_keeping_other_options() {
        let mut b =
            JsonBody::parse(br#"{"model":"a","stream":true,"stream_options":{"x":1}}"#).unwrap();
        b.ensure_stream_usage().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b.to_bytes()).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stream_options"]["x"], 1);
        let mut b = JsonBody::parse(br#"{"model":"a","stream":true}"#).unwrap();
        b.ensure_stream_usage().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b.to_bytes()).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
    }

    #[test]
    fn templates_the_last_user_message() {
        let mut b = JsonBody::parse(br#"{"model":"a","messages":[{"role":"user","content":"first"},{"role":"assistant","content":"ok"},{"role":"user","content":"what is weir?"}]}"#).unwrap();
        assert!(b
            .apply_template("Answer as an expert. Question: {{query}}")
            .unwrap());
        let v: serde_json::Value = serde_json::from_slice(&b.to_bytes()).unwrap();
        assert_eq!(v["messages"][0]["content"], "first");
        assert_eq!(
            v["messages"][2]["content"],
            "Answer as an expert. Question: what is weir?"
        );
    }

    #[test]
    fn templates_text_parts_of_multimodal_content() {
        let mut b = JsonBody::parse(br#"{"model":"a","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"u"}},{"type":"text","text":"what"},{"type":"text","text":"is this?"}]}]}"#).unwrap();
        assert!(b.apply_template("Q: {{query}}").unwrap());
        let v: serde_json::Value = serde_json::from_slice(&b.to_bytes()).unwrap();
        let parts = v["messages"][0]["content"].as_array().unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0]["type"], "image_url");
        assert_eq!(parts[1]["text"], "Q: what\nis this?");
        let mut legacy = JsonBody::parse(br#"{"model":"a","prompt":"hi"}"#).unwrap();
        assert!(legacy.apply_template("<{{query}}>").unwrap());
        assert_eq!(legacy.get_path("prompt").unwrap(), "<hi>");
    }

    #[test]
    fn maps_and_fixes_params_at_dotted_paths() {
        let mut b = JsonBody::parse(
            br#"{"model":"deepseek","temperature":0.9,"response_format":{"type":"text"}}"#,
        )
        .unwrap();
        let map: indexmap::IndexMap<String, (serde_json::Value, serde_json::Value)> = [
            (
                "model".to_string(),
                (serde_json::json!("deepseek"), serde_json::json!("qwen2-7b")),
            ),
            (
                "response_format.type".to_string(),
                (serde_json::json!("text"), serde_json::json!("json_object")),
            ),
            (
                "top_p".to_string(),
                (serde_json::json!(1), serde_json::json!(0.5)),
            ),
        ]
        .into_iter()
        .collect();
        b.map_params(&map).unwrap();
        let fixed: indexmap::IndexMap<String, serde_json::Value> = [
            ("temperature".to_string(), serde_json::json!(0.2)),
            ("metadata.team".to_string(), serde_json::json!("a")),
        ]
        .into_iter()
        .collect();
        b.fix_params(&fixed).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b.to_bytes()).unwrap();
        assert_eq!(v["model"], "qwen2-7b");
        assert_eq!(v["response_format"]["type"], "json_object");
        assert!(v.get("top_p").is_none());
        assert_eq!(v["temperature"], 0.2);
        assert_eq!(v["metadata"]["team"], "a");
    }

    #[test]
    fn prompt_text_covers_multimodal_parts() {
        let b = JsonBody::parse(
            br#"{"model":"a","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hello"},{"type":"image_url","image_url":{"url":"x"}}]}]}"#,
        )
        .unwrap();
        let (text, n) = prompt_text(&b);
        assert_eq!(n, 2);
        assert!(text.contains("be brief") && text.contains("hello") && !text.contains("image"));
    }

    #[test]
    fn media_parts_are_found_and_text_mentions_are_not() {
        let body =
            |v: serde_json::Value| JsonBody::parse(&serde_json::to_vec(&v).unwrap()).unwrap();
        let image = body(
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}),
        );
        assert!(has_media(&image));
        let audio = body(
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]}),
        );
        assert!(has_media(&audio));
        let text = body(serde_json::json!({"model": "m", "messages": [
            {"role": "user", "content": "tell me about image_url and audio"},
            {"role": "user", "content": [{"type": "text", "text": "an image, please"}]}]}));
        assert!(!has_media(&text));
        assert!(!has_media(&body(
            serde_json::json!({"model": "m", "input": "image"})
        )));
    }
}
