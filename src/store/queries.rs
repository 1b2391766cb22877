//! Usage reports (K6, G8) read from the `usage` table.

use super::ops::{db_err, OpResult};
use rusqlite::types::Value as SqlValue;
use rusqlite::Connection;
use serde_json::{json, Value};
use weir_filters::accounts::{UsageGroup, UsageQuery};

/// Calls (refused ones too, also counted in `errors`), tokens and cost, grouped as asked.
pub fn usage(conn: &Connection, q: &UsageQuery) -> OpResult<Vec<Value>> {
    let group = match q.group_by.unwrap_or(UsageGroup::Key) {
        UsageGroup::Key => "COALESCE('key:' || key_id, identity, '-')",
        UsageGroup::Gateway => "gateway",
        UsageGroup::Model => "model",
        UsageGroup::Channel => "channel",
        UsageGroup::Day => "strftime('%Y-%m-%d', ts, 'unixepoch')",
        UsageGroup::Hour => "strftime('%Y-%m-%dT%H:00:00Z', ts, 'unixepoch')",
    };
    let mut filters = Vec::new();
    let mut args: Vec<SqlValue> = Vec::new();
    if let Some(k) = q.key_id {
        filters.push("key_id = ?");
        args.push(k.into());
    }
    if let Some(g) = &q.gateway {
        filters.push("gateway = ?");
        args.push(g.clone().into());
    }
    if let Some(m) = &q.model {
        filters.push("model = ?");
        args.push(m.clone().into());
    }
    if let Some(f) = q.from {
        filters.push("ts >= ?");
        args.push(f.into());
    }
    if let Some(t) = q.to {
        filters.push("ts < ?");
        args.push(t.into());
    }
    let where_clause = if filters.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", filters.join(" AND "))
    };
    let sql = format!(
        "SELECT {group} AS g, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost), SUM(estimated), SUM(status >= 400), AVG(latency_ms)
         FROM usage {where_clause} GROUP BY g ORDER BY g"
    );
    let mut stmt = conn.prepare(&sql).map_err(db_err)?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(args), |r| {
            let prompt: i64 = r.get(2)?;
            let completion: i64 = r.get(3)?;
            Ok(json!({
                "group": r.get::<_, String>(0)?,
                "calls": r.get::<_, i64>(1)?,
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "cost": r.get::<_, f64>(4)?,
                "estimated_calls": r.get::<_, i64>(5)?,
                "errors": r.get::<_, i64>(6)?,
                "latency_ms_avg": r.get::<_, f64>(7)?,
            }))
        })
        .map_err(db_err)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
}

/// The latest calls of one key, newest first.
pub fn recent_calls(conn: &Connection, key_id: i64, limit: u32) -> OpResult<Vec<Value>> {
    let mut stmt = conn
        .prepare(
            "SELECT ts, gateway, model, channel, prompt_tokens, completion_tokens, cost, status, latency_ms, stream, estimated
             FROM usage WHERE key_id = ?1 ORDER BY id DESC LIMIT ?2",
        )
        .map_err(db_err)?;
    let rows = stmt
        .query_map(rusqlite::params![key_id, limit], |r| {
            Ok(json!({
                "time": r.get::<_, i64>(0)?,
                "gateway": r.get::<_, String>(1)?,
                "model": r.get::<_, String>(2)?,
                "channel": r.get::<_, String>(3)?,
                "prompt_tokens": r.get::<_, i64>(4)?,
                "completion_tokens": r.get::<_, i64>(5)?,
                "cost": r.get::<_, f64>(6)?,
                "status": r.get::<_, i64>(7)?,
                "latency_ms": r.get::<_, i64>(8)?,
                "stream": r.get::<_, bool>(9)?,
                "estimated": r.get::<_, bool>(10)?,
            }))
        })
        .map_err(db_err)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
}

/// Calls and tokens of each hour of the day that starts at `day_start` (UTC), by gateway.
pub fn hourly(conn: &Connection, day_start: i64) -> OpResult<Vec<(String, i64, i64, i64)>> {
    let mut stmt = conn
        .prepare(
            "SELECT gateway, (ts - ?1) / 3600 AS h, COUNT(*), SUM(prompt_tokens + completion_tokens)
             FROM usage WHERE ts >= ?1 AND ts < ?1 + 86400 GROUP BY gateway, h ORDER BY gateway, h",
        )
        .map_err(db_err)?;
    let rows = stmt
        .query_map([day_start], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .map_err(db_err)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
}
