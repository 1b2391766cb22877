#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! Several weir instances on one real Redis (S1): limits, money and the cache
//! shared exactly; Redis lost or hung under traffic costs no request.

mod common;

use common::error_code as code;
use common::*;
use futures_util::future::join_all;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// `storage.redis` (the test's own redis-server) and then the rest of the config.
fn with_redis(redis: &RedisServer, timeout: &str, rest: &str) -> String {
    format!(
        "  redis: {{url: '{}', timeout: {timeout}}}\n{rest}",
        redis.url()
    )
}

fn config(up: &Upstream) -> Config {
    Config::new()
        .model("name: m, price_in: 1000000, price_out: 1000000")
        .channel_at("up", "openai", &up.url(), "models: [m, c], retries: 0")
}

async fn three(body: &str) -> [Weir; 3] {
    [
        Weir::start(body).await,
        Weir::start(body).await,
        Weir::start(body).await,
    ]
}

async fn call(weir: &Weir, path: &str, key: &str, model: &str) -> reqwest::Response {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .post(weir.url(path))
        .bearer_auth(key)
        .json(&chat(model, false))
        .send()
        .await
        .unwrap()
}

/// Waits (bounded) until `weir_backend_up{backend="redis"}` is `want`.
async fn wait_redis_up(weir: &Weir, want: f64) {
    weir.wait_metric("weir_backend_up", &[("backend", "redis")], want)
        .await;
}

#[tokio::test]
async fn a_limit_of_n_a_minute_admits_exactly_n_across_three_instances() {
    let redis = RedisServer::start().await;
    let up = Upstream::start("shared").await;
    let cfg = config(&up)
        .gateway("name: open, path: /v1, auth: {method: regex, regex: '.+'}, rate_limits: ['secret:20/minute', 'ingress:1000/hour']")
        .build();
    let weirs = three(&with_redis(&redis, "1s", &cfg)).await;
    for w in &weirs {
        wait_redis_up(w, 1.0).await;
        assert_eq!(
            w.health().await,
            json!({"status": "ok", "backends": {"redis": "up", "store": "up"}})
        );
    }
    // 60 at once, spread over the three: exactly 20 pass.
    let answers =
        join_all((0..60).map(|i| call(&weirs[i % 3], "/v1/chat/completions", "sk-alice", "m")))
            .await;
    let mut passed = 0;
    for r in answers {
        match r.status().as_u16() {
            200 => passed += 1,
            429 => {
                let retry: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=60).contains(&retry), "Retry-After {retry}");
                assert_eq!(code(&r.text().await.unwrap()), "rate_limit_exceeded");
            }
            s => panic!("unexpected {s}: {}", r.text().await.unwrap()),
        }
    }
    assert_eq!(passed, 20, "exactly the limit across three instances");
    assert_eq!(up.calls(), 20);
    // Another caller has its own 20, on any instance; the ingress hour counted all.
    let r = call(&weirs[2], "/v1/chat/completions", "sk-bob", "m").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ratelimit-remaining-requests"], "19");
    assert_eq!(
        redis
            .cli(&["GET", "weir:rt:open\u{1f}ingress\u{1f}hour\u{1f}"])
            .as_deref(),
        Some("21")
    );
    // Every log expires by itself (a minute or an hour, plus two buckets).
    let logs = redis.cli(&["KEYS", "weir:r*"]).unwrap();
    assert_eq!(logs.lines().count(), 6, "{logs}");
    for key in logs.lines() {
        let ttl: i64 = redis.cli(&["PTTL", key]).unwrap().parse().unwrap();
        assert!((1..=3_600_120).contains(&ttl), "{key}: {ttl}");
    }
}

#[tokio::test]
async fn budgets_balances_top_ups_and_the_cache_are_shared() {
    // The topology of the runbook: one Redis, one PostgreSQL, three instances.
    let redis = RedisServer::start().await;
    let pg = PgServer::start().await;
    let up = Upstream::start("money").await;
    let cfg = config(&up)
        .gateway("name: default, path: /v1, auth: {method: database}")
        .section("cache: {models: [c], ttl: 1h}")
        .build();
    let cfg = format!("  postgres: '{}'\n{cfg}", pg.url());
    let weirs = three(&with_redis(&redis, "1s", &cfg)).await;
    for w in &weirs {
        wait_redis_up(w, 1.0).await;
    }
    // $1 a token, about 9 tokens an answer.
    let (_, budgeted) = weirs[0]
        .create_key(json!({"name": "b", "models": ["*"], "monthly_budget": 30}))
        .await;
    let (prepaid_id, prepaid) = weirs[0]
        .create_key(json!({"name": "p", "models": ["*"], "balance": 15}))
        .await;
    // Known to every instance within a second (the store is shared); listing the
    // models costs the key nothing.
    for w in &weirs {
        for key in [&budgeted, &prepaid] {
            let deadline = Instant::now() + Duration::from_secs(1);
            loop {
                let r = reqwest::Client::new()
                    .get(w.url("/v1/models"))
                    .bearer_auth(key)
                    .send()
                    .await
                    .unwrap();
                if r.status() == 200 {
                    break;
                }
                assert!(Instant::now() < deadline, "key unknown after 1 s");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    // One after another over the three: the budget is spent once, not three times.
    let mut passed = 0;
    for i in 0..15 {
        let r = call(&weirs[i % 3], "/v1/chat/completions", &budgeted, "m").await;
        match r.status().as_u16() {
            200 => passed += 1,
            429 => assert_eq!(code(&r.text().await.unwrap()), "budget_exceeded"),
            s => panic!("{s}: {}", r.text().await.unwrap()),
        }
        // The charge lands in Redis right after the answer; give it a moment.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(
        (3..=5).contains(&passed),
        "{passed} passed a $30 budget at ~$9 each"
    );
    for w in &weirs {
        let r = call(w, "/v1/chat/completions", &budgeted, "m").await;
        assert_eq!(r.status(), 429);
    }

    // A balance of 15: two answers, then 402 everywhere; a top-up on one instance
    // opens the key on the others.
    let mut passed = 0;
    for i in 0..6 {
        let r = call(&weirs[i % 3], "/v1/chat/completions", &prepaid, "m").await;
        match r.status().as_u16() {
            200 => passed += 1,
            402 => {}
            s => panic!("{s}: {}", r.text().await.unwrap()),
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(passed, 2);
    let (s, _) = weirs[0]
        .admin(
            "POST",
            &format!("/admin/keys/{prepaid_id}/topup"),
            Some(json!({"amount": 100})),
        )
        .await;
    assert_eq!(s, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = call(&weirs[2], "/v1/chat/completions", &prepaid, "m").await;
        if r.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the top-up never reached instance C"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The cache: stored through A, answered by B and C.
    let before = up.calls();
    let r = call(&weirs[0], "/v1/chat/completions", &prepaid, "c").await;
    assert_eq!(r.headers()["x-weir-cache"], "miss");
    let first = r.text().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    for w in &weirs[1..] {
        loop {
            let r = call(w, "/v1/chat/completions", &prepaid, "c").await;
            if r.headers()["x-weir-cache"] == "hit" {
                assert_eq!(r.text().await.unwrap(), first);
                break;
            }
            assert!(Instant::now() < deadline, "no hit from the shared cache");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(up.calls(), before + 1, "one upstream call for the three");
}

/// Sends `n` requests, 4 at a time round-robin over the instances; the statuses.
async fn traffic(weirs: &[Weir; 3], n: usize, key: &str) -> Vec<u16> {
    let mut out = Vec::new();
    for batch in (0..n).collect::<Vec<_>>().chunks(4) {
        let calls = batch
            .iter()
            .map(|i| call(&weirs[i % 3], "/v1/chat/completions", key, "m"));
        for r in join_all(calls).await {
            out.push(r.status().as_u16());
        }
    }
    out
}

#[tokio::test]
async fn redis_lost_or_hung_under_traffic_fails_no_request_and_sharing_returns() {
    let mut redis = RedisServer::start().await;
    let up = Upstream::start("lost").await;
    let cfg = config(&up)
        .gateway("name: open, path: /v1, auth: {method: regex, regex: '.+'}, rate_limits: ['secret:100000/minute']")
        .gateway("name: tight, path: /v2, auth: {method: regex, regex: '.+'}, rate_limits: ['secret:5/minute']")
        .build();
    let weirs = three(&with_redis(&redis, "50ms", &cfg)).await;
    for w in &weirs {
        wait_redis_up(w, 1.0).await;
    }
    // Killed in the middle of the traffic.
    let (during, ()) = tokio::join!(traffic(&weirs, 120, "sk-load"), async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        redis.kill();
    });
    let statuses = [during, traffic(&weirs, 60, "sk-load").await].concat();
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    for w in &weirs {
        wait_redis_up(w, 0.0).await;
        assert_eq!(
            w.health().await,
            json!({"status": "degraded", "backends": {"redis": "down", "store": "up"}})
        );
        // The log is written in the background: wait for the line, then there is one.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !w.log().contains("Redis lost") {
            assert!(Instant::now() < deadline, "not logged:\n{}", w.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(w.log().matches("Redis lost").count(), 1, "logged once");
    }

    // Back (empty): shared again, exactly.
    redis.restart().await;
    for w in &weirs {
        wait_redis_up(w, 1.0).await;
    }
    let answers =
        join_all((0..15).map(|i| call(&weirs[i % 3], "/v2/chat/completions", "sk-after", "m")))
            .await;
    let passed = answers.iter().filter(|r| r.status() == 200).count();
    assert_eq!(passed, 5);

    // Hung (SIGSTOP): a call gives up after its 50 ms budget and the instance
    // counts locally; without the timeout these requests would wait forever (the
    // client's own 10 s timeout turns that into a failure here).
    redis.pause();
    let statuses = traffic(&weirs, 24, "sk-hung").await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    for w in &weirs {
        wait_redis_up(w, 0.0).await;
    }
    redis.resume();
    for w in &weirs {
        wait_redis_up(w, 1.0).await;
    }
}

#[tokio::test]
async fn a_channel_one_instance_suspends_is_spared_by_the_others_until_it_is_readmitted() {
    let redis = RedisServer::start().await;
    let flaky = Upstream::start("flaky").await;
    let backup = Upstream::start("backup").await;
    flaky.always(Reply::Status(500));
    let cfg = Config::new()
        .openai("flaky", &flaky, "priority: 10, retries: 0")
        .openai("backup", &backup, "priority: 1")
        .build();
    let body = with_redis(&redis, "1s", &cfg);
    let server = "  health: {failures: 2, cooldown: 10m, max_cooldown: 1h}";
    let a = Weir::start_with_server(&body, server).await;
    let b = Weir::start_with_server(&body, server).await;
    for w in [&a, &b] {
        wait_redis_up(w, 1.0).await;
    }
    let client = reqwest::Client::new();
    for _ in 0..2 {
        let (s, _) = post(&client, &a.url("/v1/chat/completions"), &chat("m", false)).await;
        assert_eq!(s, 200);
    }
    assert_eq!(flaky.calls(), 2);
    // B never called it, yet holds it out: its requests go to the backup.
    let state = |w: &Weir| {
        let url = w.admin_url("/admin/channels");
        async move {
            let v: Value = reqwest::Client::new()
                .get(url)
                .bearer_auth(ADMIN_KEY)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["channels"][0]["health"]["state"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while state(&b).await != "suspended" {
        assert!(Instant::now() < deadline, "B never heard of the suspension");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..5 {
        let (s, body) = post(&client, &b.url("/v1/chat/completions"), &chat("m", false)).await;
        assert_eq!(s, 200);
        assert!(body.contains("upstream backup"), "{body}");
    }
    assert_eq!(flaky.calls(), 2, "B spared the failing channel");
    // Fixed and tested on A: B takes it back at once, without waiting 10 minutes.
    flaky.always(Reply::Ok);
    let (s, v) = a
        .admin(
            "POST",
            "/admin/channels/flaky/test",
            Some(json!({"readmit": true})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while state(&b).await != "healthy" {
        assert!(Instant::now() < deadline, "B never heard of the recovery");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, body) = post(&client, &b.url("/v1/chat/completions"), &chat("m", false)).await;
    assert!(body.contains("upstream flaky"), "{body}");
}

/// The admission script against `weir_filters::rolling` (the local counting the
/// property test proves exact), on the same random request times: the same
/// verdicts, the same waits and headroom, refunds included. The script's clock is
/// Redis's; here it reads the time from its last argument instead.
#[tokio::test]
async fn the_redis_script_counts_exactly_as_the_local_rolling_window() {
    use rand::{rngs::SmallRng, Rng, SeedableRng};
    use weir_filters::rolling::{RollingLog, Window};
    let redis = RedisServer::start().await;
    let source =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/shared/admit.lua"))
            .unwrap();
    let clock = "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)";
    assert!(
        source.contains(clock),
        "the script reads Redis's clock as expected"
    );
    let admit = redis::Script::new(&source.replace(clock, "local now = tonumber(ARGV[#ARGV])"));
    let refund = redis::Script::new(include_str!("../src/shared/refund.lua"));
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut rng = SmallRng::seed_from_u64(0x5eed_4ed1);
    for case in 0..60 {
        let w = Window {
            limit: rng.gen_range(1..6),
            window_ms: if rng.gen_bool(0.5) {
                rng.gen_range(1..3_000)
            } else {
                rng.gen_range(60_000..3_600_000)
            },
        };
        let (log, total) = (format!("t:rl:{case}"), format!("t:rt:{case}"));
        let mut local = RollingLog::default();
        let mut now = 1_767_262_650_000u64;
        for step in 0..120 {
            now += rng.gen_range(0..w.window_ms / 2 + 2);
            let reply: Vec<i64> = admit
                .key("t:bal")
                .key("t:spend")
                .key("t:tok")
                .key(&log)
                .key(&total)
                // One request of one rule, no money, no quota; the clock last.
                .arg(1)
                .arg(1)
                .arg("")
                .arg(0)
                .arg("")
                .arg(0)
                .arg("")
                .arg(1)
                .arg(w.limit)
                .arg(w.window_ms)
                .arg(w.bucket_ms())
                .arg(now)
                .invoke_async(&mut conn)
                .await
                .unwrap();
            let at = match local.check(now, w) {
                Ok(left) => {
                    let reset = local.reset_ms(now, w);
                    let at = local.take(now, w);
                    assert_eq!(
                        reply,
                        vec![5, 0, now as i64, at as i64, i64::from(left), reset as i64],
                        "case {case} step {step} {w:?}"
                    );
                    Some(at)
                }
                Err(wait) => {
                    assert_eq!(
                        reply,
                        vec![3, 1, 0, wait as i64],
                        "case {case} step {step} {w:?}"
                    );
                    None
                }
            };
            if let Some(at) = at.filter(|_| rng.gen_bool(0.1)) {
                local.give_back(at, w);
                let _: i64 = refund
                    .key(&log)
                    .key(&total)
                    .arg(at / w.bucket_ms())
                    .invoke_async(&mut conn)
                    .await
                    .unwrap();
            }
        }
    }
}
