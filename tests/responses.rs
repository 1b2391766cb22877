#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! OpenAI's Responses API (`POST {gateway}/responses`) with the official `openai`
//! SDK as the client: passed through to an OpenAI channel (usage read from its
//! JSON and from `response.completed`), translated to and from chat for an
//! Anthropic and a Gemini channel, JSON and streams (the SDK's own stream
//! helper included).

mod common;

use common::*;
use serde_json::json;
use std::sync::atomic::Ordering;

#[tokio::test]
async fn the_openai_sdk_s_responses_are_served_by_every_kind_of_channel() {
    let (oa, an, ge) = (
        Upstream::start("oa").await,
        Upstream::start("an").await,
        Upstream::start("ge").await,
    );
    let cfg = Config::new()
        .channel_at("oa", "openai", &oa.url(), "models: [gpt]")
        .channel_at(
            "an",
            "anthropic",
            &an.url(),
            "models: [claude], keys: [sk-ant]",
        )
        .channel_at("ge", "gemini", &ge.url(), "models: [gem], keys: [g]")
        .gateway("name: default, path: /v1, auth: {method: database}")
        .build();
    let mut weir = Weir::start(&cfg).await;
    let (_, key) = weir
        .create_key(json!({"name": "codex", "models": ["*"]}))
        .await;
    let args = vec![
        weir.url("/v1"),
        key,
        "gpt".into(),
        "claude".into(),
        "gem".into(),
    ];
    let out = python_sdk("responses_sdk.py", args).await;
    for (model, name) in [("gpt", "oa"), ("claude", "an"), ("gem", "ge")] {
        let m = &out[model];
        let hello = format!("Hello from upstream {name}");
        assert_eq!(m["text"], hello, "{model}: {m}");
        assert_eq!(m["stream_text"], hello, "{model}: {m}");
        assert_eq!(m["helper_text"], hello, "{model}: {m}");
        assert_eq!(m["status"], "completed");
        assert_eq!(
            (&m["first"], &m["last"]),
            (&json!("response.created"), &json!("response.completed")),
            "{m}"
        );
        assert_eq!(m["usage"][1], 4, "{model}: {m}");
        assert_eq!(m["stream_usage"][1], 4, "{model}: {m}");
    }
    // Natively: the OpenAI channel got /v1/responses as the SDK sent it.
    let seen = oa.seen();
    assert!(
        seen.iter().all(|s| s.path == "/v1/responses"),
        "{:?}",
        seen.iter().map(|s| &s.path).collect::<Vec<_>>()
    );
    assert_eq!(seen[0].body["instructions"], "Be brief.");
    // Translated: Anthropic got Messages requests made from chat.
    assert!(an.seen().iter().all(|s| s.path == "/v1/messages"));
    assert_eq!(an.seen()[0].body["system"], "Be brief.");
    // Thinking, asked as `reasoning.effort`, comes back as a reasoning item.
    assert_eq!(out["reasoning"], json!([[THOUGHT], [THOUGHT]]), "{out}");
    // What chat cannot carry goes only to a channel that takes it natively.
    assert_eq!(
        out["untranslatable"],
        json!([400, "previous_response_id", "invalid_value"]),
        "{out}"
    );
    // Usage billed as each upstream reported it (the call log after a restart).
    assert!(weir.stop_gracefully().success());
    weir.restart().await;
    let logs = weir.admin_get("/admin/logs?limit=100").await;
    let rows = logs["data"].as_array().unwrap();
    for (channel, up) in [("oa", &oa), ("an", &an), ("ge", &ge)] {
        let billed: u64 = rows
            .iter()
            .filter(|r| r["channel"] == channel && r["status"] == 200)
            .map(|r| {
                assert_eq!(r["estimated"], false, "{r}");
                r["prompt_tokens"].as_u64().unwrap()
            })
            .sum();
        assert_eq!(
            billed,
            up.state.prompt_sent.load(Ordering::SeqCst),
            "{channel}"
        );
    }
}
