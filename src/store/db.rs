//! The one interface the store's SQL runs on, whichever database holds it: SQLite
//! (embedded, one instance) or PostgreSQL (several instances, S1). Statements are
//! written once, in the subset both speak, with `?` / `?N` placeholders; the
//! PostgreSQL side numbers them `$N`. Rows come back as plain values.

use std::fmt;
use std::ops::{Deref, DerefMut};
use weir_filters::GatewayError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// What a NULL stands for: PostgreSQL types every parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Int,
    Real,
    Text,
    Blob,
}

/// One parameter or column value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null(Kind),
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// A statement failed; the text never holds a key (statements bind hashes only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbError {
    pub message: String,
    /// The connection is gone (not the statement's fault): try again later.
    pub lost: bool,
}

impl DbError {
    pub fn new(message: impl Into<String>) -> DbError {
        DbError {
            message: message.into(),
            lost: false,
        }
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DbError {}

impl From<DbError> for GatewayError {
    fn from(e: DbError) -> GatewayError {
        GatewayError::Internal(format!("store: {e}"))
    }
}

pub type DbResult<T> = Result<T, DbError>;

/// A connection to the store's database.
pub trait Sql: Send {
    fn dialect(&self) -> Dialect;
    /// Runs one statement; the rows it changed.
    fn execute(&mut self, sql: &str, args: &[Value]) -> DbResult<u64>;
    /// Runs one query; every row.
    fn query(&mut self, sql: &str, args: &[Value]) -> DbResult<Vec<Row>>;
    /// Runs several statements without parameters (migrations).
    fn batch(&mut self, sql: &str) -> DbResult<()>;
}

impl dyn Sql + '_ {
    /// The first row, if any.
    pub fn row(&mut self, sql: &str, args: &[Value]) -> DbResult<Option<Row>> {
        Ok(self.query(sql, args)?.into_iter().next())
    }

    /// The first column of the first row, if any.
    pub fn value<T: FromValue>(&mut self, sql: &str, args: &[Value]) -> DbResult<Option<T>> {
        self.row(sql, args)?.map(|r| r.get(0)).transpose()
    }

    /// The first column of the first row, which must exist.
    pub fn one<T: FromValue>(&mut self, sql: &str, args: &[Value]) -> DbResult<T> {
        self.value(sql, args)?
            .ok_or_else(|| DbError::new(format!("no row from `{}`", first_words(sql))))
    }

    /// Every row, each read by `f`.
    pub fn rows<T>(
        &mut self,
        sql: &str,
        args: &[Value],
        f: impl FnMut(&Row) -> DbResult<T>,
    ) -> DbResult<Vec<T>> {
        self.query(sql, args)?.iter().map(f).collect()
    }

    /// Starts a transaction, rolled back unless committed.
    pub fn begin(&mut self) -> DbResult<Tx<'_>> {
        // SQLite: the write lock up front, so `busy_timeout` covers the wait. A
        // deferred transaction that read first and then writes fails at once with
        // "database is locked" when another process (`weir keys` beside a running
        // gateway) wrote in between; its busy handler is never asked.
        let begin = match self.dialect() {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        };
        self.execute(begin, &[])?;
        Ok(Tx {
            db: self,
            open: true,
        })
    }
}

fn first_words(sql: &str) -> String {
    sql.split_whitespace().take(6).collect::<Vec<_>>().join(" ")
}

/// An open transaction; dropped without `commit`, it rolls back (an error or a
/// dry run leaves nothing half-written).
pub struct Tx<'a> {
    db: &'a mut (dyn Sql + 'a),
    open: bool,
}

impl Tx<'_> {
    pub fn commit(mut self) -> DbResult<()> {
        self.open = false;
        self.db.execute("COMMIT", &[]).map(drop)
    }
}

impl<'a> Deref for Tx<'a> {
    type Target = dyn Sql + 'a;
    fn deref(&self) -> &Self::Target {
        self.db
    }
}

impl DerefMut for Tx<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.db
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.db.execute("ROLLBACK", &[]);
        }
    }
}

/// A row as plain values.
#[derive(Debug, Clone, PartialEq)]
pub struct Row(pub Vec<Value>);

impl Row {
    pub fn get<T: FromValue>(&self, i: usize) -> DbResult<T> {
        let v = self
            .0
            .get(i)
            .ok_or_else(|| DbError::new(format!("no column {i}")))?;
        T::from_value(v).ok_or_else(|| DbError::new(format!("column {i}: unexpected {v:?}")))
    }
}

/// A Rust value read from a column.
pub trait FromValue: Sized {
    fn from_value(v: &Value) -> Option<Self>;
}

impl FromValue for i64 {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Int(n) => Some(*n),
            // SQLite keeps an integer-valued REAL as it was written.
            Value::Real(x) if x.fract() == 0.0 => Some(*x as i64),
            _ => None,
        }
    }
}

impl FromValue for u64 {
    fn from_value(v: &Value) -> Option<Self> {
        i64::from_value(v).map(|n| n.max(0) as u64)
    }
}

impl FromValue for u32 {
    fn from_value(v: &Value) -> Option<Self> {
        i64::from_value(v).and_then(|n| u32::try_from(n).ok())
    }
}

impl FromValue for u16 {
    fn from_value(v: &Value) -> Option<Self> {
        i64::from_value(v).and_then(|n| u16::try_from(n).ok())
    }
}

impl FromValue for f64 {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Real(x) => Some(*x),
            Value::Int(n) => Some(*n as f64),
            _ => None,
        }
    }
}

impl FromValue for bool {
    fn from_value(v: &Value) -> Option<Self> {
        i64::from_value(v).map(|n| n != 0)
    }
}

impl FromValue for String {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Blob(b) => Some(b.clone()),
            Value::Text(s) => Some(s.clone().into_bytes()),
            _ => None,
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Null(_) => Some(None),
            v => T::from_value(v).map(Some),
        }
    }
}

impl FromValue for Value {
    fn from_value(v: &Value) -> Option<Self> {
        Some(v.clone())
    }
}

/// The kind of NULL an absent `T` binds as.
pub trait Typed {
    const KIND: Kind;
}

macro_rules! int_value {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(n: $t) -> Value {
                Value::Int(n as i64)
            }
        }
        impl Typed for $t {
            const KIND: Kind = Kind::Int;
        }
    )*};
}
int_value!(i64, i32, u32, u16, u8, usize, u64);

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Int(i64::from(b))
    }
}
impl Typed for bool {
    const KIND: Kind = Kind::Int;
}

impl From<f64> for Value {
    fn from(x: f64) -> Value {
        Value::Real(x)
    }
}
impl Typed for f64 {
    const KIND: Kind = Kind::Real;
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Text(s.to_string())
    }
}
impl Typed for &str {
    const KIND: Kind = Kind::Text;
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Text(s)
    }
}
impl From<&String> for Value {
    fn from(s: &String) -> Value {
        Value::Text(s.clone())
    }
}
impl Typed for String {
    const KIND: Kind = Kind::Text;
}
impl Typed for &String {
    const KIND: Kind = Kind::Text;
}

impl From<Vec<u8>> for Value {
    fn from(b: Vec<u8>) -> Value {
        Value::Blob(b)
    }
}
impl From<&[u8]> for Value {
    fn from(b: &[u8]) -> Value {
        Value::Blob(b.to_vec())
    }
}
impl From<&Vec<u8>> for Value {
    fn from(b: &Vec<u8>) -> Value {
        Value::Blob(b.clone())
    }
}
impl Typed for Vec<u8> {
    const KIND: Kind = Kind::Blob;
}
impl Typed for &Vec<u8> {
    const KIND: Kind = Kind::Blob;
}
impl Typed for &[u8] {
    const KIND: Kind = Kind::Blob;
}

impl<T: Into<Value> + Typed> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null(T::KIND), Into::into)
    }
}

impl<T: Into<Value> + Typed + Clone> From<&Option<T>> for Value {
    fn from(v: &Option<T>) -> Value {
        v.clone().into()
    }
}

impl From<&Value> for Value {
    fn from(v: &Value) -> Value {
        v.clone()
    }
}

/// `args![a, b, c]`: parameters for a statement.
#[macro_export]
macro_rules! args {
    () => { &[] as &[$crate::store::db::Value] };
    ($($v:expr),+ $(,)?) => { &[$($crate::store::db::Value::from($v)),+] as &[$crate::store::db::Value] };
}

/// `?` and `?N` placeholders as PostgreSQL's `$N`, outside quoted text.
pub fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut next = 0u32;
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                if digits.is_empty() {
                    next += 1;
                    digits = next.to_string();
                }
                out.push('$');
                out.push_str(&digits);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_outside_quotes() {
        assert_eq!(
            numbered("SELECT ?1, ?2 WHERE a = '?' AND b = ?1"),
            "SELECT $1, $2 WHERE a = '?' AND b = $1"
        );
        assert_eq!(numbered("(ts, id) < (?, ?)"), "(ts, id) < ($1, $2)");
    }

    #[test]
    fn values_convert_both_ways() {
        let none: Option<String> = None;
        assert_eq!(Value::from(none), Value::Null(Kind::Text));
        assert_eq!(Value::from(Some(2.5)), Value::Real(2.5));
        let row = Row(vec![
            Value::Int(3),
            Value::Null(Kind::Int),
            Value::Real(4.0),
        ]);
        assert_eq!(row.get::<i64>(0).unwrap(), 3);
        assert_eq!(row.get::<Option<i64>>(1).unwrap(), None);
        assert_eq!(row.get::<i64>(2).unwrap(), 4);
        assert!(row.get::<String>(0).is_err());
        assert!(row.get::<i64>(9).is_err());
    }
}
