//! The outbox of imported keys' mail (K2): one row per key with its state, attempts
//! and last error. The secret is never stored here: it lives in the mailer's memory
//! until sent, so a mail left queued by a stop is marked failed on the next start,
//! and `POST /admin/keys/{id}/mail` sends a new secret instead.

use super::ops::{bump, db_err, new_secret, OpResult};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde_json::{json, Value};
use weir_filters::auth::hash_key;
use weir_filters::key_mail::KeyMail;
use weir_filters::GatewayError;

/// Queues `m` (again): state `queued`, no attempts yet.
pub fn queue(tx: &Transaction<'_>, m: &KeyMail, now: i64) -> OpResult<()> {
    tx.execute(
        "INSERT INTO mail_outbox (key_id, email, status, attempts, error, updated_at)
         VALUES (?1, ?2, 'queued', 0, NULL, ?3)
         ON CONFLICT (key_id) DO UPDATE SET email = excluded.email, status = 'queued',
             attempts = 0, error = NULL, updated_at = excluded.updated_at",
        params![m.key_id, m.email, now],
    )
    .map_err(db_err)?;
    Ok(())
}

/// Where one attempt left the mail of `m`; nothing when the key has another secret
/// by now (a newer mail owns the row) or is gone.
pub fn record(
    conn: &Connection,
    m: &KeyMail,
    status: &str,
    attempts: u32,
    error: Option<&str>,
    now: i64,
) -> OpResult<()> {
    conn.execute(
        "UPDATE mail_outbox SET status = ?2, attempts = ?3, error = ?4, updated_at = ?5
         WHERE key_id = ?1 AND EXISTS (SELECT 1 FROM keys WHERE id = ?1 AND key_hash = ?6)",
        params![m.key_id, status, attempts, error, now, hash_key(&m.key)],
    )
    .map_err(db_err)?;
    Ok(())
}

/// Whether the key still has the secret `m` carries: a reset or a delete since
/// makes the mail pointless.
pub fn current(conn: &Connection, m: &KeyMail) -> OpResult<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM keys WHERE id = ?1 AND key_hash = ?2)",
        params![m.key_id, hash_key(&m.key)],
        |r| r.get(0),
    )
    .map_err(db_err)
}

/// At start: mail still queued was lost with the last process's memory.
pub fn abandon_queued(conn: &Connection, now: i64) -> OpResult<usize> {
    conn.execute(
        "UPDATE mail_outbox SET status = 'failed', updated_at = ?1,
             error = 'weir stopped before this mail was sent; POST /admin/keys/{id}/mail sends a new key'
         WHERE status = 'queued'",
        [now],
    )
    .map_err(db_err)
}

/// Every outbox row, newest first, optionally of one state.
pub fn list(conn: &Connection, status: Option<&str>) -> OpResult<Vec<Value>> {
    let mut stmt = conn
        .prepare(
            "SELECT o.key_id, k.name, o.email, o.status, o.attempts, o.error, o.updated_at
             FROM mail_outbox o JOIN keys k ON k.id = o.key_id
             WHERE ?1 IS NULL OR o.status = ?1
             ORDER BY o.updated_at DESC, o.key_id DESC",
        )
        .map_err(db_err)?;
    let rows = stmt
        .query_map([status], |r| {
            Ok(json!({
                "key_id": r.get::<_, i64>(0)?,
                "name": r.get::<_, String>(1)?,
                "email": r.get::<_, String>(2)?,
                "status": r.get::<_, String>(3)?,
                "attempts": r.get::<_, i64>(4)?,
                "error": r.get::<_, Option<String>>(5)?,
                "updated_at": r.get::<_, i64>(6)?,
            }))
        })
        .map_err(db_err)?;
    rows.collect::<Result<_, _>>().map_err(db_err)
}

/// A new secret for key `id`, queued for its email: the recovery of a failed mail.
pub fn remail(conn: &mut Connection, id: i64, now: i64) -> OpResult<KeyMail> {
    let tx = conn.transaction().map_err(db_err)?;
    let found: Option<(String, Option<String>)> = tx
        .query_row("SELECT name, email FROM keys WHERE id = ?1", [id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()
        .map_err(db_err)?;
    let (name, email) =
        found.ok_or_else(|| GatewayError::NotFound(format!("no key with id {id}")))?;
    let email = email
        .ok_or_else(|| GatewayError::BadRequest(format!("key {id} has no email to mail it to")))?;
    let key = new_secret(&tx, id)?;
    let m = KeyMail {
        key_id: id,
        name,
        email,
        key,
    };
    queue(&tx, &m, now)?;
    bump(&tx)?;
    tx.commit().map_err(db_err)?;
    Ok(m)
}
