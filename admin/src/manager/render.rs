//! Drawing pages: the templates (compiled into the binary), the functions they
//! call (`t`, `chart`, `short`), and the shaping of API answers into chart series.

use super::chart;
use super::i18n::{self, Lang};
use super::pages::Page;
use super::session::Flash;
use super::Out;
use minijinja::value::Serde;
use minijinja::{context, Environment, State, Value as Tv};
use serde_json::{json, Value};

/// Every template, by name.
const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("macros.html", include_str!("templates/macros.html")),
    ("login.html", include_str!("templates/login.html")),
    ("error.html", include_str!("templates/error.html")),
    ("dashboard.html", include_str!("templates/dashboard.html")),
    ("keys.html", include_str!("templates/keys.html")),
    ("key.html", include_str!("templates/key.html")),
    ("groups.html", include_str!("templates/groups.html")),
    ("models.html", include_str!("templates/models.html")),
    ("channels.html", include_str!("templates/channels.html")),
    ("channel.html", include_str!("templates/channel.html")),
    ("gateways.html", include_str!("templates/gateways.html")),
    ("webhooks.html", include_str!("templates/webhooks.html")),
    ("logs.html", include_str!("templates/logs.html")),
    ("log.html", include_str!("templates/log.html")),
    ("calls.html", include_str!("templates/calls.html")),
    ("config.html", include_str!("templates/config.html")),
    ("me.html", include_str!("templates/me.html")),
    ("call.html", include_str!("templates/call.html")),
];

const CSS: &str = include_str!("assets/app.css");
const JS: &str = include_str!("assets/app.js");

/// What every signed-in page knows besides its data.
pub struct PageContext<'a> {
    pub lang: Lang,
    pub csrf: &'a str,
    pub admin: bool,
    pub public: bool,
    pub bootstrap: bool,
    pub path: &'a str,
    pub query: &'a str,
    pub flash: Option<&'a Flash>,
    pub base_url: &'a str,
}

pub struct Views {
    env: Environment<'static>,
}

fn lang_of(state: &State) -> Lang {
    state
        .lookup("lang")
        .and_then(|v| v.as_str().and_then(Lang::parse))
        .unwrap_or(Lang::En)
}

/// `t(text)` in a template: the English text in the page's language.
fn t(state: &State, text: &str) -> String {
    i18n::t(lang_of(state), text).to_string()
}

/// `chart(title, series, field, unit)`: an SVG bar chart of one field of a series.
fn chart_fn(title: &str, series: Tv, field: &str, unit: Option<&str>) -> Tv {
    let points: Vec<(String, f64)> = series
        .try_iter()
        .map(|it| {
            it.map(|row| {
                let label = row
                    .get_attr("label")
                    .ok()
                    .map(|v| v.to_string())
                    .unwrap_or_default();
                let value = row
                    .get_attr(field)
                    .ok()
                    .and_then(|v| f64::try_from(v).ok())
                    .unwrap_or(0.0);
                (label, value)
            })
            .collect()
        })
        .unwrap_or_default();
    Tv::from_safe_string(chart::bars(title, &points, unit.unwrap_or("")))
}

/// `mark_shown()`: the flash was drawn next to its form.
fn mark_shown(state: &mut State) -> String {
    state.set_temp("flash_shown", Tv::from(true));
    String::new()
}

/// `flash_shown()`: whether a form on the page drew the flash (else the layout
/// shows it on top, so no outcome goes unseen).
fn flash_shown(state: &State) -> bool {
    state.get_temp("flash_shown").is_some_and(|v| v.is_true())
}

fn short_fn(v: Tv) -> String {
    f64::try_from(v).map(chart::short).unwrap_or_default()
}

impl Views {
    pub fn new() -> Views {
        let mut env = Environment::new();
        // API answers differ (a failed read is `{"error"}`): a missing field reads
        // as empty rather than failing the whole page.
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
        for (name, source) in TEMPLATES {
            // The templates are ours and tested; a broken one is reported when a
            // page using it is drawn.
            if let Err(e) = env.add_template(name, source) {
                tracing_free_log(&format!("manager template {name}: {e}"));
            }
        }
        env.add_function("t", t);
        env.add_function("chart", chart_fn);
        env.add_function("mark_shown", mark_shown);
        env.add_function("flash_shown", flash_shown);
        env.add_filter("short", short_fn);
        Views { env }
    }

    fn render(&self, name: &str, ctx: Tv) -> Result<String, minijinja::Error> {
        self.env.get_template(name)?.render(ctx)
    }

    fn common(ctx: &PageContext<'_>) -> Tv {
        context! {
            lang => ctx.lang.code(),
            html_lang => ctx.lang.tag(),
            csrf => ctx.csrf,
            admin => ctx.admin,
            public => ctx.public,
            bootstrap => ctx.bootstrap,
            path => ctx.path,
            query => ctx.query,
            page_back => back_of(ctx.path, ctx.query),
            flash => Tv::from(Serde(ctx.flash)),
            base_url => ctx.base_url,
        }
    }

    pub fn page(
        &self,
        page: &Page,
        ctx: &PageContext<'_>,
        data: Value,
    ) -> Result<String, minijinja::Error> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut data = shape(page, data, now);
        if *page == Page::Logs {
            data["filters"] = query_map(ctx.query);
            data["export_query"] = export_query(ctx.query).into();
        }
        let full = context! { ..Tv::from(Serde(&data)), ..Self::common(ctx) };
        self.render(page.template(), full)
    }

    pub fn login(&self, lang: Lang, token: &str, error: Option<&str>, public: bool) -> String {
        let ctx = context! {
            lang => lang.code(), html_lang => lang.tag(), login_csrf => token,
            error => error, public => public, path => "/manager/login",
        };
        self.render("login.html", ctx)
            .unwrap_or_else(|e| plain_error(&format!("the sign-in page could not be drawn: {e}")))
    }

    pub fn error(&self, ctx: &PageContext<'_>, status: u16, message: &str) -> String {
        let full = context! { status => status, message => message, ..Self::common(ctx) };
        self.render("error.html", full)
            .unwrap_or_else(|_| plain_error(message))
    }
}

/// Without a logger in this crate, a template problem at start goes to stderr.
fn tracing_free_log(msg: &str) {
    eprintln!("{msg}");
}

/// The page address a form returns to: this page, with its query.
fn back_of(path: &str, query: &str) -> String {
    if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    }
}

/// The page address's query as a map, to fill the filter form again.
fn query_map(query: &str) -> Value {
    Value::Object(
        form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), Value::from(v.into_owned())))
            .collect(),
    )
}

/// The filters without the cursor: for export links and the next page's link.
fn export_query(query: &str) -> String {
    form_urlencoded::parse(query.as_bytes())
        .filter(|(k, v)| k != "before" && k != "lang" && !v.is_empty())
        .fold(
            form_urlencoded::Serializer::new(String::new()),
            |mut s, (k, v)| {
                s.append_pair(&k, &v);
                s
            },
        )
        .finish()
}

/// A minimal page for when the templates themselves cannot help.
pub fn plain_error(message: &str) -> String {
    format!(
        "<!doctype html><meta charset=utf-8><title>weir</title><p role=alert>{}</p>",
        chart::escape(message)
    )
}

/// `/manager/assets/…`: the stylesheet and script, cached for a day.
pub fn asset(name: &str) -> Out {
    let (ct, body) = match name {
        "app.css" => ("text/css; charset=utf-8", CSS),
        "app.js" => ("text/javascript; charset=utf-8", JS),
        _ => return Out::html(404, plain_error("no such asset")),
    };
    Out {
        status: 200,
        headers: vec![
            ("content-type", ct.into()),
            ("cache-control", "public, max-age=86400".into()),
        ],
        body: body.as_bytes().to_vec(),
    }
}

/// Adds the chart series a page draws: every hour or day of the range present,
/// empty ones as zero, with error rate and mean latency worked out.
fn shape(page: &Page, mut data: Value, now: i64) -> Value {
    let hour = now - now.rem_euclid(3600);
    let day = now - now.rem_euclid(86_400);
    let fill = |rows: &Value, start: i64, step: i64, n: i64, fmt: fn(i64) -> (String, String)| {
        let empty = Vec::new();
        let rows = rows
            .get("usage")
            .and_then(Value::as_array)
            .unwrap_or(&empty);
        (0..n)
            .map(|i| {
                let (key, label) = fmt(start + i * step);
                let row = rows.iter().find(|r| r["group"] == key.as_str());
                series_point(label, row)
            })
            .collect::<Vec<_>>()
    };
    let days = |d: &Value| fill(d, day - 29 * 86_400, 86_400, 30, day_key);
    match page {
        Page::Dashboard => {
            data["hourly_series"] =
                fill(&data["hourly"], hour - 23 * 3600, 3600, 24, hour_key).into();
            data["daily_series"] = days(&data["daily"]).into();
            data["totals"] = totals(&data["daily"]);
        }
        Page::Key(_) => data["daily_series"] = days(&data["usage"]).into(),
        Page::Me => {
            let usage = json!({"usage": data["mine"]["usage"].clone()});
            data["daily_series"] = days(&usage).into();
            data["totals"] = totals(&usage);
        }
        Page::Gateways => {
            if let Some(list) = data["gateways"]["gateways"].as_array_mut() {
                for g in list {
                    let calls: Vec<Value> = (0..24)
                        .map(|h| json!({"label": format!("{h:02}"), "calls": g["calls_per_hour_today"][h]}))
                        .collect();
                    g["hour_series"] = calls.into();
                }
            }
        }
        _ => {}
    }
    data
}

fn hour_key(ts: i64) -> (String, String) {
    let t =
        time::OffsetDateTime::from_unix_timestamp(ts).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    (
        format!(
            "{:04}-{:02}-{:02}T{:02}:00:00Z",
            t.year(),
            t.month() as u8,
            t.day(),
            t.hour()
        ),
        format!("{:02}:00", t.hour()),
    )
}

fn day_key(ts: i64) -> (String, String) {
    let t =
        time::OffsetDateTime::from_unix_timestamp(ts).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    (
        format!("{:04}-{:02}-{:02}", t.year(), t.month() as u8, t.day()),
        format!("{:02}-{:02}", t.month() as u8, t.day()),
    )
}

/// One bucket of a usage report, with the figures charts need.
fn series_point(label: String, row: Option<&Value>) -> Value {
    let get = |k: &str| row.and_then(|r| r[k].as_f64()).unwrap_or(0.0);
    let calls = get("calls");
    let rate = if calls > 0.0 {
        100.0 * get("errors") / calls
    } else {
        0.0
    };
    json!({
        "label": label,
        "calls": calls,
        "total_tokens": get("total_tokens"),
        "cost": get("cost"),
        "errors": get("errors"),
        "error_rate": (rate * 10.0).round() / 10.0,
        "latency_ms": get("latency_ms_avg").round(),
    })
}

/// Sums over a usage report: calls, tokens, cost, error rate.
fn totals(report: &Value) -> Value {
    let empty = Vec::new();
    let rows = report["usage"].as_array().unwrap_or(&empty);
    let sum = |k: &str| {
        rows.iter()
            .filter_map(|r| r[k].as_f64())
            .fold(0.0, |a, b| a + b)
    };
    let calls = sum("calls");
    let latency = if calls > 0.0 {
        rows.iter()
            .map(|r| {
                r["latency_ms_avg"].as_f64().unwrap_or(0.0) * r["calls"].as_f64().unwrap_or(0.0)
            })
            .sum::<f64>()
            / calls
    } else {
        0.0
    };
    json!({
        "calls": calls,
        "total_tokens": sum("total_tokens"),
        "cost": sum("cost"),
        "errors": sum("errors"),
        "error_rate": if calls > 0.0 { (1000.0 * sum("errors") / calls).round() / 10.0 } else { 0.0 },
        "latency_ms": latency.round(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::i18n;
    use crate::manager::CSRF_REFUSED;

    /// Every `t("…")` text in the templates and the manager's own code.
    fn texts() -> Vec<String> {
        let code = [include_str!("mod.rs"), include_str!("render.rs")];
        // The code without its tests (which name texts of their own).
        let code = code.map(|c| c.split("#[cfg(test)]").next().unwrap_or(c));
        let re_sources = TEMPLATES.iter().map(|(_, s)| *s).chain(code);
        let mut out = Vec::new();
        for src in re_sources {
            for open in ["t(\"", "t('", "t(lang, \""] {
                let quote = open.chars().last().unwrap_or('"');
                let mut rest = src;
                while let Some(i) = rest.find(open) {
                    let word = rest[..i]
                        .chars()
                        .last()
                        .is_some_and(|c| c.is_alphanumeric() || c == '_');
                    rest = &rest[i + open.len()..];
                    if let Some(end) = rest.find(quote).filter(|_| !word) {
                        out.push(rest[..end].to_string());
                    }
                }
            }
        }
        out.extend(DYNAMIC.iter().map(|s| s.to_string()));
        out.sort();
        out.dedup();
        out
    }

    /// Texts translated from data (`t(c.health.state)`) or passed to `t` by name.
    const DYNAMIC: &[&str] = &[
        "healthy",
        "suspended",
        "probing",
        "file",
        "store",
        "user",
        "admin",
        "This key is unknown, disabled or expired.",
        "Only user keys can sign in here; the admin key signs in on the admin listener.",
        "There is no such page.",
        "This page is for administrators; your key is a user key.",
        "This address does not take that method.",
        CSRF_REFUSED,
    ];

    #[test]
    fn every_text_has_its_chinese_line() {
        let missing: Vec<String> = texts()
            .into_iter()
            .filter(|s| !s.is_empty() && i18n::t(Lang::Zh, s) == s.as_str())
            .collect();
        assert!(missing.is_empty(), "no Chinese for: {missing:#?}");
    }

    fn ctx<'a>(flash: Option<&'a Flash>) -> PageContext<'a> {
        PageContext {
            lang: Lang::Zh,
            csrf: "tok",
            admin: true,
            public: false,
            bootstrap: false,
            path: "/manager/keys",
            query: "",
            flash,
            base_url: "http://127.0.0.1:8080",
        }
    }

    #[test]
    fn every_page_draws_with_data_without_data_and_with_errors() {
        let views = Views::new();
        let pages = [
            Page::Dashboard,
            Page::Keys,
            Page::Key(1),
            Page::Groups,
            Page::Models,
            Page::Channels,
            Page::Channel("c".into()),
            Page::Gateways,
            Page::Logs,
            Page::Log(1),
            Page::Config,
            Page::Me,
            Page::Call,
        ];
        let failed = json!({"error": "no such thing", "status": 404});
        let flash = Flash {
            form: "create-key".into(),
            ok: false,
            message: "name: missing".into(),
            ..Flash::default()
        };
        for page in &pages {
            for data in [sample(), json!({})] {
                let html = views
                    .page(page, &ctx(Some(&flash)), data)
                    .unwrap_or_else(|e| panic!("{page:?}: {e:#}"));
                assert!(html.contains("</html>"), "{page:?}");
            }
            let all_failed: serde_json::Map<String, Value> = page
                .fetches("", crate::api::Caller::Admin { key_id: Some(1) }, 0)
                .into_iter()
                .map(|f| (f.name.to_string(), failed.clone()))
                .collect();
            let html = views
                .page(page, &ctx(None), Value::Object(all_failed))
                .unwrap_or_else(|e| panic!("{page:?}: {e:#}"));
            assert!(
                html.contains("no such thing"),
                "{page:?} hides a failed read"
            );
        }
        let keys = views
            .page(&Page::Keys, &ctx(Some(&flash)), sample())
            .unwrap();
        assert!(keys.contains(r#"role="alert" data-form="create-key">name: missing"#));
        assert!(keys.contains("创建密钥"));
    }

    fn sample() -> Value {
        let key = json!({"id": 1, "name": "ann", "role": "user", "group": "default", "email": null,
            "prefix": "sk-weir-ab", "models": [], "usable_models": ["m1"], "monthly_budget": 5.0,
            "spent_this_month": 1.5, "balance": null, "expires_at": null, "active": true,
            "created_at": "2026-12-01T00:00:00Z", "gateways": [{"name": "g", "path": "/v1"}]});
        let health = json!({"state": "suspended", "consecutive_failures": 3, "retry_in_secs": 20,
            "last_error": "503", "failures_total": 3, "successes_total": 9});
        let channel = json!({"name": "c", "source": "store", "type": "openai", "upstream": "http://x",
            "enabled": true, "priority": 0, "weight": 1, "retries": 1, "groups": null, "models": ["m1"],
            "health": health, "probe": {"at": 1, "readmitted": false, "model": "m1", "ok": false,
            "status": 503, "latency_ms": 4, "error": "503"},
            "keys": [{"index": 0, "hint": "sk-…1234", "health": health}]});
        let call = json!({"id": 7, "ts": 1, "time": "2026-12-01T00:00:01Z", "key_id": 1, "identity": null,
            "gateway": "g", "model": "m1", "upstream_model": "m1", "channel": "c", "upstream": "http://x",
            "status": 502, "error_code": "upstream_failed", "error": "boom", "prompt_tokens": 3,
            "completion_tokens": 0, "cost": 0.0, "estimated": false, "latency_ms": 12, "ttft_ms": null,
            "stream": false, "cache": "off", "tried": "c", "request_body": "{}", "error_body": "{}"});
        let usage = json!({"usage": [{"group": "key:1", "calls": 3, "prompt_tokens": 1,
            "completion_tokens": 2, "total_tokens": 3, "cost": 0.1, "estimated_calls": 0,
            "errors": 1, "latency_ms_avg": 10.0}]});
        json!({
            "hourly": usage, "daily": usage, "by_model": usage, "by_key": usage, "by_channel": usage,
            "keys": {"keys": [key]}, "key": key, "usage": usage, "me": key,
            "mine": {"key": key, "usage": usage["usage"], "recent_calls": []},
            "groups": {"groups": [{"name": "default", "description": "d", "models": ["m1"], "keys": 1}]},
            "models": {"models": [{"name": "m1", "price_in": 1.0, "price_out": 2.0, "multimodal": false,
                "config": {"a": 1}, "provider": "openai", "source": "store"}]},
            "channels": {"version": 1, "channels": [channel]}, "channel": channel,
            "gateways": {"gateways": [{"name": "g", "source": "file", "path": "/v1", "active": true,
                "token_quota": 1000, "tokens_used": 10, "calls_per_hour_today": vec![1; 24]}]},
            "logs": {"data": [call], "next": "1-7"}, "log": call,
            "webhooks": {"webhooks": [{"name": "team", "provider": "feishu", "source": "store",
                "path": "/bot/feishu/team/webhook/event", "config": {"appId": "cli_x", "appSecret": "…",
                "apiKey": "…abcd", "modelId": "m1", "verificationToken": null, "encryptKey": "…",
                "api_base": "https://open.feishu.cn", "gateway": null}}]},
            "config": {"version": 3, "config": {"server": {"listen": "x"}}},
        })
    }

    #[test]
    fn series_fill_every_bucket() {
        let now = 86_400 * 3 + 3600 * 5 + 10;
        let data = json!({
            "hourly": {"usage": [{"group": "1970-01-04T05:00:00Z", "calls": 4, "errors": 1, "latency_ms_avg": 20.0}]},
            "daily": {"usage": [{"group": "1970-01-04", "calls": 4, "errors": 1, "cost": 0.5, "total_tokens": 10, "latency_ms_avg": 20.0}]},
        });
        let out = shape(&Page::Dashboard, data, now);
        let hours = out["hourly_series"].as_array().unwrap();
        assert_eq!(hours.len(), 24);
        assert_eq!(hours[23]["label"], "05:00");
        assert_eq!(hours[23]["calls"], 4.0);
        assert_eq!(hours[23]["error_rate"], 25.0);
        assert_eq!(hours[0]["calls"], 0.0);
        assert_eq!(out["daily_series"].as_array().unwrap().len(), 30);
        assert_eq!(out["totals"]["error_rate"], 25.0);
        assert_eq!(out["totals"]["latency_ms"], 20.0);
    }
}
