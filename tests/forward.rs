#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! Uploads routed by their `model` field and streamed (never held whole), and
//! what names no model (files, batches) passed verbatim to the gateway's
//! `passthrough` channel, driven by the official `openai` SDK.

mod common;

use common::*;
use serde_json::{json, Value};

fn config(up: &Upstream) -> String {
    Config::new()
        .channel_at(
            "oa",
            "openai",
            &up.url(),
            "models: [whisper-1], model_mapping: ['whisper-1>whisper-large'], keys: [sk-up]",
        )
        .gateway("name: default, path: /v1, auth: {method: database}, passthrough: oa")
        .gateway("name: plain, path: /plain/v1")
        .gateway("name: bodykey, path: /bk/v1, passthrough: oa, auth: {method: regex, key_from: 'body:user_id', regex: '^u-[0-9]+$'}")
        .gateway("name: masked, path: /m/v1, passthrough: oa, masking: {detectors: [email]}")
        .build()
}

/// A body far larger than `server.max_body` (64 KiB here), so it passes only
/// if it is streamed.
fn audio() -> Vec<u8> {
    (0..2_000_000u32).map(|i| (i * 7 % 251) as u8).collect()
}

#[tokio::test]
async fn uploads_stream_by_their_model_and_files_pass_through() {
    let up = Upstream::start("oa").await;
    let mut weir = Weir::start_with_server(&config(&up), "  max_body: 64KiB").await;
    let (_, key) = weir.create_key(json!({"name": "k", "models": ["*"]})).await;
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("speech.wav");
    let sound = audio();
    std::fs::write(&wav, &sound).unwrap();
    let args = vec![weir.url("/v1"), key.clone(), wav.display().to_string()];
    let out = python_sdk("files_sdk.py", args).await;
    let seen = up.seen();
    // The transcription: the channel's own model name in the field, every byte of
    // the file after it, the length adjusted.
    let t = seen
        .iter()
        .find(|s| s.path == "/v1/audio/transcriptions")
        .unwrap();
    assert_eq!(out["text"], format!("heard {} bytes", t.raw.len()), "{out}");
    let raw = &t.raw;
    let text = String::from_utf8_lossy(raw);
    assert!(
        text.contains("name=\"model\"\r\n\r\nwhisper-large\r\n"),
        "the model field was rewritten"
    );
    assert!(
        raw.windows(sound.len().min(4096))
            .any(|w| w == &sound[..4096]),
        "the file's bytes arrived"
    );
    assert!(raw.len() > sound.len());
    assert_eq!(t.authorization.as_deref(), Some("Bearer sk-up"));
    assert!(t.headers["content-type"].starts_with("multipart/form-data; boundary="));
    // What names no model went to the passthrough channel as the SDK sent it.
    assert_eq!(out["file_id"], "file-up1");
    assert_eq!(out["listed"], json!(["file-up1"]));
    assert_eq!(out["retrieved"], "file-up1");
    assert_eq!(out["content_len"], 300_000);
    assert_eq!(out["deleted"], true);
    assert_eq!(out["batch"], "batch_1");
    let methods: Vec<(String, String)> = seen
        .iter()
        .map(|s| (s.method.clone(), s.path.clone()))
        .collect();
    for want in [
        ("POST", "/v1/files"),
        ("GET", "/v1/files"),
        ("GET", "/v1/files/file-up1/content"),
        ("DELETE", "/v1/files/file-up1"),
        ("POST", "/v1/batches"),
    ] {
        assert!(
            methods.iter().any(|(m, p)| m == want.0 && p == want.1),
            "{want:?} not in {methods:?}"
        );
    }
    assert!(seen
        .iter()
        .all(|s| s.authorization.as_deref() == Some("Bearer sk-up")));
    // An upload whose model comes after a file larger than max_body is refused,
    // saying why; a gateway without passthrough says what it lacks.
    let client = reqwest::Client::new();
    let boundary = "b0undary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&sound[..200_000]);
    body.extend_from_slice(format!("\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--{boundary}--\r\n").as_bytes());
    let r = client
        .post(weir.url("/v1/audio/transcriptions"))
        .bearer_auth(&key)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("before the file"),
        "{v}"
    );
    let r = client
        .get(weir.url("/plain/v1/files"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "a GET it does not pass on is unknown");
    let batch = json!({"input_file_id": "f", "endpoint": "/v1/chat/completions"});
    let r = client
        .post(weir.url("/plain/v1/batches"))
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("model"),
        "without passthrough it is a request without its model: {v}"
    );
    // A gateway whose key travels in a JSON body admits no GET, nor a model-less
    // POST through its passthrough without its key; one that masks passes no
    // body it cannot read.
    let calls = up.calls();
    let r = client.get(weir.url("/bk/v1/files")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .post(weir.url("/bk/v1/batches"))
        .json(&json!({"input_file_id": "f"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .post(weir.url("/m/v1/files"))
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .body(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--{boundary}--\r\n"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("masks or checks"),
        "{v}"
    );
    let r = client.get(weir.url("/m/v1/files")).send().await.unwrap();
    assert_eq!(r.status(), 200, "a GET carries nothing to mask");
    assert_eq!(up.calls(), calls + 1);
    // The transcription is billed as the upstream counted it.
    assert!(weir.stop_gracefully().success());
    weir.restart().await;
    let logs = weir.admin_get("/admin/logs?limit=50").await;
    let rows = logs["data"].as_array().unwrap();
    let row = rows.iter().find(|r| r["model"] == "whisper-1").unwrap();
    assert_eq!(
        (
            row["prompt_tokens"].as_u64(),
            row["completion_tokens"].as_u64()
        ),
        (Some(14), Some(3)),
        "{row}"
    );
    assert_eq!(row["channel"], "oa");
}
