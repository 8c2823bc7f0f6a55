//! Durable state: one SQLite file in WAL mode (the default), or a
//! PostgreSQL database that several listeners share.
//!
//! Everything the listener must not lose lives here, and every other module
//! reaches storage only through [`Store`]. Each query is written once, in
//! the SQL both engines speak ([`crate::sql`]); only the schema and its
//! migrations are written per engine. Methods are synchronous; async
//! callers go through [`Db::call`], which runs them on the blocking pool.
//!
//! Durability: SQLite with `synchronous = FULL`, PostgreSQL with its
//! defaults (`fsync`, `synchronous_commit = on`), so a committed transaction
//! survives a crash of the process or the machine. A report is acknowledged
//! to the agent only after `store_report` has committed. One exception, on
//! PostgreSQL: a group of hand-overs only, which nobody is told about and
//! which is repaired if lost, does not wait for the disk
//! ([`GroupWrite::may_be_lost`]).
//!
//! Layout: this file holds [`Store`] itself — its two backends, opening,
//! and the read and write plumbing every method goes through — and
//! [`Db`], the async handle. The methods live with their aggregate:
//! `keys` (API keys), `agents` (registrations, holds, cron lists), `jobs`
//! (every change of a job's status, with the table of them), `runs`,
//! `reports` (quota, pruning), `events`, `operators` (tokens kept hashed),
//! `audit` (the audit log's hash chain). Beside them: `writer` (group
//! commit, [`Writer`]), `batch` (a group's common writes as set-based
//! statements on PostgreSQL), `copy` (`cc-listener migrate`), `schema` (the
//! numbered migrations of each engine, `migrations/`), `error`
//! ([`StoreError`]), `types` (rows and outcomes), and `fixtures` (seeding
//! for tests and benchmarks, feature `fixtures`).

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, Transaction, TransactionBehavior};

pub use crate::sql::Dialect;
use crate::sql::{Lite, PgConn, Sql, p};

mod agents;
mod audit;
mod batch;
mod copy;
mod error;
mod events;
#[cfg(any(test, feature = "fixtures"))]
mod fixtures;
mod fleet;
mod jobs;
mod keys;
mod notify;
mod operators;
mod reports;
mod runs;
mod schedules;
mod schema;
mod scope;
mod types;
mod writer;

pub use audit::{AuditEntry, AuditRow, Verdict};
use error::conflict_on_constraint;
pub use error::{ErrorKind, StoreError};
pub use fleet::FleetSet;
pub use jobs::{JobStatus, TAKE_BATCH};
pub use keys::{canonical_tags, hash_key};
pub use notify::{Claimed, Consumed};
pub use operators::{NewOperator, OperatorRecord};
pub use schedules::{LastScheduled, MissOutcome, ScheduleHost};
pub use schema::SchemaVersion;
pub use scope::Scope;
pub use types::*;
pub use writer::*;

/// Where the store is: `--db` and `db` in the config. Shown (`Debug`,
/// `Display`) without a password.
#[derive(Clone, PartialEq, Eq)]
pub enum DbLocation {
    /// A SQLite file (`PATH` or `sqlite:PATH`).
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL database (`postgres://…` or `postgresql://…`).
    Postgres(String),
}

impl std::fmt::Display for DbLocation {
    /// Never shows a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
            Self::Postgres(url) => match crate::pgtls::Target::parse(url) {
                Ok(t) => write!(
                    f,
                    "postgres: database {:?} on {} (sslmode={})",
                    t.dbname().unwrap_or("(default)"),
                    t.addresses(),
                    t.mode().as_str()
                ),
                Err(_) => f.write_str("postgres: (unparsable settings)"),
            },
        }
    }
}

impl std::fmt::Debug for DbLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl From<std::path::PathBuf> for DbLocation {
    fn from(p: std::path::PathBuf) -> Self {
        Self::Sqlite(p)
    }
}

/// A phase of a write transaction, as [`Store::observe_writes`] is told it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePhase {
    /// Waiting for this listener's writing connection (its other writes).
    Connection,
    /// `BEGIN` to the last statement: round trips, and on PostgreSQL the
    /// waits for row locks other listeners' transactions hold.
    Statements,
    /// `COMMIT`: the database writing its log to disk.
    Commit,
    /// A transaction the database rolled back (a deadlock) and that runs
    /// again: its whole time so far.
    Retried,
}

/// Told each write transaction's phases ([`Store::observe_writes`]).
pub type WriteObserver = Arc<dyn Fn(WritePhase, std::time::Duration) + Send + Sync>;

pub struct Store {
    backend: Backend,
    /// Where write timings go (the metrics), once set.
    observer: std::sync::OnceLock<WriteObserver>,
    /// The SQLite file, when it is one (what [`Store::held_as`] locks).
    file: Option<std::path::PathBuf>,
    /// This listener's name, when it serves agents ([`Store::held_as`]).
    holder: Option<String>,
    /// On SQLite, while it serves agents: the file's lock
    /// ([`Store::held_as`]).
    _serving: Option<FileLock>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .field("file", &self.file)
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

/// An exclusive `flock(2)` on a SQLite file, held by the one process that
/// serves it (or copies it: `cc-listener migrate`) until it exits — the
/// kernel drops it with the process, SIGKILL included. SQLite's own locks
/// are POSIX record locks, which on Linux are independent of `flock`, so
/// `cc-listener keys` and `check` still open the file beside a listener.
#[derive(Debug)]
pub struct FileLock {
    _held: nix::fcntl::Flock<std::fs::File>,
}

impl FileLock {
    /// Takes the lock on the existing file `path` without waiting; `None`
    /// when another process holds it.
    pub fn try_exclusive(path: &Path) -> Result<Option<Self>> {
        use nix::fcntl::{Flock, FlockArg};
        let file = std::fs::File::open(path)
            .with_context(|| format!("opening {} to lock it", path.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(held) => Ok(Some(Self { _held: held })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(e).with_context(|| format!("locking {}", path.display())),
        }
    }
}

/// How long a listener's hold on an agent lasts without renewal: a
/// listener that dies leaves its agents shown connected at most this long.
pub const LEASE_MS: i64 = 30_000;

#[derive(Debug)]
enum Backend {
    Sqlite {
        writer: Mutex<Connection>,
        reader: Mutex<Connection>,
    },
    Postgres {
        url: String,
        writer: Box<Mutex<PgConn>>,
        reader: Box<Mutex<PgConn>>,
        /// The listener's own chores — the sweep, the prunes, the lease
        /// — on a connection of their own ([`Store::chore`]).
        chores: Box<Mutex<PgConn>>,
    },
}

/// Which of a PostgreSQL store's connections a write transaction uses
/// (SQLite has one writer for both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum On {
    /// Agents' and operators' writes: jobs created, handed over, settled.
    Writer,
    /// The listener's own periodic writes ([`Store::chore`]).
    Chores,
}

/// Set at the start of every PostgreSQL write transaction (same round trip
/// as its `BEGIN`).
const CUSTOM_PLANS: &str = "SET LOCAL plan_cache_mode = force_custom_plan";

/// How many times a PostgreSQL write transaction that met another
/// (deadlock) runs again before its error is returned.
const RETRIES: u32 = 5;
/// The advisory lock held while the schema is migrated.
const PG_MIGRATE_LOCK: i64 = 0x6363_4d47; // "ccMG"

/// A connection the server closed (the database restarted) is opened
/// again on the next call; the call that found it broken failed, and its
/// caller (an agent's report, an operator's request) retries.
fn reconnect_if_closed(conn: &mut PgConn, url: &str) -> Result<()> {
    if conn.is_closed() {
        *conn = PgConn::connect(url)?;
    }
    Ok(())
}

/// How a PostgreSQL write transaction's statements are planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plans {
    /// For this transaction's values and the tables as they are now
    /// (`force_custom_plan`): every write but a writer's group of one.
    Fresh,
    /// PostgreSQL's own choice (`auto`: a generic plan, kept, once it
    /// costs no more than fresh ones): a group of one write from an
    /// agent's connection. Each of its statements finds rows by a unique
    /// key or by (host, status), and both `jobs` indexes on status name
    /// the host (PostgreSQL migration 11), so no plan of them reads more
    /// than one host's rows; planning each afresh cost about 0.5 ms of a
    /// job's round trip. The set-based pass of a larger group must not:
    /// its generic plan drove the hand-over from every queued job (47 s
    /// for one group of a 20,000-host fan-out).
    Kept,
}

/// Whether a commit waits until the database has its log on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flush {
    Wait,
    /// PostgreSQL only; SQLite always waits (`synchronous = FULL`).
    Later,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave SQLite inconsistent (a
    // transaction not committed is rolled back), so a poisoned lock is
    // still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn json_list(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

impl Store {
    /// Opens (creating and migrating it if need be) the SQLite file at
    /// `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let writer = open_connection(path)?;
        schema::migrate(&writer).with_context(|| format!("migrating {}", path.display()))?;
        let reader = open_connection(path)?;
        Ok(Self {
            backend: Backend::Sqlite {
                writer: Mutex::new(writer),
                reader: Mutex::new(reader),
            },
            observer: std::sync::OnceLock::new(),
            file: Some(path.to_owned()),
            holder: None,
            _serving: None,
        })
    }

    /// Connects to the PostgreSQL database at `url` (a `postgres://` URL
    /// or `key=value` settings) and brings its schema up to date; several
    /// listeners may do this at once.
    pub fn open_postgres(url: &str) -> Result<Self> {
        let mut writer = PgConn::connect(url)?;
        schema::migrate_postgres(&mut writer).context("migrating the PostgreSQL schema")?;
        let reader = PgConn::connect(url)?;
        let chores = PgConn::connect(url)?;
        Ok(Self {
            backend: Backend::Postgres {
                url: url.to_owned(),
                writer: Box::new(Mutex::new(writer)),
                reader: Box::new(Mutex::new(reader)),
                chores: Box::new(Mutex::new(chores)),
            },
            observer: std::sync::OnceLock::new(),
            file: None,
            holder: None,
            _serving: None,
        })
    }

    /// This store serves agents for the listener named `name`: a
    /// registration records that the listener holds the agent (with a
    /// lease of [`LEASE_MS`]), and a job is handed over only by the
    /// listener that holds its agent — an agent that moved to another
    /// listener leaves a stale connection here, which
    /// [`StoreError::Moved`] closes. Leases this name held before (a
    /// previous run of the same listener) are released.
    ///
    /// A SQLite file is served by one listener at a time: this takes its
    /// [`FileLock`], and a second listener on the same file (or one started
    /// while `migrate` copies it) is refused.
    pub fn held_as(mut self, name: &str) -> Result<Self> {
        if let Some(path) = &self.file {
            self._serving = Some(FileLock::try_exclusive(path)?.ok_or_else(|| {
                anyhow::anyhow!(
                    "{} is in use by another cc-listener (serve, or migrate copying it): \
                     one listener serves a SQLite file; several share a postgres:// database",
                    path.display()
                )
            })?);
        }
        self.write(|tx| {
            tx.exec(
                "UPDATE agents SET listener = NULL, lease_conn = NULL WHERE listener = ?1",
                &p![name],
            )
        })?;
        self.holder = Some(name.to_owned());
        self.renew_lease(crate::now_ms())?;
        Ok(self)
    }

    /// Renews this listener's lease: one row, however many agents it
    /// holds (their rows name it).
    pub fn renew_lease(&self, now_ms: i64) -> Result<()> {
        let Some(me) = &self.holder else {
            return Ok(());
        };
        self.chore(|tx| {
            tx.exec(
                "INSERT INTO listeners (name, lease_ms) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET lease_ms = ?2",
                &p![me, now_ms + LEASE_MS],
            )
        })?;
        Ok(())
    }

    /// The listeners whose lease runs past `now_ms`: running, or stopped
    /// less than [`LEASE_MS`] ago without releasing it (SIGKILL).
    pub fn live_listeners(&self, now_ms: i64) -> Result<Vec<(String, i64)>> {
        self.read(|c| {
            c.query(
                "SELECT name, lease_ms FROM listeners WHERE lease_ms > ?1 ORDER BY name",
                &p![now_ms],
            )?
            .iter()
            .map(|r| Ok((r.get(0)?, r.get(1)?)))
            .collect()
        })
    }

    /// Opens the store `at` names.
    pub fn open_at(at: &DbLocation) -> Result<Self> {
        match at {
            DbLocation::Sqlite(path) => Self::open(path),
            DbLocation::Postgres(url) => Self::open_postgres(url),
        }
    }

    /// The schema version of the database `at` names, read without
    /// changing anything: no file created, no migration run (what
    /// `cc-listener check` shows). `None`: a SQLite file that does not
    /// exist yet.
    pub fn schema_version(at: &DbLocation) -> Result<Option<SchemaVersion>> {
        match at {
            DbLocation::Sqlite(path) => schema::sqlite_version(path),
            DbLocation::Postgres(url) => schema::postgres_version(url).map(Some),
        }
    }

    /// Which engine holds the data.
    pub fn dialect(&self) -> Dialect {
        match self.backend {
            Backend::Sqlite { .. } => Dialect::Sqlite,
            Backend::Postgres { .. } => Dialect::Postgres,
        }
    }

    /// Runs `f` in a write transaction and commits it if `f` succeeds.
    ///
    /// On PostgreSQL, listeners sharing the database write at once: no
    /// lock is common to all their writes. What made one fleet-wide lock
    /// necessary is kept row by row (ARCHITECTURE.md, "Several
    /// listeners"): a job changes status by a guarded `UPDATE` (handed out
    /// once, settled once); a batched run's release takes that run's row;
    /// the notifier's cursor and the audit chain's head are rows whose
    /// lock their writers take first; and events are read in commit order
    /// ([`Store::events`]). A transaction PostgreSQL rolled back because
    /// it met another (a deadlock, detected by the server) runs again, up
    /// to [`RETRIES`] times.
    fn write<R>(&self, f: impl FnMut(&mut dyn Sql) -> Result<R>) -> Result<R> {
        self.write_with(Flush::Wait, Plans::Fresh, f)
    }

    /// [`Store::write`] for the listener's own periodic work (the sweep,
    /// the prunes, the lease): on PostgreSQL on a connection of its own,
    /// so that a sweep waiting on a row another listener holds, or one
    /// slowed by a busy server, never holds up a job's hand-over or
    /// report. They used the writer's connection until six listeners'
    /// sweeps, each once a second, showed as the slow jobs of the
    /// cross-listener round trip (BENCHMARKS.md). SQLite has one writer.
    fn chore<R>(&self, f: impl FnMut(&mut dyn Sql) -> Result<R>) -> Result<R> {
        self.write_on(On::Chores, Flush::Wait, Plans::Fresh, f)
    }

    /// [`Store::read`] for the listener's own periodic reads: on
    /// PostgreSQL on the chores' connection, beside operators' reads.
    fn chore_read<R>(&self, f: impl FnOnce(&mut dyn Sql) -> Result<R>) -> Result<R> {
        match &self.backend {
            Backend::Sqlite { .. } => self.read(f),
            Backend::Postgres { url, chores, .. } => {
                let mut conn = lock(chores);
                reconnect_if_closed(&mut conn, url)?;
                f(&mut conn.auto()?)
            }
        }
    }

    /// PostgreSQL: sessions of this database waiting for a lock now (the
    /// metrics' sample); SQLite: 0 (one writer, which waits for nobody).
    pub fn lock_waiters(&self) -> Result<i64> {
        match self.dialect() {
            Dialect::Sqlite => Ok(0),
            Dialect::Postgres => self.read(|c| {
                crate::sql::scalar(
                    c,
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND wait_event_type = 'Lock'",
                    &[],
                )
            }),
        }
    }

    /// Sends every write transaction's timings, by [`WritePhase`], to
    /// `observer` from now on (set once; later calls are ignored).
    pub fn observe_writes(&self, observer: WriteObserver) {
        let _ = self.observer.set(observer);
    }

    fn observe(&self, phase: WritePhase, took: std::time::Duration) {
        if let Some(o) = self.observer.get() {
            o(phase, took);
        }
    }

    /// [`Store::write`], with the commit's wait for the disk chosen.
    fn write_with<R>(
        &self,
        flush: Flush,
        plans: Plans,
        f: impl FnMut(&mut dyn Sql) -> Result<R>,
    ) -> Result<R> {
        self.write_on(On::Writer, flush, plans, f)
    }

    /// [`Store::write_with`] on connection `on`.
    fn write_on<R>(
        &self,
        on: On,
        flush: Flush,
        plans: Plans,
        mut f: impl FnMut(&mut dyn Sql) -> Result<R>,
    ) -> Result<R> {
        let asked = std::time::Instant::now();
        match &self.backend {
            Backend::Sqlite { writer, .. } => {
                let mut conn = lock(writer);
                let began = std::time::Instant::now();
                self.observe(WritePhase::Connection, began - asked);
                let tx = write_tx(&mut conn)?;
                let out = f(&mut Lite(&tx))?;
                let committing = std::time::Instant::now();
                tx.commit()?;
                self.observe(WritePhase::Statements, committing - began);
                self.observe(WritePhase::Commit, committing.elapsed());
                Ok(out)
            }
            Backend::Postgres {
                url,
                writer,
                chores,
                ..
            } => {
                let mut conn = lock(match on {
                    On::Writer => writer,
                    On::Chores => chores,
                });
                let mut began = std::time::Instant::now();
                self.observe(WritePhase::Connection, began - asked);
                let mut tries = 0;
                loop {
                    reconnect_if_closed(&mut conn, url)?;
                    let mut committing = began;
                    let attempt = (|| {
                        // Plans made for these values and the tables as
                        // they are now: a generic plan kept from when the
                        // tables were small scanned every queued job per
                        // hand-over in a fan-out (the listener's statements
                        // are prepared once and live as long as it).
                        let plans = match plans {
                            Plans::Fresh => CUSTOM_PLANS,
                            Plans::Kept => "",
                        };
                        let mut tx = match flush {
                            Flush::Wait => conn.transaction(plans)?,
                            Flush::Later => conn.transaction(&format!(
                                "{plans}; SET LOCAL synchronous_commit = off"
                            ))?,
                        };
                        let out = f(&mut *tx)?;
                        committing = std::time::Instant::now();
                        tx.commit()?;
                        Ok(out)
                    })();
                    match attempt {
                        Ok(out) => {
                            self.observe(WritePhase::Statements, committing - began);
                            self.observe(WritePhase::Commit, committing.elapsed());
                            return Ok(out);
                        }
                        Err(e) if tries < RETRIES && crate::sql::is_retryable(&e) => {
                            tries += 1;
                            self.observe(WritePhase::Retried, began.elapsed());
                            began = std::time::Instant::now();
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }

    /// Runs `f` on the reading connection.
    fn read<R>(&self, f: impl FnOnce(&mut dyn Sql) -> Result<R>) -> Result<R> {
        match &self.backend {
            Backend::Sqlite { reader, .. } => f(&mut Lite(&lock(reader))),
            Backend::Postgres { url, reader, .. } => {
                let mut conn = lock(reader);
                reconnect_if_closed(&mut conn, url)?;
                f(&mut conn.auto()?)
            }
        }
    }
}

/// A write transaction that takes SQLite's write lock at `BEGIN`.
///
/// A deferred transaction that reads and then writes fails at once with
/// `SQLITE_BUSY` (no busy handler, no retry) when another connection
/// committed in between — in practice `cc-listener keys add` run by an
/// operator while agents register: their connections ended with "database
/// is locked". Taken up front, the lock is waited for (`busy_timeout`)
/// instead. In this process every write goes through the one writer
/// connection behind a mutex, so this costs nothing here.
fn write_tx(conn: &mut Connection) -> rusqlite::Result<Transaction<'_>> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
}

fn open_connection(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // Switching a new file to WAL while another process opens it can return
    // SQLITE_BUSY without consulting the busy handler (found by
    // `concurrent_first_opens_migrate_once`): retry it for as long as the
    // busy timeout would have waited.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mode: String = loop {
        match conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)) {
            Ok(mode) => break mode,
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => return Err(e).context("switching to WAL"),
        }
    };
    if !mode.eq_ignore_ascii_case("wal") {
        bail!(
            "{} could not be put in WAL mode (got {mode})",
            path.display()
        );
    }
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
        .context("setting synchronous = FULL")?;
    Ok(conn)
}

/// Shared handle for async code: runs store calls on the blocking pool,
/// and tells watchers ([`Db::watch`]) after each one, so the event stream
/// reads new events when there may be some instead of polling.
#[derive(Debug, Clone)]
pub struct Db {
    store: Arc<Store>,
    calls: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Db {
    pub fn new(store: Store) -> Self {
        Self {
            store: Arc::new(store),
            calls: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub async fn call<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&Store) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let r = self.read(f).await;
        self.calls.send_modify(|n| *n = n.wrapping_add(1));
        r
    }

    /// A read that tells no watcher (the event stream's own reads: were
    /// they counted, streams would wake each other for ever).
    pub async fn read<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&Store) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .context("storage task failed")?
    }

    /// Wakes the watchers: another listener sharing the database added
    /// events.
    pub fn poke(&self) {
        self.calls.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Changes after every store call (a write may have added events).
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.calls.subscribe()
    }
}

#[cfg(test)]
mod tests;
