//! Jobs, and every change of their status: the job state machine.
//!
//! A job's status changes only here, each change one guarded `UPDATE`
//! (the guard is the `WHERE status = …` that makes a change happen once,
//! whichever listener or connection tries it). The whole table — the test
//! `job_status_transitions_are_exactly_the_table` walks it against a real
//! store, each allowed change made and each other one refused:
//!
//! | from | to | method | guard |
//! |------|----|--------|-------|
//! | (new) | `queued` | [`Store::create_job`]; [`Store::create_run`] for a run's first `batch` jobs (all without a batch) | the job id is unused |
//! | (new) | `held` | [`Store::create_run`], a batched run's jobs past its batch | the job id is unused |
//! | `held` | `queued` | `release_held`, after a report of one of the run's jobs ([`Store::store_report`]) or a sweep ([`Store::sweep`]) | `status = held`; fewer than `batch` of the run's jobs queued or sent, counted under the run's row lock; oldest first |
//! | `queued` | `sent` | `take_in` ([`Store::take_for_host`], [`TakeWrite`](super::TakeWrite)) | `status = queued`, not expired; fewer than the agent's window sent; on a shared database, the listener and connection that hold the agent |
//! | `sent` | `queued` | [`Store::requeue`] (the connection could not take it) | `status = sent` |
//! | `sent` | `lost` | [`Store::sweep`] | `status = sent`, no report within timeout + grace |
//! | `queued` | `expired` | [`Store::sweep`] | `status = queued`, past its queue time |
//! | any but `done` | `done` | `settle_in`, by its first report ([`Store::store_report`], [`ReportWrite`](super::ReportWrite)) | `report_id IS NULL` (a job is settled once) |
//!
//! Nothing else changes a status: `done`, `lost` and `expired` are final
//! but for a late first report (`lost`/`expired` → `done`), and
//! [`Store::prune_jobs`] deletes final jobs. [`Store::resend_unreported`]
//! resends `sent` jobs without changing their status.

use anyhow::{Context, Result};

use cc_proto::{Hostname, JobId};

use crate::sql::{FromV, P, Row, Sql, ToP, p, scalar};

use super::{
    JobRow, JobSummary, NewJob, NewRun, Store, StoreError, conflict_on_constraint, json_list,
};

/// Jobs of a run stored per statement.
const RUN_INSERT_ROWS: usize = 1000;

/// Jobs handed to a spec-only agent per transaction.
pub const TAKE_BATCH: i64 = 1000;

/// Where a job is. The store is the only place a job changes state, and
/// the table in this module's documentation lists every change it makes.
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

impl Store {
    /// Stores a new job, queued: [`Store::take_for_host`] hands it over.
    /// A job id used before is a [`StoreError::Conflict`].
    pub fn create_job(&self, job: &NewJob) -> Result<()> {
        self.insert_job(job, false).map(|_| ())
    }

    /// [`Store::create_job`] only if an agent registered as the job's host
    /// or a key names it: `false` (nothing stored) otherwise. One
    /// statement: an operator's `POST` used to ask first, on the reading
    /// connection, one round trip and one wait more before the job.
    pub fn create_job_if_known(&self, job: &NewJob) -> Result<bool> {
        self.insert_job(job, true)
    }

    /// Inserts `job`, queued (with `known_only`, only for a known host):
    /// whether it was stored.
    fn insert_job(&self, job: &NewJob, known_only: bool) -> Result<bool> {
        // Each value cast: PostgreSQL types a `SELECT`'s parameters by
        // them, not by the columns they go to.
        const INSERT: &str = "INSERT INTO jobs (job_id, hostname, command, args, timeout_secs,
                                                status, created_ms, expires_ms, signed, submitter)
             SELECT CAST(?1 AS TEXT), CAST(?2 AS TEXT), CAST(?3 AS TEXT), CAST(?4 AS TEXT),
                    CAST(?5 AS BIGINT), CAST(?9 AS TEXT), CAST(?6 AS BIGINT),
                    CAST(?7 AS BIGINT), CAST(?8 AS TEXT), CAST(?10 AS TEXT)";
        const KNOWN: &str = " WHERE EXISTS (SELECT 1 FROM agents WHERE hostname = ?2)
                                 OR EXISTS (SELECT 1 FROM api_keys WHERE hostname = ?2)";
        let sql = if known_only {
            format!("{INSERT}{KNOWN}")
        } else {
            INSERT.to_owned()
        };
        let args = serde_json::to_string(&job.args)?;
        let stored = self.write(|tx| {
            tx.exec(
                &sql,
                &p![
                    job.job_id,
                    job.hostname,
                    job.command,
                    args,
                    job.timeout_secs,
                    job.created_ms,
                    job.expires_ms,
                    job.signed,
                    JobStatus::Queued,
                    job.submitter
                ],
            )
            .map_err(|e| {
                conflict_on_constraint(e, || format!("a job {} exists already", job.job_id))
            })
        })?;
        Ok(stored == 1)
    }

    /// Stores the jobs of `run` (just stored, its args as JSON `args`):
    /// with a batch, the first `batch` jobs are queued and the rest held.
    /// [`RUN_INSERT_ROWS`] jobs per statement, passed as one JSON array:
    /// a fan-out to 100,000 hosts is 100 round trips, not 100,000.
    pub(super) fn insert_run_jobs(
        tx: &mut dyn Sql,
        run: &NewRun,
        args: &str,
        jobs: &[NewJob],
    ) -> Result<()> {
        let sql = match tx.dialect() {
            crate::sql::Dialect::Postgres => {
                "INSERT INTO jobs (job_id, hostname, command, args, timeout_secs, status,
                                   created_ms, expires_ms, signed, run_id, submitter)
                 SELECT e->>0, e->>1, ?2, ?3, ?4, e->>2, (e->>3)::bigint, (e->>4)::bigint, e->>5,
                        ?5, ?6
                 FROM jsonb_array_elements(CAST(?1 AS TEXT)::jsonb) WITH ORDINALITY AS t(e, n)
                 ORDER BY t.n"
            }
            crate::sql::Dialect::Sqlite => {
                "INSERT INTO jobs (job_id, hostname, command, args, timeout_secs, status,
                                   created_ms, expires_ms, signed, run_id, submitter)
                 SELECT t.value ->> 0, t.value ->> 1, ?2, ?3, ?4, t.value ->> 2, t.value ->> 3,
                        t.value ->> 4, t.value ->> 5, ?5, ?6
                 FROM json_each(?1) AS t ORDER BY t.key"
            }
        };
        for (chunk_no, chunk) in jobs.chunks(RUN_INSERT_ROWS).enumerate() {
            let rows: Vec<serde_json::Value> = chunk
                .iter()
                .enumerate()
                .map(|(k, job)| {
                    let held = run
                        .batch
                        .is_some_and(|b| chunk_no * RUN_INSERT_ROWS + k >= b as usize);
                    let status = if held {
                        JobStatus::Held
                    } else {
                        JobStatus::Queued
                    };
                    let expires = if held { i64::MAX } else { job.expires_ms };
                    serde_json::json!([
                        job.job_id,
                        job.hostname,
                        status.as_str(),
                        job.created_ms,
                        expires,
                        job.signed
                    ])
                })
                .collect();
            let rows = serde_json::to_string(&rows)?;
            tx.exec(
                sql,
                &p![
                    rows,
                    run.command,
                    args,
                    run.timeout_secs,
                    run.run_id,
                    run.submitter
                ],
            )
            .map_err(|e| {
                conflict_on_constraint(e, || format!("a job of run {} exists already", run.run_id))
            })?;
        }
        Ok(())
    }

    /// Settles `job_id` with its first report (`report_row`), whatever
    /// state it was in; a job already settled stays as it was. Returns
    /// whether it settled now, and the hosts whose held jobs this let into
    /// the job's run's batch.
    pub(super) fn settle_in(
        tx: &mut dyn Sql,
        job_id: &JobId,
        report_row: i64,
        now_ms: i64,
    ) -> Result<(bool, Vec<String>)> {
        // The job's run, and whether that run has a batch, come back with
        // the change: a run without one (a fan-out) needs nothing more.
        let settling = tx.one(
            "UPDATE jobs SET status = ?4, finished_ms = ?3, report_id = ?2
             WHERE job_id = ?1 AND report_id IS NULL
             RETURNING run_id,
                       (SELECT r.batch FROM runs r WHERE r.run_id = jobs.run_id) IS NOT NULL",
            &p![job_id, report_row, now_ms, JobStatus::Done],
        )?;
        let settled = settling.is_some();
        // A place in its run's batch may be free now.
        let run: Option<String> = match settling {
            Some(r) if r.get::<bool>(1)? => r.get(0)?,
            Some(_) => None,
            None => scalar(tx, "SELECT run_id FROM jobs WHERE job_id = ?1", &p![job_id])?,
        };
        let released = match run {
            Some(run) => Self::release_held(tx, &run, now_ms)?,
            None => Vec::new(),
        };
        Ok((settled, released))
    }

    /// Queues as many of `run_id`'s held jobs as its batch has room for
    /// (its queued and sent jobs are what runs), oldest first; their queue
    /// time starts now. Returns their hosts.
    pub(super) fn release_held(tx: &mut dyn Sql, run_id: &str, now_ms: i64) -> Result<Vec<String>> {
        // A run without a batch releases nothing, and takes no lock: a
        // fan-out's reports, settled by several listeners at once, do not
        // wait for each other here.
        let batched: Option<i64> = tx
            .one("SELECT batch FROM runs WHERE run_id = ?1", &p![run_id])?
            .map(|r| r.get(0))
            .transpose()?
            .flatten();
        if batched.is_none() {
            return Ok(Vec::new());
        }
        // The run's row lock, held to the commit: two listeners settling
        // jobs of one batched run count its jobs in flight one after the
        // other (each `SELECT` below reads what the other committed), so
        // together they never let more than `batch` run.
        let Some(row) = tx.one(
            "UPDATE runs SET batch = batch WHERE run_id = ?1 RETURNING batch, queue_ttl_ms",
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

    /// The one place a job is handed to a host: while fewer than `window`
    /// of the host's jobs are sent and unreported, its oldest queued
    /// (unexpired) jobs become sent, in submission order, and are returned
    /// to be written to the connection. `window` `None` (a spec-only agent):
    /// every queued job, [`TAKE_BATCH`] at a time.
    pub fn take_for_host(
        &self,
        hostname: &Hostname,
        window: Option<u32>,
        now_ms: i64,
    ) -> Result<Vec<JobRow>> {
        self.write(|tx| Ok(Self::take_in(tx, None, hostname, window, now_ms)?.0))
    }

    /// [`Store::take_for_host`] inside the caller's transaction; with
    /// `by`, only for the listener and connection that hold the agent.
    pub(super) fn take_in(
        tx: &mut dyn Sql,
        by: Option<(&str, u64)>,
        hostname: &Hostname,
        window: Option<u32>,
        now_ms: i64,
    ) -> Result<(Vec<JobRow>, i64)> {
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
                    return Err(StoreError::Moved(hostname.to_string()).into());
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
            return Ok((Vec::new(), room));
        }
        // One statement: the oldest queued jobs, each moved only if it is
        // still queued when its row lock is had (another listener's
        // connection may have taken it meanwhile: it is not handed over
        // twice). A queued job has no report yet. The host named outside
        // the subquery too: SQLite otherwise walked every queued job by
        // the status index, per hand-over (a fan-out to 19,000: 32 s).
        let mut taken = tx
            .query(
                "UPDATE jobs SET status = ?5, sent_ms = ?2
                 WHERE job_id IN (SELECT job_id FROM jobs
                                  WHERE hostname = ?1 AND status = ?4 AND expires_ms > ?2
                                  ORDER BY rowid LIMIT ?3)
                   AND hostname = ?1 AND status = ?4
                 RETURNING job_id, hostname, command, args, timeout_secs, status, created_ms,
                           expires_ms, sent_ms, finished_ms, CAST(NULL AS TEXT), signed,
                           submitter, rowid",
                &p![hostname, now_ms, room, JobStatus::Queued, JobStatus::Sent],
            )?
            .iter()
            .map(|r| Ok((r.get::<i64>(13)?, job_row(r)?)))
            .collect::<Result<Vec<_>>>()?;
        // `RETURNING` gives no order: submission order is the rowid's.
        taken.sort_by_key(|(rowid, _)| *rowid);
        Ok((taken.into_iter().map(|(_, job)| job).collect(), room))
    }

    /// Hosts with queued, unexpired jobs.
    pub fn hosts_with_queued(&self, now_ms: i64) -> Result<Vec<String>> {
        self.chore_read(|c| {
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
    pub(super) fn check_held(
        tx: &mut dyn Sql,
        me: &str,
        conn: u64,
        hostname: &Hostname,
    ) -> Result<()> {
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
            Err(StoreError::Moved(hostname.to_string()).into())
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
    pub fn resend_unreported(
        &self,
        hostname: &Hostname,
        conn: u64,
        now_ms: i64,
    ) -> Result<Vec<JobRow>> {
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
        self.chore(|tx| {
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

    /// Deletes jobs that ended (done, lost, expired) before `before_ms`,
    /// at most `batch` of them, then runs created before it that have no
    /// job left. Returns how many jobs.
    pub fn prune_jobs(&self, before_ms: i64, batch: u32) -> Result<usize> {
        self.chore(|tx| {
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
}

const JOB_SELECT: &str = "SELECT j.job_id, j.hostname, j.command, j.args, j.timeout_secs, j.status,
    j.created_ms, j.expires_ms, j.sent_ms, j.finished_ms, r.payload, j.signed, j.submitter
    FROM jobs j LEFT JOIN reports r ON r.id = j.report_id";

pub(super) fn job_row(r: &Row) -> Result<JobRow> {
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
        submitter: r.get(12)?,
    })
}
