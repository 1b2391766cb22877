//! The call log in SQLite (A4): rows written in batches by the store thread, a
//! failed call's bodies beside them, pruning in small batches, and the reads of
//! `GET /admin/logs` (a page, one row, an export).

use super::ops::{db_err, OpResult};
use super::UsageEvent;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, Connection, OptionalExtension, Row, ToSql, Transaction};
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
    upstream, error_code, error, ttft_ms, cache, tried";
const PER_ROW: usize = 20;

fn insert_sql(rows: usize) -> String {
    let row = format!("({})", vec!["?"; PER_ROW].join(","));
    format!(
        "INSERT INTO usage ({COLUMNS}) VALUES {}",
        vec![row; rows].join(",")
    )
}

static INSERT_MANY: LazyLock<String> = LazyLock::new(|| insert_sql(ROWS_PER_INSERT));
static INSERT_ONE: LazyLock<String> = LazyLock::new(|| insert_sql(1));

/// The integers of a row, as SQLite's i64.
struct Counts([i64; 3], Option<i64>);

impl Counts {
    fn of(e: &UsageEvent) -> Counts {
        Counts(
            [
                e.prompt_tokens as i64,
                e.completion_tokens as i64,
                e.latency_ms as i64,
            ],
            e.ttft_ms.map(|t| t as i64),
        )
    }
}

fn push_values<'a>(values: &mut Vec<&'a dyn ToSql>, ev: &'a UsageEvent, n: &'a Counts) {
    let [prompt, completion, latency] = &n.0;
    let ttft = &n.1;
    values.extend([
        &ev.ts as &dyn ToSql,
        &ev.key_id,
        &ev.identity,
        &ev.gateway,
        &ev.model,
        &ev.channel,
        prompt,
        completion,
        &ev.cost,
        &ev.estimated,
        &ev.status,
        latency,
        &ev.stream,
        &ev.upstream_model,
        &ev.upstream as &dyn ToSql,
        &ev.error_code,
        &ev.error,
        ttft,
        &ev.cache,
        &ev.tried,
    ]);
}

/// The rows, `ROWS_PER_INSERT` to a statement and the rest one by one (two statements
/// in rusqlite's small prepared-statement cache, not one per remainder). A row with
/// bodies goes alone, so its id is known for the bodies beside it.
pub fn insert_rows(tx: &Transaction<'_>, events: &[UsageEvent]) -> rusqlite::Result<()> {
    let (with_bodies, plain): (Vec<&UsageEvent>, Vec<&UsageEvent>) =
        events.iter().partition(|e| e.bodies.is_some());
    let counts: Vec<Counts> = plain.iter().map(|e| Counts::of(e)).collect();
    let mut values: Vec<&dyn ToSql> = Vec::with_capacity(PER_ROW * ROWS_PER_INSERT);
    let full = plain.len() / ROWS_PER_INSERT * ROWS_PER_INSERT;
    for (range, per) in [(0..full, ROWS_PER_INSERT), (full..plain.len(), 1)] {
        let sql: &str = if per == 1 { &INSERT_ONE } else { &INSERT_MANY };
        let mut stmt = tx.prepare_cached(sql)?;
        for (rows, counts) in plain[range.clone()]
            .chunks(per)
            .zip(counts[range].chunks(per))
        {
            values.clear();
            for (ev, n) in rows.iter().zip(counts) {
                push_values(&mut values, ev, n);
            }
            stmt.execute(values.as_slice())?;
        }
    }
    for ev in with_bodies {
        let n = Counts::of(ev);
        let mut values: Vec<&dyn ToSql> = Vec::with_capacity(PER_ROW);
        push_values(&mut values, ev, &n);
        tx.prepare_cached(&INSERT_ONE)?.execute(values.as_slice())?;
        if let Some(b) = &ev.bodies {
            tx.prepare_cached(
                "INSERT INTO call_bodies (id, ts, request_body, error_body) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![tx.last_insert_rowid(), ev.ts, b.request, b.error])?;
        }
    }
    Ok(())
}

/// Rows one prune step deletes at most: short transactions, so the writer never
/// holds up a flush for long even with millions of rows to go.
pub const PRUNE_BATCH: i64 = 5_000;

/// Deletes up to `PRUNE_BATCH` rows older than `rows_before` and bodies older than
/// `bodies_before`; returns how many were deleted (a full batch: call again).
pub fn prune(conn: &Connection, rows_before: i64, bodies_before: i64) -> OpResult<usize> {
    let bodies = conn
        .execute(
            "DELETE FROM call_bodies WHERE id IN
             (SELECT id FROM call_bodies WHERE ts < ?1 ORDER BY ts LIMIT ?2)",
            params![bodies_before, PRUNE_BATCH],
        )
        .map_err(db_err)?;
    let rows = conn
        .execute(
            "DELETE FROM usage WHERE id IN
             (SELECT id FROM usage WHERE ts < ?1 ORDER BY ts LIMIT ?2)",
            params![rows_before, PRUNE_BATCH],
        )
        .map_err(db_err)?;
    Ok(rows.max(bodies))
}

/// The WHERE clause and its arguments for a query's filters (and its cursor).
fn filters(q: &LogQuery) -> (String, Vec<SqlValue>) {
    let mut clauses: Vec<&str> = Vec::new();
    let mut args: Vec<SqlValue> = Vec::new();
    let mut eq = |clause: &'static str, v: SqlValue| {
        clauses.push(clause);
        args.push(v);
    };
    if let Some(k) = q.key_id {
        eq("key_id = ?", k.into());
    }
    for (clause, v) in [
        ("gateway = ?", &q.gateway),
        ("model = ?", &q.model),
        ("channel = ?", &q.channel),
    ] {
        if let Some(v) = v {
            eq(clause, v.clone().into());
        }
    }
    if let Some(s) = q.status {
        eq("status_class = ?", i64::from(s.class()).into());
        if let weir_filters::calllog::StatusFilter::Exact(code) = s {
            eq("status = ?", i64::from(code).into());
        }
    }
    if let Some(f) = q.from {
        eq("ts >= ?", f.into());
    }
    if let Some(t) = q.to {
        eq("ts < ?", t.into());
    }
    if let Some(text) = &q.q {
        // A substring anywhere in what a reader searches for; `instr` has no
        // wildcards to escape.
        clauses.push(
            "(instr(COALESCE(error, ''), ?) > 0 OR instr(model, ?) > 0 \
             OR instr(COALESCE(identity, ''), ?) > 0 OR instr(COALESCE(tried, ''), ?) > 0)",
        );
        args.extend(std::iter::repeat_n(SqlValue::from(text.clone()), 4));
    }
    if let Some(Cursor { ts, id }) = q.before {
        clauses.push("(ts, id) < (?, ?)");
        args.extend([ts.into(), id.into()]);
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
    latency_ms, ttft_ms, stream, cache, tried FROM usage";

/// One row as the API shows it.
fn row_json(r: &Row<'_>) -> rusqlite::Result<Value> {
    let ts: i64 = r.get(1)?;
    Ok(json!({
        "id": r.get::<_, i64>(0)?,
        "ts": ts,
        "time": rfc3339(ts),
        "key_id": r.get::<_, Option<i64>>(2)?,
        "identity": r.get::<_, Option<String>>(3)?,
        "gateway": r.get::<_, String>(4)?,
        "model": r.get::<_, String>(5)?,
        "upstream_model": r.get::<_, Option<String>>(6)?,
        "channel": r.get::<_, String>(7)?,
        "upstream": r.get::<_, Option<String>>(8)?,
        "status": r.get::<_, i64>(9)?,
        "error_code": r.get::<_, Option<String>>(10)?,
        "error": r.get::<_, Option<String>>(11)?,
        "prompt_tokens": r.get::<_, i64>(12)?,
        "completion_tokens": r.get::<_, i64>(13)?,
        "cost": r.get::<_, f64>(14)?,
        "estimated": r.get::<_, bool>(15)?,
        "latency_ms": r.get::<_, i64>(16)?,
        "ttft_ms": r.get::<_, Option<i64>>(17)?,
        "stream": r.get::<_, bool>(18)?,
        "cache": r.get::<_, String>(19)?,
        "tried": r.get::<_, Option<String>>(20)?,
    }))
}

/// A page, newest first, and the cursor of the next one (`None`: this was the last).
pub fn page(conn: &Connection, q: &LogQuery) -> OpResult<(Vec<Value>, Option<String>)> {
    let (clause, mut args) = filters(q);
    let sql = format!("{SELECT} {clause} ORDER BY ts DESC, id DESC LIMIT ?");
    // One more than asked: whether there is a next page, without a COUNT.
    args.push(i64::from(q.limit + 1).into());
    let mut stmt = conn.prepare_cached(&sql).map_err(db_err)?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(args), row_json)
        .map_err(db_err)?;
    let mut rows = rows.collect::<Result<Vec<_>, _>>().map_err(db_err)?;
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
pub fn one(conn: &Connection, id: i64, key_id: Option<i64>) -> OpResult<Option<Value>> {
    let sql = format!("{SELECT} WHERE id = ?1 AND (?2 IS NULL OR key_id = ?2)");
    let row = conn
        .query_row(&sql, params![id, key_id], row_json)
        .optional()
        .map_err(db_err)?;
    let Some(mut row) = row else {
        return Ok(None);
    };
    let bodies = conn
        .query_row(
            "SELECT request_body, error_body FROM call_bodies WHERE id = ?1",
            [id],
            |r| {
                Ok((
                    r.get::<_, Option<Vec<u8>>>(0)?,
                    r.get::<_, Option<Vec<u8>>>(1)?,
                ))
            },
        )
        .optional()
        .map_err(db_err)?;
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
];

/// Rows an export reads per page.
const EXPORT_PAGE: u32 = 1000;

/// Every row the query selects, newest first, as CSV (with a header) or NDJSON,
/// handed to `send` a page at a time; stops when `send` says the reader left.
pub fn export(
    conn: &Connection,
    mut q: LogQuery,
    format: ExportFormat,
    mut send: impl FnMut(Vec<u8>) -> bool,
) -> OpResult<()> {
    q.limit = EXPORT_PAGE;
    let csv = format == ExportFormat::Csv;
    let mut first = true;
    loop {
        let (rows, next) = page(conn, &q)?;
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
        let tx = conn.transaction().unwrap();
        insert_rows(&tx, events).unwrap();
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
            let (rows, next) = page(&conn, &q).unwrap();
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
        let count = |q: LogQuery| page(&conn, &q).unwrap().0.len();
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
        let got = one(&conn, id, None).unwrap().unwrap();
        assert_eq!(got["request_body"], "{\"model\":\"m\"}");
        assert_eq!(got["status"], 400);
        // Another key's row is not found for a user key.
        assert!(one(&conn, id, Some(7)).unwrap().is_none());
        // Bodies go first; the row stays until its own horizon.
        assert_eq!(prune(&conn, 0, 200).unwrap(), 1);
        let got = one(&conn, id, None).unwrap().unwrap();
        assert!(got["request_body"].is_null());
        assert_eq!(prune(&conn, 101, 200).unwrap(), 2);
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
        export(&conn, LogQuery::default(), ExportFormat::Csv, |b| {
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
        export(&conn, LogQuery::default(), ExportFormat::Ndjson, |b| {
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
        let (path, conn) = db("plan");
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
            let (clause, args) = filters(&q);
            let sql =
                format!("EXPLAIN QUERY PLAN {SELECT} {clause} ORDER BY ts DESC, id DESC LIMIT 10");
            let plan: Vec<String> = conn
                .prepare(&sql)
                .unwrap()
                .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let plan = plan.join(" | ");
            assert!(plan.contains("USING INDEX"), "{q:?}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{q:?} sorts: {plan}");
        }
        drop(conn);
        let _ = std::fs::remove_file(&path);
    }
}
