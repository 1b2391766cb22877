#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! `https` upstreams: rustls with SNI and real certificate verification.

mod common;

use common::*;

#[tokio::test]
async fn https_upstream_is_verified_and_streams() {
    let (up, ca_pem) = Upstream::start_tls("secure").await;
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca_pem).unwrap();
    let base_url = format!("{}/v1", up.https_url());
    let cfg = Config::new().channel_at("secure", "openai", &base_url, "models: [m], retries: 0");
    let weir =
        Weir::start_with_server(&cfg.build(), &format!("  ca_file: '{}'", ca_path.display())).await;
    let client = reqwest::Client::new();
    let (status, body) = post(
        &client,
        &weir.url("/v1/chat/completions"),
        &chat("m", false),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("upstream secure"));
    let (status, body) = post(&client, &weir.url("/v1/chat/completions"), &chat("m", true)).await;
    assert_eq!(status, 200);
    assert!(body.ends_with("data: [DONE]\n\n"));
    assert_eq!(up.calls(), 2);
    assert_eq!(up.seen()[0].path, "/v1/chat/completions");
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused() {
    let (up, _ca_pem) = Upstream::start_tls("untrusted").await;
    let cfg = Config::new()
        .channel_at(
            "untrusted",
            "openai",
            &up.https_url(),
            "models: [m], retries: 0",
        )
        .build();
    // System roots only: the test CA is unknown, so the handshake must fail.
    let weir = Weir::start(&cfg).await;
    let (status, body) = post(
        &reqwest::Client::new(),
        &weir.url("/v1/chat/completions"),
        &chat("m", false),
    )
    .await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("untrusted: connect failed"), "{body}");
    assert_eq!(up.calls(), 0);
}
