//! The web manager (A8) at `/manager/`: server-rendered pages over the admin API.
//!
//! Every page reads through the admin API's own commands and every form is an
//! admin API call (`form`), checked by the same `api::route` and `api::permitted`
//! as `curl`; the manager adds sessions (`session`), CSRF tokens, two languages
//! (`i18n`) and charts (`chart`). Assets are compiled into the binary.

mod chart;
mod form;
mod i18n;
mod pages;
mod render;
mod session;

use crate::{api, AdminBackend, Answer};
use api::Caller;
use http::{Response, StatusCode};
use pages::Page;
use serde_json::Value;
use session::{Flash, Session, Sessions, LANG_COOKIE, LOGIN_COOKIE, SESSION_COOKIE};
use std::sync::Arc;
use weir_filters::GatewayError;

pub use i18n::Lang;

/// A write without this session's CSRF token.
const CSRF_REFUSED: &str =
    "CSRF token missing or wrong: the form was not sent from this manager page. Reload the page and try again.";

/// One request to the manager, as either listener read it.
pub struct ManagerRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub cookie: Option<&'a str>,
    pub accept_language: Option<&'a str>,
    pub host: Option<&'a str>,
    pub body: &'a [u8],
    /// On the proxy listener (`server.public_manager`): the user view only.
    pub public: bool,
    /// Served over TLS: cookies are marked Secure.
    pub tls: bool,
    /// The peer's address: failed sign-ins are slowed per address.
    pub client: Option<std::net::IpAddr>,
}

impl<'a> ManagerRequest<'a> {
    /// The request as a listener read it: its head and its (bounded) body.
    pub fn from_head(
        head: &'a pingora_http::RequestHeader,
        body: &'a [u8],
        public: bool,
        client: Option<std::net::IpAddr>,
    ) -> Self {
        let header =
            |name: http::header::HeaderName| head.headers.get(name).and_then(|v| v.to_str().ok());
        ManagerRequest {
            method: head.method.as_str(),
            path: head.uri.path(),
            query: head.uri.query().unwrap_or(""),
            cookie: header(http::header::COOKIE),
            accept_language: header(http::header::ACCEPT_LANGUAGE),
            host: header(http::header::HOST),
            body,
            public,
            // The listener says so after (`with_tls`).
            tls: false,
            client,
        }
    }
}

impl ManagerRequest<'_> {
    /// Served over TLS (`server.tls`): the session cookies are marked Secure.
    pub fn with_tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }
}

/// What the manager answers: a page (or redirect), or a log export to stream.
pub enum ManagerReply {
    Page(Response<Vec<u8>>),
    Export(Answer),
}

pub struct Manager<B: AdminBackend> {
    backend: Arc<B>,
    sessions: Sessions,
    views: render::Views,
    /// Failed sign-ins per address, for the form here and the admin API's key.
    pub lockout: weir_filters::lockout::Lockout,
}

/// Who is signed in, as this listener lets them act.
#[derive(Clone)]
struct Who {
    caller: Caller,
    session_id: String,
    session: Session,
}

impl Who {
    fn admin(&self) -> bool {
        matches!(self.caller, Caller::Admin { .. })
    }
}

/// A response being built: status, headers, body.
struct Out {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Out {
    fn html(status: u16, body: String) -> Out {
        Out {
            status,
            headers: vec![("content-type", "text/html; charset=utf-8".into())],
            body: body.into_bytes(),
        }
    }

    fn redirect(to: &str) -> Out {
        Out {
            status: 303,
            headers: vec![("location", to.to_string())],
            body: Vec::new(),
        }
    }

    fn cookie(mut self, c: String) -> Out {
        self.headers.push(("set-cookie", c));
        self
    }

    fn header(mut self, name: &'static str, value: &str) -> Out {
        self.headers.push((name, value.to_string()));
        self
    }

    /// With the headers every manager answer carries: no framing, no sniffing, no
    /// scripts or styles but our own, and nothing cached (pages show secrets once).
    fn finish(self) -> Response<Vec<u8>> {
        let mut r = Response::new(self.body);
        *r.status_mut() = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        let h = r.headers_mut();
        let fixed = [
            ("content-security-policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
            ("x-frame-options", "DENY"),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "same-origin"),
        ];
        for (k, v) in fixed {
            h.insert(k, http::HeaderValue::from_static(v));
        }
        if !self.headers.iter().any(|(k, _)| *k == "cache-control") {
            h.insert("cache-control", http::HeaderValue::from_static("no-store"));
        }
        for (k, v) in self.headers {
            if let Ok(v) = http::HeaderValue::from_str(&v) {
                h.append(k, v);
            }
        }
        let len = r.body().len();
        r.headers_mut()
            .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
        r
    }
}

impl<B: AdminBackend> Manager<B> {
    pub fn new(backend: Arc<B>) -> Self {
        Manager {
            backend,
            sessions: Sessions::default(),
            views: render::Views::new(),
            lockout: weir_filters::lockout::Lockout::default(),
        }
    }

    pub async fn serve(&self, req: &ManagerRequest<'_>) -> ManagerReply {
        let lang = Lang::choose(
            session::cookie(req.cookie, LANG_COOKIE),
            req.accept_language,
        );
        let sub = req.path.strip_prefix("/manager").unwrap_or("");
        let out = match (req.method, sub) {
            ("GET", "") => Out::redirect("/manager/"),
            ("GET", p) if p.starts_with("/assets/") => render::asset(&p[8..]),
            ("GET", _) if pages::lang_switch(req.query).is_some() => {
                let to = pages::lang_switch(req.query).unwrap_or(Lang::En);
                Out::redirect(req.path).cookie(session::set_cookie(
                    LANG_COOKIE,
                    to.code(),
                    Some(365 * 86_400),
                    req.tls,
                ))
            }
            ("GET", "/login") => self.login_page(req, lang, None, 200),
            ("POST", "/login") => self.login(req, lang),
            _ => match self.who(req) {
                None if req.method == "GET" => Out::redirect("/manager/login"),
                None => Out::redirect("/manager/login"),
                Some(who) => return self.signed_in(req, lang, who, sub).await,
            },
        };
        ManagerReply::Page(out.finish())
    }

    async fn signed_in(
        &self,
        req: &ManagerRequest<'_>,
        lang: Lang,
        who: Who,
        sub: &str,
    ) -> ManagerReply {
        // Every write of a signed-in page carries the session's token.
        if req.method == "POST"
            && !session::same_token(&form::field(req.body, "_csrf"), &who.session.csrf)
        {
            return ManagerReply::Page(
                self.error_page(lang, &who, req, 403, CSRF_REFUSED).finish(),
            );
        }
        let out = match (req.method, sub) {
            ("POST", "/logout") => self.logout(req, &who),
            ("POST", "/do") => self.act(req, lang, &who).await,
            ("GET", "/logs/export") if !req.public => return self.export(req, &who).await,
            ("GET", _) => match Page::parse(sub, who.admin()) {
                None => self.error_page(lang, &who, req, 404, "There is no such page."),
                Some(p) if p.admin_only() && !who.admin() => self.error_page(
                    lang,
                    &who,
                    req,
                    403,
                    "This page is for administrators; your key is a user key.",
                ),
                Some(p) => self.page(req, lang, &who, p).await,
            },
            _ => self.error_page(
                lang,
                &who,
                req,
                405,
                "This address does not take that method.",
            ),
        };
        ManagerReply::Page(out.finish())
    }

    /// The session behind the request's cookie, if it is live and its key still
    /// authenticates; otherwise the session is dropped.
    fn who(&self, req: &ManagerRequest<'_>) -> Option<Who> {
        let id = session::cookie(req.cookie, SESSION_COOKIE)?;
        let session = self.sessions.touch(id)?;
        let Some(caller) = self.backend.session_caller(&session.key_hash) else {
            self.sessions.remove(id);
            return None;
        };
        let caller = if req.public {
            // The proxy listener serves the user view only, whoever signs in.
            match caller {
                Caller::Admin { key_id: Some(id) } | Caller::User { key_id: id } => {
                    Caller::User { key_id: id }
                }
                Caller::Admin { key_id: None } => return None,
            }
        } else {
            caller
        };
        Some(Who {
            caller,
            session_id: id.to_string(),
            session,
        })
    }

    fn login_page(
        &self,
        req: &ManagerRequest<'_>,
        lang: Lang,
        error: Option<&str>,
        status: u16,
    ) -> Out {
        let token = session::token();
        let html = self.views.login(lang, &token, error, req.public);
        Out::html(status, html).cookie(session::set_cookie(
            LOGIN_COOKIE,
            &token,
            Some(3600),
            req.tls,
        ))
    }

    fn login(&self, req: &ManagerRequest<'_>, lang: Lang) -> Out {
        let get = |k: &str| form::field(req.body, k).trim().to_string();
        let expected = session::cookie(req.cookie, LOGIN_COOKIE).unwrap_or("");
        if !session::same_token(&get("_csrf"), expected) {
            let msg = i18n::t(lang, "The sign-in form expired; please sign in again.");
            return self.login_page(req, lang, Some(msg), 403);
        }
        let now = std::time::Instant::now();
        let key = get("key");
        let hash = weir_filters::auth::hash_key(&key);
        let checked = self.lockout.attempt(req.client, now, || {
            let caller = (!key.is_empty())
                .then(|| self.backend.session_caller(&hash))
                .flatten();
            match caller {
                None => Err("This key is unknown, disabled or expired."),
                Some(Caller::Admin { key_id: None }) if req.public => Err(
                    "Only user keys can sign in here; the admin key signs in on the admin listener.",
                ),
                Some(c) => Ok(c),
            }
        });
        match checked {
            Ok(Ok(_)) => {}
            Ok(Err(msg)) => return self.login_page(req, lang, Some(i18n::t(lang, msg)), 401),
            Err(wait) => {
                let msg = i18n::t(
                    lang,
                    "Too many failed sign-ins from your address; wait a moment and try again.",
                );
                let secs = wait.as_secs_f64().ceil() as u64;
                return self
                    .login_page(req, lang, Some(msg), 429)
                    .header("retry-after", &secs.max(1).to_string());
            }
        }
        let id = self.sessions.create(hash);
        Out::redirect("/manager/")
            .cookie(session::set_cookie(SESSION_COOKIE, &id, None, req.tls))
            .cookie(session::set_cookie(LOGIN_COOKIE, "", Some(0), req.tls))
    }

    fn logout(&self, req: &ManagerRequest<'_>, who: &Who) -> Out {
        self.sessions.remove(&who.session_id);
        Out::redirect("/manager/login").cookie(session::set_cookie(
            SESSION_COOKIE,
            "",
            Some(0),
            req.tls,
        ))
    }

    /// A form post: the admin API call it stands for, then back to its page with
    /// the outcome next to the form.
    async fn act(&self, req: &ManagerRequest<'_>, lang: Lang, who: &Who) -> Out {
        let call = match form::parse(req.body) {
            Ok(c) => c,
            Err(e) => {
                self.sessions.set_flash(
                    &who.session_id,
                    Flash {
                        form: form::field(req.body, "_form"),
                        ok: false,
                        message: format!("{}: {}", e.field, e.message),
                        ..Flash::default()
                    },
                );
                return Out::redirect(&form::safe_back(&form::field(req.body, "_back")));
            }
        };
        let result = self
            .call(
                who.caller,
                &call.method,
                &call.path,
                &call.query,
                &call.body,
            )
            .await;
        // After a delete, the entry's own page is gone: back to its list.
        let back = if call.method == "DELETE" && result.is_ok() {
            pages::list_of(&call.back)
        } else {
            call.back.clone()
        };
        let flash = match result {
            Ok(answer) => Flash {
                form: call.form.clone(),
                ok: true,
                message: i18n::t(lang, "Done.").to_string(),
                answer: Some(answer),
                values: if call.keep {
                    call.values.clone()
                } else {
                    Default::default()
                },
            },
            Err(e) => Flash {
                form: call.form.clone(),
                ok: false,
                message: e.to_string(),
                answer: None,
                values: call.values.clone(),
            },
        };
        self.sessions.set_flash(&who.session_id, flash);
        Out::redirect(&back)
    }

    /// An admin API call on the caller's behalf, with the API's own checks.
    async fn call(
        &self,
        caller: Caller,
        method: &str,
        path: &str,
        query: &str,
        body: &[u8],
    ) -> Result<Value, GatewayError> {
        let cmd = api::route(method, path, query, body)?;
        api::permitted(caller, &cmd)?;
        match self.backend.execute(caller, cmd).await? {
            Answer::Json(_, v) => Ok(v),
            Answer::Stream { .. } => Err(GatewayError::BadRequest(
                "this call streams; open it as a download".into(),
            )),
        }
    }

    async fn export(&self, req: &ManagerRequest<'_>, who: &Who) -> ManagerReply {
        let result = async {
            let cmd = api::route("GET", "/admin/logs/export", req.query, b"")?;
            api::permitted(who.caller, &cmd)?;
            self.backend.execute(who.caller, cmd).await
        }
        .await;
        match result {
            Ok(a @ Answer::Stream { .. }) => ManagerReply::Export(a),
            Ok(Answer::Json(..)) => ManagerReply::Page(Out::html(500, String::new()).finish()),
            Err(e) => ManagerReply::Page(
                Out::html(e.status(), render::plain_error(&e.to_string())).finish(),
            ),
        }
    }

    async fn page(&self, req: &ManagerRequest<'_>, lang: Lang, who: &Who, page: Page) -> Out {
        let mut data = serde_json::Map::new();
        for fetch in page.fetches(
            req.query,
            who.caller,
            time::OffsetDateTime::now_utc().unix_timestamp(),
        ) {
            let value = match self
                .call(who.caller, "GET", &fetch.path, &fetch.query, b"")
                .await
            {
                Ok(v) => v,
                // A failed read is shown where its data would be, never hidden.
                Err(e) => serde_json::json!({"error": e.to_string(), "status": e.status()}),
            };
            data.insert(fetch.name.to_string(), value);
        }
        let base_url = self.backend.base_url(req.host);
        let ctx = page_context(req, lang, who, &base_url, who.session.flash.as_ref());
        match self.views.page(&page, &ctx, Value::Object(data)) {
            Ok(html) => Out::html(200, html),
            Err(e) => Out::html(
                500,
                render::plain_error(&format!("the page could not be drawn: {e}")),
            ),
        }
    }

    fn error_page(
        &self,
        lang: Lang,
        who: &Who,
        req: &ManagerRequest<'_>,
        status: u16,
        message: &str,
    ) -> Out {
        let base_url = self.backend.base_url(req.host);
        let ctx = page_context(req, lang, who, &base_url, None);
        Out::html(
            status,
            self.views.error(&ctx, status, i18n::t(lang, message)),
        )
    }
}

/// What a signed-in page knows besides its data.
fn page_context<'a>(
    req: &'a ManagerRequest<'_>,
    lang: Lang,
    who: &'a Who,
    base_url: &'a str,
    flash: Option<&'a Flash>,
) -> render::PageContext<'a> {
    render::PageContext {
        lang,
        csrf: &who.session.csrf,
        admin: who.admin(),
        public: req.public,
        bootstrap: matches!(who.caller, Caller::Admin { key_id: None }),
        path: req.path,
        query: req.query,
        flash,
        base_url,
    }
}
