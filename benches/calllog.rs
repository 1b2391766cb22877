//! The call log's queries on a large table (A4): `GET /admin/logs` pages with each
//! filter, deep in the cursor chain, one row by id. `cargo bench --bench calllog`.
//! The table is built once (10 million rows unless `WEIR_BENCH_ROWS` says otherwise)
//! in `target/weir-bench-calllog-N.db` and reused by later runs.

#![allow(clippy::unwrap_used)] // a benchmark: a failed unwrap is a broken setup

use criterion::{criterion_group, criterion_main, Criterion};
use rusqlite::Connection;
use std::path::PathBuf;
use std::time::Instant;
use weir::store::calllog::{self, ROWS_PER_INSERT};
use weir::store::{schema, UsageEvent};
use weir_filters::calllog::{Cursor, LogQuery, StatusFilter};

fn rows_wanted() -> u64 {
    std::env::var("WEIR_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000)
}

/// A plausible mix: 20 gateways, 50 models, 30 channels, 5,000 keys, 2% 4xx, 0.5% 5xx,
/// one row every 10 ms (about 28 hours of traffic per 10 million rows).
fn event(i: u64) -> UsageEvent {
    let status = match i % 1000 {
        0..=4 => 502,
        5..=24 => 429,
        _ => 200,
    };
    UsageEvent {
        ts: 1_790_000_000 + (i / 100) as i64,
        key_id: Some((i * 7919 % 5000) as i64),
        gateway: format!("gw-{}", i % 20),
        model: format!("model-{}", i * 31 % 50),
        channel: format!("ch-{}", i * 17 % 30),
        prompt_tokens: 100 + i % 400,
        completion_tokens: 50 + i % 300,
        cost: 0.001,
        status,
        latency_ms: 200 + i % 800,
        ttft_ms: Some(50 + i % 100),
        error_code: (status >= 400).then(|| "upstream_error".to_string()),
        error: (status >= 400).then(|| format!("no usable answer: ch-{}: HTTP {status}", i % 30)),
        cache: "off",
        ..UsageEvent::default()
    }
}

fn database() -> Connection {
    let n = rows_wanted();
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("target/weir-bench-calllog-{n}.db"));
    let mut conn = schema::open(path.to_str().unwrap()).unwrap();
    let have: u64 = conn
        .query_row("SELECT COUNT(*) FROM usage", [], |r| r.get::<_, i64>(0))
        .unwrap() as u64;
    if have < n {
        let started = Instant::now();
        conn.execute_batch("PRAGMA synchronous = OFF").unwrap();
        let batch = 100 * ROWS_PER_INSERT as u64;
        let mut i = have;
        while i < n {
            let events: Vec<UsageEvent> = (i..(i + batch).min(n)).map(event).collect();
            let db: &mut dyn weir::store::db::Sql = &mut conn;
            let mut tx = db.begin().unwrap();
            calllog::insert_rows(&mut *tx, &events).unwrap();
            tx.commit().unwrap();
            i += events.len() as u64;
        }
        conn.execute_batch("PRAGMA synchronous = NORMAL; ANALYZE")
            .unwrap();
        eprintln!("built {n} rows in {:.0?}", started.elapsed());
    }
    conn
}

fn queries(c: &mut Criterion) {
    let mut conn = database();
    let mut g = c.benchmark_group("calllog_page_100");
    let last_ts = 1_790_000_000 + (rows_wanted() / 100) as i64;
    let cases: Vec<(&str, LogQuery)> = vec![
        ("newest", LogQuery::default()),
        (
            "gateway",
            LogQuery {
                gateway: Some("gw-7".into()),
                ..LogQuery::default()
            },
        ),
        (
            "key",
            LogQuery {
                key_id: Some(4321),
                ..LogQuery::default()
            },
        ),
        (
            "model",
            LogQuery {
                model: Some("model-9".into()),
                ..LogQuery::default()
            },
        ),
        (
            "channel",
            LogQuery {
                channel: Some("ch-3".into()),
                ..LogQuery::default()
            },
        ),
        (
            "status_5xx",
            LogQuery {
                status: Some(StatusFilter::Class(5)),
                ..LogQuery::default()
            },
        ),
        (
            "status_429_gateway",
            LogQuery {
                status: Some(StatusFilter::Exact(429)),
                gateway: Some("gw-5".into()),
                ..LogQuery::default()
            },
        ),
        (
            "a_day_ago",
            LogQuery {
                to: Some(last_ts - 86_400),
                ..LogQuery::default()
            },
        ),
        (
            "deep_cursor",
            LogQuery {
                before: Some(Cursor {
                    ts: last_ts - 50_000,
                    id: i64::MAX,
                }),
                gateway: Some("gw-2".into()),
                ..LogQuery::default()
            },
        ),
    ];
    for (name, q) in &cases {
        g.bench_function(*name, |b| {
            b.iter(|| {
                let (rows, _) = calllog::page(&mut conn, q).unwrap();
                assert!(!rows.is_empty(), "{name}: no rows");
            })
        });
    }
    g.finish();
    let mut g = c.benchmark_group("calllog");
    g.bench_function("one_by_id", |b| {
        b.iter(|| calllog::one(&mut conn, 4_000_000, None).unwrap())
    });
    // `q` reads every row the other filters leave: with a gateway and a day window
    // it stays bounded; alone it scans the table (measured with few samples).
    g.sample_size(10);
    g.bench_function("text_in_a_gateway_day", |b| {
        let q = LogQuery {
            q: Some("HTTP 502".into()),
            gateway: Some("gw-1".into()),
            from: Some(last_ts - 86_400),
            ..LogQuery::default()
        };
        b.iter(|| calllog::page(&mut conn, &q).unwrap())
    });
    g.finish();
}

criterion_group!(benches, queries);
criterion_main!(benches);
