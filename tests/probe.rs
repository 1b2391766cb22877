#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! Channel tests (A5): on demand through the admin API, one real request per model
//! through the channel's adapter, not billed; and the background probe that admits
//! a suspended channel again once it passes.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test]
async fn a_test_reports_each_model_and_bills_nothing() {
    let a = Upstream::start("t").await;
    let body = Config::new()
        .channel_at(
            "c",
            "openai",
            &a.url(),
            "models: [m, n, text-embed-1], keys: [sk-test-channel-key-0001]",
        )
        .gateway("name: default, path: /v1")
        .build();
    let weir = Weir::start(&body).await;
    a.script(&[Reply::Ok, Reply::Status(500), Reply::Ok]);
    let (status, v) = weir
        .admin("POST", "/admin/channels/c/test", Some(json!({})))
        .await;
    assert_eq!(status, 200, "{v}");
    let results = v["results"].as_array().unwrap();
    let summary: Vec<(&str, bool, Option<u64>)> = results
        .iter()
        .map(|r| {
            (
                r["model"].as_str().unwrap(),
                r["ok"].as_bool().unwrap(),
                r["status"].as_u64(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("m", true, Some(200)),
            ("n", false, Some(500)),
            ("text-embed-1", true, Some(200))
        ]
    );
    assert!(
        results[1]["error"].as_str().unwrap().contains("HTTP 500"),
        "{v}"
    );
    assert!(results.iter().all(|r| r["latency_ms"].is_u64()));
    let seen = a.seen();
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(seen[0].body["max_tokens"], 1);
    assert_eq!(seen[2].path, "/v1/embeddings");
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some("Bearer sk-test-channel-key-0001")
    );
    // Nothing billed, nothing in the call log.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(weir.admin_get("/admin/logs").await["data"], json!([]));
    // One model, by name; an unknown one is refused before any call.
    let (status, v) = weir
        .admin(
            "POST",
            "/admin/channels/c/test",
            Some(json!({"models": ["n"]})),
        )
        .await;
    assert_eq!((status, v["results"].as_array().unwrap().len()), (200, 1));
    let (status, v) = weir
        .admin(
            "POST",
            "/admin/channels/c/test",
            Some(json!({"models": ["zzz"]})),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    let (status, _) = weir.admin("POST", "/admin/channels/nope/test", None).await;
    assert_eq!(status, 404);
    let (status, _) = weir
        .admin("POST", "/admin/channels/c/test", Some(json!({"colour": 1})))
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_suspended_channel_comes_back_when_its_probe_passes() {
    let a = Upstream::start("p").await;
    let body = Config::new()
        .openai("only", &a, "retries: 0")
        .gateway("name: default, path: /v1")
        .build();
    let weir = Weir::start_with_server(
        &body,
        "  health: {failures: 1, cooldown: 60s, max_cooldown: 60s, probe: 200ms}\n",
    )
    .await;
    let client = reqwest::Client::new();
    let url = weir.url("/v1/chat/completions");
    a.script(&[Reply::Status(500)]);
    assert_eq!(post(&client, &url, &chat("m", false)).await.0, 502);
    let channels = weir.admin_get("/admin/channels").await;
    assert_eq!(
        channels["channels"][0]["health"]["state"], "suspended",
        "{channels}"
    );
    // The upstream works again; the cooldown is a minute, the probe 200 ms.
    let mut back = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let v: Value = weir.admin_get("/admin/channels").await;
        if v["channels"][0]["health"]["state"] != "suspended" {
            assert_eq!(v["channels"][0]["probe"]["readmitted"], true, "{v}");
            back = true;
            break;
        }
    }
    assert!(back, "the probe never admitted the channel again");
    assert_eq!(post(&client, &url, &chat("m", false)).await.0, 200);
    let m = weir.metrics().await;
    assert!(metric_sum(&m, "weir_channel_probes_total", &[("result", "ok")]) >= 1.0);
}
