//! OpenAI's answer and error shapes, written from what a provider answered.

use super::{error_type_for, openai_error, unix_now};
use serde_json::{json, Value};

/// A complete answer, read out of a provider's.
pub(crate) struct Completion<'a> {
    /// The provider's answer id, or a stand-in.
    pub id: Value,
    /// The model the client asked for.
    pub model: &'a str,
    pub text: String,
    /// OpenAI `tool_calls` entries.
    pub calls: Vec<Value>,
    pub finish: &'a str,
    /// Prompt and completion tokens.
    pub usage: (u64, u64),
    /// What the model thought, as `reasoning_content`.
    pub reasoning: String,
    /// Search sources, as `url_citation` annotations.
    pub annotations: Vec<Value>,
    /// Of the completion tokens, those spent thinking (when the provider says).
    pub reasoning_tokens: u64,
}

impl Completion<'_> {
    /// The `chat.completion` object.
    pub fn into_json(self) -> Vec<u8> {
        // OpenAI's content is null for an answer that only calls tools.
        let content = if self.text.is_empty() && !self.calls.is_empty() {
            Value::Null
        } else {
            json!(self.text)
        };
        let mut message = json!({"role": "assistant", "content": content});
        if !self.calls.is_empty() {
            message["tool_calls"] = Value::Array(self.calls);
        }
        if !self.reasoning.is_empty() {
            message["reasoning_content"] = json!(self.reasoning);
        }
        if !self.annotations.is_empty() {
            message["annotations"] = Value::Array(self.annotations);
        }
        let mut usage = usage_json(self.usage.0, self.usage.1);
        if self.reasoning_tokens > 0 {
            usage["completion_tokens_details"] = json!({"reasoning_tokens": self.reasoning_tokens});
        }
        let out = json!({
            "id": self.id,
            "object": "chat.completion",
            "created": unix_now(),
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": self.finish}],
            "usage": usage,
        });
        serde_json::to_vec(&out).unwrap_or_default()
    }
}

/// OpenAI's `usage` object.
pub(crate) fn usage_json(prompt: u64, completion: u64) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt.saturating_add(completion)})
}

/// The error for a 2xx answer that could not be read.
pub(crate) fn not_json() -> Vec<u8> {
    openai_error(
        "the upstream answered with something that is not JSON",
        "server_error",
        "bad_upstream_answer",
    )
}

/// The `(code, message)` of a provider's `{"error": {code_key: …, "message": …}}`,
/// with stand-ins for what is missing.
pub(crate) fn error_fields<'a>(
    v: &'a Value,
    code_key: &str,
    default_code: &'a str,
    default_message: &'a str,
) -> (&'a str, &'a str) {
    let error = v.get("error");
    let field = |k: &str| error.and_then(|e| e.get(k)).and_then(|s| s.as_str());
    (
        field(code_key).unwrap_or(default_code),
        field("message").unwrap_or(default_message),
    )
}

/// A provider's error in OpenAI's shape: its code kept, its type the one the
/// provider's code names (`kind`), else the one for the status.
pub(crate) fn error_json(status: u16, code: &str, message: &str, kind: Option<&str>) -> Vec<u8> {
    openai_error(
        message,
        kind.unwrap_or_else(|| error_type_for(status)),
        code,
    )
}

/// A translated answer read back: its first choice, and its usage as the proxy's
/// usage reader takes it.
#[cfg(test)]
pub(crate) fn read_back(out: &[u8]) -> (Value, crate::usage::Usage) {
    let v: Value = serde_json::from_slice(out).unwrap();
    let usage = crate::response_body::json_usage(out).0.unwrap();
    (v["choices"][0].clone(), usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_only_answer_has_null_content() {
        let answer = |text: &str, calls: Vec<Value>| {
            let out = Completion {
                id: json!("x"),
                model: "m",
                text: text.into(),
                calls,
                finish: "stop",
                usage: (2, 3),
                reasoning: String::new(),
                annotations: Vec::new(),
                reasoning_tokens: 0,
            };
            serde_json::from_slice::<Value>(&out.into_json()).unwrap()
        };
        let v = answer("", vec![json!({"id": "c"})]);
        assert_eq!(v["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(v["usage"]["total_tokens"], 5);
        let v = answer("", vec![]);
        assert_eq!(
            v["choices"][0]["message"],
            json!({"role": "assistant", "content": ""})
        );
    }

    #[test]
    fn errors_keep_their_code_and_fall_back_to_the_status() {
        let v = json!({"error": {"kind": "busy"}});
        assert_eq!(error_fields(&v, "kind", "c", "m"), ("busy", "m"));
        assert_eq!(error_fields(&Value::Null, "kind", "c", "m"), ("c", "m"));
        let e: Value = serde_json::from_slice(&error_json(404, "busy", "m", None)).unwrap();
        assert_eq!(
            (e["error"]["type"].as_str(), e["error"]["code"].as_str()),
            (Some("invalid_request_error"), Some("busy"))
        );
    }
}
