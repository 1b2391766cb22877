//! The call log in SQLite (A4): rows written in batches by the store thread, a
//! failed call's bodies beside them, pruning in small batches, and the reads of
//! `GET /admin/logs` (a page, one row, an export).

use super::db::{DbResult, Dialect, Row, Sql, Value as SqlValue};
use super::ops::OpResult;
use super::UsageEvent;
use crate::args;
use serde_json::{json, Value};
use std::sync::LazyLock;
use weir_filters::accounts::format_time as rfc3339;
use weir_filters::calllog::{Cursor, ExportFormat, LogQuery};
use weir_filters::GatewayError;

/// Rows per INSERT statement: one statement per row spent ~a third of the writer's
/// time in statement setup (callgrind).
pub const ROWS_PER_INSERT: usize = 32;

const COLUMNS: &str = "ts, key_id, identity, gateway, model, channel, prompt_tokens, \
    completion_tokens, cost, estimated, status, latency_ms, stream, upstream_model, \
    upstream, error_code, error, ttft_ms, cache, tried, client_ip, masked";
const PER_ROW: usize = 22;

fn insert_sql(rows: usize) -> String {
    let row = format!("({})", vec!["?"; PER_ROW].join(","));
    format!(
        "INSERT INTO usage ({COLUMNS}) VALUES {}",
        vec![row; rows].join(",")
    )
}

static INSERT_MANY: LazyLock<String> = LazyLock::new(|| insert_sql(ROWS_PER_INSERT));
static INSERT_ONE: LazyLock<String> = LazyLock::new(|| insert_sql(1));
/// One row, with the id it was given (for the bodies beside it).
static INSERT_RETURNING: LazyLock<String> =
    LazyLock::new(|| format!("{} RETURNING id", insert_sql(1)));

/// A row's values in `COLUMNS`' order; counts bind as i64 (INTEGER / BIGINT).
fn push_values(values: &mut Vec<SqlValue>, ev: &UsageEvent) {
    values.extend([
        SqlValue::from(ev.ts),
        SqlValue::from(ev.key_id),
        SqlValue::from(&ev.identity),
        SqlValue::from(&ev.gateway),
        SqlValue::from(&ev.model),
        SqlValue::from(&ev.channel),
        SqlValue::from(ev.prompt_tokens as i64),
        SqlValue::from(ev.completion_tokens as i64),
        SqlValue::from(ev.cost),
        SqlValue::from(ev.estimated),
        SqlValue::from(i64::from(ev.status)),
        SqlValue::from(ev.latency_ms as i64),
        SqlValue::from(ev.stream),
        SqlValue::from(&ev.upstream_model),
        SqlValue::from(ev.upstream.as_deref()),
        SqlValue::from(&ev.error_code),
        SqlValue::from(&ev.error),
        SqlValue::from(ev.ttft_ms.map(|t| t as i64)),
        SqlValue::from(ev.cache),
        SqlValue::from(&ev.tried),
        SqlValue::from(&ev.client_ip),
        SqlValue::from(&ev.masked),
    ]);
}

/// The rows, `ROWS_PER_INSERT` to a statement and the rest one by one (two statements
/// in the small prepared-statement cache, not one per remainder). A row with
/// bodies goes alone, so its id is known (`RETURNING id`) for the bodies beside it.
pub fn insert_rows(tx: &mut dyn Sql, events: &[UsageEvent]) -> DbResult<()> {
    let (with_bodies, plain): (Vec<&UsageEvent>, Vec<&UsageEvent>) =
        events.iter().partition(|e| e.bodies.is_some());
    let mut values: Vec<SqlValue> = Vec::with_capacity(PER_ROW * ROWS_PER_INSERT);
    let full = plain.len() / ROWS_PER_INSERT * ROWS_PER_INSERT;
    for (range, per) in [(0..full, ROWS_PER_INSERT), (full..plain.len(), 1)] {
        let sql: &str = if per == 1 { &INSERT_ONE } else { &INSERT_MANY };
        for rows in plain[range].chunks(per) {
            values.clear();
            for ev in rows {
                push_values(&mut values, ev);
            }
            tx.execute(sql, &values)?;
        }
    }
    for ev in with_bodies {
        values.clear();
        push_values(&mut values, ev);
        let id = tx.one::<i64>(&INSERT_RETURNING, &values)?;
        if let Some(b) = &ev.bodies {
            tx.execute(
                "INSERT INTO call_bodies (id, ts, request_body, error_body) VALUES (?1, ?2, ?3, ?4)",
                args![id, ev.ts, &b.request, &b.error],
            )?;
        }
    }
    Ok(())
}

/// Rows one prune step deletes at most: short transactions, so the writer never
/// holds up a flush for long even with millions of rows to go.
pub const PRUNE_BATCH: i64 = 5_000;

/// Deletes up to `PRUNE_BATCH` rows older than `rows_before` and bodies older than
/// `bodies_before`; returns how many were deleted (a full batch: call again).
pub fn prune(db: &mut dyn Sql, rows_before: i64, bodies_before: i64) -> OpResult<usize> {
    let bodies = db.execute(
        "DELETE FROM call_bodies WHERE id IN
         (SELECT id FROM call_bodies WHERE ts < ?1 ORDER BY ts LIMIT ?2)",
        args![bodies_before, PRUNE_BATCH],
    )?;
    let rows = db.execute(
        "DELETE FROM usage WHERE id IN
         (SELECT id FROM usage WHERE ts < ?1 ORDER BY ts LIMIT ?2)",
        args![rows_before, PRUNE_BATCH],
    )?;
    Ok(usize::try_from(rows.max(bodies)).unwrap_or(usize::MAX))
}

/// The WHERE clause and its arguments for a query's filters (and its cursor).
fn filters(q: &LogQuery, dialect: Dialect) -> (String, Vec<SqlValue>) {
    let mut clauses: Vec<&str> = Vec::new();
    let mut args: Vec<SqlValue> = Vec::new();
    let mut eq = |clause: &'static str, v: SqlValue| {
        clauses.push(clause);
        args.push(v);
    };
    if let Some(k) = q.key_id {
        eq("key_id = ?", SqlValue::from(k));
    }
    for (clause, v) in [
        ("gateway = ?", &q.gateway),
        ("model = ?", &q.model),
        ("channel = ?", &q.channel),
    ] {
        if let Some(v) = v {
            eq(clause, SqlValue::from(v));
        }
    }
    if let Some(s) = q.status {
        eq("status_class = ?", SqlValue::from(i64::from(s.class())));
        if let weir_filters::calllog::StatusFilter::Exact(code) = s {
            eq("status = ?", SqlValue::from(i64::from(code)));
        }
    }
    if let Some(f) = q.from {
        eq("ts >= ?", SqlValue::from(f));
    }
    if let Some(t) = q.to {
        eq("ts < ?", SqlValue::from(t));
    }
    if let Some(text) = &q.q {
        // A substring anywhere in what a reader searches for; `instr` (PostgreSQL's
        // `strpos`, same arguments) has no wildcards to escape.
        clauses.push(match dialect {
            Dialect::Sqlite => {
                "(instr(COALESCE(error, ''), ?) > 0 OR instr(model, ?) > 0 \
                 OR instr(COALESCE(identity, ''), ?) > 0 OR instr(COALESCE(tried, ''), ?) > 0)"
            }
            Dialect::Postgres => {
                "(strpos(COALESCE(error, ''), ?) > 0 OR strpos(model, ?) > 0 \
                 OR strpos(COALESCE(identity, ''), ?) > 0 OR strpos(COALESCE(tried, ''), ?) > 0)"
            }
        });
        args.extend(std::iter::repeat_n(SqlValue::from(text), 4));
    }
    if let Some(Cursor { ts, id }) = q.before {
        clauses.push("(ts, id) < (?, ?)");
        args.extend([SqlValue::from(ts), SqlValue::from(id)]);
    }
    let clause = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    (clause, args)
}

const SELECT: &str = "SELECT id, ts, key_id, identity, gateway, model, upstream_model, channel, \
    upstream, status, error_code, error, prompt_tokens, completion_tokens, cost, estimated, \
    latency_ms, ttft_ms, stream, cache, tried, client_ip, masked FROM usage";

/// One row as the API shows it.
fn row_json(r: &Row) -> DbResult<Value> {
    let ts: i64 = r.get(1)?;
    Ok(json!({
        "id": r.get::<i64>(0)?,
        "ts": ts,
        "time": rfc3339(ts),
        "key_id": r.get::<Option<i64>>(2)?,
        "identity": r.get::<Option<String>>(3)?,
        "gateway": r.get::<String>(4)?,
        "model": r.get::<String>(5)?,
        "upstream_model": r.get::<Option<String>>(6)?,
        "channel": r.get::<String>(7)?,
        "upstream": r.get::<Option<String>>(8)?,
        "status": r.get::<i64>(9)?,
        "error_code": r.get::<Option<String>>(10)?,
        "error": r.get::<Option<String>>(11)?,
        "prompt_tokens": r.get::<i64>(12)?,
        "completion_tokens": r.get::<i64>(13)?,
        "cost": r.get::<f64>(14)?,
        "estimated": r.get::<bool>(15)?,
        "latency_ms": r.get::<i64>(16)?,
        "ttft_ms": r.get::<Option<i64>>(17)?,
        "stream": r.get::<bool>(18)?,
        "cache": r.get::<String>(19)?,
        "tried": r.get::<Option<String>>(20)?,
        "client_ip": r.get::<Option<String>>(21)?,
        "masked": r.get::<Option<String>>(22)?,
    }))
}

/// A page, newest first, and the cursor of the next one (`None`: this was the last).
pub fn page(db: &mut dyn Sql, q: &LogQuery) -> OpResult<(Vec<Value>, Option<String>)> {
    let (clause, mut args) = filters(q, db.dialect());
    let sql = format!("{SELECT} {clause} ORDER BY ts DESC, id DESC LIMIT ?");
    // One more than asked: whether there is a next page, without a COUNT.
    args.push(SqlValue::from(i64::from(q.limit) + 1));
    let mut rows = db.rows(&sql, &args, row_json)?;
    let next = if rows.len() > q.limit as usize {
        rows.truncate(q.limit as usize);
        rows.last().and_then(|r| {
            Some(Cursor {
                ts: r["ts"].as_i64()?,
                id: r["id"].as_i64()?,
            })
        })
    } else {
        None
    };
    Ok((rows, next.map(Cursor::encode)))
}

/// One row with its bodies while they are kept; `key_id`: only if it is this key's.
pub fn one(db: &mut dyn Sql, id: i64, key_id: Option<i64>) -> OpResult<Option<Value>> {
    let sql = format!("{SELECT} WHERE id = ?1 AND (?2 IS NULL OR key_id = ?2)");
    let row = db
        .row(&sql, args![id, key_id])?
        .map(|r| row_json(&r))
        .transpose()?;
    let Some(mut row) = row else {
        return Ok(None);
    };
    let bodies = db
        .row(
            "SELECT request_body, error_body FROM call_bodies WHERE id = ?1",
            args![id],
        )?
        .map(|r| -> DbResult<_> {
            Ok((r.get::<Option<Vec<u8>>>(0)?, r.get::<Option<Vec<u8>>>(1)?))
        })
        .transpose()?;
    let (request, error) = bodies.unwrap_or((None, None));
    let text = |b: Option<Vec<u8>>| b.map(|b| String::from_utf8_lossy(&b).into_owned());
    row["request_body"] = text(request).into();
    row["error_body"] = text(error).into();
    Ok(Some(row))
}

/// The CSV header of an export: the row's fields in the API's order.
pub const EXPORT_FIELDS: &[&str] = &[
    "id",
    "time",
    "key_id",
    "identity",
    "gateway",
    "model",
    "upstream_model",
    "channel",
    "upstream",
    "status",
    "error_code",
    "error",
    "prompt_tokens",
    "completion_tokens",
    "cost",
    "estimated",
    "latency_ms",
    "ttft_ms",
    "stream",
    "cache",
    "tried",
    "client_ip",
    "masked",
];

/// Rows an export reads per page.
const EXPORT_PAGE: u32 = 1000;

/// Every row the query selects, newest first, as CSV (with a header) or NDJSON,
/// handed to `send` a page at a time; stops when `send` says the reader left.
pub fn export(
    db: &mut dyn Sql,
    mut q: LogQuery,
    format: ExportFormat,
    mut send: impl FnMut(Vec<u8>) -> bool,
) -> OpResult<()> {
    q.limit = EXPORT_PAGE;
    let csv = format == ExportFormat::Csv;
    let mut first = true;
    loop {
        let (rows, next) = page(&mut *db, &q)?;
        let out = if csv {
            csv_page(&rows, std::mem::take(&mut first))?
        } else {
            ndjson_page(&rows)?
        };
        if !send(out) {
            return Ok(());
        }
        let (Some(_), Some(last)) = (next, rows.last()) else {
            return Ok(());
        };
        q.before = match (last["ts"].as_i64(), last["id"].as_i64()) {
            (Some(ts), Some(id)) => Some(Cursor { ts, id }),
            _ => return Ok(()),
        };
    }
}

/// One page of CSV rows, after the header when `header`.
fn csv_page(rows: &[Value], header: bool) -> OpResult<Vec<u8>> {
    let mut w = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::new());
    if header {
        w.write_record(EXPORT_FIELDS).map_err(csv_err)?;
    }
    for row in rows {
        w.write_record(EXPORT_FIELDS.iter().map(|f| cell(&row[*f])))
            .map_err(csv_err)?;
    }
    w.into_inner()
        .map_err(|e| GatewayError::Internal(format!("cannot write CSV: {e}")))
}

fn ndjson_page(rows: &[Value]) -> OpResult<Vec<u8>> {
    let mut out = Vec::new();
    for row in rows {
        serde_json::to_writer(&mut out, row).map_err(|e| GatewayError::Internal(e.to_string()))?;
        out.push(b'\n');
    }
    Ok(out)
}

fn csv_err(e: csv::Error) -> GatewayError {
    GatewayError::Internal(format!("cannot write CSV: {e}"))
}

/// A JSON value as one CSV cell: text as is, `null` empty.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{schema, FailedBodies};
    use rusqlite::Connection;
    use weir_filters::calllog::StatusFilter;

    fn row(ts: i64, gateway: &str, status: u16) -> UsageEvent {
        UsageEvent {
            ts,
            gateway: gateway.into(),
            model: "m".into(),
            channel: "c".into(),
            status,
            ..UsageEvent::default()
        }
    }

    fn db(name: &str) -> (std::path::PathBuf, Connection) {
        let path =
            std::env::temp_dir().join(format!("weir-calllog-{name}-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let conn = schema::open(path.to_str().unwrap()).unwrap();
        (path, conn)
    }

    fn write(conn: &mut Connection, events: &[UsageEvent]) {
        let db: &mut dyn Sql = conn;
        let mut tx = db.begin().unwrap();
        insert_rows(&mut *tx, events).unwrap();
        tx.commit().unwrap();
    }

    #[test]
    fn pages_run_newest_first_and_end() {
        let (path, mut conn) = db("pages");
        let events: Vec<UsageEvent> = (0..75)
            .map(|i| row(1_000 + i / 2, if i % 3 == 0 { "a" } else { "b" }, 200))
            .collect();
        write(&mut conn, &events);
        let mut q = LogQuery {
            limit: 10,
            gateway: Some("a".into()),
            ..LogQuery::default()
        };
        let mut seen = Vec::new();
        for _ in 0..10 {
            let (rows, next) = page(&mut conn, &q).unwrap();
            seen.extend(
                rows.iter()
                    .map(|r| (r["ts"].as_i64().unwrap(), r["id"].as_i64().unwrap())),
            );
            match next {
                Some(c) => q.before = Some(Cursor::parse(&c).unwrap()),
                None => break,
            }
        }
        assert_eq!(seen.len(), 25);
        assert!(seen.windows(2).all(|w| w[0] > w[1]), "{seen:?}");
        drop(conn);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn status_and_text_filters_are_exact() {
        let (path, mut conn) = db("filters");
        let mut failed = row(10, "a", 503);
        failed.error = Some("no usable answer: c1: HTTP 503".into());
        let mut limited = row(11, "a", 429);
        limited.error_code = Some("rate_limit_exceeded".into());
        write(
            &mut conn,
            &[row(9, "a", 200), failed, limited, row(12, "b", 201)],
        );
        let mut count = |q: LogQuery| page(&mut conn, &q).unwrap().0.len();
        let status = |s: &str| LogQuery {
            status: Some(StatusFilter::parse(s).unwrap()),
            ..LogQuery::default()
        };
        assert_eq!(count(status("2xx")), 2);
        assert_eq!(count(status("5xx")), 1);
        assert_eq!(count(status("429")), 1);
        assert_eq!(count(status("404")), 0);
        let q = LogQuery {
            q: Some("HTTP 503".into()),
            ..LogQuery::default()
        };
        assert_eq!(count(q), 1);
        let window = LogQuery {
            from: Some(10),
            to: Some(12),
            ..LogQuery::default()
        };
        assert_eq!(count(window), 2);
        drop(conn);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn bodies_stay_beside_their_row_until_pruned() {
        let (path, mut conn) = db("bodies");
        let mut failed = row(100, "a", 400);
        failed.bodies = Some(Box::new(FailedBodies {
            request: Some(b"{\"model\":\"m\"}".to_vec()),
            error: Some(b"{\"error\":{}}".to_vec()),
        }));
        write(&mut conn, &[row(99, "a", 200), failed, row(101, "a", 200)]);
        let id: i64 = conn
            .query_row("SELECT id FROM usage WHERE status = 400", [], |r| r.get(0))
            .unwrap();
        let got = one(&mut conn, id, None).unwrap().unwrap();
        assert_eq!(got["request_body"], "{\"model\":\"m\"}");
        assert_eq!(got["status"], 400);
        // Another key's row is not found for a user key.
        assert!(one(&mut conn, id, Some(7)).unwrap().is_none());
        // Bodies go first; the row stays until its own horizon.
        assert_eq!(prune(&mut conn, 0, 200).unwrap(), 1);
        let got = one(&mut conn, id, None).unwrap().unwrap();
        assert!(got["request_body"].is_null());
        assert_eq!(prune(&mut conn, 101, 200).unwrap(), 2);
        let left: i64 = conn
            .query_row("SELECT COUNT(*) FROM usage", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 1);
        drop(conn);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn exports_hold_every_row_once() {
        let (path, mut conn) = db("export");
        let mut events: Vec<UsageEvent> = (0..2500).map(|i| row(i / 10, "a", 200)).collect();
        events[7].error = Some("a, \"quoted\"\nerror".into());
        write(&mut conn, &events);
        let mut csv_bytes = Vec::new();
        export(&mut conn, LogQuery::default(), ExportFormat::Csv, |b| {
            csv_bytes.extend(b);
            true
        })
        .unwrap();
        let mut reader = csv::Reader::from_reader(csv_bytes.as_slice());
        assert_eq!(reader.headers().unwrap().len(), EXPORT_FIELDS.len());
        let records: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
        assert_eq!(records.len(), 2500);
        assert!(records.iter().any(|r| &r[11] == "a, \"quoted\"\nerror"));
        let mut lines = 0;
        let mut pages = 0;
        export(&mut conn, LogQuery::default(), ExportFormat::Ndjson, |b| {
            pages += 1;
            for line in b.split(|c| *c == b'\n').filter(|l| !l.is_empty()) {
                let v: Value = serde_json::from_slice(line).unwrap();
                assert!(v["id"].is_i64());
                lines += 1;
            }
            pages < 2
        })
        .unwrap();
        // The reader left after two pages: the export stopped there.
        assert_eq!((lines, pages), (2 * EXPORT_PAGE as usize, 2));
        drop(conn);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn filtered_pages_read_an_index_not_the_table() {
        let (path, mut conn) = db("plan");
        for q in [
            LogQuery {
                gateway: Some("a".into()),
                ..LogQuery::default()
            },
            LogQuery {
                status: Some(StatusFilter::Class(5)),
                ..LogQuery::default()
            },
            LogQuery {
                key_id: Some(3),
                before: Some(Cursor { ts: 5, id: 5 }),
                ..LogQuery::default()
            },
        ] {
            let (clause, args) = filters(&q, Dialect::Sqlite);
            let sql =
                format!("EXPLAIN QUERY PLAN {SELECT} {clause} ORDER BY ts DESC, id DESC LIMIT 10");
            let db: &mut dyn Sql = &mut conn;
            let plan: Vec<String> = db.rows(&sql, &args, |r| r.get::<String>(3)).unwrap();
            let plan = plan.join(" | ");
            assert!(plan.contains("USING INDEX"), "{q:?}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{q:?} sorts: {plan}");
        }
        drop(conn);
        let _ = std::fs::remove_file(&path);
    }
}
