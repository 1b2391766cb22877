//! A canned OpenAI-compatible upstream for the load benchmark: raw tokio, HTTP/1.1
//! keep-alive, a fixed JSON answer or a 24-chunk SSE stream (with a usage chunk when
//! asked). `--slow-ms N` spaces stream chunks N ms apart (the memory run).
//!
//! `weir-bench-upstream [--port 0] [--slow-ms 1000] [--ready-file PATH]`: port 0 (the
//! default) lets the kernel pick; the address it got is announced as `ready.rs` says.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[path = "ready.rs"]
mod ready;

const JSON: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"The quick brown fox jumps over the lazy dog."},"finish_reason":"stop"}],"usage":{"prompt_tokens":20,"completion_tokens":10,"total_tokens":30}}"#;

fn sse_events(with_usage: bool) -> Vec<String> {
    let mut out: Vec<String> = (0..24)
        .map(|i| {
            format!("data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"bench\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}},\"finish_reason\":null}}]}}\n\n")
        })
        .collect();
    out.push("data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"bench\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n".into());
    if with_usage {
        out.push("data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"bench\",\"choices\":[],\"usage\":{\"prompt_tokens\":20,\"completion_tokens\":24,\"total_tokens\":44}}\n\n".into());
    }
    out.push("data: [DONE]\n\n".into());
    out
}

fn chunked(events: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        out.extend_from_slice(format!("{:x}\r\n{e}\r\n", e.len()).as_bytes());
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let port: u16 = arg("--port").and_then(|p| p.parse().ok()).unwrap_or(0);
    let slow_ms: u64 = arg("--slow-ms").and_then(|p| p.parse().ok()).unwrap_or(0);
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let served = Arc::new(AtomicU64::new(0));
    let json_resp = Arc::new(format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{JSON}",
        JSON.len()
    ));
    let head =
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
    let sse_plain = Arc::new([head.as_bytes(), &chunked(&sse_events(false))].concat());
    let sse_usage = Arc::new([head.as_bytes(), &chunked(&sse_events(true))].concat());
    eprintln!("bench upstream, slow {slow_ms} ms");
    ready::write(arg("--ready-file").as_deref(), listener.local_addr()?)?;
    loop {
        let (mut sock, _) = listener.accept().await?;
        let _ = sock.set_nodelay(true);
        let (json_resp, sse_plain, sse_usage, served) = (
            json_resp.clone(),
            sse_plain.clone(),
            sse_usage.clone(),
            served.clone(),
        );
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(16 * 1024);
            let mut tmp = vec![0u8; 64 * 1024];
            loop {
                // Header.
                let end = loop {
                    if let Some(i) = find(&buf, b"\r\n\r\n") {
                        break i + 4;
                    }
                    match sock.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                };
                let header = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = header
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap_or(0))
                    })
                    .unwrap_or(0);
                while buf.len() < end + len {
                    match sock.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                }
                let body = &buf[end..end + len];
                let stream = find(body, b"\"stream\":true").is_some();
                let usage = find(body, b"\"include_usage\":true").is_some();
                let ok = if !stream {
                    sock.write_all(json_resp.as_bytes()).await.is_ok()
                } else if slow_ms == 0 {
                    sock.write_all(if usage { &sse_usage } else { &sse_plain })
                        .await
                        .is_ok()
                } else {
                    let mut ok = sock.write_all(head.as_bytes()).await.is_ok();
                    for e in sse_events(usage) {
                        if !ok {
                            break;
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(slow_ms)).await;
                        ok = sock
                            .write_all(format!("{:x}\r\n{e}\r\n", e.len()).as_bytes())
                            .await
                            .is_ok();
                    }
                    ok && sock.write_all(b"0\r\n\r\n").await.is_ok()
                };
                if !ok {
                    return;
                }
                served.fetch_add(1, Ordering::Relaxed);
                buf.drain(..end + len);
            }
        });
    }
}
