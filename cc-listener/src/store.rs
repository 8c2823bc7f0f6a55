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
//! ([`WriteOp::may_be_lost`]).

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, Transaction, TransactionBehavior};
use sha2::{Digest, Sha256};

use cc_proto::wire::{AgentInfo, CronEntry, CronStatus, ExecutionMode};

pub use crate::sql::Dialect;
use crate::sql::{FromV, Lite, P, PgConn, Row, Sql, ToP, p, scalar};

/// Schema migrations, applied in order; `PRAGMA user_version` records how
/// many ran. Append only.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE api_keys (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    key_hash    TEXT NOT NULL UNIQUE,
    hostname    TEXT UNIQUE,
    created_ms  INTEGER NOT NULL,
    revoked_ms  INTEGER
);
CREATE TABLE agents (
    hostname        TEXT PRIMARY KEY,
    os              TEXT NOT NULL,
    arch            TEXT NOT NULL,
    tags            TEXT NOT NULL,
    execution_mode  TEXT NOT NULL,
    is_root         INTEGER NOT NULL,
    first_seen_ms   INTEGER NOT NULL,
    last_seen_ms    INTEGER NOT NULL,
    cron_status     TEXT
);
CREATE TABLE jobs (
    job_id        TEXT PRIMARY KEY,
    hostname      TEXT NOT NULL,
    command       TEXT NOT NULL,
    args          TEXT NOT NULL,
    timeout_secs  INTEGER NOT NULL,
    status        TEXT NOT NULL,
    created_ms    INTEGER NOT NULL,
    expires_ms    INTEGER NOT NULL,
    sent_ms       INTEGER,
    finished_ms   INTEGER,
    report_id     INTEGER
);
CREATE INDEX jobs_by_host_status ON jobs (hostname, status);
CREATE INDEX jobs_by_status ON jobs (status);
CREATE TABLE cron_sets (
    hostname    TEXT PRIMARY KEY,
    entries     TEXT NOT NULL,
    updated_ms  INTEGER NOT NULL
);
CREATE TABLE reports (
    id           INTEGER PRIMARY KEY,
    hostname     TEXT NOT NULL,
    job_id       TEXT NOT NULL,
    dedupe_key   TEXT NOT NULL,
    kind         TEXT NOT NULL,
    received_ms  INTEGER NOT NULL,
    payload      TEXT NOT NULL,
    UNIQUE (hostname, dedupe_key)
);
CREATE INDEX reports_by_job ON reports (job_id, id);
CREATE INDEX reports_by_host ON reports (hostname, id);
"#,
    r#"
ALTER TABLE jobs ADD COLUMN signed TEXT;
ALTER TABLE cron_sets ADD COLUMN signed TEXT;
"#,
    // Hostnames are case-insensitive: one canonical, lowercase form. Where
    // two rows differ only in case, the first one updated keeps the name;
    // a key left bound to a mixed-case name matches no registration again.
    r#"
UPDATE OR IGNORE api_keys SET hostname = lower(hostname)
    WHERE hostname IS NOT NULL AND hostname <> lower(hostname);
UPDATE OR IGNORE agents SET hostname = lower(hostname) WHERE hostname <> lower(hostname);
DELETE FROM agents WHERE hostname <> lower(hostname);
UPDATE jobs SET hostname = lower(hostname) WHERE hostname <> lower(hostname);
UPDATE OR IGNORE cron_sets SET hostname = lower(hostname) WHERE hostname <> lower(hostname);
UPDATE OR IGNORE reports SET hostname = lower(hostname) WHERE hostname <> lower(hostname);
"#,
    // What each host's reports take: the quota is checked against it in the
    // transaction that stores a report.
    r#"
ALTER TABLE reports ADD COLUMN size INTEGER NOT NULL DEFAULT 0;
UPDATE reports SET size = length(CAST(payload AS BLOB));
CREATE TABLE report_usage (
    hostname   TEXT PRIMARY KEY,
    bytes      INTEGER NOT NULL,
    unmatched  INTEGER NOT NULL
);
INSERT INTO report_usage (hostname, bytes, unmatched)
    SELECT hostname, SUM(size), SUM(kind = 'unmatched') FROM reports GROUP BY hostname;
CREATE INDEX reports_by_age ON reports (received_ms);
"#,
    // Runs: one job per matched host; a batched run holds its jobs `held`
    // until one of its running jobs ends.
    r#"
CREATE TABLE runs (
    run_id        TEXT PRIMARY KEY,
    command       TEXT NOT NULL,
    args          TEXT NOT NULL,
    timeout_secs  INTEGER NOT NULL,
    batch         INTEGER,
    selector      TEXT NOT NULL,
    queue_ttl_ms  INTEGER NOT NULL,
    created_ms    INTEGER NOT NULL
);
ALTER TABLE jobs ADD COLUMN run_id TEXT;
CREATE INDEX jobs_by_run ON jobs (run_id, status);
"#,
    // Every change of a job's state, in commit order, written by the
    // database itself (triggers) in the transaction that makes the change:
    // what the live event stream serves.
    r#"
CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms      INTEGER NOT NULL,
    job_id     TEXT NOT NULL,
    run_id     TEXT,
    hostname   TEXT NOT NULL,
    status     TEXT NOT NULL,
    exit_code  INTEGER
);
CREATE INDEX events_by_run ON events (run_id, id);
CREATE INDEX events_by_host ON events (hostname, id);
CREATE INDEX events_by_job ON events (job_id, id);
CREATE INDEX events_by_age ON events (at_ms);
CREATE TRIGGER job_created AFTER INSERT ON jobs BEGIN
    INSERT INTO events (at_ms, job_id, run_id, hostname, status)
    VALUES (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER),
            NEW.job_id, NEW.run_id, NEW.hostname, NEW.status);
END;
CREATE TRIGGER job_changed AFTER UPDATE OF status ON jobs WHEN NEW.status IS NOT OLD.status BEGIN
    INSERT INTO events (at_ms, job_id, run_id, hostname, status, exit_code)
    VALUES (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER),
            NEW.job_id, NEW.run_id, NEW.hostname, NEW.status,
            (SELECT json_extract(payload, '$.exitCode') FROM reports WHERE id = NEW.report_id));
END;
"#,
    // Which listener (and connection) holds each agent; each listener's
    // lease, renewed as one row however many agents it holds.
    r#"
ALTER TABLE agents ADD COLUMN listener TEXT;
ALTER TABLE agents ADD COLUMN lease_conn INTEGER;
CREATE INDEX agents_by_listener ON agents (listener);
CREATE TABLE listeners (
    name      TEXT PRIMARY KEY,
    lease_ms  INTEGER NOT NULL
);
"#,
    // Revoked keys, read by every listener's sweep each second, without
    // reading every key (a fleet of 100,000 hosts has 100,000 keys).
    r#"
CREATE INDEX api_keys_revoked ON api_keys (id) WHERE revoked_ms IS NOT NULL;
"#,
    // The tags a key's host may have (a sorted JSON list), like its
    // hostname an operator's statement: set by `keys add --tags` or by the
    // first registration, changed only through the API. NULL: not yet.
    r#"
ALTER TABLE api_keys ADD COLUMN tags TEXT;
"#,
];

/// Jobs handed to a spec-only agent per transaction.
pub const TAKE_BATCH: i64 = 1000;

/// Where a job is. The store is the only place a job changes state, and
/// these are the only changes it makes:
///
/// - `Held` → `Queued`: a place in its run's batch came free;
/// - `Queued` → `Sent`: handed to its host's connection, within the
///   agent's window ([`Store::take_for_host`]); `Sent` → `Queued`: that
///   connection could not take it ([`Store::requeue`]);
/// - `Sent` → `Lost`: no report within timeout + grace; `Queued` →
///   `Expired`: its agent did not take it within the queue time
///   ([`Store::sweep`]);
/// - any → `Done`: its first report ([`Store::write_batch`]).
///
/// Stored and sent to operators as the lowercase word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// A job of a batched run waiting for a place in its batch.
    Held,
    Queued,
    Sent,
    Done,
    Lost,
    Expired,
}

impl JobStatus {
    pub const ALL: [Self; 6] = [
        Self::Held,
        Self::Queued,
        Self::Sent,
        Self::Done,
        Self::Lost,
        Self::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Queued => "queued",
            Self::Sent => "sent",
            Self::Done => "done",
            Self::Lost => "lost",
            Self::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ToP for JobStatus {
    fn to_p(&self) -> P<'_> {
        P::Text(self.as_str())
    }
}

impl FromV for JobStatus {
    fn from_v(v: &crate::sql::V) -> Result<Self, String> {
        let text = String::from_v(v)?;
        Self::parse(&text).ok_or_else(|| format!("unknown job status {text:?}"))
    }
}

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
            Self::Postgres(url) => match postgres::Config::from_str(url) {
                Ok(c) => write!(
                    f,
                    "postgres: database {:?} on {:?}",
                    c.get_dbname().unwrap_or("(default)"),
                    c.get_hosts()
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

use std::str::FromStr as _;

#[derive(Debug)]
pub struct Store {
    backend: Backend,
    /// This listener's name, when it serves agents ([`Store::held_as`]).
    holder: Option<String>,
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
    },
}

/// The advisory lock every PostgreSQL write transaction holds (see
/// `Store::write`); any constant, the same in every listener.
const PG_WRITE_LOCK: i64 = 0x6363_5752; // "ccWR"
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

/// An API key as the handshake sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: i64,
    pub name: String,
    pub hostname: Option<String>,
}

/// What went wrong in the store, by kind: the operator API answers from
/// the kind (409, 404, 500), never from the message. Store calls return
/// `anyhow::Error`; these travel inside it (`downcast_ref`), and so does a
/// `rusqlite::Error` reading a value this listener cannot understand
/// ([`StoreError::classify`] names it corrupt).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// What was to be created exists already (a key name, a job id).
    #[error("{0}")]
    Conflict(String),
    /// What was asked for is not there.
    #[error("{0}")]
    NotFound(String),
    /// The database holds something this listener cannot read.
    #[error("the database holds something this listener cannot read: {0}")]
    Corrupt(String),
    /// Another listener holds this host's agent now (it reconnected
    /// there): this listener's connection to it is stale.
    #[error("the agent of {0} is connected to another listener now")]
    Moved(String),
}

/// The kind of a store failure, for answering it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Conflict,
    NotFound,
    Corrupt,
    /// The database itself failed (I/O, locked, full).
    Backend,
}

impl StoreError {
    /// The kind of `e`, an error a store call returned.
    pub fn classify(e: &anyhow::Error) -> ErrorKind {
        if let Some(s) = e.downcast_ref::<StoreError>() {
            return match s {
                StoreError::Conflict(_) => ErrorKind::Conflict,
                StoreError::NotFound(_) => ErrorKind::NotFound,
                StoreError::Corrupt(_) => ErrorKind::Corrupt,
                StoreError::Moved(_) => ErrorKind::Conflict,
            };
        }
        if e.downcast_ref::<crate::sql::Unreadable>().is_some() {
            return ErrorKind::Corrupt;
        }
        match e.downcast_ref::<rusqlite::Error>() {
            Some(
                rusqlite::Error::FromSqlConversionFailure(..)
                | rusqlite::Error::InvalidColumnType(..)
                | rusqlite::Error::IntegralValueOutOfRange(..),
            ) => ErrorKind::Corrupt,
            _ => ErrorKind::Backend,
        }
    }
}

/// A unique constraint refused the insert: `what` exists already.
fn conflict_on_constraint(e: anyhow::Error, what: impl FnOnce() -> String) -> anyhow::Error {
    if crate::sql::is_constraint(&e) {
        StoreError::Conflict(what()).into()
    } else {
        e
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyInfo {
    pub name: String,
    pub hostname: Option<String>,
    /// The tags its host may have; `None` until set or first registered.
    pub tags: Option<Vec<String>>,
    pub created_ms: i64,
    pub revoked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// The key is (now) bound to this hostname.
    Ok,
    /// The key belongs to another host.
    OtherHost(String),
    /// Another key already owns this hostname.
    HostnameTaken,
    /// The key's host may have these tags, not the ones it registered
    /// with.
    OtherTags(Vec<String>),
}

/// Tags as a key keeps them: sorted, each once.
pub fn canonical_tags<S: AsRef<str>>(tags: &[S]) -> Vec<String> {
    let set: std::collections::BTreeSet<&str> = tags.iter().map(AsRef::as_ref).collect();
    set.into_iter().map(str::to_owned).collect()
}

#[derive(Debug, Clone)]
pub struct AgentRow {
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub tags: Vec<String>,
    pub execution_mode: String,
    pub is_root: bool,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub cron_status: Option<String>,
    /// What the host's stored reports take (its quota's use).
    pub report_bytes: i64,
    /// The listener holding the agent's connection, and until when that
    /// listener's lease runs (it renews it while it runs).
    pub listener: Option<String>,
    pub lease_ms: Option<i64>,
}

/// A fan-out: what runs, where it was aimed, and how many at once.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub run_id: String,
    pub command: String,
    pub args: Vec<String>,
    pub timeout_secs: u64,
    pub batch: Option<u32>,
    /// What the operator asked for (`{"hosts": …, "tags": …}`), as JSON.
    pub selector: String,
    pub queue_ttl_ms: i64,
    pub created_ms: i64,
}

/// A write that may share its transaction with others ([`Store::write_batch`]).
#[derive(Debug, Clone)]
pub enum WriteOp {
    Report {
        hostname: String,
        job_id: String,
        dedupe_key: String,
        payload: String,
        limits: ReportLimits,
    },
    Take {
        hostname: String,
        window: Option<u32>,
        /// The connection that asks (see [`Store::held_as`]).
        conn: u64,
    },
    /// [`Store::bind_key`].
    Bind {
        key_id: i64,
        hostname: String,
        tags: Vec<String>,
    },
    /// [`Store::upsert_agent`], seen now.
    Register { info: AgentInfo, conn: u64 },
    /// [`Store::touch_agent`]: a connection ended.
    Touch {
        hostname: String,
        last_seen_ms: i64,
        conn: u64,
    },
}

impl WriteOp {
    /// Whether a database crash may undo this write once committed,
    /// because nothing was promised on it and what follows repairs it: a
    /// hand-over undone puts the job back in the queue, so it is sent
    /// again (the agent runs a job id at most once, and its report settles
    /// the job whatever its state). A group of hand-overs only commits on
    /// PostgreSQL without waiting for the disk (`synchronous_commit = off`
    /// for that transaction); the next commit that waits flushes it too,
    /// since the log is written in order. Everything else waits: reports,
    /// registrations and bindings are acknowledged, and a connection's end
    /// undone would show the agent connected, held by a connection that is
    /// gone, while its listener lives.
    fn may_be_lost(&self) -> bool {
        matches!(self, Self::Take { .. })
    }
}

/// Whether a commit waits until the database has its log on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flush {
    Wait,
    /// PostgreSQL only; SQLite always waits (`synchronous = FULL`).
    Later,
}

#[derive(Debug, Clone)]
pub enum WriteOut {
    Report {
        stored: Stored,
        released: Vec<String>,
        new: Option<NewReport>,
    },
    Taken(Vec<JobRow>),
    Bound(Binding),
    Registered,
    Touched,
}

/// A new report's kind (`job`, `cron`, `unmatched`) and whether it
/// settled its job (for the metrics).
pub type NewReport = (&'static str, bool);

/// One change of a job's state (`events` table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub id: i64,
    pub at_ms: i64,
    pub job_id: String,
    pub run_id: Option<String>,
    pub hostname: String,
    pub status: JobStatus,
    pub exit_code: Option<i64>,
}

/// Which events a reader wants.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub run_id: Option<String>,
    pub hostname: Option<String>,
    pub job_id: Option<String>,
}

/// A run and where each of its jobs is.
#[derive(Debug, Clone)]
pub struct RunRow {
    pub run_id: String,
    pub command: String,
    pub args: Vec<String>,
    pub timeout_secs: u64,
    pub batch: Option<u32>,
    pub selector: String,
    pub created_ms: i64,
    pub jobs: Vec<RunJob>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunJob {
    pub hostname: String,
    pub job_id: String,
    pub status: JobStatus,
    pub exit_code: Option<i64>,
    pub duration_ms: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct NewJob {
    pub job_id: String,
    pub hostname: String,
    pub command: String,
    pub args: Vec<String>,
    pub timeout_secs: u64,
    pub created_ms: i64,
    pub expires_ms: i64,
    /// The operator's (or this listener's) signature, a `Signed` as JSON,
    /// relayed untouched beside the `execute_job`.
    pub signed: Option<String>,
}

#[derive(Debug, Clone)]
pub struct JobRow {
    pub job_id: String,
    pub hostname: String,
    pub command: String,
    pub args: Vec<String>,
    pub timeout_secs: u64,
    pub status: JobStatus,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub sent_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub report: Option<String>,
    pub signed: Option<String>,
}

/// A run as the console lists it.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub run_id: String,
    pub command: String,
    pub args: Vec<String>,
    pub created_ms: i64,
    /// Jobs per state, in [`JobStatus`] order; states with none left out.
    pub counts: Vec<(JobStatus, usize)>,
    /// Done jobs whose exit code was not 0.
    pub failed: usize,
}

/// A job as the console lists it.
#[derive(Debug, Clone)]
pub struct JobSummary {
    pub job_id: String,
    pub hostname: String,
    pub command: String,
    pub args: Vec<String>,
    pub status: JobStatus,
    pub created_ms: i64,
    pub run_id: Option<String>,
    pub exit_code: Option<i64>,
    pub duration_ms: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct ReportRow {
    pub hostname: String,
    pub job_id: String,
    pub kind: String,
    pub received_ms: i64,
    pub payload: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    New,
    Duplicate,
    /// Not stored, so not to be acknowledged: the agent keeps it.
    Refused(Refusal),
}

/// Why a report was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "report quota reached: the host's reports take {used} bytes, this one {size} more, quota {quota}"
    )]
    Quota { used: u64, size: u64, quota: u64 },
    #[error(
        "unmatched report quota reached: {quota} reports for no job or cron entry of this host are kept"
    )]
    Unmatched { quota: u64 },
}

/// Per-host limits on what reports may take in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportLimits {
    /// Bytes of stored reports (their JSON) per host.
    pub quota_bytes: u64,
    /// Reports per host that match no job and no cron entry of that host.
    pub unmatched: u64,
}

impl Default for ReportLimits {
    fn default() -> Self {
        Self {
            quota_bytes: 1 << 30,
            unmatched: 100,
        }
    }
}

/// What a host's stored reports take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub unmatched: u64,
}

impl Usage {
    /// From `report_usage`'s `bytes` and `unmatched` at columns `at` and
    /// `at + 1` of `row`; a host with no row there (NULL) has used nothing.
    fn from_row(row: &Row, at: usize) -> Result<Self> {
        let count = |i| -> Result<u64> {
            Ok(u64::try_from(row.get::<Option<i64>>(i)?.unwrap_or(0)).unwrap_or(0))
        };
        Ok(Self {
            bytes: count(at)?,
            unmatched: count(at + 1)?,
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct ReportQuery {
    pub hostname: Option<String>,
    pub job_id: Option<String>,
    pub limit: u32,
    /// Only reports with a smaller id (the previous page's cursor).
    pub before: Option<i64>,
}

/// SHA-256 of an API key, hex. Keys are 256 random bits, so a fast hash is
/// enough: there is nothing to brute-force.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
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
        migrate(&writer).with_context(|| format!("migrating {}", path.display()))?;
        let reader = open_connection(path)?;
        Ok(Self {
            backend: Backend::Sqlite {
                writer: Mutex::new(writer),
                reader: Mutex::new(reader),
            },
            holder: None,
        })
    }

    /// Connects to the PostgreSQL database at `url` (a `postgres://` URL
    /// or `key=value` settings) and brings its schema up to date; several
    /// listeners may do this at once.
    pub fn open_postgres(url: &str) -> Result<Self> {
        let mut writer = PgConn::connect(url)?;
        migrate_postgres(&mut writer).context("migrating the PostgreSQL schema")?;
        let reader = PgConn::connect(url)?;
        Ok(Self {
            backend: Backend::Postgres {
                url: url.to_owned(),
                writer: Box::new(Mutex::new(writer)),
                reader: Box::new(Mutex::new(reader)),
            },
            holder: None,
        })
    }

    /// This store serves agents for the listener named `name`: a
    /// registration records that the listener holds the agent (with a
    /// lease of [`LEASE_MS`]), and a job is handed over only by the
    /// listener that holds its agent — an agent that moved to another
    /// listener leaves a stale connection here, which
    /// [`StoreError::Moved`] closes. Leases this name held before (a
    /// previous run of the same listener) are released.
    pub fn held_as(mut self, name: &str) -> Result<Self> {
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
        self.write(|tx| {
            tx.exec(
                "INSERT INTO listeners (name, lease_ms) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET lease_ms = ?2",
                &p![me, now_ms + LEASE_MS],
            )
        })?;
        Ok(())
    }

    /// Opens the store `at` names.
    pub fn open_at(at: &DbLocation) -> Result<Self> {
        match at {
            DbLocation::Sqlite(path) => Self::open(path),
            DbLocation::Postgres(url) => Self::open_postgres(url),
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
    /// On PostgreSQL every write transaction first takes one advisory lock
    /// (held to its commit), so the writes of all listeners sharing the
    /// database commit one at a time, as in SQLite: event ids are then
    /// assigned in commit order (a stream that read id N never misses a
    /// smaller id committed later), and two listeners never hand out the
    /// same job or settle it twice.
    fn write<R>(&self, f: impl FnOnce(&mut dyn Sql) -> Result<R>) -> Result<R> {
        self.write_with(Flush::Wait, f)
    }

    /// [`Store::write`], with the commit's wait for the disk chosen.
    fn write_with<R>(&self, flush: Flush, f: impl FnOnce(&mut dyn Sql) -> Result<R>) -> Result<R> {
        match &self.backend {
            Backend::Sqlite { writer, .. } => {
                let mut conn = lock(writer);
                let tx = write_tx(&mut conn)?;
                let out = f(&mut Lite(&tx))?;
                tx.commit()?;
                Ok(out)
            }
            Backend::Postgres { url, writer, .. } => {
                let mut conn = lock(writer);
                reconnect_if_closed(&mut conn, url)?;
                let lock = format!("SELECT pg_advisory_xact_lock({PG_WRITE_LOCK})");
                let mut tx = match flush {
                    Flush::Wait => conn.transaction(&lock)?,
                    Flush::Later => {
                        conn.transaction(&format!("SET LOCAL synchronous_commit = off; {lock}"))?
                    }
                };
                let out = f(&mut *tx)?;
                tx.commit()?;
                Ok(out)
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

    // ---- API keys ----

    /// Creates a key and returns it; only its hash is stored.
    pub fn add_key(&self, name: &str, hostname: Option<&str>, now_ms: i64) -> Result<String> {
        let mut keys = self.add_keys(&[(name, hostname)], now_ms)?;
        keys.pop().context("no key created")
    }

    /// [`Store::add_key`] with the tags its host may have (`None`: those
    /// of its first registration).
    pub fn add_key_tagged(
        &self,
        name: &str,
        hostname: Option<&str>,
        tags: Option<&[String]>,
        now_ms: i64,
    ) -> Result<String> {
        let tags = tags
            .map(|t| serde_json::to_string(&canonical_tags(t)))
            .transpose()?;
        let key = self.add_key(name, hostname, now_ms)?;
        if tags.is_some() {
            self.write(|tx| {
                tx.exec(
                    "UPDATE api_keys SET tags = ?2 WHERE name = ?1",
                    &p![name, tags],
                )
            })?;
        }
        Ok(key)
    }

    /// Sets the tags the host of live key `name` may have, and those its
    /// agent is listed and selected with; the agent's next registration
    /// must declare the same. [`StoreError::NotFound`] when there is no
    /// such live key.
    pub fn retag_key(&self, name: &str, tags: &[String]) -> Result<Vec<String>> {
        let tags = canonical_tags(tags);
        let text = serde_json::to_string(&tags)?;
        let n = self.write(|tx| {
            let n = tx.exec(
                "UPDATE api_keys SET tags = ?2 WHERE name = ?1 AND revoked_ms IS NULL",
                &p![name, text],
            )?;
            tx.exec(
                "UPDATE agents SET tags = ?2
                 WHERE hostname = (SELECT hostname FROM api_keys WHERE name = ?1)",
                &p![name, text],
            )?;
            Ok(n)
        })?;
        if n == 1 {
            Ok(tags)
        } else {
            Err(StoreError::NotFound(format!("no active key named {name:?}")).into())
        }
    }

    /// Creates several keys in one transaction (provisioning a fleet).
    pub fn add_keys(&self, specs: &[(&str, Option<&str>)], now_ms: i64) -> Result<Vec<String>> {
        self.write(|tx| {
            let mut keys = Vec::with_capacity(specs.len());
            for &(name, hostname) in specs {
                let mut raw = [0u8; 32];
                getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
                let key = format!("cck_{}", hex::encode(raw));
                tx.exec(
                    "INSERT INTO api_keys (name, key_hash, hostname, created_ms) VALUES (?1, ?2, ?3, ?4)",
                    &p![name, hash_key(&key), hostname, now_ms],
                )
                .map_err(|e| {
                    conflict_on_constraint(e, || {
                        format!("a key named {name:?} exists, or the hostname already has a key")
                    })
                })?;
                keys.push(key);
            }
            Ok(keys)
        })
    }

    pub fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        self.read(|c| {
            c.query(
                "SELECT name, hostname, created_ms, revoked_ms IS NOT NULL, tags FROM api_keys ORDER BY name",
                &[],
            )?
            .iter()
            .map(|r| {
                Ok(KeyInfo {
                    name: r.get(0)?,
                    hostname: r.get(1)?,
                    tags: r.get::<Option<String>>(4)?.as_deref().map(json_list),
                    created_ms: r.get(2)?,
                    revoked: r.get(3)?,
                })
            })
            .collect()
        })
    }

    /// Revokes a key by name; [`StoreError::NotFound`] when there is no such
    /// live key.
    pub fn revoke_key(&self, name: &str, now_ms: i64) -> Result<()> {
        let n = self.write(|tx| {
            tx.exec(
                "UPDATE api_keys SET revoked_ms = ?2 WHERE name = ?1 AND revoked_ms IS NULL",
                &p![name, now_ms],
            )
        })?;
        if n == 1 {
            Ok(())
        } else {
            Err(StoreError::NotFound(format!("no active key named {name:?}")).into())
        }
    }

    /// The live key with this value, if any.
    pub fn authenticate(&self, key: &str) -> Result<Option<KeyRecord>> {
        self.read(|c| {
            c.one(
                "SELECT id, name, hostname FROM api_keys WHERE key_hash = ?1 AND revoked_ms IS NULL",
                &p![hash_key(key)],
            )?
            .map(|r| {
                Ok(KeyRecord {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    hostname: r.get(2)?,
                })
            })
            .transpose()
        })
    }

    /// Ids of revoked keys (few; checked against live connections).
    pub fn revoked_key_ids(&self) -> Result<std::collections::HashSet<i64>> {
        self.read(|c| {
            c.query("SELECT id FROM api_keys WHERE revoked_ms IS NOT NULL", &[])?
                .iter()
                .map(|r| r.get(0))
                .collect()
        })
    }

    /// Binds key `id` to `hostname` and `tags` the first time it
    /// registers; later, checks that they are the same.
    pub fn bind_key(&self, id: i64, hostname: &str, tags: &[String]) -> Result<Binding> {
        self.write(|tx| Self::bind_in(tx, id, hostname, tags))
    }

    /// Checks everything before it writes anything: a registration refused
    /// for its tags binds no hostname either.
    fn bind_in(tx: &mut dyn Sql, id: i64, hostname: &str, tags: &[String]) -> Result<Binding> {
        let row = tx
            .one("SELECT hostname, tags FROM api_keys WHERE id = ?1", &p![id])?
            .context("no such key")?;
        let (bound, bound_tags): (Option<String>, Option<String>) = (row.get(0)?, row.get(1)?);
        match &bound {
            Some(h) if h == hostname => {}
            Some(h) => return Ok(Binding::OtherHost(h.clone())),
            None => {
                let taken = tx
                    .one("SELECT 1 FROM api_keys WHERE hostname = ?1", &p![hostname])?
                    .is_some();
                if taken {
                    return Ok(Binding::HostnameTaken);
                }
            }
        }
        let sent = canonical_tags(tags);
        match bound_tags.as_deref().map(json_list) {
            Some(have) if have != sent => return Ok(Binding::OtherTags(have)),
            Some(_) => {}
            None => {
                tx.exec(
                    "UPDATE api_keys SET tags = ?2 WHERE id = ?1",
                    &p![id, serde_json::to_string(&sent)?],
                )?;
            }
        }
        if bound.is_none() {
            tx.exec(
                "UPDATE api_keys SET hostname = ?2 WHERE id = ?1",
                &p![id, hostname],
            )?;
        }
        Ok(Binding::Ok)
    }

    // ---- agents ----

    pub fn upsert_agent(&self, info: &AgentInfo, now_ms: i64) -> Result<()> {
        self.write(|tx| Self::upsert_in(tx, None, info, now_ms))
    }

    /// Records a registration; `by`: this listener and its connection now
    /// hold the agent.
    fn upsert_in(
        tx: &mut dyn Sql,
        by: Option<(&str, u64)>,
        info: &AgentInfo,
        now_ms: i64,
    ) -> Result<()> {
        let tags: Vec<&str> = info.tags.iter().map(|t| t.as_str()).collect();
        let mode = match info.execution_mode {
            ExecutionMode::User => "user",
            ExecutionMode::System => "system",
        };
        tx.exec(
            "INSERT INTO agents (hostname, os, arch, tags, execution_mode, is_root, first_seen_ms,
                                 last_seen_ms, listener, lease_conn)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?9)
             ON CONFLICT (hostname) DO UPDATE SET os = ?2, arch = ?3, tags = ?4,
                 execution_mode = ?5, is_root = ?6, last_seen_ms = ?7, listener = ?8,
                 lease_conn = ?9",
            &p![
                info.hostname.as_str(),
                info.os,
                info.arch,
                serde_json::to_string(&tags)?,
                mode,
                info.is_root,
                now_ms,
                by.map(|b| b.0),
                by.map(|b| b.1)
            ],
        )?;
        Ok(())
    }

    /// Connection `conn` to the agent ended: when it last sent anything,
    /// and, if it still held the agent, the hold is released.
    pub fn touch_agent(&self, hostname: &str, last_seen_ms: i64, conn: u64) -> Result<()> {
        self.write(|tx| Self::touch_in(tx, self.holder.as_deref(), hostname, last_seen_ms, conn))
    }

    /// [`Store::touch_agent`] inside the caller's transaction; `holder`
    /// is this listener's name.
    fn touch_in(
        tx: &mut dyn Sql,
        holder: Option<&str>,
        hostname: &str,
        last_seen_ms: i64,
        conn: u64,
    ) -> Result<()> {
        tx.exec(
            "UPDATE agents SET last_seen_ms = CASE WHEN last_seen_ms < ?2 THEN ?2 ELSE last_seen_ms END
             WHERE hostname = ?1",
            &p![hostname, last_seen_ms],
        )?;
        tx.exec(
            "UPDATE agents SET listener = NULL, lease_conn = NULL
             WHERE hostname = ?1 AND listener = ?2 AND lease_conn = ?3",
            &p![hostname, holder, conn],
        )?;
        Ok(())
    }

    pub fn set_cron_status(&self, hostname: &str, status: &CronStatus) -> Result<()> {
        let text = serde_json::to_string(status)?;
        self.write(|tx| {
            tx.exec(
                "UPDATE agents SET cron_status = ?2 WHERE hostname = ?1",
                &p![hostname, text],
            )
        })?;
        Ok(())
    }

    /// Hostnames of agents after `after`, in order, up to `limit + 1` of
    /// them (so the caller knows whether more follow), each with an upper
    /// estimate of its size in the API's JSON.
    pub fn agent_page(&self, after: Option<&str>, limit: u32) -> Result<Vec<(String, u64)>> {
        self.read(|c| {
            c.query(
                "SELECT hostname, 512 + octet_length(hostname) + octet_length(tags)
                        + coalesce(octet_length(cron_status), 0)
                 FROM agents WHERE (CAST(?1 AS TEXT) IS NULL OR hostname > ?1)
                 ORDER BY hostname LIMIT ?2",
                &p![after, i64::from(limit) + 1],
            )?
            .iter()
            .map(|r| Ok((r.get(0)?, u64::try_from(r.get::<i64>(1)?).unwrap_or(0))))
            .collect()
        })
    }

    /// Agents with hostnames from `first` to `last`, in order.
    pub fn agents_between(&self, first: &str, last: &str) -> Result<Vec<AgentRow>> {
        self.read(|c| {
            c.query(
                "SELECT a.hostname, os, arch, tags, execution_mode, is_root, first_seen_ms,
                        last_seen_ms, cron_status, coalesce(u.bytes, 0), a.listener, l.lease_ms
                 FROM agents a LEFT JOIN report_usage u ON u.hostname = a.hostname
                      LEFT JOIN listeners l ON l.name = a.listener
                 WHERE a.hostname >= ?1 AND a.hostname <= ?2
                 ORDER BY a.hostname",
                &p![first, last],
            )?
            .iter()
            .map(|r| {
                Ok(AgentRow {
                    hostname: r.get(0)?,
                    os: r.get(1)?,
                    arch: r.get(2)?,
                    tags: json_list(&r.get::<String>(3)?),
                    execution_mode: r.get(4)?,
                    is_root: r.get(5)?,
                    first_seen_ms: r.get(6)?,
                    last_seen_ms: r.get(7)?,
                    cron_status: r.get(8)?,
                    report_bytes: r.get(9)?,
                    listener: r.get(10)?,
                    lease_ms: r.get(11)?,
                })
            })
            .collect()
        })
    }

    /// Whether an agent with this hostname has ever registered, or a key is
    /// bound to it.
    pub fn agent_known(&self, hostname: &str) -> Result<bool> {
        self.read(|c| {
            Ok(c.one(
                "SELECT 1 FROM agents WHERE hostname = ?1
                 UNION ALL SELECT 1 FROM api_keys WHERE hostname = ?1 LIMIT 1",
                &p![hostname],
            )?
            .is_some())
        })
    }

    // ---- jobs ----

    /// Stores a new job, queued: [`Store::take_for_host`] hands it over.
    /// A job id used before is a [`StoreError::Conflict`].
    pub fn create_job(&self, job: &NewJob) -> Result<()> {
        let args = serde_json::to_string(&job.args)?;
        self.write(|tx| {
            tx.exec(
                "INSERT INTO jobs (job_id, hostname, command, args, timeout_secs, status, created_ms,
                                   expires_ms, signed)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?9, ?6, ?7, ?8)",
                &p![
                    job.job_id,
                    job.hostname,
                    job.command,
                    args,
                    job.timeout_secs,
                    job.created_ms,
                    job.expires_ms,
                    job.signed,
                    JobStatus::Queued
                ],
            )
            .map_err(|e| conflict_on_constraint(e, || format!("a job {} exists already", job.job_id)))
        })?;
        Ok(())
    }

    /// Stores a run and its jobs (`jobs`' hostnames and ids; command,
    /// args and timeout are the run's) in one transaction: with a batch,
    /// the first `batch` jobs are queued and the rest held.
    pub fn create_run(&self, run: &NewRun, jobs: &[NewJob]) -> Result<()> {
        let args = serde_json::to_string(&run.args)?;
        self.write(|tx| {
            tx.exec(
                "INSERT INTO runs (run_id, command, args, timeout_secs, batch, selector, queue_ttl_ms,
                                   created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                &p![
                    run.run_id,
                    run.command,
                    args,
                    run.timeout_secs,
                    run.batch,
                    run.selector,
                    run.queue_ttl_ms,
                    run.created_ms
                ],
            )?;
            for (i, job) in jobs.iter().enumerate() {
                let held = run.batch.is_some_and(|b| i >= b as usize);
                let status = if held {
                    JobStatus::Held
                } else {
                    JobStatus::Queued
                };
                tx.exec(
                    "INSERT INTO jobs (job_id, hostname, command, args, timeout_secs, status,
                                       created_ms, expires_ms, signed, run_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    &p![
                        job.job_id,
                        job.hostname,
                        run.command,
                        args,
                        run.timeout_secs,
                        status,
                        job.created_ms,
                        if held { i64::MAX } else { job.expires_ms },
                        job.signed,
                        run.run_id
                    ],
                )
                .map_err(|e| {
                    conflict_on_constraint(e, || format!("a job {} exists already", job.job_id))
                })?;
            }
            Ok(())
        })
    }

    /// Queues as many of `run_id`'s held jobs as its batch has room for
    /// (its queued and sent jobs are what runs), oldest first; their queue
    /// time starts now. Returns their hosts.
    fn release_held(tx: &mut dyn Sql, run_id: &str, now_ms: i64) -> Result<Vec<String>> {
        let Some(row) = tx.one(
            "SELECT batch, queue_ttl_ms FROM runs WHERE run_id = ?1",
            &p![run_id],
        )?
        else {
            return Ok(Vec::new());
        };
        let (Some(batch), ttl): (Option<i64>, i64) = (row.get(0)?, row.get(1)?) else {
            return Ok(Vec::new());
        };
        let active: i64 = scalar(
            tx,
            "SELECT count(*) FROM jobs WHERE run_id = ?1 AND status IN (?2, ?3)",
            &p![run_id, JobStatus::Queued, JobStatus::Sent],
        )?;
        let room = batch - active;
        if room <= 0 {
            return Ok(Vec::new());
        }
        tx.query(
            "UPDATE jobs SET status = ?5, expires_ms = ?2 + ?3
             WHERE job_id IN (SELECT job_id FROM jobs WHERE run_id = ?1 AND status = ?6
                              ORDER BY created_ms, rowid LIMIT ?4)
             RETURNING hostname",
            &p![
                run_id,
                now_ms,
                ttl,
                room,
                JobStatus::Queued,
                JobStatus::Held
            ],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect()
    }

    /// A run with each of its jobs, by hostname.
    pub fn get_run(&self, run_id: &str) -> Result<Option<RunRow>> {
        self.read(|c| {
            let Some(r) = c.one(
                "SELECT run_id, command, args, timeout_secs, batch, selector, created_ms
                 FROM runs WHERE run_id = ?1",
                &p![run_id],
            )?
            else {
                return Ok(None);
            };
            let jobs = c
                .query(
                    "SELECT j.hostname, j.job_id, j.status, json_extract(r.payload, '$.exitCode'),
                            json_extract(r.payload, '$.durationMs')
                     FROM jobs j LEFT JOIN reports r ON r.id = j.report_id
                     WHERE j.run_id = ?1 ORDER BY j.hostname",
                    &p![run_id],
                )?
                .iter()
                .map(|r| {
                    Ok(RunJob {
                        hostname: r.get(0)?,
                        job_id: r.get(1)?,
                        status: r.get(2)?,
                        exit_code: r.get(3)?,
                        duration_ms: r.get(4)?,
                    })
                })
                .collect::<Result<_>>()?;
            Ok(Some(RunRow {
                run_id: r.get(0)?,
                command: r.get(1)?,
                args: json_list(&r.get::<String>(2)?),
                timeout_secs: r.get(3)?,
                batch: r.get(4)?,
                selector: r.get(5)?,
                created_ms: r.get(6)?,
                jobs,
            }))
        })
    }

    /// Events after `after` that `f` selects, oldest first, at most `limit`.
    pub fn events(&self, after: i64, f: &EventFilter, limit: u32) -> Result<Vec<EventRow>> {
        self.read(|c| {
            c.query(
                "SELECT id, at_ms, job_id, run_id, hostname, status, exit_code FROM events
                 WHERE id > ?1 AND (CAST(?2 AS TEXT) IS NULL OR run_id = ?2)
                   AND (CAST(?3 AS TEXT) IS NULL OR hostname = ?3)
                   AND (CAST(?4 AS TEXT) IS NULL OR job_id = ?4)
                 ORDER BY id LIMIT ?5",
                &p![after, f.run_id, f.hostname, f.job_id, limit],
            )?
            .iter()
            .map(|r| {
                Ok(EventRow {
                    id: r.get(0)?,
                    at_ms: r.get(1)?,
                    job_id: r.get(2)?,
                    run_id: r.get(3)?,
                    hostname: r.get(4)?,
                    status: r.get(5)?,
                    exit_code: r.get(6)?,
                })
            })
            .collect()
        })
    }

    /// Deletes events older than `before_ms`, at most `batch`.
    pub fn prune_events(&self, before_ms: i64, batch: u32) -> Result<usize> {
        self.write(|tx| {
            tx.exec(
                "DELETE FROM events WHERE id IN
                 (SELECT id FROM events WHERE at_ms < ?1 ORDER BY at_ms LIMIT ?2)",
                &p![before_ms, batch],
            )
        })
    }

    /// Hostnames of agents whose key carries every tag in `tags`, in
    /// order: the tags an operator bound, never those an agent declared.
    pub fn hosts_with_tags(&self, tags: &[String]) -> Result<Vec<String>> {
        let rows = self.read(|c| {
            c.query(
                "SELECT a.hostname, k.tags FROM agents a
                 JOIN api_keys k ON k.hostname = a.hostname AND k.revoked_ms IS NULL
                 WHERE k.tags IS NOT NULL ORDER BY a.hostname",
                &[],
            )
        })?;
        let mut hosts = Vec::new();
        for r in rows {
            let have = json_list(&r.get::<String>(1)?);
            if tags.iter().all(|t| have.contains(t)) {
                hosts.push(r.get(0)?);
            }
        }
        Ok(hosts)
    }

    /// The one place a job is handed to a host: while fewer than `window`
    /// of the host's jobs are sent and unreported, its oldest queued
    /// (unexpired) jobs become sent, in submission order, and are returned
    /// to be written to the connection. `window` `None` (a spec-only agent):
    /// every queued job, [`TAKE_BATCH`] at a time.
    pub fn take_for_host(
        &self,
        hostname: &str,
        window: Option<u32>,
        now_ms: i64,
    ) -> Result<Vec<JobRow>> {
        self.write(|tx| Self::take_in(tx, None, hostname, window, now_ms))
    }

    /// [`Store::take_for_host`] inside the caller's transaction; with
    /// `by`, only for the listener and connection that hold the agent.
    fn take_in(
        tx: &mut dyn Sql,
        by: Option<(&str, u64)>,
        hostname: &str,
        window: Option<u32>,
        now_ms: i64,
    ) -> Result<Vec<JobRow>> {
        // Whether this connection holds the agent, and how many jobs it
        // has in flight, in one round trip.
        let in_flight: i64 = match by {
            Some((me, conn)) => {
                let row = tx
                    .one(
                        "SELECT EXISTS (SELECT 1 FROM agents
                                        WHERE hostname = ?1 AND listener = ?2 AND lease_conn = ?3),
                                (SELECT count(*) FROM jobs WHERE hostname = ?1 AND status = ?4)",
                        &p![hostname, me, conn, JobStatus::Sent],
                    )?
                    .context("no row")?;
                if !row.get::<bool>(0)? {
                    return Err(StoreError::Moved(hostname.to_owned()).into());
                }
                row.get(1)?
            }
            None if window.is_some() => scalar(
                tx,
                "SELECT count(*) FROM jobs WHERE hostname = ?1 AND status = ?2",
                &p![hostname, JobStatus::Sent],
            )?,
            None => 0,
        };
        let room = window.map_or(TAKE_BATCH, |w| {
            (i64::from(w) - in_flight).clamp(0, TAKE_BATCH)
        });
        if room == 0 {
            return Ok(Vec::new());
        }
        let rows = tx
            .query(
                &format!(
                    "{JOB_SELECT} WHERE j.hostname = ?1 AND j.status = ?4 AND j.expires_ms > ?2
                     ORDER BY j.rowid LIMIT ?3"
                ),
                &p![hostname, now_ms, room, JobStatus::Queued],
            )?
            .iter()
            .map(job_row)
            .collect::<Result<Vec<_>>>()?;
        let mut taken = Vec::with_capacity(rows.len());
        for job in rows {
            // Only what this transaction moved is handed over.
            let moved = tx.exec(
                "UPDATE jobs SET status = ?3, sent_ms = ?2 WHERE job_id = ?1 AND status = ?4",
                &p![job.job_id, now_ms, JobStatus::Sent, JobStatus::Queued],
            )?;
            if moved == 1 {
                taken.push(job);
            }
        }
        Ok(taken)
    }

    /// Hosts with queued, unexpired jobs.
    pub fn hosts_with_queued(&self, now_ms: i64) -> Result<Vec<String>> {
        self.read(|c| {
            c.query(
                "SELECT DISTINCT hostname FROM jobs WHERE status = ?2 AND expires_ms > ?1",
                &p![now_ms, JobStatus::Queued],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect()
        })
    }

    /// [`StoreError::Moved`] unless listener `me`'s connection `conn` holds
    /// `hostname`.
    fn check_held(tx: &mut dyn Sql, me: &str, conn: u64, hostname: &str) -> Result<()> {
        let held = tx
            .one(
                "SELECT EXISTS (SELECT 1 FROM agents
                                WHERE hostname = ?1 AND listener = ?2 AND lease_conn = ?3)",
                &p![hostname, me, conn],
            )?
            .context("no row")?
            .get::<bool>(0)?;
        if held {
            Ok(())
        } else {
            Err(StoreError::Moved(hostname.to_owned()).into())
        }
    }

    /// Puts a job marked sent back in the queue (it could not be handed to
    /// the connection).
    pub fn requeue(&self, job_id: &str) -> Result<()> {
        self.write(|tx| {
            tx.exec(
                "UPDATE jobs SET status = ?2, sent_ms = NULL WHERE job_id = ?1 AND status = ?3",
                &p![job_id, JobStatus::Queued, JobStatus::Sent],
            )
        })?;
        Ok(())
    }

    /// Jobs already sent to a host that have no report yet, oldest first,
    /// their send time reset to now: they are sent again on reconnect (the
    /// agent runs a job id at most once) — whichever listener the agent
    /// reconnects to, but only by the connection `conn` of the listener
    /// that holds the agent, like every hand-over ([`StoreError::Moved`]
    /// otherwise).
    pub fn resend_unreported(&self, hostname: &str, conn: u64, now_ms: i64) -> Result<Vec<JobRow>> {
        let by = self.holder.as_deref().map(|me| (me, conn));
        self.write(|tx| {
            if let Some((me, conn)) = by {
                Self::check_held(tx, me, conn, hostname)?;
            }
            let rows = tx
                .query(
                    &format!(
                        "{JOB_SELECT} WHERE j.hostname = ?1 AND j.status = ?2 AND j.report_id IS NULL
                         ORDER BY j.rowid"
                    ),
                    &p![hostname, JobStatus::Sent],
                )?
                .iter()
                .map(job_row)
                .collect::<Result<Vec<_>>>()?;
            tx.exec(
                "UPDATE jobs SET sent_ms = ?2
                 WHERE hostname = ?1 AND status = ?3 AND report_id IS NULL",
                &p![hostname, now_ms, JobStatus::Sent],
            )?;
            Ok(rows)
        })
    }

    pub fn get_job(&self, job_id: &str) -> Result<Option<JobRow>> {
        self.read(|c| {
            c.one(&format!("{JOB_SELECT} WHERE j.job_id = ?1"), &p![job_id])?
                .as_ref()
                .map(job_row)
                .transpose()
        })
    }

    /// How many jobs are in `status` now (for the metrics).
    pub fn count_jobs(&self, status: JobStatus) -> Result<i64> {
        self.read(|c| {
            scalar(
                c,
                "SELECT COUNT(*) FROM jobs WHERE status = ?1",
                &p![status],
            )
        })
    }

    /// Marks sent jobs whose report is overdue (`timeout + grace`) lost,
    /// and queued jobs past their expiry expired. Returns (lost, expired).
    pub fn sweep(&self, now_ms: i64, grace_ms: i64) -> Result<(usize, usize)> {
        self.write(|tx| {
            let lost = tx.exec(
                "UPDATE jobs SET status = ?3, finished_ms = ?1
                 WHERE status = ?4 AND sent_ms + timeout_secs * 1000 + ?2 < ?1",
                &p![now_ms, grace_ms, JobStatus::Lost, JobStatus::Sent],
            )?;
            let expired = tx.exec(
                "UPDATE jobs SET status = ?2, finished_ms = ?1
                 WHERE status = ?3 AND expires_ms <= ?1",
                &p![now_ms, JobStatus::Expired, JobStatus::Queued],
            )?;
            // Lost and expired jobs free places in their runs' batches.
            let runs: Vec<String> = tx
                .query(
                    "SELECT DISTINCT run_id FROM jobs WHERE status = ?1",
                    &p![JobStatus::Held],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect::<Result<_>>()?;
            for run in runs {
                Self::release_held(tx, &run, now_ms)?;
            }
            Ok((lost, expired))
        })
    }

    // ---- cron ----

    /// Stores a host's cron list and, for a system-mode host, its signed
    /// statement (JSON), relayed untouched.
    pub fn set_cron(
        &self,
        hostname: &str,
        entries: &[CronEntry],
        signed: Option<&str>,
        now_ms: i64,
    ) -> Result<()> {
        let text = serde_json::to_string(entries)?;
        self.write(|tx| {
            tx.exec(
                "INSERT INTO cron_sets (hostname, entries, updated_ms, signed) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (hostname) DO UPDATE SET entries = ?2, updated_ms = ?3, signed = ?4",
                &p![hostname, text, now_ms, signed],
            )
        })?;
        Ok(())
    }

    /// The stored cron list and its signature, or `None` when none was set.
    pub fn get_cron(&self, hostname: &str) -> Result<Option<(Vec<CronEntry>, Option<String>)>> {
        let row = self.read(|c| {
            c.one(
                "SELECT entries, signed FROM cron_sets WHERE hostname = ?1",
                &p![hostname],
            )
        })?;
        row.map(|r| {
            let text: String = r.get(0)?;
            let signed: Option<String> = r.get(1)?;
            serde_json::from_str(&text)
                .map(|e| (e, signed))
                .context("stored cron list is corrupt")
        })
        .transpose()
    }

    /// The execution mode a host registered with last.
    pub fn agent_mode(&self, hostname: &str) -> Result<Option<String>> {
        self.read(|c| {
            c.one(
                "SELECT execution_mode FROM agents WHERE hostname = ?1",
                &p![hostname],
            )?
            .map(|r| r.get(0))
            .transpose()
        })
    }

    fn is_cron_entry(tx: &mut dyn Sql, hostname: &str, job_id: &str) -> Result<bool> {
        let text: Option<String> = tx
            .one(
                "SELECT entries FROM cron_sets WHERE hostname = ?1",
                &p![hostname],
            )?
            .map(|r| r.get(0))
            .transpose()?;
        let entries: Vec<CronEntry> = match text {
            Some(t) => serde_json::from_str(&t).unwrap_or_default(),
            None => Vec::new(),
        };
        Ok(entries.iter().any(|e| e.id == job_id))
    }

    // ---- reports ----

    /// Stores a report once per (hostname, dedupe key) and, for an ad-hoc
    /// job of this host, marks the job done, in one transaction — unless
    /// it would take the host over `limits`: then nothing is written.
    pub fn store_report(
        &self,
        hostname: &str,
        job_id: &str,
        dedupe_key: &str,
        payload: &str,
        now_ms: i64,
        limits: ReportLimits,
    ) -> Result<Stored> {
        // Nothing is written for a duplicate or a refusal: committing the
        // empty transaction is harmless and simpler.
        self.write(|tx| {
            Self::store_in(tx, hostname, job_id, dedupe_key, payload, now_ms, limits)
                .map(|out| out.0)
        })
    }

    /// [`Store::store_report`] inside the caller's transaction, also
    /// returning the hosts whose held jobs the report let into their run's
    /// batch (to be nudged).
    fn store_in(
        tx: &mut dyn Sql,
        hostname: &str,
        job_id: &str,
        dedupe_key: &str,
        payload: &str,
        now_ms: i64,
        limits: ReportLimits,
    ) -> Result<(Stored, Vec<String>, Option<NewReport>)> {
        // What decides where the report goes, in one round trip.
        let row = tx
            .one(
                "SELECT EXISTS (SELECT 1 FROM reports WHERE hostname = ?1 AND dedupe_key = ?2),
                        EXISTS (SELECT 1 FROM jobs WHERE job_id = ?3 AND hostname = ?1),
                        (SELECT bytes FROM report_usage WHERE hostname = ?1),
                        (SELECT unmatched FROM report_usage WHERE hostname = ?1)",
                &p![hostname, dedupe_key, job_id],
            )?
            .context("no row")?;
        if row.get::<bool>(0)? {
            return Ok((Stored::Duplicate, Vec::new(), None));
        }
        let is_job: bool = row.get(1)?;
        let kind = if is_job {
            "job"
        } else if Self::is_cron_entry(tx, hostname, job_id)? {
            "cron"
        } else {
            "unmatched"
        };
        let used = Usage::from_row(&row, 2)?;
        let size = payload.len() as u64;
        let unmatched = u64::from(kind == "unmatched");
        if unmatched == 1 && used.unmatched >= limits.unmatched {
            return Ok((
                Stored::Refused(Refusal::Unmatched {
                    quota: limits.unmatched,
                }),
                Vec::new(),
                None,
            ));
        }
        if used.bytes.saturating_add(size) > limits.quota_bytes {
            return Ok((
                Stored::Refused(Refusal::Quota {
                    used: used.bytes,
                    size,
                    quota: limits.quota_bytes,
                }),
                Vec::new(),
                None,
            ));
        }
        let report_row: i64 = scalar(
            tx,
            "INSERT INTO reports (hostname, job_id, dedupe_key, kind, received_ms, payload, size)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id",
            &p![hostname, job_id, dedupe_key, kind, now_ms, payload, size],
        )?;
        let mut released = Vec::new();
        let mut settled = false;
        tx.exec(
            "INSERT INTO report_usage (hostname, bytes, unmatched) VALUES (?1, ?2, ?3)
             ON CONFLICT (hostname) DO UPDATE
             SET bytes = report_usage.bytes + excluded.bytes,
                 unmatched = report_usage.unmatched + excluded.unmatched",
            &p![hostname, size, unmatched],
        )?;
        if is_job {
            // The first report of a job settles it, whatever state it was in.
            let settling = tx.one(
                "UPDATE jobs SET status = ?4, finished_ms = ?3, report_id = ?2
                 WHERE job_id = ?1 AND report_id IS NULL
                 RETURNING run_id",
                &p![job_id, report_row, now_ms, JobStatus::Done],
            )?;
            settled = settling.is_some();
            // A place in its run's batch may be free now.
            let run: Option<String> = match settling {
                Some(r) => r.get(0)?,
                None => scalar(tx, "SELECT run_id FROM jobs WHERE job_id = ?1", &p![job_id])?,
            };
            if let Some(run) = run {
                released = Self::release_held(tx, &run, now_ms)?;
            }
        }
        Ok((Stored::New, released, Some((kind, settled))))
    }

    fn usage_in(c: &mut dyn Sql, hostname: &str) -> Result<Usage> {
        let row = c.one(
            "SELECT bytes, unmatched FROM report_usage WHERE hostname = ?1",
            &p![hostname],
        )?;
        row.map_or(Ok(Usage::default()), |r| Usage::from_row(&r, 0))
    }

    /// What `hostname`'s stored reports take.
    pub fn usage(&self, hostname: &str) -> Result<Usage> {
        self.read(|c| Self::usage_in(c, hostname))
    }

    /// Several writes in one transaction — one commit, one fsync — for
    /// writes that arrive together (group commit). Each runs in its own
    /// savepoint: one that fails is undone alone and gets its error; the
    /// others commit. If the commit itself fails, every write gets that
    /// error and none happened. A group of one needs no savepoint (two
    /// round trips to PostgreSQL fewer): if it fails, the transaction is
    /// rolled back.
    pub fn write_batch(&self, ops: &[WriteOp], now_ms: i64) -> Result<Vec<Result<WriteOut>>> {
        let flush = if ops.iter().all(WriteOp::may_be_lost) {
            Flush::Later
        } else {
            Flush::Wait
        };
        if let [op] = ops {
            let mut failed = None;
            let out = self.write_with(flush, |tx| {
                self.apply(tx, op, now_ms).map_err(|e| {
                    failed = Some(e);
                    anyhow::anyhow!("undone")
                })
            });
            return match (out, failed) {
                (Ok(o), _) => Ok(vec![Ok(o)]),
                (Err(_), Some(e)) => Ok(vec![Err(e)]),
                (Err(e), None) => Err(e),
            };
        }
        self.write_with(flush, |tx| {
            let mut outs = Vec::with_capacity(ops.len());
            for op in ops {
                tx.batch("SAVEPOINT write_op")?;
                match self.apply(tx, op, now_ms) {
                    Ok(o) => {
                        tx.batch("RELEASE write_op")?;
                        outs.push(Ok(o));
                    }
                    Err(e) => {
                        // Undoes this write only.
                        tx.batch("ROLLBACK TO write_op; RELEASE write_op")?;
                        outs.push(Err(e));
                    }
                }
            }
            Ok(outs)
        })
    }

    /// One grouped write, in the caller's transaction.
    fn apply(&self, tx: &mut dyn Sql, op: &WriteOp, now_ms: i64) -> Result<WriteOut> {
        match op {
            WriteOp::Report {
                hostname,
                job_id,
                dedupe_key,
                payload,
                limits,
            } => Self::store_in(tx, hostname, job_id, dedupe_key, payload, now_ms, *limits).map(
                |(stored, released, new)| WriteOut::Report {
                    stored,
                    released,
                    new,
                },
            ),
            WriteOp::Take {
                hostname,
                window,
                conn,
            } => {
                let by = self.holder.as_deref().map(|me| (me, *conn));
                Self::take_in(tx, by, hostname, *window, now_ms).map(WriteOut::Taken)
            }
            WriteOp::Bind {
                key_id,
                hostname,
                tags,
            } => Self::bind_in(tx, *key_id, hostname, tags).map(WriteOut::Bound),
            WriteOp::Register { info, conn } => {
                let by = self.holder.as_deref().map(|me| (me, *conn));
                Self::upsert_in(tx, by, info, now_ms).map(|()| WriteOut::Registered)
            }
            WriteOp::Touch {
                hostname,
                last_seen_ms,
                conn,
            } => Self::touch_in(tx, self.holder.as_deref(), hostname, *last_seen_ms, *conn)
                .map(|()| WriteOut::Touched),
        }
    }

    /// Deletes reports received before `before_ms`, at most `batch` of
    /// them, and gives their bytes back to their hosts' quota. A job whose
    /// report is gone stays `done`, without the report. Returns how many.
    pub fn prune_reports(&self, before_ms: i64, batch: u32) -> Result<usize> {
        self.write(|tx| {
            let gone = tx.query(
                "DELETE FROM reports WHERE id IN
                 (SELECT id FROM reports WHERE received_ms < ?1 ORDER BY received_ms LIMIT ?2)
                 RETURNING hostname, size, CASE WHEN kind = 'unmatched' THEN 1 ELSE 0 END",
                &p![before_ms, batch],
            )?;
            let mut per_host: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
            for r in &gone {
                let e = per_host.entry(r.get(0)?).or_default();
                e.0 += r.get::<i64>(1)?;
                e.1 += r.get::<i64>(2)?;
            }
            for (host, (bytes, unmatched)) in per_host {
                tx.exec(
                    "UPDATE report_usage SET
                        bytes = CASE WHEN bytes > ?2 THEN bytes - ?2 ELSE 0 END,
                        unmatched = CASE WHEN unmatched > ?3 THEN unmatched - ?3 ELSE 0 END
                     WHERE hostname = ?1",
                    &p![host, bytes, unmatched],
                )?;
            }
            Ok(gone.len())
        })
    }

    /// Deletes jobs that ended (done, lost, expired) before `before_ms`,
    /// at most `batch` of them, then runs created before it that have no
    /// job left. Returns how many jobs.
    pub fn prune_jobs(&self, before_ms: i64, batch: u32) -> Result<usize> {
        self.write(|tx| {
            let n = tx.exec(
                "DELETE FROM jobs WHERE job_id IN
                 (SELECT job_id FROM jobs WHERE status IN (?3, ?4, ?5) AND finished_ms < ?1
                  ORDER BY finished_ms LIMIT ?2)",
                &p![
                    before_ms,
                    batch,
                    JobStatus::Done,
                    JobStatus::Lost,
                    JobStatus::Expired
                ],
            )?;
            tx.exec(
                "DELETE FROM runs WHERE created_ms < ?1
                 AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.run_id = runs.run_id)",
                &p![before_ms],
            )?;
            Ok(n)
        })
    }

    /// The SQLite connection that writes, for fixtures; `None` on
    /// PostgreSQL.
    fn sqlite_writer(&self) -> Option<MutexGuard<'_, Connection>> {
        match &self.backend {
            Backend::Sqlite { writer, .. } => Some(lock(writer)),
            Backend::Postgres { .. } => None,
        }
    }

    /// Fixture for tests and benchmarks (SQLite): `n` unmatched reports
    /// for `host`, each with `stdout` as its output, in one transaction.
    /// Bypasses every check and quota.
    #[doc(hidden)]
    pub fn insert_reports_for_test(&self, host: &str, n: u32, stdout: &str) -> Result<()> {
        let mut conn = self.sqlite_writer().context("a SQLite fixture")?;
        let tx = write_tx(&mut conn)?;
        tx.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?2)
             INSERT INTO reports (hostname, job_id, dedupe_key, kind, received_ms, payload)
             SELECT ?1, 'fixture-' || i, 'id:fixture-' || i, 'unmatched',
                    CAST(strftime('%s', 'now') AS INTEGER) * 1000 + i,
                    json_object('jobId', 'fixture-' || i, 'command', '/bin/echo',
                                'exitCode', 0, 'stdout', ?3, 'stderr', '',
                                'startTime', '2024-03-20T10:00:00Z', 'durationMs', 1,
                                'executingUid', 1001, 'executingUser', 'cc-agent-user')
             FROM n",
            rusqlite::params![host, n, stdout],
        )?;
        tx.execute(
            "UPDATE reports SET size = length(CAST(payload AS BLOB)) WHERE size = 0",
            [],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// A fleet's history for benches and tests (SQLite): `agents` agents
    /// (`fleet-N.test`, every 100th root in user mode), and `runs` runs of
    /// `jobs_per_run` jobs each, every job done with its report (a run's
    /// jobs on consecutive agents; every 10th job exits 1).
    pub fn insert_fleet_for_test(&self, agents: u32, runs: u32, jobs_per_run: u32) -> Result<()> {
        let mut conn = self.sqlite_writer().context("a SQLite fixture")?;
        let tx = write_tx(&mut conn)?;
        tx.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?1)
             INSERT INTO agents (hostname, os, arch, tags, execution_mode, is_root,
                                 first_seen_ms, last_seen_ms)
             SELECT 'fleet-' || i || '.test', 'linux', 'amd64',
                    json_array('fleet', 'rack-' || (i % 40)), 'user', i % 100 = 0,
                    1700000000000, 1700000000000 + i
             FROM n",
            rusqlite::params![agents],
        )?;
        tx.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?1)
             INSERT INTO runs (run_id, command, args, timeout_secs, batch, selector, queue_ttl_ms,
                               created_ms)
             SELECT 'run-' || i, '/bin/echo', '[\"fixture\"]', 60, NULL, '{}', 3600000,
                    1700000000000 + i * 1000
             FROM n",
            rusqlite::params![runs],
        )?;
        tx.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?1 * ?2)
             INSERT INTO reports (hostname, job_id, dedupe_key, kind, received_ms, payload, size)
             SELECT 'fleet-' || (i % max(?3, 1)) || '.test', 'job-' || i, 'id:job-' || i, 'job',
                    1700000000000 + i,
                    json_object('jobId', 'job-' || i, 'command', '/bin/echo fixture',
                                'exitCode', CASE WHEN i % 10 = 0 THEN 1 ELSE 0 END,
                                'stdout', 'fixture\n', 'stderr', '',
                                'startTime', '2026-11-30T10:00:00Z', 'durationMs', 3,
                                'executingUid', 999, 'executingUser', 'cc-agent-user'),
                    200
             FROM n",
            rusqlite::params![runs, jobs_per_run, agents],
        )?;
        tx.execute(
            "INSERT INTO jobs (job_id, hostname, command, args, timeout_secs, status, created_ms,
                               expires_ms, finished_ms, report_id, run_id)
             SELECT r.job_id, r.hostname, '/bin/echo', '[\"fixture\"]', 60, ?2, r.received_ms,
                    r.received_ms + 3600000, r.received_ms, r.id,
                    'run-' || (CAST(substr(r.job_id, 5) AS INTEGER) / ?1)
             FROM reports r WHERE r.kind = 'job' AND r.job_id LIKE 'job-%'",
            rusqlite::params![jobs_per_run.max(1), JobStatus::Done.as_str()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The ids and sizes of the reports `q` selects, newest first: up to
    /// `q.limit + 1` of them, so the caller knows whether more follow.
    /// Reads no report text.
    pub fn report_page(&self, q: &ReportQuery) -> Result<Vec<(i64, u64)>> {
        self.read(|c| {
            c.query(
                "SELECT id, size FROM reports
                 WHERE (CAST(?1 AS TEXT) IS NULL OR hostname = ?1)
                   AND (CAST(?2 AS TEXT) IS NULL OR job_id = ?2)
                   AND (CAST(?3 AS BIGINT) IS NULL OR id < ?3)
                 ORDER BY id DESC LIMIT ?4",
                &p![q.hostname, q.job_id, q.before, i64::from(q.limit) + 1],
            )?
            .iter()
            .map(|r| Ok((r.get(0)?, u64::try_from(r.get::<i64>(1)?).unwrap_or(0))))
            .collect()
        })
    }

    /// The reports `q` selects with ids from `high` down to `low`, newest
    /// first.
    pub fn reports_between(&self, q: &ReportQuery, high: i64, low: i64) -> Result<Vec<ReportRow>> {
        self.read(|c| {
            c.query(
                "SELECT hostname, job_id, kind, received_ms, payload FROM reports
                 WHERE (CAST(?1 AS TEXT) IS NULL OR hostname = ?1)
                   AND (CAST(?2 AS TEXT) IS NULL OR job_id = ?2)
                   AND id <= ?3 AND id >= ?4
                 ORDER BY id DESC",
                &p![q.hostname, q.job_id, high, low],
            )?
            .iter()
            .map(|r| {
                Ok(ReportRow {
                    hostname: r.get(0)?,
                    job_id: r.get(1)?,
                    kind: r.get(2)?,
                    received_ms: r.get(3)?,
                    payload: r.get(4)?,
                })
            })
            .collect()
        })
    }

    /// The newest `limit` runs, newest first, with their jobs counted per
    /// state and how many of their done jobs failed (the console's list).
    pub fn recent_runs(&self, limit: u32) -> Result<Vec<RunSummary>> {
        self.read(|c| {
            let mut runs = c
                .query(
                    "SELECT run_id, command, args, created_ms FROM runs ORDER BY rowid DESC LIMIT ?1",
                    &p![limit],
                )?
                .iter()
                .map(|r| {
                    Ok(RunSummary {
                        run_id: r.get(0)?,
                        command: r.get(1)?,
                        args: json_list(&r.get::<String>(2)?),
                        created_ms: r.get(3)?,
                        counts: Vec::new(),
                        failed: 0,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            for run in &mut runs {
                let rows = c.query(
                    "SELECT j.status, count(*),
                            sum(CASE WHEN json_extract(r.payload, '$.exitCode') <> 0 THEN 1 ELSE 0 END)
                     FROM jobs j LEFT JOIN reports r ON r.id = j.report_id
                     WHERE j.run_id = ?1 GROUP BY j.status",
                    &p![run.run_id],
                )?;
                for r in rows {
                    let (st, n, failed): (JobStatus, i64, Option<i64>) =
                        (r.get(0)?, r.get(1)?, r.get(2)?);
                    run.counts.push((st, usize::try_from(n).unwrap_or(0)));
                    run.failed += usize::try_from(failed.unwrap_or(0)).unwrap_or(0);
                }
                run.counts.sort();
            }
            Ok(runs)
        })
    }

    /// The newest `limit` jobs, newest first: of one host, or (`single`)
    /// only those posted alone, not as part of a run.
    pub fn recent_jobs(
        &self,
        hostname: Option<&str>,
        single: bool,
        limit: u32,
    ) -> Result<Vec<JobSummary>> {
        self.read(|c| {
            c.query(
                "SELECT j.job_id, j.hostname, j.command, j.args, j.status, j.created_ms, j.run_id,
                        json_extract(r.payload, '$.exitCode'), json_extract(r.payload, '$.durationMs')
                 FROM jobs j LEFT JOIN reports r ON r.id = j.report_id
                 WHERE (CAST(?1 AS TEXT) IS NULL OR j.hostname = ?1)
                   AND (NOT ?2 OR j.run_id IS NULL)
                 ORDER BY j.rowid DESC LIMIT ?3",
                &p![hostname, single, limit],
            )?
            .iter()
            .map(|r| {
                Ok(JobSummary {
                    job_id: r.get(0)?,
                    hostname: r.get(1)?,
                    command: r.get(2)?,
                    args: json_list(&r.get::<String>(3)?),
                    status: r.get(4)?,
                    created_ms: r.get(5)?,
                    run_id: r.get(6)?,
                    exit_code: r.get(7)?,
                    duration_ms: r.get(8)?,
                })
            })
            .collect()
        })
    }

    /// The newest event's id (0 when there is none): where a page that
    /// shows the present starts following the stream.
    pub fn last_event_id(&self) -> Result<i64> {
        self.read(|c| scalar(c, "SELECT coalesce(max(id), 0) FROM events", &[]))
    }

    /// The newest report of `job_id` (a cron entry's id: its last run) on
    /// `hostname`: when it came and its exit code.
    pub fn last_report(&self, hostname: &str, job_id: &str) -> Result<Option<(i64, i64)>> {
        self.read(|c| {
            c.one(
                "SELECT received_ms, json_extract(payload, '$.exitCode') FROM reports
                 WHERE hostname = ?1 AND job_id = ?2 ORDER BY id DESC LIMIT 1",
                &p![hostname, job_id],
            )?
            .map(|r| Ok((r.get(0)?, r.get(1)?)))
            .transpose()
        })
    }

    pub fn count_reports(&self) -> Result<i64> {
        self.read(|c| scalar(c, "SELECT count(*) FROM reports", &[]))
    }
}

/// What `cc-listener migrate` copies, in this order: each table, the
/// column it pages by (unique, ordered; for jobs and runs the order of
/// submission), whether that column is an integer, and the columns copied.
/// Which listener holds an agent is not copied: no listener holds one yet.
const COPY_TABLES: &[(&str, &str, bool, &str)] = &[
    (
        "api_keys",
        "id",
        true,
        "id, name, key_hash, hostname, created_ms, revoked_ms, tags",
    ),
    (
        "agents",
        "hostname",
        false,
        "hostname, os, arch, tags, execution_mode, is_root, first_seen_ms, last_seen_ms, cron_status",
    ),
    (
        "cron_sets",
        "hostname",
        false,
        "hostname, entries, updated_ms, signed",
    ),
    (
        "reports",
        "id",
        true,
        "id, hostname, job_id, dedupe_key, kind, received_ms, payload, size",
    ),
    (
        "report_usage",
        "hostname",
        false,
        "hostname, bytes, unmatched",
    ),
    (
        "runs",
        "rowid",
        true,
        "run_id, command, args, timeout_secs, batch, selector, queue_ttl_ms, created_ms",
    ),
    (
        "jobs",
        "rowid",
        true,
        "job_id, hostname, command, args, timeout_secs, status, created_ms, expires_ms, sent_ms,
         finished_ms, report_id, signed, run_id",
    ),
    (
        "events",
        "id",
        true,
        "id, at_ms, job_id, run_id, hostname, status, exit_code",
    ),
];

/// Rows `cc-listener migrate` reads and writes at a time.
const COPY_PAGE: i64 = 1000;

impl Store {
    /// Copies everything in this store into `dst`, a PostgreSQL database
    /// that holds nothing yet, in one transaction: if anything fails,
    /// `dst` is left as it was. Ids (keys, reports, events) are kept, so
    /// jobs still point at their reports and an event stream's
    /// `Last-Event-ID` stays valid; the sequences continue after them.
    /// Returns each table's name and rows copied. The listeners of both
    /// must be stopped.
    pub fn copy_into(&self, dst: &Store) -> Result<Vec<(&'static str, usize)>> {
        anyhow::ensure!(
            dst.dialect() == Dialect::Postgres,
            "the destination must be a PostgreSQL database (postgres://…)"
        );
        dst.write(|tx| {
            let mut held = Vec::new();
            for (table, ..) in COPY_TABLES {
                let n: i64 = scalar(tx, &format!("SELECT count(*) FROM {table}"), &[])?;
                if n > 0 {
                    held.push(format!("{n} rows in {table}"));
                }
            }
            anyhow::ensure!(
                held.is_empty(),
                "the destination already holds data ({}): migrate only into an empty database",
                held.join(", ")
            );
            // Copied events are the history; copying jobs must not add more.
            tx.batch(
                "ALTER TABLE jobs DISABLE TRIGGER job_created;
                 ALTER TABLE jobs DISABLE TRIGGER job_changed;",
            )?;
            let mut copied = Vec::new();
            for &(table, key, numeric, cols) in COPY_TABLES {
                let width = cols.split(',').count();
                let marks: Vec<String> = (1..=width).map(|i| format!("?{i}")).collect();
                let insert = format!("INSERT INTO {table} ({cols}) VALUES ({})", marks.join(", "));
                let select = format!(
                    "SELECT {key}, {cols} FROM {table} WHERE {key} > ?1 ORDER BY {key} LIMIT ?2"
                );
                let mut after = if numeric {
                    crate::sql::V::Int(i64::MIN)
                } else {
                    crate::sql::V::Text(String::new())
                };
                let mut n = 0;
                loop {
                    let page =
                        self.read(|c| c.query(&select, &[after.as_p(), P::Int(COPY_PAGE)]))?;
                    for row in &page {
                        let values: Vec<P<'_>> =
                            row.0.iter().skip(1).map(crate::sql::V::as_p).collect();
                        tx.exec(&insert, &values)
                            .with_context(|| format!("copying a row of {table}"))?;
                    }
                    n += page.len();
                    match page.last() {
                        Some(last) if page.len() as i64 == COPY_PAGE => {
                            after = last.0.first().cloned().context("no key column")?;
                        }
                        _ => break,
                    }
                }
                copied.push((table, n));
            }
            tx.batch(
                "ALTER TABLE jobs ENABLE TRIGGER job_created;
                 ALTER TABLE jobs ENABLE TRIGGER job_changed;",
            )?;
            for (table, col) in [
                ("api_keys", "id"),
                ("reports", "id"),
                ("events", "id"),
                ("jobs", "rowid"),
                ("runs", "rowid"),
            ] {
                scalar::<i64>(
                    tx,
                    &format!(
                        "SELECT setval(pg_get_serial_sequence('{table}', '{col}'),
                                       coalesce((SELECT max({col}) FROM {table}), 0) + 1, false)"
                    ),
                    &[],
                )?;
            }
            Ok(copied)
        })
    }
}

const JOB_SELECT: &str = "SELECT j.job_id, j.hostname, j.command, j.args, j.timeout_secs, j.status,
    j.created_ms, j.expires_ms, j.sent_ms, j.finished_ms, r.payload, j.signed
    FROM jobs j LEFT JOIN reports r ON r.id = j.report_id";

fn job_row(r: &Row) -> Result<JobRow> {
    Ok(JobRow {
        job_id: r.get(0)?,
        hostname: r.get(1)?,
        command: r.get(2)?,
        args: json_list(&r.get::<String>(3)?),
        timeout_secs: r.get(4)?,
        status: r.get(5)?,
        created_ms: r.get(6)?,
        expires_ms: r.get(7)?,
        sent_ms: r.get(8)?,
        finished_ms: r.get(9)?,
        report: r.get(10)?,
        signed: r.get(11)?,
    })
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

fn migrate(conn: &Connection) -> Result<()> {
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

/// The PostgreSQL schema, in order; `cc_schema.version` records how many
/// ran. Append only. The first is the SQLite schema as its migrations
/// left it, in PostgreSQL's types: `BIGINT` for every integer, `BOOLEAN`
/// for `is_root`, `BIGSERIAL` where SQLite has a `rowid` (named `rowid`,
/// so the queries that order by submission read the same in both).
const PG_MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE api_keys (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    key_hash    TEXT NOT NULL UNIQUE,
    hostname    TEXT UNIQUE,
    created_ms  BIGINT NOT NULL,
    revoked_ms  BIGINT
);
CREATE TABLE agents (
    hostname        TEXT PRIMARY KEY,
    os              TEXT NOT NULL,
    arch            TEXT NOT NULL,
    tags            TEXT NOT NULL,
    execution_mode  TEXT NOT NULL,
    is_root         BOOLEAN NOT NULL,
    first_seen_ms   BIGINT NOT NULL,
    last_seen_ms    BIGINT NOT NULL,
    cron_status     TEXT,
    listener        TEXT,
    lease_conn      BIGINT
);
CREATE INDEX agents_by_listener ON agents (listener);
CREATE TABLE listeners (
    name      TEXT PRIMARY KEY,
    lease_ms  BIGINT NOT NULL
);
CREATE TABLE jobs (
    rowid         BIGSERIAL UNIQUE,
    job_id        TEXT PRIMARY KEY,
    hostname      TEXT NOT NULL,
    command       TEXT NOT NULL,
    args          TEXT NOT NULL,
    timeout_secs  BIGINT NOT NULL,
    status        TEXT NOT NULL,
    created_ms    BIGINT NOT NULL,
    expires_ms    BIGINT NOT NULL,
    sent_ms       BIGINT,
    finished_ms   BIGINT,
    report_id     BIGINT,
    signed        TEXT,
    run_id        TEXT
);
CREATE INDEX jobs_by_host_status ON jobs (hostname, status);
CREATE INDEX jobs_by_status ON jobs (status);
CREATE INDEX jobs_by_run ON jobs (run_id, status);
CREATE TABLE cron_sets (
    hostname    TEXT PRIMARY KEY,
    entries     TEXT NOT NULL,
    updated_ms  BIGINT NOT NULL,
    signed      TEXT
);
CREATE TABLE reports (
    id           BIGSERIAL PRIMARY KEY,
    hostname     TEXT NOT NULL,
    job_id       TEXT NOT NULL,
    dedupe_key   TEXT NOT NULL,
    kind         TEXT NOT NULL,
    received_ms  BIGINT NOT NULL,
    payload      TEXT NOT NULL,
    size         BIGINT NOT NULL DEFAULT 0,
    UNIQUE (hostname, dedupe_key)
);
CREATE INDEX reports_by_job ON reports (job_id, id);
CREATE INDEX reports_by_host ON reports (hostname, id);
CREATE INDEX reports_by_age ON reports (received_ms);
CREATE TABLE report_usage (
    hostname   TEXT PRIMARY KEY,
    bytes      BIGINT NOT NULL,
    unmatched  BIGINT NOT NULL
);
CREATE TABLE runs (
    rowid         BIGSERIAL UNIQUE,
    run_id        TEXT PRIMARY KEY,
    command       TEXT NOT NULL,
    args          TEXT NOT NULL,
    timeout_secs  BIGINT NOT NULL,
    batch         BIGINT,
    selector      TEXT NOT NULL,
    queue_ttl_ms  BIGINT NOT NULL,
    created_ms    BIGINT NOT NULL
);
CREATE TABLE events (
    id         BIGSERIAL PRIMARY KEY,
    at_ms      BIGINT NOT NULL,
    job_id     TEXT NOT NULL,
    run_id     TEXT,
    hostname   TEXT NOT NULL,
    status     TEXT NOT NULL,
    exit_code  BIGINT
);
CREATE INDEX events_by_run ON events (run_id, id);
CREATE INDEX events_by_host ON events (hostname, id);
CREATE INDEX events_by_job ON events (job_id, id);
CREATE INDEX events_by_age ON events (at_ms);
-- SQLite's json_extract, for the integer fields the queries read.
CREATE FUNCTION json_extract(doc TEXT, path TEXT) RETURNS BIGINT
    LANGUAGE sql IMMUTABLE STRICT
    AS $$ SELECT (doc::jsonb #>> string_to_array(substr(path, 3), '.'))::bigint $$;
-- Every change of a job's state becomes an event, in the transaction that
-- makes it (as SQLite's triggers do). Listeners are told after the commit:
-- `cc_events` (one per transaction: equal notifications are folded) wakes
-- event streams; `cc_jobs` with the hostname, when a job is queued, wakes
-- whichever listener holds that host's agent.
CREATE FUNCTION cc_job_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status THEN
        INSERT INTO events (at_ms, job_id, run_id, hostname, status, exit_code)
        VALUES ((extract(epoch FROM clock_timestamp()) * 1000)::bigint,
                NEW.job_id, NEW.run_id, NEW.hostname, NEW.status,
                CASE WHEN TG_OP = 'UPDATE' THEN
                    (SELECT json_extract(payload, '$.exitCode') FROM reports WHERE id = NEW.report_id)
                END);
        PERFORM pg_notify('cc_events', '');
        IF NEW.status = 'queued' THEN
            PERFORM pg_notify('cc_jobs', NEW.hostname);
        END IF;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER job_created AFTER INSERT ON jobs
    FOR EACH ROW EXECUTE FUNCTION cc_job_changed();
CREATE TRIGGER job_changed AFTER UPDATE OF status ON jobs
    FOR EACH ROW EXECUTE FUNCTION cc_job_changed();
"#,
    // As SQLite's migration 8.
    r#"
CREATE INDEX api_keys_revoked ON api_keys (id) WHERE revoked_ms IS NOT NULL;
"#,
    // As SQLite's migration 9.
    r#"
ALTER TABLE api_keys ADD COLUMN tags TEXT;
"#,
];

/// Brings a PostgreSQL database's schema up to date, under an advisory
/// lock so that listeners starting together migrate it once.
fn migrate_postgres(conn: &mut PgConn) -> Result<()> {
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

/// Group commit for the writes connections make at a high rate (reports,
/// handing jobs over): one task takes every write waiting, up to
/// [`MAX_GROUP`], and commits them in one transaction
/// ([`Store::write_batch`]); each caller gets its own result once that
/// transaction is committed — so a report is still acknowledged only after
/// it is on disk, and a burst costs one fsync per group, not per report.
#[derive(Debug, Clone)]
pub struct Writer(
    tokio::sync::mpsc::Sender<(WriteOp, tokio::sync::oneshot::Sender<Result<WriteOut>>)>,
);

/// Most writes one transaction takes.
pub const MAX_GROUP: usize = 512;

impl Writer {
    /// `on_commit` is told each group's commit time and size.
    pub fn spawn(db: Db, on_commit: impl Fn(std::time::Duration, usize) + Send + 'static) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(
            WriteOp,
            tokio::sync::oneshot::Sender<Result<WriteOut>>,
        )>(4 * MAX_GROUP);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(w) => group.push(w),
                        Err(_) => break,
                    }
                }
                let (ops, replies): (Vec<WriteOp>, Vec<_>) = group.into_iter().unzip();
                let (n, started) = (ops.len(), std::time::Instant::now());
                let committed = db.call(move |s| s.write_batch(&ops, crate::now_ms())).await;
                on_commit(started.elapsed(), n);
                match committed {
                    Ok(outs) => {
                        for (reply, out) in replies.into_iter().zip(outs) {
                            let _ = reply.send(out);
                        }
                    }
                    Err(e) => {
                        let why = format!("{e:#}");
                        for reply in replies {
                            let _ = reply.send(Err(anyhow::anyhow!("{why}")));
                        }
                    }
                }
            }
        });
        Self(tx)
    }

    /// Writes waiting for the next group now.
    pub fn queued(&self) -> usize {
        self.0.max_capacity() - self.0.capacity()
    }

    /// Queues `op` for the next group and waits until it is committed.
    pub async fn write(&self, op: WriteOp) -> Result<WriteOut> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.0
            .send((op, tx))
            .await
            .map_err(|_| anyhow::anyhow!("the store's writer has stopped"))?;
        rx.await
            .map_err(|_| anyhow::anyhow!("the store's writer dropped a write"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What keeps a test's store alive: its directory or its cluster.
    #[allow(dead_code)]
    enum Guard {
        Dir(tempdir::Dir),
        Pg(cc_testkit::pg::Cluster),
    }

    /// A fresh store of each backend: a SQLite file, and a database in a
    /// private PostgreSQL cluster (skipped, with a note, outside CI when
    /// PostgreSQL is not installed). Each test runs against both.
    fn stores() -> Vec<(Guard, Store)> {
        let dir = tempdir::Dir::new();
        let sqlite = Store::open(&dir.path().join("cc.db")).unwrap();
        let mut all = vec![(Guard::Dir(dir), sqlite)];
        if let Some(cluster) = cc_testkit::pg::Cluster::start() {
            let url = cluster.create_db("cc");
            let pg = Store::open_postgres(&url).unwrap();
            all.push((Guard::Pg(cluster), pg));
        }
        all
    }

    /// A tiny temp dir, removed on drop (avoids a dependency for one test).
    mod tempdir {
        use std::path::{Path, PathBuf};
        pub(super) struct Dir(PathBuf);
        impl Dir {
            pub(super) fn new() -> Self {
                let p = std::env::temp_dir().join(format!(
                    "cc-store-test-{}-{}",
                    std::process::id(),
                    uuid::Uuid::new_v4()
                ));
                std::fs::create_dir_all(&p).unwrap();
                Self(p)
            }
            pub(super) fn path(&self) -> &Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn job_states_are_stored_as_their_words_and_an_unknown_one_is_an_error() {
        for st in JobStatus::ALL {
            assert_eq!(JobStatus::parse(st.as_str()), Some(st));
            assert_eq!(serde_json::to_value(st).unwrap(), st.as_str());
        }
        assert_eq!(JobStatus::parse("Done"), None);
        for (_guard, s) in stores() {
            let job = |id: &str| NewJob {
                job_id: id.into(),
                hostname: "h".into(),
                command: "/bin/true".into(),
                args: vec![],
                timeout_secs: 5,
                created_ms: 0,
                expires_ms: 10,
                signed: None,
            };
            s.create_job(&job("j")).unwrap();
            assert_eq!(s.get_job("j").unwrap().unwrap().status, JobStatus::Queued);
            s.write(|tx| tx.exec("UPDATE jobs SET status = 'running' WHERE job_id = 'j'", &[]))
                .unwrap();
            let e = s.get_job("j").unwrap_err();
            assert!(
                e.to_string().contains("unknown job status \"running\""),
                "{e}"
            );
            assert_eq!(StoreError::classify(&e), ErrorKind::Corrupt);
        }
    }

    #[test]
    fn store_errors_have_kinds_the_api_answers_from() {
        for (_guard, s) in stores() {
            let job = NewJob {
                job_id: "once".into(),
                hostname: "h".into(),
                command: "/bin/true".into(),
                args: vec![],
                timeout_secs: 5,
                created_ms: 0,
                expires_ms: 10,
                signed: None,
            };
            s.create_job(&job).unwrap();
            let again = s.create_job(&job).unwrap_err();
            assert_eq!(StoreError::classify(&again), ErrorKind::Conflict);
            assert_eq!(again.to_string(), "a job once exists already");
            // The same id in a run: the whole run is refused, nothing stored.
            let run = NewRun {
                run_id: "r".into(),
                command: "/bin/true".into(),
                args: vec![],
                timeout_secs: 5,
                batch: None,
                selector: "{}".into(),
                queue_ttl_ms: 10,
                created_ms: 0,
            };
            let fresh = NewJob {
                job_id: "fresh".into(),
                ..job.clone()
            };
            let e = s.create_run(&run, &[fresh, job.clone()]).unwrap_err();
            assert_eq!(StoreError::classify(&e), ErrorKind::Conflict);
            assert!(s.get_job("fresh").unwrap().is_none(), "rolled back");
            assert!(s.get_run("r").unwrap().is_none(), "rolled back");
            s.add_key("k", None, 0).unwrap();
            let dup = s.add_key("k", None, 0).unwrap_err();
            assert_eq!(StoreError::classify(&dup), ErrorKind::Conflict);
            assert_eq!(
                StoreError::classify(&anyhow::anyhow!("disk on fire")),
                ErrorKind::Backend
            );
            let busy = rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                None,
            );
            assert_eq!(StoreError::classify(&busy.into()), ErrorKind::Backend);
        }
    }

    #[test]
    fn keys_are_stored_hashed_bound_once_and_revocable() {
        for (_guard, s) in stores() {
            let key = s.add_key("web1", None, 1).unwrap();
            assert!(key.starts_with("cck_") && key.len() == 68);
            let rec = s.authenticate(&key).unwrap().unwrap();
            assert_eq!(rec.name, "web1");
            assert!(s.authenticate("cck_wrong").unwrap().is_none());
            let tags = |t: &[&str]| t.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>();
            // The first registration binds hostname and tags (in any order,
            // each once); the same again is fine.
            let web = tags(&["role=web", "dc=1", "role=web"]);
            assert_eq!(
                s.bind_key(rec.id, "web1.example", &web).unwrap(),
                Binding::Ok
            );
            let same = tags(&["dc=1", "role=web"]);
            assert_eq!(
                s.bind_key(rec.id, "web1.example", &same).unwrap(),
                Binding::Ok
            );
            assert_eq!(
                s.bind_key(rec.id, "db1.example", &same).unwrap(),
                Binding::OtherHost("web1.example".into())
            );
            // Other tags, fewer or more, are not the key's.
            for claim in [
                tags(&["dc=1"]),
                tags(&["dc=1", "role=web", "role=db"]),
                vec![],
            ] {
                assert_eq!(
                    s.bind_key(rec.id, "web1.example", &claim).unwrap(),
                    Binding::OtherTags(same.clone()),
                    "{claim:?}"
                );
            }
            // Until an operator changes them.
            assert_eq!(
                s.retag_key("web1", &tags(&["role=db"])).unwrap(),
                tags(&["role=db"])
            );
            assert_eq!(
                s.bind_key(rec.id, "web1.example", &tags(&["role=db"]))
                    .unwrap(),
                Binding::Ok
            );
            assert_eq!(
                s.list_keys().unwrap()[0].tags.as_deref(),
                Some(tags(&["role=db"]).as_slice())
            );
            let nobody = s.retag_key("nobody", &[]).unwrap_err();
            assert_eq!(StoreError::classify(&nobody), ErrorKind::NotFound);
            let other = s.add_key("other", None, 1).unwrap();
            let other = s.authenticate(&other).unwrap().unwrap();
            assert_eq!(
                s.bind_key(other.id, "web1.example", &[]).unwrap(),
                Binding::HostnameTaken
            );
            // Tags given with the key are the ones its host must have.
            let tagged = s
                .add_key_tagged("tagged", None, Some(&tags(&["b", "a"])), 1)
                .unwrap();
            let tagged = s.authenticate(&tagged).unwrap().unwrap();
            assert_eq!(
                s.bind_key(tagged.id, "t.example", &tags(&["a"])).unwrap(),
                Binding::OtherTags(tags(&["a", "b"]))
            );
            let refused = s.list_keys().unwrap();
            let refused = refused.iter().find(|k| k.name == "tagged").unwrap();
            assert_eq!(
                refused.hostname, None,
                "a refused registration binds nothing"
            );
            s.revoke_key("web1", 2).unwrap();
            assert!(s.authenticate(&key).unwrap().is_none());
            let revoked = s.retag_key("web1", &[]).unwrap_err();
            assert_eq!(StoreError::classify(&revoked), ErrorKind::NotFound);
            let again = s.revoke_key("web1", 3).unwrap_err();
            assert_eq!(StoreError::classify(&again), ErrorKind::NotFound);
            assert!(s.add_key("web1", None, 4).is_err(), "names are unique");
        }
    }

    #[test]
    fn reports_are_stored_once_and_settle_their_job() {
        for (_guard, s) in stores() {
            s.create_job(&NewJob {
                job_id: "j1".into(),
                hostname: "h".into(),
                command: "/bin/true".into(),
                args: vec![],
                timeout_secs: 10,
                created_ms: 0,
                expires_ms: 100,
                signed: None,
            })
            .unwrap();
            // Other hosts' reports first, so row ids of the tables differ: the
            // job must point at its own report.
            for (i, host) in ["a", "a", "b"].iter().enumerate() {
                let key = format!("x{i}");
                s.store_report(
                    host,
                    "other",
                    &key,
                    r#"{"other":1}"#,
                    1,
                    ReportLimits::default(),
                )
                .unwrap();
            }
            assert_eq!(
                s.store_report("h", "j1", "r1", "{}", 5, ReportLimits::default())
                    .unwrap(),
                Stored::New
            );
            assert_eq!(
                s.store_report("h", "j1", "r1", "{}", 6, ReportLimits::default())
                    .unwrap(),
                Stored::Duplicate
            );
            let job = s.get_job("j1").unwrap().unwrap();
            assert_eq!(job.status, JobStatus::Done);
            assert_eq!(job.report.as_deref(), Some("{}"));
            assert_eq!(s.count_reports().unwrap(), 4);
        }
    }

    #[test]
    fn sweep_marks_overdue_jobs_lost_and_old_queued_jobs_expired() {
        for (_guard, s) in stores() {
            let job = |id: &str| NewJob {
                job_id: id.into(),
                hostname: "h".into(),
                command: "x".into(),
                args: vec![],
                timeout_secs: 1,
                created_ms: 0,
                expires_ms: 500,
                signed: None,
            };
            s.create_job(&job("sent")).unwrap();
            assert_eq!(s.take_for_host("h", None, 0).unwrap().len(), 1);
            s.create_job(&job("queued")).unwrap();
            assert_eq!(s.sweep(400, 100).unwrap(), (0, 0));
            assert_eq!(s.sweep(1_101, 100).unwrap(), (1, 1));
            assert_eq!(s.get_job("sent").unwrap().unwrap().status, JobStatus::Lost);
            assert_eq!(
                s.get_job("queued").unwrap().unwrap().status,
                JobStatus::Expired
            );
        }
    }

    /// Issue "An agent restart loses no job": the listener hands a host no
    /// more than its window, oldest first, and the next as one settles.
    #[test]
    fn jobs_go_out_in_submission_order_within_the_window() {
        for (_guard, s) in stores() {
            // Ids that sort against their submission order.
            let ids = ["z", "b", "y", "a", "x"];
            for id in ids {
                s.create_job(&NewJob {
                    job_id: id.into(),
                    hostname: "h".into(),
                    command: "x".into(),
                    args: vec![],
                    timeout_secs: 10,
                    created_ms: 7,
                    expires_ms: 1_000,
                    signed: None,
                })
                .unwrap();
            }
            let take = |w| -> Vec<String> {
                s.take_for_host("h", w, 1)
                    .unwrap()
                    .into_iter()
                    .map(|j| j.job_id)
                    .collect()
            };
            assert_eq!(take(Some(2)), ["z", "b"]);
            assert!(take(Some(2)).is_empty(), "the window is full");
            s.store_report("h", "z", "r-z", "{}", 2, ReportLimits::default())
                .unwrap();
            assert_eq!(take(Some(2)), ["y"]);
            assert!(s.take_for_host("other", Some(2), 1).unwrap().is_empty());
            assert_eq!(take(None), ["a", "x"], "no window: everything queued");
            assert!(s.hosts_with_queued(1).unwrap().is_empty());
        }
    }

    /// The quota admits a report that reaches it exactly and refuses one
    /// byte more; unmatched reports have their own count; a refused report
    /// writes nothing; pruning gives the bytes back.
    #[test]
    fn reports_are_held_to_the_hosts_quota() {
        for (_guard, s) in stores() {
            let limits = ReportLimits {
                quota_bytes: 10,
                unmatched: 2,
            };
            s.set_cron(
                "h",
                &[CronEntry {
                    id: "c".into(),
                    schedule: "* * * * *".into(),
                    command: "/bin/true".into(),
                }],
                None,
                0,
            )
            .unwrap();
            let put = |key: &str, job: &str, payload: &str, at: i64| {
                s.store_report("h", job, key, payload, at, limits).unwrap()
            };
            assert_eq!(put("1", "c", "1234", 1), Stored::New);
            assert_eq!(
                put("2", "c", "123456", 2),
                Stored::New,
                "exactly at the quota"
            );
            assert_eq!(
                put("3", "c", "1", 3),
                Stored::Refused(Refusal::Quota {
                    used: 10,
                    size: 1,
                    quota: 10
                })
            );
            assert_eq!(
                put("2", "c", "123456", 4),
                Stored::Duplicate,
                "a resend is still a duplicate"
            );
            assert_eq!(
                s.usage("h").unwrap(),
                Usage {
                    bytes: 10,
                    unmatched: 0
                }
            );
            assert_eq!(
                s.count_reports().unwrap(),
                2,
                "a refused report writes nothing"
            );
            // Another host has its own quota.
            assert_eq!(
                s.store_report("g", "x", "1", "12345678", 5, limits)
                    .unwrap(),
                Stored::New
            );
            // Pruning the oldest gives its bytes back: 4 bytes free again.
            assert_eq!(s.prune_reports(2, 100).unwrap(), 1);
            assert_eq!(s.usage("h").unwrap().bytes, 6);
            assert_eq!(put("4", "c", "1234", 6), Stored::New);
            assert_eq!(
                put("5", "c", "1", 7),
                Stored::Refused(Refusal::Quota {
                    used: 10,
                    size: 1,
                    quota: 10
                })
            );
            // Unmatched: two kept, the third refused, quota bytes or not.
            let wide = ReportLimits {
                quota_bytes: 1000,
                unmatched: 2,
            };
            let un = |key: &str| s.store_report("u", "nojob", key, "{}", 8, wide).unwrap();
            assert_eq!(un("a"), Stored::New);
            assert_eq!(un("b"), Stored::New);
            assert_eq!(un("c"), Stored::Refused(Refusal::Unmatched { quota: 2 }));
            assert_eq!(
                s.usage("u").unwrap(),
                Usage {
                    bytes: 4,
                    unmatched: 2
                }
            );
            // The batch bounds one pass, oldest first; pruned unmatched
            // reports free their count too.
            assert_eq!(s.prune_reports(9, 1).unwrap(), 1);
            assert_eq!(s.usage("h").unwrap().bytes, 4, "the report at 2 went first");
            assert_eq!(s.prune_reports(9, 100).unwrap(), 4);
            assert_eq!(s.usage("u").unwrap(), Usage::default());
            assert_eq!(s.usage("h").unwrap(), Usage::default());
            assert_eq!(un("d"), Stored::New);
        }
    }

    /// A group gives each write the result it would have had alone, in
    /// order: later writes see earlier ones (duplicate, quota).
    #[test]
    fn a_group_of_writes_is_each_write_in_order() {
        for (_guard, s) in stores() {
            s.create_job(&NewJob {
                job_id: "j".into(),
                hostname: "h".into(),
                command: "/bin/true".into(),
                args: vec![],
                timeout_secs: 10,
                created_ms: 0,
                expires_ms: 1_000_000,
                signed: None,
            })
            .unwrap();
            let limits = ReportLimits {
                quota_bytes: 6,
                unmatched: 10,
            };
            let report = |key: &str, job: &str, payload: &str| WriteOp::Report {
                hostname: "h".into(),
                job_id: job.into(),
                dedupe_key: key.into(),
                payload: payload.into(),
                limits,
            };
            let ops = [
                WriteOp::Take {
                    hostname: "h".into(),
                    window: Some(1),
                    conn: 0,
                },
                report("1", "other", "{}"),
                report("1", "other", "{}"),
                report("2", "j", "1234"),
                report("3", "other", "1"),
            ];
            let outs = s.write_batch(&ops, 5).unwrap();
            let taken = |o: &Result<WriteOut>| match o {
                Ok(WriteOut::Taken(jobs)) => jobs.iter().map(|j| j.job_id.clone()).collect(),
                _ => Vec::new(),
            };
            let stored = |o: &Result<WriteOut>| match o {
                Ok(WriteOut::Report { stored, .. }) => Some(*stored),
                _ => None,
            };
            assert_eq!(taken(&outs[0]), ["j"]);
            assert_eq!(stored(&outs[1]), Some(Stored::New));
            assert_eq!(stored(&outs[2]), Some(Stored::Duplicate));
            assert_eq!(stored(&outs[3]), Some(Stored::New));
            assert_eq!(
                stored(&outs[4]),
                Some(Stored::Refused(Refusal::Quota {
                    used: 6,
                    size: 1,
                    quota: 6
                }))
            );
            assert_eq!(s.get_job("j").unwrap().unwrap().status, JobStatus::Done);
            assert_eq!(s.count_reports().unwrap(), 2);
            assert!(s.write_batch(&[], 6).unwrap().is_empty());
        }
    }

    /// Regression: `serve` and `keys add` opening a fresh file at the same
    /// moment both saw schema version 0 and the second failed with "table
    /// api_keys already exists".
    #[test]
    fn concurrent_first_opens_migrate_once() {
        let dir = tempdir::Dir::new();
        let path = dir.path().join("cc.db");
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let p = path.clone();
                std::thread::spawn(move || Store::open(&p).map(|_| ()))
            })
            .collect();
        for h in handles {
            h.join().unwrap().unwrap();
        }
    }

    #[test]
    fn reopening_keeps_everything_and_does_not_migrate_twice() {
        let dir = tempdir::Dir::new();
        let path = dir.path().join("cc.db");
        let key = Store::open(&path).unwrap().add_key("k", None, 1).unwrap();
        let again = Store::open(&path).unwrap();
        assert!(again.authenticate(&key).unwrap().is_some());
    }

    /// Two stores on one PostgreSQL database, as two listeners are.
    fn shared_pair() -> Option<(cc_testkit::pg::Cluster, Store, Store)> {
        let cluster = cc_testkit::pg::Cluster::start()?;
        let url = cluster.create_db("shared");
        let a = Store::open_postgres(&url).unwrap();
        let b = Store::open_postgres(&url).unwrap();
        Some((cluster, a, b))
    }

    fn agent_info(host: &str) -> AgentInfo {
        AgentInfo {
            hostname: cc_proto::Hostname::parse(host).unwrap(),
            os: "linux".into(),
            arch: "amd64".into(),
            tags: vec![],
            execution_mode: ExecutionMode::User,
            is_root: false,
            job_window: Some(4),
        }
    }

    fn queued(id: String, host: &str) -> NewJob {
        NewJob {
            job_id: id,
            hostname: host.into(),
            command: "/bin/true".into(),
            args: vec![],
            timeout_secs: 10,
            created_ms: 0,
            expires_ms: i64::MAX,
            signed: None,
        }
    }

    /// Only the listener (and connection) that registered an agent last
    /// hands it jobs; a stale connection elsewhere is told the agent moved.
    #[test]
    fn only_the_listener_holding_an_agent_hands_it_jobs() {
        let Some((_c, a, b)) = shared_pair() else {
            return;
        };
        let (a, b) = (a.held_as("l-a").unwrap(), b.held_as("l-b").unwrap());
        let register = |s: &Store, conn| {
            let op = WriteOp::Register {
                info: agent_info("h.test"),
                conn,
            };
            assert!(s.write_batch(&[op], 1).unwrap()[0].is_ok());
        };
        let take = |s: &Store, conn| {
            let op = WriteOp::Take {
                hostname: "h.test".into(),
                window: Some(10),
                conn,
            };
            s.write_batch(&[op], 2).unwrap().remove(0)
        };
        a.create_job(&queued("j1".into(), "h.test")).unwrap();
        register(&a, 1);
        let moved = |r: Result<WriteOut>| match r {
            Err(e) => matches!(e.downcast_ref(), Some(StoreError::Moved(h)) if h == "h.test"),
            Ok(_) => false,
        };
        assert!(moved(take(&b, 1)), "b does not hold it");
        assert!(
            moved(take(&a, 2)),
            "another connection of a does not hold it"
        );
        // The agent reconnects to b: a's connection is stale.
        register(&b, 9);
        assert!(moved(take(&a, 1)));
        match take(&b, 9) {
            Ok(WriteOut::Taken(jobs)) => assert_eq!(jobs.len(), 1),
            other => panic!("{other:?}"),
        }
        let row = |s: &Store| {
            s.agents_between("h.test", "h.test").unwrap()[0]
                .listener
                .clone()
        };
        assert_eq!(row(&a).as_deref(), Some("l-b"));
        // a's stale connection ending does not release b's hold; b's does.
        a.touch_agent("h.test", 5, 1).unwrap();
        assert_eq!(row(&a).as_deref(), Some("l-b"));
        b.touch_agent("h.test", 6, 9).unwrap();
        assert_eq!(row(&a), None);
    }

    /// On reconnect, jobs sent and unreported go out again — but only from
    /// the listener and connection that hold the agent: a stale one (the
    /// agent moved on) resends nothing and is told the agent moved.
    #[test]
    fn only_the_listener_holding_an_agent_resends_its_unreported_jobs() {
        let Some((_c, a, b)) = shared_pair() else {
            return;
        };
        let (a, b) = (a.held_as("l-a").unwrap(), b.held_as("l-b").unwrap());
        let register = |s: &Store, conn| {
            let op = WriteOp::Register {
                info: agent_info("h.test"),
                conn,
            };
            assert!(s.write_batch(&[op], 1).unwrap()[0].is_ok());
        };
        a.create_job(&queued("j1".into(), "h.test")).unwrap();
        register(&a, 1);
        let op = WriteOp::Take {
            hostname: "h.test".into(),
            window: Some(10),
            conn: 1,
        };
        assert!(a.write_batch(&[op], 2).unwrap()[0].is_ok());
        // The agent moves to b; a's connection is stale.
        register(&b, 9);
        let moved = |r: Result<Vec<JobRow>>| match r {
            Err(e) => matches!(e.downcast_ref(), Some(StoreError::Moved(h)) if h == "h.test"),
            Ok(jobs) => {
                assert!(jobs.is_empty(), "a stale connection resent {jobs:?}");
                false
            }
        };
        assert!(moved(a.resend_unreported("h.test", 1, 10)));
        assert!(
            moved(b.resend_unreported("h.test", 8, 10)),
            "b, another connection"
        );
        let jobs = b.resend_unreported("h.test", 9, 10).unwrap();
        assert_eq!(jobs.len(), 1);
    }

    /// Hosts taken from two listeners at once: every job handed out
    /// exactly once.
    #[test]
    fn jobs_taken_from_two_listeners_at_once_go_out_once() {
        let Some((_c, a, b)) = shared_pair() else {
            return;
        };
        for i in 0..400 {
            a.create_job(&queued(format!("j{i}"), "h.test")).unwrap();
        }
        let (a, b) = (Arc::new(a), Arc::new(b));
        let takers: Vec<_> = [a, b]
            .into_iter()
            .flat_map(|s| (0..2).map(move |_| Arc::clone(&s)))
            .map(|s| {
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    loop {
                        let jobs = s.take_for_host("h.test", None, 1).unwrap();
                        if jobs.is_empty() {
                            return got;
                        }
                        got.extend(jobs.into_iter().map(|j| j.job_id));
                        // Smaller bites, so the takers interleave.
                        std::thread::yield_now();
                    }
                })
            })
            .collect();
        let mut all: Vec<String> = takers.into_iter().flat_map(|t| t.join().unwrap()).collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!((n, all.len()), (400, 400), "each job once");
    }

    /// A reader that follows the events (`id > last seen`) while two
    /// listeners write misses none: ids are given in commit order.
    #[test]
    fn a_follower_of_the_events_misses_none_while_two_listeners_write() {
        let Some((_c, a, b)) = shared_pair() else {
            return;
        };
        let (a, b) = (Arc::new(a), Arc::new(b));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let follower = {
            let (r, done) = (Arc::clone(&b), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                let mut last = 0;
                loop {
                    let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                    let page = r.events(last, &EventFilter::default(), 10_000).unwrap();
                    for e in &page {
                        seen.push(e.id);
                        last = e.id;
                    }
                    if finished && page.is_empty() {
                        return seen;
                    }
                }
            })
        };
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let s = Arc::clone(if w % 2 == 0 { &a } else { &b });
                std::thread::spawn(move || {
                    for i in 0..300 {
                        s.create_job(&queued(format!("w{w}-{i}"), "h.test"))
                            .unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let seen = follower.join().unwrap();
        let all: Vec<i64> = a
            .events(0, &EventFilter::default(), 10_000)
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(all.len(), 1200);
        let missed = all.iter().filter(|id| !seen.contains(id)).count();
        assert_eq!(missed, 0, "events the follower never saw");
    }

    /// Retention: jobs that ended before the cut go (not queued or sent
    /// ones, not newer ones), and runs left without jobs with them.
    /// Only a group of hand-overs may commit without waiting for the
    /// disk: everything else is acknowledged to someone, or would show a
    /// gone connection holding its agent.
    #[test]
    fn only_hand_overs_commit_without_waiting_for_the_disk() {
        let take = WriteOp::Take {
            hostname: "h".into(),
            window: Some(1),
            conn: 1,
        };
        assert!(take.may_be_lost());
        let waits = [
            WriteOp::Report {
                hostname: "h".into(),
                job_id: "j".into(),
                dedupe_key: "d".into(),
                payload: "{}".into(),
                limits: ReportLimits::default(),
            },
            WriteOp::Bind {
                key_id: 1,
                hostname: "h".into(),
                tags: vec![],
            },
            WriteOp::Register {
                info: agent_info("h"),
                conn: 1,
            },
            WriteOp::Touch {
                hostname: "h".into(),
                last_seen_ms: 1,
                conn: 1,
            },
        ];
        for op in &waits {
            assert!(!op.may_be_lost(), "{op:?}");
        }
        // On PostgreSQL, the transaction says so.
        for (_guard, s) in stores() {
            if s.dialect() != Dialect::Postgres {
                continue;
            }
            let setting = |flush| {
                s.write_with(flush, |tx| {
                    scalar::<String>(tx, "SHOW synchronous_commit", &[])
                })
                .unwrap()
            };
            assert_eq!(setting(Flush::Wait), "on");
            assert_eq!(setting(Flush::Later), "off");
            assert_eq!(setting(Flush::Wait), "on", "for that transaction only");
        }
    }

    /// Every listener reads the revoked keys each second: through the
    /// partial index, not by reading every key.
    #[test]
    fn revoked_keys_are_read_through_their_own_index() {
        for (_guard, s) in stores() {
            let plan = s
                .read(|c| {
                    if c.dialect() == Dialect::Postgres {
                        // A table this small would be read whole anyway.
                        c.batch("SET enable_seqscan = off")?;
                    }
                    let explain = match c.dialect() {
                        Dialect::Sqlite => "EXPLAIN QUERY PLAN ",
                        Dialect::Postgres => "EXPLAIN ",
                    };
                    let rows = c.query(
                        &format!("{explain}SELECT id FROM api_keys WHERE revoked_ms IS NOT NULL"),
                        &[],
                    )?;
                    let col = rows.first().map_or(0, |r| r.0.len() - 1);
                    rows.iter()
                        .map(|r| r.get::<String>(col))
                        .collect::<Result<Vec<_>>>()
                })
                .unwrap()
                .join("\n");
            assert!(plan.contains("api_keys_revoked"), "{plan}");
        }
    }

    #[test]
    fn pruning_removes_old_finished_jobs_and_empty_runs_only() {
        for (_guard, s) in stores() {
            let job = |id: &str| NewJob {
                job_id: id.into(),
                hostname: "h".into(),
                command: "x".into(),
                args: vec![],
                timeout_secs: 1,
                created_ms: 0,
                expires_ms: 500,
                signed: None,
            };
            let run = NewRun {
                run_id: "old-run".into(),
                command: "x".into(),
                args: vec![],
                timeout_secs: 1,
                batch: None,
                selector: "{}".into(),
                queue_ttl_ms: 500,
                created_ms: 0,
            };
            s.create_run(&run, &[job("r1")]).unwrap();
            for id in ["done", "lost", "expired", "queued", "sent", "late"] {
                s.create_job(&job(id)).unwrap();
            }
            s.store_report("h", "done", "k1", "{}", 100, ReportLimits::default())
                .unwrap();
            s.store_report("h", "r1", "k2", "{}", 100, ReportLimits::default())
                .unwrap();
            // "lost" and "sent" go out; the sweep loses "lost" and expires
            // "expired" (and "late" and "queued", queued past 500).
            let taken: Vec<String> = s
                .take_for_host("h", Some(2), 1)
                .unwrap()
                .into_iter()
                .map(|j| j.job_id)
                .collect();
            assert_eq!(taken, ["lost", "expired"]);
            s.sweep(3_000, 100).unwrap();
            assert_eq!(s.get_job("lost").unwrap().unwrap().status, JobStatus::Lost);
            // "sent": taken now, still unreported; "late": ends after the cut.
            s.write(|tx| {
                tx.exec(
                    "UPDATE jobs SET status = ?1, finished_ms = NULL WHERE job_id = 'sent'",
                    &p![JobStatus::Sent],
                )?;
                tx.exec(
                    "UPDATE jobs SET finished_ms = 9000 WHERE job_id = 'late'",
                    &[],
                )
            })
            .unwrap();
            assert_eq!(s.prune_jobs(5_000, 2).unwrap(), 2, "a batch at a time");
            assert_eq!(s.prune_jobs(5_000, 100).unwrap(), 3);
            assert_eq!(s.prune_jobs(5_000, 100).unwrap(), 0);
            let left: Vec<&str> = ["r1", "done", "lost", "expired", "queued", "sent", "late"]
                .into_iter()
                .filter(|id| s.get_job(id).unwrap().is_some())
                .collect();
            assert_eq!(left, ["sent", "late"]);
            assert!(s.get_run("old-run").unwrap().is_none(), "its only job went");
        }
    }
}
