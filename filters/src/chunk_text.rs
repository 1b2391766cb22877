//! The texts of an OpenAI chunk stream, field by field, with text held back
//! between chunks. Data masking's restorer and content safety's guard both change
//! what a stream says while it passes; both need the same walk over a chunk's
//! choices, and the same way to keep an unfinished piece of text for the next
//! chunk and let it out when its choice finishes or the stream ends.

use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Which text of a choice: a chat delta's content or reasoning, a completion's
/// `text`, or one tool call's arguments.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Field {
    Content,
    Reasoning,
    Text,
    Arguments(u64),
}

/// A choice's index and one of its texts.
pub type Key = (u64, Field);

/// What a pass over one text gives: the text that goes out now, and the text
/// held for the next chunk.
pub type Split = (String, String);

/// Text held back per choice and field, and the last chunk's head (`id`,
/// `created`, `model`) for a chunk of what is still held at the end.
#[derive(Default)]
pub struct Held {
    texts: BTreeMap<Key, String>,
    last: Option<Value>,
}

impl Held {
    /// Runs `f(key, held + new, finished)` on every text of the chunk `v` and puts
    /// what it lets out in the chunk's place; `f` must let everything out when the
    /// choice is finished. A finishing choice also lets out what it holds for
    /// fields this chunk does not carry, through `f` as finished too (a check may
    /// still refuse it). True when the chunk changed.
    pub fn pass(&mut self, v: &mut Value, mut f: impl FnMut(Key, String, bool) -> Split) -> bool {
        let mut changed = false;
        for choice in v
            .get_mut("choices")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
            let finished = choice.get("finish_reason").is_some_and(|f| !f.is_null());
            for (field, text) in texts_of(choice) {
                let held = self.texts.remove(&(index, field)).unwrap_or_default();
                let (out, keep) = f((index, field), held + text.as_str(), finished);
                if !keep.is_empty() {
                    self.texts.insert((index, field), keep);
                }
                changed |= out != *text;
                *text = out;
            }
            if finished {
                changed |= self.release_choice(index, choice, &mut f);
            }
        }
        if v.get("choices").is_some() {
            self.last = Some(head_of(v));
        }
        changed
    }

    /// Whether anything is held.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    /// An SSE event with every held text, through `f` as finished, when some
    /// is held.
    pub fn flush(&mut self, mut f: impl FnMut(Key, String, bool) -> Split) -> Vec<u8> {
        if self.texts.is_empty() {
            return Vec::new();
        }
        let mut choices: BTreeMap<u64, Value> = BTreeMap::new();
        for (key, text) in std::mem::take(&mut self.texts) {
            let (text, _) = f(key, text, true);
            let choice = choices
                .entry(key.0)
                .or_insert_with(|| json!({"index": key.0, "finish_reason": null}));
            put(choice, key.1, text);
        }
        let mut out = Vec::new();
        emit(
            &mut out,
            None,
            &self.chunk(choices.into_values().collect()).to_string(),
        );
        out
    }

    /// A chunk with these choices, headed like the stream's last one.
    pub fn chunk(&self, choices: Vec<Value>) -> Value {
        let mut chunk = self
            .last
            .clone()
            .unwrap_or_else(|| json!({"object": "chat.completion.chunk"}));
        chunk["choices"] = Value::Array(choices);
        chunk
    }

    /// Puts what `index` still holds into its finishing `choice`.
    fn release_choice(
        &mut self,
        index: u64,
        choice: &mut Value,
        f: &mut impl FnMut(Key, String, bool) -> Split,
    ) -> bool {
        let keys: Vec<Key> = self
            .texts
            .range((index, Field::Content)..=(index, Field::Arguments(u64::MAX)))
            .map(|(k, _)| *k)
            .collect();
        let mut changed = false;
        for key in keys {
            let text = self.texts.remove(&key).unwrap_or_default();
            let (text, _) = f(key, text, true);
            if !text.is_empty() {
                put(choice, key.1, text);
                changed = true;
            }
        }
        changed
    }
}

/// The texts of a choice, mutable, by field.
fn texts_of(choice: &mut Value) -> Vec<(Field, &mut String)> {
    let mut out = Vec::new();
    let mut calls = None;
    for (name, value) in choice.as_object_mut().into_iter().flatten() {
        match (name.as_str(), value) {
            ("text", Value::String(s)) => out.push((Field::Text, s)),
            ("delta", Value::Object(delta)) => {
                for (name, value) in delta.iter_mut() {
                    match (name.as_str(), value) {
                        ("content", Value::String(s)) => out.push((Field::Content, s)),
                        ("reasoning_content", Value::String(s)) => out.push((Field::Reasoning, s)),
                        ("tool_calls", Value::Array(list)) => calls = Some(list),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    for call in calls.into_iter().flatten() {
        let at = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        if let Some(Value::String(s)) = call.pointer_mut("/function/arguments") {
            out.push((Field::Arguments(at), s));
        }
    }
    out
}

/// Adds `text` to `field` of a choice (after what it already says there). A
/// choice or delta that is not an object (an upstream's mistake) is left alone.
fn put(choice: &mut Value, field: Field, text: String) {
    let Some(choice) = choice.as_object_mut() else {
        return;
    };
    let slot = match field {
        Field::Text => choice.entry("text").or_insert(Value::Null),
        _ => {
            let delta = choice.entry("delta").or_insert_with(|| json!({}));
            let Some(delta) = delta.as_object_mut() else {
                return;
            };
            match field {
                Field::Content => delta.entry("content").or_insert(Value::Null),
                Field::Reasoning => delta.entry("reasoning_content").or_insert(Value::Null),
                _ => return put_arguments(delta, field, text),
            }
        }
    };
    append(slot, text);
}

fn append(slot: &mut Value, text: String) {
    match slot {
        Value::String(s) => s.push_str(&text),
        other => *other = Value::String(text),
    }
}

fn put_arguments(delta: &mut serde_json::Map<String, Value>, field: Field, text: String) {
    let Field::Arguments(at) = field else {
        return;
    };
    let calls = delta.entry("tool_calls").or_insert_with(|| json!([]));
    let Some(list) = calls.as_array_mut() else {
        return;
    };
    let call = list
        .iter_mut()
        .find(|c| c.get("index").and_then(Value::as_u64) == Some(at))
        .and_then(|c| c.as_object_mut());
    match call {
        Some(call) => {
            let function = call.entry("function").or_insert_with(|| json!({}));
            if let Some(function) = function.as_object_mut() {
                append(function.entry("arguments").or_insert(Value::Null), text);
            }
        }
        None => list.push(json!({"index": at, "function": {"arguments": text}})),
    }
}

/// A chunk's `id`, `object`, `created` and `model`, without its choices or usage.
fn head_of(v: &Value) -> Value {
    let mut head = serde_json::Map::new();
    for name in ["id", "object", "created", "model", "system_fingerprint"] {
        if let Some(x) = v.get(name) {
            head.insert(name.into(), x.clone());
        }
    }
    Value::Object(head)
}

/// Writes one SSE event.
pub fn emit(out: &mut Vec<u8>, name: Option<&str>, data: &str) {
    if let Some(name) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    for line in data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Holds the last two bytes of every text until its choice finishes.
    fn hold_two(_: Key, text: String, finished: bool) -> Split {
        if finished || text.len() <= 2 {
            return match finished {
                true => (text, String::new()),
                false => (String::new(), text),
            };
        }
        let cut = text.len() - 2;
        (text[..cut].to_string(), text[cut..].to_string())
    }

    #[test]
    fn held_text_goes_out_with_the_choice_s_finish() {
        let mut held = Held::default();
        let mut a = json!({"id": "c1", "choices": [{"index": 0, "delta": {"content": "hello"}}]});
        assert!(held.pass(&mut a, hold_two));
        assert_eq!(a["choices"][0]["delta"]["content"], "hel");
        let mut b = json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
        assert!(held.pass(&mut b, hold_two));
        assert_eq!(b["choices"][0]["delta"]["content"], "lo");
        assert!(held.is_empty());
    }

    #[test]
    fn completions_text_and_tool_arguments_are_walked() {
        let mut held = Held::default();
        let mut c = json!({"choices": [{"index": 1, "text": "abcd"}]});
        held.pass(&mut c, hold_two);
        assert_eq!(c["choices"][0]["text"], "ab");
        let mut t = json!({"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 2, "function": {"arguments": "{\"a\":1}"}}]}}]});
        held.pass(&mut t, hold_two);
        assert_eq!(
            t["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":"
        );
        let flushed = String::from_utf8(held.flush(hold_two)).unwrap();
        assert!(flushed.contains(r#""text":"cd""#), "{flushed}");
        assert!(flushed.contains(r#""arguments":"1}""#), "{flushed}");
        assert!(held.is_empty());
    }

    #[test]
    fn a_flush_is_headed_like_the_last_chunk_without_its_usage() {
        let mut held = Held::default();
        let mut a = json!({"id": "x", "model": "m", "usage": {"total_tokens": 3},
            "choices": [{"index": 0, "delta": {"content": "abc"}}]});
        held.pass(&mut a, hold_two);
        let flushed = String::from_utf8(held.flush(hold_two)).unwrap();
        let data = flushed.strip_prefix("data: ").unwrap().trim();
        let v: Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["id"], "x");
        assert_eq!(v["model"], "m");
        assert!(v.get("usage").is_none());
        assert_eq!(v["choices"][0]["delta"]["content"], "bc");
    }
}
