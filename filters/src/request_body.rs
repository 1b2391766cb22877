//! `request_body_filter` logic: the client's JSON body, parsed once into its top-level
//! fields kept as raw JSON, so routing reads `model` and a rewrite touches only the
//! fields it changes. A 1 MiB `messages` array is never re-parsed or re-formatted.

use crate::error::GatewayError;
use bytes::Bytes;
use indexmap::IndexMap;
use serde_json::value::RawValue;

#[derive(Debug, Clone)]
pub struct JsonBody {
    fields: IndexMap<String, Box<RawValue>>,
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
        let fields: IndexMap<String, Box<RawValue>> =
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
    fn prompt_text_covers_multimodal_parts() {
        let b = JsonBody::parse(
            br#"{"model":"a","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hello"},{"type":"image_url","image_url":{"url":"x"}}]}]}"#,
        )
        .unwrap();
        let (text, n) = prompt_text(&b);
        assert_eq!(n, 2);
        assert!(text.contains("be brief") && text.contains("hello") && !text.contains("image"));
    }
}
