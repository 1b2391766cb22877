//! The admin API's requests, typed and validated here so that the gateway only ever
//! executes well-formed commands.

use serde::Deserialize;
use weir_filters::accounts::{KeyPatch, ModelDef, NewGroup, NewKey, UsageQuery};
use weir_filters::calllog::{ExportFormat, LogQuery};
use weir_filters::one_api::ImportRequest;
use weir_filters::people::{self, ImportOptions, Person, RowError};
use weir_filters::GatewayError;

/// Who calls the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The bootstrap `server.admin_key`, or a stored key with role `admin`.
    Admin { key_id: Option<i64> },
    /// A stored key with role `user`: its own data only.
    User { key_id: i64 },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopUp {
    pub amount: f64,
}

/// The body of a channel test: which models (default: all of the channel's), and
/// whether a suspended channel that passes is admitted again.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelTest {
    #[serde(default)]
    pub models: Option<Vec<String>>,
    #[serde(default)]
    pub readmit: bool,
}

/// Docking (A6): where a provider is and its key; with `save`, the channel is
/// stored under `name`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Discover {
    #[serde(rename = "type")]
    pub kind: String,
    pub base_url: String,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub save: bool,
    #[serde(default)]
    pub name: Option<String>,
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
    /// `POST /admin/channels`: the YAML channel fields as JSON.
    CreateChannel(serde_json::Value),
    GetChannel(String),
    PatchChannel(String, serde_json::Map<String, serde_json::Value>),
    DeleteChannel(String),
    /// `POST /admin/channels/discover`.
    Discover(Discover),
    /// `POST /admin/channels/{name}/test`.
    TestChannel(String, ChannelTest),
    CreateGateway(serde_json::Value),
    GetGateway(String),
    PatchGateway(String, serde_json::Map<String, serde_json::Value>),
    DeleteGateway(String),
    /// `GET /admin/webhooks`: the bot webhooks (A9), secrets as hints.
    Webhooks,
    CreateWebhook(serde_json::Value),
    GetWebhook(String),
    PatchWebhook(String, serde_json::Map<String, serde_json::Value>),
    DeleteWebhook(String),
    /// `GET /admin/logs`: a page of the call log.
    Logs(LogQuery),
    /// `GET /admin/logs/{id}`: one call with its bodies.
    Log(i64),
    /// `GET /admin/logs/export`: every row the filters select, streamed.
    ExportLogs(LogQuery, ExportFormat),
    /// `POST /admin/keys/import`: a key per person of a CSV body (K2), with the
    /// rows that could not be read.
    ImportKeys(ImportOptions, Vec<Person>, Vec<RowError>),
    /// `GET /admin/mail?status=`: where each imported key's mail stands.
    Mail(Option<MailStatus>),
    /// `POST /admin/import/one-api`: channels (and tokens) from a One API or New API
    /// database (A7).
    ImportOneApi(ImportRequest),
    /// `POST /admin/keys/{id}/mail`: a new secret for the key, mailed to its email
    /// (the way to recover a mail that failed).
    MailKey(i64),
}

/// The state of one key's mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailStatus {
    Queued,
    Sent,
    Failed,
}

impl MailStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MailStatus::Queued => "queued",
            MailStatus::Sent => "sent",
            MailStatus::Failed => "failed",
        }
    }

    fn parse_query(query: &str) -> Result<Option<MailStatus>, GatewayError> {
        let mut status = None;
        for (k, v) in query.split('&').filter_map(|p| p.split_once('=')) {
            match (k, v) {
                ("status", "") => {}
                ("status", "queued") => status = Some(MailStatus::Queued),
                ("status", "sent") => status = Some(MailStatus::Sent),
                ("status", "failed") => status = Some(MailStatus::Failed),
                ("status", other) => {
                    return Err(GatewayError::BadRequest(format!(
                        "status: `{other}` is not queued, sent or failed"
                    )))
                }
                (other, _) => {
                    return Err(GatewayError::BadRequest(format!(
                        "`{other}` is not a filter of /admin/mail (status)"
                    )))
                }
            }
        }
        Ok(status)
    }
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

/// A JSON object body (an entity's fields).
fn json_object(body: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, GatewayError> {
    match json_body::<serde_json::Value>(body)? {
        serde_json::Value::Object(m) => Ok(m),
        _ => Err(GatewayError::BadRequest(
            "the body must be a JSON object of the entry's fields".into(),
        )),
    }
}

fn top_up_amount(body: &[u8]) -> Result<f64, GatewayError> {
    let amount = json_body::<self::TopUp>(body)?.amount;
    if !(amount.is_finite() && amount > 0.0 && amount <= 1e12) {
        return Err(GatewayError::BadRequest(
            "amount must be a positive number up to 1e12".into(),
        ));
    }
    Ok(amount)
}

/// `PUT /admin/models/{name}`: the body names the same model as the path.
fn model_at(segment: &str, body: &[u8]) -> Result<ModelDef, GatewayError> {
    let m: ModelDef = json_body(body)?;
    if m.name != decode_segment(segment) {
        return Err(GatewayError::BadRequest(
            "the body's `name` must match the path".into(),
        ));
    }
    Ok(m)
}

/// A path the API serves with some method (so another method is 405, not 404).
fn known_path(segs: &[&str]) -> bool {
    matches!(
        segs,
        ["reload" | "channels" | "config" | "keys" | "groups" | "models" | "usage"]
            | ["gateways" | "me" | "logs" | "mail" | "webhooks"]
            | [
                "keys" | "groups" | "models" | "channels" | "gateways" | "logs" | "webhooks",
                _
            ]
            | ["keys", _, "reset" | "topup" | "models" | "mail"]
            | ["groups", _, "models"]
            | ["channels", _, "test"]
            | ["me", "usage"]
            | ["import", "one-api"]
    )
}

/// Channels and gateways as data (A1): `None` for any other path.
fn entity_route(segs: &[&str], method: &str, body: &[u8]) -> Result<Option<Command>, GatewayError> {
    use Command::*;
    Ok(Some(match (segs, method) {
        (["channels"], "POST") => CreateChannel(json_object(body)?.into()),
        (["channels", "discover"], "POST") => Discover(json_body(body)?),
        (["channels", name], "GET") => GetChannel(decode_segment(name)),
        (["channels", name], "PATCH") => PatchChannel(decode_segment(name), json_object(body)?),
        (["channels", name], "DELETE") => DeleteChannel(decode_segment(name)),
        (["channels", name, "test"], "POST") => {
            let test = if body.iter().all(u8::is_ascii_whitespace) {
                ChannelTest::default()
            } else {
                json_body(body)?
            };
            TestChannel(decode_segment(name), test)
        }
        (["gateways"], "POST") => CreateGateway(json_object(body)?.into()),
        (["gateways", name], "GET") => GetGateway(decode_segment(name)),
        (["gateways", name], "PATCH") => PatchGateway(decode_segment(name), json_object(body)?),
        (["gateways", name], "DELETE") => DeleteGateway(decode_segment(name)),
        (["webhooks"], "GET") => Webhooks,
        (["webhooks"], "POST") => CreateWebhook(json_object(body)?.into()),
        (["webhooks", name], "GET") => GetWebhook(decode_segment(name)),
        (["webhooks", name], "PATCH") => PatchWebhook(decode_segment(name), json_object(body)?),
        (["webhooks", name], "DELETE") => DeleteWebhook(decode_segment(name)),
        _ => return Ok(None),
    }))
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
    if let Some(cmd) = entity_route(&segs, method, body)? {
        return Ok(cmd);
    }
    use Command::*;
    Ok(match (segs.as_slice(), method) {
        (["reload"], "POST") => Reload,
        (["channels"], "GET") => Channels,
        (["config"], "GET") => Config,
        (["keys"], "GET") => ListKeys,
        (["keys"], "POST") => CreateKey(json_body(body)?),
        (["keys", "import"], "POST") => {
            let options = ImportOptions::parse(query)?;
            let (found, errors) = people::parse(body)?;
            ImportKeys(options, found, errors)
        }
        (["keys", id], "GET") => GetKey(id_of(id)?),
        (["keys", id], "PATCH") => UpdateKey(id_of(id)?, json_body(body)?),
        (["keys", id], "DELETE") => DeleteKey(id_of(id)?),
        (["keys", id, "reset"], "POST") => ResetKey(id_of(id)?),
        (["keys", id, "mail"], "POST") => MailKey(id_of(id)?),
        (["mail"], "GET") => Mail(MailStatus::parse_query(query)?),
        (["import", "one-api"], "POST") => ImportOneApi(json_body(body)?),
        (["keys", id, "topup"], "POST") => TopUp(id_of(id)?, top_up_amount(body)?),
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
        (["models", name], "PUT") => PutModel(model_at(name, body)?),
        (["models", name], "DELETE") => DeleteModel(decode_segment(name)),
        (["usage"], "GET") => Usage(UsageQuery::parse(query)?),
        (["gateways"], "GET") => Gateways,
        (["me"], "GET") => Me,
        (["me", "usage"], "GET") => MyUsage(UsageQuery::parse(query)?),
        (["logs"], "GET") => Logs(LogQuery::parse(query, false)?.0),
        (["logs", "export"], "GET") => {
            let (q, format) = LogQuery::parse(query, true)?;
            ExportLogs(q, format)
        }
        (["logs", id], "GET") => Log(id
            .parse()
            .map_err(|_| GatewayError::BadRequest(format!("`{id}` is not a call id")))?),
        (segs, _) if known_path(segs) => return Err(wrong()),
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
        // The backend scopes these to the caller's own rows.
        Command::Me | Command::MyUsage(_) | Command::Log(_) => true,
        Command::Logs(q) | Command::ExportLogs(q, _) => q.key_id.is_none_or(|k| k == own),
        Command::GetKey(id) => *id == own,
        Command::Usage(q) => q.key_id == Some(own),
        _ => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(GatewayError::Forbidden {
            code: "admin_only",
            message: "a user key may read only its own key, usage and calls (/admin/me, /admin/me/usage, /admin/logs)"
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
