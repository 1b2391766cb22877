#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! Deep thinking and web search: one switch each (`reasoning_effort` and
//! `web_search_options` per request, `thinking` and `web_search` per gateway),
//! said to each provider in its own terms, refused where the provider has no
//! such thing, with reasoning and citations coming back in OpenAI's shape and
//! thinking tokens billed.

mod common;

use common::*;
use serde_json::{json, Value};

struct Ups {
    an: Upstream,
    ge: Upstream,
    az: Upstream,
    oa: Upstream,
}

async fn setup() -> (Ups, Weir) {
    let ups = Ups {
        an: Upstream::start("an").await,
        ge: Upstream::start("ge").await,
        az: Upstream::start("az").await,
        oa: Upstream::start("oa").await,
    };
    let cfg = Config::new()
        .channel_at(
            "an",
            "anthropic",
            &ups.an.url(),
            "models: [claude], keys: [a]",
        )
        .channel_at("ge", "gemini", &ups.ge.url(), "models: [gem], keys: [g]")
        .channel_at("az", "azure", &ups.az.url(), "models: [azm], keys: [z]")
        .channel_at("oa", "openai", &ups.oa.url(), "models: [gpt]")
        .gateway("name: default, path: /v1")
        .gateway("name: deep, path: /deep/v1, thinking: high, web_search: true")
        .build();
    let weir = Weir::start(&cfg).await;
    (ups, weir)
}

fn ask(model: &str, stream: bool, extra: Value) -> Value {
    let mut body = json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "News?"}]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// Reasoning, text and annotations read from a JSON answer or a stream.
fn read(body: &str, stream: bool) -> (String, String, Vec<Value>) {
    if !stream {
        let v: Value = serde_json::from_str(body).unwrap();
        let m = &v["choices"][0]["message"];
        let notes = m["annotations"].as_array().cloned().unwrap_or_default();
        return (
            m["reasoning_content"].as_str().unwrap_or("").into(),
            m["content"].as_str().unwrap_or("").into(),
            notes,
        );
    }
    let (mut r, mut t, mut a) = (String::new(), String::new(), Vec::new());
    for d in sse_data(body) {
        let Ok(v) = serde_json::from_str::<Value>(&d) else {
            continue;
        };
        let delta = &v["choices"][0]["delta"];
        r.push_str(delta["reasoning_content"].as_str().unwrap_or(""));
        t.push_str(delta["content"].as_str().unwrap_or(""));
        a.extend(delta["annotations"].as_array().cloned().unwrap_or_default());
    }
    (r, t, a)
}

#[tokio::test]
async fn thinking_and_search_reach_each_provider_in_its_own_terms() {
    let (ups, weir) = setup().await;
    let client = reqwest::Client::new();
    let url = weir.url("/v1/chat/completions");
    let extra =
        json!({"reasoning_effort": "low", "web_search_options": {"search_context_size": "high"}});
    for (model, up, name) in [("claude", &ups.an, "an"), ("gem", &ups.ge, "ge")] {
        for stream in [false, true] {
            let (status, body) = post(&client, &url, &ask(model, stream, extra.clone())).await;
            assert_eq!(status, 200, "{body}");
            let (reasoning, text, notes) = read(&body, stream);
            assert_eq!(reasoning, THOUGHT, "{model} stream={stream}: {body}");
            assert_eq!(text, format!("Hello from upstream {name}"));
            assert_eq!(notes[0]["type"], "url_citation", "{body}");
            assert_eq!(notes[0]["url_citation"]["url"], SOURCE_URL);
        }
        let sent = &up.seen()[0].body;
        match model {
            "claude" => {
                assert_eq!(
                    sent["thinking"],
                    json!({"type": "enabled", "budget_tokens": 1024})
                );
                assert_eq!(sent["tools"][0]["type"], "web_search_20250305");
                assert_eq!(sent["tools"][0]["max_uses"], 10);
            }
            _ => {
                assert_eq!(
                    sent["generationConfig"]["thinkingConfig"]["thinkingBudget"],
                    1024
                );
                assert_eq!(sent["tools"], json!([{"googleSearch": {}}]));
            }
        }
    }
    // Gemini's thinking tokens are completion tokens, and said apart.
    let (_, body) = post(&client, &url, &ask("gem", false, extra.clone())).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 4 + THOUGHT_TOKENS, "{v}");
    assert_eq!(
        v["usage"]["completion_tokens_details"]["reasoning_tokens"],
        THOUGHT_TOKENS
    );
}

#[tokio::test]
async fn a_gateway_s_switches_apply_where_the_request_says_nothing() {
    let (ups, weir) = setup().await;
    let client = reqwest::Client::new();
    let url = weir.url("/deep/v1/chat/completions");
    let (status, body) = post(&client, &url, &ask("claude", false, json!({}))).await;
    assert_eq!(status, 200, "{body}");
    let sent = &ups.an.seen()[0].body;
    assert_eq!(sent["thinking"]["budget_tokens"], 16384);
    assert_eq!(sent["tools"][0]["name"], "web_search");
    // An OpenAI channel takes the fields as they are; the request's own win.
    let (status, _) = post(
        &client,
        &url,
        &ask("gpt", false, json!({"reasoning_effort": "minimal"})),
    )
    .await;
    assert_eq!(status, 200);
    let sent = &ups.oa.seen()[0].body;
    assert_eq!(sent["reasoning_effort"], "minimal");
    assert_eq!(sent["web_search_options"], json!({}));
}

#[tokio::test]
async fn what_a_provider_cannot_do_is_refused_clearly() {
    let (ups, weir) = setup().await;
    let client = reqwest::Client::new();
    let url = weir.url("/v1/chat/completions");
    let (status, body) = post(
        &client,
        &url,
        &ask("azm", false, json!({"web_search_options": {}})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["param"], "web_search_options", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("Azure"),
        "{v}"
    );
    assert_eq!(ups.az.calls(), 0);
    let (status, body) = post(
        &client,
        &url,
        &ask("claude", false, json!({"reasoning_effort": "max"})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("reasoning_effort"), "{body}");
    assert_eq!(ups.an.calls(), 0);
    // Thinking on Azure passes: its reasoning models take `reasoning_effort`.
    let (status, _) = post(
        &client,
        &url,
        &ask("azm", false, json!({"reasoning_effort": "low"})),
    )
    .await;
    assert_eq!(status, 200);
}
