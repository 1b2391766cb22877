//! One API / New API import (A7): reads a source database, MySQL/MariaDB (sqlx) or
//! a SQLite file (rusqlite, read-only), and plans what weir stores; the store
//! applies the plan in one transaction (`store::one_api`). Every query casts its
//! columns to a whole number or text, so the forks' differing column types (and
//! columns one of them lacks) read the same way.

use sqlx::{Connection, Row};
use std::time::Duration;
pub use weir_filters::one_api::ImportRequest;
use weir_filters::one_api::{self, Fork, PlannedChannel, PlannedKey, SourceChannel, SourceToken};
use weir_filters::GatewayError;

/// The source read whole, before any mapping.
pub struct Source {
    pub fork: Fork,
    pub channels: Vec<SourceChannel>,
    pub tokens: Vec<SourceToken>,
}

/// What the store is asked to write, and the rows that could not be mapped.
pub struct Plan {
    pub fork: Fork,
    pub channels: Vec<PlannedChannel>,
    pub keys: Vec<PlannedKey>,
    pub errors: Vec<serde_json::Value>,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn bad(msg: String) -> GatewayError {
    GatewayError::BadRequest(msg)
}

/// Reads the source at `dsn`; `tokens` reads its tokens too.
pub async fn read(dsn: &str, tokens: bool) -> Result<Source, GatewayError> {
    let dsn = dsn.trim();
    if let Some(path) = dsn
        .strip_prefix("sqlite://")
        .or_else(|| dsn.strip_prefix("sqlite:"))
    {
        let path = path.to_string();
        return tokio::task::spawn_blocking(move || read_sqlite(&path, tokens))
            .await
            .map_err(|e| GatewayError::Internal(format!("the SQLite reader failed: {e}")))?;
    }
    let url = mysql_url(dsn)?;
    read_mysql(&url, tokens).await
}

/// `mysql://…` as it is, or One API's own `SQL_DSN` form (`user:pass@tcp(host:3306)/db`).
fn mysql_url(dsn: &str) -> Result<String, GatewayError> {
    if dsn.starts_with("mysql://") || dsn.starts_with("mariadb://") {
        return Ok(dsn.replacen("mariadb://", "mysql://", 1));
    }
    if let Some((auth, rest)) = dsn.rsplit_once("@tcp(") {
        if let Some((host, db)) = rest.split_once(')') {
            let db = db.split('?').next().unwrap_or("");
            // Go's DSN takes the password raw; a URL needs it escaped.
            let (user, password) = auth.split_once(':').unwrap_or((auth, ""));
            let auth = match password {
                "" => escape(user),
                p => format!("{}:{}", escape(user), escape(p)),
            };
            return Ok(format!("mysql://{auth}@{host}{db}"));
        }
    }
    if dsn.starts_with("postgres") {
        return Err(bad(
            "dsn: PostgreSQL sources are not supported yet; use mysql://… or sqlite:PATH".into(),
        ));
    }
    Err(bad(format!(
        "dsn: `{}` is not mysql://user:pass@host:3306/db, user:pass@tcp(host:3306)/db or sqlite:PATH",
        redact(dsn)
    )))
}

/// Percent-escapes all but the URL's unreserved characters.
fn escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The DSN with its password hidden, for messages (the last `@` ends the login,
/// whatever the password holds).
pub fn redact(dsn: &str) -> String {
    let (scheme, rest) = dsn.split_once("://").unwrap_or(("", dsn));
    let shown = match rest.rsplit_once('@') {
        Some((auth, host)) => match auth.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => rest.to_string(),
        },
        None => rest.to_string(),
    };
    if scheme.is_empty() {
        shown
    } else {
        format!("{scheme}://{shown}")
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Ty {
    Int,
    Text,
}

/// One value as read: the query casts every column to one of these.
#[derive(Debug, Clone, Default)]
struct Cell {
    int: Option<i64>,
    text: Option<String>,
}

impl Cell {
    /// A row's cells by the column types, read with the driver's own getters.
    fn row<E>(
        cols: &[(&str, Ty)],
        int: impl Fn(usize) -> Result<Option<i64>, E>,
        text: impl Fn(usize) -> Result<Option<String>, E>,
    ) -> Result<Vec<Cell>, E> {
        cols.iter()
            .enumerate()
            .map(|(i, (_, ty))| {
                Ok(match ty {
                    Ty::Int => Cell {
                        int: int(i)?,
                        text: None,
                    },
                    Ty::Text => Cell {
                        int: None,
                        text: text(i)?,
                    },
                })
            })
            .collect()
    }
}

const CHANNEL_COLUMNS: &[(&str, Ty)] = &[
    ("id", Ty::Int),
    ("type", Ty::Int),
    ("key", Ty::Text),
    ("status", Ty::Int),
    ("name", Ty::Text),
    ("base_url", Ty::Text),
    ("models", Ty::Text),
    ("group", Ty::Text),
    ("model_mapping", Ty::Text),
    ("priority", Ty::Int),
    ("weight", Ty::Int),
    ("other", Ty::Text),
    ("config", Ty::Text),
    ("system_prompt", Ty::Text),
];

const TOKEN_REQUIRED: &[&str] = &["id", "key", "status", "remain_quota", "unlimited_quota"];

const TOKEN_COLUMNS: &[(&str, Ty)] = &[
    ("id", Ty::Int),
    ("key", Ty::Text),
    ("status", Ty::Int),
    ("name", Ty::Text),
    ("expired_time", Ty::Int),
    ("remain_quota", Ty::Int),
    ("unlimited_quota", Ty::Int),
    ("models", Ty::Text),
    ("model_limits_enabled", Ty::Int),
    ("model_limits", Ty::Text),
    ("group", Ty::Text),
];

#[derive(Clone, Copy, PartialEq)]
enum Dialect {
    MySql,
    Sqlite,
}

/// `SELECT` of `wanted` from `table` (alias `t`), each cast to its type, NULL where
/// the table lacks the column; with `owner`, the owning user's group comes first
/// (`users` joined as `u`). Names are the constants above, never input.
fn select(d: Dialect, table: &str, have: &[String], wanted: &[(&str, Ty)], owner: bool) -> String {
    let has = |c: &str| have.iter().any(|h| h.eq_ignore_ascii_case(c));
    let lead = match (owner, d) {
        (false, _) => String::new(),
        (true, Dialect::MySql) => "CAST(u.`group` AS CHAR), ".to_string(),
        (true, Dialect::Sqlite) => "CAST(u.`group` AS TEXT), ".to_string(),
    };
    let join = if owner {
        " LEFT JOIN `users` u ON u.`id` = t.`user_id`"
    } else {
        ""
    };
    let cols: Vec<String> = wanted
        .iter()
        .map(|(name, ty)| {
            let col = if has(name) {
                format!("t.`{name}`")
            } else {
                "NULL".to_string()
            };
            match (d, ty) {
                (Dialect::MySql, Ty::Int) => format!("CAST({col} AS SIGNED)"),
                (Dialect::MySql, Ty::Text) => format!("CAST({col} AS CHAR)"),
                (Dialect::Sqlite, Ty::Int) => format!("CAST({col} AS INTEGER)"),
                (Dialect::Sqlite, Ty::Text) => format!("CAST({col} AS TEXT)"),
            }
        })
        .collect();
    let live = if has("deleted_at") {
        " WHERE t.`deleted_at` IS NULL"
    } else {
        ""
    };
    format!(
        "SELECT {lead}{} FROM `{table}` t{join}{live} ORDER BY t.`id`",
        cols.join(", ")
    )
}

fn channel_of(c: &[Cell]) -> SourceChannel {
    let int = |i: usize| c[i].int;
    let text = |i: usize| c[i].text.clone();
    SourceChannel {
        id: int(0).unwrap_or(0),
        kind: int(1).unwrap_or(0),
        key: text(2),
        status: int(3).unwrap_or(1),
        name: text(4),
        base_url: text(5),
        models: text(6),
        group: text(7),
        model_mapping: text(8),
        priority: int(9),
        weight: int(10),
        other: text(11),
        config: text(12),
        system_prompt: text(13),
    }
}

fn token_of(c: &[Cell], user_group: Option<String>) -> SourceToken {
    SourceToken {
        id: c[0].int.unwrap_or(0),
        key: c[1].text.clone().unwrap_or_default(),
        status: c[2].int.unwrap_or(1),
        name: c[3].text.clone(),
        expired_time: c[4].int,
        remain_quota: c[5].int,
        unlimited_quota: c[6].int.unwrap_or(0) != 0,
        models: c[7].text.clone(),
        model_limits_enabled: c[8].int.unwrap_or(0) != 0,
        model_limits: c[9].text.clone(),
        group: c[10].text.clone(),
        user_group,
    }
}

fn check_tokens_table(have: &[String]) -> Result<(), GatewayError> {
    if have.is_empty() {
        return Err(bad(
            "dsn: the source has no `tokens` table to import tokens from".into(),
        ));
    }
    let missing: Vec<&str> = TOKEN_REQUIRED
        .iter()
        .copied()
        .filter(|c| !have.iter().any(|h| h.eq_ignore_ascii_case(c)))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(bad(format!(
            "the `tokens` table lacks {} (it has: {})",
            missing.join(", "),
            have.join(", ")
        )))
    }
}

fn fork_of(channel_columns: &[String]) -> Result<Fork, GatewayError> {
    if channel_columns.is_empty() {
        return Err(bad(
            "dsn: the database has no `channels` table; is it One API's or New API's?".into(),
        ));
    }
    one_api::detect(channel_columns).map_err(bad)
}

async fn read_mysql(url: &str, tokens: bool) -> Result<Source, GatewayError> {
    let shown = redact(url);
    let options: sqlx::mysql::MySqlConnectOptions = url
        .parse()
        .map_err(|e| bad(format!("dsn: `{shown}`: {e}")))?;
    let mut conn = tokio::time::timeout(
        CONNECT_TIMEOUT,
        sqlx::MySqlConnection::connect_with(&options),
    )
    .await
    .map_err(|_| bad(format!("dsn: `{shown}` did not answer within 10 s")))?
    .map_err(|e| bad(format!("dsn: cannot connect to `{shown}`: {e}")))?;
    let query_err = |e: sqlx::Error| bad(format!("reading `{shown}`: {e}"));
    let db: Option<String> = sqlx::query_scalar("SELECT DATABASE()")
        .fetch_one(&mut conn)
        .await
        .map_err(query_err)?;
    if db.is_none() {
        return Err(bad(format!("dsn: `{shown}` names no database (…/oneapi)")));
    }
    let channel_cols = mysql_columns(&mut conn, "channels")
        .await
        .map_err(query_err)?;
    let fork = fork_of(&channel_cols)?;
    let sql = select(
        Dialect::MySql,
        "channels",
        &channel_cols,
        CHANNEL_COLUMNS,
        false,
    );
    let channels = mysql_rows(&mut conn, &sql, CHANNEL_COLUMNS)
        .await
        .map_err(query_err)?
        .iter()
        .map(|r| channel_of(r))
        .collect();
    let mut found = Vec::new();
    if tokens {
        let token_cols = mysql_columns(&mut conn, "tokens")
            .await
            .map_err(query_err)?;
        check_tokens_table(&token_cols)?;
        let users = mysql_columns(&mut conn, "users").await.map_err(query_err)?;
        let owner = joins_owner(&token_cols, &users);
        let sql = select(Dialect::MySql, "tokens", &token_cols, TOKEN_COLUMNS, owner);
        for r in mysql_rows(&mut conn, &sql, &owner_first(owner))
            .await
            .map_err(query_err)?
        {
            found.push(token_row(owner, &r));
        }
    }
    let _ = conn.close().await;
    Ok(Source {
        fork,
        channels,
        tokens: found,
    })
}

/// Whether the owner's group can be read: tokens name their user, users have groups.
fn joins_owner(token_cols: &[String], user_cols: &[String]) -> bool {
    token_cols.iter().any(|c| c == "user_id") && user_cols.iter().any(|c| c == "group")
}

/// The token columns, after the owner's group when it is read.
fn owner_first(owner: bool) -> Vec<(&'static str, Ty)> {
    let mut cols = Vec::with_capacity(TOKEN_COLUMNS.len() + 1);
    if owner {
        cols.push(("user_group", Ty::Text));
    }
    cols.extend_from_slice(TOKEN_COLUMNS);
    cols
}

fn token_row(owner: bool, r: &[Cell]) -> SourceToken {
    if owner {
        token_of(&r[1..], r[0].text.clone())
    } else {
        token_of(r, None)
    }
}

async fn mysql_columns(
    conn: &mut sqlx::MySqlConnection,
    table: &str,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT CAST(COLUMN_NAME AS CHAR) FROM information_schema.COLUMNS
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
    )
    .bind(table)
    .fetch_all(conn)
    .await
}

async fn mysql_rows(
    conn: &mut sqlx::MySqlConnection,
    sql: &str,
    cols: &[(&str, Ty)],
) -> Result<Vec<Vec<Cell>>, sqlx::Error> {
    // Built from the constant column lists above, never from input.
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|row| Cell::row(cols, |i| row.try_get(i), |i| row.try_get(i)))
        .collect()
}

fn read_sqlite(path: &str, tokens: bool) -> Result<Source, GatewayError> {
    if !std::path::Path::new(path).is_file() {
        return Err(bad(format!("dsn: no SQLite file at `{path}`")));
    }
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| bad(format!("dsn: cannot open `{path}`: {e}")))?;
    let query_err = |e: rusqlite::Error| bad(format!("reading `{path}`: {e}"));
    let channel_cols = sqlite_columns(&conn, "channels").map_err(query_err)?;
    let fork = fork_of(&channel_cols)?;
    let sql = select(
        Dialect::Sqlite,
        "channels",
        &channel_cols,
        CHANNEL_COLUMNS,
        false,
    );
    let channels = sqlite_rows(&conn, &sql, CHANNEL_COLUMNS)
        .map_err(query_err)?
        .iter()
        .map(|r| channel_of(r))
        .collect();
    let mut found = Vec::new();
    if tokens {
        let token_cols = sqlite_columns(&conn, "tokens").map_err(query_err)?;
        check_tokens_table(&token_cols)?;
        let users = sqlite_columns(&conn, "users").map_err(query_err)?;
        let owner = joins_owner(&token_cols, &users);
        let sql = select(Dialect::Sqlite, "tokens", &token_cols, TOKEN_COLUMNS, owner);
        for r in sqlite_rows(&conn, &sql, &owner_first(owner)).map_err(query_err)? {
            found.push(token_row(owner, &r));
        }
    }
    Ok(Source {
        fork,
        channels,
        tokens: found,
    })
}

fn sqlite_columns(conn: &rusqlite::Connection, table: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")?;
    let rows = stmt.query_map([table], |r| r.get(0))?;
    rows.collect()
}

fn sqlite_rows(
    conn: &rusqlite::Connection,
    sql: &str,
    cols: &[(&str, Ty)],
) -> rusqlite::Result<Vec<Vec<Cell>>> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map([], |row| Cell::row(cols, |i| row.get(i), |i| row.get(i)))?;
    rows.collect()
}

/// Maps every row; a row that cannot be mapped is an error of its own, by source id.
pub fn plan(source: Source, prefix: Option<&str>) -> Result<Plan, GatewayError> {
    let prefix = prefix.unwrap_or(source.fork.as_str());
    if prefix.is_empty()
        || prefix.len() > 40
        || !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
    {
        return Err(bad(format!(
            "prefix: `{prefix}` must be 1-40 letters, digits, `-` or `_`"
        )));
    }
    let mut out = Plan {
        fork: source.fork,
        channels: Vec::new(),
        keys: Vec::new(),
        errors: Vec::new(),
    };
    for row in &source.channels {
        match one_api::plan_channel(source.fork, prefix, row) {
            Ok(p) => out.channels.push(p),
            Err(e) => out
                .errors
                .push(serde_json::json!({"channel": row.id, "message": e})),
        }
    }
    for t in &source.tokens {
        match one_api::plan_token(t) {
            Ok(k) => out.keys.push(k),
            Err(e) => out
                .errors
                .push(serde_json::json!({"token": t.id, "message": e})),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsns_in_either_form_and_passwords_never_shown() {
        assert_eq!(
            mysql_url("root:pw@tcp(db:3306)/oneapi?parseTime=true").unwrap(),
            "mysql://root:pw@db:3306/oneapi"
        );
        assert_eq!(mysql_url("mysql://u:p@h/d").unwrap(), "mysql://u:p@h/d");
        let e = mysql_url("redis://u:secret@h").unwrap_err().to_string();
        assert!(e.contains("u:***@h") && !e.contains("secret"), "{e}");
        assert!(mysql_url("postgres://x")
            .unwrap_err()
            .to_string()
            .contains("PostgreSQL"));
        assert_eq!(redact("mysql://u:p@h:3306/d"), "mysql://u:***@h:3306/d");
        assert_eq!(redact("mysql://h/d"), "mysql://h/d");
        assert_eq!(redact("mysql://u:p@ss@h/d"), "mysql://u:***@h/d");
        assert_eq!(
            mysql_url("root:p@ss:w/rd@tcp(db:3306)/oneapi").unwrap(),
            "mysql://root:p%40ss%3Aw%2Frd@db:3306/oneapi"
        );
    }

    #[test]
    fn the_select_casts_and_fills_what_a_fork_lacks() {
        let have: Vec<String> = ["id", "key", "deleted_at"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let sql = select(
            Dialect::MySql,
            "tokens",
            &have,
            &[("id", Ty::Int), ("key", Ty::Text), ("group", Ty::Text)],
            true,
        );
        assert_eq!(
            sql,
            "SELECT CAST(u.`group` AS CHAR), CAST(t.`id` AS SIGNED), CAST(t.`key` AS CHAR), CAST(NULL AS CHAR) \
             FROM `tokens` t LEFT JOIN `users` u ON u.`id` = t.`user_id` WHERE t.`deleted_at` IS NULL ORDER BY t.`id`"
        );
    }
}
