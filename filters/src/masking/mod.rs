//! Data masking (per gateway, `masking:`): personal data and secrets in what a
//! client sends are replaced by placeholders before the request leaves weir
//! (`[EMAIL_1]`, `[PHONE_2]`), the same value by the same placeholder throughout
//! a request, so the model can still refer to it. With `restore: true` the
//! answer gets the originals back, streams included (a placeholder split over
//! chunks is held until it is whole). What was masked is counted per detector;
//! the values never leave the request.

mod detect;
mod restore;

pub use detect::{cn_id_check, luhn, Builtin};
pub use restore::{JsonRestorer, SseRestorer};

use crate::request_body::JsonBody;
use crate::route::Endpoint;
use crate::GatewayError;
use regex::Regex;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// A custom detector's name: lower-case letters, digits and `_`, at most this
/// long (its placeholder is its name in capitals).
pub const MAX_NAME: usize = 24;

/// The longest placeholder: `[`, a name, `_`, a number, `]`.
pub(crate) const MAX_PLACEHOLDER: usize = 1 + MAX_NAME + 1 + 10 + 1;

struct Detector {
    name: String,
    label: String,
    regex: Regex,
    /// `None` for a custom pattern: its match is taken as it is.
    builtin: Option<Builtin>,
}

/// A gateway's masking, compiled.
pub struct Masker {
    detectors: Vec<Detector>,
    /// Put the originals back in the answer.
    pub restore: bool,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.detectors.iter().map(|d| d.name.as_str()).collect();
        f.debug_struct("Masker")
            .field("detectors", &names)
            .field("restore", &self.restore)
            .finish()
    }
}

impl PartialEq for Masker {
    fn eq(&self, o: &Masker) -> bool {
        self.restore == o.restore
            && self.detectors.len() == o.detectors.len()
            && self
                .detectors
                .iter()
                .zip(&o.detectors)
                .all(|(a, b)| a.name == b.name && a.regex.as_str() == b.regex.as_str())
    }
}

impl Masker {
    /// `builtins` by name (`email`, `phone`, `cn_id`, `bank_card`, `ipv4`,
    /// `secret`; `all` for every one), `custom` as (name, regex). Errors name the
    /// entry at fault, relative to `masking`.
    pub fn new(
        builtins: &[String],
        custom: &[(String, String)],
        restore: bool,
    ) -> Result<Masker, String> {
        let mut detectors = Vec::new();
        // Custom patterns first: an operator's own rule wins an overlap.
        for (i, (name, pattern)) in custom.iter().enumerate() {
            let ok_name = !name.is_empty()
                && name.len() <= MAX_NAME
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !ok_name {
                return Err(format!(
                    "custom[{i}].name: `{name}` must be 1–{MAX_NAME} lower-case letters, digits or `_`"
                ));
            }
            if Builtin::parse(name).is_some() || custom[..i].iter().any(|(n, _)| n == name) {
                return Err(format!(
                    "custom[{i}].name: `{name}` is already a detector's name"
                ));
            }
            let regex = regex::RegexBuilder::new(pattern)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| format!("custom[{i}].pattern: {e}"))?;
            if regex.is_match("") {
                return Err(format!("custom[{i}].pattern: matches the empty string"));
            }
            detectors.push(Detector {
                name: name.clone(),
                label: name.to_ascii_uppercase(),
                regex,
                builtin: None,
            });
        }
        let mut wanted = Vec::new();
        for (i, name) in builtins.iter().enumerate() {
            if name == "all" {
                wanted.extend(Builtin::ALL);
                continue;
            }
            let b = Builtin::parse(name).ok_or_else(|| {
                let all: Vec<&str> = Builtin::ALL.iter().map(|b| b.name()).collect();
                format!(
                    "detectors[{i}]: unknown detector `{name}` (one of {}, or all)",
                    all.join(", ")
                )
            })?;
            wanted.push(b);
        }
        for b in Builtin::ALL.into_iter().filter(|b| wanted.contains(b)) {
            detectors.push(Detector {
                name: b.name().to_string(),
                label: b.name().to_ascii_uppercase(),
                regex: b.regex(),
                builtin: Some(b),
            });
        }
        if detectors.is_empty() {
            return Err(
                "detectors: none named; list some (or `all`), or add `custom` patterns".into(),
            );
        }
        Ok(Masker { detectors, restore })
    }

    /// `text` with every finding replaced, or `None` when there was none.
    pub fn mask(&self, text: &str, table: &mut Table) -> Option<String> {
        let mut spans: Vec<(usize, usize, usize)> = Vec::new();
        for (rank, d) in self.detectors.iter().enumerate() {
            for m in d.regex.find_iter(text) {
                let end = match d.builtin {
                    Some(b) => b.confirm(text, m.start(), m.end()),
                    None => Some(m.end()),
                };
                let Some(end) = end.filter(|&e| e > m.start()) else {
                    continue;
                };
                // Earlier detectors win: a span overlapping one already taken goes.
                let free = spans.iter().all(|&(s, e, _)| end <= s || m.start() >= e);
                if free {
                    spans.push((m.start(), end, rank));
                }
            }
        }
        if spans.is_empty() {
            return None;
        }
        spans.sort_unstable();
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for (s, e, rank) in spans {
            out.push_str(&text[at..s]);
            let d = &self.detectors[rank];
            out.push_str(&table.placeholder(&d.name, &d.label, &text[s..e]));
            at = e;
        }
        out.push_str(&text[at..]);
        Some(out)
    }

    /// Masks what a request to `endpoint` sends as text: chat messages (string
    /// content, text parts, tool-call arguments), a completion's `prompt`, an
    /// embedding's `input`. Other fields, images and token arrays pass untouched.
    pub fn mask_body(
        &self,
        body: &mut JsonBody,
        endpoint: Endpoint,
    ) -> Result<Table, GatewayError> {
        let mut table = Table::default();
        let field = match endpoint {
            Endpoint::ChatCompletions => "messages",
            Endpoint::Completions => "prompt",
            Endpoint::Embeddings => "input",
            _ => return Ok(table),
        };
        let Some(mut value) = body.get_path_exact(field) else {
            return Ok(table);
        };
        let changed = match endpoint {
            Endpoint::ChatCompletions => self.mask_messages(&mut value, &mut table),
            _ => self.mask_texts(&mut value, &mut table),
        };
        if changed {
            body.set(field, &value)?;
        }
        Ok(table)
    }

    fn mask_messages(&self, messages: &mut Value, table: &mut Table) -> bool {
        let mut changed = false;
        for m in messages.as_array_mut().into_iter().flatten() {
            match m.get_mut("content") {
                Some(Value::Array(parts)) => {
                    for part in parts {
                        if let Some(t) = part.get_mut("text") {
                            changed |= self.mask_value(t, table);
                        }
                    }
                }
                Some(content) => changed |= self.mask_value(content, table),
                None => {}
            }
            for call in m
                .get_mut("tool_calls")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if let Some(args) = call.pointer_mut("/function/arguments") {
                    changed |= self.mask_value(args, table);
                }
            }
        }
        changed
    }

    /// A string, or an array of strings (token arrays are left alone).
    fn mask_texts(&self, v: &mut Value, table: &mut Table) -> bool {
        match v {
            Value::Array(items) => items
                .iter_mut()
                .fold(false, |c, i| self.mask_value(i, table) | c),
            _ => self.mask_value(v, table),
        }
    }

    fn mask_value(&self, v: &mut Value, table: &mut Table) -> bool {
        let Value::String(s) = v else {
            return false;
        };
        match self.mask(s, table) {
            Some(masked) => {
                *s = masked;
                true
            }
            None => false,
        }
    }
}

/// One request's placeholders, both ways, and how many findings each detector
/// made (a repeated value counts each time).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Table {
    by_value: HashMap<String, String>,
    by_placeholder: HashMap<String, String>,
    per_label: HashMap<String, u32>,
    pub counts: BTreeMap<String, u64>,
}

impl Table {
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    fn placeholder(&mut self, detector: &str, label: &str, value: &str) -> String {
        *self.counts.entry(detector.to_string()).or_default() += 1;
        if let Some(p) = self.by_value.get(value) {
            return p.clone();
        }
        let n = self.per_label.entry(label.to_string()).or_default();
        *n += 1;
        let p = format!("[{label}_{n}]");
        self.by_value.insert(value.to_string(), p.clone());
        self.by_placeholder.insert(p.clone(), value.to_string());
        p
    }

    /// The original behind a placeholder (`[EMAIL_1]`).
    pub fn original(&self, placeholder: &str) -> Option<&str> {
        self.by_placeholder.get(placeholder).map(String::as_str)
    }

    /// `email:2,phone:1`, for the call log: what was found, never the values.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self
            .counts
            .iter()
            .map(|(d, n)| format!("{d}:{n}"))
            .collect();
        parts.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masker(names: &[&str]) -> Masker {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        Masker::new(&names, &[("employee".into(), r"EMP-\d{6}".into())], true).unwrap()
    }

    #[test]
    fn findings_become_stable_placeholders() {
        let m = masker(&["all"]);
        let mut t = Table::default();
        let text = "Mail a@b.io or a@b.io, call 13812345678, ID 11010519491231002X, card 4111 1111 1111 1111, host 10.1.2.3, key sk-abc123def456ghi789jkl0, badge EMP-123456";
        let out = m.mask(text, &mut t).unwrap();
        assert_eq!(
            out,
            "Mail [EMAIL_1] or [EMAIL_1], call [PHONE_1], ID [CN_ID_1], card [BANK_CARD_1], host [IPV4_1], key [SECRET_1], badge [EMPLOYEE_1]"
        );
        assert_eq!(
            t.summary(),
            "bank_card:1,cn_id:1,email:2,employee:1,ipv4:1,phone:1,secret:1"
        );
        assert_eq!(t.original("[PHONE_1]"), Some("13812345678"));
        assert_eq!(m.mask("nothing here", &mut t), None);
    }

    #[test]
    fn bad_config_is_named() {
        let e = Masker::new(&["emial".into()], &[], false).unwrap_err();
        assert!(
            e.starts_with("detectors[0]: unknown detector `emial`"),
            "{e}"
        );
        let e = Masker::new(&[], &[("x".into(), "(".into())], false).unwrap_err();
        assert!(e.starts_with("custom[0].pattern:"), "{e}");
        let e = Masker::new(&[], &[("Bad Name".into(), "x".into())], false).unwrap_err();
        assert!(e.starts_with("custom[0].name:"), "{e}");
        let e = Masker::new(&[], &[("x".into(), "a*".into())], false).unwrap_err();
        assert!(e.contains("empty string"), "{e}");
        assert!(Masker::new(&[], &[], false).is_err());
    }

    #[test]
    fn a_chat_body_is_masked_where_text_is() {
        let m = masker(&["email"]);
        let mut body = JsonBody::parse(
            br#"{"model":"m","user":"x@y.io","messages":[{"role":"user","content":"I am x@y.io"},{"role":"user","content":[{"type":"text","text":"cc z@y.io"},{"type":"image_url","image_url":{"url":"data:x@y.io"}}]},{"role":"assistant","content":null,"tool_calls":[{"id":"1","type":"function","function":{"name":"send","arguments":"{\"to\":\"x@y.io\"}"}}]}]}"#,
        )
        .unwrap();
        let t = m.mask_body(&mut body, Endpoint::ChatCompletions).unwrap();
        let v: Value = serde_json::from_slice(&body.to_bytes()).unwrap();
        assert_eq!(v["messages"][0]["content"], "I am [EMAIL_1]");
        assert_eq!(v["messages"][1]["content"][0]["text"], "cc [EMAIL_2]");
        assert_eq!(
            v["messages"][1]["content"][1]["image_url"]["url"],
            "data:x@y.io"
        );
        assert_eq!(
            v["messages"][2]["tool_calls"][0]["function"]["arguments"],
            "{\"to\":\"[EMAIL_1]\"}"
        );
        // Not a text field: left as it is.
        assert_eq!(v["user"], "x@y.io");
        assert_eq!(t.counts["email"], 3);
    }
}
