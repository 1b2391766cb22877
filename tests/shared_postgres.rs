#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! Several weir instances on one real PostgreSQL (S1): keys, groups, channels and
//! gateways as data and the call log in one place; an admin write on one
//! instance in force on the others within a second; PostgreSQL lost under
//! traffic costs no request and no usage row.

mod common;

use common::*;
use futures_util::future::join_all;
use serde_json::json;
use std::time::{Duration, Instant};

/// `storage.postgres` (and optionally `storage.redis`), then the rest.
fn on_postgres(pg: &PgServer, redis: Option<&RedisServer>, rest: &str) -> String {
    let redis = redis
        .map(|r| format!("  redis: {{url: '{}', timeout: 1s}}\n", r.url()))
        .unwrap_or_default();
    format!("  postgres: '{}'\n{redis}{rest}", pg.url())
}

fn config(up: &Upstream) -> String {
    Config::new()
        .model("name: m, price_in: 1000000, price_out: 1000000")
        .channel_at("up", "openai", &up.url(), "models: [m], retries: 0")
        .gateway("name: default, path: /v1, auth: {method: database}")
        .build()
}

async fn call(weir: &Weir, key: &str) -> u16 {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .post(weir.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&chat("m", false))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Polls `weir` until a call with `key` answers `want`; how long it took.
async fn until(weir: &Weir, key: &str, want: u16) -> Duration {
    let started = Instant::now();
    while call(weir, key).await != want {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "not {want} within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

#[tokio::test]
async fn an_admin_write_on_one_instance_is_in_force_on_all_within_a_second() {
    let pg = PgServer::start().await;
    let redis = RedisServer::start().await;
    let up = Upstream::start("pg").await;
    let body = on_postgres(&pg, Some(&redis), &config(&up));
    let a = Weir::start(&body).await;
    let b = Weir::start(&body).await;
    let c = Weir::start(&body).await;
    // Created on A: works on C.
    let (id, key) = a.create_key(json!({"name": "k", "models": ["*"]})).await;
    until(&c, &key, 200).await;
    until(&b, &key, 200).await;
    // Reset on B: the old secret fails on A at once, the new one works there.
    let (s, v) = b
        .admin("POST", &format!("/admin/keys/{id}/reset"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    let fresh = v["key"].as_str().unwrap().to_string();
    until(&a, &key, 401).await;
    until(&a, &fresh, 200).await;
    // A channel and a gateway stored through C serve on A.
    let other = Upstream::start("pg-other").await;
    let (s, v) = c
        .admin(
            "POST",
            "/admin/channels",
            Some(json!({"name": "other", "type": "openai", "base_url": other.url(), "models": ["n"]})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = c
        .admin(
            "POST",
            "/admin/gateways",
            Some(json!({"name": "open", "path": "/open"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let started = Instant::now();
    loop {
        let r = reqwest::Client::new()
            .post(a.url("/open/chat/completions"))
            .json(&chat("n", false))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(1), "{}", r.status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(other.calls(), 1);
    // One call log for all: every instance's rows, read from any.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (s, v) = b.admin("GET", "/admin/logs?limit=100", None).await;
        assert_eq!(s, 200, "{v}");
        let channels: Vec<&str> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["channel"].as_str())
            .collect();
        // Three answers through `up` are certain (C, B, then A with the fresh key);
        // a fourth only when A still took the old key once before the reset reached it.
        if channels.contains(&"other") && channels.iter().filter(|c| **c == "up").count() >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        pg.psql("SELECT COUNT(*) FROM keys"),
        "1",
        "one key, stored once"
    );
}

#[tokio::test]
async fn postgres_lost_under_traffic_fails_no_request_and_loses_no_usage_row() {
    let mut pg = PgServer::start().await;
    let up = Upstream::start("pg-lost").await;
    let body = on_postgres(&pg, None, &config(&up));
    let weirs = [Weir::start(&body).await, Weir::start(&body).await];
    let (_, key) = weirs[0]
        .create_key(json!({"name": "k", "models": ["*"]}))
        .await;
    until(&weirs[1], &key, 200).await;
    // Served rows only: the polling above also logged refusals, maybe not yet written.
    let served = "SELECT COUNT(*) FROM usage WHERE status = 200";
    let before = 1;
    let mut sent = 0u64;
    let mut round = |n: usize| {
        sent += n as u64;
        let (weirs, key) = (&weirs, &key);
        async move {
            let statuses = join_all((0..n).map(|i| call(&weirs[i % 2], key))).await;
            assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
        }
    };
    round(20).await;
    pg.kill();
    // Served from the last snapshot while the store is away; usage kept.
    round(40).await;
    for w in &weirs {
        w.wait_metric("weir_backend_up", &[("backend", "store")], 0.0)
            .await;
        let h = w.health().await;
        assert_eq!(h["status"], "degraded");
        assert_eq!(h["backends"]["store"], "down");
    }
    let kept: f64 = join_all(weirs.iter().map(|w| w.metrics()))
        .await
        .iter()
        .map(|m| metric_sum(m, "weir_usage_backlog", &[]))
        .sum();
    assert!(kept > 0.0, "rows wait in memory");
    pg.restart().await;
    round(20).await;
    for w in &weirs {
        w.wait_metric("weir_backend_up", &[("backend", "store")], 1.0)
            .await;
        w.wait_metric("weir_usage_backlog", &[], 0.0).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows: u64 = pg.psql(served).parse().unwrap();
        if rows == before + sent {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{rows} usage rows, want {}",
            before + sent
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn the_shipped_scale_out_config_is_valid() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "check",
            "-c",
            concat!(env!("CARGO_MANIFEST_DIR"), "/conf/scale-out.yaml"),
        ])
        .env("WEIR_ADMIN_KEY", "an-admin-key-of-some-length")
        .env("PG_PASSWORD", "p")
        .env("REDIS_PASSWORD", "r")
        .env("WEIR_SECRET_KEY", "a-secret-key-of-32-characters-ok")
        .env("VLLM_KEY", "k")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_stray_nul_in_a_request_holds_up_no_usage_row() {
    let pg = PgServer::start().await;
    let up = Upstream::start("pg-nul").await;
    let weir = Weir::start(&on_postgres(&pg, None, &config(&up))).await;
    let (_, key) = weir.create_key(json!({"name": "k", "models": ["*"]})).await;
    // PostgreSQL's TEXT cannot hold NUL; the row is written with it replaced.
    let r = reqwest::Client::new()
        .post(weir.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&chat("a\u{0}b", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(call(&weir, &key).await, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    while pg.psql("SELECT COUNT(*) FROM usage WHERE status IN (200, 404)") != "2" {
        assert!(Instant::now() < deadline, "usage rows stuck behind the NUL");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        pg.psql("SELECT COUNT(*) FROM usage WHERE model = 'a' || chr(65533) || 'b'"),
        "1"
    );
    weir.wait_metric("weir_backend_up", &[("backend", "store")], 1.0)
        .await;
}

#[tokio::test]
async fn spending_while_redis_hangs_reaches_redis_when_it_answers_again() {
    let pg = PgServer::start().await;
    let redis = RedisServer::start().await;
    let up = Upstream::start("pg-hang").await;
    let weir = Weir::start(&on_postgres(&pg, Some(&redis), &config(&up))).await;
    let (id, key) = weir
        .create_key(json!({"name": "k", "models": ["*"], "balance": 100}))
        .await;
    until(&weir, &key, 200).await;
    let balance = || {
        redis
            .cli(&["GET", &format!("weir:bal:{id}")])
            .and_then(|v| v.parse::<i64>().ok())
    };
    assert!(balance().is_some(), "seeded by the first admission");
    redis.pause();
    for _ in 0..3 {
        assert_eq!(call(&weir, &key).await, 200);
    }
    weir.wait_metric("weir_backend_up", &[("backend", "redis")], 0.0)
        .await;
    redis.resume();
    weir.wait_metric("weir_backend_up", &[("backend", "redis")], 1.0)
        .await;
    // Redis's figure and the store's agree again: the three local answers were
    // added when Redis came back, not lost.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stored: f64 = pg
            .psql(&format!("SELECT balance FROM keys WHERE id = {id}"))
            .parse()
            .unwrap();
        let shared = balance().unwrap() as f64 / 1e9;
        if (stored - shared).abs() < 1e-6 && stored < 100.0 - 30.0 {
            break;
        }
        assert!(Instant::now() < deadline, "store {stored}, Redis {shared}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
