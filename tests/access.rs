#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! Access control (G1–G5, K1, K4, K5) at each rule's boundary, against a real weir
//! and a real SQLite file.

mod common;

use common::error_code as code;
use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::time::Duration;

/// Model m priced, one channel on `up` with m, n and o; each test adds its gateways.
fn config(up: &Upstream) -> Config {
    Config::new()
        .model("name: m, price_in: 1000000, price_out: 1000000")
        .channel_at("up", "openai", &up.url(), "models: [m, n, o]")
}

/// The usual gateway of these tests: `/v1`, keys from the store.
const DB_GATEWAY: &str = "name: default, path: /v1, auth: {method: database}";

async fn call(weir: &Weir, path: &str, key: Option<&str>, body: &Value) -> (u16, String) {
    let mut req = reqwest::Client::new().post(weir.url(path)).json(body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The status of a chat request to `/v1` with `key`.
async fn status(weir: &Weir, key: &str, model: &str) -> u16 {
    call(weir, "/v1/chat/completions", Some(key), &chat(model, false))
        .await
        .0
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn database_keys_live_and_die_at_once() {
    let up = Upstream::start("db").await;
    let weir = Weir::start(&config(&up).gateway(DB_GATEWAY).build()).await;
    let (id, key) = weir
        .create_key(json!({"name": "alice", "models": ["*"]}))
        .await;
    let url = "/v1/chat/completions";
    assert_eq!(call(&weir, url, Some(&key), &chat("m", false)).await.0, 200);
    let (s, b) = call(&weir, url, None, &chat("m", false)).await;
    assert_eq!((s, code(&b).as_str()), (401, "invalid_api_key"), "{b}");
    let (s, _) = call(&weir, url, Some("sk-not-a-real-key"), &chat("m", false)).await;
    assert_eq!(s, 401);

    // Reset: the old key is dead on the very next request, the new one works.
    let (s, v) = weir
        .admin("POST", &format!("/admin/keys/{id}/reset"), None)
        .await;
    assert_eq!(s, 200);
    let fresh = v["key"].as_str().unwrap().to_string();
    assert_eq!(call(&weir, url, Some(&key), &chat("m", false)).await.0, 401);
    assert_eq!(
        call(&weir, url, Some(&fresh), &chat("m", false)).await.0,
        200
    );

    // Disabled, then expired.
    let (s, _) = weir
        .admin(
            "PATCH",
            &format!("/admin/keys/{id}"),
            Some(json!({"active": false})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, b) = call(&weir, url, Some(&fresh), &chat("m", false)).await;
    assert_eq!(s, 401);
    assert!(b.contains("disabled"), "{b}");
    weir.admin(
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(json!({"active": true, "expires_at": "2020-01-01"})),
    )
    .await;
    let (s, b) = call(&weir, url, Some(&fresh), &chat("m", false)).await;
    assert_eq!(s, 401);
    assert!(b.contains("expired"), "{b}");
    weir.admin(
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(json!({"expires_at": null})),
    )
    .await;
    assert_eq!(
        call(&weir, url, Some(&fresh), &chat("m", false)).await.0,
        200
    );
    // Deleted.
    assert_eq!(
        weir.admin("DELETE", &format!("/admin/keys/{id}"), None)
            .await
            .0,
        200
    );
    assert_eq!(
        call(&weir, url, Some(&fresh), &chat("m", false)).await.0,
        401
    );
    // Keys stay out of the log; only their hashes are stored.
    assert!(!weir.log().contains(&fresh) && !weir.log().contains(&key));
    // Only hashes are stored: no column of any key row holds the secret.
    let conn = rusqlite::Connection::open(weir.db_path()).unwrap();
    let mut stmt = conn
        .prepare("SELECT name, key_hash, prefix, role, group_name FROM keys")
        .unwrap();
    let cells: Vec<String> = stmt
        .query_map([], |r| {
            Ok([
                r.get::<_, String>(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
            ]
            .join(" "))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for secret in [&key, &fresh] {
        assert!(cells.iter().all(|c| !c.contains(&secret[8..])), "{cells:?}");
    }
    assert_eq!(up.calls(), 3);
}

#[tokio::test]
async fn every_key_position_works_and_body_and_query_keys_stay_home() {
    let up = Upstream::start("pos").await;
    let cfg = config(&up)
        .gateway("name: h, path: /h/v1, auth: {method: database, key_from: 'header:x-api-key'}")
        .gateway("name: b, path: /b/v1, auth: {method: database, key_from: 'body:user_id'}")
        .gateway("name: a, path: /a/v1, auth: {method: database, key_from: 'arg:token'}");
    let weir = Weir::start(&cfg.build()).await;
    let (_, key) = weir.create_key(json!({"name": "k", "models": ["*"]})).await;
    let client = reqwest::Client::new();

    let r = client
        .post(weir.url("/h/v1/chat/completions"))
        .header("x-api-key", &key)
        .json(&chat("m", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .post(weir.url("/h/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&chat("m", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the key is expected in x-api-key only");

    let mut body = chat("m", false);
    body["user_id"] = json!(key);
    let (s, b) = call(&weir, "/b/v1/chat/completions", None, &body).await;
    assert_eq!(s, 200, "{b}");
    assert!(
        up.seen().last().unwrap().body.get("user_id").is_none(),
        "the key went upstream"
    );
    let (s, _) = call(&weir, "/b/v1/chat/completions", None, &chat("m", false)).await;
    assert_eq!(s, 401);

    let url = format!(
        "{}?token={}&keep=1",
        weir.url("/a/v1/chat/completions"),
        key
    );
    let r = client
        .post(url)
        .json(&chat("m", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.seen().last().unwrap().query.as_deref(), Some("keep=1"));
    for s in up.seen() {
        assert!(!s.body.to_string().contains(&key) && !s.query.unwrap_or_default().contains(&key));
        assert!(s.authorization.is_none());
    }
}

#[tokio::test]
async fn regex_gateways_check_the_whole_key() {
    let up = Upstream::start("re").await;
    let cfg = config(&up).gateway(
        "name: re, path: /v1, auth: {method: regex, key_from: 'body:user_id', regex: '^u-[0-9]+$'}",
    );
    let weir = Weir::start(&cfg.build()).await;
    for (user, status) in [("u-42", 200), ("u-42x", 401), ("x-u-42", 401), ("u-", 401)] {
        let mut body = chat("m", false);
        body["user_id"] = json!(user);
        assert_eq!(
            call(&weir, "/v1/chat/completions", None, &body).await.0,
            status,
            "{user}"
        );
    }
}

fn hs(alg: Algorithm, claims: Value, secret: &str) -> String {
    encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn jwt_callers_get_their_groups_grants() {
    let up = Upstream::start("jwtgroup").await;
    let secret = "group-signing-secret-0123456789ab";
    let cfg = config(&up).gateway(&format!(
        "name: default, path: /v1, auth: {{method: jwt, jwt: {{secret: '{secret}', algorithms: [HS256], group_claim: team}}}}"
    ));
    let weir = Weir::start(&cfg.build()).await;
    let (s, _) = weir
        .admin(
            "POST",
            "/admin/groups",
            Some(json!({"name": "team-a", "models": ["n"]})),
        )
        .await;
    assert_eq!(s, 201);
    let token = |team: &str| {
        hs(
            Algorithm::HS256,
            json!({"sub": "bob", "team": team, "exp": now() + 300}),
            secret,
        )
    };
    let a = token("team-a");
    assert_eq!(status(&weir, &a, "n").await, 200);
    let (s, b) = call(&weir, "/v1/chat/completions", Some(&a), &chat("m", false)).await;
    assert_eq!((s, code(&b).as_str()), (403, "model_not_allowed"));
    // A group the store does not know limits nothing.
    assert_eq!(status(&weir, &token("team-z"), "m").await, 200);
    // A grant change counts on the next request.
    let (s, _) = weir
        .admin("PUT", "/admin/groups/team-a/models", Some(json!(["m"])))
        .await;
    assert_eq!(s, 200);
    assert_eq!(status(&weir, &a, "m").await, 200);
    assert_eq!(status(&weir, &a, "n").await, 403);
}

#[tokio::test]
async fn jwt_gateways_refuse_expired_tampered_wrong_algorithm_and_none() {
    let up = Upstream::start("jwt").await;
    let secret = "team-a-signing-secret-0123456789";
    let rsa_pub = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/jwt-rs256-test-public.pem"
    );
    let ec = rcgen::KeyPair::generate().unwrap();
    let ec_pub = ec.public_key_pem().replace('\n', "\\n");
    let cfg = config(&up)
        .gateway(&format!("name: hs, path: /hs/v1, auth: {{method: jwt, key_from: 'arg:token', jwt: {{secret: '{secret}', algorithms: [HS256]}}}}, rate_limits: ['secret:2/minute']"))
        .gateway(&format!("name: rs, path: /rs/v1, auth: {{method: jwt, jwt: {{public_key: '{rsa_pub}', algorithms: [RS256]}}}}"))
        .gateway(&format!("name: es, path: /es/v1, auth: {{method: jwt, jwt: {{public_key: \"{ec_pub}\", algorithms: [ES256]}}}}"));
    let weir = Weir::start(&cfg.build()).await;
    let client = reqwest::Client::new();
    let hs_call = |token: String| {
        let client = client.clone();
        let url = format!("{}?token={token}", weir.url("/hs/v1/chat/completions"));
        async move {
            client
                .post(url)
                .json(&chat("m", false))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let exp = now() + 300;
    assert_eq!(
        hs_call(hs(
            Algorithm::HS256,
            json!({"sub": "alice", "exp": exp}),
            secret
        ))
        .await,
        200
    );
    assert_eq!(
        hs_call(hs(
            Algorithm::HS256,
            json!({"sub": "alice", "exp": now() - 5}),
            secret
        ))
        .await,
        401
    );
    assert_eq!(
        hs_call(hs(
            Algorithm::HS256,
            json!({"sub": "alice", "exp": exp, "nbf": exp}),
            secret
        ))
        .await,
        401
    );
    assert_eq!(
        hs_call(hs(
            Algorithm::HS256,
            json!({"sub": "alice", "exp": exp}),
            "some-other-secret-0123456789abcd"
        ))
        .await,
        401
    );
    assert_eq!(
        hs_call(hs(
            Algorithm::HS512,
            json!({"sub": "alice", "exp": exp}),
            secret
        ))
        .await,
        401
    );
    // Tampered: alice's signature on bob's claims.
    let good = hs(
        Algorithm::HS256,
        json!({"sub": "alice", "exp": exp}),
        secret,
    );
    let bob = hs(
        Algorithm::HS256,
        json!({"sub": "bob", "exp": exp}),
        "x-------------------------------",
    );
    let parts: Vec<&str> = good.split('.').collect();
    let bob_payload = bob.split('.').nth(1).unwrap();
    assert_eq!(
        hs_call(format!("{}.{}.{}", parts[0], bob_payload, parts[2])).await,
        401
    );
    // alg: none.
    let none_header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
    assert_eq!(hs_call(format!("{none_header}.{}.", parts[1])).await, 401);
    // The identity claim is the caller for `secret:` limits: alice has used 1 of 2.
    assert_eq!(hs_call(good.clone()).await, 200);
    assert_eq!(hs_call(good.clone()).await, 429);
    assert_eq!(
        hs_call(hs(
            Algorithm::HS256,
            json!({"sub": "carol", "exp": exp}),
            secret
        ))
        .await,
        200
    );

    // RS256 with a public key; an HS256 token signed with that public key is refused.
    let rsa_priv = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/jwt-rs256-test-private.pem"
    ))
    .unwrap();
    let rs = encode(
        &Header::new(Algorithm::RS256),
        &json!({"sub": "dave", "exp": exp}),
        &EncodingKey::from_rsa_pem(&rsa_priv).unwrap(),
    )
    .unwrap();
    assert_eq!(
        call(
            &weir,
            "/rs/v1/chat/completions",
            Some(&rs),
            &chat("m", false)
        )
        .await
        .0,
        200
    );
    let pub_pem = std::fs::read_to_string(rsa_pub).unwrap();
    let confused = hs(
        Algorithm::HS256,
        json!({"sub": "eve", "exp": exp}),
        &pub_pem,
    );
    assert_eq!(
        call(
            &weir,
            "/rs/v1/chat/completions",
            Some(&confused),
            &chat("m", false)
        )
        .await
        .0,
        401
    );
    // ES256.
    let es = encode(
        &Header::new(Algorithm::ES256),
        &json!({"sub": "fay", "exp": exp}),
        &EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(
        call(
            &weir,
            "/es/v1/chat/completions",
            Some(&es),
            &chat("m", false)
        )
        .await
        .0,
        200
    );
    assert_eq!(
        call(
            &weir,
            "/es/v1/chat/completions",
            Some(&rs),
            &chat("m", false)
        )
        .await
        .0,
        401
    );
}

#[tokio::test]
async fn rate_limits_refuse_the_n_plus_first_with_headers() {
    let up = Upstream::start("rl").await;
    let cfg = config(&up).gateway(
        "name: default, path: /v1, auth: {method: database}, rate_limits: ['secret:3/minute', 'ingress:5/hour']",
    );
    let weir = Weir::start(&cfg.build()).await;
    let (_, a) = weir.create_key(json!({"name": "a", "models": ["*"]})).await;
    let (_, b) = weir.create_key(json!({"name": "b", "models": ["*"]})).await;
    let client = reqwest::Client::new();
    // Refused requests (unknown model, broken JSON) count against no limit.
    assert_eq!(
        call(
            &weir,
            "/v1/chat/completions",
            Some(&a),
            &chat("nope", false)
        )
        .await
        .0,
        404
    );
    let r = client
        .post(weir.url("/v1/chat/completions"))
        .bearer_auth(&a)
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    for i in 0..3 {
        let r = client
            .post(weir.url("/v1/chat/completions"))
            .bearer_auth(&a)
            .json(&chat("m", false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(
            r.headers()["x-ratelimit-remaining-requests"],
            (2 - i).to_string().as_str()
        );
    }
    let r = client
        .post(weir.url("/v1/chat/completions"))
        .bearer_auth(&a)
        .json(&chat("m", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // The trailing minute holds three: wait until the first of them leaves it,
    // never longer than the window.
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(r.headers()["x-ratelimit-limit-requests"], "3");
    assert_eq!(r.headers()["x-ratelimit-remaining-requests"], "0");
    assert_eq!(code(&r.text().await.unwrap()), "rate_limit_exceeded");
    // The gateway-wide hour: 3 used by a (the refused one did not count), 2 left for b.
    assert_eq!(status(&weir, &b, "m").await, 200);
    assert_eq!(status(&weir, &b, "m").await, 200);
    let (s, body) = call(&weir, "/v1/chat/completions", Some(&b), &chat("m", false)).await;
    assert_eq!(s, 429);
    assert!(body.contains("ingress:5/hour"), "{body}");
    assert_eq!(up.calls(), 5);
}

#[tokio::test]
async fn hour_and_day_windows_survive_a_restart() {
    let up = Upstream::start("persist").await;
    let mut weir = Weir::start_with_server(
        &config(&up)
            .gateway(
                "name: default, path: /v1, auth: {method: database}, rate_limits: ['secret:2/day']",
            )
            .build(),
        "  grace_period: 1s",
    )
    .await;
    let (_, key) = weir.create_key(json!({"name": "k", "models": ["*"]})).await;
    assert_eq!(status(&weir, &key, "m").await, 200);
    assert_eq!(status(&weir, &key, "m").await, 200);
    assert!(weir.stop_gracefully().success());
    weir.restart().await;
    assert_eq!(status(&weir, &key, "m").await, 429);
}

#[tokio::test]
async fn allow_beats_deny_and_lists_see_ip_secret_and_time() {
    let up = Upstream::start("lists").await;
    // An hour that is not now, so the time rule cannot match.
    let hour = (now() / 3600 + 12) % 24;
    let cfg = config(&up)
        .gateway("name: both, path: /both/v1, auth: {method: database}, allow: ['ip:127.0.0.0/8'], deny: ['secret:.*']")
        .gateway("name: deny, path: /deny/v1, auth: {method: database}, deny: ['ip:127.0.0.1']")
        .gateway("name: other, path: /other/v1, auth: {method: database}, allow: ['ip:10.0.0.0/8']")
        .gateway(&format!("name: never, path: /never/v1, allow: ['time:{hour:02}:00-{hour:02}:59']"))
        .gateway("name: denyk, path: /denyk/v1, auth: {method: database}, deny: ['secret:^DENIED$']");
    let weir = Weir::start(&cfg.build()).await;
    let (_, key) = weir.create_key(json!({"name": "k", "models": ["*"]})).await;
    // The `secret:` deny rule names this key's own first characters.
    let text = std::fs::read_to_string(&weir.config_path).unwrap();
    let text = text.replace("^DENIED$", &format!("^{}", &key[..12]));
    write_atomically(&weir.config_path, &text);
    assert_eq!(weir.admin("POST", "/admin/reload", None).await.0, 200);
    assert_eq!(
        call(
            &weir,
            "/both/v1/chat/completions",
            Some(&key),
            &chat("m", false)
        )
        .await
        .0,
        200
    );
    let (s, b) = call(
        &weir,
        "/deny/v1/chat/completions",
        Some(&key),
        &chat("m", false),
    )
    .await;
    assert_eq!((s, code(&b).as_str()), (403, "access_denied"));
    assert_eq!(
        call(
            &weir,
            "/other/v1/chat/completions",
            Some(&key),
            &chat("m", false)
        )
        .await
        .0,
        403
    );
    assert_eq!(
        call(&weir, "/never/v1/chat/completions", None, &chat("m", false))
            .await
            .0,
        403
    );
    let (s, b) = call(
        &weir,
        "/denyk/v1/chat/completions",
        Some(&key),
        &chat("m", false),
    )
    .await;
    assert_eq!((s, code(&b).as_str()), (403, "access_denied"));
    let (_, other) = weir
        .create_key(json!({"name": "other", "models": ["*"]}))
        .await;
    let (s, _) = call(
        &weir,
        "/denyk/v1/chat/completions",
        Some(&other),
        &chat("m", false),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(up.calls(), 2);
}

#[tokio::test]
async fn grants_are_the_union_of_key_and_group_and_models_list_them() {
    let up = Upstream::start("grants").await;
    let weir = Weir::start(&config(&up).gateway(DB_GATEWAY).build()).await;
    let (s, _) = weir
        .admin(
            "POST",
            "/admin/groups",
            Some(json!({"name": "team", "models": ["n"]})),
        )
        .await;
    assert_eq!(s, 201);
    let (_, key) = weir
        .create_key(json!({"name": "k", "group": "team", "models": ["m"]}))
        .await;
    let (_, none) = weir.create_key(json!({"name": "nothing"})).await;
    assert_eq!(status(&weir, &key, "m").await, 200);
    assert_eq!(status(&weir, &key, "n").await, 200);
    let (s, b) = call(&weir, "/v1/chat/completions", Some(&key), &chat("o", false)).await;
    assert_eq!((s, code(&b).as_str()), (403, "model_not_allowed"));
    assert_eq!(
        call(
            &weir,
            "/v1/chat/completions",
            Some(&none),
            &chat("m", false)
        )
        .await
        .0,
        403
    );
    let models: Value = reqwest::Client::new()
        .get(weir.url("/v1/models"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["m", "n"]);
    // A new grant to the group counts on the next request.
    let (s, _) = weir
        .admin("PUT", "/admin/groups/team/models", Some(json!(["n", "o"])))
        .await;
    assert_eq!(s, 200);
    assert_eq!(status(&weir, &key, "o").await, 200);
    assert_eq!(up.calls(), 3);
}

#[tokio::test]
async fn budgets_balances_and_quotas_stop_before_the_upstream() {
    let up = Upstream::start("money").await;
    // Model m costs $1 per token either way: one request (~10 tokens) is ~$10.
    let cfg = config(&up)
        .gateway(DB_GATEWAY)
        .gateway("name: q, path: /q/v1, auth: {method: database}, token_quota: 15");
    let weir = Weir::start(&cfg.build()).await;
    // Each request is billed as it ends (just after its last byte): wait for that
    // before the next one, as a client that is not racing its own requests would.
    let mut sent = 0.0;
    let mut ask = |path: &'static str, key: String, model: &'static str| {
        sent += 1.0;
        let want = sent;
        let weir = &weir;
        async move {
            let r = call(weir, path, Some(&key), &chat(model, false)).await;
            weir.wait_metric("weir_requests_total", &[], want).await;
            r
        }
    };
    let (_, budgeted) = weir
        .create_key(json!({"name": "b", "models": ["*"], "monthly_budget": 5}))
        .await;
    assert_eq!(
        ask("/v1/chat/completions", budgeted.clone(), "m").await.0,
        200
    );
    let (s, b) = ask("/v1/chat/completions", budgeted.clone(), "m").await;
    assert_eq!((s, code(&b).as_str()), (429, "budget_exceeded"), "{b}");

    let (id, prepaid) = weir
        .create_key(json!({"name": "p", "models": ["*"], "balance": 1}))
        .await;
    assert_eq!(
        ask("/v1/chat/completions", prepaid.clone(), "m").await.0,
        200
    );
    let (s, b) = ask("/v1/chat/completions", prepaid.clone(), "m").await;
    assert_eq!((s, code(&b).as_str()), (402, "insufficient_balance"), "{b}");
    // A top-up lets it through again.
    let (s, v) = weir
        .admin(
            "POST",
            &format!("/admin/keys/{id}/topup"),
            Some(json!({"amount": 100})),
        )
        .await;
    assert_eq!(s, 200);
    assert!(v["balance"].as_f64().unwrap() > 80.0, "{v}");
    assert_eq!(
        ask("/v1/chat/completions", prepaid.clone(), "m").await.0,
        200
    );

    // Gateway token quota: 15 tokens; each answer here is 4 + 5 + body/100 = 9 tokens.
    let (_, k) = weir.create_key(json!({"name": "q", "models": ["*"]})).await;
    assert_eq!(ask("/q/v1/chat/completions", k.clone(), "n").await.0, 200);
    assert_eq!(ask("/q/v1/chat/completions", k.clone(), "n").await.0, 200);
    // 18 of 15 used: the overshoot is bounded by what was in flight.
    let (s, b) = ask("/q/v1/chat/completions", k.clone(), "n").await;
    assert_eq!((s, code(&b).as_str()), (429, "token_quota_exceeded"), "{b}");
    assert_eq!(
        up.calls(),
        5,
        "refused requests must not reach the upstream"
    );
}

#[tokio::test]
async fn catch_all_requests_are_priced_by_the_model_asked_for_and_aborts_are_billed() {
    let up = Upstream::start("any").await;
    up.set_chunk_delay(Duration::from_millis(300));
    let cfg = Config::new()
        .channel_at("any", "openai", &up.url(), "models: [default]")
        .gateway(DB_GATEWAY);
    let weir = Weir::start(&cfg.build()).await;
    let (s, _) = weir
        .admin(
            "POST",
            "/admin/models",
            Some(json!({"name": "gpt-4o", "price_in": 1000000, "price_out": 1000000})),
        )
        .await;
    assert_eq!(s, 200);
    let (id, key) = weir
        .create_key(json!({"name": "k", "models": ["*"], "balance": 1000}))
        .await;
    assert_eq!(
        call(
            &weir,
            "/v1/chat/completions",
            Some(&key),
            &chat("gpt-4o", false)
        )
        .await
        .0,
        200
    );
    // A stream the client walks away from after its first chunk is still billed.
    let mut r = reqwest::Client::new()
        .post(weir.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&chat("gpt-4o", true))
        .send()
        .await
        .unwrap();
    assert!(r.chunk().await.unwrap().is_some());
    drop(r);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = weir
            .admin(
                "GET",
                &format!("/admin/usage?key_id={id}&group_by=model"),
                None,
            )
            .await;
        let row = &v["usage"][0];
        if row["calls"] == 2 {
            assert_eq!(row["group"], "gpt-4o", "{v}");
            // 9 tokens of the first answer at $1 each, and the abandoned stream's share.
            assert!(row["cost"].as_f64().unwrap() > 9.0, "{v}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn user_keys_see_only_their_own_data() {
    let up = Upstream::start("me").await;
    let weir = Weir::start(&config(&up).gateway(DB_GATEWAY).build()).await;
    let (mine, key) = weir
        .create_key(json!({"name": "me", "models": ["*"]}))
        .await;
    let (other, other_key) = weir
        .create_key(json!({"name": "other", "models": ["*"]}))
        .await;
    assert_eq!(status(&weir, &key, "m").await, 200);
    assert_eq!(
        call(
            &weir,
            "/v1/chat/completions",
            Some(&other_key),
            &chat("n", false)
        )
        .await
        .0,
        200
    );
    let (s, v) = weir.admin_as(&key, "GET", "/admin/me", None).await;
    assert_eq!((s, v["id"].as_i64()), (200, Some(mine)));
    assert!(v.get("key").is_none() && !v.to_string().contains(&key));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (s, v) = weir.admin_as(&key, "GET", "/admin/me/usage", None).await;
        assert_eq!(s, 200);
        if v["recent_calls"].as_array().unwrap().len() == 1 {
            assert_eq!(v["recent_calls"][0]["model"], "m");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for path in [
        format!("/admin/keys/{other}"),
        format!("/admin/usage?key_id={other}"),
        "/admin/usage".to_string(),
        "/admin/keys".to_string(),
    ] {
        let (s, v) = weir.admin_as(&key, "GET", &path, None).await;
        assert_eq!(s, 403, "{path}: {v}");
    }
    assert_eq!(
        weir.admin_as(&key, "GET", &format!("/admin/usage?key_id={mine}"), None)
            .await
            .0,
        200
    );
    assert_eq!(
        weir.admin_as(&key, "POST", "/admin/keys", Some(json!({"name": "x"})))
            .await
            .0,
        403
    );
    // An admin-role key is an admin.
    let (_, admin) = weir
        .create_key(json!({"name": "boss", "role": "admin"}))
        .await;
    assert_eq!(
        weir.admin_as(&admin, "GET", "/admin/keys", None).await.0,
        200
    );
}

#[tokio::test]
async fn admin_api_refuses_bad_input_clearly() {
    let up = Upstream::start("bad").await;
    let weir = Weir::start(&config(&up).gateway(DB_GATEWAY).build()).await;
    for (method, path, body, status) in [
        ("POST", "/admin/keys", json!({"name": ""}), 400),
        (
            "POST",
            "/admin/keys",
            json!({"name": "x", "group": "nope"}),
            400,
        ),
        (
            "POST",
            "/admin/keys",
            json!({"name": "x", "monthly_budget": -1}),
            400,
        ),
        (
            "POST",
            "/admin/keys",
            json!({"name": "x", "role": "root"}),
            400,
        ),
        (
            "POST",
            "/admin/keys",
            json!({"name": "x", "expires_at": "soon"}),
            400,
        ),
        ("PATCH", "/admin/keys/999", json!({"name": "y"}), 404),
        ("POST", "/admin/keys/999/topup", json!({"amount": 5}), 404),
        ("POST", "/admin/keys/1/topup", json!({"amount": -5}), 400),
        ("POST", "/admin/groups", json!({"name": "default"}), 409),
        ("DELETE", "/admin/groups/default", json!(null), 400),
        (
            "POST",
            "/admin/models",
            json!({"name": "m", "price_in": -1}),
            400,
        ),
        ("DELETE", "/admin/models/none", json!(null), 404),
        ("GET", "/admin/usage?group_by=week", json!(null), 400),
    ] {
        let body = (!body.is_null()).then_some(body);
        let (s, v) = weir.admin(method, path, body).await;
        assert_eq!(s, status, "{method} {path}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
    }
    // Models and groups round-trip.
    let (s, _) = weir
        .admin(
            "POST",
            "/admin/models",
            Some(json!({"name": "m", "price_in": 2.5, "price_out": 10})),
        )
        .await;
    assert_eq!(s, 200);
    let (_, v) = weir.admin("GET", "/admin/models", None).await;
    let m = v["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "m")
        .unwrap()
        .clone();
    assert_eq!(
        (m["price_in"].as_f64(), m["source"].as_str()),
        (Some(2.5), Some("store"))
    );
}

#[tokio::test]
async fn usage_totals_match_the_upstream_exactly_after_a_streaming_burst() {
    let up = Upstream::start("burst").await;
    up.set_chunk_delay(Duration::from_millis(2));
    let mut weir = Weir::start_with_server(
        &config(&up).gateway(DB_GATEWAY).build(),
        "  grace_period: 1s",
    )
    .await;
    let (id, key) = weir.create_key(json!({"name": "k", "models": ["*"]})).await;
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let url = weir.url("/v1/chat/completions");
            let key = key.clone();
            tokio::spawn(async move {
                let mut body = chat(if i % 2 == 0 { "m" } else { "n" }, true);
                body["messages"][0]["content"] = json!("w".repeat(37 * i));
                let r = reqwest::Client::new()
                    .post(url)
                    .bearer_auth(key)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let status = r.status();
                let text = r.text().await.unwrap();
                assert_eq!(status, 200, "{text}");
                assert!(text.ends_with("data: [DONE]\n\n") && !text.contains("\"usage\""));
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let want_prompt = up
        .state
        .prompt_sent
        .load(std::sync::atomic::Ordering::SeqCst);
    let want_completion = up
        .state
        .completion_sent
        .load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(want_completion, 160);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = weir
            .admin(
                "GET",
                &format!("/admin/usage?key_id={id}&group_by=key"),
                None,
            )
            .await;
        let row = &v["usage"][0];
        if row["calls"] == 40 {
            assert_eq!(row["prompt_tokens"].as_u64(), Some(want_prompt), "{v}");
            assert_eq!(
                row["completion_tokens"].as_u64(),
                Some(want_completion),
                "{v}"
            );
            assert_eq!(row["estimated_calls"], 0);
            // Model m costs 1 per token, n nothing.
            assert!(row["cost"].as_f64().unwrap() > 0.0);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A graceful stop loses nothing: every row is in the file afterwards.
    for _ in 0..5 {
        assert_eq!(status(&weir, &key, "n").await, 200);
    }
    assert!(weir.stop_gracefully().success());
    let conn = rusqlite::Connection::open(weir.db_path()).unwrap();
    let rows: i64 = conn
        .query_row("SELECT COUNT(*) FROM usage", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 45);
    let spent: f64 = conn
        .query_row("SELECT SUM(cost) FROM spend WHERE key_id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(spent > 0.0);
}

#[tokio::test]
async fn the_keys_cli_works_beside_a_running_gateway() {
    let up = Upstream::start("cli").await;
    let weir = Weir::start(&config(&up).gateway(DB_GATEWAY).build()).await;
    let run = |args: &[&str]| {
        let mut all: Vec<&std::ffi::OsStr> = vec!["keys".as_ref()];
        all.extend(args.iter().map(|a| std::ffi::OsStr::new(*a)));
        weir.cli(&all)
    };
    let created = run(&[
        "create",
        "--name",
        "shell",
        "--models",
        "m,n",
        "--balance",
        "0",
    ]);
    let key = created["key"].as_str().unwrap().to_string();
    let id = created["id"].as_i64().unwrap().to_string();
    // The running gateway picks the new key up within its flush interval.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (s, b) = call(&weir, "/v1/chat/completions", Some(&key), &chat("m", false)).await;
        if s == 402 {
            break;
        }
        assert!(s == 401 && std::time::Instant::now() < deadline, "{s} {b}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let topped = run(&["topup", &id, "50"]);
    assert_eq!(topped["balance"], 50.0);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while call(&weir, "/v1/chat/completions", Some(&key), &chat("m", false))
        .await
        .0
        != 200
    {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed = run(&["list"]);
    assert_eq!(listed["keys"][0]["name"], "shell");
    assert!(!listed.to_string().contains(&key));
    let reset = run(&["reset", &id]);
    assert_ne!(reset["key"], created["key"]);
}

/// Behind a load balancer (`server.trusted_proxies`), `X-Forwarded-For` names the
/// client for `ip:` rules and the call log; from anyone else it is ignored.
#[tokio::test]
async fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
    let up = Upstream::start("xff").await;
    let cfg = config(&up)
        .gateway("name: default, path: /v1, auth: {method: database}, deny: ['ip:203.0.113.0/24']")
        .build();
    let ask = |weir: &Weir, key: &str, xff: &str| {
        let req = reqwest::Client::new()
            .post(weir.url("/v1/chat/completions"))
            .bearer_auth(key)
            .header("x-forwarded-for", xff)
            .json(&chat("m", false));
        async move { req.send().await.unwrap().status().as_u16() }
    };
    // Loopback is the load balancer here.
    let trusted = Weir::start_with_server(&cfg, "  trusted_proxies: ['127.0.0.0/8', '::1']").await;
    let (_, key) = trusted
        .create_key(json!({"name": "k", "models": ["*"]}))
        .await;
    assert_eq!(ask(&trusted, &key, "203.0.113.9").await, 403);
    assert_eq!(ask(&trusted, &key, "198.51.100.4").await, 200);
    // A client cannot hide behind an address it prepends itself.
    assert_eq!(ask(&trusted, &key, "198.51.100.4, 203.0.113.9").await, 403);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let v = trusted.admin_get("/admin/logs?status=200").await;
        if let Some(row) = v["data"].as_array().and_then(|d| d.first()) {
            assert_eq!(row["client_ip"], "198.51.100.4");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Without trusted proxies the header is the client's own claim.
    let plain = Weir::start(&cfg).await;
    let (_, key) = plain
        .create_key(json!({"name": "k", "models": ["*"]}))
        .await;
    assert_eq!(ask(&plain, &key, "203.0.113.9").await, 200);
    // A bad entry is named.
    plain.write_config(&cfg, "  trusted_proxies: ['10.0.0.0/33']");
    let (s, v) = plain.admin("POST", "/admin/reload", None).await;
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("server.trusted_proxies[0]"), "{v}");
}
