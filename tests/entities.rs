#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! Channels and gateways as data (A1) against a real weir and a real SQLite file:
//! created, changed and deleted through the admin API, served from the next request,
//! merged with the YAML ones (which stay read-only), provider keys sealed at rest.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const PROVIDER_KEY: &str = "sk-stored-provider-key-0123456789";

/// Continues the harness's `storage:` section (it ends the rendered `server:` and
/// `storage:` block), then the file's own channel on `a` and an open gateway.
fn config(a: &Upstream, secret: bool) -> String {
    let storage = if secret {
        "  secret_key: 'a-test-secret-key-of-some-length'\n"
    } else {
        ""
    };
    let rest = Config::new()
        .openai("file-ch", a, "")
        .gateway("name: default, path: /v1")
        .build();
    format!("{storage}{rest}")
}

async fn chat_status(weir: &Weir, path: &str, model: &str) -> u16 {
    post(
        &reqwest::Client::new(),
        &weir.url(path),
        &chat(model, false),
    )
    .await
    .0
}

fn message(v: &Value) -> String {
    v["error"]["message"].as_str().unwrap_or("").to_string()
}

#[tokio::test]
async fn stored_channels_serve_at_once_and_the_file_ones_stay_read_only() {
    let (a, b) = (Upstream::start("ea").await, Upstream::start("eb").await);
    let mut weir = Weir::start(&config(&a, true)).await;
    let new = json!({"name": "api-ch", "type": "openai", "base_url": b.url(),
                     "keys": [PROVIDER_KEY], "models": ["n"]});
    let (status, v) = weir
        .admin("POST", "/admin/channels", Some(new.clone()))
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["source"], "store");
    assert_eq!(v["keys"][0]["hint"], "…6789");
    // Served from the next request, with its own key.
    assert_eq!(chat_status(&weir, "/v1/chat/completions", "n").await, 200);
    let seen = b.seen();
    assert_eq!(
        seen.last().unwrap().authorization.as_deref(),
        Some(format!("Bearer {PROVIDER_KEY}").as_str())
    );
    // Listed beside the file's, never with a key in clear.
    let list = weir.admin_get("/admin/channels").await;
    let sources: Vec<(String, String)> = list["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().into(),
                c["source"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        sources.contains(&("file-ch".into(), "file".into())),
        "{sources:?}"
    );
    assert!(
        sources.contains(&("api-ch".into(), "store".into())),
        "{sources:?}"
    );
    assert!(!list.to_string().contains(PROVIDER_KEY));
    let cfg = weir.admin_get("/admin/config").await.to_string();
    assert!(
        !cfg.contains("a-test-secret-key"),
        "the secret_key shown: {cfg}"
    );
    // At rest the key is sealed: not in the database file in any form we wrote.
    let db = std::fs::read(weir.db_path()).unwrap();
    let wal = std::fs::read(weir.db_path().with_extension("db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(
            !bytes
                .windows(PROVIDER_KEY.len())
                .any(|w| w == PROVIDER_KEY.as_bytes()),
            "the provider key is stored in clear"
        );
    }

    // The file's channel is read-only here; names are unique across both.
    for (method, path, body) in [
        (
            "PATCH",
            "/admin/channels/file-ch",
            Some(json!({"weight": 2})),
        ),
        ("DELETE", "/admin/channels/file-ch", None),
        (
            "POST",
            "/admin/channels",
            Some(json!({"name": "file-ch", "type": "mock", "models": ["x"]})),
        ),
    ] {
        let (status, v) = weir.admin(method, path, body).await;
        assert_eq!(status, 409, "{method} {path}: {v}");
        assert_eq!(v["error"]["code"], "defined_in_file");
    }
    let (status, v) = weir.admin("POST", "/admin/channels", Some(new)).await;
    assert_eq!(status, 409, "{v}");

    // Survives a restart: the key opens with the same secret.
    weir.restart().await;
    assert_eq!(chat_status(&weir, "/v1/chat/completions", "n").await, 200);

    // A file that now names the stored channel is refused, naming both places.
    weir.write_config(
        &format!(
            "  secret_key: 'a-test-secret-key-of-some-length'\n{}",
            Config::new()
                .openai("file-ch", &a, "")
                .openai("api-ch", &a, "")
                .gateway("name: default, path: /v1")
                .build()
        ),
        "",
    );
    let (status, v) = weir.admin("POST", "/admin/reload", None).await;
    assert_eq!(status, 400, "{v}");
    let msg = message(&v);
    assert!(
        msg.contains("api-ch") && msg.contains("in the file and in the store"),
        "{msg}"
    );
    assert_eq!(chat_status(&weir, "/v1/chat/completions", "n").await, 200);

    // Deleted: gone from the next request.
    let (status, _) = weir.admin("DELETE", "/admin/channels/api-ch", None).await;
    assert_eq!(status, 200);
    assert_eq!(chat_status(&weir, "/v1/chat/completions", "n").await, 404);
    let (status, _) = weir.admin("GET", "/admin/channels/api-ch", None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn bad_channels_are_refused_naming_the_field_and_nothing_is_written() {
    let a = Upstream::start("bad").await;
    let weir = Weir::start(&config(&a, true)).await;
    for (body, needle) in [
        (
            json!({"name": "x", "type": "openai", "base_url": "ftp://h", "models": ["m"]}),
            "base_url",
        ),
        (
            json!({"name": "x", "type": "nope", "models": ["m"]}),
            "type",
        ),
        (
            json!({"name": "x", "type": "mock", "models": ["m"], "colour": 1}),
            "colour",
        ),
        (
            json!({"name": "x", "type": "mock", "models": ["m"], "weight": "lots"}),
            "weight",
        ),
        (
            json!({"name": "x y", "type": "mock", "models": ["m"]}),
            "name",
        ),
        (json!({"type": "mock", "models": ["m"]}), "name"),
        (json!(["not", "an", "object"]), "object"),
    ] {
        let (status, v) = weir
            .admin("POST", "/admin/channels", Some(body.clone()))
            .await;
        assert_eq!(status, 400, "{body}: {v}");
        assert!(message(&v).contains(needle), "{body}: {}", message(&v));
    }
    let list = weir.admin_get("/admin/channels").await;
    assert_eq!(list["channels"].as_array().unwrap().len(), 1, "{list}");
    let (status, v) = weir
        .admin("PATCH", "/admin/channels/nope", Some(json!({"weight": 2})))
        .await;
    assert_eq!(status, 404, "{v}");
    // A patch that would break the channel changes nothing.
    let ok = json!({"name": "m2", "type": "mock", "models": ["q"]});
    assert_eq!(weir.admin("POST", "/admin/channels", Some(ok)).await.0, 201);
    let (status, v) = weir
        .admin("PATCH", "/admin/channels/m2", Some(json!({"models": []})))
        .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(chat_status(&weir, "/v1/chat/completions", "q").await, 200);
    let (status, v) = weir
        .admin("PATCH", "/admin/channels/m2", Some(json!({"name": "m3"})))
        .await;
    assert_eq!(status, 400, "{v}");
}

#[tokio::test]
async fn provider_keys_need_a_secret_key() {
    let a = Upstream::start("nosecret").await;
    let weir = Weir::start(&config(&a, false)).await;
    let with_keys = json!({"name": "k", "type": "openai", "base_url": a.url(),
                           "keys": [PROVIDER_KEY], "models": ["n"]});
    let (status, v) = weir.admin("POST", "/admin/channels", Some(with_keys)).await;
    assert_eq!(status, 400, "{v}");
    assert!(message(&v).contains("secret_key"), "{v}");
    let without = json!({"name": "k", "type": "openai", "base_url": a.url(), "models": ["n"]});
    assert_eq!(
        weir.admin("POST", "/admin/channels", Some(without)).await.0,
        201
    );
    assert_eq!(chat_status(&weir, "/v1/chat/completions", "n").await, 200);
}

#[tokio::test]
async fn a_weight_change_moves_the_split_and_a_delete_lets_streams_finish() {
    let (a, b) = (Upstream::start("wa").await, Upstream::start("wb").await);
    let weir = Weir::start(&config(&a, true)).await;
    let new = json!({"name": "api-ch", "type": "openai", "base_url": b.url(), "models": ["m"]});
    assert_eq!(
        weir.admin("POST", "/admin/channels", Some(new)).await.0,
        201
    );
    for _ in 0..40 {
        assert_eq!(chat_status(&weir, "/v1/chat/completions", "m").await, 200);
    }
    let (a1, b1) = (a.calls(), b.calls());
    assert!(a1 > 0 && b1 > 0, "equal weights: both serve ({a1}, {b1})");
    let (status, v) = weir
        .admin(
            "PATCH",
            "/admin/channels/api-ch",
            Some(json!({"weight": 100})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["weight"], 100);
    for _ in 0..40 {
        assert_eq!(chat_status(&weir, "/v1/chat/completions", "m").await, 200);
    }
    let (a2, b2) = (a.calls() - a1, b.calls() - b1);
    assert!(
        b2 >= 35,
        "weight 100 against 1: the stored channel takes nearly all ({a2}, {b2})"
    );

    // A stream in flight keeps its snapshot when its channel is deleted.
    let b_only = json!({"weight": 100, "priority": 5});
    assert_eq!(
        weir.admin("PATCH", "/admin/channels/api-ch", Some(b_only))
            .await
            .0,
        200
    );
    b.set_chunk_delay(Duration::from_millis(60));
    let url = weir.url("/v1/chat/completions");
    let stream =
        tokio::spawn(async move { post(&reqwest::Client::new(), &url, &chat("m", true)).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (status, _) = weir.admin("DELETE", "/admin/channels/api-ch", None).await;
    assert_eq!(status, 200);
    let (status, body) = stream.await.unwrap();
    assert_eq!(status, 200);
    let events = sse_data(&body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{body}");
    // The next request no longer sees it.
    let before = b.calls();
    assert_eq!(chat_status(&weir, "/v1/chat/completions", "m").await, 200);
    assert_eq!(b.calls(), before);
}

#[tokio::test]
async fn stored_gateways_open_close_and_go() {
    let a = Upstream::start("ga").await;
    let weir = Weir::start(&config(&a, true)).await;
    let (status, v) = weir
        .admin(
            "POST",
            "/admin/gateways",
            Some(json!({"name": "team", "path": "/team/v1", "models": ["m"]})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["source"], "store");
    assert_eq!(
        chat_status(&weir, "/team/v1/chat/completions", "m").await,
        200
    );
    let (status, v) = weir
        .admin(
            "PATCH",
            "/admin/gateways/team",
            Some(json!({"active": false})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        chat_status(&weir, "/team/v1/chat/completions", "m").await,
        403
    );
    let list = weir.admin_get("/admin/gateways").await;
    let names: Vec<&str> = list["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "team"]);
    let (status, v) = weir
        .admin(
            "POST",
            "/admin/gateways",
            Some(json!({"name": "clash", "path": "/v1"})),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(message(&v).contains("path"), "{v}");
    let (status, v) = weir.admin("DELETE", "/admin/gateways/default", None).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("defined_in_file"))
    );
    assert_eq!(
        weir.admin("DELETE", "/admin/gateways/team", None).await.0,
        200
    );
    assert_eq!(
        chat_status(&weir, "/team/v1/chat/completions", "m").await,
        404
    );
}

/// A chat request with an image part (and a text part).
fn with_image(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is in it?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]})
}

#[tokio::test]
async fn text_only_models_refuse_images_and_models_carry_a_provider() {
    let a = Upstream::start("mm").await;
    let body = Config::new()
        .model("name: m, multimodal: false, provider: openai")
        .model("name: vision, multimodal: true, provider: file-ch")
        .channel_at("file-ch", "openai", &a.url(), "models: [m, vision, n]")
        .gateway("name: default, path: /v1")
        .build();
    let weir = Weir::start(&body).await;
    let client = reqwest::Client::new();
    let url = weir.url("/v1/chat/completions");
    let (status, text) = post(&client, &url, &with_image("m")).await;
    assert_eq!(status, 400, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["code"], "model_not_multimodal");
    assert_eq!(a.calls(), 0, "refused before any upstream call");
    assert_eq!(post(&client, &url, &chat("m", false)).await.0, 200);
    assert_eq!(post(&client, &url, &with_image("vision")).await.0, 200);
    // Not in the registry: not checked.
    assert_eq!(post(&client, &url, &with_image("n")).await.0, 200);
    // Registered through the API as text-only: refused from the next request.
    let def = json!({"name": "n", "multimodal": false, "provider": "openai"});
    let (status, v) = weir.admin("POST", "/admin/models", Some(def)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(post(&client, &url, &with_image("n")).await.0, 400);
    let models = weir.admin_get("/admin/models").await;
    let n = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "n")
        .unwrap()
        .clone();
    assert_eq!(
        (n["provider"].as_str(), n["source"].as_str()),
        (Some("openai"), Some("store"))
    );
    let bad = json!({"name": "z", "provider": "nowhere"});
    let (status, v) = weir.admin("POST", "/admin/models", Some(bad)).await;
    assert_eq!(status, 400, "{v}");
    assert!(message(&v).contains("provider"), "{v}");
}

/// A proxy URL with a password is a secret like a provider key: stored through
/// the admin API, it is sealed at rest, never shown, and still works after a
/// restart (tinyproxy demands the credentials).
#[tokio::test]
async fn a_stored_channels_proxy_password_is_sealed() {
    const PASSWORD: &str = "proxy-pass-0xC0FFEE";
    let proxy = ForwardProxyServer::start(Some(("weir", PASSWORD))).await;
    let (a, b) = (
        Upstream::start("file").await,
        Upstream::start("behind").await,
    );
    let mut weir = Weir::start(&config(&a, true)).await;
    let via = format!("http://weir:{PASSWORD}@127.0.0.1:{}", proxy.port);
    let new = json!({"name": "proxied", "type": "openai", "base_url": b.url(),
                     "models": ["p"], "retries": 0, "proxy": via});
    let (status, v) = weir.admin("POST", "/admin/channels", Some(new)).await;
    assert_eq!(status, 201, "{v}");
    assert!(!v.to_string().contains(PASSWORD), "{v}");
    assert_eq!(chat_status(&weir, "/v1/chat/completions", "p").await, 200);
    assert!(
        b.seen()[0].headers.contains_key("via"),
        "not through the proxy"
    );
    let listed = weir.admin_get("/admin/channels").await.to_string();
    assert!(!listed.contains(PASSWORD), "{listed}");
    assert!(listed.contains("weir:***@"), "{listed}");
    let db = std::fs::read(weir.db_path()).unwrap();
    let wal = std::fs::read(weir.db_path().with_extension("db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(
            !bytes
                .windows(PASSWORD.len())
                .any(|w| w == PASSWORD.as_bytes()),
            "the proxy password is stored in clear"
        );
    }
    weir.restart().await;
    assert_eq!(chat_status(&weir, "/v1/chat/completions", "p").await, 200);
    assert_eq!(b.calls(), 2);
    // A patch that leaves the proxy alone keeps it.
    let (status, v) = weir
        .admin(
            "PATCH",
            "/admin/channels/proxied",
            Some(json!({"weight": 3})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(chat_status(&weir, "/v1/chat/completions", "p").await, 200);
    assert_eq!(b.calls(), 3);
}
