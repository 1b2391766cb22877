#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! Hot reload (A2) and the admin listener (A1).

mod common;

use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn editing_the_file_adds_a_channel() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let first = Config::new().openai("a", &a, "");
    let weir = Weir::start(&first.build()).await;
    let client = reqwest::Client::new();
    let url = weir.url("/v1/chat/completions");
    assert_eq!(post(&client, &url, &chat("n", false)).await.0, 404);

    let second = first.channel_at("b", "openai", &b.url(), "models: [n]");
    weir.write_config(&second.build(), "");
    wait_until("the watcher to load channel b", || async {
        post(&client, &url, &chat("n", false)).await.0 == 200
    })
    .await;
    assert!(b.calls() >= 1);
    let cfg = weir.admin_get("/admin/config").await;
    assert_eq!(cfg["config"]["channels"].as_array().unwrap().len(), 2);
    assert!(cfg["version"].as_u64().unwrap() >= 2);
    weir.wait_log("config reloaded").await;
}

#[tokio::test]
async fn a_broken_file_is_refused_and_the_old_config_keeps_serving() {
    let a = Upstream::start("a").await;
    let good = Config::new()
        .openai("a", &a, "keys: [sk-admin-view-secret-01]")
        .build();
    let weir = Weir::start(&good).await;
    let client = reqwest::Client::new();
    let url = weir.url("/v1/chat/completions");

    // A bad field: refused with its path.
    let bad = good.replace("models: [m]", "models: [m], weight: heavy");
    weir.write_config(&bad, "");
    let r = client
        .post(weir.admin_url("/admin/reload"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("channels[0].weight"), "{msg}");
    assert_eq!(post(&client, &url, &chat("m", false)).await.0, 200);

    // Not YAML at all, picked up by the watcher: refused, still serving.
    weir.write_raw("channels: [\n  {{{ nope");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(post(&client, &url, &chat("m", false)).await.0, 200);
    let m = weir.metrics().await;
    assert!(metric_sum(&m, "weir_config_reloads_total", &[("result", "error")]) >= 2.0);
    assert_eq!(metric_sum(&m, "weir_config_version", &[]), 1.0);

    // The admin API shows the config without secrets and needs the admin key.
    let cfg = weir.admin_get("/admin/config").await.to_string();
    assert!(
        !cfg.contains("sk-admin-view-secret") && !cfg.contains(ADMIN_KEY),
        "{cfg}"
    );
    let r = client
        .get(weir.admin_url("/admin/config"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .get(weir.admin_url("/admin/config"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "authentication_error");

    // Fixed file: reload works again.
    weir.write_config(&good, "");
    let r = client
        .post(weir.admin_url("/admin/reload"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn sighup_reloads() {
    let a = Upstream::start("a").await;
    let weir = Weir::start(&Config::new().openai("a", &a, "").build()).await;
    let client = reqwest::Client::new();
    // Change only through SIGHUP: write the file under another name and move it in
    // place would wake the watcher too, so compare versions instead.
    let before = weir.admin_get("/admin/config").await["version"]
        .as_u64()
        .unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &weir.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_until("SIGHUP reload", || async {
        weir.admin_get("/admin/config").await["version"]
            .as_u64()
            .unwrap()
            > before
    })
    .await;
    weir.wait_log("trigger=\"sighup\"").await;
    assert_eq!(
        post(
            &client,
            &weir.url("/v1/chat/completions"),
            &chat("m", false)
        )
        .await
        .0,
        200
    );
}

#[tokio::test]
async fn reloads_during_a_burst_fail_no_request() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    a.set_chunk_delay(Duration::from_millis(5));
    b.set_chunk_delay(Duration::from_millis(5));
    let only_a = Config::new().openai("a", &a, "").build();
    let both = Config::new()
        .openai("a", &a, "weight: 2")
        .openai("b", &b, "priority: 1")
        .build();
    let weir = Weir::start(&only_a).await;
    let client = reqwest::Client::new();
    let url = weir.url("/v1/chat/completions");

    let workers: Vec<_> = (0..16)
        .map(|i| {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let mut failures = Vec::new();
                for _ in 0..25 {
                    let (status, body) = post(&client, &url, &chat("m", i % 2 == 0)).await;
                    if status != 200 || (i % 2 == 0 && !body.ends_with("data: [DONE]\n\n")) {
                        failures.push(format!("{status}: {body}"));
                    }
                }
                failures
            })
        })
        .collect();
    for i in 0..10 {
        weir.write_config(if i % 2 == 0 { &both } else { &only_a }, "");
        let r = client
            .post(weir.admin_url("/admin/reload"))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    assert_eq!(a.calls() + b.calls(), 16 * 25);
    let m = weir.metrics().await;
    assert!(metric_sum(&m, "weir_config_reloads_total", &[("result", "ok")]) >= 10.0);
}

#[tokio::test]
async fn check_names_the_bad_field_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "channels:\n  - {name: a, type: mock, models: [m]}\n  - {name: b, type: mock, models: [m], weight: x}\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("channels[1].weight"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["serve", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("channels[1].weight"));
}
