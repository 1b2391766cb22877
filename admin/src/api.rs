//! The admin API's requests, typed and validated here so that the gateway only ever
//! executes well-formed commands.

use serde::{Deserialize, Serialize};
use weir_filters::GatewayError;

/// Who calls the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The bootstrap `server.admin_key`, or a stored key with role `admin`.
    Admin { key_id: Option<i64> },
    /// A stored key with role `user`: its own data only.
    User { key_id: i64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    User,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "user" => Some(Role::User),
            _ => None,
        }
    }
}

/// `POST /admin/keys`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub name: String,
    #[serde(default = "user_role")]
    pub role: Role,
    #[serde(default = "default_group")]
    pub group: String,
    #[serde(default)]
    pub email: Option<String>,
    /// Money per calendar month (UTC); absent: no budget.
    #[serde(default)]
    pub monthly_budget: Option<f64>,
    /// Prepaid balance; absent: not metered by balance.
    #[serde(default)]
    pub balance: Option<f64>,
    /// RFC 3339.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Models granted to this key (on top of its group's).
    #[serde(default)]
    pub models: Vec<String>,
}

fn user_role() -> Role {
    Role::User
}

fn default_group() -> String {
    "default".into()
}

/// `PATCH /admin/keys/{id}`: only the fields given change. `null` clears a budget
/// or an expiry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPatch {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub role: Option<Role>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub email: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub monthly_budget: Option<Option<f64>>,
    #[serde(default, deserialize_with = "present")]
    pub expires_at: Option<Option<String>>,
    #[serde(default)]
    pub active: Option<bool>,
    #[serde(default)]
    pub models: Option<Vec<String>>,
}

/// Tells "absent" (`None`) from "null" (`Some(None)`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopUp {
    pub amount: f64,
}

/// `POST /admin/models` (create or replace) and `PATCH /admin/models/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelDef {
    pub name: String,
    #[serde(default)]
    pub price_in: f64,
    #[serde(default)]
    pub price_out: f64,
    #[serde(default)]
    pub multimodal: bool,
    #[serde(default)]
    pub config: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewGroup {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub models: Vec<String>,
}

/// Query of `GET /admin/usage`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageQuery {
    /// `None`: not given (each report has its default).
    pub group_by: Option<UsageGroup>,
    pub key_id: Option<i64>,
    pub gateway: Option<String>,
    pub model: Option<String>,
    /// Unix seconds, inclusive.
    pub from: Option<i64>,
    /// Unix seconds, exclusive.
    pub to: Option<i64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UsageGroup {
    #[default]
    Key,
    Gateway,
    Model,
    Day,
    Hour,
}

impl UsageQuery {
    /// Parses `group_by=key|gateway|model|day|hour&key_id=&gateway=&model=&from=&to=`;
    /// `from`/`to` are `YYYY-MM-DD` (UTC) or unix seconds.
    pub fn parse(query: &str) -> Result<UsageQuery, GatewayError> {
        let mut q = UsageQuery::default();
        for (k, v) in form_urlencoded_pairs(query) {
            match k.as_str() {
                "group_by" | "by" => {
                    q.group_by = Some(match v.as_str() {
                        "key" => UsageGroup::Key,
                        "gateway" => UsageGroup::Gateway,
                        "model" => UsageGroup::Model,
                        "day" => UsageGroup::Day,
                        "hour" => UsageGroup::Hour,
                        other => {
                            return Err(GatewayError::BadRequest(format!(
                                "group_by `{other}`: use key, gateway, model, day or hour"
                            )))
                        }
                    })
                }
                "key_id" => {
                    q.key_id = Some(v.parse().map_err(|_| {
                        GatewayError::BadRequest(format!("key_id `{v}` is not a number"))
                    })?)
                }
                "gateway" => q.gateway = Some(v),
                "model" => q.model = Some(v),
                "from" => q.from = Some(parse_time(&v)?),
                "to" => q.to = Some(parse_time(&v)?),
                other => {
                    return Err(GatewayError::BadRequest(format!(
                        "unknown query parameter `{other}`"
                    )))
                }
            }
        }
        Ok(q)
    }
}

fn form_urlencoded_pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// `YYYY-MM-DD` (midnight UTC), RFC 3339, or unix seconds (years 1970 to 9999).
pub fn parse_time(v: &str) -> Result<i64, GatewayError> {
    if let Ok(n) = v.parse::<i64>() {
        if !(0..=253_402_300_799).contains(&n) {
            return Err(GatewayError::BadRequest(format!("`{v}` is out of range")));
        }
        return Ok(n);
    }
    let with_time = if v.len() == 10 {
        format!("{v}T00:00:00Z")
    } else {
        v.to_string()
    };
    humantime_rfc3339(&with_time).ok_or_else(|| {
        GatewayError::BadRequest(format!(
            "`{v}` is not a date (YYYY-MM-DD), an RFC 3339 time or unix seconds"
        ))
    })
}

fn humantime_rfc3339(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some(t.unix_timestamp())
}

/// Checks names of keys, groups and models.
pub fn check_name(what: &str, name: &str) -> Result<(), GatewayError> {
    if name.trim().is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err(GatewayError::BadRequest(format!(
            "{what} must be 1-128 printable characters"
        )));
    }
    Ok(())
}

pub fn check_money(what: &str, v: f64) -> Result<(), GatewayError> {
    if !v.is_finite() || v < 0.0 {
        return Err(GatewayError::BadRequest(format!(
            "{what} must be a number of 0 or more"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_queries_parse() {
        let q = UsageQuery::parse("group_by=model&key_id=3&from=2026-11-01&to=1800000000").unwrap();
        assert_eq!(q.group_by, Some(UsageGroup::Model));
        assert_eq!(q.key_id, Some(3));
        assert_eq!(q.from, Some(1_793_491_200));
        assert_eq!(q.to, Some(1_800_000_000));
        assert!(UsageQuery::parse("group_by=week").is_err());
        assert!(UsageQuery::parse("colour=red").is_err());
        assert!(UsageQuery::parse("from=yesterday").is_err());
        assert_eq!(
            UsageQuery::parse("gateway=team%2Da")
                .unwrap()
                .gateway
                .as_deref(),
            Some("team-a")
        );
    }

    #[test]
    fn patch_tells_null_from_absent() {
        let p: KeyPatch = serde_json::from_str(r#"{"monthly_budget": null}"#).unwrap();
        assert_eq!(p.monthly_budget, Some(None));
        assert_eq!(p.expires_at, None);
        assert!(serde_json::from_str::<KeyPatch>(r#"{"colour": 1}"#).is_err());
    }
}

/// Everything the admin API can be asked to do.
#[derive(Debug, Clone)]
pub enum Command {
    Reload,
    Channels,
    Config,
    CreateKey(NewKey),
    ListKeys,
    GetKey(i64),
    UpdateKey(i64, KeyPatch),
    ResetKey(i64),
    TopUp(i64, f64),
    DeleteKey(i64),
    ListGroups,
    CreateGroup(NewGroup),
    DeleteGroup(String),
    SetGroupModels(String, Vec<String>),
    ListModels,
    PutModel(ModelDef),
    DeleteModel(String),
    Usage(UsageQuery),
    Gateways,
    Me,
    MyUsage(UsageQuery),
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, GatewayError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(GatewayError::BadRequest(
            "this call needs a JSON body".into(),
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| GatewayError::BadRequest(format!("invalid JSON body: {e}")))
}

fn id_of(s: &str) -> Result<i64, GatewayError> {
    s.parse()
        .map_err(|_| GatewayError::BadRequest(format!("`{s}` is not a key id")))
}

fn decode_segment(s: &str) -> String {
    form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Maps a request on `/admin/…` to a command, validating its body and query.
pub fn route(method: &str, path: &str, query: &str, body: &[u8]) -> Result<Command, GatewayError> {
    let rest = path
        .trim_end_matches('/')
        .strip_prefix("/admin")
        .unwrap_or("");
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let not_found = || GatewayError::RouteNotFound {
        method: method.to_string(),
        path: path.to_string(),
    };
    let wrong = || GatewayError::MethodNotAllowed {
        method: method.to_string(),
        path: path.to_string(),
    };
    use Command::*;
    Ok(match (segs.as_slice(), method) {
        (["reload"], "POST") => Reload,
        (["channels"], "GET") => Channels,
        (["config"], "GET") => Config,
        (["keys"], "GET") => ListKeys,
        (["keys"], "POST") => CreateKey(json_body(body)?),
        (["keys", id], "GET") => GetKey(id_of(id)?),
        (["keys", id], "PATCH") => UpdateKey(id_of(id)?, json_body(body)?),
        (["keys", id], "DELETE") => DeleteKey(id_of(id)?),
        (["keys", id, "reset"], "POST") => ResetKey(id_of(id)?),
        (["keys", id, "topup"], "POST") => {
            let amount = json_body::<self::TopUp>(body)?.amount;
            if !(amount.is_finite() && amount > 0.0 && amount <= 1e12) {
                return Err(GatewayError::BadRequest(
                    "amount must be a positive number up to 1e12".into(),
                ));
            }
            TopUp(id_of(id)?, amount)
        }
        (["keys", id, "models"], "PUT") => UpdateKey(
            id_of(id)?,
            KeyPatch {
                models: Some(json_body(body)?),
                ..KeyPatch::default()
            },
        ),
        (["groups"], "GET") => ListGroups,
        (["groups"], "POST") => CreateGroup(json_body(body)?),
        (["groups", name], "DELETE") => DeleteGroup(decode_segment(name)),
        (["groups", name, "models"], "PUT") => {
            SetGroupModels(decode_segment(name), json_body(body)?)
        }
        (["models"], "GET") => ListModels,
        (["models"], "POST") => PutModel(json_body(body)?),
        (["models", name], "PUT") => {
            let m: ModelDef = json_body(body)?;
            if m.name != decode_segment(name) {
                return Err(GatewayError::BadRequest(
                    "the body's `name` must match the path".into(),
                ));
            }
            PutModel(m)
        }
        (["models", name], "DELETE") => DeleteModel(decode_segment(name)),
        (["usage"], "GET") => Usage(UsageQuery::parse(query)?),
        (["gateways"], "GET") => Gateways,
        (["me"], "GET") => Me,
        (["me", "usage"], "GET") => MyUsage(UsageQuery::parse(query)?),
        (
            ["reload"]
            | ["channels"]
            | ["config"]
            | ["keys"]
            | ["keys", _]
            | ["keys", _, "reset" | "topup" | "models"]
            | ["groups"]
            | ["groups", _]
            | ["groups", _, "models"]
            | ["models"]
            | ["models", _]
            | ["usage"]
            | ["gateways"]
            | ["me"]
            | ["me", "usage"],
            _,
        ) => return Err(wrong()),
        _ => return Err(not_found()),
    })
}

/// Admins may do everything; a user key reads its own data and nothing else.
pub fn permitted(caller: Caller, cmd: &Command) -> Result<(), GatewayError> {
    let own = match caller {
        Caller::Admin { .. } => return Ok(()),
        Caller::User { key_id } => key_id,
    };
    let allowed = match cmd {
        Command::Me | Command::MyUsage(_) => true,
        Command::GetKey(id) => *id == own,
        Command::Usage(q) => q.key_id == Some(own),
        _ => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(GatewayError::Forbidden {
            code: "admin_only",
            message: "a user key may read only its own key and usage (/admin/me, /admin/me/usage)"
                .into(),
        })
    }
}

#[cfg(test)]
mod route_tests {
    use super::*;

    #[test]
    fn routes_and_validates() {
        assert!(matches!(
            route("POST", "/admin/keys", "", br#"{"name":"a"}"#).unwrap(),
            Command::CreateKey(_)
        ));
        assert!(matches!(
            route("PATCH", "/admin/keys/7", "", br#"{"active":false}"#).unwrap(),
            Command::UpdateKey(7, _)
        ));
        assert!(
            matches!(route("POST", "/admin/keys/7/topup", "", br#"{"amount":5}"#).unwrap(), Command::TopUp(7, a) if a == 5.0)
        );
        assert!(
            matches!(route("PUT", "/admin/groups/team%20a/models", "", br#"["m"]"#).unwrap(), Command::SetGroupModels(n, _) if n == "team a")
        );
        assert_eq!(
            route("POST", "/admin/keys", "", b"").unwrap_err().status(),
            400
        );
        assert_eq!(
            route("POST", "/admin/keys", "", br#"{"name":"a","colour":1}"#)
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(
            route("GET", "/admin/keys/x", "", b"").unwrap_err().status(),
            400
        );
        assert_eq!(
            route("DELETE", "/admin/keys", "", b"")
                .unwrap_err()
                .status(),
            405
        );
        assert_eq!(
            route("GET", "/admin/nothing", "", b"")
                .unwrap_err()
                .status(),
            404
        );
        assert_eq!(
            route("GET", "/admin/usage", "group_by=week", b"")
                .unwrap_err()
                .status(),
            400
        );
    }

    #[test]
    fn users_see_only_their_own() {
        let user = Caller::User { key_id: 3 };
        assert!(permitted(user, &Command::Me).is_ok());
        assert!(permitted(user, &Command::GetKey(3)).is_ok());
        assert_eq!(
            permitted(user, &Command::GetKey(4)).unwrap_err().status(),
            403
        );
        let mine = UsageQuery {
            key_id: Some(3),
            ..UsageQuery::default()
        };
        assert!(permitted(user, &Command::Usage(mine)).is_ok());
        assert!(permitted(user, &Command::Usage(UsageQuery::default())).is_err());
        assert!(permitted(user, &Command::ListKeys).is_err());
        assert!(permitted(Caller::Admin { key_id: None }, &Command::ListKeys).is_ok());
    }
}
