#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! The web manager (A8) in a real browser: Debian's headless Chromium, driven
//! through chromedriver (both installed by `.ci/run`), against the real binary and
//! a mock OpenAI-compatible provider. Screenshots of each page are written to
//! `target/tmp/manager-screenshots/`.

mod common;

use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const PROVIDER_KEY: &str = "sk-provider-key-for-the-browser-test";

/// A provider with two models: `good-model` answers, `bad-model` fails with a 500.
async fn provider(headers: HeaderMap, uri: axum::http::Uri, body: String) -> Response {
    let authorized = headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {PROVIDER_KEY}"));
    if !authorized {
        return (axum::http::StatusCode::UNAUTHORIZED, "{}").into_response();
    }
    if uri.path() == "/v1/models" {
        return axum::Json(
            json!({"object": "list", "data": [{"id": "good-model"}, {"id": "bad-model"}]}),
        )
        .into_response();
    }
    let req: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if req["model"] == "bad-model" {
        let err = json!({"error": {"message": "bad-model broke", "type": "server_error"}});
        return (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(err),
        )
            .into_response();
    }
    axum::Json(json!({
        "id": "c1", "object": "chat.completion", "created": 1, "model": req["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    }))
    .into_response()
}

async fn provider_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, axum::Router::new().fallback(provider))
            .await
            .unwrap();
    });
    format!("http://{addr}")
}

/// chromedriver on a port it picks itself (`--port=0`, read back from its first
/// lines), killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Driver {
        let mut child = Command::new("chromedriver")
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is not installed: run .ci/run (it installs chromium and chromium-driver)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let port = lines
            .by_ref()
            .take(20)
            .find_map(|l| {
                let l = l.ok()?;
                let rest = l.split("started successfully on port ").nth(1)?;
                rest.trim_end_matches('.').trim().parse().ok()
            })
            .expect("chromedriver did not say which port it got");
        // Keep reading its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Driver { child, port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver, profile: &std::path::Path) -> Client {
    let args = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
    ];
    let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    let caps = json!({
        "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args},
        // Destructive buttons ask first; the test says yes.
        "unhandledPromptBehavior": "accept",
    });
    let serde_json::Value::Object(caps) = caps else {
        unreachable!()
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("chromium did not start under chromedriver")
}

/// Fills fields by id and presses the first submit button of the form `form` (CSS).
async fn submit(c: &Client, form: &str, fields: &[(&str, &str)]) {
    for (id, value) in fields {
        let input = c.find(Locator::Id(id)).await.unwrap();
        if input.tag_name().await.unwrap() == "select" {
            input.select_by_value(value).await.unwrap();
        } else {
            input.clear().await.unwrap();
            input.send_keys(value).await.unwrap();
        }
    }
    let button = c
        .find(Locator::Css(&format!("{form} button[type=submit]")))
        .await
        .unwrap();
    click_and_wait(c, &button).await;
}

/// Clicks something that loads a new page, and waits until the new page is there
/// (the old one is marked, so its own `complete` state does not count).
async fn click_and_wait(c: &Client, e: &fantoccini::elements::Element) {
    c.execute("window.__weirOld = true", vec![]).await.unwrap();
    e.click().await.unwrap();
    wait_loaded(c).await;
}

async fn wait_loaded(c: &Client) {
    for _ in 0..200 {
        let ready = c
            .execute(
                "return !window.__weirOld && document.readyState === 'complete'",
                vec![],
            )
            .await;
        if matches!(ready, Ok(Value::Bool(true))) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the page did not load");
}

async fn text(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn body(c: &Client) -> String {
    text(c, "body").await
}

fn shots() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("manager-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(shots().join(format!("{name}.png")), png).unwrap();
}

async fn open(c: &Client, weir: &Weir, path: &str, name: &str) {
    c.goto(&weir.admin_url(path)).await.unwrap();
    wait_loaded(c).await;
    shot(c, name).await;
    // Every field a person fills has its label.
    let unlabelled = c
        .execute(
            "return [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
               .filter(e => !(e.id && document.querySelector(`label[for='${e.id}']`)) && !e.getAttribute('aria-label'))
               .map(e => e.name)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(unlabelled, json!([]), "{path}: fields without a label");
}

async fn sign_in(c: &Client, weir: &Weir, key: &str) {
    c.goto(&weir.admin_url("/manager/login")).await.unwrap();
    submit(c, "main form", &[("login-key", key)]).await;
}

/// Polls until the call log holds `n` rows (it is written every flush interval).
async fn wait_rows(weir: &Weir, n: usize) {
    for _ in 0..100 {
        let v = weir.admin_get("/admin/logs").await;
        if v["data"].as_array().map_or(0, Vec::len) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the call log never held {n} rows");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_and_a_user_run_weir_from_the_browser() {
    let upstream = provider_server().await;
    let yaml = format!(
        "  secret_key: browser-test-secret-key-0123\n{}",
        Config::new()
            .channel_at(
                "local",
                "mock",
                "http://127.0.0.1:9",
                "models: [local-model]"
            )
            .gateway("name: default, path: /v1, auth: {method: database}")
            .section("logs: {keep: 30d, keep_failed_bodies: 1d}")
            .build()
    );
    let weir = Weir::start(&yaml).await;
    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let c = browser(&driver, profile.path()).await;

    // The operator signs in with the bootstrap key.
    c.goto(&weir.admin_url("/manager/")).await.unwrap();
    wait_loaded(&c).await;
    assert!(c
        .current_url()
        .await
        .unwrap()
        .path()
        .ends_with("/manager/login"));
    shot(&c, "login").await;
    sign_in(&c, &weir, ADMIN_KEY).await;
    assert!(body(&c).await.contains("Dashboard"));

    // A model with prices, and a group that grants it.
    open(&c, &weir, "/manager/models", "models").await;
    submit(
        &c,
        "#put-model",
        &[
            ("put-model-name", "good-model"),
            ("put-model-price_in", "2"),
            ("put-model-price_out", "4"),
        ],
    )
    .await;
    assert!(text(&c, "table").await.contains("good-model"));
    open(&c, &weir, "/manager/groups", "groups").await;
    submit(
        &c,
        "#create-group",
        &[
            ("create-group-name", "team"),
            ("create-group-models", "good-model, bad-model"),
        ],
    )
    .await;
    assert!(body(&c).await.contains("team"));
    assert_eq!(
        weir.admin_get("/admin/groups").await["groups"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["name"] == "team")
            .count(),
        1
    );

    // A key in that group: its secret is shown once, with a copy button.
    open(&c, &weir, "/manager/keys", "keys").await;
    c.find(Locator::Css("details.card summary"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    submit(
        &c,
        "#create-key",
        &[
            ("create-key-name", "alice"),
            ("create-key-group", "team"),
            ("create-key-monthly_budget", "10"),
        ],
    )
    .await;
    let alice_key = text(&c, "#new-key").await;
    assert!(alice_key.starts_with("sk-"), "{alice_key}");
    shot(&c, "key-created").await;
    let copy = c.find(Locator::Css("[data-copy=new-key]")).await.unwrap();
    copy.click().await.unwrap();
    let copied = c
        .execute("return document.querySelector('[data-copy=new-key]').textContent === '✓' || window.getSelection().toString()", vec![])
        .await
        .unwrap();
    assert!(
        copied == json!(true) || copied == json!(alice_key),
        "copy did nothing: {copied:?}"
    );
    c.refresh().await.unwrap();
    wait_loaded(&c).await;
    assert!(
        !body(&c).await.contains(&alice_key),
        "the secret was shown twice"
    );

    // A channel docked from the provider's own model list, then tested per model.
    open(&c, &weir, "/manager/channels", "channels").await;
    submit(
        &c,
        "#dock",
        &[
            ("dock-type", "openai"),
            ("dock-base_url", &upstream),
            ("dock-key", PROVIDER_KEY),
            ("dock-name", "docked"),
        ],
    )
    .await;
    // Both buttons submit; the first (discover only) shows the models found.
    assert!(text(&c, "#dock-models").await.contains("good-model"));
    // The form keeps what was typed but the key, which is asked again.
    assert_eq!(
        c.find(Locator::Id("dock-base_url"))
            .await
            .unwrap()
            .prop("value")
            .await
            .unwrap()
            .as_deref(),
        Some(upstream.as_str())
    );
    c.find(Locator::Id("dock-key"))
        .await
        .unwrap()
        .send_keys(PROVIDER_KEY)
        .await
        .unwrap();
    let save = c
        .find(Locator::Css("#dock button[value=true]"))
        .await
        .unwrap();
    click_and_wait(&c, &save).await;
    assert!(
        body(&c).await.contains("Saved as docked"),
        "{}",
        body(&c).await
    );
    open(&c, &weir, "/manager/channels/docked", "channel").await;
    submit(&c, "#test", &[]).await;
    let results = text(&c, "#test-results").await;
    assert!(
        results.contains("good-model") && results.contains("passed"),
        "{results}"
    );
    assert!(
        results.contains("bad-model") && results.contains("failed"),
        "{results}"
    );
    shot(&c, "channel-tested").await;

    // Alice calls: one answer, one failure.
    let http = reqwest::Client::new();
    for (model, want) in [("good-model", 200), ("bad-model", 502)] {
        let r = http
            .post(weir.url("/v1/chat/completions"))
            .bearer_auth(&alice_key)
            .json(&chat(model, false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), want, "{model}");
    }
    // Someone else's call, which alice must never see.
    let (_, bob_key) = weir
        .create_key(json!({"name": "bob", "group": "team"}))
        .await;
    let r = http
        .post(weir.url("/v1/chat/completions"))
        .bearer_auth(&bob_key)
        .json(&chat("good-model", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_rows(&weir, 3).await;

    // The failed call's bodies in the log.
    open(&c, &weir, "/manager/logs?status=5xx", "logs").await;
    let failed = c.find(Locator::Css("tr.failed a")).await.unwrap();
    click_and_wait(&c, &failed).await;
    let request_body = text(&c, "#request-body").await;
    assert!(request_body.contains("bad-model") && !request_body.contains(&alice_key));
    let error_body = text(&c, "#error-body").await;
    assert!(
        error_body.contains("upstream_failed") && error_body.contains("HTTP 500"),
        "{error_body}"
    );
    shot(&c, "call").await;

    // The dashboard counts them.
    open(&c, &weir, "/manager/", "dashboard").await;
    assert_eq!(text(&c, "#stat-calls").await, "3");
    assert_ne!(text(&c, "#stat-errors").await, "0%");
    for page in ["gateways", "config"] {
        open(&c, &weir, &format!("/manager/{page}"), page).await;
    }
    c.goto(&weir.admin_url("/manager/?lang=zh")).await.unwrap();
    wait_loaded(&c).await;
    assert!(body(&c).await.contains("仪表盘"));
    shot(&c, "dashboard-zh").await;
    c.goto(&weir.admin_url("/manager/?lang=en")).await.unwrap();
    wait_loaded(&c).await;
    // On a phone the pages fit the screen's width (wide tables scroll in their box).
    c.set_window_size(390, 844).await.unwrap();
    for page in [
        "/manager/",
        "/manager/keys",
        "/manager/channels/docked",
        "/manager/logs",
    ] {
        c.goto(&weir.admin_url(page)).await.unwrap();
        wait_loaded(&c).await;
        let fits = c
            .execute(
                "return document.documentElement.scrollWidth <= window.innerWidth + 1",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(fits, json!(true), "{page} is wider than a phone");
    }
    shot(&c, "logs-phone").await;
    c.set_window_size(1280, 900).await.unwrap();

    // Signed out, alice signs in and sees her own usage and calls only.
    submit(&c, "header form", &[]).await;
    sign_in(&c, &weir, &alice_key).await;
    assert!(c.current_url().await.unwrap().path().ends_with("/manager/"));
    assert_eq!(text(&c, "#my-calls").await, "2");
    shot(&c, "me").await;
    open(&c, &weir, "/manager/logs", "my-calls").await;
    let rows = c
        .find_all(Locator::Css("table.calls tbody tr"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 2, "alice sees a call not hers");
    open(&c, &weir, "/manager/me/call", "how-to-call").await;
    assert!(text(&c, "#base-url").await.ends_with("/v1"));
    assert!(text(&c, "#curl-snippet").await.contains("chat/completions"));
    // No admin page, by address either.
    for page in [
        "/manager/keys",
        "/manager/channels/docked",
        "/manager/config",
    ] {
        c.goto(&weir.admin_url(page)).await.unwrap();
        wait_loaded(&c).await;
        assert!(
            body(&c).await.contains("This page is for administrators"),
            "{page}"
        );
    }
    c.close().await.unwrap();
}
