//! The rows the store hands out and the values it takes: plain data, no
//! behaviour beyond reading a row.

use anyhow::Result;

use crate::sql::Row;

use cc_proto::wire::ReportKind;

use super::JobStatus;

/// An API key as the handshake sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: i64,
    pub name: String,
    pub hostname: Option<String>,
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
    /// The agent's last `cronHost` (JSON), if it said one.
    pub cron_host: Option<String>,
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
    /// The operator who submitted it.
    pub submitter: Option<String>,
}

/// One change of a job's state (`events` table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub id: i64,
    pub at_ms: i64,
    /// What the event is about: `job`, `cron` or `host` ([`NewEvent`]).
    pub kind: String,
    pub job_id: String,
    pub run_id: Option<String>,
    pub hostname: String,
    /// A [`JobStatus`] for a job's event; for the others, see [`NewEvent`].
    pub status: String,
    pub exit_code: Option<i64>,
    pub detail: Option<String>,
}

/// An event that is not a job's state change (those the database's
/// triggers write): one scheduled run of a cron entry (`kind` "cron",
/// `job_id` the entry's id; status "done" with its exit code, "skipped",
/// or "missed" with the reason in `detail`) or a host's change of state
/// (`kind` "host", `job_id` empty). Written by [`Store::insert_event_in`]
/// in the transaction that makes the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub at_ms: i64,
    pub kind: &'static str,
    pub job_id: String,
    pub hostname: String,
    pub status: String,
    pub exit_code: Option<i64>,
    pub detail: Option<String>,
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
    pub submitter: Option<String>,
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
    /// The operator who submitted it (for a run's job: the run's).
    pub submitter: Option<String>,
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
    /// The operator who submitted it; `None` before operators were named.
    pub submitter: Option<String>,
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
    pub kind: ReportKind,
    pub received_ms: i64,
    pub payload: String,
}

/// What storing a report did ([`crate::store::Writer::report`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportOutcome {
    pub stored: Stored,
    /// Hosts whose held jobs the report let into their run's batch (to be
    /// nudged).
    pub released: Vec<String>,
    /// A new report's kind and whether it settled its job (for the
    /// metrics); `None` unless `stored` is [`Stored::New`].
    pub new: Option<NewReport>,
}

impl ReportOutcome {
    /// A report not stored (a duplicate, a refusal): nothing changed.
    pub(super) fn not_new(stored: Stored) -> Self {
        Self {
            stored,
            released: Vec::new(),
            new: None,
        }
    }
}

/// A new report's kind and whether it settled its job.
pub type NewReport = (ReportKind, bool);

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
    pub(super) fn from_row(row: &Row, at: usize) -> Result<Self> {
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
