//! Accounts as data: keys, their roles, groups, models and prices, usage queries, and
//! the checks every writer of them (admin API, CLI, importers) applies the same way.
//! The admin crate and the store both take these types from here.

use crate::GatewayError;
use serde::{Deserialize, Serialize};

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
    /// Who serves it: a channel type (`openai`, `anthropic`…) or a channel's name.
    #[serde(default)]
    pub provider: Option<String>,
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
    Channel,
    Day,
    Hour,
}

impl UsageQuery {
    /// Parses `group_by=key|gateway|model|channel|day|hour&key_id=&gateway=&model=&from=&to=`;
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
                        "channel" => UsageGroup::Channel,
                        "day" => UsageGroup::Day,
                        "hour" => UsageGroup::Hour,
                        other => {
                            return Err(GatewayError::BadRequest(format!(
                                "group_by `{other}`: use key, gateway, model, channel, day or hour"
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

/// RFC 3339 of unix seconds, UTC (`None` outside the years 1970 to 9999).
pub fn format_time(unix: i64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
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
