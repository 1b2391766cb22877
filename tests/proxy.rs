#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! The request path end to end: a real weir process in front of a mock upstream that
//! speaks OpenAI JSON and SSE.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

fn one_channel(up: &Upstream, extra: &str) -> String {
    Config::new().openai("up", up, extra).build()
}

#[tokio::test]
async fn json_and_stream_answers_pass_through_with_usage() {
    let up = Upstream::start("a").await;
    let weir = Weir::start(&one_channel(&up, "keys: [sk-test-key-000000001]")).await;
    let client = reqwest::Client::new();

    let (status, body) = post(
        &client,
        &weir.url("/v1/chat/completions"),
        &chat("m", false),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Hello from upstream a"
    );
    assert_eq!(v["usage"]["completion_tokens"], 4);
    let seen = up.seen();
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some("Bearer sk-test-key-000000001")
    );

    let (status, body) = post(&client, &weir.url("/v1/chat/completions"), &chat("m", true)).await;
    assert_eq!(status, 200);
    let data = sse_data(&body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let text: String = data
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(text, "Hello from upstream a");

    // Embeddings and legacy completions reach the same upstream paths.
    let (status, _) = post(
        &client,
        &weir.url("/v1/embeddings"),
        &json!({"model": "m", "input": "x"}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = post(
        &client,
        &weir.url("/v1/completions"),
        &json!({"model": "m", "prompt": "x"}),
    )
    .await;
    assert_eq!(status, 200);
    let paths: Vec<String> = up.seen().iter().map(|s| s.path.clone()).collect();
    assert_eq!(&paths[2..], &["/v1/embeddings", "/v1/completions"]);
}

#[tokio::test]
async fn sse_chunks_arrive_as_they_are_sent() {
    let up = Upstream::start("slow").await;
    up.set_chunk_delay(std::time::Duration::from_millis(200));
    let weir = Weir::start(&one_channel(&up, "")).await;
    let client = reqwest::Client::new();
    let started = std::time::Instant::now();
    let mut r = client
        .post(weir.url("/v1/chat/completions"))
        .json(&chat("m", true))
        .send()
        .await
        .unwrap();
    let first = r.chunk().await.unwrap().unwrap();
    let first_at = started.elapsed();
    assert!(String::from_utf8_lossy(&first).contains("Hello"));
    while r.chunk().await.unwrap().is_some() {}
    let total = started.elapsed();
    // Seven events 200 ms apart: the first must not wait for the rest.
    assert!(total.as_millis() >= 1200, "total {total:?}");
    assert!(
        first_at.as_millis() < 800,
        "first chunk after {first_at:?} of {total:?}"
    );
}

#[tokio::test]
async fn streaming_usage_is_exact_and_hidden_when_not_asked_for() {
    let up = Upstream::start("u").await;
    let weir = Weir::start(&one_channel(&up, "")).await;
    let client = reqwest::Client::new();
    let url = weir.url("/v1/chat/completions");
    let bodies: Vec<Value> = (0..8)
        .map(|i| {
            let mut body = chat("m", true);
            body["messages"][0]["content"] = json!("x".repeat(150 * i));
            body
        })
        .collect();
    let requests = bodies.iter().map(|b| post(&client, &url, b));
    for (status, body) in futures_util::future::join_all(requests).await {
        assert_eq!(status, 200);
        assert!(
            !body.contains("usage"),
            "a usage chunk reached the client: {body}"
        );
        assert!(body.ends_with("data: [DONE]\n\n"));
    }
    // Weir asked the upstream for usage on the client's behalf.
    for s in up.seen() {
        assert_eq!(s.body["stream_options"]["include_usage"], true);
    }
    let m = weir
        .wait_metric("weir_requests_total", &[("status", "2xx")], 8.0)
        .await;
    let tin = metric_sum(&m, "weir_tokens_total", &[("direction", "in")]);
    let tout = metric_sum(&m, "weir_tokens_total", &[("direction", "out")]);
    assert_eq!(
        tin as u64,
        up.state
            .prompt_sent
            .load(std::sync::atomic::Ordering::SeqCst)
    );
    assert_eq!(
        tout as u64,
        up.state
            .completion_sent
            .load(std::sync::atomic::Ordering::SeqCst)
    );
    assert_eq!(tout, 32.0);

    // A client that asks for usage gets the usage chunk.
    let mut body = chat("m", true);
    body["stream_options"] = json!({"include_usage": true});
    let (_, text) = post(&client, &weir.url("/v1/chat/completions"), &body).await;
    assert!(text.contains("\"usage\""), "{text}");
    assert!(!weir.log().contains("estimated=true"));
}

#[tokio::test]
async fn missing_usage_is_estimated_with_a_tokenizer() {
    let up = Upstream::start("n").await;
    up.always(Reply::NoUsage);
    let weir = Weir::start(&one_channel(&up, "")).await;
    let (status, _) = post(
        &reqwest::Client::new(),
        &weir.url("/v1/chat/completions"),
        &chat("m", true),
    )
    .await;
    assert_eq!(status, 200);
    // "Hello from upstream n" is 4 tokens in o200k; the prompt "Say hello" 2 + framing.
    let m = weir
        .wait_metric("weir_tokens_total", &[("direction", "out")], 4.0)
        .await;
    assert!(metric_sum(&m, "weir_tokens_total", &[("direction", "in")]) >= 2.0);
    weir.wait_log("estimated=true").await;
}

#[tokio::test]
async fn a_stream_cut_midway_ends_with_an_error_event() {
    let up = Upstream::start("cut").await;
    up.always(Reply::Cut { after: 2 });
    // Let the first events reach the client before the cut.
    up.set_chunk_delay(std::time::Duration::from_millis(50));
    let other = Upstream::start("spare").await;
    // Even with another channel, nothing is retried once bytes reached the client.
    let cfg = Config::new()
        .openai("first", &up, "priority: 10")
        .openai("second", &other, "");
    let weir = Weir::start(&cfg.build()).await;
    let (status, body) = post(
        &reqwest::Client::new(),
        &weir.url("/v1/chat/completions"),
        &chat("m", true),
    )
    .await;
    assert_eq!(status, 200);
    let data = sse_data(&body);
    assert!(data.iter().any(|d| d.contains("Hello")));
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "upstream_error", "{body}");
    assert!(!body.contains("[DONE]"));
    assert_eq!(other.calls(), 0);
    weir.wait_metric("weir_stream_errors_total", &[("channel", "first")], 1.0)
        .await;
}

#[tokio::test]
async fn a_one_mib_body_is_routed_and_mapped() {
    let up = Upstream::start("big").await;
    let cfg = Config::new().channel_at(
        "big",
        "openai",
        &format!("{}/v1", up.url()),
        "models: [qwen2-7b], model_mapping: ['gpt-4o>qwen2-7b']",
    );
    let weir = Weir::start(&cfg.build()).await;
    let content = "y".repeat(1024 * 1024);
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": content}]});
    let (status, text) = post(
        &reqwest::Client::new(),
        &weir.url("/v1/chat/completions"),
        &body,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body["model"], "qwen2-7b");
    assert_eq!(
        seen[0].body["messages"][0]["content"]
            .as_str()
            .unwrap()
            .len(),
        1024 * 1024
    );
    // base_url written with /v1 reaches the same /v1 path.
    assert_eq!(seen[0].path, "/v1/chat/completions");
}

#[tokio::test]
async fn bad_input_gets_openai_shaped_errors() {
    let up = Upstream::start("e").await;
    let weir = Weir::start_with_server(
        &one_channel(&up, "keys: [sk-secret-never-shown-1]"),
        "  max_body: 64KiB",
    )
    .await;
    let client = reqwest::Client::new();
    let url = weir.url("/v1/chat/completions");
    let check = |status: u16, body: &str, want_status: u16, want_code: &str| {
        assert_eq!(status, want_status, "{body}");
        let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
        assert_eq!(v["error"]["code"], want_code, "{body}");
        assert!(v["error"]["message"].as_str().is_some() && v["error"]["type"].as_str().is_some());
        assert!(!body.contains("sk-secret"));
    };
    let r = client.post(&url).body("{not json").send().await.unwrap();
    let (s, b) = (r.status().as_u16(), r.text().await.unwrap());
    check(s, &b, 400, "invalid_json");
    let (s, b) = post(&client, &url, &json!({"messages": []})).await;
    check(s, &b, 400, "bad_request");
    let (s, b) = post(&client, &url, &chat("no-such-model", false)).await;
    check(s, &b, 404, "model_not_found");
    let huge =
        json!({"model": "m", "messages": [{"role": "user", "content": "z".repeat(70 * 1024)}]});
    let (s, b) = post(&client, &url, &huge).await;
    check(s, &b, 413, "request_too_large");
    let r = client.get(weir.url("/v1/nowhere")).send().await.unwrap();
    let (s, b) = (r.status().as_u16(), r.text().await.unwrap());
    check(s, &b, 404, "unknown_url");
    let r = client.get(&url).send().await.unwrap();
    let (s, b) = (r.status().as_u16(), r.text().await.unwrap());
    check(s, &b, 405, "method_not_allowed");
    // Paths that would climb out of /v1 upstream are refused, sent byte for byte
    // (an HTTP client would normalise them first).
    let json = serde_json::to_vec(&chat("m", false)).unwrap();
    for path in [
        "/v1/../admin/x",
        "/v1/a/%2e%2e/b",
        "/v1//x",
        "/v1/a/%2F..%2Fb",
    ] {
        let (s, raw) = raw_request(
            weir.port,
            &format!("POST {path} HTTP/1.1\r\nHost: x"),
            &json,
        )
        .await;
        let body = raw.split("\r\n\r\n").nth(1).unwrap_or_default();
        assert_eq!(s, 404, "{path}: {raw}");
        check(s, body, 404, "unknown_url");
    }
    let r = client.get(weir.url("/elsewhere")).send().await.unwrap();
    let (s, b) = (r.status().as_u16(), r.text().await.unwrap());
    check(s, &b, 404, "unknown_url");
    // A request head that is not HTTP gets a JSON 400 too, and the connection closes.
    let (s, raw) = raw_request(
        weir.port,
        "POST /v1/chat/completions HTTP/1.1\r\nBad Header: x",
        &json,
    )
    .await;
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or_default();
    check(s, body, 400, "bad_request");
    assert_eq!(up.calls(), 0);

    // A 400 from the upstream is the client's problem: returned as it is, not retried.
    up.script(&[Reply::Status(400)]);
    let (s, b) = post(&client, &url, &chat("m", false)).await;
    assert_eq!(s, 400);
    assert!(b.contains("mock says 400"));
    assert_eq!(up.calls(), 1);
    assert!(
        !weir.log().contains("sk-secret-never-shown"),
        "a key reached the log"
    );
}

#[tokio::test]
async fn other_endpoints_pass_through_and_their_streams_end_cleanly() {
    let up = Upstream::start("o").await;
    let weir = Weir::start(&one_channel(&up, "")).await;
    // A Responses-style stream: no `[DONE]`, and that is how it ends.
    let body = json!({"model": "m", "stream": true, "input": "hi"});
    let (status, text) = post(&reqwest::Client::new(), &weir.url("/v1/responses"), &body).await;
    assert_eq!(status, 200);
    assert_eq!(up.seen()[0].path, "/v1/responses");
    assert!(!text.contains("\"error\""), "{text}");
    // Weir adds include_usage only to chat and completions streams.
    assert!(up.seen()[0].body.get("stream_options").is_none());
    weir.wait_metric("weir_requests_total", &[("status", "2xx")], 1.0)
        .await;
    let m = weir.metrics().await;
    assert_eq!(metric_sum(&m, "weir_stream_errors_total", &[]), 0.0);
}

#[tokio::test]
async fn expect_continue_is_answered() {
    let up = Upstream::start("x").await;
    let weir = Weir::start(&one_channel(&up, "")).await;
    // Speak HTTP/1.1 by hand: send the headers, wait for `100 Continue`, then the body.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = serde_json::to_vec(&chat("m", false)).unwrap();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", weir.port))
        .await
        .unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(std::time::Duration::from_secs(2), s.read(&mut buf))
        .await
        .expect("no 100 Continue")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    s.write_all(&body).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), async {
        loop {
            let n = s.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&rest).contains("upstream x") {
                break;
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.contains("upstream x"),
        "{text}"
    );
}

#[tokio::test]
async fn gateways_route_by_path_prefix_and_list_their_models() {
    let up = Upstream::start("g").await;
    let cfg = Config::new()
        .channel_at("g", "openai", &up.url(), "models: [m, n]")
        .gateway("name: default, path: /v1")
        .gateway("name: team-a, path: /llm/api/team-a/v1, models: [n]")
        .gateway("name: old, path: /old/v1, expires_at: '2020-01-01T00:00:00Z'")
        .gateway("name: off, path: /off/v1, active: false");
    let weir = Weir::start(&cfg.build()).await;
    let client = reqwest::Client::new();
    let (s, _) = post(
        &client,
        &weir.url("/llm/api/team-a/v1/chat/completions"),
        &chat("n", false),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(up.seen()[0].path, "/v1/chat/completions");
    let (s, b) = post(
        &client,
        &weir.url("/llm/api/team-a/v1/chat/completions"),
        &chat("m", false),
    )
    .await;
    assert_eq!(s, 404, "{b}");
    let models: Value = client
        .get(weir.url("/llm/api/team-a/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"].as_array().unwrap().len(), 1);
    assert_eq!(models["data"][0]["id"], "n");
    let models: Value = client
        .get(weir.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"].as_array().unwrap().len(), 2);
    let one = client.get(weir.url("/v1/models/m")).send().await.unwrap();
    assert_eq!(one.status(), 200);
    let (s, b) = post(
        &client,
        &weir.url("/old/v1/chat/completions"),
        &chat("m", false),
    )
    .await;
    assert_eq!(s, 403);
    assert!(b.contains("gateway_expired"));
    let (s, b) = post(
        &client,
        &weir.url("/off/v1/chat/completions"),
        &chat("m", false),
    )
    .await;
    assert_eq!(s, 403);
    assert!(b.contains("gateway_inactive"));
}

#[tokio::test]
async fn metrics_count_what_was_sent() {
    let up = Upstream::start("m").await;
    let weir = Weir::start(&one_channel(&up, "")).await;
    let client = reqwest::Client::new();
    for _ in 0..5 {
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
    for _ in 0..3 {
        assert_eq!(
            post(&client, &weir.url("/v1/chat/completions"), &chat("m", true))
                .await
                .0,
            200
        );
    }
    assert_eq!(
        post(
            &client,
            &weir.url("/v1/chat/completions"),
            &chat("zzz", false)
        )
        .await
        .0,
        404
    );
    let m = weir.wait_metric("weir_requests_total", &[], 9.0).await;
    let ok = [
        ("gateway", "default"),
        ("model", "m"),
        ("channel", "up"),
        ("status", "2xx"),
    ];
    assert_eq!(metric_sum(&m, "weir_requests_total", &ok), 8.0);
    assert_eq!(
        metric_sum(&m, "weir_requests_total", &[("status", "4xx")]),
        1.0
    );
    assert_eq!(
        metric_sum(
            &m,
            "weir_request_duration_seconds_count",
            &[("channel", "up")]
        ),
        8.0
    );
    assert_eq!(
        metric_sum(
            &m,
            "weir_time_to_first_token_seconds_count",
            &[("channel", "up")]
        ),
        8.0
    );
    assert_eq!(
        metric_sum(&m, "weir_tokens_total", &[("direction", "out")]),
        32.0
    );
    assert_eq!(
        metric_sum(
            &m,
            "weir_upstream_attempts_total",
            &[("channel", "up"), ("outcome", "ok")]
        ),
        8.0
    );
    assert_eq!(metric_sum(&m, "weir_channel_up", &[("channel", "up")]), 1.0);
    // No label carries what the client typed as a model.
    assert!(!m.contains("zzz"));
}

#[tokio::test]
async fn the_shipped_config_answers_from_the_mock_channel() {
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/weir.yaml")).unwrap();
    let body = shipped
        .split("\nchannels:")
        .nth(1)
        .expect("shipped config has channels");
    let weir = Weir::start(&format!("channels:{body}")).await;
    // The process turned transparent huge pages off for itself (they tripled RSS with
    // many open streams).
    if cfg!(target_os = "linux") {
        let status = std::fs::read_to_string(format!("/proc/{}/status", weir.pid())).unwrap();
        assert!(status.contains("THP_enabled:\t0"), "{status}");
    }
    let client = reqwest::Client::new();
    let (s, b) = post(
        &client,
        &weir.url("/v1/chat/completions"),
        &chat("anything-at-all", false),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert!(b.contains("mock channel"));
    let (s, b) = post(
        &client,
        &weir.url("/v1/chat/completions"),
        &chat("mock-gpt", true),
    )
    .await;
    assert_eq!(s, 200);
    assert!(b.ends_with("data: [DONE]\n\n") && !b.contains("usage"));
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "check",
            "-c",
            concat!(env!("CARGO_MANIFEST_DIR"), "/conf/weir.yaml"),
        ])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn config_builds_the_yaml_tests_used_to_write_by_hand() {
    let up = Upstream::start("u").await;
    let cfg = Config::new()
        .model("name: m, price_in: 1")
        .openai("a", &up, "")
        .openai("b", &up, "priority: 1")
        .channel_at("c", "gemini", "http://x", "")
        .gateway("name: default, path: /v1")
        .section("cache: {models: '*'}");
    assert_eq!(
        cfg.build().replace(&up.url(), "UP"),
        "models:\n  - {name: m, price_in: 1}\nchannels:\n  - {name: a, type: openai, base_url: 'UP', models: [m]}\n  - {name: b, type: openai, base_url: 'UP', models: [m], priority: 1}\n  - {name: c, type: gemini, base_url: 'http://x'}\ngateways:\n  - {name: default, path: /v1}\ncache: {models: '*'}\n"
    );
}

/// SIGTERM with nothing in flight exits at once (Pingora alone would sleep the
/// whole grace period); with a stream open it waits for that stream, which ends
/// whole, then exits without waiting out the rest of the period.
#[tokio::test]
async fn a_graceful_stop_exits_when_the_last_request_ends() {
    let up = Upstream::start("stop").await;
    let cfg = Config::new().openai("stop", &up, "").build();
    let mut idle = Weir::start_with_server(&cfg, "  grace_period: 20s").await;
    let (s, _) = post(
        &reqwest::Client::new(),
        &idle.url("/v1/chat/completions"),
        &chat("m", false),
    )
    .await;
    assert_eq!(s, 200);
    let started = std::time::Instant::now();
    assert!(idle.stop_gracefully().success());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "idle stop took {:?}",
        started.elapsed()
    );

    let mut busy = Weir::start_with_server(&cfg, "  grace_period: 20s").await;
    up.set_chunk_delay(Duration::from_millis(300));
    let mut r = reqwest::Client::new()
        .post(busy.url("/v1/chat/completions"))
        .json(&chat("m", true))
        .send()
        .await
        .unwrap();
    let first = r.chunk().await.unwrap().unwrap();
    assert!(!first.is_empty());
    let pid = busy.pid();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let mut body = String::from_utf8_lossy(&first).into_owned();
    while let Some(c) = r.chunk().await.unwrap() {
        body.push_str(&String::from_utf8_lossy(&c));
    }
    assert!(
        body.contains("data: [DONE]"),
        "the open stream ended whole: {body}"
    );
    let started = std::time::Instant::now();
    assert!(busy.stop_gracefully().success());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited {:?} after the stream",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_stream_open_at_the_end_of_the_grace_period_is_cut_and_its_usage_written() {
    let up = Upstream::start("long").await;
    // About six chunks a second apart: longer than the grace period.
    up.set_chunk_delay(Duration::from_secs(1));
    let cfg = Config::new().openai("long", &up, "").build();
    let mut weir = Weir::start_with_server(&cfg, "  grace_period: 2s").await;
    let mut r = reqwest::Client::new()
        .post(weir.url("/v1/chat/completions"))
        .json(&chat("m", true))
        .send()
        .await
        .unwrap();
    let first = r.chunk().await.unwrap().unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &weir.pid().to_string()])
        .status();
    let mut body = String::from_utf8_lossy(&first).into_owned();
    while let Ok(Some(c)) = r.chunk().await {
        body.push_str(&String::from_utf8_lossy(&c));
    }
    assert!(body.contains("weir stopped"), "the client is told: {body}");
    assert!(!body.contains("data: [DONE]"), "{body}");
    assert!(weir.stop_gracefully().success());
    assert!(
        weir.log().contains("cutting the requests still open"),
        "{}",
        weir.log()
    );
    // Started again on the same store: the cut stream's row is there, with the
    // tokens it streamed before the cut.
    weir.restart().await;
    let v = weir.admin_get("/admin/logs").await;
    let rows = v["data"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{v}\n{}", weir.log());
    let row = &rows[0];
    assert!(
        row["error"].as_str().unwrap_or("").contains("grace period"),
        "{row}"
    );
    assert!(row["completion_tokens"].as_i64().unwrap_or(0) > 0, "{row}");
}

/// An OpenAI-style upstream that streams content deltas as fast as the socket
/// takes them, never ending: what fills a client's buffers when it stops reading.
async fn endless_stream_upstream() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = s.read(&mut buf).await;
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let text = "many words ".repeat(1500);
                let event = format!(
                    "data: {}\n\n",
                    json!({"id": "c1", "object": "chat.completion.chunk", "model": "m",
                           "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
                );
                let frame = format!("{:x}\r\n{event}\r\n", event.len());
                while s.write_all(frame.as_bytes()).await.is_ok() {}
            });
        }
    });
    url
}

/// A client that stops reading blocks weir's write to it: the stop still cuts
/// that stream at the end of the grace period, and its row is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_client_stopped_reading_is_cut_at_the_stop_and_written() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = endless_stream_upstream().await;
    let cfg = Config::new()
        .channel_at("endless", "openai", &up, "models: [m], retries: 0")
        .build();
    let mut weir = Weir::start_with_server(&cfg, "  grace_period: 2s").await;
    let body = chat("m", true).to_string();
    let mut client = tokio::net::TcpStream::connect(("127.0.0.1", weir.port))
        .await
        .unwrap();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    client.write_all(req.as_bytes()).await.unwrap();
    let mut head = [0u8; 512];
    let n = client.read(&mut head).await.unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
    // From here the client reads nothing; weir's writes fill the buffers and wait.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    // Multi-threaded: the upstream's task goes on while this one waits.
    let status = tokio::task::block_in_place(|| weir.stop_gracefully());
    assert!(status.success());
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
    drop(client);
    weir.restart().await;
    let v = weir.admin_get("/admin/logs").await;
    let rows = v["data"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{v}\n{}", weir.log());
    assert!(
        rows[0]["error"]
            .as_str()
            .unwrap_or("")
            .contains("not reading"),
        "{}",
        rows[0]
    );
}

/// A request still waiting for its upstream's first byte when the grace period
/// ends is answered 503 `shutting_down` (so the client can retry elsewhere) and
/// gets its row, instead of being dropped unanswered and unlogged.
#[tokio::test]
async fn a_request_waiting_for_its_first_byte_at_the_stop_gets_503_and_a_row() {
    let up = Upstream::start("thinking").await;
    up.script(&[Reply::Delay(Duration::from_secs(20))]);
    let cfg = Config::new().openai("thinking", &up, "").build();
    let mut weir = Weir::start_with_server(&cfg, "  grace_period: 2s").await;
    let pid = weir.pid();
    let url = weir.url("/v1/chat/completions");
    let ask =
        tokio::spawn(async move { post(&reqwest::Client::new(), &url, &chat("m", false)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let started = std::time::Instant::now();
    let (status, body) = ask.await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(error_code(&body), "shutting_down", "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(weir.stop_gracefully().success());
    weir.restart().await;
    let v = weir.admin_get("/admin/logs").await;
    let rows = v["data"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{v}");
    assert_eq!(rows[0]["status"], 503, "{}", rows[0]);
    assert!(
        rows[0]["error"]
            .as_str()
            .unwrap_or("")
            .contains("grace period"),
        "{}",
        rows[0]
    );
}
