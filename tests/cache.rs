#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! The exact-match response cache (P10).

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

fn config(up: &Upstream, cache: &str) -> String {
    Config::new()
        .model("name: paid, price_in: 1000000, price_out: 1000000")
        .model("name: flagged, price_in: 1, price_out: 1, cache: true")
        .channel_at(
            "up",
            "openai",
            &up.url(),
            "models: [m, paid, free, flagged], retries: 0",
        )
        .section(&format!("cache: {cache}"))
        .build()
}

async fn ask(weir: &Weir, body: &Value) -> (u16, Option<String>, String) {
    let r = reqwest::Client::new()
        .post(weir.url("/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let cache = r
        .headers()
        .get("x-weir-cache")
        .map(|v| v.to_str().unwrap().to_string());
    (status, cache, r.text().await.unwrap())
}

#[tokio::test]
async fn identical_requests_make_one_upstream_call_and_hits_are_free() {
    let up = Upstream::start("c").await;
    let weir = Weir::start(&config(&up, "{models: '*', ttl: 1h}")).await;
    let body = chat("m", false);
    let (s, cache, first) = ask(&weir, &body).await;
    assert_eq!((s, cache.as_deref()), (200, Some("miss")));
    // The same request spelled differently (key order, `user`) is the same request.
    let respelled =
        json!({"user": "someone", "messages": body["messages"], "stream": false, "model": "m"});
    let (s, cache, second) = ask(&weir, &respelled).await;
    assert_eq!((s, cache.as_deref()), (200, Some("hit")));
    assert_eq!(first, second);
    assert_eq!(up.calls(), 1);
    // A different question is a different entry.
    let mut other = chat("m", false);
    other["messages"][0]["content"] = json!("Something else");
    assert_eq!(ask(&weir, &other).await.1.as_deref(), Some("miss"));
    assert_eq!(up.calls(), 2);
    let m = weir
        .wait_metric("weir_cache_total", &[("result", "hit")], 1.0)
        .await;
    assert_eq!(
        metric_sum(&m, "weir_cache_total", &[("result", "stored")]),
        2.0
    );
    // Tokens are counted for the two upstream answers only: the hit cost nothing.
    weir.wait_metric("weir_requests_total", &[("status", "2xx")], 3.0)
        .await;
    let m = weir.metrics().await;
    assert_eq!(
        metric_sum(&m, "weir_tokens_total", &[("direction", "out")]),
        8.0
    );
}

#[tokio::test]
async fn streams_are_replayed_as_sse_and_broken_ones_are_not_kept() {
    let up = Upstream::start("s").await;
    let weir = Weir::start(&config(&up, "{models: [m]}")).await;
    let body = chat("m", true);
    let (_, cache, first) = ask(&weir, &body).await;
    assert_eq!(cache.as_deref(), Some("miss"));
    let (_, cache, second) = ask(&weir, &body).await;
    assert_eq!(cache.as_deref(), Some("hit"));
    assert_eq!(first, second);
    assert!(second.ends_with("data: [DONE]\n\n") && !second.contains("\"usage\""));
    assert_eq!(up.calls(), 1);

    // A stream that breaks is never cached: the next one goes upstream again.
    let mut other = chat("m", true);
    other["messages"][0]["content"] = json!("cut me");
    up.script(&[Reply::Cut { after: 2 }]);
    up.set_chunk_delay(Duration::from_millis(20));
    let (_, _, broken) = ask(&weir, &other).await;
    assert!(broken.contains("\"error\""), "{broken}");
    let (_, cache, whole) = ask(&weir, &other).await;
    assert_eq!(cache.as_deref(), Some("miss"));
    assert!(whole.ends_with("data: [DONE]\n\n"));
    assert_eq!(up.calls(), 3);
    assert_eq!(ask(&weir, &other).await.1.as_deref(), Some("hit"));
    assert_eq!(up.calls(), 3);
}

#[tokio::test]
async fn answers_are_kept_apart_by_endpoint() {
    let up = Upstream::start("e").await;
    let weir = Weir::start(&config(&up, "{models: '*'}")).await;
    let client = reqwest::Client::new();
    let mut body = chat("m", false);
    body["prompt"] = "hi".into();
    // The same body to /v1/completions must not plant an answer for chat.
    let r = client
        .post(weir.url("/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-weir-cache"], "miss");
    let (_, cache, _) = ask(&weir, &body).await;
    assert_eq!(cache.as_deref(), Some("miss"));
    assert_eq!(up.calls(), 2);
}

#[tokio::test]
async fn entries_expire_after_their_ttl() {
    let up = Upstream::start("t").await;
    let weir = Weir::start(&config(&up, "{models: '*', ttl: 1s}")).await;
    let body = chat("m", false);
    ask(&weir, &body).await;
    assert_eq!(ask(&weir, &body).await.1.as_deref(), Some("hit"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(ask(&weir, &body).await.1.as_deref(), Some("miss"));
    assert_eq!(up.calls(), 2);
}

#[tokio::test]
async fn quick_modes_choose_the_models() {
    let up = Upstream::start("q").await;
    let weir = Weir::start(&config(&up, "{models: free}")).await;
    for _ in 0..2 {
        ask(&weir, &chat("free", false)).await;
        ask(&weir, &chat("paid", false)).await;
        ask(&weir, &chat("flagged", false)).await;
    }
    // `free` (priced 0) and `flagged` (cache: true) are cached; `paid` is not.
    let paid = up
        .seen()
        .iter()
        .filter(|s| s.body["model"] == "paid")
        .count();
    let free = up
        .seen()
        .iter()
        .filter(|s| s.body["model"] == "free")
        .count();
    let flagged = up
        .seen()
        .iter()
        .filter(|s| s.body["model"] == "flagged")
        .count();
    assert_eq!((paid, free, flagged), (2, 1, 1));
    // No cache section at all: nothing cached, no header.
    let up2 = Upstream::start("off").await;
    let off = Weir::start(&Config::new().openai("up", &up2, "").build()).await;
    assert_eq!(ask(&off, &chat("m", false)).await.1, None);
    ask(&off, &chat("m", false)).await;
    assert_eq!(up2.calls(), 2);
}

#[tokio::test]
async fn several_answers_per_request_are_kept() {
    let up = Upstream::start("n").await;
    let weir = Weir::start(&config(&up, "{models: '*', max_per_request: 2}")).await;
    let body = chat("m", false);
    for _ in 0..40 {
        assert_eq!(ask(&weir, &body).await.0, 200);
    }
    // Two slots, each filled once (the chance that 40 picks miss one slot is 2^-39).
    assert_eq!(up.calls(), 2);
}
