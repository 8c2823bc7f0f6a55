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

use std::path::Path;

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, OpenFlags};

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
    include_str!("migrations/sqlite/0010_operators.sql"),
    include_str!("migrations/sqlite/0011_cron_host.sql"),
    include_str!("migrations/sqlite/0012_event_kinds.sql"),
    include_str!("migrations/sqlite/0013_fleet.sql"),
    include_str!("migrations/sqlite/0014_schedules.sql"),
    include_str!("migrations/sqlite/0015_notify.sql"),
    include_str!("migrations/sqlite/0016_event_order.sql"),
];

/// The PostgreSQL migrations, in order. The first is the SQLite schema as
/// its first seven migrations left it, in PostgreSQL's types; each later
/// one names the SQLite migration it follows.
pub(super) const PG_MIGRATIONS: &[&str] = &[
    include_str!("migrations/postgres/0001_initial.sql"),
    include_str!("migrations/postgres/0002_revoked_key_index.sql"),
    include_str!("migrations/postgres/0003_key_tags.sql"),
    include_str!("migrations/postgres/0004_operators.sql"),
    include_str!("migrations/postgres/0005_cron_host.sql"),
    include_str!("migrations/postgres/0006_event_kinds.sql"),
    include_str!("migrations/postgres/0007_fleet.sql"),
    include_str!("migrations/postgres/0008_schedules.sql"),
    include_str!("migrations/postgres/0009_notify.sql"),
    include_str!("migrations/postgres/0010_event_order.sql"),
    include_str!("migrations/postgres/0011_fan_out_plans.sql"),
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

/// How far a database's schema is: the migrations it has had, and how
/// many this listener knows (`cc-listener check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaVersion {
    pub current: usize,
    pub latest: usize,
}

/// The schema version of the SQLite file at `path`, read without writing:
/// the file opened read-only, nothing migrated. `None` when there is no
/// file (the first `serve` creates it).
pub(super) fn sqlite_version(path: &Path) -> Result<Option<SchemaVersion>> {
    if !path.exists() {
        return Ok(None);
    }
    // A read-only connection to a WAL database creates its `-wal` and
    // `-shm` files and cannot remove them: when there is no `-wal` (no
    // listener has the file open), the file is read as immutable, which
    // creates nothing.
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let conn = if Path::new(&wal).exists() {
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
    } else {
        Connection::open_with_flags(
            format!("{}?immutable=1", file_uri(path)),
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
        )
    }
    .with_context(|| format!("opening {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let done: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(SchemaVersion {
        current: usize::try_from(done).context("negative schema version")?,
        latest: MIGRATIONS.len(),
    }))
}

/// `path` as a SQLite `file:` URI: every byte but letters, digits and
/// `/-._~` percent-encoded.
fn file_uri(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt as _;
    let mut uri = String::from("file:");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            uri.push(char::from(b));
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri
}

/// The schema version of the PostgreSQL database at `url`, read in a
/// read-only transaction; 0 for a database no listener has used yet.
pub(super) fn postgres_version(url: &str) -> Result<SchemaVersion> {
    let mut conn = PgConn::connect(url)?;
    let mut tx = conn.transaction("SET TRANSACTION READ ONLY")?;
    let fresh: bool = scalar(&mut *tx, "SELECT to_regclass('cc_schema') IS NULL", &[])?;
    let done = if fresh {
        0
    } else {
        let v: Option<i64> = tx
            .one("SELECT version FROM cc_schema", &[])?
            .map(|r| r.get(0))
            .transpose()?;
        usize::try_from(v.unwrap_or(0)).context("negative schema version")?
    };
    Ok(SchemaVersion {
        current: done,
        latest: PG_MIGRATIONS.len(),
    })
}
