#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! The call log (A4) against a real weir and a real SQLite file: a row per request
//! that reached a gateway (refused ones too), a failed call's bodies and their
//! expiry, filters, cursor paging, exports, and what a user key may see.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

/// Two channels: `first` (higher priority) on `a`, `second` on `b`; keys from the
/// store, two requests a minute per key; failed bodies kept 2 s.
fn config(a: &Upstream, b: &Upstream) -> String {
    Config::new()
        .model("name: m, price_in: 1000000, price_out: 1000000")
        .openai(
            "first",
            a,
            "priority: 10, retries: 0, keys: [sk-first-provider-key-000111]",
        )
        .openai("second", b, "priority: 1")
        .gateway(
            "name: default, path: /v1, auth: {method: database}, \
             rate_limits: ['secret:3/minute']",
        )
        .section("logs: {keep: 30d, keep_failed_bodies: 2s, max_body: 4KiB}")
        .build()
}

async fn chat_as(weir: &Weir, key: Option<&str>, body: &Value) -> u16 {
    let mut req = reqwest::Client::new()
        .post(weir.url("/v1/chat/completions"))
        .json(body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    req.send().await.unwrap().status().as_u16()
}

/// Polls `GET /admin/logs?query` until it holds `n` rows (the log is written every
/// flush interval).
async fn rows(weir: &Weir, query: &str, n: usize) -> Vec<Value> {
    for _ in 0..100 {
        let v = weir.admin_get(&format!("/admin/logs?{query}")).await;
        let data = v["data"].as_array().cloned().unwrap_or_default();
        if data.len() >= n {
            return data;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the call log never held {n} rows for `{query}`");
}

#[tokio::test]
async fn every_call_has_a_row_and_failed_ones_keep_their_bodies() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let weir = Weir::start(&config(&a, &b)).await;
    let (key_id, key) = weir
        .create_key(json!({"name": "alice", "models": ["*"]}))
        .await;
    // 1: first answers. 2: first 503, second answers. 3: first says 400 (relayed).
    // 4: no key. 5: over the limit.
    assert_eq!(chat_as(&weir, Some(&key), &chat("m", false)).await, 200);
    a.script(&[Reply::Status(503)]);
    assert_eq!(chat_as(&weir, Some(&key), &chat("m", true)).await, 200);
    a.script(&[Reply::Status(400)]);
    let mut bad = chat("m", false);
    bad["temperature"] = json!(7);
    assert_eq!(chat_as(&weir, Some(&key), &bad).await, 400);
    assert_eq!(chat_as(&weir, None, &chat("m", false)).await, 401);
    assert_eq!(chat_as(&weir, Some(&key), &chat("m", false)).await, 429);

    let all = rows(&weir, "", 5).await;
    let statuses: Vec<i64> = all.iter().map(|r| r["status"].as_i64().unwrap()).collect();
    assert_eq!(
        statuses,
        [429, 401, 400, 200, 200],
        "newest first: {all:#?}"
    );
    let (limited, anonymous, relayed, failed_over, plain) =
        (&all[0], &all[1], &all[2], &all[3], &all[4]);
    assert_eq!(limited["error_code"], "rate_limit_exceeded");
    assert_eq!(limited["key_id"], key_id);
    assert_eq!(anonymous["error_code"], "invalid_api_key");
    assert!(anonymous["key_id"].is_null());
    assert_eq!(relayed["error_code"], "bad_param");
    assert_eq!(relayed["channel"], "first");
    assert_eq!(plain["model"], "m");
    assert_eq!(plain["channel"], "first");
    assert_eq!(plain["upstream"], a.url().as_str());
    assert_eq!(plain["cache"], "off");
    assert!(plain["cost"].as_f64().unwrap() > 0.0);
    assert!(plain["tried"].is_null());
    assert_eq!(failed_over["channel"], "second");
    assert_eq!(failed_over["stream"], true);
    assert!(failed_over["ttft_ms"].is_i64());
    let tried = failed_over["tried"].as_str().unwrap();
    assert!(
        tried.starts_with("first: HTTP 503") && tried.ends_with("second: HTTP 200"),
        "{tried}"
    );
    assert!(
        !tried.contains("sk-first"),
        "a provider key in `tried`: {tried}"
    );

    // The relayed 400 keeps both bodies, without the client's key.
    let id = relayed["id"].as_i64().unwrap();
    let one = weir.admin_get(&format!("/admin/logs/{id}")).await;
    let request: Value = serde_json::from_str(one["request_body"].as_str().unwrap()).unwrap();
    assert_eq!(request["temperature"], 7);
    assert!(one["error_body"]
        .as_str()
        .unwrap()
        .contains("mock says 400"));
    assert!(
        !one.to_string().contains(&key),
        "the client key reached the log"
    );
    // A success keeps none.
    let ok = weir
        .admin_get(&format!("/admin/logs/{}", plain["id"]))
        .await;
    assert!(ok["request_body"].is_null() && ok["error_body"].is_null());
    // After `keep_failed_bodies` the bodies go; the row stays.
    let mut gone = false;
    for _ in 0..100 {
        let one = weir.admin_get(&format!("/admin/logs/{id}")).await;
        assert_eq!(one["status"], 400);
        if one["request_body"].is_null() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the failed call's bodies outlived keep_failed_bodies");
}

#[tokio::test]
async fn filters_and_pages_are_exact() {
    let (a, b) = (Upstream::start("fa").await, Upstream::start("fb").await);
    let weir = Weir::start(&config(&a, &b)).await;
    let (alice_id, alice) = weir
        .create_key(json!({"name": "alice", "models": ["*"]}))
        .await;
    let (_, bob) = weir
        .create_key(json!({"name": "bob", "models": ["*"]}))
        .await;
    for _ in 0..3 {
        assert_eq!(chat_as(&weir, Some(&alice), &chat("m", false)).await, 200);
    }
    assert_eq!(chat_as(&weir, Some(&bob), &chat("m", false)).await, 200);
    assert_eq!(chat_as(&weir, Some(&bob), &chat("nope", false)).await, 404);
    rows(&weir, "", 5).await;

    let count = |q: &'static str| {
        let weir = &weir;
        async move {
            weir.admin_get(&format!("/admin/logs?{q}")).await["data"]
                .as_array()
                .unwrap()
                .len()
        }
    };
    assert_eq!(count("status=2xx").await, 4);
    assert_eq!(count("status=404").await, 1);
    assert_eq!(count("status=5xx").await, 0);
    assert_eq!(count("model=nope").await, 1);
    assert_eq!(count("channel=first").await, 4);
    assert_eq!(count("gateway=default").await, 5);
    assert_eq!(count("gateway=other").await, 0);
    assert_eq!(count("q=nope").await, 1);
    assert_eq!(count("from=2000-01-01&to=2000-01-02").await, 0);
    let mine = weir
        .admin_get(&format!("/admin/logs?key_id={alice_id}"))
        .await;
    assert_eq!(mine["data"].as_array().unwrap().len(), 3);

    // Pages of two, cursor to cursor: every row once, newest first, then the end.
    let mut ids = Vec::new();
    let mut query = "limit=2".to_string();
    for _ in 0..10 {
        let page = weir.admin_get(&format!("/admin/logs?{query}")).await;
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 2);
        ids.extend(data.iter().map(|r| r["id"].as_i64().unwrap()));
        match page["next"].as_str() {
            Some(next) => query = format!("limit=2&before={next}"),
            None => break,
        }
    }
    assert_eq!(ids.len(), 5, "{ids:?}");
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");

    // Bad input: a 400 naming what is wrong.
    for (q, needle) in [
        ("before=garbage", "cursor"),
        ("limit=5000", "limit"),
        ("status=9xx", "status"),
        ("colour=red", "colour"),
        ("from=yesterday", "yesterday"),
    ] {
        let (status, v) = weir.admin("GET", &format!("/admin/logs?{q}"), None).await;
        assert_eq!(status, 400, "{q}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{q}: {msg}");
    }
    let (status, _) = weir.admin("GET", "/admin/logs/999999", None).await;
    assert_eq!(status, 404);
    let (status, _) = weir.admin("GET", "/admin/logs/x", None).await;
    assert_eq!(status, 400);

    // A user key sees its own rows only, whatever it asks for.
    let (status, v) = weir.admin_as(&alice, "GET", "/admin/logs", None).await;
    assert_eq!(status, 200, "{v}");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    assert!(data.iter().all(|r| r["key_id"] == alice_id));
    let (status, _) = weir
        .admin_as(&alice, "GET", "/admin/logs?key_id=999", None)
        .await;
    assert_eq!(status, 403);
    let bobs = weir.admin_get("/admin/logs?status=404").await["data"][0]["id"].clone();
    let (status, _) = weir
        .admin_as(&alice, "GET", &format!("/admin/logs/{bobs}"), None)
        .await;
    assert_eq!(
        status, 404,
        "another key's call is not found for a user key"
    );
}

#[tokio::test]
async fn exports_stream_csv_and_ndjson() {
    let (a, b) = (Upstream::start("ea").await, Upstream::start("eb").await);
    let weir = Weir::start(&config(&a, &b)).await;
    let (_, key) = weir
        .create_key(json!({"name": "carol", "models": ["*"]}))
        .await;
    for _ in 0..3 {
        assert_eq!(chat_as(&weir, Some(&key), &chat("m", false)).await, 200);
    }
    assert_eq!(chat_as(&weir, Some(&key), &chat("m", false)).await, 429);
    rows(&weir, "", 4).await;
    let get = |q: &'static str| {
        let url = weir.admin_url(&format!("/admin/logs/export?{q}"));
        async move {
            let r = reqwest::Client::new()
                .get(url)
                .bearer_auth(ADMIN_KEY)
                .send()
                .await
                .unwrap();
            let ct = r.headers()["content-type"].to_str().unwrap().to_string();
            (r.status().as_u16(), ct, r.text().await.unwrap())
        }
    };
    let (status, ct, text) = get("format=csv").await;
    assert_eq!(status, 200);
    assert!(ct.starts_with("text/csv"), "{ct}");
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header = reader.headers().unwrap().clone();
    assert_eq!(&header[0], "id");
    let status_col = header.iter().position(|h| h == "status").unwrap();
    let records: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert_eq!(records.len(), 4);
    assert_eq!(&records[0][status_col], "429");

    let (status, ct, text) = get("format=ndjson&status=2xx").await;
    assert_eq!(status, 200);
    assert_eq!(ct, "application/x-ndjson");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|r| r["status"] == 200));

    let (status, _, text) = get("format=xml").await;
    assert_eq!(status, 400, "{text}");
}
