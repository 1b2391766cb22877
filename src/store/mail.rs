//! The outbox of imported keys' mail (K2): one row per key with its state, attempts
//! and last error. The secret is never stored here: it lives in the mailer's memory
//! until sent, so a mail left queued by a stop is marked failed on the next start,
//! and `POST /admin/keys/{id}/mail` sends a new secret instead.

use super::db::{DbResult, Sql};
use super::ops::{bump, new_secret, OpResult};
use crate::args;
use serde_json::{json, Value};
use weir_filters::auth::hash_key;
use weir_filters::key_mail::KeyMail;
use weir_filters::GatewayError;

/// Queues `m` (again): state `queued`, no attempts yet.
pub fn queue(tx: &mut dyn Sql, m: &KeyMail, now: i64) -> OpResult<()> {
    tx.execute(
        "INSERT INTO mail_outbox (key_id, email, status, attempts, error, updated_at)
         VALUES (?1, ?2, 'queued', 0, NULL, ?3)
         ON CONFLICT (key_id) DO UPDATE SET email = excluded.email, status = 'queued',
             attempts = 0, error = NULL, updated_at = excluded.updated_at",
        args![m.key_id, &m.email, now],
    )?;
    Ok(())
}

/// Where one attempt left the mail of `m`; nothing when the key has another secret
/// by now (a newer mail owns the row) or is gone.
pub fn record(
    db: &mut dyn Sql,
    m: &KeyMail,
    status: &str,
    attempts: u32,
    error: Option<&str>,
    now: i64,
) -> OpResult<()> {
    db.execute(
        "UPDATE mail_outbox SET status = ?2, attempts = ?3, error = ?4, updated_at = ?5
         WHERE key_id = ?1 AND EXISTS (SELECT 1 FROM keys WHERE id = ?1 AND key_hash = ?6)",
        args![m.key_id, status, attempts, error, now, hash_key(&m.key)],
    )?;
    Ok(())
}

/// Whether the key still has the secret `m` carries: a reset or a delete since
/// makes the mail pointless.
pub fn current(db: &mut dyn Sql, m: &KeyMail) -> OpResult<bool> {
    // A count rather than `SELECT EXISTS`: an integer on both databases (PostgreSQL's
    // EXISTS is a boolean).
    let n = db.one::<i64>(
        "SELECT COUNT(*) FROM keys WHERE id = ?1 AND key_hash = ?2",
        args![m.key_id, hash_key(&m.key)],
    )?;
    Ok(n > 0)
}

/// At start: mail still queued was lost with the last process's memory. On a
/// store other instances share, only mail none of them has touched for an hour
/// (theirs is still being sent).
pub fn abandon_queued(db: &mut dyn Sql, now: i64) -> OpResult<usize> {
    let shared = db.dialect() == super::db::Dialect::Postgres;
    let before = if shared { now - 3600 } else { now + 1 };
    let n = db.execute(
        "UPDATE mail_outbox SET status = 'failed', updated_at = ?1,
             error = 'weir stopped before this mail was sent; POST /admin/keys/{id}/mail sends a new key'
         WHERE status = 'queued' AND updated_at < ?2",
        args![now, before],
    )?;
    // A count of rows: it fits.
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

/// Every outbox row, newest first, optionally of one state.
pub fn list(db: &mut dyn Sql, status: Option<&str>) -> OpResult<Vec<Value>> {
    // The NULL binds as TEXT, so PostgreSQL knows the type of `?1 IS NULL` too.
    Ok(db.rows(
        "SELECT o.key_id, k.name, o.email, o.status, o.attempts, o.error, o.updated_at
         FROM mail_outbox o JOIN keys k ON k.id = o.key_id
         WHERE ?1 IS NULL OR o.status = ?1
         ORDER BY o.updated_at DESC, o.key_id DESC",
        args![status],
        |r| {
            Ok(json!({
                "key_id": r.get::<i64>(0)?,
                "name": r.get::<String>(1)?,
                "email": r.get::<String>(2)?,
                "status": r.get::<String>(3)?,
                "attempts": r.get::<i64>(4)?,
                "error": r.get::<Option<String>>(5)?,
                "updated_at": r.get::<i64>(6)?,
            }))
        },
    )?)
}

/// A new secret for key `id`, queued for its email: the recovery of a failed mail.
pub fn remail(db: &mut dyn Sql, id: i64, now: i64) -> OpResult<KeyMail> {
    let mut tx = db.begin()?;
    let found: Option<(String, Option<String>)> = tx
        .row("SELECT name, email FROM keys WHERE id = ?1", args![id])?
        .map(|r| -> DbResult<_> { Ok((r.get(0)?, r.get(1)?)) })
        .transpose()?;
    let (name, email) =
        found.ok_or_else(|| GatewayError::NotFound(format!("no key with id {id}")))?;
    let email = email
        .ok_or_else(|| GatewayError::BadRequest(format!("key {id} has no email to mail it to")))?;
    let key = new_secret(&mut *tx, id)?;
    let m = KeyMail {
        key_id: id,
        name,
        email,
        key,
    };
    queue(&mut *tx, &m, now)?;
    bump(&mut *tx)?;
    tx.commit()?;
    Ok(m)
}
