#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! `https` upstreams: rustls with SNI and real certificate verification.

mod common;

use common::*;
use std::time::Duration;

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

// ---- TLS and HTTP/2 towards clients (`server.tls`, `server.h2c`) ----

/// A certificate for `localhost` from a fresh CA, written as `cert.pem`, `key.pem`
/// (the paths weir is given) and `ca-N.pem` (what a client trusts).
fn write_certificate(dir: &std::path::Path, n: usize) -> std::path::PathBuf {
    let (ca, leaf, key) = localhost_certificate();
    let ca_path = dir.join(format!("ca-{n}.pem"));
    std::fs::write(&ca_path, ca.pem()).unwrap();
    // Written whole and renamed, as certbot and secret mounts do.
    write_atomically(&dir.join("cert.pem"), &leaf.pem());
    write_atomically(&dir.join("key.pem"), &key.serialize_pem());
    ca_path
}

fn tls_extra(dir: &std::path::Path, more: &str) -> String {
    format!(
        "  tls: {{cert: '{}', key: '{}'{more}}}",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    )
}

/// Runs curl; returns its output (the body, then the HTTP version on the last line).
/// Async: the mock upstream runs on this test's own runtime thread.
async fn curl(args: &[&str]) -> String {
    let mut all = vec!["-sS", "--max-time", "10", "-w", "\n%{http_version}"];
    all.extend_from_slice(args);
    let out = run("curl", &all).await;
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a client program off the runtime thread, which the mock upstream needs.
async fn run(program: &str, args: &[&str]) -> std::process::Output {
    let program = program.to_string();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || std::process::Command::new(&program).args(&args).output())
        .await
        .unwrap()
        .expect("the client runs")
}

fn chat_json(stream: bool) -> String {
    chat("m", stream).to_string()
}

#[tokio::test]
async fn clients_speak_http2_over_tls_streams_included() {
    let up = Upstream::start("h2").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = write_certificate(dir.path(), 1);
    let cfg = Config::new().openai("h2", &up, "");
    let extra = tls_extra(dir.path(), ", admin: true");
    let weir = Weir::start_with_server(&cfg.build(), &extra).await;
    let url = format!("https://localhost:{}/v1/chat/completions", weir.port);
    let resolve = format!("localhost:{}:127.0.0.1", weir.port);
    let ca = ca.to_str().unwrap();
    let base = [
        "--cacert",
        ca,
        "--resolve",
        &resolve,
        "-H",
        "content-type: application/json",
    ];
    for (stream, version) in [(false, "--http2"), (true, "--http2"), (true, "--http1.1")] {
        let body = chat_json(stream);
        let mut args = base.to_vec();
        args.extend([version, "-d", &body, &url]);
        let out = curl(&args).await;
        let (answer, got) = out.rsplit_once('\n').unwrap();
        assert_eq!(got, if version == "--http2" { "2" } else { "1.1" }, "{out}");
        if stream {
            assert!(answer.ends_with("data: [DONE]\n\n"), "{answer}");
        } else {
            assert!(answer.contains("upstream h2"), "{answer}");
        }
    }
    // httpx with HTTP/2, as the openai SDK would run over it.
    let script = r#"
import httpx, json, sys
port, ca = sys.argv[1], sys.argv[2]
url = f"https://localhost:{port}/v1/chat/completions"
with httpx.Client(http2=True, verify=ca) as c:
    r = c.post(url, json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    print(r.http_version, r.status_code, r.json()["choices"][0]["message"]["content"])
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with c.stream("POST", url, json=body) as s:
        lines = [l for l in s.iter_lines() if l.startswith("data: ")]
        print(s.http_version, s.status_code, len(lines), lines[-1])
"#;
    let out = run(
        "/usr/bin/python3",
        &["-c", script, &weir.port.to_string(), ca],
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "HTTP/2 200 Hello from upstream h2", "{text}");
    assert!(
        lines[1].starts_with("HTTP/2 200 ") && lines[1].ends_with("data: [DONE]"),
        "{text}"
    );
    assert_eq!(up.calls(), 5);
    // `admin: true`: the admin listener speaks TLS too.
    let admin = format!("https://localhost:{}/health", weir.admin_port);
    let admin_resolve = format!("localhost:{}:127.0.0.1", weir.admin_port);
    let out = curl(&["--cacert", ca, "--resolve", &admin_resolve, &admin]).await;
    assert!(
        out.contains("\"status\":\"ok\"") && out.ends_with("\n2"),
        "{out}"
    );
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let up = Upstream::start("rot").await;
    let dir = tempfile::tempdir().unwrap();
    let first = write_certificate(dir.path(), 1);
    let cfg = Config::new().openai("rot", &up, "");
    let weir = Weir::start_with_server(&cfg.build(), &tls_extra(dir.path(), "")).await;
    let url = format!("https://localhost:{}/v1/models", weir.port);
    let resolve = format!("localhost:{}:127.0.0.1", weir.port);
    let trusts = |ca: &std::path::Path| {
        std::process::Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "5",
                "-o",
                "/dev/null",
                "--resolve",
                &resolve,
            ])
            .args(["--cacert", ca.to_str().unwrap(), &url])
            .status()
            .unwrap()
            .success()
    };
    assert!(trusts(&first));
    let second = write_certificate(dir.path(), 2);
    let mut rotated = false;
    for _ in 0..50 {
        if trusts(&second) {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rotated, "the new certificate was not served within 5 s");
    assert!(!trusts(&first), "the old certificate is still served");
    // A half-done rotation (a key that does not fit) keeps the current pair.
    let (_, _, other_key) = localhost_certificate();
    write_atomically(&dir.path().join("key.pem"), &other_key.serialize_pem());
    weir.wait_log("TLS certificate not reloaded").await;
    assert!(trusts(&second));
}

#[tokio::test]
async fn h2c_with_prior_knowledge_and_http1_share_the_listener() {
    let up = Upstream::start("h2c").await;
    let cfg = Config::new().openai("h2c", &up, "");
    let weir = Weir::start_with_server(&cfg.build(), "  h2c: true").await;
    let url = weir.url("/v1/chat/completions");
    let body = chat_json(true);
    for (flag, want) in [("--http2-prior-knowledge", "2"), ("--http1.1", "1.1")] {
        let out = curl(&[
            flag,
            "-H",
            "content-type: application/json",
            "-d",
            &body,
            &url,
        ])
        .await;
        let (answer, got) = out.rsplit_once('\n').unwrap();
        assert_eq!(got, want, "{out}");
        assert!(answer.ends_with("data: [DONE]\n\n"), "{answer}");
    }
}

#[tokio::test]
async fn a_certificate_that_does_not_load_stops_the_start_with_its_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
    std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
    let cfg = Config::new().channel_at("mock", "mock", "http://127.0.0.1:9", "models: [m]");
    let (ok, text) = weir_check(dir.path(), &cfg.build(), &tls_extra(dir.path(), ""));
    assert!(!ok, "{text}");
    assert!(text.contains("server.tls"), "{text}");
}

// ---- A channel's forward proxy (`proxy:`) ----

#[tokio::test]
async fn a_channel_reaches_https_and_http_upstreams_through_its_forward_proxy() {
    let proxy = ForwardProxyServer::start(None).await;
    let (secure, ca_pem) = Upstream::start_tls("tunnelled").await;
    let plain = Upstream::start("forwarded").await;
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca_pem).unwrap();
    let via = format!("proxy: '{}'", proxy.url());
    let cfg = Config::new()
        .channel_at(
            "tunnelled",
            "openai",
            &format!("{}/v1", secure.https_url()),
            &format!("models: [s], retries: 0, {via}"),
        )
        .channel_at(
            "forwarded",
            "openai",
            &plain.url(),
            &format!("models: [p], retries: 0, {via}"),
        );
    let weir =
        Weir::start_with_server(&cfg.build(), &format!("  ca_file: '{}'", ca_path.display())).await;
    let client = reqwest::Client::new();
    let url = weir.url("/v1/chat/completions");
    for stream in [false, true] {
        let (status, body) = post(&client, &url, &chat("s", stream)).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("tunnelled"), "{body}");
        let (status, body) = post(&client, &url, &chat("p", stream)).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("forwarded"), "{body}");
    }
    // The https upstream was reached by a CONNECT tunnel (TLS with the upstream
    // itself: the proxy saw no request); the http one by absolute-form requests.
    let log = proxy.log();
    assert!(
        log.contains(&format!("CONNECT localhost:{}", secure.port)),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "http://127.0.0.1:{}/v1/chat/completions",
            plain.port
        )),
        "{log}"
    );
    assert_eq!(plain.seen()[0].path, "/v1/chat/completions");
    assert!(
        plain.seen()[0].headers.contains_key("via"),
        "not through the proxy"
    );
    assert_eq!((secure.calls(), plain.calls()), (2, 2));
}

#[tokio::test]
async fn proxy_credentials_are_sent_and_a_refusal_is_named() {
    let proxy = ForwardProxyServer::start(Some(("weir", "s3cret"))).await;
    let up = Upstream::start("behind").await;
    let (secure, ca_pem) = Upstream::start_tls("secure").await;
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca_pem).unwrap();
    let good = format!("http://weir:s3cret@127.0.0.1:{}", proxy.port);
    let bad = format!("http://weir:wrong@127.0.0.1:{}", proxy.port);
    let secure_url = format!("{}/v1", secure.https_url());
    let cfg = Config::new()
        .channel_at(
            "good",
            "openai",
            &up.url(),
            &format!("models: [g], retries: 0, proxy: '{good}'"),
        )
        .channel_at(
            "good-tls",
            "openai",
            &secure_url,
            &format!("models: [gs], retries: 0, proxy: '{good}'"),
        )
        .channel_at(
            "bad",
            "openai",
            &secure_url,
            &format!("models: [b], retries: 0, proxy: '{bad}'"),
        );
    let weir =
        Weir::start_with_server(&cfg.build(), &format!("  ca_file: '{}'", ca_path.display())).await;
    let client = reqwest::Client::new();
    let url = weir.url("/v1/chat/completions");
    for model in ["g", "gs"] {
        let (status, body) = post(&client, &url, &chat(model, false)).await;
        assert_eq!(status, 200, "{body}");
    }
    // The proxy's refusal is the channel's failure, named as the proxy's; the
    // password is nowhere.
    let (status, body) = post(&client, &url, &chat("b", false)).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("bad: "), "{body}");
    weir.wait_log("proxy refused the tunnel").await;
    assert!(
        !body.contains("wrong") && !weir.log().contains("wrong"),
        "{body}"
    );
    let (_, config) = weir.admin("GET", "/admin/config", None).await;
    assert!(!config.to_string().contains("s3cret"), "{config}");
    assert_eq!((up.calls(), secure.calls()), (1, 1));
}

/// `server.max_header` holds for HTTP/2 as well: a header list over it is
/// answered 431 by the h2 layer, one under it served.
#[tokio::test]
async fn max_header_applies_to_http2_too() {
    let up = Upstream::start("h2-limits").await;
    let cfg = Config::new().openai("h2-limits", &up, "");
    let weir = Weir::start_with_server(&cfg.build(), "  h2c: true\n  max_header: 8KiB").await;
    let url = weir.url("/v1/chat/completions");
    let body = chat_json(false);
    let status = |padding: usize| {
        let header = format!("x-padding: {}", "a".repeat(padding));
        let (url, body) = (url.clone(), body.clone());
        async move {
            let out = run(
                "curl",
                &[
                    "-sS",
                    "--max-time",
                    "10",
                    "--http2-prior-knowledge",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "-H",
                    "content-type: application/json",
                    "-H",
                    &header,
                    "-d",
                    &body,
                    &url,
                ],
            )
            .await;
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    assert_eq!(status(2_000).await, "200");
    assert_eq!(status(12_000).await, "431");
    assert_eq!(up.calls(), 1);
}
