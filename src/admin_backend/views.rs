//! The admin API's JSON views of the running gateway: keys with their money,
//! channels with their health, gateways with their quota, the group and model
//! registries. Never a secret: keys by prefix, provider keys by hint.

use crate::accounts::{now_unix, KeyRecord};
use crate::state::AppState;
use crate::store::ops;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use weir_filters::accounts::format_time as rfc3339;
use weir_filters::config;
use weir_filters::health::HealthId;
use weir_filters::people::RowError;
use weir_filters::GatewayError;

/// A key as the admin API shows it: never its secret, with its money.
pub fn key(state: &AppState, k: &KeyRecord) -> Value {
    let (balance, spent) = state.accounts.money_of(k.id, now_unix());
    let snap = state.accounts.snapshot();
    let granted = snap.granted(k).map(|g| {
        let mut v: Vec<String> = g.iter().cloned().collect();
        v.sort();
        v
    });
    json!({
        "id": k.id,
        "name": k.name,
        "role": k.role.as_str(),
        "group": k.group,
        "email": k.email,
        "prefix": k.prefix,
        "models": k.models,
        "usable_models": granted.map(Value::from).unwrap_or_else(|| Value::from("*")),
        "monthly_budget": k.monthly_budget,
        "spent_this_month": spent,
        "balance": balance,
        "expires_at": k.expires_at.and_then(rfc3339),
        "active": k.active,
        "created_at": rfc3339(k.created_at),
    })
}

pub fn key_by_id(state: &AppState, id: i64) -> Result<Value, GatewayError> {
    let snap = state.accounts.snapshot();
    let k = snap
        .keys_by_id
        .get(&id)
        .ok_or_else(|| GatewayError::NotFound(format!("no key with id {id}")))?;
    Ok(key(state, k))
}

pub fn keys(state: &AppState) -> Value {
    let snap = state.accounts.snapshot();
    let mut keys: Vec<_> = snap.keys_by_id.values().collect();
    keys.sort_by_key(|k| k.id);
    json!({"keys": keys.iter().map(|k| key(state, k)).collect::<Vec<_>>()})
}

/// Channels and keys with their health.
pub fn channels(state: &AppState) -> Value {
    let rt = state.snapshot();
    let channels: Vec<Value> = rt.channels.iter().map(|c| channel(state, c)).collect();
    json!({"version": state.version(), "channels": channels})
}

/// One channel by name, wherever it is defined.
pub fn channel_named(state: &AppState, name: &str) -> Result<Value, GatewayError> {
    let rt = state.snapshot();
    let c = rt
        .channels
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| GatewayError::NotFound(format!("no channel named `{name}`")))?;
    Ok(channel(state, c))
}

fn channel(state: &AppState, c: &config::Channel) -> Value {
    let keys: Vec<Value> = c
        .keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let r = state.health.report(&HealthId::key(&c.name, k));
            json!({"index": i, "hint": config::key_hint(k), "health": r})
        })
        .collect();
    json!({
        "name": c.name,
        "source": c.source,
        "type": c.kind.as_str(),
        "upstream": c.upstream.as_ref().map(|u| u.url.as_ref()),
        "enabled": c.enabled,
        "priority": c.priority,
        "weight": c.weight,
        "retries": c.retries,
        "groups": c.groups,
        "models": c.exposed,
        "api_version": c.api_version,
        // Its password hidden (`ForwardProxy::shown`).
        "proxy": c.proxy.as_ref().map(|p| p.shown.as_str()),
        "health": state.health.report(&HealthId::channel(&c.name)),
        "probe": state.probes.get(&c.name),
        "keys": keys,
    })
}

/// A webhook as the API shows it: its secrets as hints, where it is served.
fn webhook(w: &config::WebhookConfig, source: config::Source) -> Value {
    let c = &w.config;
    let hint = |v: &str| config::key_hint(v);
    json!({
        "name": w.name,
        "provider": w.provider,
        "source": source,
        "path": format!("/bot/feishu/{}/webhook/event", w.name),
        "config": {
            "appId": c.app_id,
            "appSecret": hint(&c.app_secret),
            "apiKey": hint(&c.api_key),
            "modelId": c.model_id,
            "verificationToken": c.verification_token.as_deref().map(hint),
            "encryptKey": c.encrypt_key.as_deref().map(hint),
            "api_base": c.api_base,
            "gateway": c.gateway,
        },
    })
}

pub fn webhooks(state: &AppState) -> Value {
    let rt = state.snapshot();
    let file = rt
        .file
        .webhooks
        .iter()
        .map(|w| webhook(w, config::Source::File));
    let stored = rt
        .stored
        .webhooks
        .iter()
        .map(|w| webhook(w, config::Source::Store));
    json!({"webhooks": file.chain(stored).collect::<Vec<_>>()})
}

pub fn webhook_named(state: &AppState, name: &str) -> Result<Value, GatewayError> {
    let rt = state.snapshot();
    rt.webhook(name)
        .map(|(w, source)| webhook(w, source))
        .ok_or_else(|| GatewayError::NotFound(format!("no webhook named `{name}`")))
}

/// Per gateway: tokens against the quota, and calls and tokens per hour of the day
/// that starts at `day_start` (G8), from the store's `(gateway, hour, calls, tokens)`.
pub fn gateways(state: &AppState, day_start: i64, hourly: &[(String, i64, i64, i64)]) -> Value {
    let rt = state.snapshot();
    let mut list: Vec<&config::Gateway> = rt.gateways.iter().collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    let list: Vec<Value> = list
        .into_iter()
        .map(|g| {
            let mut calls = vec![0i64; 24];
            let mut tokens = vec![0i64; 24];
            for (_, h, c, t) in hourly.iter().filter(|row| row.0 == g.name) {
                if let Some(slot) = usize::try_from(*h).ok().filter(|h| *h < 24) {
                    calls[slot] = *c;
                    tokens[slot] = *t;
                }
            }
            let mut v = gateway(state, g);
            v["today"] = rfc3339(day_start).into();
            v["calls_per_hour_today"] = calls.into();
            v["tokens_per_hour_today"] = tokens.into();
            v
        })
        .collect();
    json!({"gateways": list})
}

/// The active gateways' names and paths: where a key's holder may call.
pub fn gateway_paths(state: &AppState) -> Value {
    let rt = state.snapshot();
    let mut list: Vec<&config::Gateway> = rt.gateways.iter().filter(|g| g.active).collect();
    list.sort_by(|a, b| a.path.cmp(&b.path));
    list.iter()
        .map(|g| json!({"name": g.name, "path": g.path}))
        .collect::<Vec<_>>()
        .into()
}

/// One gateway by name, wherever it is defined.
pub fn gateway_named(state: &AppState, name: &str) -> Result<Value, GatewayError> {
    let rt = state.snapshot();
    let g = rt
        .gateways
        .iter()
        .find(|g| g.name == name)
        .ok_or_else(|| GatewayError::NotFound(format!("no gateway named `{name}`")))?;
    Ok(gateway(state, g))
}

fn gateway(state: &AppState, g: &config::Gateway) -> Value {
    json!({
        "name": g.name,
        "source": g.source,
        "path": g.path,
        "active": g.active,
        "token_quota": g.token_quota,
        "tokens_used": state.accounts.tokens_used(&g.name),
    })
}

/// Groups with their models and how many keys belong to each, by name.
pub fn groups(state: &AppState) -> Value {
    let snap = state.accounts.snapshot();
    let mut groups: Vec<Value> = snap
        .groups
        .iter()
        .map(|(name, models)| {
            let keys = snap
                .keys_by_id
                .values()
                .filter(|k| &k.group == name)
                .count();
            json!({
                "name": name,
                "description": snap.group_descriptions.get(name).cloned().flatten(),
                "models": models,
                "keys": keys,
            })
        })
        .collect();
    groups.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    json!({"groups": groups})
}

/// The model registry: the file's models, overridden by the store's.
pub fn models(state: &AppState) -> Value {
    let rt = state.snapshot();
    let snap = state.accounts.snapshot();
    let mut out: BTreeMap<String, Value> = rt
        .file
        .models
        .iter()
        .map(|m| {
            let v = json!({
                "name": m.name,
                "price_in": m.price_in,
                "price_out": m.price_out,
                "multimodal": m.multimodal,
                "config": m.config,
                "provider": m.provider,
                "source": "file",
            });
            (m.name.clone(), v)
        })
        .collect();
    for m in snap.models.values() {
        let mut v = serde_json::to_value(m).unwrap_or(Value::Null);
        v["source"] = Value::from("store");
        out.insert(m.name.clone(), v);
    }
    json!({"models": out.into_values().collect::<Vec<_>>()})
}

/// An import's answer: every row created, skipped or refused, by row number.
pub fn imported(done: ops::Imported, unreadable: Vec<RowError>, dry_run: bool) -> Value {
    let mut errors: Vec<Value> = unreadable
        .into_iter()
        .map(|e| json!({"row": e.row, "message": e.message}))
        .chain(done.errors)
        .collect();
    errors.sort_by_key(|e| e["row"].as_u64());
    json!({"dry_run": dry_run, "created": done.created, "skipped": done.skipped, "errors": errors})
}
