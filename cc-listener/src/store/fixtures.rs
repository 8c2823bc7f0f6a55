//! Fixtures for tests and benchmarks (feature `fixtures`, which this
//! crate's own tests and benchmarks turn on): rows written straight into
//! a SQLite store, bypassing every check and quota. Not built into the
//! listener.

use std::sync::MutexGuard;

use anyhow::{Context, Result};
use rusqlite::Connection;

use super::{Backend, JobStatus, Store, lock, write_tx};

impl Store {
    /// The SQLite connection that writes, for fixtures; `None` on
    /// PostgreSQL.
    pub(super) fn sqlite_writer(&self) -> Option<MutexGuard<'_, Connection>> {
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
}
