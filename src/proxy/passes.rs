//! What weir changes in a 2xx answer on its way out, in order: data masking's
//! originals put back, then content safety's check, so the check reads what the
//! client will read. Each stage takes bytes and gives bytes; what a stage still
//! holds at the end goes through the stages after it.

use super::request::Dialect;
use bytes::Bytes;
use std::sync::Arc;
use weir_filters::adapters::sse::EventReader;
use weir_filters::adapters::{messages_in, responses_in};
use weir_filters::masking::{JsonRestorer, SseRestorer, Table};
use weir_filters::safety::{Finding, JsonGuard, Safety, SseGuard};

enum Pass {
    RestoreJson(JsonRestorer),
    RestoreSse(SseRestorer),
    GuardJson(JsonGuard),
    GuardSse(SseGuard),
}

impl Pass {
    fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        match self {
            Pass::RestoreJson(p) => p.feed(chunk),
            Pass::RestoreSse(p) => p.feed(chunk),
            Pass::GuardJson(p) => p.feed(chunk),
            Pass::GuardSse(p) => p.feed(chunk),
        }
    }

    fn finish(&mut self) -> Vec<u8> {
        match self {
            Pass::RestoreJson(p) => p.finish(),
            Pass::RestoreSse(p) => p.finish(),
            Pass::GuardJson(p) => p.finish(),
            Pass::GuardSse(p) => p.finish(),
        }
    }

    fn stopped(&self) -> Option<&Finding> {
        match self {
            Pass::GuardJson(p) => p.stopped(),
            Pass::GuardSse(p) => p.stopped(),
            _ => None,
        }
    }
}

#[derive(Default)]
pub struct Passes(Vec<Pass>);

impl Passes {
    pub fn new(sse: bool, restore: Option<&Arc<Table>>, guard: Option<&Arc<Safety>>) -> Passes {
        let mut passes = Vec::new();
        if let Some(t) = restore {
            passes.push(match sse {
                true => Pass::RestoreSse(SseRestorer::new(t.clone())),
                false => Pass::RestoreJson(JsonRestorer::new(t.clone())),
            });
        }
        if let Some(s) = guard {
            passes.push(match sse {
                true => Pass::GuardSse(SseGuard::new(s.clone())),
                false => Pass::GuardJson(JsonGuard::new(s.clone())),
            });
        }
        Passes(passes)
    }

    pub fn feed(&mut self, chunk: Bytes) -> Bytes {
        if self.0.is_empty() {
            return chunk;
        }
        let mut buf = chunk.to_vec();
        for p in &mut self.0 {
            buf = p.feed(&buf);
        }
        Bytes::from(buf)
    }

    /// The answer ended: what each stage holds, through the stages after it.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        for p in &mut self.0 {
            out = p.feed(&out);
            out.extend(p.finish());
        }
        out
    }

    /// The rule the answer broke, once content safety stopped it.
    pub fn stopped(&self) -> Option<&Finding> {
        self.0.iter().find_map(Pass::stopped)
    }

    /// A JSON answer's text, held whole by the guard (for moderation).
    pub fn held_text(&self) -> Option<String> {
        self.0.iter().find_map(|p| match p {
            Pass::GuardJson(g) => g.text(),
            _ => None,
        })
    }

    /// The guard refuses the whole answer when it ends, for `rule`.
    pub fn refuse(&mut self, rule: &str) {
        for p in &mut self.0 {
            if let Pass::GuardJson(g) = p {
                g.refuse(rule);
            }
        }
    }

    /// What a stopped stream's upstream sent that the client never got.
    pub fn withheld(&self) -> Option<&str> {
        self.0.iter().find_map(|p| match p {
            Pass::GuardSse(g) => g.stopped().map(|_| g.withheld()),
            _ => None,
        })
    }
}

/// A Messages or Responses client's answer made from a chat one, after every
/// other stage: chunks become its API's events as they pass; a JSON answer (or
/// error) is held whole and made into its shape at its end.
pub enum ToClient {
    Messages(messages_in::EventsFromChunks),
    Responses(responses_in::EventsFromChunks),
    Json {
        dialect: Dialect,
        status: u16,
        model: String,
        body: Vec<u8>,
    },
}

impl ToClient {
    pub fn new(dialect: Dialect, status: u16, sse: bool, model: &str) -> ToClient {
        match (dialect, sse && status < 300) {
            (Dialect::Messages, true) => {
                ToClient::Messages(messages_in::EventsFromChunks::new(model))
            }
            (Dialect::Responses, true) => {
                ToClient::Responses(responses_in::EventsFromChunks::new(model))
            }
            (_, false) => ToClient::Json {
                dialect,
                status,
                model: model.to_string(),
                body: Vec::new(),
            },
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        match self {
            ToClient::Messages(t) => t.feed(chunk),
            ToClient::Responses(t) => t.feed(chunk),
            ToClient::Json { body, .. } => {
                body.extend_from_slice(chunk);
                Vec::new()
            }
        }
    }

    pub fn finish(&mut self) -> Vec<u8> {
        match self {
            ToClient::Messages(t) => t.finish(),
            ToClient::Responses(t) => t.finish(),
            ToClient::Json {
                dialect,
                status,
                model,
                body,
            } => match (*dialect, *status < 300) {
                (Dialect::Messages, true) => messages_in::answer_from_chat(body, model),
                (Dialect::Messages, false) => messages_in::error_from_openai(*status, body),
                (Dialect::Responses, true) => responses_in::answer_from_chat(body, model),
                // Responses errors are OpenAI's already.
                (Dialect::Responses, false) => std::mem::take(body),
            },
        }
    }
}
