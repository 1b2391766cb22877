#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! Docking (A6): a channel template from a provider's own model list (OpenAI-,
//! Anthropic- and Gemini-shaped), stored when asked; and each way it fails.

mod common;

use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use common::*;
use serde_json::{json, Value};

const GOOD: &str = "sk-docking-good-key-0123";

/// The three providers' model lists behind their own key headers; `/garbage/v1/models`
/// answers text.
async fn lists(uri: Uri, headers: HeaderMap) -> Response {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    let path = uri.path();
    if path.starts_with("/garbage") {
        return "<html>hello</html>".into_response();
    }
    if path == "/v1beta/models" {
        if header("x-goog-api-key") != GOOD {
            return (StatusCode::BAD_REQUEST, "{}").into_response();
        }
        return axum::Json(json!({"models": [
            {"name": "models/gemini-2.0-flash", "supportedGenerationMethods": ["generateContent"]},
            {"name": "models/text-embedding-004", "supportedGenerationMethods": ["embedContent"]}]}))
        .into_response();
    }
    if path == "/v1/models" && !header("x-api-key").is_empty() {
        if header("x-api-key") != GOOD {
            return (StatusCode::UNAUTHORIZED, "{}").into_response();
        }
        return axum::Json(json!({"data": [{"id": "claude-sonnet-4", "type": "model"}]}))
            .into_response();
    }
    if path == "/v1/models" {
        if header("authorization") != format!("Bearer {GOOD}") {
            return (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"error": {"code": "invalid_api_key"}})),
            )
                .into_response();
        }
        return axum::Json(
            json!({"object": "list", "data": [{"id": "qwen2-7b"}, {"id": "deepseek"}]}),
        )
        .into_response();
    }
    StatusCode::NOT_FOUND.into_response()
}

async fn list_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, axum::Router::new().fallback(lists))
            .await
            .unwrap();
    });
    format!("http://{addr}")
}

async fn discover(weir: &Weir, body: Value) -> (u16, Value) {
    weir.admin("POST", "/admin/channels/discover", Some(body))
        .await
}

#[tokio::test]
async fn each_provider_docks_and_a_saved_channel_serves() {
    let url = list_server().await;
    let a = Upstream::start("dock").await;
    let body = Config::new()
        .openai("file-ch", &a, "")
        .gateway("name: default, path: /v1")
        .build();
    let weir = Weir::start(&format!("  secret_key: 'docking-test-secret-key'\n{body}")).await;
    for (kind, want) in [
        ("openai", vec!["deepseek", "qwen2-7b"]),
        ("anthropic", vec!["claude-sonnet-4"]),
        ("gemini", vec!["gemini-2.0-flash"]),
    ] {
        let (status, v) =
            discover(&weir, json!({"type": kind, "base_url": url, "key": GOOD})).await;
        assert_eq!(status, 200, "{kind}: {v}");
        assert_eq!(v["models"], json!(want), "{kind}");
        assert_eq!(v["channel"]["type"], kind);
        assert!(!v.to_string().contains(GOOD), "the key came back");
    }
    // Saved: a stored channel with the key, serving what it listed.
    let (status, v) = discover(
        &weir,
        json!({"type": "openai", "base_url": a.url(), "key": GOOD, "save": true, "name": "docked"}),
    )
    .await;
    // The mock upstream's /v1/models is a chat answer, not a list.
    assert_eq!(status, 502, "{v}");
    let (status, v) = discover(
        &weir,
        json!({"type": "openai", "base_url": url, "key": GOOD, "save": true, "name": "docked"}),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(
        (v["source"].as_str(), v["name"].as_str()),
        (Some("store"), Some("docked"))
    );
    assert_eq!(v["models"], json!(["deepseek", "qwen2-7b"]));
    let (status, v) = discover(
        &weir,
        json!({"type": "openai", "base_url": url, "save": true}),
    )
    .await;
    assert_eq!(status, 400, "{v}");
}

#[tokio::test]
async fn every_failure_says_what_went_wrong() {
    let url = list_server().await;
    let weir = Weir::start(
        &Config::new()
            .channel_at("m", "mock", "http://unused", "models: [m]")
            .build(),
    )
    .await;
    let message = |v: &Value| v["error"]["message"].as_str().unwrap_or("").to_string();
    let cases = [
        // Nothing listens on port 1 of loopback.
        (
            json!({"type": "openai", "base_url": "http://127.0.0.1:1", "key": GOOD}),
            502,
            "connect",
        ),
        // TLS to a plain-HTTP port.
        (
            json!({"type": "openai", "base_url": url.replace("http://", "https://"), "key": GOOD}),
            502,
            "127.0.0.1",
        ),
        (
            json!({"type": "openai", "base_url": url, "key": "sk-wrong"}),
            400,
            "HTTP 401",
        ),
        (
            json!({"type": "anthropic", "base_url": url, "key": "sk-wrong"}),
            400,
            "HTTP 401",
        ),
        (
            json!({"type": "openai", "base_url": format!("{url}/garbage"), "key": GOOD}),
            502,
            "not a openai model list",
        ),
        (
            json!({"type": "openai", "base_url": "ftp://x", "key": GOOD}),
            400,
            "base_url",
        ),
        (
            json!({"type": "carrier-pigeon", "base_url": url}),
            400,
            "type",
        ),
        (
            json!({"type": "azure", "base_url": url, "key": GOOD}),
            400,
            "Azure",
        ),
        (json!({"type": "openai", "colour": 1}), 400, "colour"),
    ];
    for (body, status, needle) in cases {
        let (got, v) = discover(&weir, body.clone()).await;
        assert_eq!(got, status, "{body}: {v}");
        assert!(message(&v).contains(needle), "{body}: {}", message(&v));
    }
}
