//! The gateway side of the admin API: runs the commands `weir_admin` routed and
//! permitted.

use crate::accounts::{now_unix, KeyRecord};
use crate::state::{AppState, ReloadOutcome};
use crate::store::{ops, queries};
use async_trait::async_trait;
use serde_json::{json, Value};
use weir_admin::api::{Caller, Command, Role, UsageGroup, UsageQuery};
use weir_admin::{is_bootstrap_key, AdminBackend};
use weir_filters::auth::hash_key;
use weir_filters::GatewayError;

fn rfc3339(unix: i64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

impl AppState {
    /// A key as the admin API shows it: never its secret, with its money.
    pub fn key_view(&self, k: &KeyRecord) -> Value {
        let month = crate::accounts::month_of(now_unix());
        let (balance, spent) = {
            let ledger = self
                .accounts
                .ledger
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            ledger
                .keys
                .get(&k.id)
                .map(|m| (m.balance, if m.month == month { m.spent } else { 0.0 }))
                .unwrap_or((None, 0.0))
        };
        let snap = self.accounts.snapshot();
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

    fn key_by_id(&self, id: i64) -> Result<Value, GatewayError> {
        let snap = self.accounts.snapshot();
        let k = snap
            .keys_by_id
            .get(&id)
            .ok_or_else(|| GatewayError::NotFound(format!("no key with id {id}")))?;
        Ok(self.key_view(k))
    }

    /// Per gateway: tokens against the quota, and calls per hour today (G8).
    async fn gateways_report(&self) -> Result<Value, GatewayError> {
        let now = now_unix();
        let day_start = now - now.rem_euclid(86_400);
        let hourly = self
            .store
            .read(move |c| queries::hourly(c, day_start))
            .await?;
        let rt = self.snapshot();
        let ledger_tokens: Vec<(String, u64)> = {
            let ledger = self
                .accounts
                .ledger
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            ledger
                .gateways
                .iter()
                .map(|(g, t)| (g.clone(), t.used))
                .collect()
        };
        let list: Vec<Value> = rt
            .file
            .gateways
            .iter()
            .map(|g| {
                let mut calls = vec![0i64; 24];
                let mut tokens = vec![0i64; 24];
                for (name, h, c, t) in &hourly {
                    if name == &g.name {
                        if let Some(slot) = usize::try_from(*h).ok().filter(|h| *h < 24) {
                            calls[slot] = *c;
                            tokens[slot] = *t;
                        }
                    }
                }
                let used = ledger_tokens
                    .iter()
                    .find(|(n, _)| n == &g.name)
                    .map(|(_, t)| *t)
                    .unwrap_or(0);
                json!({
                    "name": g.name,
                    "path": g.path,
                    "token_quota": g.token_quota,
                    "tokens_used": used,
                    "today": rfc3339(day_start),
                    "calls_per_hour_today": calls,
                    "tokens_per_hour_today": tokens,
                })
            })
            .collect();
        Ok(json!({"gateways": list}))
    }
}

#[async_trait]
impl AdminBackend for AppState {
    fn authenticate(&self, token: &str) -> Option<Caller> {
        if is_bootstrap_key(self.snapshot().server().admin_key.as_deref(), token) {
            return Some(Caller::Admin { key_id: None });
        }
        let snap = self.accounts.snapshot();
        let key = snap.keys_by_hash.get(&hash_key(token))?;
        if !key.active || key.expires_at.is_some_and(|t| t <= now_unix()) {
            return None;
        }
        Some(match key.role {
            Role::Admin => Caller::Admin {
                key_id: Some(key.id),
            },
            Role::User => Caller::User { key_id: key.id },
        })
    }

    async fn execute(&self, caller: Caller, cmd: Command) -> Result<(u16, Value), GatewayError> {
        let ok = |v: Value| Ok((200, v));
        let store = &self.store;
        match cmd {
            Command::Reload => {
                // File I/O and parsing: keep it off the async worker.
                let outcome = tokio::task::block_in_place(|| AppState::reload(self, "admin"))
                    .map_err(|problems| {
                        GatewayError::BadRequest(format!(
                            "config rejected, the previous config keeps serving: {problems}"
                        ))
                    })?;
                ok(match outcome {
                    ReloadOutcome::Reloaded { version } => {
                        json!({"reloaded": true, "version": version})
                    }
                    ReloadOutcome::Unchanged { version } => {
                        json!({"reloaded": false, "version": version})
                    }
                })
            }
            Command::Channels => ok(self.channels_report()),
            Command::Config => {
                ok(json!({"version": self.version(), "config": self.snapshot().redacted_json()}))
            }
            Command::CreateKey(new) => {
                let now = now_unix();
                let (id, secret) = store
                    .call(true, move |c| ops::create_key(c, &new, now))
                    .await?;
                let mut view = self.key_by_id(id)?;
                view["key"] = Value::from(secret);
                view["note"] = Value::from("the key is shown this once; weir keeps only its hash");
                Ok((201, view))
            }
            Command::ListKeys => {
                let snap = self.accounts.snapshot();
                let mut keys: Vec<_> = snap.keys_by_id.values().collect();
                keys.sort_by_key(|k| k.id);
                ok(json!({"keys": keys.iter().map(|k| self.key_view(k)).collect::<Vec<_>>()}))
            }
            Command::GetKey(id) => ok(self.key_by_id(id)?),
            Command::UpdateKey(id, patch) => {
                store
                    .call(true, move |c| ops::update_key(c, id, &patch))
                    .await?;
                ok(self.key_by_id(id)?)
            }
            Command::ResetKey(id) => {
                let secret = store.call(true, move |c| ops::reset_key(c, id)).await?;
                let mut view = self.key_by_id(id)?;
                view["key"] = Value::from(secret);
                view["note"] =
                    Value::from("the old key stopped working; the new one is shown this once");
                ok(view)
            }
            Command::TopUp(id, amount) => {
                store
                    .call(true, move |c| ops::top_up(c, id, amount))
                    .await?;
                ok(self.key_by_id(id)?)
            }
            Command::DeleteKey(id) => {
                store.call(true, move |c| ops::delete_key(c, id)).await?;
                ok(json!({"deleted": id}))
            }
            Command::ListGroups => {
                let snap = self.accounts.snapshot();
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
                ok(json!({"groups": groups}))
            }
            Command::CreateGroup(g) => {
                let name = g.name.clone();
                store.call(true, move |c| ops::create_group(c, &g)).await?;
                Ok((201, json!({"created": name})))
            }
            Command::DeleteGroup(name) => {
                let n = name.clone();
                store.call(true, move |c| ops::delete_group(c, &n)).await?;
                ok(json!({"deleted": name}))
            }
            Command::SetGroupModels(name, models) => {
                let (n, m) = (name.clone(), models.clone());
                store
                    .call(true, move |c| ops::set_group_models(c, &n, &m))
                    .await?;
                ok(json!({"group": name, "models": models}))
            }
            Command::ListModels => {
                // The registry: the file's models, overridden by the store's.
                let rt = self.snapshot();
                let snap = self.accounts.snapshot();
                let mut out: std::collections::BTreeMap<String, Value> = rt
                    .file
                    .models
                    .iter()
                    .map(|m| {
                        (
                            m.name.clone(),
                            json!({"name": m.name, "price_in": m.price_in, "price_out": m.price_out, "multimodal": m.multimodal, "config": m.config, "source": "file"}),
                        )
                    })
                    .collect();
                for m in snap.models.values() {
                    let mut v = serde_json::to_value(m).unwrap_or(Value::Null);
                    v["source"] = Value::from("store");
                    out.insert(m.name.clone(), v);
                }
                ok(json!({"models": out.into_values().collect::<Vec<_>>()}))
            }
            Command::PutModel(m) => {
                let view = serde_json::to_value(&m).unwrap_or(Value::Null);
                store.call(true, move |c| ops::upsert_model(c, &m)).await?;
                ok(view)
            }
            Command::DeleteModel(name) => {
                let n = name.clone();
                store.call(true, move |c| ops::delete_model(c, &n)).await?;
                ok(json!({"deleted": name}))
            }
            Command::Usage(q) => {
                let rows = store.read(move |c| queries::usage(c, &q)).await?;
                ok(json!({"usage": rows}))
            }
            Command::Gateways => ok(self.gateways_report().await?),
            Command::Me => match caller {
                Caller::Admin { key_id: None } => ok(json!({"role": "admin", "bootstrap": true})),
                Caller::Admin { key_id: Some(id) } | Caller::User { key_id: id } => {
                    ok(self.key_by_id(id)?)
                }
            },
            Command::MyUsage(q) => {
                let id = match caller {
                    Caller::Admin { key_id: Some(id) } | Caller::User { key_id: id } => id,
                    Caller::Admin { key_id: None } => {
                        return Err(GatewayError::BadRequest(
                            "the bootstrap admin key has no usage of its own; see /admin/usage"
                                .into(),
                        ))
                    }
                };
                if q.key_id.is_some_and(|k| k != id) {
                    return Err(GatewayError::Forbidden {
                        code: "admin_only",
                        message: "/admin/me/usage shows the calling key's own usage only".into(),
                    });
                }
                let q = UsageQuery {
                    key_id: Some(id),
                    group_by: q.group_by.or(Some(UsageGroup::Day)),
                    ..q
                };
                let (rows, calls) = store
                    .read(move |c| Ok((queries::usage(c, &q)?, queries::recent_calls(c, id, 50)?)))
                    .await?;
                ok(json!({"key": self.key_by_id(id)?, "usage": rows, "recent_calls": calls}))
            }
        }
    }

    fn metrics(&self) -> Vec<u8> {
        self.refresh_health_gauges();
        self.metrics.render()
    }
}
