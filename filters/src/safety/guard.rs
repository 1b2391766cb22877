//! Checking an answer as it passes. A JSON answer is held whole and checked
//! once; a stream is checked text by text, each new piece together with the last
//! `window` bytes of its text already passed (the bounded look-behind), so a
//! keyword split over chunks is still found. Nothing of a keyword reaches the
//! client: the end of a text that could begin one is held back until the next
//! piece says whether it does. At the first rule broken the stream ends there,
//! with `finish_reason: "content_filter"` for every open choice and `[DONE]`.

use super::{Finding, Hit, Safety};
use crate::adapters::sse::{Event, Splitter};
use crate::chunk_text::{emit, Held, Key, Split};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// A JSON answer larger than this passes unchecked (no chat answer is near it).
const MAX_HELD: usize = 16 * 1024 * 1024;

/// The last `n` bytes of `s`, cut at a character boundary.
fn tail(mut s: String, n: usize) -> String {
    if s.len() <= n {
        return s;
    }
    let mut from = s.len() - n;
    while !s.is_char_boundary(from) {
        from += 1;
    }
    s.split_off(from)
}

/// An OpenAI chunk stream, checked as it passes.
pub struct SseGuard {
    safety: Arc<Safety>,
    splitter: Splitter,
    held: Held,
    watch: Watch,
    /// Choices seen and not finished: each gets the `content_filter` finish.
    open: BTreeSet<u64>,
    /// A completions stream (`text`, no `delta`).
    completions: bool,
}

impl SseGuard {
    pub fn new(safety: Arc<Safety>) -> SseGuard {
        SseGuard {
            safety,
            splitter: Splitter::default(),
            held: Held::default(),
            watch: Watch::default(),
            open: BTreeSet::new(),
            completions: false,
        }
    }

    /// The rule the answer broke, once it broke one: nothing more goes out.
    pub fn stopped(&self) -> Option<&Finding> {
        self.watch.stopped.as_ref()
    }

    /// The text the upstream sent that the client never got, once stopped.
    pub fn withheld(&self) -> &str {
        &self.watch.withheld
    }

    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(chunk.len() + 64);
        for ev in self.splitter.push(chunk) {
            if self.watch.stopped.is_some() {
                break;
            }
            self.event(ev, &mut out);
        }
        out
    }

    /// The stream ended: what is held goes out once checked as final, then an
    /// event cut short.
    pub fn finish(&mut self) -> Vec<u8> {
        if self.watch.stopped.is_some() {
            return Vec::new();
        }
        let mut out = self.flush();
        if let Some(ev) = self.splitter.rest() {
            self.event(ev, &mut out);
        }
        out
    }

    /// What is held, checked as final: a pending match there is one now.
    fn flush(&mut self) -> Vec<u8> {
        let (safety, watch) = (&self.safety, &mut self.watch);
        let out = self
            .held
            .flush(|key, whole, _| watch.checked(safety, key, whole, true));
        match self.watch.stopped.is_some() {
            true => {
                let mut out = Vec::new();
                self.stop(&[], &mut out);
                out
            }
            false => out,
        }
    }

    fn event(&mut self, ev: Event, out: &mut Vec<u8>) {
        if ev.data.trim() == "[DONE]" {
            let flushed = self.flush();
            out.extend_from_slice(&flushed);
            if self.watch.stopped.is_none() {
                emit(out, ev.name.as_deref(), &ev.data);
            }
            return;
        }
        let Ok(mut v) = serde_json::from_str::<Value>(&ev.data) else {
            emit(out, ev.name.as_deref(), &ev.data);
            return;
        };
        let (safety, watch) = (&self.safety, &mut self.watch);
        let changed = self.held.pass(&mut v, |key, whole, finished| {
            watch.checked(safety, key, whole, finished)
        });
        if self.watch.stopped.is_some() {
            // The chunk that broke the rule never goes out; its choices end too.
            let here: Vec<u64> = indexes(&v).collect();
            self.completions |= is_completions(&v);
            self.stop(&here, out);
            return;
        }
        self.note_choices(&v);
        match changed {
            true => emit(out, ev.name.as_deref(), &v.to_string()),
            false => emit(out, ev.name.as_deref(), &ev.data),
        }
    }

    fn note_choices(&mut self, v: &Value) {
        self.completions |= is_completions(v);
        for choice in v
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
            match choice.get("finish_reason").is_some_and(|f| !f.is_null()) {
                true => self.open.remove(&index),
                false => self.open.insert(index),
            };
        }
    }

    /// Ends the stream here: every open choice (and those of the chunk that
    /// broke the rule) finishes with `content_filter`, then `[DONE]`.
    fn stop(&mut self, here: &[u64], out: &mut Vec<u8>) {
        let (safety, watch) = (&self.safety, &mut self.watch);
        // What is still held never goes out: counted as withheld.
        let _ = self
            .held
            .flush(|key, whole, f| watch.checked(safety, key, whole, f));
        let mut ended = std::mem::take(&mut self.open);
        ended.extend(here);
        if ended.is_empty() {
            ended.insert(0);
        }
        let choices = ended
            .iter()
            .map(|&index| match self.completions {
                true => json!({"index": index, "text": "", "finish_reason": "content_filter"}),
                false => json!({"index": index, "delta": {}, "finish_reason": "content_filter"}),
            })
            .collect();
        emit(out, None, &self.held.chunk(choices).to_string());
        emit(out, None, "[DONE]");
    }
}

fn indexes(v: &Value) -> impl Iterator<Item = u64> + '_ {
    v.get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0))
}

fn is_completions(v: &Value) -> bool {
    v.get("choices")
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|c| c.get("text").is_some()))
}

/// What a stream check keeps between pieces.
#[derive(Default)]
struct Watch {
    /// Per text, what already went out of it, up to `window` bytes.
    seen: BTreeMap<Key, String>,
    stopped: Option<Finding>,
    /// What the upstream sent that never went out (held or refused), for the
    /// estimate of a stopped stream's usage.
    withheld: String,
}

impl Watch {
    /// One text checked after what already went out of it; the rule broken is
    /// kept (and nothing goes out).
    fn checked(&mut self, safety: &Safety, key: Key, whole: String, finished: bool) -> Split {
        if self.stopped.is_some() {
            self.withheld.push_str(&whole);
            return (String::new(), String::new());
        }
        let before = self.seen.remove(&key).unwrap_or_default();
        match check(safety, &before, &whole, finished) {
            Ok((out, keep)) => {
                self.seen
                    .insert(key, tail(before + out.as_str(), safety.window));
                (out, keep)
            }
            Err(finding) => {
                self.stopped = Some(finding);
                self.withheld.push_str(&whole);
                (String::new(), String::new())
            }
        }
    }
}

/// One streamed text: the held text and the new piece (`whole`) checked after
/// what already went out (`before`). What goes out now and what is held, or the
/// rule broken.
fn check(
    safety: &Safety,
    before: &str,
    whole: &str,
    finished: bool,
) -> Result<(String, String), Finding> {
    let scan = format!("{before}{whole}");
    let cut = match safety.scan(&scan, finished) {
        Some(Hit::Found(f)) => return Err(f),
        // A pending match that outgrew the look-behind is taken as it stands.
        Some(Hit::Pending { from }) if scan.len() - from > safety.window => {
            return match safety.scan(&scan, true) {
                Some(Hit::Found(f)) => Err(f),
                _ => Ok((whole.to_string(), String::new())),
            }
        }
        Some(Hit::Pending { from }) => from
            .saturating_sub(before.len())
            .min(whole.len() - safety.keyword_start(&scan).min(whole.len())),
        None if finished => whole.len(),
        None => whole.len() - safety.keyword_start(&scan).min(whole.len()),
    };
    Ok((whole[..cut].to_string(), whole[cut..].to_string()))
}

/// A JSON answer, held whole and checked when it ends. A choice that breaks a
/// rule loses its text and finishes with `content_filter`; usage stays.
pub struct JsonGuard {
    safety: Arc<Safety>,
    body: Vec<u8>,
    /// Too large to hold: passed unchecked.
    passing: bool,
    stopped: Option<Finding>,
    /// Refused whole (the moderation endpoint flagged it), by this rule.
    refused: Option<Finding>,
}

impl JsonGuard {
    pub fn new(safety: Arc<Safety>) -> JsonGuard {
        JsonGuard {
            safety,
            body: Vec::new(),
            passing: false,
            stopped: None,
            refused: None,
        }
    }

    /// The answer's text, once it is held whole (for a moderation endpoint).
    pub fn text(&self) -> Option<String> {
        if self.passing {
            return None;
        }
        let v: Value = serde_json::from_slice(&self.body).ok()?;
        let choices = v.get("choices")?.as_array()?;
        Some(choices.iter().map(choice_text).collect())
    }

    /// Every choice ends with `content_filter` when the answer ends, for `rule`.
    pub fn refuse(&mut self, rule: &str) {
        self.refused = Some(Finding {
            rule: rule.to_string(),
        });
    }

    pub fn stopped(&self) -> Option<&Finding> {
        self.stopped.as_ref()
    }

    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.passing {
            return chunk.to_vec();
        }
        self.body.extend_from_slice(chunk);
        if self.body.len() > MAX_HELD {
            self.passing = true;
            return std::mem::take(&mut self.body);
        }
        Vec::new()
    }

    pub fn finish(&mut self) -> Vec<u8> {
        let body = std::mem::take(&mut self.body);
        let Ok(mut v) = serde_json::from_slice::<Value>(&body) else {
            return body;
        };
        let mut stopped = None;
        for choice in v
            .get_mut("choices")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let broke = match &self.refused {
                Some(f) => Some(f.clone()),
                None => self.safety.check(&choice_text(choice)),
            };
            if let Some(f) = broke {
                filtered(choice);
                stopped.get_or_insert(f);
            }
        }
        match stopped {
            Some(f) => {
                self.stopped = Some(f);
                serde_json::to_vec(&v).unwrap_or(body)
            }
            None => body,
        }
    }
}

/// Every text of a complete answer's choice, one per line.
fn choice_text(choice: &Value) -> String {
    let mut text = String::new();
    let mut add = |v: Option<&Value>| {
        if let Some(s) = v.and_then(Value::as_str) {
            text.push_str(s);
            text.push('\n');
        }
    };
    add(choice.get("text"));
    let message = choice.get("message");
    add(message.and_then(|m| m.get("reasoning_content")));
    match message.and_then(|m| m.get("content")) {
        Some(Value::Array(parts)) => parts.iter().for_each(|p| add(p.get("text"))),
        other => add(other),
    }
    for call in message
        .and_then(|m| m.get("tool_calls"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        add(call.pointer("/function/arguments"));
    }
    text
}

/// A choice with its text taken out, finished by the filter.
fn filtered(choice: &mut Value) {
    if !choice.is_object() {
        return;
    }
    if choice.get("text").is_some() {
        choice["text"] = json!("");
    }
    if let Some(m) = choice.get_mut("message").and_then(Value::as_object_mut) {
        m.insert("content".into(), Value::Null);
        m.remove("reasoning_content");
        m.remove("tool_calls");
    }
    choice["finish_reason"] = json!("content_filter");
}

#[cfg(test)]
mod tests {
    use super::super::tests::safety;
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    fn chunk(index: u64, text: &str) -> String {
        let c = json!({"id": "c", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": index, "delta": {"content": text}, "finish_reason": null}]});
        format!("data: {c}\n\n")
    }

    fn finish_chunk() -> String {
        let c = json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
        format!("data: {c}\n\n")
    }

    /// The content a client reads, and the finish reasons it sees.
    fn read(sse: &[u8]) -> (String, Vec<String>) {
        let (mut text, mut reasons) = (String::new(), Vec::new());
        for line in String::from_utf8_lossy(sse).lines() {
            let Some(data) = line.strip_prefix("data: ") else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            for c in v["choices"].as_array().into_iter().flatten() {
                text.push_str(c["delta"]["content"].as_str().unwrap_or(""));
                if let Some(r) = c["finish_reason"].as_str() {
                    reasons.push(r.to_string());
                }
            }
        }
        (text, reasons)
    }

    /// Feeds `pieces` (each one content delta) in random byte splits.
    fn run(s: &Arc<Safety>, pieces: &[&str], rng: &mut SmallRng) -> (Vec<u8>, Option<Finding>) {
        let mut sse: String = pieces.iter().map(|p| chunk(0, p)).collect();
        sse.push_str(&finish_chunk());
        sse.push_str("data: [DONE]\n\n");
        let bytes = sse.as_bytes();
        let mut g = SseGuard::new(s.clone());
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let n = rng.gen_range(1..=40).min(bytes.len() - at);
            out.extend(g.feed(&bytes[at..at + n]));
            at += n;
        }
        out.extend(g.finish());
        (out, g.stopped().cloned())
    }

    /// Splits `text` into 1–6 character pieces at random.
    fn pieces(text: &str, rng: &mut SmallRng) -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        let mut out = Vec::new();
        let mut at = 0;
        while at < chars.len() {
            let n = rng.gen_range(1..=6).min(chars.len() - at);
            out.push(chars[at..at + n].iter().collect());
            at += n;
        }
        out
    }

    #[test]
    fn a_keyword_is_stopped_in_every_split_and_none_of_it_gets_out() {
        let s = Arc::new(safety(&["forbidden", "禁止词"], &[]));
        let mut rng = SmallRng::seed_from_u64(7);
        for case in 0..1000 {
            let text = match case % 2 {
                0 => "an answer that says ForBidden things later",
                _ => "这个回答里有禁止词出现",
            };
            let parts = pieces(text, &mut rng);
            let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
            let (out, stopped) = run(&s, &refs, &mut rng);
            let (read, reasons) = read(&out);
            assert!(stopped.is_some(), "case {case}: {parts:?}");
            assert_eq!(reasons, ["content_filter"], "case {case}");
            let lower = read.to_lowercase();
            assert!(
                !lower.contains("forb") && !read.contains("禁止"),
                "case {case}: {read:?}"
            );
            assert!(String::from_utf8_lossy(&out).ends_with("data: [DONE]\n\n"));
        }
    }

    #[test]
    fn a_clean_answer_passes_whole_in_every_split() {
        let s = Arc::new(safety(&["forbidden"], &[r"\bbomb\b"]));
        let mut rng = SmallRng::seed_from_u64(11);
        let text = "for the forbearing, a bombastic forecast: fine";
        for case in 0..1000 {
            let parts = pieces(text, &mut rng);
            let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
            let (out, stopped) = run(&s, &refs, &mut rng);
            assert_eq!(stopped, None, "case {case}");
            assert_eq!(read(&out), (text.to_string(), vec!["stop".to_string()]));
        }
    }

    #[test]
    fn a_pattern_is_found_across_chunks_within_the_window() {
        let s = Arc::new(safety(&[], &[r"(?i)\bbomb\b"]));
        let mut rng = SmallRng::seed_from_u64(3);
        for case in 0..500 {
            let parts = pieces("how to build a bomb at home", &mut rng);
            let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
            let (out, stopped) = run(&s, &refs, &mut rng);
            assert_eq!(
                stopped.map(|f| f.rule),
                Some("patterns[0]".into()),
                "case {case}"
            );
            let (read, _) = read(&out);
            assert!(!read.contains("bomb"), "case {case}: {read:?}");
        }
    }

    #[test]
    fn a_pattern_pending_at_the_very_end_is_settled_by_the_finish() {
        let s = Arc::new(safety(&[], &[r"(?i)\bbomb\b"]));
        let mut rng = SmallRng::seed_from_u64(5);
        for case in 0..300 {
            let parts = pieces("how to build a bomb", &mut rng);
            let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
            let (out, stopped) = run(&s, &refs, &mut rng);
            assert!(stopped.is_some(), "case {case}: {parts:?}");
            let (text, reasons) = read(&out);
            assert!(!text.contains("bomb"), "case {case}: {text:?}");
            assert_eq!(reasons, ["content_filter"], "case {case}");
        }
    }

    #[test]
    fn a_finishing_chunk_that_breaks_a_rule_still_ends_with_the_filter() {
        let s = Arc::new(safety(&["forbidden"], &[]));
        let mut g = SseGuard::new(s);
        let last = json!({"choices": [{"index": 0, "delta": {"content": "so forbidden"}, "finish_reason": "stop"}]});
        let mut out = g.feed(chunk(0, "fine ").as_bytes());
        out.extend(g.feed(format!("data: {last}\n\n").as_bytes()));
        out.extend(g.finish());
        let (text, reasons) = read(&out);
        assert_eq!(text, "fine ");
        assert_eq!(reasons, ["content_filter"]);
    }

    #[test]
    fn a_pending_pattern_does_not_let_out_a_keyword_s_start() {
        let s = Arc::new(safety(&["my secret plan"], &[r"\bsecret\b"]));
        let mut g = SseGuard::new(s);
        let mut out = g.feed(chunk(0, "so my secret").as_bytes());
        out.extend(g.feed(chunk(0, " plan").as_bytes()));
        let (text, reasons) = read(&out);
        assert_eq!(text, "so ");
        assert_eq!(reasons, ["content_filter"]);
    }

    #[test]
    fn every_open_choice_gets_the_filter_finish() {
        let s = Arc::new(safety(&["bad"], &[]));
        let mut g = SseGuard::new(s);
        let mut out = g.feed(format!("{}{}", chunk(0, "fine "), chunk(1, "ok ")).as_bytes());
        out.extend(g.feed(chunk(1, "so bad").as_bytes()));
        out.extend(g.feed(chunk(0, "more").as_bytes()));
        let (text, reasons) = read(&out);
        assert_eq!(text, "fine ok ");
        assert_eq!(reasons, ["content_filter", "content_filter"]);
        assert_eq!(g.stopped().unwrap().rule, "deny[0]");
        // What the upstream sent and the client never got counts for the usage.
        assert!(g.withheld().contains("so bad"), "{:?}", g.withheld());
    }

    #[test]
    fn a_json_answer_loses_only_the_choice_that_broke_a_rule() {
        let s = Arc::new(safety(&["secret plan"], &[]));
        let body = json!({"id": "x", "usage": {"total_tokens": 9}, "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "the Secret Plan is"}, "finish_reason": "stop"},
            {"index": 1, "message": {"role": "assistant", "content": "nothing to see"}, "finish_reason": "stop"}]})
        .to_string();
        let mut g = JsonGuard::new(s);
        let mut out = Vec::new();
        for piece in body.as_bytes().chunks(7) {
            out.extend(g.feed(piece));
        }
        out.extend(g.finish());
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(v["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(v["choices"][1]["message"]["content"], "nothing to see");
        assert_eq!(v["usage"]["total_tokens"], 9);
        assert_eq!(g.stopped().unwrap().rule, "deny[0]");
    }

    #[test]
    fn a_clean_json_answer_passes_byte_for_byte() {
        let s = Arc::new(safety(&["bad"], &[]));
        let body = br#"{"choices":[{"index":0,"message":{"content":"good"}}],  "x":1}"#;
        let mut g = JsonGuard::new(s);
        let mut out = g.feed(body);
        out.extend(g.finish());
        assert_eq!(out, body);
        assert!(g.stopped().is_none());
    }
}
