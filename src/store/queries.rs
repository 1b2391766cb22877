//! Usage reports (K6, G8) read from the `usage` table.

use super::db::{Dialect, Sql, Value as SqlValue};
use super::ops::OpResult;
use crate::args;
use serde_json::{json, Value};
use weir_filters::accounts::{UsageGroup, UsageQuery};

/// Calls (refused ones too, also counted in `errors`), tokens and cost, grouped as asked.
pub fn usage(db: &mut dyn Sql, q: &UsageQuery) -> OpResult<Vec<Value>> {
    let postgres = db.dialect() == Dialect::Postgres;
    let group = match q.group_by.unwrap_or(UsageGroup::Key) {
        UsageGroup::Key => "COALESCE('key:' || key_id, identity, '-')",
        UsageGroup::Gateway => "gateway",
        UsageGroup::Model => "model",
        UsageGroup::Channel => "channel",
        // Days and hours in UTC, as ISO 8601 text: each database's own formatter.
        UsageGroup::Day if postgres => "to_char(to_timestamp(ts) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
        UsageGroup::Day => "strftime('%Y-%m-%d', ts, 'unixepoch')",
        UsageGroup::Hour if postgres => {
            "to_char(to_timestamp(ts) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:00:00\"Z\"')"
        }
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
    // PostgreSQL sums integers as NUMERIC and cannot sum a boolean: sums are cast
    // back to BIGINT, errors counted with CASE, and the latency averaged as a float
    // (a fraction of a millisecond still counts once weighted by the calls).
    let sql = format!(
        "SELECT {group} AS g, COUNT(*), CAST(SUM(prompt_tokens) AS BIGINT), CAST(SUM(completion_tokens) AS BIGINT),
                SUM(cost), CAST(SUM(estimated) AS BIGINT),
                CAST(SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END) AS BIGINT),
                AVG(CAST(latency_ms AS DOUBLE PRECISION))
         FROM usage {where_clause} GROUP BY g ORDER BY g"
    );
    Ok(db.rows(&sql, &args, |r| {
        let prompt: i64 = r.get(2)?;
        let completion: i64 = r.get(3)?;
        Ok(json!({
            "group": r.get::<String>(0)?,
            "calls": r.get::<i64>(1)?,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "cost": r.get::<f64>(4)?,
            "estimated_calls": r.get::<i64>(5)?,
            "errors": r.get::<i64>(6)?,
            "latency_ms_avg": r.get::<f64>(7)?,
        }))
    })?)
}

/// The latest calls of one key, newest first.
pub fn recent_calls(db: &mut dyn Sql, key_id: i64, limit: u32) -> OpResult<Vec<Value>> {
    Ok(db.rows(
        "SELECT ts, gateway, model, channel, prompt_tokens, completion_tokens, cost, status, latency_ms, stream, estimated
         FROM usage WHERE key_id = ?1 ORDER BY id DESC LIMIT ?2",
        args![key_id, limit],
        |r| {
            Ok(json!({
                "time": r.get::<i64>(0)?,
                "gateway": r.get::<String>(1)?,
                "model": r.get::<String>(2)?,
                "channel": r.get::<String>(3)?,
                "prompt_tokens": r.get::<i64>(4)?,
                "completion_tokens": r.get::<i64>(5)?,
                "cost": r.get::<f64>(6)?,
                "status": r.get::<i64>(7)?,
                "latency_ms": r.get::<i64>(8)?,
                "stream": r.get::<bool>(9)?,
                "estimated": r.get::<bool>(10)?,
            }))
        },
    )?)
}

/// Calls and tokens of each hour of the day that starts at `day_start` (UTC), by gateway.
pub fn hourly(db: &mut dyn Sql, day_start: i64) -> OpResult<Vec<(String, i64, i64, i64)>> {
    // The SUM is cast: PostgreSQL sums BIGINT as NUMERIC.
    Ok(db.rows(
        "SELECT gateway, (ts - ?1) / 3600 AS h, COUNT(*), CAST(SUM(prompt_tokens + completion_tokens) AS BIGINT)
         FROM usage WHERE ts >= ?1 AND ts < ?1 + 86400 GROUP BY gateway, h ORDER BY gateway, h",
        args![day_start],
        |r| {
            Ok((
                r.get::<String>(0)?,
                r.get::<i64>(1)?,
                r.get::<i64>(2)?,
                r.get::<i64>(3)?,
            ))
        },
    )?)
}
