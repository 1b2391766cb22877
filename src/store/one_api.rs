//! The write side of the One API / New API import (A7): the plan applied in one
//! transaction, channels by their stable names and tokens by their hashes, so that a
//! second run of the same source finds everything unchanged. A dry run makes the
//! same writes and rolls them back: what it reports is what a real run would do.

use super::db::Sql;
use super::entities::{self, write_channel};
use super::ops::{bump, insert_key_with, OpResult};
use super::sealed::Sealer;
use crate::args;
use crate::one_api::Plan;
use serde_json::{json, Value};
use weir_filters::accounts::{check_name, NewKey, Role};
use weir_filters::auth::hash_key;
use weir_filters::config::{ChannelConfig, FileConfig, Runtime, Stored};
use weir_filters::GatewayError;

#[derive(Default)]
struct Counts {
    created: usize,
    updated: usize,
    unchanged: usize,
}

impl Counts {
    fn json(&self) -> Value {
        json!({"created": self.created, "updated": self.updated, "unchanged": self.unchanged})
    }
}

/// What the import did (or, dry, would do) and the stored entities after it.
pub struct Applied {
    pub report: Value,
    pub stored: Stored,
}

/// Whether the stored channel already is what the source says. `suspended` is not
/// compared: it is taken off once the channel has entered suspended, and from then
/// on weir's health decides.
fn same(stored: &ChannelConfig, planned: &ChannelConfig) -> bool {
    let planned = ChannelConfig {
        suspended: stored.suspended,
        ..planned.clone()
    };
    serde_json::to_value(stored).ok() == serde_json::to_value(&planned).ok()
}

pub fn apply(
    db: &mut dyn Sql,
    plan: &Plan,
    sealer: Option<&Sealer>,
    file: &FileConfig,
    dry_run: bool,
    now: i64,
) -> OpResult<Applied> {
    let mut tx = db.begin()?;
    let mut stored = entities::load(&mut *tx, sealer)?;
    let mut errors = plan.errors.clone();
    let mut steps = Vec::new();
    let mut channels = Counts::default();
    let mut changed = Vec::new();
    for p in &plan.channels {
        let name = &p.channel.name;
        if file.channels.iter().any(|c| &c.name == name) {
            errors.push(json!({"channel": p.source_id, "message": format!("`{name}` is defined in the file; rename one or import with another prefix")}));
            continue;
        }
        let action = match stored.channels.iter().position(|c| &c.name == name) {
            Some(i) if same(&stored.channels[i], &p.channel) => "unchanged",
            Some(i) => {
                stored.channels[i] = p.channel.clone();
                "updated"
            }
            None => {
                stored.channels.push(p.channel.clone());
                "created"
            }
        };
        match action {
            "unchanged" => channels.unchanged += 1,
            "updated" => channels.updated += 1,
            _ => channels.created += 1,
        }
        if action != "unchanged" {
            changed.push(name.clone());
        }
        steps.push(json!({
            "channel": name, "source_id": p.source_id, "source_name": p.source_name,
            "action": action, "type": p.channel.kind.as_str(), "enabled": p.channel.enabled,
            "suspended": p.channel.suspended, "notes": p.notes,
        }));
    }
    if let Err(e) = Runtime::build_with(file.clone(), stored.clone()) {
        return Err(GatewayError::BadRequest(format!(
            "the imported channels would not load, nothing was changed: {e}"
        )));
    }
    for c in stored.channels.iter().filter(|c| changed.contains(&c.name)) {
        write_channel(&mut *tx, c, sealer, now)?;
    }
    let keys = import_keys(&mut *tx, plan, &mut steps, &mut errors, now)?;
    if !dry_run {
        bump(&mut *tx)?;
        tx.commit()?;
    }
    let report = json!({
        "source": plan.fork.as_str(), "dry_run": dry_run,
        "channels": channels.json(), "keys": keys.json(), "plan": steps, "errors": errors,
    });
    Ok(Applied { report, stored })
}

/// Tokens become keys under their own secret's hash; one already there is left as
/// it is (weir keeps its own balance and usage from the first import on).
fn import_keys(
    tx: &mut dyn Sql,
    plan: &Plan,
    steps: &mut Vec<Value>,
    errors: &mut Vec<Value>,
    now: i64,
) -> OpResult<Counts> {
    let mut keys = Counts::default();
    for k in &plan.keys {
        let existing: Option<i64> = tx.value::<i64>(
            "SELECT id FROM keys WHERE key_hash = ?1",
            args![hash_key(&k.secret)],
        )?;
        if let Some(id) = existing {
            keys.unchanged += 1;
            steps.push(
                json!({"key": id, "source_id": k.source_id, "name": k.name, "action": "unchanged"}),
            );
            continue;
        }
        if let Err(e) = check_name("name", &k.name) {
            errors.push(json!({"token": k.source_id, "message": e.to_string()}));
            continue;
        }
        let new_group = tx.execute(
            "INSERT INTO groups (name, description) VALUES (?1, 'imported from One API')
             ON CONFLICT DO NOTHING",
            args![&k.group],
        )? > 0;
        let new = NewKey {
            name: k.name.clone(),
            role: Role::User,
            group: k.group.clone(),
            email: None,
            monthly_budget: None,
            balance: k.balance,
            expires_at: k.expires_at.map(|e| e.to_string()),
            models: k.models.clone(),
        };
        let id = insert_key_with(&mut *tx, &new, &k.secret, now)?;
        if !k.active {
            tx.execute("UPDATE keys SET active = 0 WHERE id = ?1", args![id])?;
        }
        keys.created += 1;
        steps.push(json!({
            "key": id, "source_id": k.source_id, "name": k.name, "action": "created",
            "group": k.group, "group_created": new_group, "balance": k.balance,
            "expires_at": k.expires_at, "active": k.active, "models": k.models,
        }));
    }
    Ok(keys)
}
