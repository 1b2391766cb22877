//! The store's SQL on PostgreSQL (S1, `storage.postgres`), for several instances
//! on one database. The store's threads are not on the request path, so each
//! connection is driven by a small runtime of its own and used like SQLite's:
//! one statement at a time, under `timeout`. A lost connection is reported as
//! such (the writer keeps its queue and tries again) and replaced at next use.

use super::db::{numbered, DbError, DbResult, Dialect, Kind, Row, Sql, Value};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgConnection, PgRow};
use sqlx::query::Query;
use sqlx::{Column, Connection, Postgres, Row as _, TypeInfo};
use std::collections::HashMap;
use std::time::Duration;

pub struct PgConn {
    rt: tokio::runtime::Runtime,
    options: PgConnectOptions,
    conn: Option<PgConnection>,
    /// `?` statements as `$N`, by their text (the same few hundred, reused).
    numbered: HashMap<String, String>,
    timeout: Duration,
    /// Shown in errors instead of the URL (which may hold a password).
    shown: String,
}

pub use weir_filters::config::hide_password as redact;

/// Whether trying again later can succeed: everything but a refusal of what the
/// statement holds (SQLSTATE classes 22, data exceptions such as a bad byte, and
/// 23, integrity violations). A server shutting down (57P01), a lost connection
/// (08…), a deadlock (40P01) or a full disk (53…) pass.
fn lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => !db
            .code()
            .is_some_and(|c| c.starts_with("22") || c.starts_with("23")),
        sqlx::Error::RowNotFound
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::TypeNotFound { .. } => false,
        _ => true,
    }
}

fn err(e: sqlx::Error) -> DbError {
    DbError {
        lost: lost(&e),
        message: e.to_string(),
    }
}

impl PgConn {
    /// Connects at once (so a bad URL or password is an error at start).
    pub fn open(url: &str, timeout: Duration) -> Result<PgConn, String> {
        let shown = redact(url);
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e| format!("storage.postgres: `{shown}`: {e}"))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the PostgreSQL runtime: {e}"))?;
        let mut pg = PgConn {
            rt,
            // The server gives up a statement too, not only this side.
            options: options
                .application_name("weir")
                .options([("statement_timeout", format!("{}ms", timeout.as_millis()))]),
            conn: None,
            numbered: HashMap::new(),
            timeout,
            shown,
        };
        let conn = pg
            .take()
            .map_err(|e| format!("storage.postgres: cannot connect to `{}`: {e}", pg.shown))?;
        pg.conn = Some(conn);
        Ok(pg)
    }

    /// The connection, made again when the last one was lost.
    fn take(&mut self) -> DbResult<PgConnection> {
        if let Some(conn) = self.conn.take() {
            return Ok(conn);
        }
        let connect = PgConnection::connect_with(&self.options);
        self.rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(5), connect).await })
            .map_err(|_| DbError {
                message: "connect timed out".into(),
                lost: true,
            })?
            .map_err(err)
    }

    fn sql(&mut self, sql: &str) -> String {
        self.numbered
            .entry(sql.to_string())
            .or_insert_with(|| numbered(sql))
            .clone()
    }

    /// Runs `f` on the connection under the timeout; a lost connection is dropped
    /// so the next call makes a new one.
    fn run<T>(
        &mut self,
        f: impl for<'c> FnOnce(
            &'c mut PgConnection,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, sqlx::Error>> + 'c>,
        >,
    ) -> DbResult<T> {
        let timeout = self.timeout;
        let mut conn = self.take()?;
        let result = self
            .rt
            .block_on(async { tokio::time::timeout(timeout, f(&mut conn)).await });
        match result {
            Ok(Ok(v)) => {
                self.conn = Some(conn);
                Ok(v)
            }
            Ok(Err(e)) => {
                let e = err(e);
                if !e.lost {
                    self.conn = Some(conn);
                }
                Err(e)
            }
            // A statement past its time leaves the connection mid-protocol: a new one.
            Err(_) => Err(DbError {
                message: format!("no answer within {timeout:?}"),
                lost: true,
            }),
        }
    }
}

fn bind<'q>(
    mut q: Query<'q, Postgres, PgArguments>,
    args: &'q [Value],
) -> Query<'q, Postgres, PgArguments> {
    for a in args {
        q = match a {
            Value::Null(Kind::Int) => q.bind(None::<i64>),
            Value::Null(Kind::Real) => q.bind(None::<f64>),
            Value::Null(Kind::Text) => q.bind(None::<String>),
            Value::Null(Kind::Blob) => q.bind(None::<Vec<u8>>),
            Value::Int(n) => q.bind(*n),
            Value::Real(x) => q.bind(*x),
            // PostgreSQL's TEXT cannot hold NUL (SQLite's can): a client's stray
            // `\u0000` must not make the whole batch unwritable.
            Value::Text(s) if s.contains('\0') => q.bind(s.replace('\0', "\u{FFFD}")),
            Value::Text(s) => q.bind(s.as_str()),
            Value::Blob(b) => q.bind(b.as_slice()),
        };
    }
    q
}

fn read(row: &PgRow) -> Result<Row, sqlx::Error> {
    let mut out = Vec::with_capacity(row.columns().len());
    for (i, col) in row.columns().iter().enumerate() {
        let ty = col.type_info().name().to_ascii_uppercase();
        let v = match ty.as_str() {
            "INT8" => row.try_get::<Option<i64>, _>(i)?.map(Value::Int),
            "INT4" => row
                .try_get::<Option<i32>, _>(i)?
                .map(|n| Value::Int(n.into())),
            "INT2" => row
                .try_get::<Option<i16>, _>(i)?
                .map(|n| Value::Int(n.into())),
            "BOOL" => row
                .try_get::<Option<bool>, _>(i)?
                .map(|b| Value::Int(b.into())),
            "FLOAT8" => row.try_get::<Option<f64>, _>(i)?.map(Value::Real),
            "FLOAT4" => row
                .try_get::<Option<f32>, _>(i)?
                .map(|x| Value::Real(x.into())),
            "TEXT" | "VARCHAR" | "NAME" | "BPCHAR" => {
                row.try_get::<Option<String>, _>(i)?.map(Value::Text)
            }
            "BYTEA" => row.try_get::<Option<Vec<u8>>, _>(i)?.map(Value::Blob),
            "VOID" => None,
            other => {
                return Err(sqlx::Error::Decode(
                    format!("column {i} is {other}; cast it to BIGINT, DOUBLE PRECISION or TEXT")
                        .into(),
                ))
            }
        };
        out.push(v.unwrap_or(Value::Null(Kind::Int)));
    }
    Ok(Row(out))
}

impl Sql for PgConn {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn execute(&mut self, sql: &str, args: &[Value]) -> DbResult<u64> {
        let sql = self.sql(sql);
        if args.is_empty() && matches!(sql.as_str(), "BEGIN" | "COMMIT" | "ROLLBACK") {
            // Transaction control as plain text: never prepared.
            return self.run(|c| {
                Box::pin(async move {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                        .execute(c)
                        .await
                        .map(|r| r.rows_affected())
                })
            });
        }
        // Owned by the future, which must not outlive the connection alone.
        let args = args.to_vec();
        self.run(|c| {
            Box::pin(async move {
                let q = bind(sqlx::query(sqlx::AssertSqlSafe(sql.as_str())), &args);
                q.execute(c).await.map(|r| r.rows_affected())
            })
        })
    }

    fn query(&mut self, sql: &str, args: &[Value]) -> DbResult<Vec<Row>> {
        let sql = self.sql(sql);
        let args = args.to_vec();
        self.run(|c| {
            Box::pin(async move {
                let q = bind(sqlx::query(sqlx::AssertSqlSafe(sql.as_str())), &args);
                let rows = q.fetch_all(c).await?;
                rows.iter().map(read).collect()
            })
        })
    }

    fn batch(&mut self, sql: &str) -> DbResult<()> {
        let sql = sql.to_string();
        self.run(|c| {
            Box::pin(async move {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(c)
                    .await
                    .map(drop)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("postgres://weir:s3cret@db:5432/weir"),
            "postgres://weir:***@db:5432/weir"
        );
        assert_eq!(redact("postgres://db/weir"), "postgres://db/weir");
        assert_eq!(
            redact("postgresql://weir:p@ss@db/weir?sslmode=require"),
            "postgresql://weir:***@db/weir?sslmode=require"
        );
        assert_eq!(
            redact("postgres:///weir?host=/run/postgresql&password=s3cret"),
            "postgres:///weir?host=/run/postgresql&password=***"
        );
    }
}
