//! The schema of each engine, as numbered migrations: `migrations/sqlite/NNNN_*.sql`
//! and `migrations/postgres/NNNN_*.sql`, applied in order. SQLite records how
//! many ran in `PRAGMA user_version`, PostgreSQL in `cc_schema.version`.
//! Append only: a file's number is its version, and a database migrated
//! once is never migrated by it again.
//!
//! Both engines end with the same tables and columns (the test
//! `both_engines_have_the_same_tables_and_columns` holds them to it); only
//! their types differ (`BIGINT` for every integer, `BOOLEAN` for
//! `is_root`, `BIGSERIAL` where SQLite has a `rowid`, named `rowid`, so the
//! queries that order by submission read the same in both).

use anyhow::{Context, Result, bail};
use rusqlite::Connection;

use crate::sql::{PgConn, Sql, p, scalar};

use super::PG_MIGRATE_LOCK;

/// The SQLite migrations, in order.
pub(super) const MIGRATIONS: &[&str] = &[
    include_str!("migrations/sqlite/0001_initial.sql"),
    include_str!("migrations/sqlite/0002_signed.sql"),
    include_str!("migrations/sqlite/0003_lowercase_hostnames.sql"),
    include_str!("migrations/sqlite/0004_report_usage.sql"),
    include_str!("migrations/sqlite/0005_runs.sql"),
    include_str!("migrations/sqlite/0006_events.sql"),
    include_str!("migrations/sqlite/0007_listeners.sql"),
    include_str!("migrations/sqlite/0008_revoked_key_index.sql"),
    include_str!("migrations/sqlite/0009_key_tags.sql"),
];

/// The PostgreSQL migrations, in order. The first is the SQLite schema as
/// its first seven migrations left it, in PostgreSQL's types; each later
/// one names the SQLite migration it follows.
pub(super) const PG_MIGRATIONS: &[&str] = &[
    include_str!("migrations/postgres/0001_initial.sql"),
    include_str!("migrations/postgres/0002_revoked_key_index.sql"),
    include_str!("migrations/postgres/0003_key_tags.sql"),
];

pub(super) fn migrate(conn: &Connection) -> Result<()> {
    // IMMEDIATE takes the write lock before the version is read, so two
    // processes opening a fresh file at once (`serve` and `keys add`) do
    // not both apply the same migration.
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| {
        let done: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let done = usize::try_from(done).context("negative schema version")?;
        if done > MIGRATIONS.len() {
            bail!(
                "database schema version {done} is newer than this listener knows ({})",
                MIGRATIONS.len()
            );
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(done) {
            conn.execute_batch(sql)
                .with_context(|| format!("applying migration {}", i + 1))?;
            conn.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => conn
            .execute_batch("COMMIT")
            .context("committing migrations"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Brings a PostgreSQL database's schema up to date, under an advisory
/// lock so that listeners starting together migrate it once.
pub(super) fn migrate_postgres(conn: &mut PgConn) -> Result<()> {
    let mut tx = conn.transaction(&format!("SELECT pg_advisory_xact_lock({PG_MIGRATE_LOCK})"))?;
    let fresh: bool = scalar(&mut *tx, "SELECT to_regclass('cc_schema') IS NULL", &[])?;
    if fresh {
        tx.batch("CREATE TABLE cc_schema (version BIGINT NOT NULL)")?;
    }
    let done: Option<i64> = tx
        .one("SELECT version FROM cc_schema", &[])?
        .map(|r| r.get(0))
        .transpose()?;
    let done = match done {
        Some(v) => usize::try_from(v).context("negative schema version")?,
        None => {
            tx.exec("INSERT INTO cc_schema (version) VALUES (0)", &[])?;
            0
        }
    };
    if done > PG_MIGRATIONS.len() {
        bail!(
            "database schema version {done} is newer than this listener knows ({})",
            PG_MIGRATIONS.len()
        );
    }
    for (i, sql) in PG_MIGRATIONS.iter().enumerate().skip(done) {
        tx.batch(sql)
            .with_context(|| format!("applying PostgreSQL migration {}", i + 1))?;
        tx.exec("UPDATE cc_schema SET version = ?1", &p![i + 1])?;
    }
    tx.commit()
}
