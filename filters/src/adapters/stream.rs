//! The skeleton of every translated stream. [`ChunkStream`] splits the upstream's
//! SSE into events, keeps the id, creation time, model and token counts, says the
//! role on the first delta, and owes the usage chunk and `[DONE]` at the end; a
//! provider's [`EventMapper`] says only what each of its events means.

use super::answer::usage_json;
use super::sse::{Event, Splitter};
use super::{error_type_for, openai_error, unix_now, StreamTranslator};
use serde_json::{json, Map, Value};

/// How one provider's stream events become OpenAI chunks.
pub trait EventMapper: Default + Send {
    /// The chunk id until the upstream names its own.
    const DEFAULT_ID: &'static str;
    /// Whether the upstream ending its response completes a stream that has sent
    /// a finish reason (Gemini has no stop event). Otherwise only
    /// [`Chunks::close`] on the provider's stop event completes it (Anthropic): a
    /// stream cut short gets no `[DONE]`, so the relay reports it broken.
    const ENDS_WITH_RESPONSE: bool;
    /// One event, its `data` parsed as JSON: write what it means to `out`.
    fn event(&mut self, v: &Value, out: &mut Chunks);
}

/// The OpenAI side of a stream: what was said so far and the bytes to pass on.
pub struct Chunks {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    /// Prompt tokens, as the upstream last counted them.
    pub prompt: u64,
    /// Completion tokens, likewise.
    pub completion: u64,
    role_sent: bool,
    finish_sent: bool,
    closed: bool,
    out: Vec<u8>,
}

impl Chunks {
    fn new(id: &str, model: &str, include_usage: bool) -> Self {
        Chunks {
            id: id.to_string(),
            model: model.to_string(),
            created: unix_now(),
            include_usage,
            prompt: 0,
            completion: 0,
            role_sent: false,
            finish_sent: false,
            closed: false,
            out: Vec::new(),
        }
    }

    /// The upstream's id for the answer, for this chunk and those after it.
    pub fn set_id(&mut self, id: Option<&str>) {
        if let Some(id) = id {
            self.id = id.to_string();
        }
    }

    /// A chunk with this delta (a JSON object). The first delta also says the role,
    /// as OpenAI's first chunk does; after it an empty delta sends nothing.
    pub fn delta(&mut self, delta: Value) {
        let mut d = Map::new();
        if !self.role_sent {
            d.insert("role".into(), json!("assistant"));
            self.role_sent = true;
        }
        if let Value::Object(fields) = delta {
            d.extend(fields);
        }
        if !d.is_empty() {
            self.chunk(Value::Object(d), None);
        }
    }

    /// The chunk with the finish reason.
    pub fn finish(&mut self, reason: &str) {
        self.finish_sent = true;
        self.chunk(json!({}), Some(reason));
    }

    /// An error event in OpenAI's shape; the stream is over, no `[DONE]` follows.
    pub fn error(&mut self, message: &str, code: &str) {
        self.out.extend(b"data: ");
        self.out
            .extend(openai_error(message, error_type_for(500), code));
        self.out.extend(b"\n\n");
        self.closed = true;
    }

    /// The stream is complete: the usage chunk (if asked for) and `[DONE]`, once.
    pub fn close(&mut self) {
        if std::mem::replace(&mut self.closed, true) {
            return;
        }
        if self.include_usage {
            let v = json!({
                "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": [],
                "usage": usage_json(self.prompt, self.completion),
            });
            self.event(&v);
        }
        self.out.extend(DONE);
    }

    fn chunk(&mut self, delta: Value, finish: Option<&str>) {
        let v = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        self.event(&v);
    }

    fn event(&mut self, v: &Value) {
        self.out.extend(format!("data: {v}\n\n").into_bytes());
    }
}

const DONE: &[u8] = b"data: [DONE]\n\n";

/// A provider's SSE stream as OpenAI chunks, through its [`EventMapper`].
pub struct ChunkStream<E> {
    split: Splitter,
    chunks: Chunks,
    events: E,
}

impl<E: EventMapper> ChunkStream<E> {
    /// `model` is the name the client asked for; `include_usage` whether it gets a
    /// usage chunk before `[DONE]`.
    pub fn new(model: &str, include_usage: bool) -> Self {
        ChunkStream {
            split: Splitter::default(),
            chunks: Chunks::new(E::DEFAULT_ID, model, include_usage),
            events: E::default(),
        }
    }

    /// [`ChunkStream::new`] as the proxy holds it.
    pub fn boxed(model: &str, include_usage: bool) -> Box<dyn StreamTranslator>
    where
        E: 'static,
    {
        Box::new(Self::new(model, include_usage))
    }

    fn take(&mut self, ev: &Event) {
        // Keep-alives and other data that is not JSON carry nothing to translate.
        if let Ok(v) = serde_json::from_str::<Value>(&ev.data) {
            self.events.event(&v, &mut self.chunks);
        }
    }
}

impl<E: EventMapper> StreamTranslator for ChunkStream<E> {
    fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        for ev in self.split.push(chunk) {
            self.take(&ev);
        }
        std::mem::take(&mut self.chunks.out)
    }

    fn finish(&mut self) -> Vec<u8> {
        if let Some(ev) = self.split.rest() {
            self.take(&ev);
        }
        if E::ENDS_WITH_RESPONSE && self.chunks.finish_sent {
            self.chunks.close();
        }
        std::mem::take(&mut self.chunks.out)
    }
}

/// What a translator makes of `bytes` fed in two pieces cut at `cut`, then ended,
/// as the relay's SSE tap reads it.
#[cfg(test)]
pub(crate) fn tap_cut(
    s: &mut dyn StreamTranslator,
    bytes: &[u8],
    cut: usize,
) -> crate::response_body::SseTap {
    let mut out = s.feed(&bytes[..cut]);
    out.extend(s.feed(&bytes[cut..]));
    out.extend(s.finish());
    let mut tap = crate::response_body::SseTap::new(false);
    tap.feed(bytes::Bytes::from(out));
    tap
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::response_body::SseTap;
    use bytes::Bytes;

    /// `{"say": …}` is text, `{"id": …}` names the answer, `{"stop": …}` the finish
    /// reason, `{"end": true}` the stop event (when the response's end is not),
    /// `{"oops": …}` an error.
    #[derive(Default)]
    struct Toy<const ENDS: bool>;

    impl<const ENDS: bool> EventMapper for Toy<ENDS> {
        const DEFAULT_ID: &'static str = "chatcmpl-toy";
        const ENDS_WITH_RESPONSE: bool = ENDS;
        fn event(&mut self, v: &Value, out: &mut Chunks) {
            out.set_id(v.get("id").and_then(|i| i.as_str()));
            if let Some(t) = v.get("say") {
                out.completion += 1;
                out.delta(json!({"content": t}));
            }
            if let Some(r) = v.get("stop").and_then(|r| r.as_str()) {
                out.finish(r);
            }
            if v.get("end").is_some() {
                out.close();
            }
            if let Some(m) = v.get("oops").and_then(|m| m.as_str()) {
                out.error(m, "toy_error");
            }
        }
    }

    const STREAM: &str = "data: {\"id\":\"r1\",\"say\":\"Hel\"}\r\n\r\n: keep-alive\n\ndata: {\"say\":\"lo\"}\n\ndata: {\"stop\":\"length\"}\n\n";

    fn run<const ENDS: bool>(parts: &[&[u8]], usage: bool) -> String {
        let mut s = ChunkStream::<Toy<ENDS>>::new("m", usage);
        let mut out = Vec::new();
        for p in parts {
            out.extend(s.feed(p));
        }
        out.extend(s.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn events_split_anywhere_make_the_same_chunks() {
        let whole = run::<true>(&[STREAM.as_bytes()], true);
        for cut in 1..STREAM.len() {
            let (a, b) = STREAM.as_bytes().split_at(cut);
            assert_eq!(run::<true>(&[a, b], true), whole, "cut {cut}");
        }
        let mut tap = SseTap::new(false);
        tap.feed(Bytes::from(whole.clone()));
        assert_eq!(tap.completion_text().0, "Hello");
        assert!(tap.saw_done && tap.saw_finish);
        assert_eq!(tap.usage.unwrap().completion_tokens, 2);
        // The role rides on the first delta only; the upstream's id on every chunk.
        assert_eq!(whole.matches("\"role\":\"assistant\"").count(), 1);
        assert_eq!(whole.matches("\"id\":\"r1\"").count(), 4, "{whole}");
        assert!(whole.contains("\"finish_reason\":\"length\""));
    }

    #[test]
    fn the_end_is_owed_only_to_a_finished_stream() {
        // Ended after a finish reason: usage and [DONE] at the end, usage on request.
        let with = run::<true>(&[STREAM.as_bytes()], true);
        assert!(
            with.ends_with("\"total_tokens\":2}}\n\ndata: [DONE]\n\n"),
            "{with}"
        );
        let without = run::<true>(&[STREAM.as_bytes()], false);
        assert!(!without.contains("usage") && without.ends_with("data: [DONE]\n\n"));
        // Cut before the finish reason: nothing owed.
        let cut = &STREAM[..STREAM.find("data: {\"stop\"").unwrap()];
        assert!(!run::<true>(&[cut.as_bytes()], true).contains("[DONE]"));
        // A provider with a stop event: the response's end owes nothing...
        assert!(!run::<false>(&[STREAM.as_bytes()], true).contains("[DONE]"));
        // ...the stop event does, once, even when it came without a blank line.
        let stopped = format!("{STREAM}data: {{\"end\":true}}");
        let out = run::<false>(&[stopped.as_bytes()], true);
        assert_eq!(out.matches("[DONE]").count(), 1, "{out}");
        let twice = format!("{STREAM}data: {{\"end\":true}}\n\ndata: {{\"end\":true}}\n\n");
        assert_eq!(
            run::<true>(&[twice.as_bytes()], true)
                .matches("[DONE]")
                .count(),
            1
        );
    }

    #[test]
    fn an_error_ends_the_stream_without_done() {
        let failed =
            format!("{STREAM}data: {{\"oops\":\"overloaded\"}}\n\ndata: {{\"end\":true}}\n\n");
        let out = run::<true>(&[failed.as_bytes()], true);
        assert!(
            out.contains("data: {\"error\":{\"code\":\"toy_error\",\"message\":\"overloaded\",\"param\":null,\"type\":\"server_error\"}}\n\n"),
            "{out}"
        );
        assert!(!out.contains("[DONE]"));
    }
}
