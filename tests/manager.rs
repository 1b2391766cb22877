#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! The web manager (A8): sessions, CSRF and the user view over plain HTTP here;
//! `manager_browser.rs` drives the pages in headless Chromium.

mod common;

use common::*;
use serde_json::json;
use std::collections::HashMap;

/// A browser stand-in: keeps cookies, never follows redirects.
struct Visitor {
    http: reqwest::Client,
    base: String,
    cookies: HashMap<String, String>,
    set_cookies: Vec<String>,
}

struct Page {
    status: u16,
    body: String,
    location: Option<String>,
}

impl Visitor {
    fn new(base: String) -> Visitor {
        Visitor {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base,
            cookies: HashMap::new(),
            set_cookies: Vec::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn send(&mut self, req: reqwest::RequestBuilder) -> Page {
        let r = req
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        for c in r.headers().get_all("set-cookie") {
            let c = c.to_str().unwrap().to_string();
            let (pair, _) = c.split_once(';').unwrap_or((&c, ""));
            let (k, v) = pair.split_once('=').unwrap();
            if v.is_empty() || c.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_string(), v.to_string());
            }
            self.set_cookies.push(c);
        }
        let status = r.status().as_u16();
        let location = r
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_string());
        // The templates escape `/` too; the tests read the text as a browser shows it.
        let body = r.text().await.unwrap().replace("&#x2f;", "/");
        Page {
            status,
            body,
            location,
        }
    }

    async fn get(&mut self, path: &str) -> Page {
        let req = self.http.get(format!("{}{path}", self.base));
        self.send(req).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let req = self.http.post(format!("{}{path}", self.base)).form(form);
        self.send(req).await
    }

    /// Signs in with `key`; answers the sign-in post's page.
    async fn login(&mut self, key: &str) -> Page {
        let page = self.get("/manager/login").await;
        let token = csrf(&page.body);
        self.post("/manager/login", &[("_csrf", &token), ("key", key)])
            .await
    }
}

/// The CSRF token of the first form on a page.
fn csrf(html: &str) -> String {
    let at = html
        .find(r#"name="_csrf" value=""#)
        .expect("a form with a CSRF token");
    let rest = &html[at + 20..];
    rest[..rest.find('"').unwrap()].to_string()
}

fn config() -> String {
    Config::new()
        .channel_at("mock", "mock", "http://127.0.0.1:9", "models: [m]")
        .gateway("name: default, path: /v1, auth: {method: database}")
        .build()
}

#[tokio::test]
async fn sessions_hold_no_key_refuse_forged_writes_and_end_with_their_key() {
    let weir = Weir::start(&config()).await;
    let (user_id, user_key) = weir.create_key(json!({"name": "ann"})).await;
    let mut v = Visitor::new(weir.admin_url(""));

    // Not signed in: every page sends to the sign-in page.
    let p = v.get("/manager/keys").await;
    assert_eq!(
        (p.status, p.location.as_deref()),
        (303, Some("/manager/login"))
    );
    // A wrong key is refused on the form, and so is a sign-in without its token.
    let p = v.login("sk-not-a-key").await;
    assert_eq!(p.status, 401);
    assert!(p.body.contains("This key is unknown, disabled or expired."));
    let mut stranger = Visitor::new(weir.admin_url(""));
    let p = stranger
        .post("/manager/login", &[("_csrf", "guess"), ("key", &user_key)])
        .await;
    assert_eq!(p.status, 403);

    // The user signs in: the cookie is HttpOnly and SameSite=Strict and is not the key.
    let p = v.login(&user_key).await;
    assert_eq!((p.status, p.location.as_deref()), (303, Some("/manager/")));
    let session = v
        .set_cookies
        .iter()
        .find(|c| c.starts_with("weir_session="))
        .unwrap();
    assert!(session.contains("HttpOnly") && session.contains("SameSite=Strict"));
    assert!(!session.contains(&user_key));
    let me = v.get("/manager/").await;
    assert_eq!(me.status, 200);
    assert!(me.body.contains("My usage") && me.body.contains("ann"));

    // A user key reaches no admin page, by link or by address.
    assert!(!me.body.contains(r#"href="/manager/keys""#));
    for page in [
        "/manager/keys",
        "/manager/channels",
        "/manager/config",
        "/manager/keys/1",
    ] {
        let p = v.get(page).await;
        assert_eq!(p.status, 403, "{page}");
    }
    // Nor any admin write through the form endpoint, even with its own token.
    let token = csrf(&me.body);
    let keys_before = weir.admin_get("/admin/keys").await["keys"]
        .as_array()
        .unwrap()
        .len();
    let p = v
        .post(
            "/manager/do",
            &[
                ("_csrf", &token),
                ("_method", "POST"),
                ("_path", "/admin/keys"),
                ("_back", "/manager/me"),
                ("_form", "x"),
                ("name", "mallory"),
            ],
        )
        .await;
    assert_eq!(p.status, 303);
    let shown = v.get("/manager/me").await;
    assert!(
        shown.body.contains("a user key may read only its own"),
        "{}",
        shown.body
    );
    // Without the token (a forged cross-site post) nothing is done at all.
    let p = v
        .post(
            "/manager/do",
            &[
                ("_method", "PATCH"),
                ("_path", &format!("/admin/keys/{user_id}")),
                ("_back", "/manager/me"),
                ("active:bool", "false"),
            ],
        )
        .await;
    assert_eq!(p.status, 403);
    assert!(p.body.contains("CSRF token missing or wrong"));
    assert_eq!(
        weir.admin_get("/admin/keys").await["keys"]
            .as_array()
            .unwrap()
            .len(),
        keys_before
    );
    assert_eq!(
        weir.admin_get(&format!("/admin/keys/{user_id}")).await["active"],
        true
    );

    // Resetting the key ends its session at once.
    let (status, _) = weir
        .admin("POST", &format!("/admin/keys/{user_id}/reset"), None)
        .await;
    assert_eq!(status, 200);
    let p = v.get("/manager/me").await;
    assert_eq!(
        (p.status, p.location.as_deref()),
        (303, Some("/manager/login"))
    );

    // An admin session: disabling its key ends it too; logout ends the bootstrap one.
    let (admin_id, admin_key) = weir
        .create_key(json!({"name": "ops", "role": "admin"}))
        .await;
    let mut ops = Visitor::new(weir.admin_url(""));
    assert_eq!(ops.login(&admin_key).await.status, 303);
    assert_eq!(ops.get("/manager/keys").await.status, 200);
    let (status, _) = weir
        .admin(
            "PATCH",
            &format!("/admin/keys/{admin_id}"),
            Some(json!({"active": false})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(ops.get("/manager/keys").await.status, 303);
    let mut root = Visitor::new(weir.admin_url(""));
    assert_eq!(root.login(ADMIN_KEY).await.status, 303);
    let keys = root.get("/manager/keys").await;
    assert_eq!(keys.status, 200);
    let p = root
        .post("/manager/logout", &[("_csrf", &csrf(&keys.body))])
        .await;
    assert_eq!(p.status, 303);
    assert_eq!(root.get("/manager/keys").await.status, 303);
}

#[tokio::test]
async fn the_public_listener_serves_the_user_view_only_when_asked() {
    let weir = Weir::start_with_server(&config(), "  public_manager: true\n").await;
    let (_, user_key) = weir.create_key(json!({"name": "ann"})).await;
    let mut v = Visitor::new(weir.url(""));
    assert_eq!(v.login(&user_key).await.status, 303);
    let me = v.get("/manager/me").await;
    assert_eq!(me.status, 200);
    assert!(me.body.contains("ann"));
    let call = v.get("/manager/me/call").await;
    assert!(
        call.body
            .contains(&format!("http://127.0.0.1:{}/v1", weir.port)),
        "{}",
        call.body
    );
    assert_eq!(v.get("/manager/keys").await.status, 403);
    assert_eq!(v.get("/manager/logs/export?format=csv").await.status, 404);
    // The bootstrap admin key has no user view: it signs in on the admin listener only.
    let mut admin = Visitor::new(weir.url(""));
    let p = admin.login(ADMIN_KEY).await;
    assert_eq!(p.status, 401);
    assert!(p.body.contains("Only user keys can sign in here"));
    // An admin key signed in here sees only its own user view.
    let (_, ops_key) = weir
        .create_key(json!({"name": "ops", "role": "admin"}))
        .await;
    let mut ops = Visitor::new(weir.url(""));
    assert_eq!(ops.login(&ops_key).await.status, 303);
    assert_eq!(ops.get("/manager/config").await.status, 403);

    // Without the switch, the proxy listener knows no /manager/.
    let closed = Weir::start(&config()).await;
    let r = reqwest::get(closed.url("/manager/login")).await.unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["error"]["message"].is_string());
}

#[tokio::test]
async fn the_language_follows_the_browser_unless_switched() {
    let weir = Weir::start(&config()).await;
    let mut v = Visitor::new(weir.admin_url(""));
    let req = v
        .http
        .get(weir.admin_url("/manager/login"))
        .header("accept-language", "zh-CN,zh;q=0.9,en;q=0.5");
    let p = v.send(req).await;
    assert!(p.body.contains(r#"<html lang="zh-CN">"#) && p.body.contains("登录"));
    let p = v.get("/manager/login?lang=en").await;
    assert_eq!(p.status, 303);
    let req = v
        .http
        .get(weir.admin_url("/manager/login"))
        .header("accept-language", "zh-CN");
    let p = v.send(req).await;
    assert!(p.body.contains(r#"<html lang="en">"#) && p.body.contains("Sign in"));
}

#[tokio::test]
async fn a_refused_reload_shows_why_and_the_old_config_keeps_serving() {
    let weir = Weir::start(&config()).await;
    let mut v = Visitor::new(weir.admin_url(""));
    assert_eq!(v.login(ADMIN_KEY).await.status, 303);
    let page = v.get("/manager/config").await;
    assert!(page.body.contains("Running config") && !page.body.contains(ADMIN_KEY));
    weir.write_raw("server: {listen: 127.0.0.1:0}\nchannels: [{name: x, type: nope}]\n");
    let reload = [
        ("_csrf", csrf(&page.body)),
        ("_method", "POST".into()),
        ("_path", "/admin/reload".into()),
        ("_back", "/manager/config".into()),
        ("_form", "reload".into()),
    ];
    let form: Vec<(&str, &str)> = reload.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(v.post("/manager/do", &form).await.status, 303);
    let shown = v.get("/manager/config").await;
    let note = shown
        .body
        .split(r#"data-form="reload">"#)
        .nth(1)
        .expect("the outcome sits next to the reload button");
    assert!(
        note.starts_with("config rejected"),
        "{}",
        &note[..200.min(note.len())]
    );
    assert!(note.contains("nope"), "{}", &note[..300.min(note.len())]);
    let r = reqwest::Client::new()
        .post(weir.url("/v1/chat/completions"))
        .json(&chat("m", false))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "the old config, with its key check, keeps serving"
    );
}

#[tokio::test]
async fn keys_are_imported_from_a_pasted_csv() {
    let weir = Weir::start(&config()).await;
    let mut v = Visitor::new(weir.admin_url(""));
    assert_eq!(v.login(ADMIN_KEY).await.status, 303);
    let page = v.get("/manager/keys").await;
    let token = csrf(&page.body);
    let form = [
        ("_csrf", token.as_str()),
        ("_method", "POST"),
        ("_path", "/admin/keys/import"),
        ("_back", "/manager/keys"),
        ("_form", "import-keys"),
        (
            "_body:raw",
            "name,email\r\nAnn,ann@example.com\r\nBad,nope\r\n",
        ),
        ("group:q", "default"),
        ("monthly_budget:q", "3"),
    ];
    assert_eq!(v.post("/manager/do", &form).await.status, 303);
    let shown = v.get("/manager/keys").await;
    let results = shown
        .body
        .split(r#"id="import-results""#)
        .nth(1)
        .expect("the results table");
    assert!(results.contains("ann@example.com") && results.contains("<code>sk-"));
    assert!(results.contains("is not an address"));
    let keys = weir.admin_get("/admin/keys").await;
    assert_eq!(keys["keys"][0]["monthly_budget"], 3.0);
}

#[tokio::test]
async fn a_feishu_bot_is_added_edited_and_removed_on_the_bots_page() {
    let body = format!(
        "  secret_key: 'a-test-secret-key-of-some-length'\n{}",
        config()
    );
    let weir = Weir::start(&body).await;
    let (_, key) = weir.create_key(json!({"name": "bot"})).await;
    let mut v = Visitor::new(weir.admin_url(""));
    assert_eq!(v.login(ADMIN_KEY).await.status, 303);
    let page = v.get("/manager/webhooks").await;
    assert!(page.body.contains("No bots yet."), "{}", page.body);
    let token = csrf(&page.body);
    let form = [
        ("_csrf", token.as_str()),
        ("_method", "POST"),
        ("_path", "/admin/webhooks"),
        ("_back", "/manager/webhooks"),
        ("_form", "create-webhook"),
        ("provider", "feishu"),
        ("name", "team"),
        ("config.appId", "cli_manager"),
        ("config.appSecret", "the-app-secret-value"),
        ("config.apiKey", key.as_str()),
        ("config.modelId", "m"),
        ("config.verificationToken", "the-verification-token"),
        ("config.encryptKey", ""),
        ("config.gateway", "default"),
        ("config.api_base", ""),
    ];
    assert_eq!(v.post("/manager/do", &form).await.status, 303);
    let shown = v.get("/manager/webhooks").await;
    assert!(
        shown.body.contains("/bot/feishu/team/webhook/event"),
        "{}",
        shown.body
    );
    assert!(shown.body.contains("cli_manager"));
    assert!(!shown.body.contains("the-app-secret-value") && !shown.body.contains(&key));
    let stored = weir.admin_get("/admin/webhooks/team").await;
    assert_eq!(stored["config"]["api_base"], "https://open.feishu.cn");

    let token = csrf(&shown.body);
    let edit = [
        ("_csrf", token.as_str()),
        ("_method", "PATCH"),
        ("_path", "/admin/webhooks/team"),
        ("_back", "/manager/webhooks"),
        ("_form", "edit-team"),
        ("config.modelId", "m2"),
        ("config.apiKey", ""),
    ];
    assert_eq!(v.post("/manager/do", &edit).await.status, 303);
    let page = v.get("/manager/webhooks").await;
    // m2 is no model any channel serves: the refusal shows next to the form.
    assert!(
        page.body.contains(r#"data-form="edit-team""#),
        "{}",
        page.body
    );
    assert_eq!(
        weir.admin_get("/admin/webhooks/team").await["config"]["modelId"],
        "m"
    );

    let token = csrf(&page.body);
    let delete = [
        ("_csrf", token.as_str()),
        ("_method", "DELETE"),
        ("_path", "/admin/webhooks/team"),
        ("_back", "/manager/webhooks"),
        ("_form", "delete-team"),
    ];
    assert_eq!(v.post("/manager/do", &delete).await.status, 303);
    assert!(v
        .get("/manager/webhooks")
        .await
        .body
        .contains("No bots yet."));
}

#[tokio::test]
async fn failed_sign_ins_are_slowed_per_address() {
    let weir = Weir::start(&config()).await;
    let (_, user_key) = weir.create_key(json!({"name": "ann"})).await;
    let mut v = Visitor::new(weir.admin_url(""));
    for _ in 0..5 {
        assert_eq!(v.login("sk-not-a-key").await.status, 401);
    }
    let p = v.login(&user_key).await;
    assert_eq!(p.status, 429, "{}", p.body);
    assert!(p
        .body
        .contains("Too many failed sign-ins from your address"));
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let p = v.login(&user_key).await;
    assert_eq!((p.status, p.location.as_deref()), (303, Some("/manager/")));
}
