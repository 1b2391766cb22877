//! The built-in `mock` channel type: a local stand-in for an OpenAI-compatible server,
//! so the shipped configuration answers without any upstream. Its answers go through
//! the same response path (usage tap, stripping, metrics) as a real upstream's.

use crate::request_body::{prompt_text, JsonBody};
use crate::route::Endpoint;
use crate::usage::{count_tokens, estimate, Usage};
use bytes::Bytes;
use serde_json::json;

pub struct MockAnswer {
    pub status: u16,
    pub content_type: &'static str,
    pub chunks: Vec<Bytes>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn last_user_text(body: &JsonBody) -> String {
    let Some(raw) = body.get("messages").or_else(|| body.get("prompt")) else {
        return String::new();
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(raw.get()) else {
        return String::new();
    };
    let pick = match &v {
        serde_json::Value::Array(items) => items
            .iter()
            .rev()
            .find(|m| m.get("role").and_then(|r| r.as_str()) == Some("user"))
            .and_then(|m| m.get("content"))
            .or_else(|| items.first()),
        other => Some(other),
    };
    let mut text = String::new();
    if let Some(p) = pick {
        flatten(p, &mut text);
    }
    text
}

fn flatten(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::String(s) => out.push_str(s),
        serde_json::Value::Array(a) => a.iter().for_each(|i| flatten(i, out)),
        serde_json::Value::Object(o) => {
            if let Some(t) = o.get("text") {
                flatten(t, out)
            }
        }
        _ => {}
    }
}

fn reply_text(body: &JsonBody) -> String {
    let asked: String = last_user_text(body).chars().take(120).collect();
    if asked.trim().is_empty() {
        "Hello from weir's built-in mock channel.".to_string()
    } else {
        format!(
            "Hello from weir's built-in mock channel. You said: {}",
            asked.trim()
        )
    }
}

fn usage_for(body: &JsonBody, completion: &str) -> Usage {
    let (prompt, messages) = prompt_text(body);
    Usage {
        estimated: false,
        ..estimate(&prompt, messages, completion)
    }
}

/// Answers a request the way an OpenAI-compatible server would. `include_usage`
/// follows the (possibly rewritten) request's `stream_options.include_usage`.
pub fn answer(
    endpoint: Endpoint,
    body: &JsonBody,
    model: &str,
    stream: bool,
    include_usage: bool,
) -> MockAnswer {
    match endpoint {
        Endpoint::ChatCompletions | Endpoint::Completions => {
            let text = reply_text(body);
            let c = Completion {
                id: format!("chatcmpl-mock{:x}", rand::random::<u64>()),
                created: unix_now(),
                model,
                chat: endpoint == Endpoint::ChatCompletions,
                usage: usage_for(body, &text),
                text,
            };
            if stream {
                c.stream(include_usage)
            } else {
                c.whole()
            }
        }
        Endpoint::Embeddings => embeddings(body, model),
        _ => json_answer(
            404,
            &json!({"error": {"message": "the mock channel does not implement this endpoint", "type": "invalid_request_error", "param": null, "code": "unsupported_endpoint"}}),
        ),
    }
}

fn json_answer(status: u16, v: &serde_json::Value) -> MockAnswer {
    MockAnswer {
        status,
        content_type: "application/json",
        chunks: vec![Bytes::from(v.to_string())],
    }
}

/// A chat or text completion the mock makes up.
struct Completion<'a> {
    id: String,
    created: u64,
    model: &'a str,
    chat: bool,
    text: String,
    usage: Usage,
}

impl Completion<'_> {
    fn whole(&self) -> MockAnswer {
        let (text, chat) = (&self.text, self.chat);
        let choice = if chat {
            json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"})
        } else {
            json!({"index": 0, "text": text, "finish_reason": "stop"})
        };
        json_answer(
            200,
            &json!({
                "id": self.id,
                "object": if chat { "chat.completion" } else { "text_completion" },
                "created": self.created,
                "model": self.model,
                "choices": [choice],
                "usage": self.usage,
            }),
        )
    }

    /// One SSE event per word, the finish, the usage chunk when asked, `[DONE]`.
    fn stream(&self, include_usage: bool) -> MockAnswer {
        let object = if self.chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        };
        let event = |choices: serde_json::Value, usage: Option<&Usage>| {
            let mut v = json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": choices});
            if let Some(u) = usage {
                v["usage"] = json!(u);
            }
            Bytes::from(format!("data: {v}\n\n"))
        };
        let mut chunks = Vec::new();
        for (i, w) in self.text.split_inclusive(' ').enumerate() {
            let choice = match (self.chat, i) {
                (true, 0) => {
                    json!({"index": 0, "delta": {"role": "assistant", "content": w}, "finish_reason": null})
                }
                (true, _) => json!({"index": 0, "delta": {"content": w}, "finish_reason": null}),
                (false, _) => json!({"index": 0, "text": w, "finish_reason": null}),
            };
            chunks.push(event(json!([choice]), None));
        }
        let last = if self.chat {
            json!({"index": 0, "delta": {}, "finish_reason": "stop"})
        } else {
            json!({"index": 0, "text": "", "finish_reason": "stop"})
        };
        chunks.push(event(json!([last]), None));
        if include_usage {
            chunks.push(event(json!([]), Some(&self.usage)));
        }
        chunks.push(Bytes::from_static(b"data: [DONE]\n\n"));
        MockAnswer {
            status: 200,
            content_type: "text/event-stream",
            chunks,
        }
    }
}

/// One pseudo-embedding per input, with its token count as usage.
fn embeddings(body: &JsonBody, model: &str) -> MockAnswer {
    let inputs: Vec<String> = match body
        .get("input")
        .and_then(|raw| serde_json::from_str::<serde_json::Value>(raw.get()).ok())
    {
        Some(serde_json::Value::Array(items)) => items.iter().map(|i| i.to_string()).collect(),
        Some(other) => vec![other.to_string()],
        None => Vec::new(),
    };
    let prompt_tokens: u64 = inputs.iter().map(|s| count_tokens(s)).sum();
    let data: Vec<serde_json::Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"object": "embedding", "index": i, "embedding": pseudo_embedding(s)}))
        .collect();
    json_answer(
        200,
        &json!({
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }),
    )
}

/// A deterministic unit-length 16-dimensional vector derived from the text.
fn pseudo_embedding(text: &str) -> Vec<f32> {
    let mut h: u64 = 0xcbf29ce484222325;
    let mut v = Vec::with_capacity(16);
    for i in 0..16u64 {
        for b in text.bytes().chain(i.to_le_bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100000001b3);
        }
        v.push(((h >> 40) as f32 / (1u64 << 24) as f32) - 0.5);
    }
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    v.iter().map(|x| x / norm).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::response_body::{json_usage, SseTap};

    fn body(s: &str) -> JsonBody {
        JsonBody::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn answers_chat_json_with_usage() {
        let b = body(r#"{"model":"m","messages":[{"role":"user","content":"ping"}]}"#);
        let a = answer(Endpoint::ChatCompletions, &b, "m", false, false);
        assert_eq!(a.status, 200);
        let v: serde_json::Value = serde_json::from_slice(&a.chunks[0]).unwrap();
        assert!(v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("ping"));
        let (u, _) = json_usage(&a.chunks[0]);
        assert!(u.unwrap().prompt_tokens > 0);
    }

    #[test]
    fn streams_chunks_usage_and_done() {
        let b =
            body(r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"ping"}]}"#);
        let a = answer(Endpoint::ChatCompletions, &b, "m", true, true);
        assert_eq!(a.content_type, "text/event-stream");
        let mut tap = SseTap::new(false);
        for c in a.chunks {
            tap.feed(c);
        }
        assert!(tap.saw_done && tap.usage.is_some());
        assert!(tap.completion_text().0.contains("ping"));
    }

    #[test]
    fn embeds_each_input() {
        let b = body(r#"{"model":"e","input":["a","b"]}"#);
        let a = answer(Endpoint::Embeddings, &b, "e", false, false);
        let v: serde_json::Value = serde_json::from_slice(&a.chunks[0]).unwrap();
        assert_eq!(v["data"].as_array().unwrap().len(), 2);
        assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 16);
    }
}
