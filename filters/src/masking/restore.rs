//! Putting the originals back in an answer as it passes. A placeholder is
//! `[` + capitals, digits and `_` + `]`; one cut by a chunk boundary is held back
//! until the rest arrives (at most `MAX_PLACEHOLDER` bytes).

use super::{Table, MAX_PLACEHOLDER};
use crate::adapters::sse::{Event, Splitter};
use crate::chunk_text::{emit, Held};
use serde_json::Value;
use std::sync::Arc;

fn placeholder_byte(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'
}

/// Where an unfinished placeholder starts at the end of `b` (`b.len()` when
/// there is none).
fn unfinished_tail(b: &[u8]) -> usize {
    let from = b.len().saturating_sub(MAX_PLACEHOLDER);
    match b[from..].iter().rposition(|&c| c == b'[') {
        Some(i) if b[from + i + 1..].iter().all(|&c| placeholder_byte(c)) => from + i,
        _ => b.len(),
    }
}

/// `b` with every known placeholder replaced by `with(original)`.
fn replace(b: &[u8], table: &Table, with: impl Fn(&str, &mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(open) = memchr::memchr(b'[', &b[i..]).map(|o| i + o) {
        out.extend_from_slice(&b[i..open]);
        let len = b[open + 1..]
            .iter()
            .take(MAX_PLACEHOLDER)
            .take_while(|&&c| placeholder_byte(c))
            .count();
        let close = open + 1 + len;
        let known = (len > 0 && b.get(close) == Some(&b']'))
            .then(|| std::str::from_utf8(&b[open..=close]).ok())
            .flatten()
            .and_then(|p| table.original(p));
        match known {
            Some(original) => {
                with(original, &mut out);
                i = close + 1;
            }
            None => {
                out.push(b'[');
                i = open + 1;
            }
        }
    }
    out.extend_from_slice(&b[i..]);
    out
}

/// Text with its placeholders restored, and the unfinished tail held back.
fn restore_text(text: &str, table: &Table) -> (String, String) {
    let cut = unfinished_tail(text.as_bytes());
    let done = replace(&text.as_bytes()[..cut], table, |o, out| {
        out.extend_from_slice(o.as_bytes())
    });
    // Only whole UTF-8 was cut off (`[` is ASCII) and whole originals put in.
    (
        String::from_utf8(done).unwrap_or_default(),
        text[cut..].to_string(),
    )
}

/// A JSON answer, restored as its bytes pass: a placeholder can only sit inside
/// a string there, whole, so the original goes in JSON-escaped.
pub struct JsonRestorer {
    table: Arc<Table>,
    held: Vec<u8>,
}

impl JsonRestorer {
    pub fn new(table: Arc<Table>) -> JsonRestorer {
        JsonRestorer {
            table,
            held: Vec::new(),
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.held);
        buf.extend_from_slice(chunk);
        let cut = unfinished_tail(&buf);
        self.held = buf.split_off(cut);
        replace(&buf, &self.table, json_escaped)
    }

    pub fn finish(&mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.held);
        replace(&rest, &self.table, json_escaped)
    }
}

fn json_escaped(original: &str, out: &mut Vec<u8>) {
    let quoted = serde_json::to_string(original).unwrap_or_default();
    // Exactly the enclosing quotes: an escaped `\"` at either end stays.
    let inner = quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or("");
    out.extend_from_slice(inner.as_bytes());
}

/// One text restored: what goes out, and (unless its choice finished) the
/// unfinished placeholder held for the next piece.
fn restore_piece(table: &Table, whole: String, finished: bool) -> (String, String) {
    let (mut done, rest) = restore_text(&whole, table);
    if !finished {
        return (done, rest);
    }
    done.push_str(&rest);
    (done, String::new())
}

/// An OpenAI chunk stream, restored event by event: the texts of each choice
/// are restored with what was held from the previous chunk, and a placeholder
/// split across chunks comes out whole in the later one.
pub struct SseRestorer {
    table: Arc<Table>,
    splitter: Splitter,
    held: Held,
}

impl SseRestorer {
    pub fn new(table: Arc<Table>) -> SseRestorer {
        SseRestorer {
            table,
            splitter: Splitter::default(),
            held: Held::default(),
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(chunk.len() + 64);
        for ev in self.splitter.push(chunk) {
            self.event(ev, &mut out);
        }
        out
    }

    /// The stream ended: anything held goes out, then an event cut short.
    pub fn finish(&mut self) -> Vec<u8> {
        let table = &self.table;
        let mut out = self
            .held
            .flush(|_, whole, _| restore_piece(table, whole, true));
        if let Some(ev) = self.splitter.rest() {
            self.event(ev, &mut out);
        }
        out
    }

    fn event(&mut self, ev: Event, out: &mut Vec<u8>) {
        if ev.data.trim() == "[DONE]" {
            let table = &self.table;
            let flushed = self
                .held
                .flush(|_, whole, _| restore_piece(table, whole, true));
            out.extend_from_slice(&flushed);
            emit(out, ev.name.as_deref(), &ev.data);
            return;
        }
        let Ok(mut v) = serde_json::from_str::<Value>(&ev.data) else {
            emit(out, ev.name.as_deref(), &ev.data);
            return;
        };
        let table = &self.table;
        let changed = self.held.pass(&mut v, |_, whole, finished| {
            restore_piece(table, whole, finished)
        });
        match changed {
            true => emit(out, ev.name.as_deref(), &v.to_string()),
            false => emit(out, ev.name.as_deref(), &ev.data),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Masker;
    use super::*;

    fn table() -> Arc<Table> {
        // A custom value with quotes, to see it JSON-escaped.
        let quoted = [("quoted".to_string(), r#""[a-z]+""#.to_string())];
        let m = Masker::new(&["email".into(), "phone".into()], &quoted, true).unwrap();
        let mut t = Table::default();
        m.mask("a.b@c.io 13812345678 \"q\"", &mut t).unwrap();
        Arc::new(t)
    }

    fn chunk(text: &str, finish: Option<&str>) -> String {
        format!(
            "data: {}\n\n",
            serde_json::json!({"id": "c", "object": "chat.completion.chunk", "model": "m",
                "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]})
        )
    }

    /// The content of every chunk in an SSE stream, joined.
    fn content(sse: &[u8]) -> String {
        let mut s = Splitter::default();
        s.push(sse)
            .into_iter()
            .filter_map(|e| serde_json::from_str::<Value>(&e.data).ok())
            .filter_map(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect()
    }

    const ANSWER: &str =
        "Mail [EMAIL_1] or call [PHONE_1]; [QUOTED_1] too. [NOT_A_PLACEHOLDER] [x] [";
    const RESTORED: &str =
        "Mail a.b@c.io or call 13812345678; \"q\" too. [NOT_A_PLACEHOLDER] [x] [";

    #[test]
    fn a_json_answer_gets_its_originals_json_escaped() {
        let body = serde_json::json!({"choices": [{"message": {"content": ANSWER}}]}).to_string();
        let mut r = JsonRestorer::new(table());
        let mut out = Vec::new();
        for piece in body.as_bytes().chunks(3) {
            out.extend(r.feed(piece));
        }
        out.extend(r.finish());
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], RESTORED);
    }

    /// However the stream is cut into chunks and the text into deltas (random
    /// cuts, seeded), the client reads the original text whole.
    #[test]
    fn restoring_a_stream_ignores_every_split() {
        use rand::{rngs::SmallRng, Rng, SeedableRng};
        let mut rng = SmallRng::seed_from_u64(0x3a5c);
        for _case in 0..2_000 {
            let mut cuts: Vec<usize> = (0..rng.gen_range(0..12))
                .map(|_| rng.gen_range(1..ANSWER.len()))
                .collect();
            cuts.sort_unstable();
            cuts.dedup();
            let mut sse = String::new();
            let mut at = 0;
            for c in cuts.into_iter().chain([ANSWER.len()]) {
                sse.push_str(&chunk(&ANSWER[at..c], None));
                at = c;
            }
            sse.push_str(&chunk("", Some("stop")));
            sse.push_str("data: [DONE]\n\n");
            let mut r = SseRestorer::new(table());
            let mut out = Vec::new();
            let mut rest = sse.as_bytes();
            while !rest.is_empty() {
                let (now, later) = rest.split_at(rng.gen_range(1..400).min(rest.len()));
                out.extend(r.feed(now));
                rest = later;
            }
            out.extend(r.finish());
            assert_eq!(content(&out), RESTORED, "{sse}");
            assert!(String::from_utf8_lossy(&out).ends_with("data: [DONE]\n\n"));
        }
    }

    #[test]
    fn held_text_goes_out_when_a_stream_ends_without_finish() {
        let mut r = SseRestorer::new(table());
        let mut out = r.feed(chunk("see [EMAIL", None).as_bytes());
        out.extend(r.feed(b"data: [DONE]\n\n"));
        assert_eq!(content(&out), "see [EMAIL");
        assert!(String::from_utf8_lossy(&out).ends_with("data: [DONE]\n\n"));
    }
}
