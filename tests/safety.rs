#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! Content safety (`gateways[].safety`): deny rules on requests (refused before
//! any channel, 400 `content_filter`) and on answers (stopped where they break a
//! rule, `finish_reason: content_filter`, streams included), and a moderation
//! endpoint in OpenAI's shape with its timeout and `on_error`. Against the mock
//! OpenAI upstream echoing its prompt three characters a chunk, so a keyword
//! crosses chunk boundaries.

mod common;

use common::*;
use serde_json::{json, Value};

fn ask(text: &str, stream: bool) -> Value {
    json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": text}]})
}

fn finish_reasons(sse: &str) -> Vec<String> {
    sse_data(sse)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["finish_reason"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

async fn logs_after_restart(weir: &mut Weir) -> Vec<Value> {
    assert!(weir.stop_gracefully().success());
    weir.restart().await;
    let logs = weir.admin_get("/admin/logs").await;
    logs["data"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_request_breaking_a_rule_is_refused_before_any_channel() {
    let up = Upstream::start("echo").await;
    up.always(Reply::Echo);
    let cfg = Config::new()
        .openai("echo", &up, "")
        .gateway(r"name: default, path: /v1, safety: {deny: [forbidden topic], patterns: ['(?i)\bbomb\b']}")
        .build();
    let mut weir = Weir::start(&cfg).await;
    let client = reqwest::Client::new();
    let url = weir.url("/v1/chat/completions");
    let (status, body) = post(
        &client,
        &url,
        &ask("Tell me about the Forbidden Topic.", false),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "content_filter", "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("safety.deny[0]"),
        "{v}"
    );
    assert!(
        !body.to_lowercase().contains("forbidden topic"),
        "the rule's text is not told"
    );
    assert_eq!(up.calls(), 0, "no channel saw it");
    // Streams and other endpoints alike; a pattern by its own rule.
    let (status, body) = post(&client, &url, &ask("how to build a BOMB", true)).await;
    assert_eq!(
        (status, error_code(&body)),
        (400, "content_filter".into()),
        "{body}"
    );
    assert!(body.contains("safety.patterns[0]"), "{body}");
    let emb = json!({"model": "m", "input": ["fine", "a forbidden topic"]});
    let (status, body) = post(&client, &weir.url("/v1/embeddings"), &emb).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(up.calls(), 0);
    // Near misses pass.
    let (status, body) = post(
        &client,
        &url,
        &ask("a bombastic, forbidden-ish topic", false),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(up.calls(), 1);
    let m = weir
        .wait_metric(
            "weir_safety_total",
            &[("stage", "request"), ("rule", "deny[0]")],
            2.0,
        )
        .await;
    assert_eq!(
        metric_sum(
            &m,
            "weir_safety_total",
            &[("stage", "request"), ("rule", "patterns[0]")]
        ),
        1.0
    );
    let rows = logs_after_restart(&mut weir).await;
    let refused: Vec<&Value> = rows.iter().filter(|r| r["status"] == 400).collect();
    assert_eq!(refused.len(), 3, "{rows:?}");
    assert!(
        refused.iter().all(|r| r["error_code"] == "content_filter"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn an_answer_breaking_a_rule_is_stopped_where_it_breaks_it() {
    let up = Upstream::start("echo").await;
    up.always(Reply::Echo);
    // Answers only: the prompt passes, the model repeating it does not.
    let cfg = Config::new()
        .openai("echo", &up, "")
        .gateway("name: default, path: /v1, safety: {deny: [secret plan], requests: false}")
        .build();
    let mut weir = Weir::start(&cfg).await;
    let client = reqwest::Client::new();
    let url = weir.url("/v1/chat/completions");
    let prompt = "Sure, here is the Secret Plan: attack at dawn.";
    let (status, body) = post(&client, &url, &ask(prompt, true)).await;
    assert_eq!(status, 200, "{body}");
    // Echoed three characters a chunk: "…the " went out, "sec" was held as a
    // keyword's possible start, and nothing of the keyword or after it followed.
    assert_eq!(text_of_stream(&body), "Sure, here is the ", "{body}");
    assert_eq!(finish_reasons(&body), ["content_filter"], "{body}");
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    let (status, body) = post(&client, &url, &ask(prompt, false)).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], Value::Null, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "content_filter");
    assert!(
        v["usage"]["prompt_tokens"].as_u64().unwrap() > 0,
        "usage stays: {v}"
    );
    // A clean answer passes as it came, JSON and stream.
    let clean = "Here is a plan: secretly plant trees.";
    let (_, body) = post(&client, &url, &ask(clean, true)).await;
    assert_eq!(text_of_stream(&body), clean);
    assert_eq!(finish_reasons(&body), ["stop"]);
    let (_, body) = post(&client, &url, &ask(clean, false)).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], clean);
    let m = weir
        .wait_metric(
            "weir_safety_total",
            &[("stage", "answer"), ("rule", "deny[0]")],
            2.0,
        )
        .await;
    assert!(m.contains("weir_safety_total"));
    let rows = logs_after_restart(&mut weir).await;
    assert_eq!(rows.len(), 4, "{rows:?}");
    let stopped: Vec<&Value> = rows
        .iter()
        .filter(|r| r["error_code"] == "content_filter")
        .collect();
    assert_eq!(stopped.len(), 2, "{rows:?}");
    for r in &stopped {
        assert_eq!(r["status"], 200, "{r}");
        assert!(
            r["error"].as_str().unwrap().contains("safety.deny[0]"),
            "{r}"
        );
    }
    // The JSON answer's usage is the upstream's own, not an estimate.
    assert!(
        stopped
            .iter()
            .any(|r| r["stream"] == false && r["estimated"] == false),
        "{stopped:?}"
    );
}

#[tokio::test]
async fn moderation_refuses_what_it_flags_and_on_error_decides_when_it_cannot_say() {
    let up = Upstream::start("echo").await;
    up.always(Reply::Echo);
    let moder = Upstream::start("moder").await;
    let moderation = |on_error: &str| {
        format!("moderation: {{channel: moder, model: omni-moderation-latest, timeout: 300ms, on_error: {on_error}}}")
    };
    let cfg = Config::new()
        .openai("echo", &up, "")
        .channel_at(
            "moder",
            "openai",
            &moder.url(),
            "models: [omni-moderation-latest], keys: [sk-mod]",
        )
        .gateway(&format!(
            "name: default, path: /v1, safety: {{{}}}",
            moderation("closed")
        ))
        .gateway(&format!(
            "name: open, path: /open, masking: {{detectors: [email]}}, safety: {{{}}}",
            moderation("open")
        ))
        .build();
    let weir = Weir::start(&cfg).await;
    let client = reqwest::Client::new();
    let url = weir.url("/v1/chat/completions");
    let (status, body) = post(&client, &url, &ask("hello there", false)).await;
    assert_eq!(status, 200, "{body}");
    let seen = moder.seen().last().unwrap().clone();
    assert_eq!(seen.path, "/v1/moderations");
    assert_eq!(seen.authorization.as_deref(), Some("Bearer sk-mod"));
    assert_eq!(seen.body["model"], "omni-moderation-latest");
    assert!(
        seen.body["input"].as_str().unwrap().contains("hello there"),
        "{:?}",
        seen.body
    );
    let (status, body) = post(&client, &url, &ask("please FLAG ME now", true)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_code(&body), "content_filter");
    assert!(
        body.contains("violence"),
        "the flagged category is named: {body}"
    );
    assert_eq!(up.calls(), 1, "a flagged request reaches no channel");
    // The moderation endpoint fails, then is too slow: `closed` refuses both.
    moder.always(Reply::Status(500));
    let (status, body) = post(&client, &url, &ask("hello", false)).await;
    assert_eq!(
        (status, error_code(&body)),
        (503, "moderation_unavailable".into()),
        "{body}"
    );
    assert!(body.contains("HTTP 500"), "{body}");
    moder.always(Reply::Delay(std::time::Duration::from_secs(3)));
    let (status, body) = post(&client, &url, &ask("hello", false)).await;
    assert_eq!(
        (status, error_code(&body)),
        (503, "moderation_unavailable".into()),
        "{body}"
    );
    assert!(body.contains("within 300ms"), "{body}");
    // `open` lets it through; the moderator gets the masked text.
    let open = weir.url("/open/chat/completions");
    let (status, body) = post(&client, &open, &ask("mail me at li.si@example.com", false)).await;
    assert_eq!(status, 200, "{body}");
    let seen = moder.seen().last().unwrap().clone();
    let input = seen.body["input"].as_str().unwrap();
    assert!(
        input.contains("[EMAIL_1]") && !input.contains("li.si@example.com"),
        "{input}"
    );
    let m = weir
        .wait_metric("weir_safety_total", &[("rule", "unavailable_closed")], 2.0)
        .await;
    assert_eq!(
        metric_sum(
            &m,
            "weir_safety_total",
            &[("stage", "moderation"), ("rule", "unavailable_open")]
        ),
        1.0
    );
    assert_eq!(
        metric_sum(
            &m,
            "weir_safety_total",
            &[("stage", "request"), ("rule", "moderation")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_bad_safety_config_names_its_field() {
    let up = Upstream::start("echo").await;
    let check = |gateway: &str| {
        let cfg = Config::new()
            .openai("echo", &up, "")
            .gateway(gateway)
            .build();
        let dir = tempfile::tempdir().unwrap();
        let (ok, out) = weir_check(dir.path(), &cfg, "");
        assert!(!ok, "{out}");
        out
    };
    let out = check("name: default, path: /v1, safety: {patterns: ['(unclosed']}");
    assert!(out.contains("gateways[0].safety.patterns[0]:"), "{out}");
    let out = check("name: default, path: /v1, safety: {moderation: {channel: nope}}");
    assert!(
        out.contains("gateways[0].safety.moderation.channel: no channel is named `nope`"),
        "{out}"
    );
    let out = check("name: default, path: /v1, safety: {deny: [x], on_error: open}");
    assert!(out.contains("on_error"), "{out}");
}

#[tokio::test]
async fn moderation_can_judge_json_answers_too() {
    let up = Upstream::start("echo").await;
    up.always(Reply::Echo);
    let moder = Upstream::start("moder").await;
    let cfg = Config::new()
        .openai("echo", &up, "")
        .channel_at("moder", "openai", &moder.url(), "models: [omni-moderation-latest]")
        .gateway("name: default, path: /v1, masking: {detectors: [email]}, safety: {requests: false, moderation: {channel: moder, answers: true}}")
        .build();
    let weir = Weir::start(&cfg).await;
    let client = reqwest::Client::new();
    let url = weir.url("/v1/chat/completions");
    let (status, body) = post(&client, &url, &ask("FLAG ME, says x@y.example", false)).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "content_filter", "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], Value::Null);
    assert!(v["usage"]["total_tokens"].as_u64().unwrap() > 0);
    // Requests are not judged here; the answer went masked to the moderator.
    let seen = moder.seen();
    assert_eq!(seen.len(), 1);
    let input = seen[0].body["input"].as_str().unwrap();
    assert!(
        input.contains("[EMAIL_1]") && !input.contains("x@y.example"),
        "{input}"
    );
    let (_, body) = post(&client, &url, &ask("all fine", false)).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "all fine");
    let m = weir
        .wait_metric(
            "weir_safety_total",
            &[("stage", "answer"), ("rule", "moderation")],
            1.0,
        )
        .await;
    assert!(m.contains("weir_safety_total"));
}
