#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! One API / New API import (A7) from a real MariaDB (started per test on a unix
//! socket of its own, no TCP port) and from SQLite files, both loaded with the
//! forks' schemas (tests/fixtures/one-api/*.sql): the imported channels serve
//! traffic by their weights, imported tokens work as keys with their limits, a
//! second run changes nothing, and every bad source is a clear error that changes
//! nothing.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/one-api");

/// A MariaDB server on a unix socket in a temporary directory; stopped when dropped.
struct MariaDb {
    child: Child,
    dir: tempfile::TempDir,
}

impl MariaDb {
    fn start() -> MariaDb {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        // A tmpdir of its own: servers bootstrapping side by side in /tmp collide on
        // their temporary tables' names.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let out = Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg(format!("--user={}", whoami()))
            .output()
            .expect("mariadb-install-db (installed by .ci/services)");
        assert!(
            out.status.success(),
            "mariadb-install-db failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let child = Command::new(sbin("mariadbd"))
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.path().join("sock").display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .arg(format!(
                "--log-error={}",
                dir.path().join("err.log").display()
            ))
            .arg("--skip-networking")
            .arg(format!("--user={}", whoami()))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let db = MariaDb { child, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !db.ping() {
            assert!(
                Instant::now() < deadline,
                "mariadbd did not start: {}",
                db.error_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        db
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("err.log")).unwrap_or_default()
    }

    fn ping(&self) -> bool {
        self.socket().exists()
            && Command::new("mariadb-admin")
                .arg("--no-defaults")
                .arg(format!("--socket={}", self.socket().display()))
                .args(["-uroot", "ping"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    }

    /// Runs `sql` as root, in `db` when given.
    fn run(&self, db: Option<&str>, sql: &str) {
        use std::io::Write;
        let mut child = Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .arg("-uroot")
            .args(db)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(sql.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A database loaded with `schema` and `data`, readable by `oneapi`/`pw`.
    fn load(&self, db: &str, schema: &str, data: &str) {
        self.run(
            None,
            &format!(
                "CREATE DATABASE {db} CHARACTER SET utf8mb4;
                 CREATE USER IF NOT EXISTS 'oneapi'@'localhost' IDENTIFIED BY 'pw';
                 GRANT SELECT ON {db}.* TO 'oneapi'@'localhost';"
            ),
        );
        self.run(
            Some(db),
            &std::fs::read_to_string(Path::new(FIXTURES).join(schema)).unwrap(),
        );
        self.run(Some(db), data);
    }

    fn dsn(&self, db: &str, password: &str) -> String {
        format!(
            "mysql://oneapi:{password}@localhost/{db}?socket={}",
            self.socket().display()
        )
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian puts the server in /usr/sbin, which a user's PATH may lack.
fn sbin(name: &str) -> PathBuf {
    let path = Path::new("/usr/sbin").join(name);
    if path.exists() {
        path
    } else {
        PathBuf::from(name)
    }
}

fn whoami() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

const TOKEN_1: &str = "Aa1bB2cC3dD4eE5fF6gG7hH8iI9jJ0kK1lL2mM3nN4oO5pP6";
const TOKEN_2: &str = "Zz9yY8xX7wW6vV5uU4tT3sS2rR1qQ0pP9oO8nN7mM6lL5kK4";
const TOKEN_3: &str = "Qq1wW2eE3rR4tT5yY6uU7iI8oO9pP0aA1sS2dD3fF4gG5hH6";

/// One API rows: two OpenAI-wire channels on `a` and `b` (weights 3 and 1), a
/// disabled Azure one, an auto-disabled Anthropic one, a Baidu one (its own
/// protocol), one without a key; three tokens of two users.
fn one_api_rows(a: &Upstream, b: &Upstream) -> String {
    format!(
        r#"INSERT INTO users (id, username, password, `group`) VALUES (1, 'ann', 'x', 'default'), (2, 'vip', 'x', 'vip');
INSERT INTO channels (id, type, `key`, status, name, weight, base_url, models, `group`, model_mapping, priority, config) VALUES
 (1, 1, 'sk-up-a', 1, '主渠道', 3, '{a}', 'gpt-4o,gpt-4o-mini', 'default,vip', '{{"gpt-4":"gpt-4o"}}', 10, ''),
 (2, 8, 'sk-up-b', 1, 'backup', 1, '{b}', 'gpt-4o', 'default,vip', '', 10, NULL),
 (3, 3, 'az-key', 2, 'azure', 0, 'https://res.openai.azure.com', 'gpt-4o', 'default', '', 0, '{{"api_version":"2024-06-01"}}'),
 (4, 14, 'sk-ant', 3, 'claude', 0, '{a}', 'claude-3-5-sonnet', 'default', '', 0, NULL),
 (5, 15, 'id|secret', 1, 'baidu', 0, 'https://aip.baidubce.com', 'ernie-4', 'default', '', 0, NULL),
 (6, 1, '', 1, 'empty', 0, '', 'gpt-4o', 'default', '', 0, NULL);
INSERT INTO tokens (id, user_id, `key`, status, name, expired_time, remain_quota, unlimited_quota, models) VALUES
 (1, 1, '{TOKEN_1}', 1, 'ann-ci', -1, 0, true, ''),
 (2, 2, '{TOKEN_2}', 1, 'vip-mini', 1900000000, 500000, false, 'gpt-4o-mini'),
 (3, 1, '{TOKEN_3}', 2, 'revoked', -1, 0, true, NULL);
"#,
        a = a.url(),
        b = b.url()
    )
}

/// New API rows: a multi-key DeepSeek channel (New API's type 43) on `a`, an
/// Anthropic one, a token with model limits and a soft-deleted one.
fn new_api_rows(a: &Upstream) -> String {
    format!(
        r#"INSERT INTO users (id, username, password, `group`) VALUES (1, 'ann', 'x', 'default');
INSERT INTO channels (id, type, `key`, status, name, weight, base_url, models, `group`, model_mapping, priority, channel_info, tag) VALUES
 (7, 43, 'sk-ds-1
sk-ds-2', 1, 'deepseek', 0, '{a}', 'deepseek-chat', 'default', '{{}}', 5, '{{"is_multi_key":true,"multi_key_size":2,"multi_key_mode":"polling"}}', 'ds'),
 (8, 14, 'sk-ant', 1, 'claude', 0, '', 'claude-3-5-sonnet', 'default', NULL, 0, NULL, NULL);
INSERT INTO tokens (id, user_id, `key`, status, name, expired_time, remain_quota, unlimited_quota, model_limits_enabled, model_limits, `group`, deleted_at) VALUES
 (1, 1, '{TOKEN_1}', 1, 'limited', -1, 250000, false, true, 'deepseek-chat', '', NULL),
 (2, 1, '{TOKEN_2}', 1, 'gone', -1, 0, true, false, '', '', '2026-01-01 00:00:00.000');
"#,
        a = a.url()
    )
}

/// A SQLite file with `schema` and `data`, as One API keeps it without a DSN.
fn sqlite_file(dir: &Path, name: &str, schema: &str, data: &str) -> PathBuf {
    let path = dir.join(name);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(&std::fs::read_to_string(Path::new(FIXTURES).join(schema)).unwrap())
        .unwrap();
    conn.execute_batch(&data.replace("true", "1").replace("false", "0"))
        .unwrap();
    path
}

fn config() -> String {
    let rest = Config::new()
        .gateway("name: default, path: /v1, auth: {method: database}")
        .build();
    format!("  secret_key: 'a-test-secret-key-of-some-length'\n{rest}")
}

async fn import(weir: &Weir, body: Value) -> (u16, Value) {
    weir.admin("POST", "/admin/import/one-api", Some(body))
        .await
}

async fn call(weir: &Weir, key: &str, model: &str) -> u16 {
    reqwest::Client::new()
        .post(weir.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&chat(model, false))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn stored_channels(channels: &Value) -> Vec<String> {
    channels["channels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["source"] == "store")
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn one_api_on_mariadb_serves_by_weight_keeps_tokens_and_imports_once() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let db = MariaDb::start();
    db.load("oneapi", "one-api.sql", &one_api_rows(&a, &b));
    let mut weir = Weir::start(&config()).await;
    let dsn = db.dsn("oneapi", "pw");

    let (status, plan) = import(&weir, json!({"dsn": dsn, "dry_run": true, "tokens": true})).await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["source"], "one-api");
    assert_eq!(
        plan["channels"],
        json!({"created": 5, "updated": 0, "unchanged": 0})
    );
    assert_eq!(
        plan["keys"],
        json!({"created": 3, "updated": 0, "unchanged": 0})
    );
    assert_eq!(plan["errors"][0]["channel"], 6, "{plan}");
    assert!(stored_channels(&weir.admin_get("/admin/channels").await).is_empty());
    assert_eq!(
        call(&weir, &format!("sk-{TOKEN_1}"), "gpt-4o").await,
        401,
        "a dry run writes nothing"
    );

    let (status, done) = import(&weir, json!({"dsn": dsn, "tokens": true})).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["channels"]["created"], 5);
    let steps = done["plan"].as_array().unwrap();
    let step = |name: &str| steps.iter().find(|s| s["channel"] == name).unwrap().clone();
    assert_eq!(step("one-api-1")["source_name"], "主渠道");
    assert_eq!(
        (
            step("one-api-3")["type"].clone(),
            step("one-api-3")["enabled"].clone()
        ),
        (json!("azure"), json!(false))
    );
    assert_eq!(step("one-api-4")["suspended"], true);
    assert!(step("one-api-5")["notes"][0]
        .as_str()
        .unwrap()
        .contains("Baidu"));

    let channels = weir.admin_get("/admin/channels").await;
    let mut names = stored_channels(&channels);
    names.sort();
    assert_eq!(
        names,
        [
            "one-api-1",
            "one-api-2",
            "one-api-3",
            "one-api-4",
            "one-api-5"
        ]
    );
    let claude = channels["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "one-api-4")
        .unwrap();
    assert_eq!(claude["health"]["state"], "suspended", "{claude}");
    let azure = weir.admin_get("/admin/channels/one-api-3").await;
    assert_eq!(azure["api_version"], "2024-06-01", "{azure}");

    // Clients keep their keys; traffic splits 3:1 as the weights say.
    let ann = format!("sk-{TOKEN_1}");
    for _ in 0..200 {
        assert_eq!(call(&weir, &ann, "gpt-4o").await, 200);
    }
    let (on_a, on_b) = (a.calls(), b.calls());
    assert_eq!(on_a + on_b, 200);
    assert!(
        (115..=185).contains(&on_a),
        "weights 3:1 gave {on_a}:{on_b}"
    );
    assert_eq!(call(&weir, &ann, "gpt-4").await, 200);
    assert_eq!(
        a.seen().last().unwrap().body["model"],
        "gpt-4o",
        "the mapping is kept"
    );
    assert_eq!(
        a.seen().last().unwrap().authorization.as_deref(),
        Some("Bearer sk-up-a")
    );

    // The limited token: its one model, its balance, its group.
    let vip = format!("sk-{TOKEN_2}");
    assert_eq!(call(&weir, &vip, "gpt-4o-mini").await, 200);
    assert_eq!(call(&weir, &vip, "gpt-4o").await, 403);
    let keys = weir.admin_get("/admin/keys").await;
    let vip_key = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "vip-mini")
        .unwrap();
    assert_eq!(vip_key["group"], "vip", "{vip_key}");
    assert!(vip_key["balance"].as_f64().unwrap() <= 1.0, "{vip_key}");
    assert_eq!(
        call(&weir, &format!("sk-{TOKEN_3}"), "gpt-4o").await,
        401,
        "a disabled token stays off"
    );

    let (status, again) = import(&weir, json!({"dsn": dsn, "tokens": true})).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        again["channels"],
        json!({"created": 0, "updated": 0, "unchanged": 5})
    );
    assert_eq!(
        again["keys"],
        json!({"created": 0, "updated": 0, "unchanged": 3})
    );

    // The auto-disabled channel entered suspended once; a restart does not do it again.
    weir.restart().await;
    let claude = weir.admin_get("/admin/channels/one-api-4").await;
    assert_eq!(claude["health"]["state"], "healthy", "{claude}");
}

#[tokio::test]
async fn bad_sources_are_clear_errors_that_change_nothing() {
    let db = MariaDb::start();
    db.load("oneapi", "one-api.sql", "");
    db.run(
        None,
        "CREATE DATABASE empty; GRANT SELECT ON empty.* TO 'oneapi'@'localhost';
                  CREATE DATABASE odd; GRANT SELECT ON odd.* TO 'oneapi'@'localhost';",
    );
    db.run(
        Some("odd"),
        "CREATE TABLE channels (id bigint PRIMARY KEY, name text);",
    );
    let weir = Weir::start(&config()).await;
    let cases = [
        (db.dsn("oneapi", "wrong-password"), "Access denied"),
        (db.dsn("empty", "pw"), "no `channels` table"),
        (db.dsn("odd", "pw"), "lacks type, key, status"),
        ("ftp://u:secret@h/x".to_string(), "is not mysql://"),
        (
            "sqlite:/nonexistent/one-api.db".to_string(),
            "no SQLite file",
        ),
    ];
    for (dsn, want) in cases {
        let (status, v) = import(&weir, json!({"dsn": dsn, "tokens": true})).await;
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(status, 400, "{dsn}: {v}");
        assert!(message.contains(want), "{dsn}: {message}");
        assert!(
            !message.contains("wrong-password") && !message.contains("secret"),
            "{message}"
        );
    }
    let (status, v) = import(
        &weir,
        json!({"dsn": db.dsn("empty", "pw"), "tokens": true, "extra": 1}),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    // The tokens table is looked for only when asked, and named when missing.
    db.run(Some("empty"), "CREATE TABLE channels LIKE oneapi.channels;");
    let (status, v) = import(&weir, json!({"dsn": db.dsn("empty", "pw"), "tokens": true})).await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no `tokens` table"),
        "{v}"
    );
    assert!(stored_channels(&weir.admin_get("/admin/channels").await).is_empty());
}

#[tokio::test]
async fn new_api_on_mariadb_keeps_multi_key_channels_and_model_limits() {
    let a = Upstream::start("a").await;
    let db = MariaDb::start();
    db.load("newapi", "new-api.sql", &new_api_rows(&a));
    let weir = Weir::start(&config()).await;
    let (status, done) = import(
        &weir,
        json!({"dsn": db.dsn("newapi", "pw"), "tokens": true}),
    )
    .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["source"], "new-api");
    assert_eq!(done["channels"]["created"], 2, "{done}");
    assert_eq!(
        done["keys"]["created"], 1,
        "the soft-deleted token stays behind: {done}"
    );
    let ds = weir.admin_get("/admin/channels/new-api-7").await;
    assert_eq!(ds["keys"].as_array().unwrap().len(), 2, "{ds}");
    assert_eq!(ds["priority"], 5);
    let claude = weir.admin_get("/admin/channels/new-api-8").await;
    assert_eq!(claude["upstream"], "https://api.anthropic.com", "{claude}");

    let key = format!("sk-{TOKEN_1}");
    // Keys are spread at random: 40 calls miss one of two with odds of 2^-39.
    for _ in 0..40 {
        assert_eq!(call(&weir, &key, "deepseek-chat").await, 200);
    }
    let used: std::collections::HashSet<_> = a
        .seen()
        .iter()
        .filter_map(|s| s.authorization.clone())
        .collect();
    assert_eq!(used.len(), 2, "both keys of the channel serve: {used:?}");
    assert_eq!(
        call(&weir, &key, "claude-3-5-sonnet").await,
        403,
        "model limits hold"
    );
    assert_eq!(
        call(&weir, &format!("sk-{TOKEN_2}"), "deepseek-chat").await,
        401
    );
}

#[tokio::test]
async fn sqlite_files_of_both_forks_import_through_the_cli() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let dir = tempfile::tempdir().unwrap();
    let one = sqlite_file(
        dir.path(),
        "one-api.db",
        "one-api.sql",
        &one_api_rows(&a, &b),
    );
    let new = sqlite_file(dir.path(), "new-api.db", "new-api.sql", &new_api_rows(&a));
    let weir = Weir::start(&config()).await;

    let dsn = format!("sqlite:{}", one.display());
    let plan = weir.cli(&[
        "import".as_ref(),
        "one-api".as_ref(),
        dsn.as_ref(),
        "--tokens".as_ref(),
        "--dry-run".as_ref(),
    ]);
    assert_eq!(plan["channels"]["created"], 5, "{plan}");
    let done = weir.cli(&[
        "import".as_ref(),
        "one-api".as_ref(),
        dsn.as_ref(),
        "--tokens".as_ref(),
    ]);
    assert_eq!(done["keys"]["created"], 3, "{done}");
    let dsn = format!("sqlite://{}", new.display());
    let done = weir.cli(&[
        "import".as_ref(),
        "one-api".as_ref(),
        dsn.as_ref(),
        "--prefix".as_ref(),
        "na".as_ref(),
    ]);
    assert_eq!(
        (done["source"].clone(), done["channels"]["created"].clone()),
        (json!("new-api"), json!(2)),
        "{done}"
    );

    // The running gateway takes the CLI's writes up on its own.
    let key = format!("sk-{TOKEN_1}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while call(&weir, &key, "deepseek-chat").await != 200 {
        assert!(
            Instant::now() < deadline,
            "the imported channels never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Through the API a second time: nothing to do.
    let (status, again) = import(
        &weir,
        json!({"dsn": format!("sqlite:{}", one.display()), "tokens": true}),
    )
    .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        again["channels"],
        json!({"created": 0, "updated": 0, "unchanged": 5})
    );
    assert_eq!(again["keys"]["unchanged"], 3);
}
