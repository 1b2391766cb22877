//! Admin writes and the snapshot load, as plain functions on a connection: the
//! store's thread runs them for the admin API, `weir keys` runs them directly.

use crate::accounts::{AccountsSnapshot, BucketRow, KeyRecord, ModelRecord};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use weir_filters::accounts::{check_money, check_name, KeyPatch, ModelDef, NewGroup, NewKey, Role};
use weir_filters::auth::{generate_key, hash_key};
use weir_filters::key_mail::KeyMail;
use weir_filters::people::{ImportOptions, Person};
use weir_filters::GatewayError;

pub type OpResult<T> = Result<T, GatewayError>;

/// Store errors never carry a key: statements only ever bind hashes.
pub fn db_err(e: rusqlite::Error) -> GatewayError {
    GatewayError::Internal(format!("store: {e}"))
}

/// Every write bumps this so other processes (and `weir keys`) notice it.
pub fn bump(tx: &Transaction<'_>) -> OpResult<()> {
    tx.execute(
        "UPDATE meta SET value = value + 1 WHERE key = 'version'",
        [],
    )
    .map(drop)
    .map_err(db_err)
}

pub fn meta_version(conn: &Connection) -> OpResult<i64> {
    conn.query_row("SELECT value FROM meta WHERE key = 'version'", [], |r| {
        r.get(0)
    })
    .map_err(db_err)
}

fn parse_expiry(v: &str) -> OpResult<i64> {
    weir_filters::accounts::parse_time(v)
}

fn group_exists(tx: &Transaction<'_>, name: &str) -> OpResult<()> {
    let found: Option<String> = tx
        .query_row("SELECT name FROM groups WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()
        .map_err(db_err)?;
    found.map(drop).ok_or_else(|| {
        GatewayError::BadRequest(format!("group `{name}` does not exist; create it first"))
    })
}

fn set_key_models(tx: &Transaction<'_>, id: i64, models: &[String]) -> OpResult<()> {
    tx.execute("DELETE FROM key_models WHERE key_id = ?1", [id])
        .map_err(db_err)?;
    for m in models {
        check_name("a model name", m)?;
        tx.execute(
            "INSERT OR IGNORE INTO key_models (key_id, model) VALUES (?1, ?2)",
            params![id, m],
        )
        .map_err(db_err)?;
    }
    Ok(())
}

/// The first characters of a key, safe to show.
fn prefix_of(key: &str) -> String {
    key.chars().take(7).collect()
}

/// Creates a key; returns its id and the secret, which is shown this once only.
pub fn create_key(conn: &mut Connection, new: &NewKey, now: i64) -> OpResult<(i64, String)> {
    check_name("name", &new.name)?;
    if let Some(b) = new.monthly_budget {
        check_money("monthly_budget", b)?;
    }
    if let Some(b) = new.balance {
        check_money("balance", b)?;
    }
    let tx = conn.transaction().map_err(db_err)?;
    group_exists(&tx, &new.group)?;
    let (id, secret) = insert_key(&tx, new, now)?;
    bump(&tx)?;
    tx.commit().map_err(db_err)?;
    Ok((id, secret))
}

/// Writes one checked key in the transaction; answers its id and secret.
fn insert_key(tx: &Transaction<'_>, new: &NewKey, now: i64) -> OpResult<(i64, String)> {
    let secret = generate_key();
    let id = insert_key_with(tx, new, &secret, now)?;
    Ok((id, secret))
}

/// Writes one checked key whose secret is given (an imported token); only its hash
/// is kept.
pub(super) fn insert_key_with(
    tx: &Transaction<'_>,
    new: &NewKey,
    secret: &str,
    now: i64,
) -> OpResult<i64> {
    let expires = new.expires_at.as_deref().map(parse_expiry).transpose()?;
    tx.execute(
        "INSERT INTO keys (name, key_hash, prefix, role, group_name, email, monthly_budget, balance, expires_at, active, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 1, ?10)",
        params![new.name, hash_key(secret), prefix_of(secret), new.role.as_str(), new.group, new.email, new.monthly_budget, new.balance, expires, now],
    )
    .map_err(db_err)?;
    let id = tx.last_insert_rowid();
    set_key_models(tx, id, &new.models)?;
    Ok(id)
}

/// Bulk import (K2): a key for each person whose email has none yet, in one
/// transaction (a dry run rolls it back and shows no secret). A second run of the
/// same file creates nothing.
/// With `mail`, each new key with an email is queued in the outbox, in the same
/// transaction, and handed back in `mails` for the mailer.
pub fn import_keys(
    conn: &mut Connection,
    people: &[Person],
    o: &ImportOptions,
    mail: bool,
    now: i64,
) -> OpResult<Imported> {
    if let Some(b) = o.monthly_budget {
        check_money("monthly_budget", b)?;
    }
    let tx = conn.transaction().map_err(db_err)?;
    group_exists(&tx, &o.group)?;
    let mut out = Imported::default();
    for p in people {
        if let Some(e) = &p.email {
            let holder: Option<i64> = tx
                .query_row(
                    "SELECT id FROM keys WHERE lower(email) = lower(?1)",
                    [e],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?;
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
        let (id, secret) = insert_key(&tx, &new, now)?;
        let mailed = match (&p.email, mail && !o.dry_run) {
            (Some(email), true) => {
                let m = KeyMail {
                    key_id: id,
                    name: p.name.clone(),
                    email: email.clone(),
                    key: secret.clone(),
                };
                super::mail::queue(&tx, &m, now)?;
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
    if !o.dry_run {
        bump(&tx)?;
        tx.commit().map_err(db_err)?;
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

fn key_exists(tx: &Transaction<'_>, id: i64) -> OpResult<()> {
    let found: Option<i64> = tx
        .query_row("SELECT id FROM keys WHERE id = ?1", [id], |r| r.get(0))
        .optional()
        .map_err(db_err)?;
    found
        .map(drop)
        .ok_or_else(|| GatewayError::NotFound(format!("no key with id {id}")))
}

pub fn update_key(conn: &mut Connection, id: i64, p: &KeyPatch) -> OpResult<()> {
    let tx = conn.transaction().map_err(db_err)?;
    key_exists(&tx, id)?;
    if let Some(name) = &p.name {
        check_name("name", name)?;
        tx.execute("UPDATE keys SET name = ?1 WHERE id = ?2", params![name, id])
            .map_err(db_err)?;
    }
    if let Some(role) = p.role {
        tx.execute(
            "UPDATE keys SET role = ?1 WHERE id = ?2",
            params![role.as_str(), id],
        )
        .map_err(db_err)?;
    }
    if let Some(group) = &p.group {
        group_exists(&tx, group)?;
        tx.execute(
            "UPDATE keys SET group_name = ?1 WHERE id = ?2",
            params![group, id],
        )
        .map_err(db_err)?;
    }
    if let Some(email) = &p.email {
        tx.execute(
            "UPDATE keys SET email = ?1 WHERE id = ?2",
            params![email, id],
        )
        .map_err(db_err)?;
    }
    if let Some(budget) = p.monthly_budget {
        if let Some(b) = budget {
            check_money("monthly_budget", b)?;
        }
        tx.execute(
            "UPDATE keys SET monthly_budget = ?1 WHERE id = ?2",
            params![budget, id],
        )
        .map_err(db_err)?;
    }
    if let Some(expiry) = &p.expires_at {
        let t = expiry.as_deref().map(parse_expiry).transpose()?;
        tx.execute(
            "UPDATE keys SET expires_at = ?1 WHERE id = ?2",
            params![t, id],
        )
        .map_err(db_err)?;
    }
    if let Some(active) = p.active {
        tx.execute(
            "UPDATE keys SET active = ?1 WHERE id = ?2",
            params![active, id],
        )
        .map_err(db_err)?;
    }
    if let Some(models) = &p.models {
        set_key_models(&tx, id, models)?;
    }
    bump(&tx)?;
    tx.commit().map_err(db_err)
}

/// A new secret for a key; the old one stops working with the next snapshot.
pub fn reset_key(conn: &mut Connection, id: i64) -> OpResult<String> {
    let tx = conn.transaction().map_err(db_err)?;
    let secret = new_secret(&tx, id)?;
    // A mail still waiting would carry the dead secret; its sender drops it.
    tx.execute(
        "UPDATE mail_outbox SET status = 'failed',
             error = 'the key was reset before its mail went out; POST /admin/keys/{id}/mail sends the new one'
         WHERE key_id = ?1 AND status = 'queued'",
        [id],
    )
    .map_err(db_err)?;
    bump(&tx)?;
    tx.commit().map_err(db_err)?;
    Ok(secret)
}

/// Gives key `id` a new secret inside `tx`; the old one stops at the next snapshot.
pub(super) fn new_secret(tx: &Transaction<'_>, id: i64) -> OpResult<String> {
    let secret = generate_key();
    key_exists(tx, id)?;
    tx.execute(
        "UPDATE keys SET key_hash = ?1, prefix = ?2 WHERE id = ?3",
        params![hash_key(&secret), prefix_of(&secret), id],
    )
    .map_err(db_err)?;
    Ok(secret)
}

/// Adds to a key's balance (a key without one starts at 0); returns the new balance.
pub fn top_up(conn: &mut Connection, id: i64, amount: f64) -> OpResult<f64> {
    if !amount.is_finite() || amount <= 0.0 {
        return Err(GatewayError::BadRequest(
            "amount must be a positive number".into(),
        ));
    }
    let tx = conn.transaction().map_err(db_err)?;
    key_exists(&tx, id)?;
    tx.execute(
        "UPDATE keys SET balance = COALESCE(balance, 0) + ?1 WHERE id = ?2",
        params![amount, id],
    )
    .map_err(db_err)?;
    let balance: f64 = tx
        .query_row("SELECT balance FROM keys WHERE id = ?1", [id], |r| r.get(0))
        .map_err(db_err)?;
    bump(&tx)?;
    tx.commit().map_err(db_err)?;
    Ok(balance)
}

pub fn delete_key(conn: &mut Connection, id: i64) -> OpResult<()> {
    let tx = conn.transaction().map_err(db_err)?;
    key_exists(&tx, id)?;
    tx.execute("DELETE FROM keys WHERE id = ?1", [id])
        .map_err(db_err)?;
    bump(&tx)?;
    tx.commit().map_err(db_err)
}

pub fn create_group(conn: &mut Connection, g: &NewGroup) -> OpResult<()> {
    check_name("name", &g.name)?;
    let tx = conn.transaction().map_err(db_err)?;
    let inserted = tx
        .execute(
            "INSERT OR IGNORE INTO groups (name, description) VALUES (?1, ?2)",
            params![g.name, g.description],
        )
        .map_err(db_err)?;
    if inserted == 0 {
        return Err(GatewayError::Conflict(format!(
            "group `{}` exists already",
            g.name
        )));
    }
    set_group_models_tx(&tx, &g.name, &g.models)?;
    bump(&tx)?;
    tx.commit().map_err(db_err)
}

fn set_group_models_tx(tx: &Transaction<'_>, name: &str, models: &[String]) -> OpResult<()> {
    tx.execute("DELETE FROM group_models WHERE group_name = ?1", [name])
        .map_err(db_err)?;
    for m in models {
        check_name("a model name", m)?;
        tx.execute(
            "INSERT OR IGNORE INTO group_models (group_name, model) VALUES (?1, ?2)",
            params![name, m],
        )
        .map_err(db_err)?;
    }
    Ok(())
}

pub fn set_group_models(conn: &mut Connection, name: &str, models: &[String]) -> OpResult<()> {
    let tx = conn.transaction().map_err(db_err)?;
    group_exists(&tx, name).map_err(|_| GatewayError::NotFound(format!("no group `{name}`")))?;
    set_group_models_tx(&tx, name, models)?;
    bump(&tx)?;
    tx.commit().map_err(db_err)
}

pub fn delete_group(conn: &mut Connection, name: &str) -> OpResult<()> {
    if name == "default" {
        return Err(GatewayError::BadRequest(
            "the `default` group cannot be deleted".into(),
        ));
    }
    let tx = conn.transaction().map_err(db_err)?;
    group_exists(&tx, name).map_err(|_| GatewayError::NotFound(format!("no group `{name}`")))?;
    let members: i64 = tx
        .query_row(
            "SELECT COUNT(*) FROM keys WHERE group_name = ?1",
            [name],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    if members > 0 {
        return Err(GatewayError::Conflict(format!(
            "group `{name}` still has {members} keys; move them first"
        )));
    }
    tx.execute("DELETE FROM groups WHERE name = ?1", [name])
        .map_err(db_err)?;
    bump(&tx)?;
    tx.commit().map_err(db_err)
}

pub fn upsert_model(conn: &mut Connection, m: &ModelDef) -> OpResult<()> {
    check_name("name", &m.name)?;
    check_money("price_in", m.price_in)?;
    check_money("price_out", m.price_out)?;
    let config = m.config.as_ref().map(|c| c.to_string());
    let tx = conn.transaction().map_err(db_err)?;
    tx.execute(
        "INSERT INTO models (name, price_in, price_out, multimodal, config, provider)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (name) DO UPDATE SET price_in = excluded.price_in, price_out = excluded.price_out,
           multimodal = excluded.multimodal, config = excluded.config, provider = excluded.provider",
        params![m.name, m.price_in, m.price_out, m.multimodal, config, m.provider],
    )
    .map_err(db_err)?;
    bump(&tx)?;
    tx.commit().map_err(db_err)
}

pub fn delete_model(conn: &mut Connection, name: &str) -> OpResult<()> {
    let tx = conn.transaction().map_err(db_err)?;
    let n = tx
        .execute("DELETE FROM models WHERE name = ?1", [name])
        .map_err(db_err)?;
    if n == 0 {
        return Err(GatewayError::NotFound(format!(
            "no model `{name}` in the registry"
        )));
    }
    bump(&tx)?;
    tx.commit().map_err(db_err)
}

/// Money figures of every key as stored: balance and this month's spend.
pub struct StoredMoney {
    pub balances: HashMap<i64, Option<f64>>,
    pub spent: HashMap<i64, f64>,
    pub gateway_tokens: HashMap<String, u64>,
}

/// Every row of a query, each mapped by `f`.
fn all<T, P: rusqlite::Params>(
    conn: &Connection,
    sql: &str,
    params: P,
    f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> OpResult<Vec<T>> {
    let mut stmt = conn.prepare(sql).map_err(db_err)?;
    let rows = stmt.query_map(params, f).map_err(db_err)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
}

/// Reads keys, groups, grants and models.
pub fn load_snapshot(conn: &Connection) -> OpResult<AccountsSnapshot> {
    let mut snap = AccountsSnapshot::default();
    for (hash, key) in load_keys(conn)? {
        let key = Arc::new(key);
        snap.keys_by_id.insert(key.id, key.clone());
        snap.keys_by_hash.insert(hash, key);
    }
    let groups = all(conn, "SELECT name, description FROM groups", [], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
    })?;
    for (name, desc) in groups {
        snap.groups.insert(name.clone(), Vec::new());
        snap.group_descriptions.insert(name, desc);
    }
    let sql = "SELECT group_name, model FROM group_models ORDER BY model";
    for (g, m) in all(conn, sql, [], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))? {
        snap.groups.entry(g).or_default().push(m);
    }
    let sql = "SELECT name, price_in, price_out, multimodal, config, provider FROM models";
    let models = all(conn, sql, [], |r| {
        Ok(ModelRecord {
            name: r.get(0)?,
            price_in: r.get(1)?,
            price_out: r.get(2)?,
            multimodal: r.get(3)?,
            config: r
                .get::<_, Option<String>>(4)?
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
fn load_keys(conn: &Connection) -> OpResult<Vec<(String, KeyRecord)>> {
    let mut key_models: HashMap<i64, Vec<String>> = HashMap::new();
    let sql = "SELECT key_id, model FROM key_models ORDER BY model";
    for (id, m) in all(conn, sql, [], |r| Ok((r.get::<_, i64>(0)?, r.get(1)?)))? {
        key_models.entry(id).or_default().push(m);
    }
    let sql = "SELECT id, name, key_hash, prefix, role, group_name, email, monthly_budget, \
               expires_at, active, created_at FROM keys";
    let mut keys = all(conn, sql, [], |r| {
        let key = KeyRecord {
            id: r.get(0)?,
            name: r.get(1)?,
            prefix: r.get(3)?,
            role: Role::parse(&r.get::<_, String>(4)?).unwrap_or(Role::User),
            group: r.get(5)?,
            email: r.get(6)?,
            monthly_budget: r.get(7)?,
            expires_at: r.get(8)?,
            active: r.get(9)?,
            created_at: r.get(10)?,
            models: Vec::new(),
        };
        Ok((r.get::<_, String>(2)?, key))
    })?;
    for (_, key) in &mut keys {
        key.models = key_models.remove(&key.id).unwrap_or_default();
    }
    Ok(keys)
}

pub fn load_money(conn: &Connection, month: u32) -> OpResult<StoredMoney> {
    let balances = all(conn, "SELECT id, balance FROM keys", [], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, Option<f64>>(1)?))
    })?;
    let sql = "SELECT key_id, cost FROM spend WHERE month = ?1";
    let spent = all(conn, sql, [month], |r| Ok((r.get::<_, i64>(0)?, r.get(1)?)))?;
    let sql = "SELECT gateway, tokens FROM gateway_tokens";
    let tokens = all(conn, sql, [], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
    })?;
    Ok(StoredMoney {
        balances: balances.into_iter().collect(),
        spent: spent.into_iter().collect(),
        gateway_tokens: tokens.into_iter().collect(),
    })
}

/// The persisted rate-limit buckets still inside their windows at `now_ms`.
pub fn load_rate_buckets(conn: &Connection, now_ms: u64) -> OpResult<Vec<BucketRow>> {
    let sql = "SELECT key, bucket, count, window_ms, expires_ms FROM rate_buckets
               WHERE expires_ms > ?1";
    let n = |v: i64| v.max(0) as u64;
    all(conn, sql, [now_ms as i64], |r| {
        Ok(BucketRow {
            key: r.get(0)?,
            bucket: n(r.get(1)?),
            count: u32::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
            window_ms: n(r.get(3)?),
            expires_ms: n(r.get(4)?),
        })
    })
}
