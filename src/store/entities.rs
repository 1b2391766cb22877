//! Channels and gateways as data (A1): one row each, the entry as JSON in the YAML's
//! own field names, a channel's provider keys sealed apart. Every change is checked
//! against the whole config (the file's entries and the store's) inside the
//! transaction that makes it: an entry that would not load is never written.

use super::db::Sql;
use super::ops::{bump, OpResult};
use super::sealed::Sealer;
use crate::args;
use serde_json::{Map, Value};
use weir_filters::config::{
    ChannelConfig, FileConfig, GatewayConfig, Runtime, Stored, WebhookConfig,
};
use weir_filters::GatewayError;

/// One write to the stored entities.
#[derive(Debug, Clone)]
pub enum Change {
    CreateChannel(Value),
    PatchChannel(String, Map<String, Value>),
    DeleteChannel(String),
    CreateGateway(Value),
    PatchGateway(String, Map<String, Value>),
    DeleteGateway(String),
    CreateWebhook(Value),
    /// `config`'s fields are merged into the webhook's: a secret left out is kept.
    PatchWebhook(String, Map<String, Value>),
    DeleteWebhook(String),
}

impl Change {
    /// The kind of entity it writes (`channel`, `gateway`, `webhook`) and its name
    /// (empty when a created entry names none: the entry's check reports it).
    pub fn target(&self) -> (&'static str, String) {
        let named = |v: &Value| {
            v.get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        match self {
            Change::CreateChannel(v) => ("channel", named(v)),
            Change::PatchChannel(n, _) | Change::DeleteChannel(n) => ("channel", n.clone()),
            Change::CreateGateway(v) => ("gateway", named(v)),
            Change::PatchGateway(n, _) | Change::DeleteGateway(n) => ("gateway", n.clone()),
            Change::CreateWebhook(v) => ("webhook", named(v)),
            Change::PatchWebhook(n, _) | Change::DeleteWebhook(n) => ("webhook", n.clone()),
        }
    }

    pub fn deletes(&self) -> bool {
        matches!(
            self,
            Change::DeleteChannel(_) | Change::DeleteGateway(_) | Change::DeleteWebhook(_)
        )
    }

    pub fn creates(&self) -> bool {
        matches!(
            self,
            Change::CreateChannel(_) | Change::CreateGateway(_) | Change::CreateWebhook(_)
        )
    }
}

/// The stored channels and gateways, keys opened.
pub fn load(db: &mut dyn Sql, sealer: Option<&Sealer>) -> OpResult<Stored> {
    let mut stored = Stored::default();
    let rows = db.rows(
        "SELECT name, config, keys FROM channels ORDER BY name",
        args![],
        |r| {
            Ok((
                r.get::<String>(0)?,
                r.get::<String>(1)?,
                r.get::<Option<Vec<u8>>>(2)?,
            ))
        },
    )?;
    for (name, config, keys) in rows {
        let mut c: ChannelConfig = serde_json::from_str(&config)
            .map_err(|e| GatewayError::Internal(format!("stored channel `{name}`: {e}")))?;
        open_secrets(&mut c, keys.as_deref(), sealer)?;
        stored.channels.push(c);
    }
    let rows = db.rows(
        "SELECT name, config FROM gateways ORDER BY name",
        args![],
        |r| Ok((r.get::<String>(0)?, r.get::<String>(1)?)),
    )?;
    for (name, config) in rows {
        stored.gateways.push(
            serde_json::from_str(&config)
                .map_err(|e| GatewayError::Internal(format!("stored gateway `{name}`: {e}")))?,
        );
    }
    stored.webhooks = load_webhooks(db, sealer)?;
    Ok(stored)
}

fn load_webhooks(db: &mut dyn Sql, sealer: Option<&Sealer>) -> OpResult<Vec<WebhookConfig>> {
    let rows = db.rows(
        "SELECT name, config FROM webhooks ORDER BY name",
        args![],
        |r| Ok((r.get::<String>(0)?, r.get::<Vec<u8>>(1)?)),
    )?;
    let mut out = Vec::new();
    for (name, sealed) in rows {
        let sealer = sealer.ok_or_else(|| {
            GatewayError::Internal(format!(
                "stored webhook `{name}` is sealed, and storage.secret_key is not set"
            ))
        })?;
        let plain = sealer
            .open(&sealed)
            .map_err(|e| GatewayError::Internal(format!("stored webhook `{name}`: {e}")))?;
        out.push(
            serde_json::from_slice(&plain)
                .map_err(|e| GatewayError::Internal(format!("stored webhook `{name}`: {e}")))?,
        );
    }
    Ok(out)
}

/// What a channel's sealed column holds: its provider keys (as first stored), or
/// the keys and a proxy URL that carries a password.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum Secrets {
    Keys(Vec<String>),
    With {
        keys: Vec<String>,
        #[serde(default)]
        proxy: Option<String>,
    },
}

/// `http://user:pass@host`: the part before the host carries credentials.
fn has_credentials(proxy: &str) -> bool {
    let rest = proxy.trim().strip_prefix("http://").unwrap_or(proxy);
    rest.split(['/', '?', '#'])
        .next()
        .unwrap_or("")
        .contains('@')
}

/// Opens a stored channel's sealed column into it: its keys, and its proxy when
/// the proxy was sealed.
fn open_secrets(
    c: &mut ChannelConfig,
    sealed: Option<&[u8]>,
    sealer: Option<&Sealer>,
) -> OpResult<()> {
    match open_keys(&c.name, sealed, sealer)? {
        Secrets::Keys(keys) => c.keys = keys,
        Secrets::With { keys, proxy } => {
            c.keys = keys;
            if proxy.is_some() {
                c.proxy = proxy;
            }
        }
    }
    Ok(())
}

fn open_keys(name: &str, sealed: Option<&[u8]>, sealer: Option<&Sealer>) -> OpResult<Secrets> {
    let Some(sealed) = sealed else {
        return Ok(Secrets::Keys(Vec::new()));
    };
    let sealer = sealer.ok_or_else(|| {
        GatewayError::Internal(format!(
            "stored channel `{name}` has sealed keys or proxy credentials, and storage.secret_key is not set"
        ))
    })?;
    let plain = sealer
        .open(sealed)
        .map_err(|e| GatewayError::Internal(format!("stored channel `{name}`: {e}")))?;
    serde_json::from_slice(&plain)
        .map_err(|e| GatewayError::Internal(format!("stored channel `{name}` keys: {e}")))
}

/// Applies `change` in one transaction, after checking that the file and the store
/// together still make a valid config; returns the stored entities as they now are.
pub fn apply(
    db: &mut dyn Sql,
    change: Change,
    sealer: Option<&Sealer>,
    file: &FileConfig,
    now: i64,
) -> OpResult<Stored> {
    let mut tx = db.begin()?;
    let mut stored = load(&mut *tx, sealer)?;
    let (kind, name) = edit(&mut stored, change)?;
    if let Err(e) = Runtime::build_with(file.clone(), stored.clone()) {
        return Err(GatewayError::BadRequest(format!(
            "the {kind} would not load: {e}"
        )));
    }
    match kind {
        "channel" => match stored.channels.iter().find(|c| c.name == name) {
            Some(c) => write_channel(&mut *tx, c, sealer, now)?,
            None => delete(&mut *tx, "channels", &name)?,
        },
        "webhook" => match stored.webhooks.iter().find(|w| w.name == name) {
            Some(w) => write_webhook(&mut *tx, w, sealer, now)?,
            None => delete(&mut *tx, "webhooks", &name)?,
        },
        _ => match stored.gateways.iter().find(|g| g.name == name) {
            Some(g) => write_gateway(&mut *tx, g, now)?,
            None => delete(&mut *tx, "gateways", &name)?,
        },
    }
    bump(&mut *tx)?;
    tx.commit()?;
    Ok(stored)
}

/// The change made to the list in memory; returns which entity it touched.
fn edit(stored: &mut Stored, change: Change) -> OpResult<(&'static str, String)> {
    match change {
        Change::CreateChannel(v) => {
            let c: ChannelConfig = entry("channel", v)?;
            if stored.channels.iter().any(|x| x.name == c.name) {
                return Err(exists("channel", &c.name));
            }
            let name = c.name.clone();
            stored.channels.push(c);
            Ok(("channel", name))
        }
        Change::PatchChannel(name, patch) => {
            let i = position(&stored.channels, |c| c.name == name, "channel", &name)?;
            stored.channels[i] = patched("channel", &stored.channels[i], &name, patch)?;
            Ok(("channel", name))
        }
        Change::DeleteChannel(name) => {
            let i = position(&stored.channels, |c| c.name == name, "channel", &name)?;
            stored.channels.remove(i);
            Ok(("channel", name))
        }
        Change::CreateGateway(v) => {
            let g: GatewayConfig = entry("gateway", v)?;
            if stored.gateways.iter().any(|x| x.name == g.name) {
                return Err(exists("gateway", &g.name));
            }
            let name = g.name.clone();
            stored.gateways.push(g);
            Ok(("gateway", name))
        }
        Change::PatchGateway(name, patch) => {
            let i = position(&stored.gateways, |g| g.name == name, "gateway", &name)?;
            stored.gateways[i] = patched("gateway", &stored.gateways[i], &name, patch)?;
            Ok(("gateway", name))
        }
        Change::DeleteGateway(name) => {
            let i = position(&stored.gateways, |g| g.name == name, "gateway", &name)?;
            stored.gateways.remove(i);
            Ok(("gateway", name))
        }
        Change::CreateWebhook(v) => {
            let w: WebhookConfig = entry("webhook", v)?;
            if stored.webhooks.iter().any(|x| x.name == w.name) {
                return Err(exists("webhook", &w.name));
            }
            let name = w.name.clone();
            stored.webhooks.push(w);
            Ok(("webhook", name))
        }
        Change::PatchWebhook(name, mut patch) => {
            let i = position(&stored.webhooks, |w| w.name == name, "webhook", &name)?;
            if let Some(Value::Object(fields)) = patch.get_mut("config") {
                let mut merged = serde_json::to_value(&stored.webhooks[i].config)
                    .map_err(|e| GatewayError::Internal(e.to_string()))?;
                for (k, v) in std::mem::take(fields) {
                    merged[k] = v;
                }
                patch.insert("config".into(), merged);
            }
            stored.webhooks[i] = patched("webhook", &stored.webhooks[i], &name, patch)?;
            Ok(("webhook", name))
        }
        Change::DeleteWebhook(name) => {
            let i = position(&stored.webhooks, |w| w.name == name, "webhook", &name)?;
            stored.webhooks.remove(i);
            Ok(("webhook", name))
        }
    }
}

fn exists(kind: &str, name: &str) -> GatewayError {
    GatewayError::Conflict(format!(
        "a stored {kind} named `{name}` exists; PATCH it or pick another name"
    ))
}

fn position<T>(list: &[T], is: impl Fn(&T) -> bool, kind: &str, name: &str) -> OpResult<usize> {
    list.iter()
        .position(is)
        .ok_or_else(|| GatewayError::NotFound(format!("no stored {kind} named `{name}`")))
}

/// An entry from the API's JSON, with the field path of whatever is wrong.
fn entry<T: serde::de::DeserializeOwned>(kind: &str, v: Value) -> OpResult<T> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        GatewayError::BadRequest(if path == "." {
            format!("{kind}: {inner}")
        } else {
            format!("{kind}.{path}: {inner}")
        })
    })
}

/// `current` with the patch's fields replaced (`null` puts a field back to its
/// default); the name stays.
fn patched<T>(kind: &str, current: &T, name: &str, patch: Map<String, Value>) -> OpResult<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    if patch.get("name").is_some_and(|n| n.as_str() != Some(name)) {
        return Err(GatewayError::BadRequest(format!(
            "{kind}.name: a {kind} cannot be renamed; create a new one and delete this"
        )));
    }
    let mut v = serde_json::to_value(current).map_err(|e| GatewayError::Internal(e.to_string()))?;
    let Value::Object(fields) = &mut v else {
        return Err(GatewayError::Internal(format!("{kind} is not an object")));
    };
    for (k, value) in patch {
        if value.is_null() {
            fields.remove(&k);
        } else {
            fields.insert(k, value);
        }
    }
    entry(kind, v)
}

pub(super) fn write_channel(
    tx: &mut dyn Sql,
    c: &ChannelConfig,
    sealer: Option<&Sealer>,
    now: i64,
) -> OpResult<()> {
    // A proxy URL with a password is a secret too: sealed beside the keys.
    let secret_proxy = c.proxy.clone().filter(|p| has_credentials(p));
    let keys = if c.keys.is_empty() && secret_proxy.is_none() {
        None
    } else {
        let sealer = sealer.ok_or_else(|| {
            let what = if c.keys.is_empty() {
                "channel.proxy: storing a proxy password"
            } else {
                "channel.keys: storing provider keys"
            };
            GatewayError::BadRequest(format!(
                "{what} needs storage.secret_key (set it from the environment, e.g. \
                 `secret_key: ${{WEIR_SECRET_KEY}}`)"
            ))
        })?;
        let secrets = match &secret_proxy {
            None => Secrets::Keys(c.keys.clone()),
            Some(proxy) => Secrets::With {
                keys: c.keys.clone(),
                proxy: Some(proxy.clone()),
            },
        };
        let plain =
            serde_json::to_vec(&secrets).map_err(|e| GatewayError::Internal(e.to_string()))?;
        Some(sealer.seal(&plain).map_err(GatewayError::Internal)?)
    };
    // The entry without its secrets: they live only in the sealed column.
    let mut bare = c.clone();
    bare.keys.clear();
    if secret_proxy.is_some() {
        bare.proxy = None;
    }
    let config = serde_json::to_string(&bare).map_err(|e| GatewayError::Internal(e.to_string()))?;
    tx.execute(
        "INSERT INTO channels (name, config, keys, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)
         ON CONFLICT (name) DO UPDATE SET config = excluded.config, keys = excluded.keys,
         updated_at = excluded.updated_at",
        args![&c.name, config, keys, now],
    )?;
    Ok(())
}

/// The whole webhook sealed: its app secret, key and encrypt key are secrets.
fn write_webhook(
    tx: &mut dyn Sql,
    w: &WebhookConfig,
    sealer: Option<&Sealer>,
    now: i64,
) -> OpResult<()> {
    let sealer = sealer.ok_or_else(|| {
        GatewayError::BadRequest(
            "webhook: storing a webhook's secrets needs storage.secret_key (set it from the \
             environment, e.g. `secret_key: ${WEIR_SECRET_KEY}`)"
                .into(),
        )
    })?;
    let plain = serde_json::to_vec(w).map_err(|e| GatewayError::Internal(e.to_string()))?;
    let sealed = sealer.seal(&plain).map_err(GatewayError::Internal)?;
    tx.execute(
        "INSERT INTO webhooks (name, provider, config, created_at, updated_at) VALUES (?1, 'feishu', ?2, ?3, ?3)
         ON CONFLICT (name) DO UPDATE SET config = excluded.config, updated_at = excluded.updated_at",
        args![&w.name, sealed, now],
    )?;
    Ok(())
}

fn write_gateway(tx: &mut dyn Sql, g: &GatewayConfig, now: i64) -> OpResult<()> {
    let config = serde_json::to_string(g).map_err(|e| GatewayError::Internal(e.to_string()))?;
    tx.execute(
        "INSERT INTO gateways (name, config, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)
         ON CONFLICT (name) DO UPDATE SET config = excluded.config, updated_at = excluded.updated_at",
        args![&g.name, config, now],
    )?;
    Ok(())
}

fn delete(tx: &mut dyn Sql, table: &str, name: &str) -> OpResult<()> {
    // `table` is one of the constants above, never input.
    tx.execute(&format!("DELETE FROM {table} WHERE name = ?1"), args![name])?;
    Ok(())
}
