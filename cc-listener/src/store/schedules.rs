//! Scheduled runs: what the missed-run tracker ([`crate::schedules`])
//! reads (each host's effective list and time zone) and writes (a missed
//! run, once, with its event), and what status pages read (each entry's
//! last scheduled run).
//!
//! Invariants: a missed run is recorded at most once per (host, entry,
//! due minute) whichever listener sees it — the `schedule_misses` row's
//! primary key decides, and only the insert that wins writes the `missed`
//! event, in the same transaction. A listener does not record a run of a
//! host another live listener holds (that one sees its reports). The
//! `done` / `skipped` events are written where reports are stored
//! (`reports.rs`), in the report's transaction.

use anyhow::Result;

use cc_proto::wire::{CronEntry, CronHost};

use crate::schedules::{Missed, Reason};
use crate::sql::{Sql, p};

use super::{NewEvent, Store};

/// One host as the tracker loads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleHost {
    pub hostname: String,
    /// The host's IANA time zone, as its agent said (`cronHost`).
    pub time_zone: Option<String>,
    pub entries: Vec<CronEntry>,
    /// Held by another listener whose lease is live: that one tracks it.
    pub held_elsewhere: bool,
}

/// What became of a run the tracker found missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissOutcome {
    /// Recorded, with its event.
    Recorded(Reason),
    /// Recorded already (by another listener).
    Duplicate,
    /// The host is held by another live listener: that one decides.
    Elsewhere,
    /// A report of the entry came (through another listener) after the
    /// run was due.
    Reported,
}

/// An entry's last scheduled run, for status pages (`lastStatus`,
/// `missed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastScheduled {
    pub entry_id: String,
    /// `done` (exit 0), `failed` (another exit code), `skipped` or
    /// `missed`.
    pub status: &'static str,
    pub at_ms: i64,
    pub exit_code: Option<i64>,
    /// Why it was missed.
    pub detail: Option<String>,
    /// Runs of the entry recorded missed in the 24 hours before the
    /// question.
    pub missed_24h: u64,
}

const DAY_MS: i64 = 24 * 3600 * 1000;

impl Store {
    /// Hosts after `after` (by name), at most `limit`, with their
    /// effective lists and time zones: the tracker's full resync.
    pub fn schedule_page(
        &self,
        after: Option<&str>,
        limit: u32,
        now_ms: i64,
    ) -> Result<Vec<ScheduleHost>> {
        let me = self.holder.clone();
        let rows = self.read(|c| {
            c.query(
                "SELECT a.hostname, a.cron_host,
                        a.listener IS NOT NULL AND a.listener <> COALESCE(CAST(?3 AS TEXT), '')
                        AND EXISTS (SELECT 1 FROM listeners l
                                    WHERE l.name = a.listener AND l.lease_ms > ?4)
                 FROM agents a
                 WHERE CAST(?1 AS TEXT) IS NULL OR a.hostname > ?1
                 ORDER BY a.hostname LIMIT ?2",
                &p![after, limit, me, now_ms],
            )?
            .iter()
            .map(|r| {
                Ok((
                    r.get::<String>(0)?,
                    r.get::<Option<String>>(1)?,
                    r.get::<bool>(2)?,
                ))
            })
            .collect::<Result<Vec<_>>>()
        })?;
        rows.into_iter()
            .map(|(hostname, cron_host, held_elsewhere)| {
                let entries = self.effective_cron(&hostname)?;
                Ok(ScheduleHost {
                    time_zone: time_zone(cron_host.as_deref()),
                    hostname,
                    entries,
                    held_elsewhere,
                })
            })
            .collect()
    }

    /// One host as [`Store::schedule_page`] reads it; `None` if unknown.
    pub fn schedule_host(&self, hostname: &str, now_ms: i64) -> Result<Option<ScheduleHost>> {
        let me = self.holder.clone();
        let row = self.read(|c| {
            c.one(
                "SELECT a.cron_host,
                        a.listener IS NOT NULL AND a.listener <> COALESCE(CAST(?2 AS TEXT), '')
                        AND EXISTS (SELECT 1 FROM listeners l
                                    WHERE l.name = a.listener AND l.lease_ms > ?3)
                 FROM agents a WHERE a.hostname = ?1",
                &p![hostname, me, now_ms],
            )?
            .map(|r| Ok((r.get::<Option<String>>(0)?, r.get::<bool>(1)?)))
            .transpose()
        })?;
        let Some((cron_host, held_elsewhere)) = row else {
            return Ok(None);
        };
        Ok(Some(ScheduleHost {
            hostname: hostname.to_owned(),
            time_zone: time_zone(cron_host.as_deref()),
            entries: self.effective_cron(hostname)?,
            held_elsewhere,
        }))
    }

    /// Records the runs the tracker found missed, in one transaction:
    /// each with the reason the listener can see, at most once per (host,
    /// entry, due), with a `missed` event of kind `cron`.
    pub fn record_missed(&self, missed: &[Missed], now_ms: i64) -> Result<Vec<MissOutcome>> {
        let me = self.holder.clone();
        self.write(|tx| {
            missed
                .iter()
                .map(|m| Self::record_missed_in(tx, me.as_deref(), m, now_ms))
                .collect()
        })
    }

    fn record_missed_in(
        tx: &mut dyn Sql,
        me: Option<&str>,
        m: &Missed,
        now_ms: i64,
    ) -> Result<MissOutcome> {
        let row = tx.one(
            "SELECT a.listener, a.cron_host,
                    EXISTS (SELECT 1 FROM listeners l
                            WHERE l.name = a.listener AND l.lease_ms > ?2)
             FROM agents a WHERE a.hostname = ?1",
            &p![m.hostname, now_ms],
        )?;
        let (holder, cron_host, live) = match row {
            Some(r) => (
                r.get::<Option<String>>(0)?,
                r.get::<Option<String>>(1)?,
                r.get::<bool>(2)?,
            ),
            None => (None, None, false),
        };
        let held = holder.is_some() && live;
        let held_here = held && holder.as_deref() == me;
        if held && !held_here {
            return Ok(MissOutcome::Elsewhere);
        }
        if !held_here {
            // Reports of a host this listener does not hold may have come
            // through another listener while the run was open.
            let reported: bool = tx
                .one(
                    "SELECT EXISTS (SELECT 1 FROM reports
                                    WHERE hostname = ?1 AND job_id = ?2 AND received_ms >= ?3)",
                    &p![m.hostname, m.entry_id, m.due_ms],
                )?
                .map(|r| r.get(0))
                .transpose()?
                .unwrap_or(false);
            if reported {
                return Ok(MissOutcome::Reported);
            }
        }
        let reason = if !held {
            Reason::HostOffline
        } else {
            let host: Option<CronHost> = cron_host
                .as_deref()
                .and_then(|t| serde_json::from_str(t).ok());
            match host {
                Some(h) if h.daemon.is_none() => Reason::NoCronDaemon,
                _ => Reason::None,
            }
        };
        let inserted = tx.exec(
            "INSERT INTO schedule_misses (hostname, entry_id, due_ms, reason, at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
            &p![m.hostname, m.entry_id, m.due_ms, reason.as_str(), now_ms],
        )?;
        if inserted == 0 {
            return Ok(MissOutcome::Duplicate);
        }
        Self::insert_event_in(
            tx,
            &NewEvent {
                at_ms: now_ms,
                kind: "cron",
                job_id: m.entry_id.clone(),
                hostname: m.hostname.clone(),
                status: "missed".into(),
                exit_code: None,
                detail: Some(reason.as_str().into()),
            },
        )?;
        Ok(MissOutcome::Recorded(reason))
    }

    /// Each entry's last scheduled run on `hostname` (from the event log:
    /// gone once events are pruned), by entry id.
    pub fn last_scheduled(&self, hostname: &str, now_ms: i64) -> Result<Vec<LastScheduled>> {
        self.read(|c| {
            let counts: std::collections::HashMap<String, i64> = c
                .query(
                    "SELECT entry_id, count(*) FROM schedule_misses
                     WHERE hostname = ?1 AND at_ms >= ?2 GROUP BY entry_id",
                    &p![hostname, now_ms - DAY_MS],
                )?
                .iter()
                .map(|r| Ok((r.get(0)?, r.get(1)?)))
                .collect::<Result<_>>()?;
            c.query(
                "SELECT job_id, status, at_ms, exit_code, detail FROM events
                 WHERE id IN (SELECT max(id) FROM events
                              WHERE hostname = ?1 AND kind = 'cron' GROUP BY job_id)
                 ORDER BY job_id",
                &p![hostname],
            )?
            .iter()
            .map(|r| {
                let entry_id: String = r.get(0)?;
                let status: String = r.get(1)?;
                let exit_code: Option<i64> = r.get(3)?;
                let status = match (status.as_str(), exit_code) {
                    ("done", Some(0)) => "done",
                    ("done", _) => "failed",
                    ("skipped", _) => "skipped",
                    _ => "missed",
                };
                Ok(LastScheduled {
                    missed_24h: counts
                        .get(&entry_id)
                        .map_or(0, |&n| u64::try_from(n).unwrap_or(0)),
                    entry_id,
                    status,
                    at_ms: r.get(2)?,
                    exit_code,
                    detail: r.get(4)?,
                })
            })
            .collect()
        })
    }

    /// Runs recorded missed since `since_ms`, per host (the console's fleet
    /// page: hosts whose schedules are not kept stand out).
    pub fn misses_by_host(&self, since_ms: i64) -> Result<std::collections::HashMap<String, u64>> {
        self.read(|c| {
            c.query(
                "SELECT hostname, count(*) FROM schedule_misses WHERE at_ms >= ?1 GROUP BY hostname",
                &p![since_ms],
            )?
            .iter()
            .map(|r| {
                let n: i64 = r.get(1)?;
                Ok((r.get(0)?, u64::try_from(n).unwrap_or(0)))
            })
            .collect()
        })
    }

    /// Deletes missed-run rows recorded before `before_ms` (they only keep
    /// a miss from being recorded twice while its run is recent), at most
    /// `batch`.
    pub fn prune_schedule_misses(&self, before_ms: i64, batch: u32) -> Result<usize> {
        self.chore(|tx| {
            tx.exec(
                "DELETE FROM schedule_misses WHERE (hostname, entry_id, due_ms) IN
                 (SELECT hostname, entry_id, due_ms FROM schedule_misses
                  WHERE at_ms < ?1 ORDER BY at_ms LIMIT ?2)",
                &p![before_ms, batch],
            )
        })
    }
}

fn time_zone(cron_host: Option<&str>) -> Option<String> {
    let host: CronHost = serde_json::from_str(cron_host?).ok()?;
    host.time_zone
}

/// The `done` or `skipped` event of a scheduled run's report, written in
/// the report's transaction (`reports.rs`). `payload` is the stored
/// report (our own serialisation); without a readable exit code, nothing.
pub(super) fn scheduled_report_event_in(
    tx: &mut dyn Sql,
    hostname: &str,
    entry_id: &str,
    payload: &str,
    now_ms: i64,
) -> Result<()> {
    #[derive(serde::Deserialize)]
    struct Exit {
        #[serde(rename = "exitCode")]
        exit_code: i64,
    }
    let Ok(Exit { exit_code }) = serde_json::from_str::<Exit>(payload) else {
        return Ok(());
    };
    let status = if exit_code == i64::from(crate::schedules::EXIT_SKIPPED) {
        "skipped"
    } else {
        "done"
    };
    Store::insert_event_in(
        tx,
        &NewEvent {
            at_ms: now_ms,
            kind: "cron",
            job_id: entry_id.to_owned(),
            hostname: hostname.to_owned(),
            status: status.into(),
            exit_code: Some(exit_code),
            detail: None,
        },
    )
}
