#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! The edge against hostile peers. Request smuggling and oversize heads: a head
//! that could be read two ways is refused with a clean 400, an oversize one with
//! 431, and the connection is closed, so a request hidden behind it is never
//! answered (nor sent upstream). Admin key guessing: slowed per address.

mod common;

use common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A request hidden in the body of the first, answered only if weir guessed the
/// framing the way a smuggler wants.
const SMUGGLED: &str = "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n";

/// Writes `bytes` on a fresh connection and reads until weir closes it; `None`
/// when it kept the connection open for 5 s.
async fn send_raw(port: u16, bytes: &[u8]) -> Option<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    // The server may close before taking everything: a refused write is fine.
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    match tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await {
        Ok(_) => Some(String::from_utf8_lossy(&out).to_string()),
        Err(_) => None,
    }
}

fn chat_head(framing: &str) -> String {
    format!("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{framing}\r\n\r\n")
}

/// The one answer on a closed connection: its status and its error code.
fn one_answer(raw: &str) -> (u16, String) {
    assert_eq!(
        raw.matches("HTTP/1.1 ").count(),
        1,
        "more than one answer: {raw}"
    );
    let status = raw.split(' ').nth(1).unwrap().parse().unwrap();
    let body = &raw[raw.find("\r\n\r\n").unwrap() + 4..];
    (status, error_code(body))
}

#[tokio::test]
async fn ambiguous_framing_is_refused_and_the_connection_closed() {
    let up = Upstream::start("never").await;
    let weir = Weir::start(&Config::new().openai("never", &up, "").build()).await;
    let body = serde_json::to_string(&chat("m", false)).unwrap();
    let n = body.len();
    // The body, chunked: what a reader of `Transfer-Encoding` would serve.
    let chunked = format!("{n:x}\r\n{body}\r\n0\r\n\r\n{SMUGGLED}");
    let framed = format!("{body}{SMUGGLED}");
    // (head, rest, code): `invalid_framing` where Pingora alone would have served
    // the request, `bad_request` where it refuses the head itself.
    let cases = [
        // CL.TE and TE.CL: a front end reading the length and one reading chunks disagree.
        (
            chat_head("Content-Length: 5\r\nTransfer-Encoding: chunked"),
            &chunked,
            "invalid_framing",
        ),
        (
            chat_head(&format!(
                "Transfer-Encoding: chunked\r\nContent-Length: {n}"
            )),
            &chunked,
            "invalid_framing",
        ),
        (
            chat_head(&format!("Content-Length: {n}\r\nContent-Length: {n}")),
            &framed,
            "invalid_framing",
        ),
        (
            chat_head(&format!("Content-Length: {n}, {n}")),
            &framed,
            "invalid_framing",
        ),
        (
            chat_head(&format!(
                "Content-Length: {n}\r\nContent-Length: {}",
                n + 10
            )),
            &framed,
            "bad_request",
        ),
        (
            chat_head("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"),
            &chunked,
            "invalid_framing",
        ),
        (
            chat_head("Transfer-Encoding: gzip, chunked"),
            &chunked,
            "invalid_framing",
        ),
        (
            chat_head("Transfer-Encoding: chunked").replace("HTTP/1.1", "HTTP/1.0"),
            &chunked,
            "bad_request",
        ),
    ];
    for (head, rest, want) in &cases {
        let raw = send_raw(weir.port, format!("{head}{rest}").as_bytes())
            .await
            .unwrap_or_else(|| panic!("the connection stayed open after {head:?}"));
        let (status, code) = one_answer(&raw);
        assert_eq!((status, code.as_str()), (400, *want), "{head:?}: {raw}");
        assert!(
            raw.to_ascii_lowercase().contains("connection: close"),
            "{raw}"
        );
    }
    assert_eq!(up.calls(), 0, "a refused request went upstream");
    // The same request, framed plainly, is served and keeps its connection.
    let plain = format!("{}{body}", chat_head(&format!("Content-Length: {n}")));
    let last = SMUGGLED.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n");
    let raw = send_raw(weir.port, format!("{plain}{last}").as_bytes())
        .await
        .expect("still open after Connection: close");
    assert_eq!(raw.matches("HTTP/1.1 200").count(), 2, "{raw}");
    assert_eq!(up.calls(), 1);
}

#[tokio::test]
async fn oversize_heads_get_431_and_a_closed_connection() {
    let weir = Weir::start_with_server(
        &Config::new()
            .openai("up", &Upstream::start("up").await, "")
            .build(),
        "  max_header: 8KiB",
    )
    .await;
    let big = "a".repeat(10 * 1024);
    let many: String = (0..300).map(|i| format!("X-H{i}: v\r\n")).collect();
    let huge = "b".repeat(1100 * 1024);
    for extra in [
        format!("X-Big: {big}"),
        many.trim_end().to_string(),
        format!("X-Huge: {huge}"),
    ] {
        let head = format!("GET /v1/models HTTP/1.1\r\nHost: x\r\n{extra}\r\n\r\n{SMUGGLED}");
        let raw = send_raw(weir.port, head.as_bytes())
            .await
            .expect("the connection stayed open");
        let (status, code) = one_answer(&raw);
        assert_eq!(status, 431, "{raw}");
        assert_eq!(code, "request_header_too_large");
    }
    // Under the limit is served.
    let head = format!(
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Small: {}\r\nConnection: close\r\n\r\n",
        "c".repeat(4096)
    );
    let raw = send_raw(weir.port, head.as_bytes()).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
}

#[tokio::test]
async fn the_admin_listener_refuses_ambiguous_framing_too() {
    let weir = Weir::start(
        &Config::new()
            .openai("up", &Upstream::start("up").await, "")
            .build(),
    )
    .await;
    let head = format!(
        "POST /admin/keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"
    );
    let raw = send_raw(weir.admin_port, head.as_bytes())
        .await
        .expect("the connection stayed open");
    let (status, code) = one_answer(&raw);
    assert_eq!((status, code.as_str()), (400, "invalid_framing"), "{raw}");
}

#[tokio::test]
async fn pipelined_requests_are_each_answered() {
    let up = Upstream::start("up").await;
    let weir = Weir::start(&Config::new().openai("up", &up, "").build()).await;
    let two = format!(
        "{SMUGGLED}{}",
        SMUGGLED.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n")
    );
    let raw = send_raw(weir.port, two.as_bytes())
        .await
        .expect("still open");
    assert_eq!(raw.matches("HTTP/1.1 200").count(), 2, "{raw}");
}

#[tokio::test]
async fn admin_key_guesses_are_slowed_per_address() {
    let weir = Weir::start(
        &Config::new()
            .openai("up", &Upstream::start("up").await, "")
            .build(),
    )
    .await;
    let from = |ip: &str| {
        reqwest::Client::builder()
            .local_address(Some(ip.parse().unwrap()))
            .build()
            .unwrap()
    };
    let (guesser, neighbour) = (from("127.0.0.1"), from("127.0.0.2"));
    let ask = |client: &reqwest::Client, key: &str| {
        client
            .get(weir.admin_url("/admin/keys"))
            .bearer_auth(key)
            .send()
    };
    for i in 0..5 {
        let r = ask(&guesser, &format!("guess-{i}")).await.unwrap();
        assert_eq!(r.status(), 401, "guess {i}");
    }
    // Locked: even the right key is not looked at, and the wait is said.
    let r = ask(&guesser, ADMIN_KEY).await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(
        error_code(&r.text().await.unwrap()),
        "too_many_auth_failures"
    );
    // Another address is not slowed.
    let r = ask(&neighbour, ADMIN_KEY).await.unwrap();
    assert_eq!(r.status(), 200);
    // Once the wait is over, the right key works (and clears the address); a
    // further wrong guess right after the wait costs two seconds this time.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = ask(&guesser, "guess-5").await.unwrap();
    assert_eq!(r.status(), 401);
    let r = ask(&guesser, ADMIN_KEY).await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "2");
}

/// Behind an ingress (`server.trusted_proxies`), the admin lockout counts the
/// address it forwarded, so one bad script there does not lock out every operator;
/// and a burst of parallel guesses gets exactly the free tries, not one more per
/// worker thread.
#[tokio::test]
async fn admin_lockout_counts_forwarded_clients_and_parallel_bursts() {
    let cfg = Config::new()
        .openai("up", &Upstream::start("up").await, "")
        .build();
    let weir = Weir::start_with_server(&cfg, "  trusted_proxies: ['127.0.0.0/8']").await;
    let client = reqwest::Client::new();
    let ask = |behind: &'static str, key: String| {
        client
            .get(weir.admin_url("/admin/keys"))
            .bearer_auth(key)
            .header("x-forwarded-for", behind)
            .send()
    };
    let burst = (0..20).map(|i| ask("203.0.113.7", format!("guess-{i}")));
    let statuses: Vec<u16> = futures_util::future::join_all(burst)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 401).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 429).count(),
        15,
        "{statuses:?}"
    );
    // The ingress itself and another client behind it are not slowed.
    let r = ask("203.0.113.8", ADMIN_KEY.to_string()).await.unwrap();
    assert_eq!(r.status(), 200);
    let r = ask("203.0.113.7", ADMIN_KEY.to_string()).await.unwrap();
    assert_eq!(r.status(), 429);
}
