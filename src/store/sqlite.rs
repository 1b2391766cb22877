//! The store's SQL on SQLite (rusqlite): statements cached by their text, values
//! bound and read as they are.

use super::db::{DbError, DbResult, Dialect, Kind, Row, Sql, Value};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params_from_iter, Connection, ToSql};

fn err(e: rusqlite::Error) -> DbError {
    DbError::new(e.to_string())
}

impl ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null(_) => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(n) => ToSqlOutput::Borrowed(ValueRef::Integer(*n)),
            Value::Real(x) => ToSqlOutput::Borrowed(ValueRef::Real(*x)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

fn read(v: ValueRef<'_>) -> Value {
    match v {
        // SQLite's NULL has no type; the reader's `Option<T>` decides.
        ValueRef::Null => Value::Null(Kind::Int),
        ValueRef::Integer(n) => Value::Int(n),
        ValueRef::Real(x) => Value::Real(x),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

impl Sql for Connection {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn execute(&mut self, sql: &str, args: &[Value]) -> DbResult<u64> {
        let mut stmt = self.prepare_cached(sql).map_err(err)?;
        stmt.execute(params_from_iter(args.iter()))
            .map(|n| n as u64)
            .map_err(err)
    }

    fn query(&mut self, sql: &str, args: &[Value]) -> DbResult<Vec<Row>> {
        let mut stmt = self.prepare_cached(sql).map_err(err)?;
        let columns = stmt.column_count();
        let mut rows = stmt.query(params_from_iter(args.iter())).map_err(err)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(err)? {
            let mut values = Vec::with_capacity(columns);
            for i in 0..columns {
                values.push(read(r.get_ref(i).map_err(err)?));
            }
            out.push(Row(values));
        }
        Ok(out)
    }

    fn batch(&mut self, sql: &str) -> DbResult<()> {
        self.execute_batch(sql).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args;

    #[test]
    fn statements_bind_and_read_plain_values_and_transactions_roll_back() {
        let mut conn = Connection::open_in_memory().unwrap();
        let db: &mut dyn Sql = &mut conn;
        db.batch("CREATE TABLE t (a INTEGER, b TEXT, c REAL, d BLOB)")
            .unwrap();
        let none: Option<String> = None;
        db.execute(
            "INSERT INTO t VALUES (?1, ?2, ?3, ?4)",
            args![5i64, none, 1.5, vec![1u8, 2]],
        )
        .unwrap();
        let row = db
            .row("SELECT a, b, c, d FROM t", args![])
            .unwrap()
            .unwrap();
        assert_eq!(row.get::<i64>(0).unwrap(), 5);
        assert_eq!(row.get::<Option<String>>(1).unwrap(), None);
        assert_eq!(row.get::<f64>(2).unwrap(), 1.5);
        assert_eq!(row.get::<Vec<u8>>(3).unwrap(), vec![1, 2]);
        {
            let mut tx = db.begin().unwrap();
            tx.execute("DELETE FROM t", args![]).unwrap();
        }
        assert_eq!(db.one::<i64>("SELECT COUNT(*) FROM t", args![]).unwrap(), 1);
        let tx = db.begin().unwrap();
        tx.commit().unwrap();
        assert!(db
            .one::<i64>("SELECT a FROM t WHERE a = 9", args![])
            .is_err());
    }
}
