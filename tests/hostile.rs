#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! One client cannot hurt the others: a storm of malformed requests is refused
//! before any channel sees it, each with a clean OpenAI-shaped 4xx, and the only
//! channel stays healthy for the next normal request.

mod common;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

/// Bodies a hostile or broken client sends; `i` varies them.
fn hostile(i: usize) -> Vec<u8> {
    let user = json!([{"role": "user", "content": "hi"}]);
    let deep = format!("{}{}", "[".repeat(1_000 + i % 7), "]".repeat(1_000 + i % 7));
    let bodies: Vec<Value> = vec![
        json!({"model": i, "messages": user}),
        json!({"model": ["m"], "messages": user}),
        json!({"model": {"name": "m"}, "messages": user}),
        json!({"model": null, "messages": user}),
        json!({"model": "", "messages": user}),
        json!({"messages": user}),
        json!({"model": "m"}),
        json!({"model": "m", "messages": format!("hello {i}")}),
        json!({"model": "m", "messages": i}),
        json!({"model": "m", "messages": {"role": "user", "content": "hi"}}),
        json!({"model": "m", "messages": []}),
        json!({"model": "m", "messages": [i]}),
        json!({"model": "m", "messages": [[{"role": "user", "content": "hi"}]]}),
        json!({"model": "m", "messages": [{"role": i, "content": "hi"}]}),
        json!({"model": "m", "messages": [{"role": "robot", "content": "hi"}]}),
        json!({"model": "m", "messages": [{"role": "user"}]}),
        json!({"model": "m", "messages": [{"role": "user", "content": i}]}),
        json!({"model": "m", "messages": [{"role": "user", "content": {"text": "hi"}}]}),
        json!({"model": "m", "messages": [{"role": "user", "content": [i]}]}),
        json!({"model": "m", "messages": user, "stream": "yes"}),
        json!({"model": "m", "messages": user, "stream": 1}),
        json!({"model": "m", "messages": user, "stream_options": "usage"}),
        json!({"model": "m", "messages": user, "temperature": "hot"}),
        json!({"model": "m", "messages": user, "max_tokens": -5}),
        json!({"model": "m", "messages": user, "n": 0}),
        json!({"model": "m", "messages": user, "tools": [{"type": "function"}]}),
        json!({"model": "m", "messages": user, "stop": [1, 2]}),
    ];
    let raw: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"   ".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"\"a string\"".to_vec(),
        b"42".to_vec(),
        b"{\"model\": \"m\", \"messages\": [".to_vec(),
        b"{\"model\": \"m\"} trailing".to_vec(),
        b"{\"model\": \"m\xff\xfe\", \"messages\": []}".to_vec(),
        b"{\"model\": \"m\", \"messages\": 1e999}".to_vec(),
        format!("{{\"model\": \"m\", \"messages\": {deep}}}").into_bytes(),
        format!(
            "{{\"model\": \"m\", \"messages\": [{{\"role\": \"user\", \"content\": {deep}}}]}}"
        )
        .into_bytes(),
    ];
    let n = bodies.len() + raw.len();
    match i % n {
        k if k < bodies.len() => serde_json::to_vec(&bodies[k]).unwrap(),
        k => raw[k - bodies.len()].clone(),
    }
}

#[tokio::test]
async fn two_thousand_hostile_requests_leave_the_channel_serving() {
    let up = Upstream::start("only").await;
    up.always(Reply::Picky);
    // One channel with the default health policy: a few 500s would suspend it.
    let cfg = Config::new().openai("only", &up, "");
    let weir = Weir::start(&cfg.build()).await;
    let client = reqwest::Client::new();
    let url = weir.url("/v1/chat/completions");
    let answers: Vec<(usize, u16, String)> = futures_util::stream::iter(0..2_000)
        .map(|i| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(hostile(i))
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                (i, status, r.text().await.unwrap())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for (i, status, body) in &answers {
        assert!(
            matches!(status, 400 | 404),
            "request {i} ({}) got {status}: {body}",
            String::from_utf8_lossy(&hostile(*i))
                .chars()
                .take(120)
                .collect::<String>()
        );
        let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        assert_eq!(v["error"]["type"], "invalid_request_error", "{body}");
        assert!(v["error"]["code"].is_string(), "{body}");
    }
    assert_eq!(up.calls(), 0, "a malformed body reached the channel");
    let (status, body) = post(&client, &url, &chat("m", false)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(&client, &url, &chat("m", true)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn a_refusal_names_the_field_as_openai_does() {
    let up = Upstream::start("named").await;
    let cfg = Config::new().openai("named", &up, "");
    let weir = Weir::start(&cfg.build()).await;
    let client = reqwest::Client::new();
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": 7}]});
    let (status, text) = post(&client, &weir.url("/v1/chat/completions"), &body).await;
    assert_eq!(status, 400);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["param"], "messages[1].content");
    assert_eq!(v["error"]["code"], "invalid_type");
    assert_eq!(
        v["error"]["message"],
        "Invalid type for 'messages[1].content': expected one of a string or an array of objects, but got an integer instead."
    );
    let (status, text) = post(
        &client,
        &weir.url("/v1/embeddings"),
        &json!({"model": "m", "input": []}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(error_code(&text), "empty_array");
    assert_eq!(up.calls(), 0);
}
