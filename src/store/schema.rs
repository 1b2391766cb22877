//! The schema, the same migrations in both dialects: SQLite's migrated forward by
//! `PRAGMA user_version`, PostgreSQL's by `weir_schema.version` under an advisory
//! lock (several instances may start at once). PostgreSQL's columns are the types
//! SQLite's hold: BIGINT for INTEGER (booleans 0/1), DOUBLE PRECISION for REAL,
//! BYTEA for BLOB.

use super::db::Sql;
use super::postgres::PgConn;
use rusqlite::Connection;
use std::time::Duration;

const MIGRATIONS: &[&str] = &[
    // 1: keys, groups, models, grants, usage, counters, spend.
    r#"
    CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO meta (key, value) VALUES ('version', 1);
    CREATE TABLE groups (
        name TEXT PRIMARY KEY,
        description TEXT
    );
    INSERT INTO groups (name, description) VALUES ('default', 'keys without another group');
    CREATE TABLE keys (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        key_hash TEXT NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('admin', 'user')),
        group_name TEXT NOT NULL REFERENCES groups(name) ON UPDATE CASCADE,
        email TEXT,
        monthly_budget REAL,
        balance REAL,
        expires_at INTEGER,
        active INTEGER NOT NULL DEFAULT 1,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE models (
        name TEXT PRIMARY KEY,
        price_in REAL NOT NULL DEFAULT 0,
        price_out REAL NOT NULL DEFAULT 0,
        multimodal INTEGER NOT NULL DEFAULT 0,
        config TEXT
    );
    CREATE TABLE group_models (
        group_name TEXT NOT NULL REFERENCES groups(name) ON DELETE CASCADE ON UPDATE CASCADE,
        model TEXT NOT NULL,
        PRIMARY KEY (group_name, model)
    );
    CREATE TABLE key_models (
        key_id INTEGER NOT NULL REFERENCES keys(id) ON DELETE CASCADE,
        model TEXT NOT NULL,
        PRIMARY KEY (key_id, model)
    );
    CREATE TABLE usage (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts INTEGER NOT NULL,
        key_id INTEGER,
        identity TEXT,
        gateway TEXT NOT NULL,
        model TEXT NOT NULL,
        channel TEXT NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        cost REAL NOT NULL,
        estimated INTEGER NOT NULL,
        status INTEGER NOT NULL,
        latency_ms INTEGER NOT NULL,
        stream INTEGER NOT NULL
    );
    CREATE INDEX usage_ts ON usage (ts);
    CREATE INDEX usage_key_ts ON usage (key_id, ts);
    CREATE INDEX usage_gateway_ts ON usage (gateway, ts);
    CREATE TABLE spend (
        key_id INTEGER NOT NULL,
        month INTEGER NOT NULL,
        cost REAL NOT NULL,
        PRIMARY KEY (key_id, month)
    );
    CREATE TABLE gateway_tokens (
        gateway TEXT PRIMARY KEY,
        tokens INTEGER NOT NULL
    );
    CREATE TABLE counters (
        scope TEXT NOT NULL,
        window_start INTEGER NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (scope, window_start)
    );
    "#,
    // 2: the call log costs less per request. AUTOINCREMENT rewrote sqlite_sequence
    // with every row (a rowid is reused only if the newest row is deleted), and every
    // index is one more B-tree insert (~4k instructions each in the load benchmark's
    // profile); reports by gateway and time use `usage_ts` and filter the gateway.
    r#"
    CREATE TABLE usage_v2 (
        id INTEGER PRIMARY KEY,
        ts INTEGER NOT NULL,
        key_id INTEGER,
        identity TEXT,
        gateway TEXT NOT NULL,
        model TEXT NOT NULL,
        channel TEXT NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        cost REAL NOT NULL,
        estimated INTEGER NOT NULL,
        status INTEGER NOT NULL,
        latency_ms INTEGER NOT NULL,
        stream INTEGER NOT NULL
    );
    INSERT INTO usage_v2 SELECT id, ts, key_id, identity, gateway, model, channel,
        prompt_tokens, completion_tokens, cost, estimated, status, latency_ms, stream FROM usage;
    DROP TABLE usage;
    ALTER TABLE usage_v2 RENAME TO usage;
    DELETE FROM sqlite_sequence WHERE name = 'usage';
    CREATE INDEX usage_ts ON usage (ts);
    CREATE INDEX usage_key_ts ON usage (key_id, ts);
    "#,
    // 3: the call log (A4). Every filter of `GET /admin/logs` has an index ending in
    // `ts`, so a filtered page is read newest first straight off the index, whatever
    // the table's size; the status class is a virtual column, indexed, so `5xx`
    // is an equality and not a range that would break the order. A failed call's
    // bodies live in their own table: pruned on their own, and the rows stay narrow.
    r#"
    ALTER TABLE usage ADD COLUMN upstream_model TEXT;
    ALTER TABLE usage ADD COLUMN upstream TEXT;
    ALTER TABLE usage ADD COLUMN error_code TEXT;
    ALTER TABLE usage ADD COLUMN error TEXT;
    ALTER TABLE usage ADD COLUMN ttft_ms INTEGER;
    ALTER TABLE usage ADD COLUMN cache TEXT NOT NULL DEFAULT 'off';
    ALTER TABLE usage ADD COLUMN tried TEXT;
    ALTER TABLE usage ADD COLUMN status_class INTEGER GENERATED ALWAYS AS (status / 100) VIRTUAL;
    CREATE INDEX usage_gateway_ts ON usage (gateway, ts);
    CREATE INDEX usage_model_ts ON usage (model, ts);
    CREATE INDEX usage_channel_ts ON usage (channel, ts);
    CREATE INDEX usage_class_ts ON usage (status_class, ts);
    CREATE TABLE call_bodies (
        id INTEGER PRIMARY KEY,
        ts INTEGER NOT NULL,
        request_body BLOB,
        error_body BLOB
    );
    CREATE INDEX call_bodies_ts ON call_bodies (ts);
    "#,
    // 4: channels and gateways as data (A1): the entry as JSON in the YAML's field
    // names; a channel's provider keys sealed with storage.secret_key, apart.
    r#"
    CREATE TABLE channels (
        name TEXT PRIMARY KEY,
        config TEXT NOT NULL,
        keys BLOB,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE gateways (
        name TEXT PRIMARY KEY,
        config TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    "#,
    // 5: a model's provider (K3).
    r#"
    ALTER TABLE models ADD COLUMN provider TEXT;
    "#,
    // 6: the mail of each imported key (K2): its state, never its secret.
    r#"
    CREATE TABLE mail_outbox (
        key_id INTEGER PRIMARY KEY REFERENCES keys(id) ON DELETE CASCADE,
        email TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('queued', 'sent', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        updated_at INTEGER NOT NULL
    );
    "#,
    // 7: bot webhooks as data (A9): the whole config sealed, secrets and all.
    r#"
    CREATE TABLE webhooks (
        name TEXT PRIMARY KEY,
        provider TEXT NOT NULL,
        config BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    "#,
    // 8: exact rolling windows (G4): each persisted (rule, caller) log's buckets
    // (1/60,000 of the window each), deleted once their admissions have all left
    // the window. The fixed UTC hour and day counts go with their table: the
    // windows start afresh once, at this upgrade.
    r#"
    CREATE TABLE rate_buckets (
        key TEXT NOT NULL,
        bucket INTEGER NOT NULL,
        count INTEGER NOT NULL,
        window_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        PRIMARY KEY (key, bucket)
    ) WITHOUT ROWID;
    CREATE INDEX rate_buckets_expiry ON rate_buckets (expires_ms);
    DROP TABLE counters;
    "#,
    // 9: the client's address in the call log (through server.trusted_proxies).
    r#"
    ALTER TABLE usage ADD COLUMN client_ip TEXT;
    "#,
    // 10: what data masking replaced (counts per detector, never the values).
    r#"
    ALTER TABLE usage ADD COLUMN masked TEXT;
    "#,
];

/// The same steps as `MIGRATIONS`, for PostgreSQL. A step that only undid a
/// SQLite cost (2) or dropped what PostgreSQL never had is empty here.
const PG_MIGRATIONS: &[&str] = &[
    // 1
    r#"
    CREATE TABLE meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
    INSERT INTO meta (key, value) VALUES ('version', 1);
    CREATE TABLE groups (
        name TEXT PRIMARY KEY,
        description TEXT
    );
    INSERT INTO groups (name, description) VALUES ('default', 'keys without another group');
    CREATE TABLE keys (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        name TEXT NOT NULL,
        key_hash TEXT NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('admin', 'user')),
        group_name TEXT NOT NULL REFERENCES groups(name) ON UPDATE CASCADE,
        email TEXT,
        monthly_budget DOUBLE PRECISION,
        balance DOUBLE PRECISION,
        expires_at BIGINT,
        active BIGINT NOT NULL DEFAULT 1,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE models (
        name TEXT PRIMARY KEY,
        price_in DOUBLE PRECISION NOT NULL DEFAULT 0,
        price_out DOUBLE PRECISION NOT NULL DEFAULT 0,
        multimodal BIGINT NOT NULL DEFAULT 0,
        config TEXT
    );
    CREATE TABLE group_models (
        group_name TEXT NOT NULL REFERENCES groups(name) ON DELETE CASCADE ON UPDATE CASCADE,
        model TEXT NOT NULL,
        PRIMARY KEY (group_name, model)
    );
    CREATE TABLE key_models (
        key_id BIGINT NOT NULL REFERENCES keys(id) ON DELETE CASCADE,
        model TEXT NOT NULL,
        PRIMARY KEY (key_id, model)
    );
    CREATE TABLE usage (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        ts BIGINT NOT NULL,
        key_id BIGINT,
        identity TEXT,
        gateway TEXT NOT NULL,
        model TEXT NOT NULL,
        channel TEXT NOT NULL,
        prompt_tokens BIGINT NOT NULL,
        completion_tokens BIGINT NOT NULL,
        cost DOUBLE PRECISION NOT NULL,
        estimated BIGINT NOT NULL,
        status BIGINT NOT NULL,
        latency_ms BIGINT NOT NULL,
        stream BIGINT NOT NULL
    );
    CREATE INDEX usage_ts ON usage (ts);
    CREATE INDEX usage_key_ts ON usage (key_id, ts);
    CREATE INDEX usage_gateway_ts ON usage (gateway, ts);
    CREATE TABLE spend (
        key_id BIGINT NOT NULL,
        month BIGINT NOT NULL,
        cost DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (key_id, month)
    );
    CREATE TABLE gateway_tokens (
        gateway TEXT PRIMARY KEY,
        tokens BIGINT NOT NULL
    );
    CREATE TABLE counters (
        scope TEXT NOT NULL,
        window_start BIGINT NOT NULL,
        count BIGINT NOT NULL,
        PRIMARY KEY (scope, window_start)
    );
    "#,
    // 2: SQLite's AUTOINCREMENT cost; an identity column has none.
    r#"
    DROP INDEX usage_gateway_ts;
    "#,
    // 3: the call log (A4).
    r#"
    ALTER TABLE usage ADD COLUMN upstream_model TEXT;
    ALTER TABLE usage ADD COLUMN upstream TEXT;
    ALTER TABLE usage ADD COLUMN error_code TEXT;
    ALTER TABLE usage ADD COLUMN error TEXT;
    ALTER TABLE usage ADD COLUMN ttft_ms BIGINT;
    ALTER TABLE usage ADD COLUMN cache TEXT NOT NULL DEFAULT 'off';
    ALTER TABLE usage ADD COLUMN tried TEXT;
    ALTER TABLE usage ADD COLUMN status_class BIGINT GENERATED ALWAYS AS (status / 100) STORED;
    CREATE INDEX usage_gateway_ts ON usage (gateway, ts);
    CREATE INDEX usage_model_ts ON usage (model, ts);
    CREATE INDEX usage_channel_ts ON usage (channel, ts);
    CREATE INDEX usage_class_ts ON usage (status_class, ts);
    CREATE TABLE call_bodies (
        id BIGINT PRIMARY KEY,
        ts BIGINT NOT NULL,
        request_body BYTEA,
        error_body BYTEA
    );
    CREATE INDEX call_bodies_ts ON call_bodies (ts);
    "#,
    // 4: channels and gateways as data (A1).
    r#"
    CREATE TABLE channels (
        name TEXT PRIMARY KEY,
        config TEXT NOT NULL,
        keys BYTEA,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    CREATE TABLE gateways (
        name TEXT PRIMARY KEY,
        config TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    "#,
    // 5: a model's provider (K3).
    r#"
    ALTER TABLE models ADD COLUMN provider TEXT;
    "#,
    // 6: the mail of each imported key (K2).
    r#"
    CREATE TABLE mail_outbox (
        key_id BIGINT PRIMARY KEY REFERENCES keys(id) ON DELETE CASCADE,
        email TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('queued', 'sent', 'failed')),
        attempts BIGINT NOT NULL DEFAULT 0,
        error TEXT,
        updated_at BIGINT NOT NULL
    );
    "#,
    // 7: bot webhooks as data (A9).
    r#"
    CREATE TABLE webhooks (
        name TEXT PRIMARY KEY,
        provider TEXT NOT NULL,
        config BYTEA NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    "#,
    // 8: exact rolling windows (G4).
    r#"
    CREATE TABLE rate_buckets (
        key TEXT NOT NULL,
        bucket BIGINT NOT NULL,
        count BIGINT NOT NULL,
        window_ms BIGINT NOT NULL,
        expires_ms BIGINT NOT NULL,
        PRIMARY KEY (key, bucket)
    );
    CREATE INDEX rate_buckets_expiry ON rate_buckets (expires_ms);
    DROP TABLE counters;
    "#,
    // 9
    r#"
    ALTER TABLE usage ADD COLUMN client_ip TEXT;
    "#,
    // 10
    r#"
    ALTER TABLE usage ADD COLUMN masked TEXT;
    "#,
];

/// Where the store lives.
#[derive(Debug, Clone)]
pub enum Target {
    Sqlite(String),
    Postgres { url: String, timeout: Duration },
}

impl Target {
    pub fn of(storage: &weir_filters::config::StorageConfig) -> Target {
        match &storage.postgres {
            Some(pg) => Target::Postgres {
                url: pg.url.clone(),
                timeout: pg.timeout.0,
            },
            None => Target::Sqlite(storage.sqlite.clone()),
        }
    }

    /// For messages: the file, or the URL without its password.
    pub fn shown(&self) -> String {
        match self {
            Target::Sqlite(path) => path.clone(),
            Target::Postgres { url, .. } => super::postgres::redact(url),
        }
    }

    /// A connection, the schema migrated to the current version.
    pub fn open(&self) -> Result<Box<dyn Sql>, String> {
        match self {
            Target::Sqlite(path) => Ok(Box::new(open(path)?)),
            Target::Postgres { url, timeout } => Ok(Box::new(open_postgres(url, *timeout)?)),
        }
    }

    /// A connection that only reads (an export of its own).
    pub fn open_read_only(&self) -> Result<Box<dyn Sql>, String> {
        match self {
            Target::Sqlite(path) => {
                let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
                Connection::open_with_flags(path, flags)
                    .map(|c| Box::new(c) as Box<dyn Sql>)
                    .map_err(|e| format!("cannot open {path}: {e}"))
            }
            Target::Postgres { url, timeout } => {
                Ok(Box::new(PgConn::open(url, *timeout)?) as Box<dyn Sql>)
            }
        }
    }
}

/// Connects to PostgreSQL and migrates it; instances starting together take
/// turns (one advisory lock), so each step runs once.
pub fn open_postgres(url: &str, timeout: Duration) -> Result<PgConn, String> {
    let mut pg = PgConn::open(url, timeout)?;
    let shown = super::postgres::redact(url);
    let db: &mut dyn Sql = &mut pg;
    let fail = |e: super::db::DbError| format!("cannot migrate {shown}: {e}");
    let mut tx = db.begin().map_err(fail)?;
    // 0x77656972 is "weir": one lock for every instance's migration, taken before
    // anything is created (concurrent CREATE ... IF NOT EXISTS can still collide).
    tx.query("SELECT pg_advisory_xact_lock(2003134834)", crate::args![])
        .map_err(fail)?;
    tx.batch("CREATE TABLE IF NOT EXISTS weir_schema (version BIGINT NOT NULL)")
        .map_err(fail)?;
    let version = tx
        .value::<i64>("SELECT version FROM weir_schema", crate::args![])
        .map_err(fail)?;
    if version.is_none() {
        tx.execute(
            "INSERT INTO weir_schema (version) VALUES (0)",
            crate::args![],
        )
        .map_err(fail)?;
    }
    let version = version.unwrap_or(0).max(0) as usize;
    if version > PG_MIGRATIONS.len() {
        return Err(format!(
            "{shown} has schema version {version}, newer than this weir ({}); upgrade weir",
            PG_MIGRATIONS.len()
        ));
    }
    for (i, sql) in PG_MIGRATIONS.iter().enumerate().skip(version) {
        tx.batch(sql)
            .map_err(|e| format!("cannot migrate {shown} to version {}: {e}", i + 1))?;
    }
    tx.execute(
        "UPDATE weir_schema SET version = ?1",
        crate::args![PG_MIGRATIONS.len() as i64],
    )
    .map_err(fail)?;
    tx.commit().map_err(fail)?;
    Ok(pg)
}

/// Opens (creating) the database, in WAL mode, migrated to the current schema.
pub fn open(path: &str) -> Result<Connection, String> {
    if let Some(dir) = std::path::Path::new(path).parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
    }
    let mut conn = Connection::open(path).map_err(|e| format!("cannot open {path}: {e}"))?;
    conn.set_prepared_statement_cache_capacity(64);
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
    )
    .map_err(|e| format!("cannot set up {path}: {e}"))?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| format!("cannot read {path}: {e}"))?;
    if version as usize > MIGRATIONS.len() {
        return Err(format!(
            "{path} has schema version {version}, newer than this weir ({}); upgrade weir",
            MIGRATIONS.len()
        ));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction().map_err(|e| e.to_string())?;
        tx.execute_batch(sql)
            .and_then(|_| tx.pragma_update(None, "user_version", (i + 1) as i64))
            .and_then(|_| tx.commit())
            .map_err(|e| format!("cannot migrate {path} to version {}: {e}", i + 1))?;
    }
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_dialects_have_every_step() {
        assert_eq!(MIGRATIONS.len(), PG_MIGRATIONS.len());
    }

    #[test]
    fn migrations_keep_the_call_log_of_a_version_1_database() {
        let path = std::env::temp_dir().join(format!("weir-schema-test-{}.db", std::process::id()));
        let path = path.to_str().unwrap().to_string();
        let _ = std::fs::remove_file(&path);
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO usage (ts, key_id, gateway, model, channel, prompt_tokens, completion_tokens, cost, estimated, status, latency_ms, stream)
                 VALUES (5, 1, 'g', 'm', 'c', 1, 2, 0.5, 0, 200, 3, 0)",
                [],
            )
            .unwrap();
        }
        let conn = open(&path).unwrap();
        let (id, cost): (i64, f64) = conn
            .query_row("SELECT id, cost FROM usage", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((id, cost), (1, 0.5));
        let sql: String = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE name = 'usage'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(!sql.contains("AUTOINCREMENT"), "{sql}");
        let indexes: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'usage' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            indexes,
            [
                "usage_channel_ts",
                "usage_class_ts",
                "usage_gateway_ts",
                "usage_key_ts",
                "usage_model_ts",
                "usage_ts"
            ]
        );
        drop(conn);
        let _ = std::fs::remove_file(&path);
    }
}
