#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! Provider adapters (P8) and request shaping (G6, G7): a client that speaks only
//! OpenAI reaches Azure, Anthropic and Gemini mocks that answer in each provider's
//! documented wire format.

mod common;

use common::*;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;

/// One channel of type `kind` on `up`, named after its type, with one key.
fn channel_of(kind: &str, up: &Upstream) -> Config {
    Config::new().channel_at(
        kind,
        kind,
        &up.url(),
        &format!("keys: [{kind}-key-0123456789], models: [m], retries: 0"),
    )
}

fn finish_of_stream(body: &str) -> Option<String> {
    sse_data(body)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find_map(|v| {
            v["choices"][0]["finish_reason"]
                .as_str()
                .map(str::to_string)
        })
}

/// JSON and stream answers through one provider: content, finish reason, usage
/// (hidden from a client that did not ask, exact in the metrics).
async fn round_trip(kind: &str) -> (Upstream, Weir) {
    let up = Upstream::start(kind).await;
    let weir = Weir::start(&channel_of(kind, &up).build()).await;
    let client = reqwest::Client::new();
    let url = weir.url("/v1/chat/completions");
    let mut body = chat("m", false);
    body["messages"] = json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]);

    let (s, text) = post(&client, &url, &body).await;
    assert_eq!(s, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "m");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        format!("Hello from upstream {kind}")
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["completion_tokens"], 4);

    body["stream"] = json!(true);
    let (s, text) = post(&client, &url, &body).await;
    assert_eq!(s, 200, "{text}");
    assert_eq!(text_of_stream(&text), format!("Hello from upstream {kind}"));
    assert_eq!(finish_of_stream(&text).as_deref(), Some("stop"));
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(
        !text.contains("\"usage\""),
        "usage reached a client that did not ask: {text}"
    );

    body["stream_options"] = json!({"include_usage": true});
    let (_, text) = post(&client, &url, &body).await;
    let usage: Vec<Value> = sse_data(&text)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(|v| v.get("usage").is_some_and(|u| !u.is_null()))
        .collect();
    assert_eq!(usage.len(), 1, "{text}");
    assert_eq!(usage[0]["usage"]["completion_tokens"], 4);

    let m = weir
        .wait_metric("weir_requests_total", &[("status", "2xx")], 3.0)
        .await;
    let sent_in = up.state.prompt_sent.load(Ordering::SeqCst) as f64;
    let sent_out = up.state.completion_sent.load(Ordering::SeqCst) as f64;
    assert_eq!(
        metric_sum(&m, "weir_tokens_total", &[("direction", "in")]),
        sent_in
    );
    assert_eq!(
        metric_sum(&m, "weir_tokens_total", &[("direction", "out")]),
        sent_out
    );
    assert!(!weir.log().contains("estimated=true"));
    (up, weir)
}

/// 400 comes back as the provider said it, in OpenAI's shape; 401, 429 and 500 are
/// judged (key rejected, rate limited, failed) and answered by weir.
async fn errors(kind: &str, up: &Upstream, weir: &Weir, provider_message: &str) {
    let client = reqwest::Client::new();
    let url = weir.url("/v1/chat/completions");
    up.script(&[Reply::Status(400)]);
    let (s, text) = post(&client, &url, &chat("m", false)).await;
    assert_eq!(s, 400, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error", "{text}");
    assert_eq!(v["error"]["message"], format!("{provider_message} 400"));
    for (code, status, openai_code) in [
        (401, 502, "upstream_failed"),
        (429, 429, "upstream_rate_limited"),
        (500, 502, "upstream_failed"),
    ] {
        up.script(&[Reply::Status(code)]);
        let (s, text) = post(&client, &url, &chat("m", false)).await;
        assert_eq!(s, status, "{kind} {code}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["code"], openai_code, "{text}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("HTTP {code}")),
            "{text}"
        );
    }
}

#[tokio::test]
async fn anthropic_messages_api() {
    let (up, weir) = round_trip("anthropic").await;
    let seen = up.seen();
    assert!(seen.iter().all(|s| s.path == "/v1/messages"));
    let first = &seen[0];
    assert_eq!(first.headers["x-api-key"], "anthropic-key-0123456789");
    assert_eq!(first.headers["anthropic-version"], "2023-06-01");
    assert!(!first.headers.contains_key("authorization"));
    assert_eq!(first.body["system"], "Be brief.");
    assert_eq!(first.body["max_tokens"], 4096);
    assert_eq!(
        first.body["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "Say hello"}]}])
    );
    errors("anthropic", &up, &weir, "anthropic mock says").await;
    weir.wait_log("HTTP 401 (authentication_error)").await;
}

#[tokio::test]
async fn gemini_generate_content() {
    let (up, weir) = round_trip("gemini").await;
    let seen = up.seen();
    assert_eq!(seen[0].path, "/v1beta/models/m:generateContent");
    assert_eq!(seen[1].path, "/v1beta/models/m:streamGenerateContent");
    assert_eq!(seen[1].query.as_deref(), Some("alt=sse"));
    assert_eq!(seen[0].headers["x-goog-api-key"], "gemini-key-0123456789");
    assert_eq!(
        seen[0].body["systemInstruction"],
        json!({"parts": [{"text": "Be brief."}]})
    );
    assert_eq!(
        seen[0].body["contents"],
        json!([{"role": "user", "parts": [{"text": "Say hello"}]}])
    );
    errors("gemini", &up, &weir, "gemini mock says").await;
}

#[tokio::test]
async fn a_gemini_key_it_calls_invalid_hands_over_to_the_next_key() {
    let up = Upstream::start("gemini").await;
    let cfg = Config::new().channel_at(
        "g",
        "gemini",
        &up.url(),
        "keys: [gemini-bad-key-00000001, gemini-good-key-0000002], models: [m], retries: 0",
    );
    let weir = Weir::start(&cfg.build()).await;
    // Gemini answers a bad API key with 400 API_KEY_INVALID, not 401.
    up.script(&[Reply::BadKey]);
    let (s, text) = post(
        &reqwest::Client::new(),
        &weir.url("/v1/chat/completions"),
        &chat("m", false),
    )
    .await;
    assert_eq!(s, 200, "{text}");
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert_ne!(
        seen[0].headers["x-goog-api-key"],
        seen[1].headers["x-goog-api-key"]
    );
    weir.wait_metric(
        "weir_upstream_attempts_total",
        &[("outcome", "key_rejected")],
        1.0,
    )
    .await;
}

#[tokio::test]
async fn translated_answers_are_cached_like_any_other() {
    let up = Upstream::start("anthropic").await;
    let cfg = channel_of("anthropic", &up).section("cache: {models: '*'}");
    let weir = Weir::start(&cfg.build()).await;
    let client = reqwest::Client::new();
    for (i, want) in ["miss", "hit"].iter().enumerate() {
        let r = client
            .post(weir.url("/v1/chat/completions"))
            .json(&chat("m", false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-weir-cache"], *want, "request {i}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            v["choices"][0]["message"]["content"],
            "Hello from upstream anthropic"
        );
    }
    assert_eq!(up.calls(), 1);
}

#[tokio::test]
async fn azure_deployments() {
    let up = Upstream::start("azure").await;
    let cfg = Config::new().channel_at(
        "az",
        "azure",
        &up.url(),
        "keys: [az-key-0123456789], models: [gpt-4o-deploy], model_mapping: ['gpt-4o>gpt-4o-deploy'], api_version: '2024-06-01'",
    );
    let weir = Weir::start(&cfg.build()).await;
    let client = reqwest::Client::new();
    let (s, text) = post(
        &client,
        &weir.url("/v1/chat/completions"),
        &chat("gpt-4o", true),
    )
    .await;
    assert_eq!(s, 200, "{text}");
    assert_eq!(text_of_stream(&text), "Hello from upstream azure");
    let (s, _) = post(
        &client,
        &weir.url("/v1/embeddings"),
        &json!({"model": "gpt-4o", "input": "x"}),
    )
    .await;
    assert_eq!(s, 200);
    let seen = up.seen();
    assert_eq!(
        seen[0].path,
        "/openai/deployments/gpt-4o-deploy/chat/completions"
    );
    assert_eq!(seen[0].query.as_deref(), Some("api-version=2024-06-01"));
    assert_eq!(seen[0].headers["api-key"], "az-key-0123456789");
    assert_eq!(seen[1].path, "/openai/deployments/gpt-4o-deploy/embeddings");
    weir.wait_metric("weir_tokens_total", &[("direction", "out")], 4.0)
        .await;
}

#[tokio::test]
async fn a_provider_stream_cut_midway_ends_with_an_error_event() {
    let up = Upstream::start("anthropic").await;
    up.always(Reply::Cut { after: 5 });
    up.set_chunk_delay(std::time::Duration::from_millis(30));
    let weir = Weir::start(&channel_of("anthropic", &up).build()).await;
    let (s, text) = post(
        &reqwest::Client::new(),
        &weir.url("/v1/chat/completions"),
        &chat("m", true),
    )
    .await;
    assert_eq!(s, 200);
    assert!(text_of_stream(&text).starts_with("Hello"), "{text}");
    let last: Value = serde_json::from_str(sse_data(&text).last().unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "upstream_error", "{text}");
    assert!(!text.contains("[DONE]"));
}

#[tokio::test]
async fn endpoints_a_provider_lacks_are_refused_clearly() {
    let up = Upstream::start("anthropic").await;
    let weir = Weir::start(&channel_of("anthropic", &up).build()).await;
    let (s, text) = post(
        &reqwest::Client::new(),
        &weir.url("/v1/embeddings"),
        &json!({"model": "m", "input": "x"}),
    )
    .await;
    assert_eq!(s, 400, "{text}");
    assert!(text.contains("embeddings"), "{text}");
    assert_eq!(up.calls(), 0);
}

#[tokio::test]
async fn prompt_templates_and_parameter_rules_shape_what_the_upstream_gets() {
    let up = Upstream::start("shape").await;
    let cfg = Config::new()
        .channel_at("shape", "openai", &up.url(), "models: [deepseek, qwen2-7b]")
        .gateway(concat!(
            "name: team, path: /v1, ",
            "prompt_template: 'Answer as an expert. Question: {{query}}', ",
            "param_map: {model: [deepseek, qwen2-7b], 'response_format.type': [text, json_object]}, ",
            "param_fixed: {temperature: 0.2, 'metadata.team': a}",
        ));
    let weir = Weir::start(&cfg.build()).await;
    let client = reqwest::Client::new();
    let body = json!({
        "model": "deepseek", "temperature": 1.5, "response_format": {"type": "text"},
        "messages": [
            {"role": "user", "content": "earlier question"},
            {"role": "assistant", "content": "earlier answer"},
            {"role": "user", "content": [{"type": "text", "text": "What is weir?"}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
        ],
    });
    assert_eq!(
        post(&client, &weir.url("/v1/chat/completions"), &body)
            .await
            .0,
        200
    );
    let got = &up.seen()[0].body;
    assert_eq!(got["model"], "qwen2-7b");
    assert_eq!(got["temperature"], 0.2);
    assert_eq!(got["metadata"]["team"], "a");
    assert_eq!(got["response_format"]["type"], "json_object");
    assert_eq!(got["messages"][0]["content"], "earlier question");
    assert_eq!(
        got["messages"][2]["content"][0]["text"],
        "Answer as an expert. Question: What is weir?"
    );
    assert_eq!(got["messages"][2]["content"][1]["type"], "image_url");
    // A request for qwen2-7b is left as it is by param_map.
    let mut plain = chat("qwen2-7b", false);
    plain["messages"][0]["content"] = json!("hi");
    assert_eq!(
        post(&client, &weir.url("/v1/chat/completions"), &plain)
            .await
            .0,
        200
    );
    let got = &up.seen()[1].body;
    assert_eq!(got["model"], "qwen2-7b");
    assert_eq!(
        got["messages"][0]["content"],
        "Answer as an expert. Question: hi"
    );
}

/// G7 on `model` applies before routing: the seed's own example sends every request
/// for the old name to the service of the new one; grants and the cache key follow
/// the mapped name.
#[tokio::test]
async fn a_param_map_on_model_routes_to_the_mapped_service() {
    let up = Upstream::start("g7").await;
    let cfg = Config::new()
        .channel_at("g7", "openai", &up.url(), "models: [g7-new]")
        .gateway(
            "name: team, path: /v1, auth: {method: database}, param_map: {model: [g7-old, g7-new]}",
        )
        .section("cache: {models: '*', ttl: 1h}");
    let weir = Weir::start(&cfg.build()).await;
    let (_, key) = weir
        .create_key(json!({"name": "k", "models": ["g7-new"]}))
        .await;
    let ask = |model: &str| {
        let (url, key, body) = (
            weir.url("/v1/chat/completions"),
            key.clone(),
            chat(model, false),
        );
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap();
            let cache = r
                .headers()
                .get("x-weir-cache")
                .map(|v| v.to_str().unwrap().to_string());
            (r.status().as_u16(), cache)
        }
    };
    assert_eq!(ask("g7-old").await, (200, Some("miss".into())));
    assert_eq!(up.seen()[0].body["model"], "g7-new");
    // The same question under the new name is the same cached request.
    assert_eq!(ask("g7-new").await, (200, Some("hit".into())));
    assert_eq!(up.calls(), 1);
    // A name the map does not know is still unknown.
    assert_eq!(ask("g7-other").await.0, 404);
}
