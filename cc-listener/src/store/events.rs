//! Events: every change of a job's status, written by the database
//! itself in the transaction that makes it.

use anyhow::Result;

use crate::sql::{p, scalar};

use super::{EventFilter, EventRow, Store};

impl Store {
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

    /// The newest event's id (0 when there is none): where a page that
    /// shows the present starts following the stream.
    pub fn last_event_id(&self) -> Result<i64> {
        self.read(|c| scalar(c, "SELECT coalesce(max(id), 0) FROM events", &[]))
    }
}
