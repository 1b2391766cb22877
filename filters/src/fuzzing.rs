//! The bodies of weir's fuzz targets (`tests/fuzz`, run with cargo-fuzz) and of
//! the property tests that replay them in CI (`filters/tests/fuzz_corpus.rs`):
//! each takes arbitrary bytes, drives one parser or rewriter that meets client
//! or upstream input, and panics only when a property breaks. Properties, not
//! just "no panic": a stream read in any split gives what it gives whole, a
//! rewritten body is still JSON, a removed query parameter is gone.

use crate::adapters;
use crate::auth::{self, JwtSettings, JwtVerifier, KeyPosition};
use crate::config::{self, ChannelType};
use crate::request_body::JsonBody;
use crate::response_body::SseTap;
use crate::route::Endpoint;
use bytes::Bytes;

/// Where to split `data` into chunks: each of the first bytes names a cut, so
/// the fuzzer explores splits as it explores content.
fn pieces(data: &[u8]) -> (Vec<usize>, &[u8]) {
    let Some((&first, tail)) = data.split_first() else {
        return (Vec::new(), data);
    };
    let n = ((first % 8) as usize).min(tail.len());
    let (cuts, rest) = tail.split_at(n);
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|&c| c as usize * rest.len() / 256)
        .collect();
    at.sort_unstable();
    (at, rest)
}

fn split<'a>(rest: &'a [u8], at: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::with_capacity(at.len() + 1);
    let mut from = 0;
    for &cut in at {
        out.push(&rest[from..cut.max(from)]);
        from = cut.max(from);
    }
    out.push(&rest[from..]);
    out
}

/// The SSE tap: fed in any split, it passes the same bytes (observing: exactly
/// the input; stripping usage: what it passes whole) and reads the same usage.
pub fn sse_tap(data: &[u8]) {
    let (at, rest) = pieces(data);
    for strip in [false, true] {
        let mut whole = SseTap::new(strip);
        let mut expected = whole.feed(Bytes::copy_from_slice(rest)).to_vec();
        expected.extend_from_slice(&whole.finish());
        let mut tap = SseTap::new(strip);
        let mut got = Vec::new();
        for piece in split(rest, &at) {
            got.extend_from_slice(&tap.feed(Bytes::copy_from_slice(piece)));
        }
        got.extend_from_slice(&tap.finish());
        if !strip {
            assert_eq!(got, rest, "an observing tap changed the stream");
        }
        assert_eq!(got, expected, "the split changed what the client gets");
        assert_eq!(tap.usage, whole.usage, "the split changed the usage read");
        assert_eq!(tap.completed(), whole.completed());
    }
}

/// Each provider's stream translator: any bytes, in any split, give OpenAI SSE
/// events whose data is JSON or `[DONE]`; and its JSON answer translator gives
/// JSON for any status and body.
pub fn translators(data: &[u8]) {
    let (at, rest) = pieces(data);
    for kind in [ChannelType::Anthropic, ChannelType::Gemini] {
        if let Some(mut t) = adapters::stream_translator(kind, "m", true) {
            let mut out = Vec::new();
            for piece in split(rest, &at) {
                out.extend(t.feed(piece));
            }
            out.extend(t.finish());
            check_openai_sse(&out);
        }
        for status in [200, 400, 429, 500] {
            let json = adapters::translate_json(kind, status, rest, "m");
            assert!(
                serde_json::from_slice::<serde_json::Value>(&json).is_ok(),
                "a translated answer is not JSON"
            );
        }
        let _ = adapters::parse_models(kind, rest);
    }
}

fn check_openai_sse(out: &[u8]) {
    let text = std::str::from_utf8(out).expect("translated SSE is UTF-8");
    for event in text.split("\n\n").filter(|e| !e.trim().is_empty()) {
        let data = event
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("not an SSE data event: {event:?}"));
        assert!(
            data == "[DONE]" || serde_json::from_str::<serde_json::Value>(data).is_ok(),
            "event data is neither JSON nor [DONE]: {data:?}"
        );
    }
}

/// The request path's body handling: parse, shape checks, facts, the rewrites a
/// gateway applies; what is sent upstream is JSON carrying the rewrites.
pub fn request_body(data: &[u8]) {
    let Ok(mut body) = JsonBody::parse(data) else {
        return;
    };
    // Raw JSON passes numbers on unread (`1e99999` included): weir keeps a body a
    // strict parser reads readable, and passes any other as the client sent it.
    let strict = serde_json::from_slice::<serde_json::Value>(data).is_ok();
    for endpoint in [
        Endpoint::ChatCompletions,
        Endpoint::Completions,
        Endpoint::Embeddings,
    ] {
        let _ = crate::shape::check(endpoint, &body);
    }
    let _ = crate::request_body::has_media(&body);
    let _ = crate::request_body::prompt_text(&body);
    let Ok(facts) = body.facts() else {
        return;
    };
    if facts.stream {
        body.ensure_stream_usage()
            .expect("stream_options was checked by facts");
    }
    let map: indexmap::IndexMap<String, (serde_json::Value, serde_json::Value)> = [(
        "temperature".to_string(),
        (serde_json::json!(1), serde_json::json!(0.5)),
    )]
    .into_iter()
    .collect();
    let fixed: indexmap::IndexMap<String, serde_json::Value> =
        [("metadata.via".to_string(), serde_json::json!("weir"))]
            .into_iter()
            .collect();
    // A path through the client's array takes numeric steps only: `metadata.via`
    // into an array is not set (the client's array is not overwritten).
    let through_array = body
        .get("metadata")
        .is_some_and(|raw| raw.get().trim_start().starts_with('['));
    let _ = body.map_params(&map);
    let fixed_ok = body.fix_params(&fixed).is_ok() && !through_array;
    let _ = body.apply_template("Q: {{query}}");
    body.set("model", &"rewritten").expect("a string encodes");
    let out = body.to_bytes();
    if !strict {
        return;
    }
    let back: serde_json::Value = serde_json::from_slice(&out).expect("the upstream body is JSON");
    assert_eq!(back["model"], "rewritten");
    if fixed_ok {
        assert_eq!(back["metadata"]["via"], "weir");
    }
}

/// The config loader: any text is a config or a list of problems, never a panic.
pub fn config_loader(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = config::parse(text) {
        assert!(!e.problems.is_empty(), "a refused config says why");
    }
}

/// Key extraction: from a header value (Bearer or not) and from a query; a key
/// taken out of a query is gone from what travels on.
pub fn key_extraction(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (name, query) = text.split_once('\n').unwrap_or(("key", text));
    let _ = auth::strip_bearer(query);
    let _ = name.parse::<KeyPosition>();
    let _ = auth::query_param(query, name);
    let rest = auth::remove_query_param(query, name);
    assert_eq!(
        auth::query_param(&rest, name).filter(|v| !v.is_empty()),
        None,
        "the key is still in the query"
    );
    let _ = auth::hash_key(query);
}

/// JWT verification: any token is an identity or a refusal; a refused token is
/// never taken.
pub fn jwt(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let algorithms = ["HS256".to_string()];
    let settings = JwtSettings {
        secret: Some("fuzz-secret-fuzz-secret-fuzz-secret"),
        public_key_pem: None,
        algorithms: &algorithms,
        identity_claim: "sub",
        group_claim: Some("group"),
        leeway_secs: 0,
        audience: None,
        issuer: None,
    };
    let Ok(verifier) = JwtVerifier::new(&settings) else {
        panic!("the fuzz verifier must build");
    };
    let _ = verifier.verify(token);
}

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target by name, for the replay test and the fuzz crate.
/// Messages and Responses clients' requests and the answers made for them: any
/// JSON request translates or is refused (never a panic), and a chat answer or
/// chunk stream, in any split, becomes JSON or SSE events whose data is JSON.
pub fn inbound(data: &[u8]) {
    let (at, rest) = pieces(data);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(rest) {
        for count in [false, true] {
            if let Ok((chat, _)) = adapters::messages_in::to_chat(&v, count) {
                assert!(
                    chat["messages"].is_array(),
                    "a chat request without messages"
                );
            }
        }
        if let Ok((chat, _)) = adapters::responses_in::to_chat(&v) {
            assert!(
                chat["messages"].is_array(),
                "a chat request without messages"
            );
        }
    }
    for answer in [
        adapters::messages_in::answer_from_chat(rest, "m"),
        adapters::responses_in::answer_from_chat(rest, "m"),
        adapters::messages_in::error_from_openai(429, rest),
    ] {
        assert!(
            serde_json::from_slice::<serde_json::Value>(&answer).is_ok(),
            "not JSON"
        );
    }
    use adapters::sse::EventReader;
    let mut messages = adapters::messages_in::EventsFromChunks::new("m");
    let mut responses = adapters::responses_in::EventsFromChunks::new("m");
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for piece in split(rest, &at) {
        a.extend(messages.feed(piece));
        b.extend(responses.feed(piece));
    }
    a.extend(messages.finish());
    b.extend(responses.finish());
    check_named_sse(&a);
    check_named_sse(&b);
}

fn check_named_sse(out: &[u8]) {
    let text = std::str::from_utf8(out).expect("SSE is UTF-8");
    for event in text.split("\n\n").filter(|e| !e.trim().is_empty()) {
        let data = event
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap_or_else(|| panic!("an event without data: {event:?}"));
        assert!(
            serde_json::from_str::<serde_json::Value>(data).is_ok(),
            "not JSON: {data:?}"
        );
    }
}

/// What changes an answer as it passes (masked values put back, content
/// safety's guard): in any split, the same bytes as whole, and events whose
/// data is JSON or `[DONE]`.
pub fn answer_passes(data: &[u8]) {
    use std::sync::{Arc, OnceLock};
    static RULES: OnceLock<(Arc<crate::masking::Table>, Arc<crate::safety::Safety>)> =
        OnceLock::new();
    let (at, rest) = pieces(data);
    // Built once: compiling the rules would otherwise be most of each run.
    let (table, safety) = RULES.get_or_init(|| {
        let mut table = crate::masking::Table::default();
        let masker = crate::masking::Masker::new(&["email".into()], &[], true).expect("a masker");
        let _ = masker.mask("mail a@b.example or c@d.example", &mut table);
        let deny = ["forbidden".to_string(), "禁止".to_string()];
        let patterns = [r"\bbomb\b".to_string()];
        let safety = crate::safety::Safety::new(crate::safety::Spec {
            deny: &deny,
            patterns: &patterns,
            window: Some(64),
            requests: true,
            answers: true,
            moderation: None,
        })
        .expect("rules");
        (Arc::new(table), Arc::new(safety))
    });
    let (table, safety) = (table.clone(), safety.clone());
    type Run = Box<dyn Fn(&[&[u8]]) -> Vec<u8>>;
    let runs: [Run; 2] = [
        Box::new(move |pieces| {
            let mut r = crate::masking::SseRestorer::new(table.clone());
            let mut out: Vec<u8> = pieces.iter().flat_map(|p| r.feed(p)).collect();
            out.extend(r.finish());
            out
        }),
        Box::new(move |pieces| {
            let mut g = crate::safety::SseGuard::new(safety.clone());
            let mut out: Vec<u8> = pieces.iter().flat_map(|p| g.feed(p)).collect();
            out.extend(g.finish());
            out
        }),
    ];
    for run in &runs {
        let whole = run(&[rest]);
        let parts = split(rest, &at);
        assert_eq!(run(&parts), whole, "the split changed what the client gets");
    }
}

/// An upload's `model` field, looked for in any prefix of any body: found only
/// where it is, and once found in a prefix, found the same in the whole.
pub fn multipart(data: &[u8]) {
    let Some((&b, body)) = data.split_first() else {
        return;
    };
    let boundary = ["b", "XyZ", "----WebKitFormBoundary7MA4YWxkTrZu0gW"][b as usize % 3];
    let whole = crate::multipart::find_field(body, boundary, "model", true);
    if let crate::multipart::Scan::Found { value, at } = &whole {
        let bytes = body.get(at.clone()).expect("the value is inside the body");
        assert_eq!(String::from_utf8_lossy(bytes).trim(), value);
        let swapped = crate::multipart::replace(body, at.clone(), "m2");
        assert_eq!(swapped.len(), body.len() - bytes.len() + 2);
    }
    let cut = (b as usize * 7) % (body.len() + 1);
    if let found @ crate::multipart::Scan::Found { .. } =
        crate::multipart::find_field(&body[..cut], boundary, "model", false)
    {
        assert_eq!(found, whole, "a prefix found another field than the whole");
    }
}

pub const TARGETS: &[(&str, Target)] = &[
    ("sse_tap", sse_tap),
    ("translators", translators),
    ("request_body", request_body),
    ("config_loader", config_loader),
    ("key_extraction", key_extraction),
    ("jwt", jwt),
    ("inbound", inbound),
    ("answer_passes", answer_passes),
    ("multipart", multipart),
];
