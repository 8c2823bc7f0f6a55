//! Reports: stored once, held to their host's quota, pruned by age.
//!
//! Invariants: a report is stored at most once per (hostname, dedupe
//! key); `report_usage` is changed in the transaction that stores or
//! prunes a report, so it is what the host's reports take; a refused
//! report writes nothing. A report's kind ([`ReportKind`]) is decided here,
//! when it is stored.

use anyhow::{Context, Result};

use cc_proto::wire::ReportKind;
use cc_proto::{Hostname, JobId};

use crate::sql::{Sql, p, scalar};

use super::{Refusal, ReportLimits, ReportOutcome, ReportQuery, ReportRow, Store, Stored, Usage};

impl Store {
    /// Stores a report once per (hostname, dedupe key) and, for an ad-hoc
    /// job of this host, marks the job done, in one transaction — unless
    /// it would take the host over `limits`: then nothing is written.
    pub fn store_report(
        &self,
        hostname: &Hostname,
        job_id: &JobId,
        dedupe_key: &str,
        payload: &str,
        now_ms: i64,
        limits: ReportLimits,
    ) -> Result<Stored> {
        // Nothing is written for a duplicate or a refusal: committing the
        // empty transaction is harmless and simpler.
        self.write(|tx| {
            Self::store_in(tx, hostname, job_id, dedupe_key, payload, now_ms, limits)
                .map(|out| out.stored)
        })
    }

    /// [`Store::store_report`] inside the caller's transaction, also
    /// returning the hosts whose held jobs the report let into their run's
    /// batch (to be nudged).
    pub(super) fn store_in(
        tx: &mut dyn Sql,
        hostname: &Hostname,
        job_id: &JobId,
        dedupe_key: &str,
        payload: &str,
        now_ms: i64,
        limits: ReportLimits,
    ) -> Result<ReportOutcome> {
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
            return Ok(ReportOutcome::not_new(Stored::Duplicate));
        }
        let is_job: bool = row.get(1)?;
        let kind = if is_job {
            ReportKind::Job
        } else if Self::is_cron_entry(tx, hostname, job_id)? {
            ReportKind::Cron
        } else {
            ReportKind::Unmatched
        };
        let used = Usage::from_row(&row, 2)?;
        let size = payload.len() as u64;
        let unmatched = u64::from(kind == ReportKind::Unmatched);
        if unmatched == 1 && used.unmatched >= limits.unmatched {
            return Ok(ReportOutcome::not_new(Stored::Refused(
                Refusal::Unmatched {
                    quota: limits.unmatched,
                },
            )));
        }
        if used.bytes.saturating_add(size) > limits.quota_bytes {
            return Ok(ReportOutcome::not_new(Stored::Refused(Refusal::Quota {
                used: used.bytes,
                size,
                quota: limits.quota_bytes,
            })));
        }
        // Another listener may have stored it since the read above (the
        // agent sent it to both, reconnecting): then it is a duplicate.
        let Some(report_row) = tx
            .one(
                "INSERT INTO reports (hostname, job_id, dedupe_key, kind, received_ms, payload, size)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (hostname, dedupe_key) DO NOTHING RETURNING id",
                &p![hostname, job_id, dedupe_key, kind, now_ms, payload, size],
            )?
            .map(|r| r.get::<i64>(0))
            .transpose()?
        else {
            return Ok(ReportOutcome::not_new(Stored::Duplicate));
        };
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
            (settled, released) = Self::settle_in(tx, job_id, report_row, now_ms)?;
        }
        if kind == ReportKind::Cron {
            super::schedules::scheduled_report_event_in(
                tx,
                hostname.as_str(),
                job_id.as_str(),
                payload,
                now_ms,
            )?;
        }
        Ok(ReportOutcome {
            stored: Stored::New,
            released,
            new: Some((kind, settled)),
        })
    }

    pub(super) fn usage_in(c: &mut dyn Sql, hostname: &str) -> Result<Usage> {
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

    /// Deletes reports received before `before_ms`, at most `batch` of
    /// them, and gives their bytes back to their hosts' quota. A job whose
    /// report is gone stays `done`, without the report. Returns how many.
    pub fn prune_reports(&self, before_ms: i64, batch: u32) -> Result<usize> {
        self.chore(|tx| {
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
