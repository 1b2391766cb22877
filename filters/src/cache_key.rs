//! P10: what makes two requests "the same" for the response cache.

use crate::request_body::JsonBody;
use sha2::{Digest, Sha256};

/// Fields that do not change the answer.
const IGNORED: &[&str] = &["user"];

/// A digest over the gateway (templates and parameter rules differ per gateway), the
/// model asked for, and the body in a canonical form: every field that changes the
/// answer, objects with sorted keys, no whitespace. `stream` and `stream_options` are
/// part of it: a stream and a JSON answer are cached apart.
pub fn cache_key(gateway: &str, model: &str, body: &JsonBody) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(gateway.as_bytes());
    h.update([0]);
    h.update(model.as_bytes());
    h.update([0]);
    let mut fields: Vec<(&str, serde_json::Value)> = body
        .field_names()
        .filter(|k| !IGNORED.contains(k))
        .filter_map(|k| body.get_path_exact(k).map(|v| (k, v)))
        .collect();
    fields.sort_by(|a, b| a.0.cmp(b.0));
    for (k, v) in fields {
        h.update(k.as_bytes());
        h.update([0]);
        // serde_json's maps are ordered by key, so this is canonical.
        h.update(v.to_string().as_bytes());
        h.update([0]);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(gw: &str, body: &str) -> [u8; 32] {
        cache_key(gw, "m", &JsonBody::parse(body.as_bytes()).unwrap())
    }

    #[test]
    fn same_request_same_key_whatever_the_spelling() {
        let a = key(
            "g",
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0.5}"#,
        );
        let b = key(
            "g",
            r#"{ "temperature" : 0.5, "messages":[{"content":"hi","role":"user"}], "model":"m", "user":"alice"}"#,
        );
        assert_eq!(a, b);
    }

    #[test]
    fn anything_that_changes_the_answer_changes_the_key() {
        let base = key(
            "g",
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
        );
        for other in [
            r#"{"model":"m","messages":[{"role":"user","content":"hi!"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#,
        ] {
            assert_ne!(base, key("g", other), "{other}");
        }
        assert_ne!(
            base,
            key(
                "h",
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#
            )
        );
    }
}
