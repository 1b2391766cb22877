#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! Data masking (`gateways[].masking`): what the upstream sees, what the client
//! gets back, what the call log and the metrics keep. Against the mock OpenAI
//! upstream echoing its prompt three characters a chunk, so placeholders cross
//! chunk boundaries.

mod common;

use common::*;
use serde_json::{json, Value};

const SECRET_TEXT: &str = "我是张三，手机13812345678，身份证11010519491231002X，邮箱zhang.san@example.com，卡号6222021234567890128，备用邮箱zhang.san@example.com，工号EMP-123456。";
const MASKED_TEXT: &str = "我是张三，手机[PHONE_1]，身份证[CN_ID_1]，邮箱[EMAIL_1]，卡号[BANK_CARD_1]，备用邮箱[EMAIL_1]，工号[EMPLOYEE_1]。";
const VALUES: [&str; 5] = [
    "13812345678",
    "11010519491231002X",
    "zhang.san@example.com",
    "6222021234567890128",
    "EMP-123456",
];

fn config(up: &Upstream, restore: bool) -> String {
    Config::new()
        .openai("echo", up, "")
        .gateway(&format!(
            "name: default, path: /v1, masking: {{detectors: [all], custom: [{{name: employee, pattern: 'EMP-\\d{{6}}'}}], restore: {restore}}}"
        ))
        .build()
}

fn ask(stream: bool) -> Value {
    json!({"model": "m", "stream": stream, "messages": [
        {"role": "system", "content": "Repeat the user."},
        {"role": "user", "content": SECRET_TEXT}]})
}

/// The text of a chat answer, JSON or SSE.
fn answer_text(body: &str, stream: bool) -> String {
    if !stream {
        let v: Value = serde_json::from_str(body).unwrap();
        return v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string();
    }
    text_of_stream(body)
}

#[tokio::test]
async fn findings_are_masked_upstream_and_restored_for_the_client() {
    let up = Upstream::start("echo").await;
    up.always(Reply::Echo);
    let mut weir = Weir::start(&config(&up, true)).await;
    let client = reqwest::Client::new();
    let url = weir.url("/v1/chat/completions");
    for stream in [false, true] {
        let (status, body) = post(&client, &url, &ask(stream)).await;
        assert_eq!(status, 200, "{body}");
        // The upstream saw placeholders only, the same value the same one.
        let seen = up.seen().last().unwrap().body.clone();
        assert_eq!(
            seen["messages"][1]["content"], MASKED_TEXT,
            "stream={stream}"
        );
        for v in VALUES {
            assert!(!seen.to_string().contains(v), "{v} reached the upstream");
        }
        // The client reads its own values back, across 3-character chunks.
        assert_eq!(
            answer_text(&body, stream),
            SECRET_TEXT,
            "stream={stream}: {body}"
        );
    }
    let metrics = weir
        .wait_metric("weir_masked_total", &[("detector", "email")], 4.0)
        .await;
    assert_eq!(
        metric_sum(&metrics, "weir_masked_total", &[("detector", "phone")]),
        2.0
    );
    assert_eq!(
        metric_sum(&metrics, "weir_masked_total", &[("detector", "employee")]),
        2.0
    );
    // The call log says what was masked, never the values.
    assert!(weir.stop_gracefully().success());
    weir.restart().await;
    let logs = weir.admin_get("/admin/logs").await;
    let rows = logs["data"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{logs}");
    assert_eq!(
        rows[0]["masked"], "bank_card:1,cn_id:1,email:2,employee:1,phone:1",
        "{}",
        rows[0]
    );
    let db = std::fs::read(weir.db_path()).unwrap();
    let wal = std::fs::read(weir.db_path().with_extension("db-wal")).unwrap_or_default();
    for v in VALUES {
        for bytes in [&db, &wal] {
            assert!(
                !bytes.windows(v.len()).any(|w| w == v.as_bytes()),
                "{v} in the store"
            );
        }
    }
}

/// Without `restore`, the client sees the placeholders; a failed call's kept
/// request body is the masked one.
#[tokio::test]
async fn without_restore_placeholders_stay_and_failed_bodies_are_masked() {
    let up = Upstream::start("echo").await;
    up.always(Reply::Echo);
    let mut weir = Weir::start(&config(&up, false)).await;
    let client = reqwest::Client::new();
    let url = weir.url("/v1/chat/completions");
    let (status, body) = post(&client, &url, &ask(true)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(answer_text(&body, true), MASKED_TEXT);
    up.always(Reply::Status(500));
    let (status, _) = post(&client, &url, &ask(false)).await;
    assert_eq!(status, 502);
    assert!(weir.stop_gracefully().success());
    weir.restart().await;
    let logs = weir.admin_get("/admin/logs?status=5xx").await;
    let row = &logs["data"][0];
    let id = row["id"].as_i64().unwrap();
    let kept = weir
        .admin_get(&format!("/admin/logs/{id}"))
        .await
        .to_string();
    assert!(kept.contains("[PHONE_1]"), "{kept}");
    for v in VALUES {
        assert!(!kept.contains(v), "{v} kept: {kept}");
    }
}

#[tokio::test]
async fn a_bad_masking_config_names_its_field() {
    let up = Upstream::start("echo").await;
    let cfg = Config::new()
        .openai("echo", &up, "")
        .gateway("name: default, path: /v1, masking: {detectors: [emial]}")
        .build();
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = weir_check(dir.path(), &cfg, "");
    assert!(!ok);
    assert!(
        out.contains("gateways[0].masking.detectors[0]: unknown detector `emial`"),
        "{out}"
    );
}
