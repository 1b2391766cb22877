#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! Selection, retries, failover and health (P3–P5) against scripted upstreams,
//! proven by the upstreams' call counts.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

#[tokio::test]
async fn failover_follows_priorities_with_retries_per_channel() {
    let high = Upstream::start("high").await;
    let mid = Upstream::start("mid").await;
    let low = Upstream::start("low").await;
    let spare = Upstream::start("spare").await;
    high.always(Reply::Status(500));
    mid.always(Reply::RateLimited { retry_after: 0 });
    let cfg = Config::new()
        .openai("high", &high, "priority: 10, retries: 2")
        .openai("mid", &mid, "priority: 5, retries: 1")
        .openai("low", &low, "priority: 1, retries: 0")
        .openai("spare", &spare, "priority: 0");
    let weir = Weir::start_with_server(&cfg.build(), "  health: {failures: 100}").await;
    let (status, body) = post(
        &reqwest::Client::new(),
        &weir.url("/v1/chat/completions"),
        &chat("m", false),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("upstream low"));
    // 1 + 2 retries on high, 1 + 1 on mid, then low answers; spare is never asked.
    assert_eq!(
        (high.calls(), mid.calls(), low.calls(), spare.calls()),
        (3, 2, 1, 0)
    );
    let m = weir
        .wait_metric("weir_requests_total", &[("status", "2xx")], 1.0)
        .await;
    assert_eq!(metric_sum(&m, "weir_retries_total", &[]), 3.0);
    assert_eq!(metric_sum(&m, "weir_failovers_total", &[]), 2.0);
    assert_eq!(
        metric_sum(
            &m,
            "weir_upstream_attempts_total",
            &[("outcome", "server_error")]
        ),
        3.0
    );
    assert_eq!(
        metric_sum(
            &m,
            "weir_upstream_attempts_total",
            &[("outcome", "rate_limited")]
        ),
        2.0
    );
}

#[tokio::test]
async fn a_large_body_fails_over_like_a_small_one() {
    let bad = Upstream::start("bad").await;
    let good = Upstream::start("good").await;
    bad.always(Reply::Status(503));
    let cfg = Config::new()
        .channel_at(
            "bad",
            "openai",
            &bad.url(),
            "models: [a], model_mapping: ['big>a'], priority: 9, retries: 1",
        )
        .channel_at(
            "good",
            "openai",
            &good.url(),
            "models: [b], model_mapping: ['big>b']",
        );
    let weir = Weir::start(&cfg.build()).await;
    let body = serde_json::json!({"model": "big", "messages": [{"role": "user", "content": "q".repeat(1024 * 1024)}]});
    let (status, text) = post(
        &reqwest::Client::new(),
        &weir.url("/v1/chat/completions"),
        &body,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(bad.calls(), 2);
    for s in bad.seen() {
        assert_eq!(s.body["model"], "a");
        assert!(s.content_length > 1024 * 1024);
    }
    let seen = good.seen();
    assert_eq!(seen[0].body["model"], "b");
    assert_eq!(
        seen[0].body["messages"][0]["content"]
            .as_str()
            .unwrap()
            .len(),
        1024 * 1024
    );
}

#[tokio::test]
async fn weights_split_four_to_one() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let cfg = Config::new()
        .openai("a", &a, "weight: 4")
        .openai("b", &b, "weight: 1");
    let weir = Weir::start(&cfg.build()).await;
    let client = reqwest::Client::new();
    let n = 500;
    for _ in 0..n {
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
    // Binomial(500, 0.8): mean 400, sd 8.9; 4.5 sd either side.
    let share = a.calls();
    assert_eq!(share + b.calls(), n);
    assert!((360..=440).contains(&share), "a got {share} of {n}");
}

#[tokio::test]
async fn every_key_of_a_channel_is_used_and_a_rejected_key_is_skipped() {
    let up = Upstream::start("k").await;
    let cfg = Config::new().openai(
        "k",
        &up,
        "keys: [sk-key-one-0000000001, sk-key-two-0000000002], retries: 0",
    );
    let weir = Weir::start(&cfg.build()).await;
    let client = reqwest::Client::new();
    for _ in 0..40 {
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
    let keys: Vec<String> = up
        .seen()
        .iter()
        .filter_map(|s| s.authorization.clone())
        .collect();
    let one = keys.iter().filter(|k| k.ends_with("0001")).count();
    let two = keys.iter().filter(|k| k.ends_with("0002")).count();
    assert_eq!(one + two, 40);
    assert!(one >= 8 && two >= 8, "keys used {one} and {two} times");

    // A 401 moves to the other key at once, even with no retries left.
    up.script(&[Reply::Status(401)]);
    let before = up.calls();
    let (status, _) = post(
        &client,
        &weir.url("/v1/chat/completions"),
        &chat("m", false),
    )
    .await;
    assert_eq!(status, 200);
    let seen = up.seen();
    assert_eq!(up.calls() - before, 2);
    assert_ne!(seen[before].authorization, seen[before + 1].authorization);
}

#[tokio::test]
async fn when_everything_fails_the_client_learns_what_was_tried() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    a.always(Reply::Status(502));
    b.always(Reply::Status(401));
    // Port 1: privileged and unused, so connecting is refused.
    let cfg = Config::new()
        .openai("a", &a, "priority: 2, retries: 1")
        .openai("b", &b, "priority: 1, keys: [sk-very-secret-key-123456]")
        .channel_at(
            "gone",
            "openai",
            "http://127.0.0.1:1",
            "models: [m], priority: -1, retries: 0",
        );
    let weir = Weir::start_with_server(&cfg.build(), "  health: {failures: 100}").await;
    let (status, body) = post(
        &reqwest::Client::new(),
        &weir.url("/v1/chat/completions"),
        &chat("m", false),
    )
    .await;
    assert_eq!(status, 502, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "upstream_failed");
    let msg = v["error"]["message"].as_str().unwrap();
    for part in ["a: HTTP 502", "b: HTTP 401", "gone: connect failed"] {
        assert!(msg.contains(part), "{msg}");
    }
    // Neither the key nor a hint of it, nor the upstream's own error codes.
    assert!(
        !body.contains("sk-very") && !body.contains("123456") && !body.contains("…"),
        "{body}"
    );
    assert!(
        !body.contains("invalid_api_key") && !body.contains("upstream_boom"),
        "{body}"
    );
    assert_eq!((a.calls(), b.calls()), (2, 1));
    // The operator's log has the detail.
    weir.wait_log("(invalid_api_key) key …3456").await;
}

#[tokio::test]
async fn a_rate_limited_key_hands_over_to_the_next_key_at_once() {
    let up = Upstream::start("k").await;
    // The first key is told to wait 30 s: weir must not wait, nor leave the channel.
    up.script(&[Reply::RateLimited { retry_after: 30 }]);
    let cfg = Config::new().openai(
        "k",
        &up,
        "keys: [sk-first-key-0000000001, sk-second-key-000000002], retries: 0",
    );
    let weir = Weir::start(&cfg.build()).await;
    let started = std::time::Instant::now();
    let (status, _) = post(
        &reqwest::Client::new(),
        &weir.url("/v1/chat/completions"),
        &chat("m", false),
    )
    .await;
    assert_eq!(status, 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert_ne!(seen[0].authorization, seen[1].authorization);
    // That key now sits out its 30 s; the other one carries the load.
    let channels = weir.admin_get("/admin/channels").await;
    let keys = channels["channels"][0]["keys"].as_array().unwrap().clone();
    let states: Vec<&str> = keys
        .iter()
        .map(|k| k["health"]["state"].as_str().unwrap())
        .collect();
    assert!(
        states.contains(&"suspended") && states.contains(&"healthy"),
        "{states:?}"
    );
    for _ in 0..5 {
        assert_eq!(
            post(
                &reqwest::Client::new(),
                &weir.url("/v1/chat/completions"),
                &chat("m", false)
            )
            .await
            .0,
            200
        );
    }
    let second = seen[1].authorization.clone();
    assert!(up.seen()[2..].iter().all(|s| s.authorization == second));
}

#[tokio::test]
async fn rate_limits_everywhere_give_429_with_retry_after() {
    let a = Upstream::start("a").await;
    a.always(Reply::RateLimited { retry_after: 0 });
    let weir = Weir::start(&Config::new().openai("a", &a, "retries: 1").build()).await;
    let r = reqwest::Client::new()
        .post(weir.url("/v1/chat/completions"))
        .json(&chat("m", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
}

#[tokio::test]
async fn a_slow_upstream_times_out_and_fails_over() {
    let slow = Upstream::start("slow").await;
    let fast = Upstream::start("fast").await;
    slow.always(Reply::Delay(Duration::from_secs(5)));
    let cfg = Config::new()
        .openai(
            "slow",
            &slow,
            "priority: 5, retries: 0, timeouts: {first_byte: 300ms}",
        )
        .openai("fast", &fast, "");
    let weir = Weir::start(&cfg.build()).await;
    let started = std::time::Instant::now();
    let (status, body) = post(
        &reqwest::Client::new(),
        &weir.url("/v1/chat/completions"),
        &chat("m", false),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("upstream fast"));
    assert!(started.elapsed() < Duration::from_secs(3));
    weir.wait_metric(
        "weir_upstream_attempts_total",
        &[("channel", "slow"), ("outcome", "timeout")],
        1.0,
    )
    .await;
}

#[tokio::test]
async fn a_failing_channel_is_suspended_then_recovers_by_trial() {
    let flaky = Upstream::start("flaky").await;
    let backup = Upstream::start("backup").await;
    flaky.always(Reply::Status(500));
    let cfg = Config::new()
        .openai("flaky", &flaky, "priority: 10, retries: 0")
        .openai("backup", &backup, "priority: 1");
    let weir = Weir::start_with_server(
        &cfg.build(),
        "  health: {failures: 2, cooldown: 1s, max_cooldown: 4s}",
    )
    .await;
    let client = reqwest::Client::new();
    let url = weir.url("/v1/chat/completions");
    for _ in 0..2 {
        assert_eq!(post(&client, &url, &chat("m", false)).await.0, 200);
    }
    assert_eq!(flaky.calls(), 2);
    // Suspended: the next requests go straight to the backup.
    for _ in 0..5 {
        assert_eq!(post(&client, &url, &chat("m", false)).await.0, 200);
    }
    assert_eq!(flaky.calls(), 2);
    assert_eq!(backup.calls(), 7);
    let channels = weir.admin_get("/admin/channels").await;
    let flaky_state = &channels["channels"][0];
    assert_eq!(flaky_state["name"], "flaky");
    assert_eq!(flaky_state["health"]["state"], "suspended");
    assert!(flaky_state["health"]["last_error"]
        .as_str()
        .unwrap()
        .contains("500"));
    let m = weir.metrics().await;
    assert_eq!(
        metric_sum(&m, "weir_channel_up", &[("channel", "flaky")]),
        0.0
    );
    assert_eq!(
        metric_sum(
            &m,
            "weir_channel_state",
            &[("channel", "flaky"), ("state", "suspended")]
        ),
        1.0
    );

    // After the cooldown one trial request goes to it; it succeeds and it is back.
    flaky.always(Reply::Ok);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let (_, body) = post(&client, &url, &chat("m", false)).await;
    assert!(body.contains("upstream flaky"), "{body}");
    assert_eq!(flaky.calls(), 3);
    let channels = weir.admin_get("/admin/channels").await;
    assert_eq!(channels["channels"][0]["health"]["state"], "healthy");
    let m = weir.metrics().await;
    assert_eq!(
        metric_sum(&m, "weir_channel_up", &[("channel", "flaky")]),
        1.0
    );
}

#[tokio::test]
async fn a_failed_trial_suspends_again_and_nothing_left_gives_503() {
    let only = Upstream::start("only").await;
    only.always(Reply::Status(500));
    let weir = Weir::start_with_server(
        &Config::new().openai("only", &only, "retries: 0").build(),
        "  health: {failures: 1, cooldown: 2s, max_cooldown: 20s}",
    )
    .await;
    let client = reqwest::Client::new();
    let url = weir.url("/v1/chat/completions");
    assert_eq!(post(&client, &url, &chat("m", false)).await.0, 502);
    let r = client
        .post(&url)
        .json(&chat("m", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_some());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "no_channel_available");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("only: suspended"));
    assert_eq!(only.calls(), 1);
    // The trial fails: suspended again, now for 4 s.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(post(&client, &url, &chat("m", false)).await.0, 502);
    assert_eq!(only.calls(), 2);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(post(&client, &url, &chat("m", false)).await.0, 503);
    assert_eq!(only.calls(), 2);
}

/// An upstream that answers the first request on each connection and closes the
/// connection when a second one arrives on it, unanswered: the race every server
/// that drops idle keep-alive connections loses now and then. With `early_hints`,
/// each answer is preceded by a `103 Early Hints`. Counts the requests it answered
/// and the ones it dropped.
async fn closing_upstream(
    early_hints: bool,
) -> (u16, std::sync::Arc<[std::sync::atomic::AtomicUsize; 2]>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let counts = std::sync::Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let counter = counts.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                for nth in 0.. {
                    // One request: its head, then `content-length` bytes of body.
                    let body_start = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match s.read(&mut chunk).await {
                            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..body_start]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < body_start + len {
                        match s.read(&mut chunk).await {
                            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                    }
                    if nth > 0 {
                        counter[1].fetch_add(1, Ordering::SeqCst);
                        return; // closed, nothing answered
                    }
                    let body: Value =
                        serde_json::from_slice(&buf[body_start..body_start + len]).unwrap();
                    buf.drain(..body_start + len);
                    counter[0].fetch_add(1, Ordering::SeqCst);
                    let answer = format!(
                        r#"{{"id":"x","object":"chat.completion","model":"{}","choices":[{{"index":0,"message":{{"role":"assistant","content":"hi"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}}}"#,
                        body["model"].as_str().unwrap_or("")
                    );
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Upstream-Internal: 1\r\nContent-Length: {}\r\n\r\n{answer}",
                        answer.len()
                    );
                    if early_hints {
                        let hints =
                            "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n";
                        if s.write_all(hints.as_bytes()).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    if s.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, counts)
}

/// The config of one OpenAI channel on a raw upstream at `port`.
fn raw_channel(name: &str, port: u16) -> String {
    let base_url = format!("http://127.0.0.1:{port}");
    Config::new()
        .channel_at(name, "openai", &base_url, "models: [m]")
        .build()
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_dropped_is_replaced_not_failed() {
    let (port, counts) = closing_upstream(false).await;
    let weir = Weir::start(&raw_channel("closer", port)).await;
    let client = reqwest::Client::new();
    for i in 0..5 {
        let (status, text) = post(
            &client,
            &weir.url("/v1/chat/completions"),
            &chat("m", false),
        )
        .await;
        assert_eq!(status, 200, "request {i}: {text}");
    }
    let answered = counts[0].load(std::sync::atomic::Ordering::SeqCst);
    let dropped = counts[1].load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(answered, 5);
    // Each request after the first found its pooled connection dropped (the upstream
    // closes only when the request arrives, so the pool cannot notice before) and
    // went again on a fresh one.
    assert_eq!(
        dropped, 4,
        "the stale connection path was not taken every time"
    );
    // A stale pooled connection is not the channel's fault: no failed attempt, no
    // retry, and the channel stays healthy.
    let metrics = weir
        .wait_metric("weir_upstream_attempts_total", &[("outcome", "ok")], 5.0)
        .await;
    assert_eq!(
        metric_sum(&metrics, "weir_upstream_attempts_total", &[]),
        5.0
    );
    assert_eq!(metric_sum(&metrics, "weir_retries_total", &[]), 0.0);
}

#[tokio::test]
async fn informational_responses_before_the_answer_are_skipped() {
    let (port, counts) = closing_upstream(true).await;
    let weir = Weir::start(&raw_channel("hints", port)).await;
    let resp = reqwest::Client::new()
        .post(weir.url("/v1/chat/completions"))
        .json(&chat("m", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // weir's own answer header, not the upstream's bytes passed through behind a 103.
    assert!(resp.headers().get("x-upstream-internal").is_none());
    let text = resp.text().await.unwrap();
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "hi");
    assert_eq!(answer["usage"]["total_tokens"], 4);
    assert_eq!(counts[0].load(std::sync::atomic::Ordering::SeqCst), 1);
    // The answer weir judged, billed and logged is the 200, not the 103.
    let metrics = weir
        .wait_metric("weir_upstream_attempts_total", &[("outcome", "ok")], 1.0)
        .await;
    assert_eq!(
        metric_sum(&metrics, "weir_upstream_attempts_total", &[]),
        1.0
    );
    weir.wait_log("status=200").await;
}

/// A channel's own `backoff` overrides `server.backoff` (the tests' server waits
/// 10-100 ms): its retry waits at least half its base, the jitter's floor.
#[tokio::test]
async fn a_channel_s_own_backoff_sets_its_retry_wait() {
    let up = Upstream::start("patient").await;
    up.script(&[Reply::Status(500), Reply::Ok]);
    let cfg = Config::new().openai(
        "patient",
        &up,
        "retries: 1, backoff: {base: 1600ms, max: 1600ms}",
    );
    let weir = Weir::start_with_server(&cfg.build(), "  health: {failures: 100}").await;
    let started = std::time::Instant::now();
    let (s, _) = post(
        &reqwest::Client::new(),
        &weir.url("/v1/chat/completions"),
        &chat("m", false),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(up.calls(), 2);
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
    // A bad one is named.
    let bad = Config::new()
        .openai("x", &up, "backoff: {base: 2s, max: 1s}")
        .build();
    weir.write_config(&bad, "");
    let (s, v) = weir.admin("POST", "/admin/reload", None).await;
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("channels[0].backoff.base"), "{v}");
}

#[tokio::test]
async fn one_deadline_bounds_every_attempt_of_a_request() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    for up in [&a, &b] {
        up.always(Reply::Delay(Duration::from_secs(3)));
    }
    // Alone, four attempts of 800 ms each (and the waits between) would keep the
    // client over 3 s; the gateway's 1 s deadline ends the request after two.
    let each = "retries: 1, timeouts: {first_byte: 800ms}";
    let cfg = Config::new()
        .openai("a", &a, &format!("priority: 5, {each}"))
        .openai("b", &b, each)
        .gateway("name: g, path: /v1, timeout: 1s");
    let weir = Weir::start(&cfg.build()).await;
    let client = reqwest::Client::new();
    let (status, body) = post(
        &client,
        &weir.url("/v1/chat/completions"),
        &chat("m", false),
    )
    .await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(error_code(&body), "upstream_timeout");
    assert!(
        body.contains("deadline of 1s passed after 2 attempts"),
        "{body}"
    );
    assert!(body.contains("cut at the deadline"), "{body}");
    assert_eq!(
        a.calls() + b.calls(),
        2,
        "attempts past the deadline were made"
    );
    weir.wait_metric(
        "weir_upstream_attempts_total",
        &[("channel", "a"), ("outcome", "deadline")],
        1.0,
    )
    .await;
    // The attempt cut by the request's deadline taught health nothing: with the
    // upstream quick again, the same channel answers at once.
    a.always(Reply::Ok);
    let (status, body) = post(
        &client,
        &weir.url("/v1/chat/completions"),
        &chat("m", false),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("upstream a"), "{body}");
}

#[tokio::test]
async fn a_stream_longer_than_the_deadline_is_cut_with_an_error_event() {
    let up = Upstream::start("long").await;
    up.set_chunk_delay(Duration::from_millis(400));
    let cfg = Config::new()
        .openai("long", &up, "")
        .gateway("name: g, path: /v1, timeout: 1s");
    let weir = Weir::start(&cfg.build()).await;
    let (status, body) = post(
        &reqwest::Client::new(),
        &weir.url("/v1/chat/completions"),
        &chat("m", true),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("the request's deadline (its gateway's timeout) passed"),
        "{body}"
    );
    assert!(!body.ends_with("data: [DONE]\n\n"), "{body}");
}
