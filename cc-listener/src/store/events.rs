//! Events: every change of a job's status, written by the database
//! itself in the transaction that makes it.

use anyhow::Result;

use crate::sql::{p, scalar};

use crate::sql::Sql;

use super::{EventFilter, EventRow, NewEvent, Store};

impl Store {
    /// Events after `after` that `f` selects, oldest first, at most `limit`.
    pub fn events(&self, after: i64, f: &EventFilter, limit: u32) -> Result<Vec<EventRow>> {
        self.read(|c| {
            c.query(
                "SELECT id, at_ms, job_id, run_id, hostname, status, exit_code, kind, detail
                 FROM events
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
                    kind: r.get(7)?,
                    detail: r.get(8)?,
                })
            })
            .collect()
        })
    }

    /// Adds `e` to the event log, in the caller's transaction: it is seen
    /// by event streams once that commits, in commit order like a job's.
    pub fn insert_event_in(tx: &mut dyn Sql, e: &NewEvent) -> Result<()> {
        tx.exec(
            "INSERT INTO events (at_ms, kind, job_id, run_id, hostname, status, exit_code, detail)
             VALUES (?1, ?2, ?3, NULL, ?4, ?5, ?6, ?7)",
            &p![
                e.at_ms,
                e.kind,
                e.job_id,
                e.hostname,
                e.status,
                e.exit_code,
                e.detail
            ],
        )?;
        Ok(())
    }

    /// [`Store::insert_event_in`] in a transaction of its own.
    pub fn insert_event(&self, e: &NewEvent) -> Result<()> {
        self.write(|tx| Self::insert_event_in(tx, e))
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

    /// The newest event's id (0 when there is none): where a page that
    /// shows the present starts following the stream.
    pub fn last_event_id(&self) -> Result<i64> {
        self.read(|c| scalar(c, "SELECT coalesce(max(id), 0) FROM events", &[]))
    }
}
