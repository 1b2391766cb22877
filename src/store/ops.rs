//! Admin writes and the snapshot load, as plain functions on a connection: the
//! store's thread runs them for the admin API, `weir keys` runs them directly.

use super::db::Sql;
use crate::accounts::{AccountsSnapshot, BucketRow, KeyRecord, ModelRecord};
use crate::args;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use weir_filters::accounts::{check_money, check_name, KeyPatch, ModelDef, NewGroup, NewKey, Role};
use weir_filters::auth::{generate_key, hash_key};
use weir_filters::key_mail::KeyMail;
use weir_filters::people::{ImportOptions, Person};
use weir_filters::GatewayError;

pub type OpResult<T> = Result<T, GatewayError>;

/// Every write bumps this so other processes (and `weir keys`) notice it.
pub fn bump(tx: &mut dyn Sql) -> OpResult<()> {
    tx.execute(
        "UPDATE meta SET value = value + 1 WHERE key = 'version'",
        args![],
    )?;
    Ok(())
}

pub fn meta_version(db: &mut dyn Sql) -> OpResult<i64> {
    Ok(db.one::<i64>("SELECT value FROM meta WHERE key = 'version'", args![])?)
}

fn parse_expiry(v: &str) -> OpResult<i64> {
    weir_filters::accounts::parse_time(v)
}

fn group_exists(tx: &mut dyn Sql, name: &str) -> OpResult<()> {
    let found: Option<String> =
        tx.value::<String>("SELECT name FROM groups WHERE name = ?1", args![name])?;
    found.map(drop).ok_or_else(|| {
        GatewayError::BadRequest(format!("group `{name}` does not exist; create it first"))
    })
}

fn set_key_models(tx: &mut dyn Sql, id: i64, models: &[String]) -> OpResult<()> {
    tx.execute("DELETE FROM key_models WHERE key_id = ?1", args![id])?;
    for m in models {
        check_name("a model name", m)?;
        // A model named twice is granted once.
        tx.execute(
            "INSERT INTO key_models (key_id, model) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            args![id, m],
        )?;
    }
    Ok(())
}

/// The first characters of a key, safe to show.
fn prefix_of(key: &str) -> String {
    key.chars().take(7).collect()
}

/// Creates a key; returns its id and the secret, which is shown this once only.
pub fn create_key(db: &mut dyn Sql, new: &NewKey, now: i64) -> OpResult<(i64, String)> {
    check_name("name", &new.name)?;
    if let Some(b) = new.monthly_budget {
        check_money("monthly_budget", b)?;
    }
    if let Some(b) = new.balance {
        check_money("balance", b)?;
    }
    let mut tx = db.begin()?;
    group_exists(&mut *tx, &new.group)?;
    let (id, secret) = insert_key(&mut *tx, new, now)?;
    bump(&mut *tx)?;
    tx.commit()?;
    Ok((id, secret))
}

/// Writes one checked key in the transaction; answers its id and secret.
fn insert_key(tx: &mut dyn Sql, new: &NewKey, now: i64) -> OpResult<(i64, String)> {
    let secret = generate_key();
    let id = insert_key_with(tx, new, &secret, now)?;
    Ok((id, secret))
}

/// Writes one checked key whose secret is given (an imported token); only its hash
/// is kept.
pub(super) fn insert_key_with(
    tx: &mut dyn Sql,
    new: &NewKey,
    secret: &str,
    now: i64,
) -> OpResult<i64> {
    let expires = new.expires_at.as_deref().map(parse_expiry).transpose()?;
    // The new id comes back from the INSERT itself (both databases speak RETURNING).
    let id = tx.one::<i64>(
        "INSERT INTO keys (name, key_hash, prefix, role, group_name, email, monthly_budget, balance, expires_at, active, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 1, ?10) RETURNING id",
        args![&new.name, hash_key(secret), prefix_of(secret), new.role.as_str(), &new.group, &new.email, new.monthly_budget, new.balance, expires, now],
    )?;
    set_key_models(tx, id, &new.models)?;
    Ok(id)
}

/// Bulk import (K2): a key for each person whose email has none yet, in one
/// transaction (a dry run rolls it back and shows no secret). A second run of the
/// same file creates nothing.
/// With `mail`, each new key with an email is queued in the outbox, in the same
/// transaction, and handed back in `mails` for the mailer.
pub fn import_keys(
    db: &mut dyn Sql,
    people: &[Person],
    o: &ImportOptions,
    mail: bool,
    now: i64,
) -> OpResult<Imported> {
    if let Some(b) = o.monthly_budget {
        check_money("monthly_budget", b)?;
    }
    let mut tx = db.begin()?;
    group_exists(&mut *tx, &o.group)?;
    let mut out = Imported::default();
    for p in people {
        if let Some(e) = &p.email {
            let holder: Option<i64> = tx.value::<i64>(
                "SELECT id FROM keys WHERE lower(email) = lower(?1)",
                args![e],
            )?;
            if let Some(id) = holder {
                out.skipped
                    .push(json!({"row": p.row, "reason": format!("{e} already has key {id}")}));
                continue;
            }
        }
        let new = NewKey {
            name: p.name.clone(),
            role: Role::User,
            group: o.group.clone(),
            email: p.email.clone(),
            monthly_budget: o.monthly_budget,
            balance: None,
            expires_at: None,
            models: o.models.clone(),
        };
        if let Err(e) = check_name("name", &new.name) {
            out.errors
                .push(json!({"row": p.row, "message": e.to_string()}));
            continue;
        }
        let (id, secret) = insert_key(&mut *tx, &new, now)?;
        let mailed = match (&p.email, mail && !o.dry_run) {
            (Some(email), true) => {
                let m = KeyMail {
                    key_id: id,
                    name: p.name.clone(),
                    email: email.clone(),
                    key: secret.clone(),
                };
                super::mail::queue(&mut *tx, &m, now)?;
                out.mails.push(m);
                Value::from("queued")
            }
            _ => Value::Null,
        };
        let (id, key) = if o.dry_run {
            (Value::Null, Value::Null)
        } else {
            (id.into(), secret.into())
        };
        out.created.push(json!({"row": p.row, "id": id, "name": p.name, "email": p.email, "key": key, "mailed": mailed}));
    }
    // A dry run drops `tx` here, which rolls everything back.
    if !o.dry_run {
        bump(&mut *tx)?;
        tx.commit()?;
    }
    Ok(out)
}

/// What an import did, row by row.
#[derive(Debug, Default)]
pub struct Imported {
    pub created: Vec<Value>,
    /// The keys to mail, already queued in the outbox.
    pub mails: Vec<KeyMail>,
    pub skipped: Vec<Value>,
    pub errors: Vec<Value>,
}

fn key_exists(tx: &mut dyn Sql, id: i64) -> OpResult<()> {
    let found: Option<i64> = tx.value::<i64>("SELECT id FROM keys WHERE id = ?1", args![id])?;
    found
        .map(drop)
        .ok_or_else(|| GatewayError::NotFound(format!("no key with id {id}")))
}

pub fn update_key(db: &mut dyn Sql, id: i64, p: &KeyPatch) -> OpResult<()> {
    let mut tx = db.begin()?;
    key_exists(&mut *tx, id)?;
    if let Some(name) = &p.name {
        check_name("name", name)?;
        tx.execute("UPDATE keys SET name = ?1 WHERE id = ?2", args![name, id])?;
    }
    if let Some(role) = p.role {
        tx.execute(
            "UPDATE keys SET role = ?1 WHERE id = ?2",
            args![role.as_str(), id],
        )?;
    }
    if let Some(group) = &p.group {
        group_exists(&mut *tx, group)?;
        tx.execute(
            "UPDATE keys SET group_name = ?1 WHERE id = ?2",
            args![group, id],
        )?;
    }
    if let Some(email) = &p.email {
        tx.execute("UPDATE keys SET email = ?1 WHERE id = ?2", args![email, id])?;
    }
    if let Some(budget) = p.monthly_budget {
        if let Some(b) = budget {
            check_money("monthly_budget", b)?;
        }
        tx.execute(
            "UPDATE keys SET monthly_budget = ?1 WHERE id = ?2",
            args![budget, id],
        )?;
    }
    if let Some(expiry) = &p.expires_at {
        let t = expiry.as_deref().map(parse_expiry).transpose()?;
        tx.execute(
            "UPDATE keys SET expires_at = ?1 WHERE id = ?2",
            args![t, id],
        )?;
    }
    if let Some(active) = p.active {
        tx.execute(
            "UPDATE keys SET active = ?1 WHERE id = ?2",
            args![active, id],
        )?;
    }
    if let Some(models) = &p.models {
        set_key_models(&mut *tx, id, models)?;
    }
    bump(&mut *tx)?;
    Ok(tx.commit()?)
}

/// A new secret for a key; the old one stops working with the next snapshot.
pub fn reset_key(db: &mut dyn Sql, id: i64) -> OpResult<String> {
    let mut tx = db.begin()?;
    let secret = new_secret(&mut *tx, id)?;
    // A mail still waiting would carry the dead secret; its sender drops it.
    tx.execute(
        "UPDATE mail_outbox SET status = 'failed',
             error = 'the key was reset before its mail went out; POST /admin/keys/{id}/mail sends the new one'
         WHERE key_id = ?1 AND status = 'queued'",
        args![id],
    )?;
    bump(&mut *tx)?;
    tx.commit()?;
    Ok(secret)
}

/// Gives key `id` a new secret inside `tx`; the old one stops at the next snapshot.
pub(super) fn new_secret(tx: &mut dyn Sql, id: i64) -> OpResult<String> {
    let secret = generate_key();
    key_exists(tx, id)?;
    tx.execute(
        "UPDATE keys SET key_hash = ?1, prefix = ?2 WHERE id = ?3",
        args![hash_key(&secret), prefix_of(&secret), id],
    )?;
    Ok(secret)
}

/// Adds to a key's balance (a key without one starts at 0); returns the new balance.
pub fn top_up(db: &mut dyn Sql, id: i64, amount: f64) -> OpResult<f64> {
    if !amount.is_finite() || amount <= 0.0 {
        return Err(GatewayError::BadRequest(
            "amount must be a positive number".into(),
        ));
    }
    let mut tx = db.begin()?;
    key_exists(&mut *tx, id)?;
    // `0.0`, not `0`: the column is REAL (DOUBLE PRECISION), so no mixed types.
    tx.execute(
        "UPDATE keys SET balance = COALESCE(balance, 0.0) + ?1 WHERE id = ?2",
        args![amount, id],
    )?;
    let balance: f64 = tx.one::<f64>("SELECT balance FROM keys WHERE id = ?1", args![id])?;
    bump(&mut *tx)?;
    tx.commit()?;
    Ok(balance)
}

pub fn delete_key(db: &mut dyn Sql, id: i64) -> OpResult<()> {
    let mut tx = db.begin()?;
    key_exists(&mut *tx, id)?;
    tx.execute("DELETE FROM keys WHERE id = ?1", args![id])?;
    bump(&mut *tx)?;
    Ok(tx.commit()?)
}

pub fn create_group(db: &mut dyn Sql, g: &NewGroup) -> OpResult<()> {
    check_name("name", &g.name)?;
    let mut tx = db.begin()?;
    // Nothing inserted: the name is taken (dropping `tx` rolls back).
    let inserted = tx.execute(
        "INSERT INTO groups (name, description) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        args![&g.name, &g.description],
    )?;
    if inserted == 0 {
        return Err(GatewayError::Conflict(format!(
            "group `{}` exists already",
            g.name
        )));
    }
    set_group_models_tx(&mut *tx, &g.name, &g.models)?;
    bump(&mut *tx)?;
    Ok(tx.commit()?)
}

fn set_group_models_tx(tx: &mut dyn Sql, name: &str, models: &[String]) -> OpResult<()> {
    tx.execute(
        "DELETE FROM group_models WHERE group_name = ?1",
        args![name],
    )?;
    for m in models {
        check_name("a model name", m)?;
        // A model named twice is granted once.
        tx.execute(
            "INSERT INTO group_models (group_name, model) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            args![name, m],
        )?;
    }
    Ok(())
}

pub fn set_group_models(db: &mut dyn Sql, name: &str, models: &[String]) -> OpResult<()> {
    let mut tx = db.begin()?;
    group_exists(&mut *tx, name)
        .map_err(|_| GatewayError::NotFound(format!("no group `{name}`")))?;
    set_group_models_tx(&mut *tx, name, models)?;
    bump(&mut *tx)?;
    Ok(tx.commit()?)
}

pub fn delete_group(db: &mut dyn Sql, name: &str) -> OpResult<()> {
    if name == "default" {
        return Err(GatewayError::BadRequest(
            "the `default` group cannot be deleted".into(),
        ));
    }
    let mut tx = db.begin()?;
    group_exists(&mut *tx, name)
        .map_err(|_| GatewayError::NotFound(format!("no group `{name}`")))?;
    let members: i64 = tx.one::<i64>(
        "SELECT COUNT(*) FROM keys WHERE group_name = ?1",
        args![name],
    )?;
    if members > 0 {
        return Err(GatewayError::Conflict(format!(
            "group `{name}` still has {members} keys; move them first"
        )));
    }
    tx.execute("DELETE FROM groups WHERE name = ?1", args![name])?;
    bump(&mut *tx)?;
    Ok(tx.commit()?)
}

pub fn upsert_model(db: &mut dyn Sql, m: &ModelDef) -> OpResult<()> {
    check_name("name", &m.name)?;
    check_money("price_in", m.price_in)?;
    check_money("price_out", m.price_out)?;
    let config = m.config.as_ref().map(|c| c.to_string());
    let mut tx = db.begin()?;
    tx.execute(
        "INSERT INTO models (name, price_in, price_out, multimodal, config, provider)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (name) DO UPDATE SET price_in = excluded.price_in, price_out = excluded.price_out,
           multimodal = excluded.multimodal, config = excluded.config, provider = excluded.provider",
        args![&m.name, m.price_in, m.price_out, m.multimodal, config, &m.provider],
    )?;
    bump(&mut *tx)?;
    Ok(tx.commit()?)
}

pub fn delete_model(db: &mut dyn Sql, name: &str) -> OpResult<()> {
    let mut tx = db.begin()?;
    let n = tx.execute("DELETE FROM models WHERE name = ?1", args![name])?;
    if n == 0 {
        return Err(GatewayError::NotFound(format!(
            "no model `{name}` in the registry"
        )));
    }
    bump(&mut *tx)?;
    Ok(tx.commit()?)
}

/// Money figures of every key as stored: balance and this month's spend.
pub struct StoredMoney {
    pub balances: HashMap<i64, Option<f64>>,
    pub spent: HashMap<i64, f64>,
    pub gateway_tokens: HashMap<String, u64>,
}

/// Reads keys, groups, grants and models.
pub fn load_snapshot(db: &mut dyn Sql) -> OpResult<AccountsSnapshot> {
    let mut snap = AccountsSnapshot::default();
    for (hash, key) in load_keys(db)? {
        let key = Arc::new(key);
        snap.keys_by_id.insert(key.id, key.clone());
        snap.keys_by_hash.insert(hash, key);
    }
    let groups = db.rows("SELECT name, description FROM groups", args![], |r| {
        Ok((r.get::<String>(0)?, r.get::<Option<String>>(1)?))
    })?;
    for (name, desc) in groups {
        snap.groups.insert(name.clone(), Vec::new());
        snap.group_descriptions.insert(name, desc);
    }
    let sql = "SELECT group_name, model FROM group_models ORDER BY model";
    let grants = db.rows(sql, args![], |r| {
        Ok((r.get::<String>(0)?, r.get::<String>(1)?))
    })?;
    for (g, m) in grants {
        snap.groups.entry(g).or_default().push(m);
    }
    let sql = "SELECT name, price_in, price_out, multimodal, config, provider FROM models";
    let models = db.rows(sql, args![], |r| {
        Ok(ModelRecord {
            name: r.get(0)?,
            price_in: r.get(1)?,
            price_out: r.get(2)?,
            multimodal: r.get(3)?,
            config: r
                .get::<Option<String>>(4)?
                .and_then(|c| serde_json::from_str(&c).ok()),
            provider: r.get(5)?,
        })
    })?;
    for m in models {
        snap.models.insert(m.name.clone(), m);
    }
    snap.index_grants();
    Ok(snap)
}

/// Every key with its hash and its own model grants.
fn load_keys(db: &mut dyn Sql) -> OpResult<Vec<(String, KeyRecord)>> {
    let mut key_models: HashMap<i64, Vec<String>> = HashMap::new();
    let sql = "SELECT key_id, model FROM key_models ORDER BY model";
    let grants = db.rows(sql, args![], |r| {
        Ok((r.get::<i64>(0)?, r.get::<String>(1)?))
    })?;
    for (id, m) in grants {
        key_models.entry(id).or_default().push(m);
    }
    let sql = "SELECT id, name, key_hash, prefix, role, group_name, email, monthly_budget, \
               expires_at, active, created_at FROM keys";
    let mut keys = db.rows(sql, args![], |r| {
        let key = KeyRecord {
            id: r.get(0)?,
            name: r.get(1)?,
            prefix: r.get(3)?,
            role: Role::parse(&r.get::<String>(4)?).unwrap_or(Role::User),
            group: r.get(5)?,
            email: r.get(6)?,
            monthly_budget: r.get(7)?,
            expires_at: r.get(8)?,
            active: r.get(9)?,
            created_at: r.get(10)?,
            models: Vec::new(),
        };
        Ok((r.get::<String>(2)?, key))
    })?;
    for (_, key) in &mut keys {
        key.models = key_models.remove(&key.id).unwrap_or_default();
    }
    Ok(keys)
}

pub fn load_money(db: &mut dyn Sql, month: u32) -> OpResult<StoredMoney> {
    let balances = db.rows("SELECT id, balance FROM keys", args![], |r| {
        Ok((r.get::<i64>(0)?, r.get::<Option<f64>>(1)?))
    })?;
    let sql = "SELECT key_id, cost FROM spend WHERE month = ?1";
    let spent = db.rows(sql, args![month], |r| {
        Ok((r.get::<i64>(0)?, r.get::<f64>(1)?))
    })?;
    let sql = "SELECT gateway, tokens FROM gateway_tokens";
    let tokens = db.rows(sql, args![], |r| {
        Ok((r.get::<String>(0)?, r.get::<i64>(1)?.max(0) as u64))
    })?;
    Ok(StoredMoney {
        balances: balances.into_iter().collect(),
        spent: spent.into_iter().collect(),
        gateway_tokens: tokens.into_iter().collect(),
    })
}

/// The persisted rate-limit buckets still inside their windows at `now_ms`.
pub fn load_rate_buckets(db: &mut dyn Sql, now_ms: u64) -> OpResult<Vec<BucketRow>> {
    let sql = "SELECT key, bucket, count, window_ms, expires_ms FROM rate_buckets
               WHERE expires_ms > ?1";
    let n = |v: i64| v.max(0) as u64;
    Ok(db.rows(sql, args![now_ms as i64], |r| {
        Ok(BucketRow {
            key: r.get(0)?,
            bucket: n(r.get(1)?),
            count: u32::try_from(r.get::<i64>(2)?).unwrap_or(0),
            window_ms: n(r.get(3)?),
            expires_ms: n(r.get(4)?),
        })
    })?)
}
