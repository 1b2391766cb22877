//! The manager's pages: which address is which page, who may open it, and which
//! admin API reads fill it.

use super::i18n::Lang;
use crate::api::Caller;

#[derive(Debug, Clone, PartialEq)]
pub enum Page {
    Dashboard,
    Keys,
    Key(i64),
    Groups,
    Models,
    Channels,
    Channel(String),
    Gateways,
    Webhooks,
    Logs,
    Log(i64),
    Config,
    Me,
    Call,
}

/// One admin API read a page needs, and the name its answer has in the template.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetch {
    pub name: &'static str,
    pub path: String,
    pub query: String,
}

fn fetch(name: &'static str, path: impl Into<String>, query: impl Into<String>) -> Fetch {
    Fetch {
        name,
        path: path.into(),
        query: query.into(),
    }
}

/// The log filters a page address may carry through to `/admin/logs`.
const LOG_FILTERS: [&str; 10] = [
    "key_id", "gateway", "model", "channel", "status", "from", "to", "q", "limit", "before",
];

/// Decodes one path segment.
fn segment(s: &str) -> String {
    form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl Page {
    /// The page at a manager path (after `/manager`); `/` is the caller's home.
    pub fn parse(sub: &str, admin: bool) -> Option<Page> {
        let segs: Vec<&str> = sub.split('/').filter(|s| !s.is_empty()).collect();
        Some(match segs.as_slice() {
            [] if admin => Page::Dashboard,
            [] => Page::Me,
            ["keys"] => Page::Keys,
            ["keys", id] => Page::Key(id.parse().ok()?),
            ["groups"] => Page::Groups,
            ["models"] => Page::Models,
            ["channels"] => Page::Channels,
            ["channels", name] => Page::Channel(segment(name)),
            ["gateways"] => Page::Gateways,
            ["webhooks"] => Page::Webhooks,
            ["logs"] => Page::Logs,
            ["logs", id] => Page::Log(id.parse().ok()?),
            ["config"] => Page::Config,
            ["me"] => Page::Me,
            ["me", "call"] => Page::Call,
            _ => return None,
        })
    }

    /// Pages a user key may not open (the API would refuse their reads anyway).
    pub fn admin_only(&self) -> bool {
        !matches!(self, Page::Me | Page::Call | Page::Logs | Page::Log(_))
    }

    /// The template that draws it.
    pub fn template(&self) -> &'static str {
        match self {
            Page::Dashboard => "dashboard.html",
            Page::Keys => "keys.html",
            Page::Key(_) => "key.html",
            Page::Groups => "groups.html",
            Page::Models => "models.html",
            Page::Channels => "channels.html",
            Page::Channel(_) => "channel.html",
            Page::Gateways => "gateways.html",
            Page::Webhooks => "webhooks.html",
            Page::Logs => "logs.html",
            Page::Log(_) => "log.html",
            Page::Config => "config.html",
            Page::Me => "me.html",
            Page::Call => "call.html",
        }
    }

    /// The admin API reads behind the page, at time `now` (unix seconds).
    pub fn fetches(&self, query: &str, caller: Caller, now: i64) -> Vec<Fetch> {
        let hour = now - now.rem_euclid(3600);
        let day = now - now.rem_euclid(86_400);
        let last_day = format!("from={}", hour - 23 * 3600);
        let month = format!("from={}", day - 29 * 86_400);
        let usage = |name, group: &str, from: &str| {
            fetch(name, "/admin/usage", format!("group_by={group}&{from}"))
        };
        match self {
            Page::Dashboard => vec![
                usage("hourly", "hour", &last_day),
                usage("daily", "day", &month),
                usage("by_model", "model", &month),
                usage("by_key", "key", &month),
                usage("by_channel", "channel", &month),
                fetch("keys", "/admin/keys", ""),
                fetch("channels", "/admin/channels", ""),
            ],
            Page::Keys => vec![
                fetch("keys", "/admin/keys", ""),
                fetch("groups", "/admin/groups", ""),
            ],
            Page::Key(id) => vec![
                fetch("key", format!("/admin/keys/{id}"), ""),
                usage("usage", "day", &format!("{month}&key_id={id}")),
                fetch("groups", "/admin/groups", ""),
                fetch("logs", "/admin/logs", format!("key_id={id}&limit=10")),
            ],
            Page::Groups => vec![
                fetch("groups", "/admin/groups", ""),
                fetch("models", "/admin/models", ""),
            ],
            Page::Models => vec![fetch("models", "/admin/models", "")],
            Page::Channels => vec![fetch("channels", "/admin/channels", "")],
            Page::Channel(name) => vec![
                fetch("channel", format!("/admin/channels/{}", encode(name)), ""),
                fetch(
                    "logs",
                    "/admin/logs",
                    format!("channel={}&limit=10", encode(name)),
                ),
            ],
            Page::Gateways => vec![fetch("gateways", "/admin/gateways", "")],
            Page::Webhooks => vec![
                fetch("webhooks", "/admin/webhooks", ""),
                fetch("gateways", "/admin/gateways", ""),
            ],
            Page::Logs => vec![fetch("logs", "/admin/logs", log_filters(query, caller))],
            Page::Log(id) => vec![fetch("log", format!("/admin/logs/{id}"), "")],
            Page::Config => vec![fetch("config", "/admin/config", "")],
            Page::Me => {
                let mut reads = vec![fetch("mine", "/admin/me/usage", month)];
                if let Caller::Admin { key_id: Some(id) } | Caller::User { key_id: id } = caller {
                    reads.push(fetch(
                        "logs",
                        "/admin/logs",
                        format!("key_id={id}&limit=20"),
                    ));
                }
                reads
            }
            Page::Call => vec![fetch("me", "/admin/me", "")],
        }
    }
}

/// The log filters of a page address, as a query for `/admin/logs`; a user's
/// `key_id` is dropped (the API scopes their reads to their own key anyway).
pub fn log_filters(query: &str, caller: Caller) -> String {
    let user = matches!(caller, Caller::User { .. });
    form_urlencoded::parse(query.as_bytes())
        .filter(|(k, v)| !v.is_empty() && LOG_FILTERS.contains(&k.as_ref()))
        .filter(|(k, _)| !(user && k == "key_id"))
        .fold(
            form_urlencoded::Serializer::new(String::new()),
            |mut s, (k, v)| {
                s.append_pair(&k, &v);
                s
            },
        )
        .finish()
}

/// `?lang=en|zh` on any page switches the language.
pub fn lang_switch(query: &str) -> Option<Lang> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "lang")
        .and_then(|(_, v)| Lang::parse(&v))
}

/// The list an entry's page belongs to (where a delete returns).
pub fn list_of(back: &str) -> String {
    let segs: Vec<&str> = back.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["manager", list, _] if *list != "me" => format!("/manager/{list}"),
        _ => back.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_pages() {
        assert_eq!(Page::parse("/", true), Some(Page::Dashboard));
        assert_eq!(Page::parse("/", false), Some(Page::Me));
        assert_eq!(Page::parse("/keys/12", true), Some(Page::Key(12)));
        assert_eq!(Page::parse("/keys/x", true), None);
        assert_eq!(
            Page::parse("/channels/a%20b", true),
            Some(Page::Channel("a b".into()))
        );
        assert_eq!(Page::parse("/me/call", false), Some(Page::Call));
        assert_eq!(Page::parse("/nothing", true), None);
        assert!(Page::Keys.admin_only() && Page::Config.admin_only());
        assert!(!Page::Me.admin_only() && !Page::Log(1).admin_only());
    }

    #[test]
    fn reads_follow_the_page() {
        let admin = Caller::Admin { key_id: None };
        let f = Page::Dashboard.fetches("", admin, 90_000);
        assert_eq!(f[0].query, "group_by=hour&from=7200");
        assert_eq!(f[1].query, "group_by=day&from=-2419200");
        let f = Page::Channel("a b".into()).fetches("", admin, 0);
        assert_eq!(f[0].path, "/admin/channels/a+b");
        let user = Caller::User { key_id: 4 };
        assert_eq!(
            log_filters("key_id=9&model=m&x=1&q=&status=4xx", user),
            "model=m&status=4xx"
        );
        assert_eq!(log_filters("key_id=9", admin), "key_id=9");
    }

    #[test]
    fn deletes_return_to_the_list() {
        assert_eq!(list_of("/manager/keys/3"), "/manager/keys");
        assert_eq!(list_of("/manager/keys"), "/manager/keys");
        assert_eq!(list_of("/manager/me/call"), "/manager/me/call");
        assert_eq!(lang_switch("lang=zh"), Some(Lang::Zh));
        assert_eq!(lang_switch("lang=fr"), None);
    }
}
