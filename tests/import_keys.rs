#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! Bulk key import (K2) from CSV, through the admin API and the CLI, on a real
//! SQLite file: a dry run changes nothing, a second run creates nothing, the
//! created keys work, bad rows and bad files are named.

mod common;

use common::*;
use serde_json::{json, Value};

fn config() -> String {
    Config::new()
        .channel_at("mock", "mock", "http://127.0.0.1:9", "models: [m]")
        .gateway("name: default, path: /v1, auth: {method: database}")
        .build()
}

async fn import(weir: &Weir, query: &str, csv: &str) -> (u16, Value) {
    weir.import_csv(query, csv).await
}

const COGNITO: &str = "\u{feff}name,given_name,email,email_verified,cognito:username\r\n\
    \"Li, Wei\",Wei,wei@example.cn,true,wli\r\n\
    ,,zhang@example.cn,true,\r\n\
    broken,,not-an-address,true,bad\r\n";

#[tokio::test]
async fn a_cognito_export_becomes_keys_once() {
    let weir = Weir::start(&config()).await;
    let (_, v) = weir
        .admin(
            "POST",
            "/admin/groups",
            Some(json!({"name": "team", "models": ["m"]})),
        )
        .await;
    assert_eq!(v["created"], "team");

    // The dry run shows the plan and writes nothing.
    let (status, plan) = import(&weir, "group=team&dry_run=true", COGNITO).await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["created"].as_array().unwrap().len(), 2);
    assert!(plan["created"][0]["key"].is_null());
    assert_eq!(plan["errors"][0]["row"], 4);
    assert!(plan["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("not-an-address"));
    assert_eq!(
        weir.admin_get("/admin/keys").await["keys"]
            .as_array()
            .unwrap()
            .len(),
        0
    );

    let (status, done) = import(&weir, "group=team&monthly_budget=5", COGNITO).await;
    assert_eq!(status, 200, "{done}");
    let created = done["created"].as_array().unwrap();
    assert_eq!(created.len(), 2);
    assert_eq!(
        (created[0]["row"].clone(), created[0]["name"].clone()),
        (json!(2), json!("wli"))
    );
    assert_eq!(created[1]["name"], "zhang@example.cn");
    let keys = weir.admin_get("/admin/keys").await;
    let wli = &keys["keys"][0];
    assert_eq!(
        (wli["group"].clone(), wli["monthly_budget"].clone()),
        (json!("team"), json!(5.0))
    );
    assert_eq!(wli["email"], "wei@example.cn");

    // The new key serves at once.
    let key = created[0]["key"].as_str().unwrap();
    let r = reqwest::Client::new()
        .post(weir.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&chat("m", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The same file again: every row is skipped, nothing is created.
    let (_, again) = import(&weir, "group=team", COGNITO).await;
    assert_eq!(again["created"], json!([]));
    assert_eq!(again["skipped"].as_array().unwrap().len(), 2);
    assert!(again["skipped"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("wei@example.cn already has key"));
    assert_eq!(
        weir.admin_get("/admin/keys").await["keys"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn bad_files_and_options_are_refused_whole() {
    let weir = Weir::start(&config()).await;
    let (status, v) = import(&weir, "", "user,mail\nx,y\n").await;
    assert_eq!(status, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("user, mail"),
        "{v}"
    );
    let (status, v) = import(&weir, "group=nope", "name,email\na,a@x.io\n").await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("nope"));
    let (status, _) = import(&weir, "monthly_budget=lots", "name,email\na,a@x.io\n").await;
    assert_eq!(status, 400);
    assert_eq!(
        weir.admin_get("/admin/keys").await["keys"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    // A user key may not import.
    let (_, user) = weir.create_key(json!({"name": "u"})).await;
    let r = reqwest::Client::new()
        .post(weir.admin_url("/admin/keys/import"))
        .bearer_auth(&user)
        .body("name,email\na,a@x.io\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn the_cli_imports_the_same_way() {
    let weir = Weir::start(&config()).await;
    let file = weir.dir.path().join("people.csv");
    std::fs::write(
        &file,
        "name,email\nAnn,ann@example.com\nBob,bob@example.com\n",
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let mut args: Vec<&std::ffi::OsStr> =
            vec!["keys".as_ref(), "import".as_ref(), file.as_os_str()];
        args.extend(extra.iter().map(|a| std::ffi::OsStr::new(*a)));
        weir.cli(&args)
    };
    let plan = run(&["--dry-run"]);
    assert_eq!(plan["created"].as_array().unwrap().len(), 2);
    let done = run(&[]);
    assert!(done["created"][1]["key"]
        .as_str()
        .unwrap()
        .starts_with("sk-"));
    let again = run(&[]);
    assert_eq!(again["created"], json!([]));
    assert_eq!(again["skipped"].as_array().unwrap().len(), 2);
}
