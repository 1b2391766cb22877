#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! The mail of imported keys (K2) through a real SMTP server (aiosmtpd, started per
//! test on a port it picks): STARTTLS with a login, implicit TLS from the CLI, a
//! server that is down, retries that pick up a fixed config, and the recovery of a
//! mail that failed. Every mailed key is checked against the gateway.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// aiosmtpd on 127.0.0.1; stopped when dropped.
struct SmtpSink {
    child: Child,
    port: u16,
    out: PathBuf,
}

impl SmtpSink {
    fn start(dir: &Path, args: &[&str]) -> SmtpSink {
        let out = dir.join(format!("mail-{}.jsonl", rand_suffix()));
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/smtp_sink.py");
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .arg("--out")
            .arg(&out)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3-aiosmtpd (installed by .ci/services)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .strip_prefix("PORT ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("the SMTP sink did not start: {line:?}"));
        SmtpSink { child, port, out }
    }

    fn messages(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    async fn wait_for(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.messages();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} mails arrived",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A CA and a `localhost` certificate it signed, as PEM files in `dir`.
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (ca, leaf, leaf_key) = localhost_certificate();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, leaf.pem()).unwrap();
    std::fs::write(&paths.2, leaf_key.serialize_pem()).unwrap();
    paths
}

fn config(smtp: &str) -> String {
    Config::new()
        .channel_at("mock", "mock", "http://127.0.0.1:9", "models: [m]")
        .gateway("name: default, path: /v1, auth: {method: database}")
        .section(&format!("smtp: {{{smtp}}}"))
        .build()
}

async fn import(weir: &Weir, csv: &str) -> Value {
    let (status, v) = weir.import_csv("models=m", csv).await;
    assert_eq!(status, 200, "{v}");
    v
}

async fn chat_status(weir: &Weir, key: &str) -> u16 {
    reqwest::Client::new()
        .post(weir.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&chat("m", false))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The key a mail carries, from its `API key:` line.
fn key_in(mail: &Value) -> String {
    let text = mail["text"].as_str().unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("API key:"))
        .unwrap_or_else(|| panic!("no key in {text}"));
    line.trim().to_string()
}

/// Polls `/admin/mail` until `done` holds for its rows.
async fn wait_outbox(weir: &Weir, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = weir.admin_get("/admin/mail").await["data"]
            .as_array()
            .unwrap()
            .clone();
        if done(&rows) {
            return rows;
        }
        assert!(Instant::now() < deadline, "outbox: {rows:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 100 Cognito rows: 3 repeat an earlier email, 2 have no valid address.
fn cognito_100() -> String {
    let mut csv = String::from(
        "cognito:username,name,given_name,email,email_verified,cognito:mfa_enabled\r\n",
    );
    for i in 0..100 {
        let email = match i {
            10 | 20 | 30 => format!("user{}@example.com", i - 1),
            40 => "not-an-address".to_string(),
            50 => "two@@example.com".to_string(),
            _ => format!("user{i}@example.com"),
        };
        csv.push_str(&format!("u{i},\"User, {i}\",U{i},{email},true,false\r\n"));
    }
    csv
}

#[tokio::test]
async fn a_cognito_import_mails_95_working_keys_over_starttls_with_a_login() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    let sink = SmtpSink::start(
        dir.path(),
        &[
            "--tls",
            "starttls",
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--auth",
            "weir:mail-pass",
        ],
    );
    let smtp = format!(
        "host: localhost, port: {}, tls: starttls, username: weir, password: mail-pass, \
         from: 'weir <noreply@example.com>', public_url: 'https://llm.example.com/v1'",
        sink.port
    );
    let weir =
        Weir::start_with_server(&config(&smtp), &format!("  ca_file: '{}'\n", ca.display())).await;

    let done = import(&weir, &cognito_100()).await;
    let created = done["created"].as_array().unwrap();
    assert_eq!(created.len(), 95, "{done}");
    assert_eq!(done["errors"].as_array().unwrap().len(), 5, "{done}");
    assert!(created.iter().all(|c| c["mailed"] == "queued"), "{done}");

    let mails = sink.wait_for(95).await;
    assert_eq!(mails.len(), 95);
    for c in created {
        let email = c["email"].as_str().unwrap();
        let mail = mails
            .iter()
            .find(|m| m["to"][0] == email)
            .unwrap_or_else(|| panic!("no mail to {email}"));
        assert_eq!(key_in(mail), c["key"].as_str().unwrap());
        assert_eq!(mail["from"], "noreply@example.com");
        let text = mail["text"].as_str().unwrap();
        assert!(
            text.contains("Base URL: https://llm.example.com/v1"),
            "{text}"
        );
        assert!(
            text.contains("接口地址：https://llm.example.com/v1"),
            "{text}"
        );
        assert!(mail["subject"].as_str().unwrap().contains("密钥"));
        assert_eq!(chat_status(&weir, &key_in(mail)).await, 200);
    }
    let sent = wait_outbox(&weir, |rows| {
        rows.iter().filter(|r| r["status"] == "sent").count() == 95
    })
    .await;
    assert!(sent.iter().all(|r| r["attempts"] == 1), "{sent:?}");

    // A second run creates nothing and mails nobody.
    let again = import(&weir, &cognito_100()).await;
    assert_eq!(again["created"].as_array().unwrap().len(), 0, "{again}");
    assert_eq!(again["skipped"].as_array().unwrap().len(), 95);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.messages().len(), 95);

    let log = weir.log();
    for c in created {
        assert!(
            !log.contains(c["key"].as_str().unwrap()),
            "a key reached the log"
        );
    }
}

#[tokio::test]
async fn mail_to_a_server_that_is_down_is_retried_and_picks_up_the_fixed_config() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1: every attempt is refused.
    let down = "host: 127.0.0.1, port: 1, tls: none, from: noreply@example.com, \
                public_url: 'http://127.0.0.1/v1', retries: 6, retry_interval: 200ms, timeout: 2s";
    let weir = Weir::start(&config(down)).await;
    let done = import(
        &weir,
        "name,email\nAnn,ann@example.com\nBob,bob@example.com\n",
    )
    .await;
    let created = done["created"].as_array().unwrap().clone();
    assert_eq!(created.len(), 2, "{done}");
    // The keys exist and work while their mail waits.
    for c in &created {
        assert_eq!(chat_status(&weir, c["key"].as_str().unwrap()).await, 200);
    }
    let waiting = wait_outbox(&weir, |rows| {
        rows.len() == 2 && rows.iter().all(|r| r["attempts"].as_u64() >= Some(1))
    })
    .await;
    for r in &waiting {
        assert_eq!(r["status"], "queued", "{r}");
        assert!(
            r["error"]
                .as_str()
                .unwrap()
                .to_lowercase()
                .contains("connect"),
            "{r}"
        );
    }

    // The server comes up; the next retries read the fixed config and get through.
    let sink = SmtpSink::start(dir.path(), &[]);
    let up = format!(
        "host: 127.0.0.1, port: {}, tls: none, from: noreply@example.com, \
         public_url: 'http://127.0.0.1/v1', retries: 6, retry_interval: 200ms",
        sink.port
    );
    weir.write_config(&config(&up), "");
    let (status, v) = weir.admin("POST", "/admin/reload", None).await;
    assert_eq!(status, 200, "{v}");
    let mails = sink.wait_for(2).await;
    for c in &created {
        let mail = mails.iter().find(|m| m["to"][0] == c["email"]).unwrap();
        assert_eq!(key_in(mail), c["key"].as_str().unwrap());
    }
    let rows = wait_outbox(&weir, |rows| rows.iter().all(|r| r["status"] == "sent")).await;
    assert!(
        rows.iter().all(|r| r["attempts"].as_u64() >= Some(2)),
        "{rows:?}"
    );
    let metrics = weir.metrics().await;
    assert!(metric_sum(&metrics, "weir_mail_attempts_total", &[("result", "retry")]) >= 2.0);
    assert_eq!(
        metric_sum(&metrics, "weir_mail_attempts_total", &[("result", "sent")]),
        2.0
    );
}

#[tokio::test]
async fn a_mail_that_failed_is_reported_and_a_new_key_can_be_mailed() {
    let dir = tempfile::tempdir().unwrap();
    let down = "host: 127.0.0.1, port: 1, tls: none, from: noreply@example.com, \
                public_url: 'http://127.0.0.1/v1', retries: 1, retry_interval: 50ms, timeout: 2s";
    let weir = Weir::start(&config(down)).await;
    let done = import(&weir, "name,email\nAnn,ann@example.com\n").await;
    let old_key = done["created"][0]["key"].as_str().unwrap().to_string();
    let id = done["created"][0]["id"].as_i64().unwrap();
    let rows = wait_outbox(&weir, |rows| {
        rows.first().is_some_and(|r| r["status"] == "failed")
    })
    .await;
    assert_eq!(rows[0]["attempts"], 2, "{rows:?}");
    assert_eq!(rows[0]["key_id"], id);
    let failed = weir.admin_get("/admin/mail?status=failed").await;
    assert_eq!(failed["data"].as_array().unwrap().len(), 1);
    let (status, bad) = weir.admin("GET", "/admin/mail?status=lost", None).await;
    assert_eq!(
        (status, bad["error"]["type"].clone()),
        (400, json!("invalid_request_error"))
    );
    assert_eq!(
        chat_status(&weir, &old_key).await,
        200,
        "a failed mail keeps the key"
    );

    let sink = SmtpSink::start(dir.path(), &[]);
    let up = format!(
        "host: 127.0.0.1, port: {}, tls: none, from: noreply@example.com, public_url: 'http://127.0.0.1/v1'",
        sink.port
    );
    weir.write_config(&config(&up), "");
    assert_eq!(weir.admin("POST", "/admin/reload", None).await.0, 200);
    let (status, v) = weir
        .admin("POST", &format!("/admin/keys/{id}/mail"), None)
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["mailed"], "queued");
    assert!(
        v.get("key").is_none(),
        "the new secret goes by mail only: {v}"
    );
    let mail = sink.wait_for(1).await.remove(0);
    let new_key = key_in(&mail);
    assert_ne!(new_key, old_key);
    assert_eq!(chat_status(&weir, &new_key).await, 200);
    assert_eq!(chat_status(&weir, &old_key).await, 401);
    wait_outbox(&weir, |rows| rows[0]["status"] == "sent").await;
}

#[tokio::test]
async fn the_cli_mails_over_implicit_tls_and_reports_each_row() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    let sink = SmtpSink::start(
        dir.path(),
        &[
            "--tls",
            "tls",
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    let smtp = format!(
        "host: localhost, port: {}, tls: tls, from: noreply@example.com, public_url: 'https://llm.example.com/v1'",
        sink.port
    );
    let weir =
        Weir::start_with_server(&config(&smtp), &format!("  ca_file: '{}'\n", ca.display())).await;
    let file = dir.path().join("people.csv");
    std::fs::write(&file, "name,email\nAnn,ann@example.com\nNo Mail,\n").unwrap();
    let out = weir.cli(&[
        "keys".as_ref(),
        "import".as_ref(),
        file.as_os_str(),
        "--models".as_ref(),
        "m".as_ref(),
    ]);
    let created = out["created"].as_array().unwrap();
    assert_eq!(created.len(), 2, "{out}");
    assert_eq!(created[0]["mailed"], "sent", "{out}");
    assert!(created[1]["mailed"].is_null(), "no email, no mail: {out}");
    let mail = sink.wait_for(1).await.remove(0);
    assert_eq!(key_in(&mail), created[0]["key"].as_str().unwrap());
    // The CLI wrote the store file; the gateway takes the new key up on its own.
    let deadline = Instant::now() + Duration::from_secs(10);
    while chat_status(&weir, created[0]["key"].as_str().unwrap()).await != 200 {
        assert!(Instant::now() < deadline, "the CLI's key never worked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_reset_while_a_mail_waits_drops_the_stale_mail() {
    let dir = tempfile::tempdir().unwrap();
    let down = "host: 127.0.0.1, port: 1, tls: none, from: noreply@example.com, \
                public_url: 'http://127.0.0.1/v1', retries: 20, retry_interval: 100ms, timeout: 2s";
    let weir = Weir::start(&config(down)).await;
    let done = import(&weir, "name,email\nAnn,ann@example.com\n").await;
    let id = done["created"][0]["id"].as_i64().unwrap();
    wait_outbox(&weir, |rows| rows[0]["attempts"].as_u64() >= Some(1)).await;
    let (status, _) = weir
        .admin("POST", &format!("/admin/keys/{id}/reset"), None)
        .await;
    assert_eq!(status, 200);

    let sink = SmtpSink::start(dir.path(), &[]);
    let up = format!(
        "host: 127.0.0.1, port: {}, tls: none, from: noreply@example.com, public_url: 'http://127.0.0.1/v1'",
        sink.port
    );
    weir.write_config(&config(&up), "");
    assert_eq!(weir.admin("POST", "/admin/reload", None).await.0, 200);
    assert_eq!(
        weir.admin("POST", &format!("/admin/keys/{id}/mail"), None)
            .await
            .0,
        200
    );
    let mail = sink.wait_for(1).await.remove(0);
    assert_eq!(
        chat_status(&weir, &key_in(&mail)).await,
        200,
        "the one mail has the live key"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sink.messages().len(),
        1,
        "the stale mail was dropped: {:?}",
        sink.messages()
    );
    wait_outbox(&weir, |rows| rows[0]["status"] == "sent").await;
}
