#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! The Feishu bot (A9) on a real weir: webhooks as data, the URL challenge (plain and
//! encrypted), the token check, Feishu's retries dropped by event id, a private
//! message and a group mention answered through weir's own request path under the
//! webhook's key, and the reply sent through a protocol-faithful mock of Feishu's
//! open API that hands out tokens, expires one and records every call.

mod common;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Json;
use common::*;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the mock open API saw and hands out.
#[derive(Default)]
struct Feishu {
    token_calls: Mutex<Vec<Value>>,
    replies: Mutex<Vec<(String, String, Value)>>,
    issued: Mutex<u32>,
    /// Tokens Feishu no longer accepts.
    expired: Mutex<Vec<String>>,
}

type Shared = Arc<Feishu>;

async fn token(State(f): State<Shared>, Json(body): Json<Value>) -> Json<Value> {
    f.token_calls.lock().unwrap().push(body.clone());
    if body["app_secret"] != "app-secret" {
        return Json(json!({"code": 10014, "msg": "app secret invalid"}));
    }
    let mut n = f.issued.lock().unwrap();
    *n += 1;
    Json(json!({"code": 0, "msg": "ok", "tenant_access_token": format!("t-{n}"), "expire": 7200}))
}

fn bearer(h: &HeaderMap) -> String {
    h.get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_string()
}

fn refused(f: &Feishu, h: &HeaderMap) -> Option<(StatusCode, Json<Value>)> {
    let t = bearer(h);
    let issued = *f.issued.lock().unwrap();
    let known = (1..=issued).any(|n| t == format!("t-{n}"));
    (!known || f.expired.lock().unwrap().contains(&t)).then(|| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"code": 99991663, "msg": "Invalid access token for authorization. Please make a request with token attached."})),
        )
    })
}

async fn bot_info(State(f): State<Shared>, h: HeaderMap) -> (StatusCode, Json<Value>) {
    if let Some(r) = refused(&f, &h) {
        return r;
    }
    (
        StatusCode::OK,
        Json(json!({"code": 0, "msg": "ok", "bot": {"open_id": "ou_bot", "app_name": "weir"}})),
    )
}

async fn reply(
    State(f): State<Shared>,
    Path(id): Path<String>,
    h: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    if let Some(r) = refused(&f, &h) {
        return r;
    }
    f.replies
        .lock()
        .unwrap()
        .push((id.clone(), bearer(&h), body));
    (
        StatusCode::OK,
        Json(
            json!({"code": 0, "msg": "success", "data": {"message_id": format!("om_reply_{id}")}}),
        ),
    )
}

async fn start_feishu() -> (Shared, String) {
    let f = Shared::default();
    let app = axum::Router::new()
        .route(
            "/open-apis/auth/v3/tenant_access_token/internal",
            post(token),
        )
        .route("/open-apis/bot/v3/info", get(bot_info))
        .route("/open-apis/im/v1/messages/{id}/reply", post(reply))
        .with_state(f.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (f, url)
}

fn message_event(
    event_id: &str,
    message_id: &str,
    chat_type: &str,
    text: &str,
    mentions: Value,
) -> Value {
    json!({
        "schema": "2.0",
        "header": {"event_id": event_id, "event_type": "im.message.receive_v1", "create_time": "1796000000000",
                   "token": "verify-me", "app_id": "cli_test", "tenant_key": "tk"},
        "event": {
            "sender": {"sender_id": {"open_id": "ou_user", "union_id": "on_user", "user_id": "u1"}, "sender_type": "user", "tenant_key": "tk"},
            "message": {"message_id": message_id, "chat_id": "oc_chat", "chat_type": chat_type, "message_type": "text",
                        "content": json!({"text": text}).to_string(), "mentions": mentions, "create_time": "1796000000000"}
        }
    })
}

const ENCRYPT_KEY: &str = "encrypt-me-please";

/// Posts an event as Feishu does: to `team` (which has an encrypt key) encrypted and
/// signed, to any other webhook as it is.
async fn deliver(weir: &Weir, name: &str, body: &Value) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(weir.url(&format!("/bot/feishu/{name}/webhook/event")))
        .header("content-type", "application/json");
    let raw = if name == "team" {
        let sealed =
            weir_filters::feishu::encrypt(ENCRYPT_KEY, [5; 16], body.to_string().as_bytes());
        let raw = json!({"encrypt": sealed}).to_string();
        let signature =
            weir_filters::feishu::signature("1796000000", "nonce", ENCRYPT_KEY, raw.as_bytes());
        req = req
            .header("x-lark-request-timestamp", "1796000000")
            .header("x-lark-request-nonce", "nonce")
            .header("x-lark-signature", signature);
        raw
    } else {
        body.to_string()
    };
    let r = req.body(raw).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn raw_post(weir: &Weir, name: &str, body: &str, headers: &[(&str, String)]) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(weir.url(&format!("/bot/feishu/{name}/webhook/event")))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn wait_replies(f: &Feishu, n: usize) -> Vec<(String, String, Value)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = f.replies.lock().unwrap().clone();
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} replies: {got:?}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn reply_text(r: &(String, String, Value)) -> String {
    let content: Value = serde_json::from_str(r.2["content"].as_str().unwrap()).unwrap();
    content["text"].as_str().unwrap().to_string()
}

fn config(model: &Upstream) -> String {
    let rest = Config::new()
        .channel_at(
            "up",
            "openai",
            &model.url(),
            "models: [bot-model, other-model]",
        )
        .gateway("name: default, path: /v1, auth: {method: database}")
        .build();
    format!("  secret_key: 'a-test-secret-key-of-some-length'\n{rest}")
}

async fn setup() -> (Weir, Upstream, Shared, String, i64) {
    let model = Upstream::start("model").await;
    let (feishu, api_base) = start_feishu().await;
    let weir = Weir::start(&config(&model)).await;
    let (key_id, key) = weir
        .create_key(json!({"name": "bot", "models": ["bot-model"]}))
        .await;
    let (status, v) = weir
        .admin(
            "POST",
            "/admin/webhooks",
            Some(json!({"name": "team", "provider": "feishu", "config": {
                "appId": "cli_test", "appSecret": "app-secret", "apiKey": key, "modelId": "bot-model",
                "verificationToken": "verify-me", "encryptKey": ENCRYPT_KEY, "api_base": api_base}})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(
        v["config"]["appSecret"], "…",
        "secrets are never shown: {v}"
    );
    assert!(!v.to_string().contains(&key), "{v}");
    (weir, model, feishu, key, key_id)
}

#[tokio::test]
async fn the_url_challenge_plain_encrypted_and_with_a_wrong_token() {
    let (weir, _model, _feishu, key, _) = setup().await;
    // A webhook without an encrypt key gets its events in plain JSON.
    let (status, v) = weir
        .admin(
            "POST",
            "/admin/webhooks",
            Some(json!({"name": "plain", "provider": "feishu", "config": {
                "appId": "cli_p", "appSecret": "s", "apiKey": key, "modelId": "bot-model",
                "verificationToken": "verify-me"}})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let plain = json!({"challenge": "ch-123", "token": "verify-me", "type": "url_verification"});
    assert_eq!(
        deliver(&weir, "plain", &plain).await,
        (200, json!({"challenge": "ch-123"}))
    );
    let wrong = json!({"challenge": "x", "token": "guess", "type": "url_verification"});
    let (status, v) = deliver(&weir, "plain", &wrong).await;
    assert_eq!(status, 401, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("verificationToken"));
    assert_eq!(raw_post(&weir, "plain", "{not json", &[]).await.0, 400);
    assert_eq!(deliver(&weir, "nobody", &plain).await.0, 404);

    // With an encrypt key: the challenge comes encrypted (and unsigned), a plain one
    // is refused, one sealed with another key too.
    let challenge =
        json!({"challenge": "ch-456", "token": "verify-me", "type": "url_verification"});
    let sealed =
        weir_filters::feishu::encrypt(ENCRYPT_KEY, [9; 16], challenge.to_string().as_bytes());
    let body = json!({ "encrypt": sealed }).to_string();
    assert_eq!(
        raw_post(&weir, "team", &body, &[]).await,
        (200, json!({"challenge": "ch-456"}))
    );
    assert_eq!(
        raw_post(&weir, "team", &plain.to_string(), &[]).await.0,
        400
    );
    let sealed_wrong = weir_filters::feishu::encrypt("other-key", [1; 16], b"{}");
    let wrong_body = json!({ "encrypt": sealed_wrong }).to_string();
    assert_eq!(raw_post(&weir, "team", &wrong_body, &[]).await.0, 400);

    // An encrypted event must be signed, over the raw body.
    let event = message_event("ev-s", "om_s", "group", "no mention", json!([]));
    let sealed = weir_filters::feishu::encrypt(ENCRYPT_KEY, [3; 16], event.to_string().as_bytes());
    let body = json!({ "encrypt": sealed }).to_string();
    let headers = |signature: String| {
        [
            ("x-lark-request-timestamp", "1796000000".to_string()),
            ("x-lark-request-nonce", "n0nce".to_string()),
            ("x-lark-signature", signature),
        ]
    };
    let good = weir_filters::feishu::signature("1796000000", "n0nce", ENCRYPT_KEY, body.as_bytes());
    assert_eq!(raw_post(&weir, "team", &body, &headers(good)).await.0, 200);
    assert_eq!(
        raw_post(&weir, "team", &body, &headers("00".repeat(32)))
            .await
            .0,
        401
    );
    assert_eq!(
        raw_post(&weir, "team", &body, &[]).await.0,
        401,
        "an unsigned event"
    );
    let (status, v) = weir
        .admin(
            "POST",
            "/admin/webhooks",
            Some(json!({"name": "open", "provider": "feishu", "config": {
                "appId": "cli_o", "appSecret": "s", "apiKey": key, "modelId": "bot-model"}})),
        )
        .await;
    assert_eq!(status, 400, "a webhook needs a token or a key: {v}");
}

#[tokio::test]
async fn a_private_message_is_answered_once_through_the_gateway_and_billed_to_the_key() {
    let (weir, model, feishu, _key, key_id) = setup().await;
    let ev = message_event("ev-1", "om_1", "p2p", "What is weir?", json!([]));
    assert_eq!(
        deliver(&weir, "team", &ev).await,
        (200, json!({"msg": "success"}))
    );
    // Feishu thinks the first delivery failed and sends it again: one answer only.
    assert_eq!(deliver(&weir, "team", &ev).await.0, 200);
    let replies = wait_replies(&feishu, 1).await;
    assert_eq!(replies[0].0, "om_1");
    assert_eq!(replies[0].1, "t-1");
    assert_eq!(replies[0].2["msg_type"], "text");
    assert_eq!(reply_text(&replies[0]), "Hello from upstream model");
    let seen = model.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body["model"], "bot-model");
    assert_eq!(seen[0].body["messages"][0]["content"], "What is weir?");
    assert_eq!(
        feishu.token_calls.lock().unwrap()[0],
        json!({"app_id": "cli_test", "app_secret": "app-secret"})
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        feishu.replies.lock().unwrap().len(),
        1,
        "a repeated event is not answered twice"
    );
    // Through weir's own request path: the call log has it under the bot's key.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let logs = weir
            .admin_get(&format!("/admin/logs?key_id={key_id}"))
            .await;
        if logs["data"].as_array().unwrap().len() == 1 {
            assert_eq!(logs["data"][0]["model"], "bot-model");
            break;
        }
        assert!(Instant::now() < deadline, "{logs}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn groups_answer_mentions_of_the_bot_and_an_expired_token_is_renewed() {
    let (weir, model, feishu, _key, _) = setup().await;
    let others = json!([{"key": "@_user_1", "id": {"open_id": "ou_someone"}, "name": "Ann"}]);
    let ev = message_event("ev-g1", "om_g1", "group", "@_user_1 lunch?", others);
    assert_eq!(deliver(&weir, "team", &ev).await.0, 200);
    let at_bot = json!([{"key": "@_user_1", "id": {"open_id": "ou_bot"}, "name": "weir"}]);
    let ev = message_event(
        "ev-g2",
        "om_g2",
        "group",
        "@_user_1 how many tokens?",
        at_bot.clone(),
    );
    assert_eq!(deliver(&weir, "team", &ev).await.0, 200);
    let replies = wait_replies(&feishu, 1).await;
    assert_eq!(
        replies[0].0, "om_g2",
        "only the message that mentions the bot: {replies:?}"
    );
    assert_eq!(
        model.seen().last().unwrap().body["messages"][0]["content"],
        "how many tokens?"
    );

    // Feishu stops accepting the cached token: weir fetches a new one and replies.
    feishu.expired.lock().unwrap().push("t-1".into());
    let ev = message_event("ev-g3", "om_g3", "group", "@_user_1 again", at_bot);
    assert_eq!(deliver(&weir, "team", &ev).await.0, 200);
    let replies = wait_replies(&feishu, 2).await;
    assert_eq!(
        (replies[1].0.as_str(), replies[1].1.as_str()),
        ("om_g3", "t-2")
    );
    assert_eq!(feishu.token_calls.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_webhook_changed_or_removed_counts_from_the_next_event() {
    let (weir, model, feishu, _key, _) = setup().await;
    // The key may not use other-model: the refusal is the reply.
    let (status, v) = weir
        .admin(
            "PATCH",
            "/admin/webhooks/team",
            Some(json!({"config": {"modelId": "other-model"}})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["config"]["modelId"], "other-model");
    assert_eq!(
        v["config"]["appId"], "cli_test",
        "a patch keeps the other fields"
    );
    let ev = message_event("ev-p1", "om_p1", "p2p", "hi", json!([]));
    assert_eq!(deliver(&weir, "team", &ev).await.0, 200);
    let replies = wait_replies(&feishu, 1).await;
    assert!(
        reply_text(&replies[0]).contains("other-model"),
        "{:?}",
        replies[0]
    );
    assert!(
        model.seen().is_empty(),
        "a refused model costs the upstream nothing"
    );

    let listed = weir.admin_get("/admin/webhooks").await;
    assert_eq!(
        listed["webhooks"][0]["path"],
        "/bot/feishu/team/webhook/event"
    );
    let (status, _) = weir.admin("DELETE", "/admin/webhooks/team", None).await;
    assert_eq!(status, 200);
    let ev = message_event("ev-p2", "om_p2", "p2p", "hi", json!([]));
    assert_eq!(deliver(&weir, "team", &ev).await.0, 404);
    let (status, v) = weir
        .admin(
            "POST",
            "/admin/webhooks",
            Some(json!({"name": "x", "provider": "feishu", "config": {"appId": "a"}})),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("appSecret"),
        "{v}"
    );
}
