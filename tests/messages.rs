#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! Anthropic's Messages API inbound (`POST {gateway}/messages`,
//! `/messages/count_tokens`, keys in `x-api-key`), with the official `anthropic`
//! SDK as the client: natively to an Anthropic channel, translated to an OpenAI
//! and a Gemini channel, JSON and streams, usage as the upstreams reported it,
//! errors in Anthropic's shape.

mod common;

use common::*;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;

fn config(oa: &Upstream, an: &Upstream, ge: &Upstream) -> String {
    Config::new()
        .channel_at("oa", "openai", &oa.url(), "models: [gpt]")
        .channel_at("an", "anthropic", &an.url(), "models: [claude], keys: [sk-ant-up]")
        .channel_at("ge", "gemini", &ge.url(), "models: [gem], keys: [g-key]")
        .gateway("name: default, path: /v1, auth: {method: database}")
        // Masking changes the body: an Anthropic channel gets the translation.
        .gateway("name: masked, path: /masked/v1, auth: {method: database}, masking: {detectors: [email]}")
        .gateway("name: bodykey, path: /bk/v1, auth: {method: regex, key_from: 'body:user_id', regex: '^u-[0-9]+$'}")
        .build()
}

#[tokio::test]
async fn the_anthropic_sdk_is_served_by_every_kind_of_channel() {
    let (oa, an, ge) = (
        Upstream::start("oa").await,
        Upstream::start("an").await,
        Upstream::start("ge").await,
    );
    let weir = Weir::start(&config(&oa, &an, &ge)).await;
    let (_, key) = weir
        .create_key(json!({"name": "claude-code", "models": ["*"]}))
        .await;
    let base = weir.url("");
    let args = vec![
        base.clone(),
        key.clone(),
        "gpt".into(),
        "claude".into(),
        "gem".into(),
    ];
    let out = python_sdk("messages_sdk.py", args).await;
    for (model, name) in [("gpt", "oa"), ("claude", "an"), ("gem", "ge")] {
        let m = &out[model];
        let hello = format!("Hello from upstream {name}");
        assert_eq!(m["text"], hello, "{model}: {m}");
        assert_eq!(m["stream_text"], hello, "{model}: {m}");
        assert_eq!(m["model"], model);
        assert_eq!(
            (&m["stop"], &m["stream_stop"]),
            (&json!("end_turn"), &json!("end_turn")),
            "{m}"
        );
        // The upstream's own counts: 4 completion tokens, its prompt count.
        assert_eq!(m["usage"][1], 4, "{model}: {m}");
        assert_eq!(m["stream_usage"][1], 4, "{model}: {m}");
        assert!(m["count"].as_u64().unwrap() > 0, "{m}");
    }
    for (model, up) in [("gpt", &oa), ("claude", &an), ("gem", &ge)] {
        let m = &out[model];
        let reported = m["usage"][0].as_u64().unwrap() + m["stream_usage"][0].as_u64().unwrap();
        assert_eq!(
            reported,
            up.state.prompt_sent.load(Ordering::SeqCst),
            "{model}: {m}"
        );
    }
    // Natively: the Anthropic channel got the SDK's own body, with its key.
    let native: Vec<Seen> = an
        .seen()
        .into_iter()
        .filter(|s| s.path == "/v1/messages")
        .collect();
    assert_eq!(native.len(), 2);
    assert_eq!(
        native[0].headers.get("x-api-key").map(String::as_str),
        Some("sk-ant-up")
    );
    assert_eq!(
        native[0].body["system"],
        json!([{"type": "text", "text": "You are brief."}])
    );
    assert!(
        an.seen()
            .iter()
            .any(|s| s.path == "/v1/messages/count_tokens"),
        "counted natively"
    );
    // Translated: the OpenAI channel got a chat request.
    let chat = &oa.seen()[0];
    assert_eq!(chat.path, "/v1/chat/completions");
    assert_eq!(
        chat.body["messages"][0],
        json!({"role": "system", "content": "You are brief."})
    );
    // Errors in Anthropic's shape, typed as the SDK expects.
    let e = &out["errors"];
    assert_eq!(e["auth"], json!([401, "authentication_error"]), "{e}");
    assert_eq!(e["not_found"], json!([404, "not_found_error"]), "{e}");
    assert_eq!(e["bad"][0], 400, "{e}");
    assert!(e["bad"][2].as_str().unwrap().contains("max_tokens"), "{e}");
}

#[tokio::test]
async fn a_gateway_that_rewrites_bodies_sends_anthropic_channels_the_translation() {
    let (oa, an, ge) = (
        Upstream::start("oa").await,
        Upstream::start("an").await,
        Upstream::start("ge").await,
    );
    let weir = Weir::start(&config(&oa, &an, &ge)).await;
    let (_, key) = weir.create_key(json!({"name": "k", "models": ["*"]})).await;
    let client = reqwest::Client::new();
    for stream in [false, true] {
        let body = json!({"model": "claude", "max_tokens": 50, "stream": stream,
            "messages": [{"role": "user", "content": "mail li.si@example.com"}]});
        let r = client
            .post(weir.url("/masked/v1/messages"))
            .header("x-api-key", &key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        if stream {
            let types: Vec<String> = sse_data(&text)
                .iter()
                .map(|d| {
                    serde_json::from_str::<Value>(d).unwrap()["type"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect();
            assert_eq!(
                types.first().map(String::as_str),
                Some("message_start"),
                "{text}"
            );
            assert_eq!(
                types.last().map(String::as_str),
                Some("message_stop"),
                "{text}"
            );
        } else {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["content"][0]["text"], "Hello from upstream an", "{v}");
        }
    }
    let seen = an.seen();
    assert!(seen.iter().all(|s| s.path == "/v1/messages"));
    let sent = seen[0].body["messages"].to_string();
    assert!(
        sent.contains("[EMAIL_1]") && !sent.contains("li.si@example.com"),
        "{sent}"
    );
    // Natively, the client's beta header goes along; a key in the body is
    // admitted and taken out of what the channel gets.
    let body = json!({"model": "claude", "max_tokens": 50, "user_id": "u-7",
        "messages": [{"role": "user", "content": "hi"}]});
    let r = client
        .post(weir.url("/bk/v1/messages"))
        .header("anthropic-beta", "files-api-2025-04-14")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let last = an.seen().last().unwrap().clone();
    assert_eq!(
        last.headers.get("anthropic-beta").map(String::as_str),
        Some("files-api-2025-04-14")
    );
    assert!(last.body.get("user_id").is_none(), "{:?}", last.body);
    let wrong = json!({"model": "claude", "max_tokens": 5, "user_id": "x", "messages": []});
    let r = client
        .post(weir.url("/bk/v1/messages"))
        .json(&wrong)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // A bad body is refused in Anthropic's shape, naming the field.
    let r = client
        .post(weir.url("/v1/messages"))
        .header("x-api-key", &key)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
}

#[tokio::test]
async fn messages_answers_are_cached_as_the_client_reads_them() {
    let oa = Upstream::start("oa").await;
    let cfg = Config::new()
        .channel_at("oa", "openai", &oa.url(), "models: [gpt]")
        .gateway("name: default, path: /v1")
        .section("cache: {models: '*'}")
        .build();
    let weir = Weir::start(&cfg).await;
    let client = reqwest::Client::new();
    let ask =
        json!({"model": "gpt", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]});
    let mut answers = Vec::new();
    for _ in 0..2 {
        let r = client
            .post(weir.url("/v1/messages"))
            .json(&ask)
            .send()
            .await
            .unwrap();
        let cache = r
            .headers()
            .get("x-weir-cache")
            .map(|v| v.to_str().unwrap().to_string());
        answers.push((cache, r.json::<Value>().await.unwrap()));
    }
    assert_eq!(answers[0].0.as_deref(), Some("miss"));
    assert_eq!(answers[1].0.as_deref(), Some("hit"));
    assert_eq!(answers[1].1["type"], "message", "{:?}", answers[1]);
    assert_eq!(answers[0].1, answers[1].1);
    assert_eq!(oa.calls(), 1);
    // The same question as a chat request is another entry, in chat's shape.
    let chat =
        json!({"model": "gpt", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]});
    let (status, body) = post(&client, &weir.url("/v1/chat/completions"), &chat).await;
    assert_eq!(status, 200);
    assert!(body.contains("chat.completion"), "{body}");
    assert_eq!(oa.calls(), 2);
}
