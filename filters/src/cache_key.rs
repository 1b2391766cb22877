//! P10: what makes two requests "the same" for the response cache.

use crate::request_body::JsonBody;
use sha2::{Digest, Sha256};

/// Fields that do not change the answer.
const IGNORED: &[&str] = &["user"];

/// Everything besides the body that decides what answer a request gets.
pub struct KeyContext<'a> {
    /// The gateway (its template and parameter rules shape the request).
    pub gateway: &'a str,
    /// A digest of the gateway's rewrite rules, so a reload that changes them
    /// stops serving answers to the old rules.
    pub rewrites: &'a str,
    /// The endpoint and the query forwarded with it.
    pub endpoint: &'a str,
    pub query: &'a str,
    pub model: &'a str,
    /// The channels and upstream models that may answer (they differ by caller group).
    pub routes: &'a [(&'a str, &'a str)],
}

/// A digest over the request's context and its body in a canonical form: every field
/// that changes the answer, objects with sorted keys, no whitespace. `stream` and
/// `stream_options` are part of it: a stream and a JSON answer are cached apart.
pub fn cache_key(cx: &KeyContext<'_>, body: &JsonBody) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [cx.gateway, cx.rewrites, cx.endpoint, cx.query, cx.model] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    for (channel, model) in cx.routes {
        h.update(channel.as_bytes());
        h.update([1]);
        h.update(model.as_bytes());
        h.update([0]);
    }
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
        keyed(gw, "chat_completions", &[("c", "m")], body)
    }

    fn keyed(gw: &str, endpoint: &str, routes: &[(&str, &str)], body: &str) -> [u8; 32] {
        let cx = KeyContext {
            gateway: gw,
            rewrites: "",
            endpoint,
            query: "",
            model: "m",
            routes,
        };
        cache_key(&cx, &JsonBody::parse(body.as_bytes()).unwrap())
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
