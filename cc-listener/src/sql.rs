//! The little the store needs from a SQL database, over SQLite and
//! PostgreSQL alike: run a statement with parameters, read rows back.
//!
//! The store's queries are written once, in the SQL both engines speak,
//! with SQLite's numbered parameters (`?1`); for PostgreSQL they become
//! `$1` ([`pg_sql`]). Parameters ([`P`]) and values read back ([`V`]) are
//! the four kinds the schema uses: null, integer, text, boolean — each
//! backend converts them to and from the column's own type, so a query
//! does not care that `is_root` is `INTEGER` in one and `BOOLEAN` in the
//! other. Rows are read into owned values: the store's rows are small, and
//! one code path for both engines is worth a copy.

use std::collections::HashMap;

use anyhow::{Result, anyhow};

pub use crate::pgtls::PgError;

/// A parameter.
#[derive(Debug, Clone, Copy)]
pub enum P<'a> {
    Null,
    Int(i64),
    Text(&'a str),
    Bool(bool),
}

/// What may be bound as a parameter.
pub trait ToP {
    fn to_p(&self) -> P<'_>;
}

impl ToP for i64 {
    fn to_p(&self) -> P<'_> {
        P::Int(*self)
    }
}
impl ToP for i32 {
    fn to_p(&self) -> P<'_> {
        P::Int(i64::from(*self))
    }
}
impl ToP for u32 {
    fn to_p(&self) -> P<'_> {
        P::Int(i64::from(*self))
    }
}
impl ToP for u64 {
    fn to_p(&self) -> P<'_> {
        P::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}
impl ToP for usize {
    fn to_p(&self) -> P<'_> {
        P::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}
impl ToP for bool {
    fn to_p(&self) -> P<'_> {
        P::Bool(*self)
    }
}
impl ToP for str {
    fn to_p(&self) -> P<'_> {
        P::Text(self)
    }
}
impl ToP for String {
    fn to_p(&self) -> P<'_> {
        P::Text(self)
    }
}
impl ToP for cc_proto::Hostname {
    fn to_p(&self) -> P<'_> {
        P::Text(self.as_str())
    }
}
impl ToP for cc_proto::JobId {
    fn to_p(&self) -> P<'_> {
        P::Text(self.as_str())
    }
}
impl ToP for cc_proto::wire::ReportKind {
    fn to_p(&self) -> P<'_> {
        P::Text(self.as_str())
    }
}
impl<T: ToP + ?Sized> ToP for &T {
    fn to_p(&self) -> P<'_> {
        (**self).to_p()
    }
}
impl<T: ToP> ToP for Option<T> {
    fn to_p(&self) -> P<'_> {
        self.as_ref().map_or(P::Null, ToP::to_p)
    }
}

/// `p![a, b]`: a parameter list.
macro_rules! p {
    ($($e:expr),* $(,)?) => { [$($crate::sql::ToP::to_p(&$e)),*] };
}
pub(crate) use p;

/// A value read back.
#[derive(Debug, Clone, PartialEq)]
pub enum V {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

impl V {
    /// This value as a parameter (a copy between databases).
    pub fn as_p(&self) -> P<'_> {
        match self {
            V::Null => P::Null,
            V::Int(i) => P::Int(*i),
            V::Text(t) => P::Text(t),
            V::Real(_) => P::Null,
        }
    }
}

/// A row read back.
#[derive(Debug, Clone)]
pub struct Row(pub Vec<V>);

impl Row {
    /// Column `i` as a `T`; a value of another kind is an error (the
    /// store calls that corrupt).
    pub fn get<T: FromV>(&self, i: usize) -> Result<T> {
        let v = self
            .0
            .get(i)
            .ok_or_else(|| anyhow!("column {i} is not in the row"))?;
        T::from_v(v).map_err(|e| anyhow::Error::new(Unreadable(format!("column {i}: {e}"))))
    }
}

/// A value of the wrong kind: what the database holds is not what this
/// listener wrote.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unreadable(pub String);

/// What a value may be read as.
pub trait FromV: Sized {
    fn from_v(v: &V) -> Result<Self, String>;
}

impl FromV for i64 {
    fn from_v(v: &V) -> Result<Self, String> {
        match v {
            V::Int(i) => Ok(*i),
            other => Err(format!("expected an integer, found {other:?}")),
        }
    }
}
impl FromV for u32 {
    fn from_v(v: &V) -> Result<Self, String> {
        u32::try_from(i64::from_v(v)?).map_err(|e| e.to_string())
    }
}
impl FromV for u64 {
    fn from_v(v: &V) -> Result<Self, String> {
        u64::try_from(i64::from_v(v)?).map_err(|e| e.to_string())
    }
}
impl FromV for bool {
    fn from_v(v: &V) -> Result<Self, String> {
        Ok(i64::from_v(v)? != 0)
    }
}
impl FromV for String {
    fn from_v(v: &V) -> Result<Self, String> {
        match v {
            V::Text(s) => Ok(s.clone()),
            other => Err(format!("expected text, found {other:?}")),
        }
    }
}
impl FromV for cc_proto::wire::ReportKind {
    fn from_v(v: &V) -> Result<Self, String> {
        let text = String::from_v(v)?;
        Self::parse(&text).ok_or_else(|| format!("unknown report kind {text:?}"))
    }
}
impl<T: FromV> FromV for Option<T> {
    fn from_v(v: &V) -> Result<Self, String> {
        match v {
            V::Null => Ok(None),
            other => T::from_v(other).map(Some),
        }
    }
}

/// Which engine a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A connection or transaction of either engine.
pub trait Sql {
    fn dialect(&self) -> Dialect;
    /// Runs a statement; returns the rows it changed.
    fn exec(&mut self, sql: &str, params: &[P<'_>]) -> Result<usize>;
    /// Runs a query; returns every row.
    fn query(&mut self, sql: &str, params: &[P<'_>]) -> Result<Vec<Row>>;
    /// Runs statements without parameters (savepoints).
    fn batch(&mut self, sql: &str) -> Result<()>;

    /// The first row, if any.
    fn one(&mut self, sql: &str, params: &[P<'_>]) -> Result<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }
}

/// The first column of the first row of `sql`, which must exist.
pub fn scalar<T: FromV>(c: &mut dyn Sql, sql: &str, params: &[P<'_>]) -> Result<T> {
    c.one(sql, params)?
        .ok_or_else(|| anyhow!("the query returned no row"))?
        .get(0)
}

// ---- SQLite ----

impl rusqlite::ToSql for P<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, Value, ValueRef};
        Ok(match *self {
            P::Null => ToSqlOutput::Owned(Value::Null),
            P::Int(i) => ToSqlOutput::Owned(Value::Integer(i)),
            P::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            P::Bool(b) => ToSqlOutput::Owned(Value::Integer(i64::from(b))),
        })
    }
}

/// A SQLite connection (or transaction, through `Deref`).
#[derive(Debug)]
pub struct Lite<'c>(pub &'c rusqlite::Connection);

impl Sql for Lite<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn exec(&mut self, sql: &str, params: &[P<'_>]) -> Result<usize> {
        let mut stmt = self.0.prepare_cached(sql)?;
        Ok(stmt.execute(rusqlite::params_from_iter(params.iter()))?)
    }

    fn query(&mut self, sql: &str, params: &[P<'_>]) -> Result<Vec<Row>> {
        use rusqlite::types::ValueRef;
        let mut stmt = self.0.prepare_cached(sql)?;
        let n = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(params.iter()))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut vals = Vec::with_capacity(n);
            for i in 0..n {
                vals.push(match r.get_ref(i)? {
                    ValueRef::Null => V::Null,
                    ValueRef::Integer(i) => V::Int(i),
                    ValueRef::Real(f) => V::Real(f),
                    ValueRef::Text(t) | ValueRef::Blob(t) => V::Text(
                        String::from_utf8(t.to_vec())
                            .map_err(|_| Unreadable(format!("column {i} is not UTF-8")))?,
                    ),
                });
            }
            out.push(Row(vals));
        }
        Ok(out)
    }

    fn batch(&mut self, sql: &str) -> Result<()> {
        Ok(self.0.execute_batch(sql)?)
    }
}

// ---- PostgreSQL ----

impl postgres::types::ToSql for P<'_> {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use postgres::types::{IsNull, Type};
        match *self {
            P::Null => Ok(IsNull::Yes),
            P::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(i)?.to_sql(ty, out),
                Type::BOOL => (i != 0).to_sql(ty, out),
                _ => Err(format!("an integer cannot be bound as {ty}").into()),
            },
            P::Text(s) => s.to_sql(ty, out),
            P::Bool(b) => match *ty {
                Type::BOOL => b.to_sql(ty, out),
                Type::INT8 => i64::from(b).to_sql(ty, out),
                Type::INT4 => i32::from(b).to_sql(ty, out),
                _ => Err(format!("a boolean cannot be bound as {ty}").into()),
            },
        }
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

/// `sql` with SQLite's `?N` parameters written as PostgreSQL's `$N`.
/// The store's statements hold no `?` inside a string literal.
pub fn pg_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

/// A PostgreSQL client with its prepared statements.
pub struct PgConn {
    /// `None` only while it is dropped.
    client: Option<postgres::Client>,
    cache: HashMap<String, postgres::Statement>,
}

impl Drop for PgConn {
    /// The client runs a small runtime of its own, which must not be
    /// dropped on a thread that drives async tasks (as the listener's
    /// runtime does when it shuts down): it is dropped on a thread of its
    /// own.
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = std::thread::spawn(move || drop(c)).join();
        }
    }
}

impl std::fmt::Debug for PgConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConn")
            .field("statements", &self.cache.len())
            .finish_non_exhaustive()
    }
}

impl PgConn {
    /// Connects to `url` with its TLS settings ([`crate::pgtls`]); the
    /// error names the address tried and carries the server's words.
    pub fn connect(url: &str) -> Result<Self> {
        let client = crate::pgtls::connect(url)?;
        Ok(Self {
            client: Some(client),
            cache: HashMap::new(),
        })
    }

    /// Whether the server closed the connection.
    pub fn is_closed(&self) -> bool {
        self.client.as_ref().is_none_or(postgres::Client::is_closed)
    }

    /// The client and the statements prepared on it.
    fn parts(
        &mut self,
    ) -> Result<(
        &mut postgres::Client,
        &mut HashMap<String, postgres::Statement>,
    )> {
        let Self { client, cache } = self;
        let client = client
            .as_mut()
            .ok_or_else(|| anyhow!("the PostgreSQL connection is closed"))?;
        Ok((client, cache))
    }

    /// A transaction on this connection: `BEGIN`, then `then` (statements
    /// without parameters, such as taking an advisory lock) in the same
    /// round trip to the server.
    pub fn transaction(&mut self, then: &str) -> Result<PgTx<'_>> {
        let sql = self.auto()?;
        sql.c
            .batch_execute(&format!("BEGIN; {then}"))
            .map_err(pg_error)?;
        Ok(PgTx { sql, open: true })
    }

    /// Statements outside a transaction (each commits on its own).
    pub fn auto(&mut self) -> Result<PgStatements<'_>> {
        let (c, cache) = self.parts()?;
        Ok(PgStatements { c, cache })
    }
}

/// PostgreSQL statements on one connection, with its prepared statements:
/// each committing on its own ([`PgConn::auto`]), or inside a [`PgTx`].
pub struct PgStatements<'a> {
    c: &'a mut postgres::Client,
    cache: &'a mut HashMap<String, postgres::Statement>,
}

impl std::fmt::Debug for PgStatements<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgStatements")
    }
}

/// A PostgreSQL transaction; dropped without [`PgTx::commit`], it rolls back.
/// Its statements are those of its connection ([`PgStatements`]).
#[derive(Debug)]
pub struct PgTx<'a> {
    sql: PgStatements<'a>,
    /// Until committed.
    open: bool,
}

impl<'a> std::ops::Deref for PgTx<'a> {
    type Target = PgStatements<'a>;
    fn deref(&self) -> &Self::Target {
        &self.sql
    }
}

impl std::ops::DerefMut for PgTx<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.sql
    }
}

impl PgTx<'_> {
    pub fn commit(mut self) -> Result<()> {
        self.open = false;
        self.sql.c.batch_execute("COMMIT").map_err(pg_error)
    }
}

impl Drop for PgTx<'_> {
    /// Rolls back. If the connection is gone, so is the transaction.
    fn drop(&mut self) {
        if self.open && !self.sql.c.is_closed() {
            let _ = self.sql.c.batch_execute("ROLLBACK");
        }
    }
}

fn pg_statement(
    c: &mut postgres::Client,
    cache: &mut HashMap<String, postgres::Statement>,
    sql: &str,
) -> Result<postgres::Statement> {
    if let Some(s) = cache.get(sql) {
        return Ok(s.clone());
    }
    let stmt = c.prepare(&pg_sql(sql)).map_err(pg_error)?;
    cache.insert(sql.to_owned(), stmt.clone());
    Ok(stmt)
}

fn pg_params<'a>(params: &'a [P<'a>]) -> Vec<&'a (dyn postgres::types::ToSql + Sync)> {
    params
        .iter()
        .map(|p| p as &(dyn postgres::types::ToSql + Sync))
        .collect()
}

fn pg_rows(rows: Vec<postgres::Row>) -> Result<Vec<Row>> {
    use postgres::types::Type;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let mut vals = Vec::with_capacity(r.len());
        for (i, col) in r.columns().iter().enumerate() {
            let v = match *col.type_() {
                Type::INT8 => r.try_get::<_, Option<i64>>(i)?.map_or(V::Null, V::Int),
                Type::INT4 => r
                    .try_get::<_, Option<i32>>(i)?
                    .map_or(V::Null, |v| V::Int(i64::from(v))),
                Type::INT2 => r
                    .try_get::<_, Option<i16>>(i)?
                    .map_or(V::Null, |v| V::Int(i64::from(v))),
                Type::BOOL => r
                    .try_get::<_, Option<bool>>(i)?
                    .map_or(V::Null, |v| V::Int(i64::from(v))),
                Type::FLOAT8 => r.try_get::<_, Option<f64>>(i)?.map_or(V::Null, V::Real),
                Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR => {
                    r.try_get::<_, Option<String>>(i)?.map_or(V::Null, V::Text)
                }
                ref other => {
                    return Err(Unreadable(format!("column {i} has type {other}")).into());
                }
            };
            vals.push(v);
        }
        out.push(Row(vals));
    }
    Ok(out)
}

fn pg_exec(
    c: &mut postgres::Client,
    cache: &mut HashMap<String, postgres::Statement>,
    sql: &str,
    params: &[P<'_>],
) -> Result<usize> {
    let stmt = pg_statement(c, cache, sql)?;
    let n = c.execute(&stmt, &pg_params(params)).map_err(pg_error)?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

fn pg_query(
    c: &mut postgres::Client,
    cache: &mut HashMap<String, postgres::Statement>,
    sql: &str,
    params: &[P<'_>],
) -> Result<Vec<Row>> {
    let stmt = pg_statement(c, cache, sql)?;
    pg_rows(c.query(&stmt, &pg_params(params)).map_err(pg_error)?)
}

impl Sql for PgStatements<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn exec(&mut self, sql: &str, params: &[P<'_>]) -> Result<usize> {
        pg_exec(self.c, self.cache, sql, params)
    }

    fn query(&mut self, sql: &str, params: &[P<'_>]) -> Result<Vec<Row>> {
        pg_query(self.c, self.cache, sql, params)
    }

    fn batch(&mut self, sql: &str) -> Result<()> {
        self.c.batch_execute(sql).map_err(pg_error)
    }
}

/// A PostgreSQL error as it leaves this module: with the server's
/// SQLSTATE, message, detail and hint on one line ([`PgError`]), where
/// `postgres::Error`'s own text says only "db error".
pub fn pg_error(e: postgres::Error) -> anyhow::Error {
    anyhow::Error::new(PgError(e))
}

/// Whether `e` is PostgreSQL giving up on a transaction that met
/// another one (a deadlock, or a serialisation failure): the transaction
/// was rolled back whole and may simply run again.
pub fn is_retryable(e: &anyhow::Error) -> bool {
    let pe = e
        .downcast_ref::<PgError>()
        .map(|p| &p.0)
        .or_else(|| e.downcast_ref::<postgres::Error>());
    pe.and_then(postgres::Error::code).is_some_and(|c| {
        *c == postgres::error::SqlState::T_R_DEADLOCK_DETECTED
            || *c == postgres::error::SqlState::T_R_SERIALIZATION_FAILURE
    })
}

/// Whether `e` is a unique (or other) constraint refusing a write, in
/// either engine.
pub fn is_constraint(e: &anyhow::Error) -> bool {
    if let Some(rusqlite::Error::SqliteFailure(f, _)) = e.downcast_ref::<rusqlite::Error>() {
        return f.code == rusqlite::ErrorCode::ConstraintViolation;
    }
    let pe = e
        .downcast_ref::<PgError>()
        .map(|p| &p.0)
        .or_else(|| e.downcast_ref::<postgres::Error>());
    if let Some(pe) = pe {
        return pe.code().is_some_and(|c| {
            *c == postgres::error::SqlState::UNIQUE_VIOLATION
                || *c == postgres::error::SqlState::INTEGRITY_CONSTRAINT_VIOLATION
        });
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_parameters_become_dollars() {
        assert_eq!(
            pg_sql("SELECT ?1, ?12 FROM t WHERE a = ?2 AND b <> '?'"),
            "SELECT $1, $12 FROM t WHERE a = $2 AND b <> '?'"
        );
    }

    #[test]
    fn values_of_the_wrong_kind_are_unreadable() {
        let row = Row(vec![V::Text("x".into()), V::Int(3), V::Null]);
        assert!(row.get::<i64>(0).is_err());
        assert_eq!(row.get::<i64>(1).unwrap(), 3);
        assert!(row.get::<bool>(1).unwrap());
        assert_eq!(row.get::<Option<String>>(2).unwrap(), None);
        assert!(row.get::<String>(2).is_err());
        assert!(row.get::<i64>(3).is_err());
        assert!(
            row.get::<i64>(0)
                .unwrap_err()
                .downcast_ref::<Unreadable>()
                .is_some()
        );
    }

    #[test]
    fn unsigned_values_are_read_back_or_refused() {
        let row = Row(vec![V::Int(7), V::Int(-1), V::Int(i64::from(u32::MAX) + 1)]);
        assert_eq!(row.get::<u32>(0).unwrap(), 7);
        assert_eq!(row.get::<u64>(0).unwrap(), 7);
        assert!(row.get::<u32>(1).is_err() && row.get::<u64>(1).is_err());
        assert!(row.get::<u32>(2).is_err());
        assert_eq!(row.get::<u64>(2).unwrap(), u64::from(u32::MAX) + 1);
    }

    /// What PostgreSQL receives for each column type a parameter may meet.
    #[test]
    fn parameters_are_encoded_for_the_column_type_or_refused() {
        use postgres::types::{IsNull, ToSql as _, Type};
        let enc = |p: P<'_>, ty: &Type| {
            let mut buf = bytes::BytesMut::new();
            p.to_sql(ty, &mut buf)
                .map(|n| (matches!(n, IsNull::Yes), buf.to_vec()))
        };
        assert_eq!(enc(P::Int(5), &Type::INT8).unwrap().1, 5i64.to_be_bytes());
        assert_eq!(enc(P::Int(5), &Type::INT4).unwrap().1, 5i32.to_be_bytes());
        assert_eq!(enc(P::Int(5), &Type::INT2).unwrap().1, 5i16.to_be_bytes());
        assert_eq!(enc(P::Int(1), &Type::BOOL).unwrap().1, [1]);
        assert!(enc(P::Int(i64::from(i32::MAX) + 1), &Type::INT4).is_err());
        assert!(enc(P::Int(70_000), &Type::INT2).is_err());
        assert!(enc(P::Int(5), &Type::TEXT).is_err());
        assert_eq!(enc(P::Bool(true), &Type::BOOL).unwrap().1, [1]);
        assert_eq!(
            enc(P::Bool(true), &Type::INT8).unwrap().1,
            1i64.to_be_bytes()
        );
        assert_eq!(
            enc(P::Bool(false), &Type::INT4).unwrap().1,
            0i32.to_be_bytes()
        );
        assert!(enc(P::Bool(true), &Type::TEXT).is_err());
        assert_eq!(enc(P::Text("hé"), &Type::TEXT).unwrap().1, "hé".as_bytes());
        assert!(enc(P::Null, &Type::INT8).unwrap().0);
        assert_eq!(format!("{:?}", V::Int(3).as_p()), "Int(3)");
        assert_eq!(format!("{:?}", V::Text("x".into()).as_p()), "Text(\"x\")");
        assert_eq!(format!("{:?}", V::Null.as_p()), "Null");
    }
}
