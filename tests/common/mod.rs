//! Test harness: a mock OpenAI-compatible upstream with scripted failures and call
//! counts, and a real `weir` process on loopback port 0 (it reports the ports it got).
#![allow(dead_code)]

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the mock upstream does with one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// A normal answer: JSON or SSE as the request asks, usage as OpenAI reports it.
    Ok,
    /// An OpenAI-style error with this status.
    Status(u16),
    /// 429 with `Retry-After: secs`.
    RateLimited { retry_after: u64 },
    /// Stream `after` content chunks, then drop the connection.
    Cut { after: usize },
    /// Stream without ever sending a usage chunk.
    NoUsage,
    /// Wait this long before answering normally.
    Delay(Duration),
    /// The provider's answer to an invalid API key (Gemini: 400 `API_KEY_INVALID`).
    BadKey,
    /// A sloppy inference server: answers normally, but a chat body whose
    /// `messages` is not a list of `{role, content}` objects crashes it (500).
    Picky,
    /// Answers with the last message's text (OpenAI chat), streamed three
    /// characters a chunk: what a model quoting its prompt does.
    Echo,
}

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub query: Option<String>,
    /// Every request header, lower-case names.
    pub headers: std::collections::HashMap<String, String>,
    pub authorization: Option<String>,
    pub content_length: usize,
    pub body: Value,
    pub method: String,
    /// The body's bytes as they arrived.
    pub raw: Vec<u8>,
}

pub struct UpstreamState {
    pub name: String,
    script: Mutex<VecDeque<Reply>>,
    fallback: Mutex<Reply>,
    pub calls: AtomicUsize,
    pub seen: Mutex<Vec<Seen>>,
    /// Totals of the usage this upstream reported.
    pub prompt_sent: AtomicU64,
    pub completion_sent: AtomicU64,
    /// Delay between stream chunks.
    pub chunk_delay: Mutex<Duration>,
}

#[derive(Clone)]
pub struct Upstream {
    pub state: Arc<UpstreamState>,
    pub port: u16,
}

impl Upstream {
    /// Starts a mock upstream on a free loopback port, in the calling test's runtime.
    pub async fn start(name: &str) -> Upstream {
        let state = new_state(name);
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Upstream { state, port }
    }

    /// The same upstream behind TLS for `localhost`, with a certificate from a fresh
    /// CA; returns the CA's PEM for the client side.
    pub async fn start_tls(name: &str) -> (Upstream, String) {
        use tokio_rustls::rustls;
        let (ca, leaf, leaf_key) = localhost_certificate();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let state = new_state(name);
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        let service = hyper_util::service::TowerToHyperService::new(app);
                        let _ = hyper_util::server::conn::auto::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        )
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                    }
                });
            }
        });
        (Upstream { state, port }, ca.pem())
    }

    pub fn https_url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }
}

fn new_state(name: &str) -> Arc<UpstreamState> {
    Arc::new(UpstreamState {
        name: name.to_string(),
        script: Mutex::new(VecDeque::new()),
        fallback: Mutex::new(Reply::Ok),
        calls: AtomicUsize::new(0),
        seen: Mutex::new(Vec::new()),
        prompt_sent: AtomicU64::new(0),
        completion_sent: AtomicU64::new(0),
        chunk_delay: Mutex::new(Duration::ZERO),
    })
}

impl Upstream {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The next replies, in order; after them the fallback applies.
    pub fn script(&self, replies: &[Reply]) {
        self.state
            .script
            .lock()
            .unwrap()
            .extend(replies.iter().cloned());
    }

    /// What every unscripted request gets.
    pub fn always(&self, reply: Reply) {
        *self.state.fallback.lock().unwrap() = reply;
    }

    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn set_chunk_delay(&self, d: Duration) {
        *self.state.chunk_delay.lock().unwrap() = d;
    }
}

fn error_body(status: u16) -> Value {
    let (kind, code) = match status {
        401 => ("invalid_request_error", "invalid_api_key"),
        429 => ("rate_limit_error", "rate_limit_exceeded"),
        400 => ("invalid_request_error", "bad_param"),
        _ => ("server_error", "upstream_boom"),
    };
    json!({"error": {"message": format!("mock says {status}"), "type": kind, "param": null, "code": code}})
}

async fn handle(
    State(st): State<Arc<UpstreamState>>,
    method: axum::http::Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    st.calls.fetch_add(1, Ordering::SeqCst);
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    st.seen.lock().unwrap().push(Seen {
        path: uri.path().to_string(),
        query: uri.query().map(str::to_string),
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        content_length: body.len(),
        body: parsed.clone(),
        method: method.to_string(),
        raw: body.to_vec(),
    });
    if let Some(r) = files_answer(method.as_str(), uri.path(), &headers, &body) {
        return r;
    }
    let reply = st
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| st.fallback.lock().unwrap().clone());
    let reply = match reply {
        Reply::Delay(d) => {
            tokio::time::sleep(d).await;
            Reply::Ok
        }
        other => other,
    };
    let reply = match reply {
        Reply::Picky if !well_formed_chat(&parsed) => Reply::Status(500),
        Reply::Picky => Reply::Ok,
        other => other,
    };
    if uri.path().ends_with("/v1/messages/count_tokens") {
        // Anthropic's token count: only the prompt, nothing answered.
        return axum::Json(json!({"input_tokens": usage_for(body.len()).0})).into_response();
    }
    let provider = Provider::of(uri.path());
    if let Reply::BadKey = reply {
        return match provider {
            Provider::Gemini { .. } => (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT", "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]}})),
            )
                .into_response(),
            _ => (StatusCode::UNAUTHORIZED, axum::Json(provider.error(401))).into_response(),
        };
    }
    match reply {
        Reply::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap();
            (status, axum::Json(provider.error(code))).into_response()
        }
        Reply::RateLimited { retry_after } => {
            let mut r =
                (StatusCode::TOO_MANY_REQUESTS, axum::Json(error_body(429))).into_response();
            r.headers_mut()
                .insert("retry-after", retry_after.to_string().parse().unwrap());
            r
        }
        Reply::Ok
        | Reply::NoUsage
        | Reply::Cut { .. }
        | Reply::Delay(_)
        | Reply::BadKey
        | Reply::Picky
        | Reply::Echo => match provider {
            Provider::Anthropic => anthropic_answer(&st, &parsed, body.len(), &reply),
            Provider::Gemini { stream } => gemini_answer(&st, &parsed, body.len(), stream, &reply),
            Provider::OpenAi => answer(&st, &parsed, body.len(), &reply, uri.path()),
        },
    }
}

/// OpenAI's files, batches and audio endpoints, as far as the tests need them.
fn files_answer(method: &str, path: &str, headers: &HeaderMap, body: &[u8]) -> Option<Response> {
    let multipart = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("multipart/form-data"));
    let v = match (method, path) {
        ("POST", "/v1/audio/transcriptions") if multipart => json!({
            "text": format!("heard {} bytes", body.len()),
            "usage": {"type": "tokens", "input_tokens": 14, "output_tokens": 3, "total_tokens": 17}}),
        ("POST", "/v1/files") if multipart => {
            json!({"id": "file-up1", "object": "file", "bytes": body.len(), "filename": "in.jsonl", "purpose": "batch", "created_at": 1})
        }
        ("POST", "/v1/batches") => {
            json!({"id": "batch_1", "object": "batch", "status": "validating"})
        }
        ("GET", "/v1/files") => {
            json!({"object": "list", "data": [{"id": "file-up1", "object": "file"}]})
        }
        ("GET", p) if p.starts_with("/v1/files/") && p.ends_with("/content") => {
            return Some(
                (
                    [("content-type", "application/octet-stream")],
                    vec![b'x'; 300_000],
                )
                    .into_response(),
            )
        }
        ("GET", p) if p.starts_with("/v1/files/") => json!({"id": &p[10..], "object": "file"}),
        ("DELETE", p) if p.starts_with("/v1/files/") => {
            json!({"id": &p[10..], "object": "file", "deleted": true})
        }
        _ => return None,
    };
    Some(axum::Json(v).into_response())
}

/// What `Reply::Picky` survives: messages as a list of role/content objects.
fn well_formed_chat(body: &Value) -> bool {
    body["model"].is_string()
        && body["messages"].as_array().is_some_and(|list| {
            !list.is_empty()
                && list.iter().all(|m| {
                    m["role"].is_string() && (m["content"].is_string() || m["content"].is_array())
                })
        })
}

/// Which provider's wire format a request path speaks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Provider {
    OpenAi,
    Anthropic,
    Gemini { stream: bool },
}

impl Provider {
    fn of(path: &str) -> Provider {
        if path.ends_with("/v1/messages") {
            Provider::Anthropic
        } else if path.contains(":generateContent") || path.contains(":streamGenerateContent") {
            Provider::Gemini {
                stream: path.contains(":streamGenerateContent"),
            }
        } else {
            Provider::OpenAi
        }
    }

    /// The provider's own error body, as its API reference shows it.
    fn error(self, code: u16) -> Value {
        match self {
            Provider::OpenAi => error_body(code),
            Provider::Anthropic => {
                let kind = match code {
                    400 => "invalid_request_error",
                    401 => "authentication_error",
                    429 => "rate_limit_error",
                    529 => "overloaded_error",
                    _ => "api_error",
                };
                json!({"type": "error", "error": {"type": kind, "message": format!("anthropic mock says {code}")}})
            }
            Provider::Gemini { .. } => {
                let status = match code {
                    400 => "INVALID_ARGUMENT",
                    401 => "UNAUTHENTICATED",
                    403 => "PERMISSION_DENIED",
                    429 => "RESOURCE_EXHAUSTED",
                    _ => "INTERNAL",
                };
                json!({"error": {"code": code, "message": format!("gemini mock says {code}"), "status": status}})
            }
        }
    }
}

fn sse_response(events: Vec<String>, cut: Option<usize>, delay: Duration) -> Response {
    let stream = futures_util::stream::unfold(
        (events.into_iter(), cut, false),
        move |(mut it, cut, done)| async move {
            if done {
                return None;
            }
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            match it.next() {
                Some(ev) => Some((
                    Ok::<Bytes, std::io::Error>(Bytes::from(ev)),
                    (it, cut, false),
                )),
                // A cut: fail the body so the connection drops without the final chunk.
                None if cut.is_some() => Some((Err(std::io::Error::other("cut")), (it, cut, true))),
                None => None,
            }
        },
    );
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    r
}

/// Anthropic Messages API answers, JSON or SSE, shaped as its reference documents.
fn anthropic_answer(
    st: &Arc<UpstreamState>,
    req: &Value,
    body_len: usize,
    reply: &Reply,
) -> Response {
    let (prompt, completion) = usage_for(body_len);
    let words = ["Hello", " from", " upstream", &format!(" {}", st.name)].map(|s| s.to_string());
    let model = req["model"].as_str().unwrap_or("?").to_string();
    // Thinking shows as a thinking block; search as a citation on the text.
    let thinks = req["thinking"]["type"] == "enabled";
    let searches = req["tools"].as_array().is_some_and(|t| {
        t.iter().any(|t| {
            t["type"]
                .as_str()
                .is_some_and(|k| k.starts_with("web_search"))
        })
    });
    let citation = json!({"type": "web_search_result_location", "url": SOURCE_URL, "title": "Source", "cited_text": "Hello", "encrypted_index": "x"});
    if !req["stream"].as_bool().unwrap_or(false) {
        st.prompt_sent.fetch_add(prompt, Ordering::SeqCst);
        st.completion_sent.fetch_add(completion, Ordering::SeqCst);
        let mut text = json!({"type": "text", "text": words.concat()});
        if searches {
            text["citations"] = json!([citation]);
        }
        let mut content = vec![text];
        if thinks {
            content.insert(
                0,
                json!({"type": "thinking", "thinking": THOUGHT, "signature": "sig"}),
            );
        }
        return axum::Json(json!({
            "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant", "model": model,
            "content": content,
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": prompt, "output_tokens": completion},
        }))
        .into_response();
    }
    let ev = |name: &str, v: Value| format!("event: {name}\ndata: {v}\n\n");
    let mut events = vec![ev(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": model, "stop_reason": null, "usage": {"input_tokens": prompt, "output_tokens": 1}}}),
    )];
    let text_at = u64::from(thinks);
    if thinks {
        events.push(ev("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}})));
        events.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": THOUGHT}})));
        events.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "sig"}})));
        events.push(ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ));
    }
    events.push(ev(
        "content_block_start",
        json!({"type": "content_block_start", "index": text_at, "content_block": {"type": "text", "text": ""}}),
    ));
    events.push(ev("ping", json!({"type": "ping"})));
    if searches {
        events.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": text_at, "delta": {"type": "citations_delta", "citation": citation}})));
    }
    for w in &words {
        events.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": text_at, "delta": {"type": "text_delta", "text": w}})));
    }
    events.push(ev(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": text_at}),
    ));
    events.push(ev("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": completion}})));
    events.push(ev("message_stop", json!({"type": "message_stop"})));
    let cut = match reply {
        Reply::Cut { after } => Some(*after),
        _ => None,
    };
    if let Some(after) = cut {
        events.truncate(after);
    } else {
        st.prompt_sent.fetch_add(prompt, Ordering::SeqCst);
        st.completion_sent.fetch_add(completion, Ordering::SeqCst);
    }
    sse_response(events, cut, *st.chunk_delay.lock().unwrap())
}

/// OpenAI's Responses API: a `response` object, or its typed events ending
/// with `response.completed`.
fn responses_answer(
    st: &Arc<UpstreamState>,
    model: &str,
    words: &[String],
    (prompt, completion): (u64, u64),
    req: &Value,
) -> Response {
    st.prompt_sent.fetch_add(prompt, Ordering::SeqCst);
    st.completion_sent.fetch_add(completion, Ordering::SeqCst);
    let text = words.concat();
    let message = json!({"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}]});
    let usage = json!({"input_tokens": prompt, "output_tokens": completion, "total_tokens": prompt + completion});
    let done = json!({"id": "resp_1", "object": "response", "created_at": 1, "status": "completed", "model": model,
        "output": [message], "usage": usage, "parallel_tool_calls": true, "tool_choice": "auto", "tools": []});
    if !req["stream"].as_bool().unwrap_or(false) {
        return axum::Json(done).into_response();
    }
    let mut started = done.clone();
    started["status"] = json!("in_progress");
    started["output"] = json!([]);
    started["usage"] = Value::Null;
    let mut events = vec![
        json!({"type": "response.created", "response": started}),
        json!({"type": "response.output_item.added", "output_index": 0,
            "item": {"id": "msg_1", "type": "message", "status": "in_progress", "role": "assistant", "content": []}}),
        json!({"type": "response.content_part.added", "item_id": "msg_1", "output_index": 0, "content_index": 0,
            "part": {"type": "output_text", "text": "", "annotations": []}}),
    ];
    for w in words {
        events.push(json!({"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": w}));
    }
    events.push(json!({"type": "response.output_text.done", "item_id": "msg_1", "output_index": 0, "content_index": 0, "text": text}));
    events.push(json!({"type": "response.content_part.done", "item_id": "msg_1", "output_index": 0, "content_index": 0,
        "part": {"type": "output_text", "text": text, "annotations": []}}));
    events.push(json!({"type": "response.output_item.done", "output_index": 0, "item": message}));
    events.push(json!({"type": "response.completed", "response": done}));
    let events: Vec<String> = events
        .into_iter()
        .enumerate()
        .map(|(i, mut e)| {
            e["sequence_number"] = json!(i);
            format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap())
        })
        .collect();
    sse_response(events, None, *st.chunk_delay.lock().unwrap())
}

/// Gemini `generateContent` / `streamGenerateContent?alt=sse` answers.
fn gemini_answer(
    st: &Arc<UpstreamState>,
    req: &Value,
    body_len: usize,
    stream: bool,
    reply: &Reply,
) -> Response {
    let (prompt, completion) = usage_for(body_len);
    let words = ["Hello", " from", " upstream", &format!(" {}", st.name)].map(|s| s.to_string());
    // Thinking shows as a thought part and its tokens; search as grounding.
    let thinks =
        req.pointer("/generationConfig/thinkingConfig/includeThoughts") == Some(&json!(true));
    let searches = req["tools"]
        .as_array()
        .is_some_and(|t| t.iter().any(|t| t.get("googleSearch").is_some()));
    let thoughts = if thinks { THOUGHT_TOKENS } else { 0 };
    let mut usage = json!({"promptTokenCount": prompt, "candidatesTokenCount": completion, "totalTokenCount": prompt + completion + thoughts});
    if thinks {
        usage["thoughtsTokenCount"] = json!(thoughts);
    }
    let grounding = json!({"groundingChunks": [{"web": {"uri": SOURCE_URL, "title": "Source"}}],
        "groundingSupports": [{"segment": {"startIndex": 0, "endIndex": 5}, "groundingChunkIndices": [0]}]});
    let thought = json!({"text": THOUGHT, "thought": true});
    if !stream {
        st.prompt_sent.fetch_add(prompt, Ordering::SeqCst);
        st.completion_sent
            .fetch_add(completion + thoughts, Ordering::SeqCst);
        let mut parts = vec![json!({"text": words.concat()})];
        if thinks {
            parts.insert(0, thought);
        }
        let mut cand = json!({"content": {"parts": parts, "role": "model"}, "finishReason": "STOP", "index": 0});
        if searches {
            cand["groundingMetadata"] = grounding;
        }
        return axum::Json(json!({
            "candidates": [cand],
            "usageMetadata": usage, "modelVersion": "gemini-2.5-flash", "responseId": "resp-1",
        }))
        .into_response();
    }
    let mut events: Vec<String> = Vec::new();
    if thinks {
        let v = json!({"candidates": [{"content": {"parts": [thought], "role": "model"}, "index": 0}], "responseId": "resp-1"});
        events.push(format!("data: {v}\r\n\r\n"));
    }
    for (i, w) in words.iter().enumerate() {
        let last = i + 1 == words.len();
        let mut cand = json!({"content": {"parts": [{"text": w}], "role": "model"}, "index": 0});
        if last {
            cand["finishReason"] = json!("STOP");
            if searches {
                cand["groundingMetadata"] = grounding.clone();
            }
        }
        let partial = json!({"promptTokenCount": prompt, "candidatesTokenCount": i as u64 + 1});
        let v = json!({"candidates": [cand], "usageMetadata": if last { usage.clone() } else { partial }, "responseId": "resp-1"});
        events.push(format!("data: {v}\r\n\r\n"));
    }
    let cut = match reply {
        Reply::Cut { after } => Some(*after),
        _ => None,
    };
    if let Some(after) = cut {
        events.truncate(after);
    } else {
        st.prompt_sent.fetch_add(prompt, Ordering::SeqCst);
        st.completion_sent
            .fetch_add(completion + thoughts, Ordering::SeqCst);
    }
    sse_response(events, cut, *st.chunk_delay.lock().unwrap())
}

/// What the mocks think when asked to, and the tokens Gemini says it took.
pub const THOUGHT: &str = "Let me think.";
pub const THOUGHT_TOKENS: u64 = 7;
/// The source the mocks cite when asked to search.
pub const SOURCE_URL: &str = "https://weir.example/source";

/// The deterministic usage of an answer: prompt from the body size, four words out.
fn usage_for(body_len: usize) -> (u64, u64) {
    (5 + body_len as u64 / 100, 4)
}

fn answer(
    st: &Arc<UpstreamState>,
    req: &Value,
    body_len: usize,
    reply: &Reply,
    path: &str,
) -> Response {
    let model = req["model"].as_str().unwrap_or("?").to_string();
    let (prompt, completion) = usage_for(body_len);
    if path.ends_with("/moderations") {
        // OpenAI's moderation shape: text with "FLAG ME" in it is violent.
        let flagged = req["input"].to_string().contains("FLAG ME");
        let score = if flagged { 0.98 } else { 0.01 };
        return axum::Json(json!({"id": "modr-1", "model": model, "results": [{
            "flagged": flagged,
            "categories": {"violence": flagged, "hate": false},
            "category_scores": {"violence": score, "hate": 0.0}}]}))
        .into_response();
    }
    if path.ends_with("/embeddings") {
        st.prompt_sent.fetch_add(prompt, Ordering::SeqCst);
        return axum::Json(json!({"object": "list", "model": model, "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}], "usage": {"prompt_tokens": prompt, "total_tokens": prompt}})).into_response();
    }
    let words: Vec<String> = match reply {
        Reply::Echo => echo_pieces(req),
        _ => ["Hello", " from", " upstream", &format!(" {}", st.name)]
            .map(|s| s.to_string())
            .to_vec(),
    };
    if path.ends_with("/responses") {
        return responses_answer(st, &model, &words, (prompt, completion), req);
    }
    let usage = json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion});
    if !req["stream"].as_bool().unwrap_or(false) {
        st.prompt_sent.fetch_add(prompt, Ordering::SeqCst);
        st.completion_sent.fetch_add(completion, Ordering::SeqCst);
        return axum::Json(json!({
            "id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": words.concat()}, "finish_reason": "stop"}],
            "usage": usage,
        }))
        .into_response();
    }
    let include_usage = req["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    let mut events: Vec<String> = words
        .iter()
        .map(|w| format!("data: {}\n\n", json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": null}]})))
        .collect();
    let cut = match reply {
        Reply::Cut { after } => Some(*after),
        _ => None,
    };
    events.push(format!("data: {}\n\n", json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})));
    if include_usage && !matches!(reply, Reply::NoUsage) && cut.is_none() {
        st.prompt_sent.fetch_add(prompt, Ordering::SeqCst);
        st.completion_sent.fetch_add(completion, Ordering::SeqCst);
        events.push(format!("data: {}\n\n", json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [], "usage": usage})));
    }
    events.push("data: [DONE]\n\n".to_string());
    if let Some(after) = cut {
        events.truncate(after);
    }
    sse_response(events, cut, *st.chunk_delay.lock().unwrap())
}

/// The last message's text in pieces of three characters.
fn echo_pieces(req: &Value) -> Vec<String> {
    let text = req["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or("");
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(3).map(|c| c.iter().collect()).collect()
}

pub const ADMIN_KEY: &str = "test-admin-key-0123456789";

/// The `server:` section (both listeners on port 0: weir reports the ports it got),
/// then `body`.
pub fn render_config(dir: &std::path::Path, body: &str, server_extra: &str) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  admin_listen: 127.0.0.1:0\n  admin_key: {ADMIN_KEY}\n  threads: 2\n  backoff: {{base: 10ms, max: 100ms}}\n{server_extra}\nstorage:\n  sqlite: '{}'\n  flush_interval: 50ms\n{body}",
        dir.join("weir.db").display()
    )
}

/// Replaces a file by rename, as config managers do.
pub fn write_atomically(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f.sync_all().unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Starts `weir serve` on `config`, logging to `log` (appended), with its ready
/// file beside the config.
fn spawn_weir(config: &std::path::Path, log: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new().append(true).open(log).unwrap();
    let ready = config.with_file_name("ready.json");
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["serve", "-c"])
        .arg(config)
        .arg("--ready-file")
        .arg(&ready)
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn weir")
}

/// The proxy and admin ports from a ready file written by the process `pid`.
fn read_ready(path: &std::path::Path, pid: u32) -> Option<(u16, u16)> {
    let v: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    if v["pid"].as_u64()? != u64::from(pid) {
        return None;
    }
    let port = |k: &str| -> Option<u16> {
        let addr: std::net::SocketAddr = v[k].as_str()?.parse().ok()?;
        Some(addr.port())
    };
    Some((port("proxy")?, port("admin")?))
}

/// A fresh CA and a certificate for `localhost` it signed, with the leaf's key.
pub fn localhost_certificate() -> (rcgen::Certificate, rcgen::Certificate, rcgen::KeyPair) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "weir test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    (ca, leaf, leaf_key)
}

/// A running weir process; killed when dropped.
pub struct Weir {
    child: Child,
    pub port: u16,
    pub admin_port: u16,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    log_path: PathBuf,
}

impl Weir {
    /// Starts weir on `body` (the config after its `server:` section, which this fills).
    pub async fn start(body: &str) -> Weir {
        Self::start_with_server(body, "").await
    }

    pub async fn start_with_server(body: &str, server_extra: &str) -> Weir {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("weir.yaml");
        let log_path = dir.path().join("weir.log");
        write_atomically(&config_path, &render_config(dir.path(), body, server_extra));
        std::fs::File::create(&log_path).unwrap();
        let child = spawn_weir(&config_path, &log_path);
        let mut w = Weir {
            child,
            port: 0,
            admin_port: 0,
            dir,
            config_path,
            log_path,
        };
        if let Err(log) = w.wait_ready().await {
            panic!("weir did not start:\n{log}");
        }
        w
    }

    /// Rewrites the config file in place (same admin key and store), atomically.
    pub fn write_config(&self, body: &str, server_extra: &str) {
        write_atomically(
            &self.config_path,
            &render_config(self.dir.path(), body, server_extra),
        );
    }

    /// Writes raw text (e.g. a broken file) as the config.
    pub fn write_raw(&self, text: &str) {
        std::fs::write(&self.config_path, text).unwrap();
    }

    fn ready_path(&self) -> PathBuf {
        self.dir.path().join("ready.json")
    }

    /// Waits for the ready file weir writes once its listeners are bound, takes the
    /// ports from it, then waits for `/health`.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = reqwest::Client::new();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("weir exited with {status}:\n{}", self.log()));
            }
            if let Some(ready) = read_ready(&self.ready_path(), self.child.id()) {
                (self.port, self.admin_port) = ready;
                // An answer, or a connection the listener took and then closed (an
                // admin listener on TLS refusing plain HTTP): the services run.
                match client.get(self.admin_url("/health")).send().await {
                    Ok(_) => return Ok(()),
                    Err(e) if !e.is_connect() => return Ok(()),
                    Err(_) => {}
                }
            }
            if Instant::now() > deadline {
                return Err(format!("weir did not answer within 20 s:\n{}", self.log()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn admin_get(&self, path: &str) -> Value {
        reqwest::Client::new()
            .get(self.admin_url(path))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Calls the admin API with the bootstrap key (or `key`); returns status and JSON.
    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.admin_as(ADMIN_KEY, method, path, body).await
    }

    pub async fn admin_as(
        &self,
        key: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = reqwest::Client::new()
            .request(method, self.admin_url(path))
            .bearer_auth(key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Runs `weir ARGS -c CONFIG` beside this process, which must succeed; answers
    /// its JSON output.
    pub fn cli(&self, args: &[&std::ffi::OsStr]) -> Value {
        let out = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(args)
            .arg("-c")
            .arg(&self.config_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `POST /admin/keys/import?{query}` with a CSV body.
    pub async fn import_csv(&self, query: &str, csv: &str) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(self.admin_url(&format!("/admin/keys/import?{query}")))
            .bearer_auth(ADMIN_KEY)
            .header("content-type", "text/csv")
            .body(csv.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    /// Creates a key through the admin API; returns its id and secret.
    pub async fn create_key(&self, body: Value) -> (i64, String) {
        let (status, v) = self.admin("POST", "/admin/keys", Some(body)).await;
        assert_eq!(status, 201, "{v}");
        (
            v["id"].as_i64().unwrap(),
            v["key"].as_str().unwrap().to_string(),
        )
    }

    /// Stops weir with SIGTERM (graceful) and waits for it to exit.
    pub fn stop_gracefully(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "weir did not stop:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts weir again on the same file and store (on new ports).
    /// Starts weir again on the same config and store, killing it first when it
    /// still runs (no process outlives its test; what was written stays written).
    pub async fn restart(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(self.ready_path());
        self.child = spawn_weir(&self.config_path, &self.log_path);
        self.wait_ready().await.unwrap();
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("weir.db")
    }

    /// `GET /health` on the admin listener.
    pub async fn health(&self) -> Value {
        reqwest::get(self.admin_url("/health"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(self.admin_url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- weir log ----\n{}", self.log());
        }
    }
}

/// Sum of a metric's samples whose labels include every `key="value"` given.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The `error.code` of an OpenAI-shaped error body (`""` when there is none).
pub fn error_code(body: &str) -> String {
    serde_json::from_str::<Value>(body).unwrap_or(Value::Null)["error"]["code"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

pub fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "Say hello"}]})
}

/// Posts a chat request; returns status and body text.
pub async fn post(client: &reqwest::Client, url: &str, body: &Value) -> (u16, String) {
    let r = client.post(url).json(body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

/// The `data:` payloads of an SSE body.
/// The content of an OpenAI chunk stream's first choice, joined.
pub fn text_of_stream(body: &str) -> String {
    sse_data(body)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

/// `weir check` on a test config rendered into `dir` (with `server_extra` in its
/// `server:` section): whether it passed, and all it printed.
pub fn weir_check(dir: &std::path::Path, cfg: &str, server_extra: &str) -> (bool, String) {
    let path = dir.join("weir.yaml");
    std::fs::write(&path, render_config(dir, cfg, server_extra)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Runs a Python script with the official SDKs (`target/pysdk`, installed by
/// `.ci/services`) off the test's thread, so the mocks keep answering; its
/// stdout parsed as JSON.
pub async fn python_sdk(script: &str, args: Vec<String>) -> Value {
    let sdk = concat!(env!("CARGO_MANIFEST_DIR"), "/target/pysdk");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(script);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("/usr/bin/python3")
            .arg(script)
            .args(args)
            .env("PYTHONPATH", sdk)
            .output()
            .expect("python3")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the SDK script failed (run .ci/services for the SDKs): {stderr}"
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|ev| {
            ev.lines()
                .find_map(|l| l.strip_prefix("data: "))
                .map(str::to_string)
        })
        .collect()
}

/// A test's config after its `server:` section, stated as what the test cares
/// about. Each entry is the inside of one YAML flow mapping (`name: m, price_in: 1`);
/// `build` lists them under `models:`, `channels:` and `gateways:`, then the
/// sections given verbatim.
#[derive(Clone, Default)]
pub struct Config {
    models: Vec<String>,
    channels: Vec<String>,
    gateways: Vec<String>,
    sections: Vec<String>,
}

impl Config {
    pub fn new() -> Config {
        Config::default()
    }

    /// A priced model: `fields` are its entry in `models:`.
    pub fn model(mut self, fields: &str) -> Config {
        self.models.push(fields.to_string());
        self
    }

    /// A channel of type `kind` at `base_url`; `fields` are the rest of its entry.
    pub fn channel_at(mut self, name: &str, kind: &str, base_url: &str, fields: &str) -> Config {
        let mut entry = format!("name: {name}, type: {kind}, base_url: '{base_url}'");
        if !fields.is_empty() {
            entry.push_str(", ");
            entry.push_str(fields);
        }
        self.channels.push(entry);
        self
    }

    /// The usual channel: OpenAI on `up`, serving model `m`, plus `extra` fields.
    pub fn openai(self, name: &str, up: &Upstream, extra: &str) -> Config {
        let fields = if extra.is_empty() {
            "models: [m]".to_string()
        } else {
            format!("models: [m], {extra}")
        };
        self.channel_at(name, "openai", &up.url(), &fields)
    }

    /// A gateway: `fields` are its entry in `gateways:`.
    pub fn gateway(mut self, fields: &str) -> Config {
        self.gateways.push(fields.to_string());
        self
    }

    /// A top-level section as written, e.g. `cache: {models: '*'}`.
    pub fn section(mut self, yaml: &str) -> Config {
        self.sections.push(yaml.to_string());
        self
    }

    pub fn build(&self) -> String {
        let mut out = String::new();
        for (key, entries) in [
            ("models", &self.models),
            ("channels", &self.channels),
            ("gateways", &self.gateways),
        ] {
            if !entries.is_empty() {
                out.push_str(key);
                out.push_str(":\n");
                for e in entries {
                    out.push_str(&format!("  - {{{e}}}\n"));
                }
            }
        }
        for s in &self.sections {
            out.push_str(s);
            out.push('\n');
        }
        out
    }
}

impl Weir {
    /// Polls `/metrics` until the sum for `name` with `labels` equals `want`: the
    /// logging phase that counts a request runs just after its last byte went out.
    pub async fn wait_metric(&self, name: &str, labels: &[(&str, &str)], want: f64) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let m = self.metrics().await;
            let got = metric_sum(&m, name, labels);
            if got == want {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "{name}{labels:?} is {got}, want {want}\n{m}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Sends `head` (request line and headers, without the blank line) and `body` over
/// a raw connection, byte for byte (an HTTP client would normalise the path), and
/// returns the status code and the raw response.
pub async fn raw_request(port: u16, head: &str, body: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let req = format!(
        "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

impl Weir {
    /// Waits until the log contains `needle` (log lines follow the metrics by a moment).
    pub async fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "the log never said {needle:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A real `redis-server` for this test alone: no TCP port at all, a unix socket
/// in its own directory, nothing saved to disk. Killed when dropped.
pub struct RedisServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        let mut r = RedisServer {
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        r.restart().await;
        r
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// `storage.redis` for weir.
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// Kills it at once (SIGKILL: as a crash, nothing flushed).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(self.socket());
    }

    /// Starts it (again, empty) on the same socket and waits until it answers.
    pub async fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(self.socket())
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (installed by .ci/services)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]).as_deref() != Some("PONG") {
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops it answering without closing anything (SIGSTOP): a hung Redis.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }

    /// Runs `redis-cli` against it; its trimmed output.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .arg("-s")
            .arg(self.socket())
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A real PostgreSQL server for this test alone (Debian's binaries, as `.ci/services`
/// installs them): a fresh cluster in a temporary directory, reached only through a
/// unix socket there (no TCP port), `fsync` off. As root (CI containers) the server
/// runs as the `postgres` user, since PostgreSQL refuses root. Stopped when dropped.
pub struct PgServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

fn pg_bin(name: &str) -> PathBuf {
    let debian = std::fs::read_dir("/usr/lib/postgresql").ok().and_then(|d| {
        d.filter_map(|e| e.ok())
            .map(|e| e.path().join("bin").join(name))
            .filter(|p| p.exists())
            .max()
    });
    debian.unwrap_or_else(|| PathBuf::from(name))
}

fn as_postgres_user(program: PathBuf) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl PgServer {
    pub async fn start() -> PgServer {
        let dir = tempfile::tempdir().unwrap();
        let _ = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path())
            .status();
        let data = dir.path().join("data");
        let out = as_postgres_user(pg_bin("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "weir", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .output()
            .expect("initdb (installed by .ci/services)");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = PgServer { child: None, dir };
        pg.restart().await;
        pg
    }

    /// `storage.postgres` for weir: the socket directory as `host`.
    pub fn url(&self) -> String {
        format!(
            "postgres://weir@localhost/postgres?host={}",
            self.dir.path().display()
        )
    }

    /// Stops it at once, as a crash would (`pg_ctl stop -m immediate`: no
    /// checkpoint, every connection cut), and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = as_postgres_user(pg_bin("pg_ctl"))
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["stop", "-m", "immediate", "-w", "-t", "20"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it (again, on the same data) and waits until it takes connections.
    pub async fn restart(&mut self) {
        self.kill();
        let child = as_postgres_user(pg_bin("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-k")
            .arg(self.dir.path())
            .args([
                "-c",
                "listen_addresses=",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=60",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = Command::new(pg_bin("pg_isready"))
                .arg("-h")
                .arg(self.dir.path())
                .args(["-U", "weir", "-q"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "postgres did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs `psql -tA -c SQL`; its trimmed output.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(pg_bin("psql"))
            .arg("-h")
            .arg(self.dir.path())
            .args(["-U", "weir", "-d", "postgres", "-tA", "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A real forward proxy on loopback: tinyproxy, in the foreground, its own
/// config and log in a temporary directory; killed on drop.
///
/// tinyproxy cannot be told to take port 0, so its port is drawn at random below
/// the kernel's ephemeral range (where every other test server's port 0 lands) and
/// drawn again when tinyproxy finds it taken and exits: nothing is bound and
/// released to find it.
pub struct ForwardProxyServer {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl ForwardProxyServer {
    /// `auth`: `(user, password)` the proxy demands (`BasicAuth`).
    pub async fn start(auth: Option<(&str, &str)>) -> ForwardProxyServer {
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..20 {
            let port = 20_000 + (rand::random::<u32>() % 12_000) as u16;
            let conf = dir.path().join("tinyproxy.conf");
            let mut text = format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 64\nAllow 127.0.0.1\nLogLevel Info\nLogFile \"{}\"\nDisableViaHeader No\n",
                dir.path().join("tinyproxy.log").display()
            );
            if let Some((user, password)) = auth {
                text.push_str(&format!("BasicAuth {user} {password}\n"));
            }
            std::fs::write(&conf, text).unwrap();
            let mut child = Command::new("tinyproxy")
                .arg("-d")
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("tinyproxy is installed (.ci/services)");
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if child.try_wait().unwrap().is_some() {
                    break; // the port was taken: draw another
                }
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    return ForwardProxyServer { child, port, dir };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("tinyproxy did not start");
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tinyproxy.log")).unwrap_or_default()
    }
}

impl Drop for ForwardProxyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
