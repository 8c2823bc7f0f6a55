//! Events: every change of a job's status, written by the database
//! itself in the transaction that makes it.

use anyhow::Result;

use crate::sql::{Dialect, Sql, p};

use super::{EventFilter, EventRow, NewEvent, Store};

/// Where the log is final: events of transactions older than this are
/// all committed or gone, and every transaction still to commit is newer
/// (PostgreSQL: the oldest transaction still running in the snapshot).
/// SQLite has one writer, so everything committed is final.
pub(super) fn horizon(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Sqlite => "9223372036854775807",
        Dialect::Postgres => "pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
    }
}

/// An event's place in the log: (its transaction, its id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Place {
    pub tx: i64,
    pub id: i64,
}

/// Where reading after event `after` starts: that event's place, or,
/// when it is not in the log (0, pruned, never written), `None`: then
/// the events with a larger id follow it.
pub(super) fn place_of(c: &mut dyn Sql, after: i64) -> Result<Option<Place>> {
    let tx: Option<i64> = c
        .one("SELECT tx FROM events WHERE id = ?1", &p![after])?
        .map(|r| r.get(0))
        .transpose()?;
    Ok(tx.map(|tx| Place { tx, id: after }))
}

/// The condition "after `place`" on `events e` (parameters `?1` = the id,
/// `?2` = the transaction), and whether `?2` is used.
fn after_clause(place: Option<Place>) -> (&'static str, i64) {
    match place {
        Some(p) => ("(e.tx, e.id) > (?2, ?1)", p.tx),
        // `?2` still has a type on PostgreSQL.
        None => ("e.id > ?1 AND CAST(?2 AS BIGINT) IS NOT NULL", 0),
    }
}

impl Store {
    /// Events after event `after` in log order that `f` selects, oldest
    /// first, at most `limit`.
    ///
    /// Log order is commit order: (transaction, id), read only below the
    /// horizon ([`horizon`]), so a reader that goes on after the last
    /// event it read never misses one that commits later with a smaller
    /// id (ARCHITECTURE.md, "Event order").
    pub fn events(&self, after: i64, f: &EventFilter, limit: u32) -> Result<Vec<EventRow>> {
        self.read(|c| {
            let (from, tx) = after_clause(place_of(c, after)?);
            let sql = format!(
                "SELECT e.id, e.at_ms, e.job_id, e.run_id, e.hostname, e.status, e.exit_code,
                        e.kind, e.detail
                 FROM events e
                 WHERE {from} AND e.tx < {horizon}
                   AND (CAST(?3 AS TEXT) IS NULL OR e.run_id = ?3)
                   AND (CAST(?4 AS TEXT) IS NULL OR e.hostname = ?4)
                   AND (CAST(?5 AS TEXT) IS NULL OR e.job_id = ?5)
                 ORDER BY e.tx, e.id LIMIT ?6",
                horizon = horizon(c.dialect())
            );
            c.query(&sql, &p![after, tx, f.run_id, f.hostname, f.job_id, limit])?
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
        self.chore(|tx| {
            tx.exec(
                "DELETE FROM events WHERE id IN
                 (SELECT id FROM events WHERE at_ms < ?1 ORDER BY at_ms LIMIT ?2)",
                &p![before_ms, batch],
            )
        })
    }

    /// The last final event's id (0 when there is none): where a page
    /// that shows the present starts following the stream.
    pub fn last_event_id(&self) -> Result<i64> {
        self.read(|c| Ok(last_place(c)?.map_or(0, |p| p.id)))
    }
}

/// The last event of the final part of the log ([`horizon`]).
pub(super) fn last_place(c: &mut dyn Sql) -> Result<Option<Place>> {
    let sql = format!(
        "SELECT tx, id FROM events WHERE tx < {} ORDER BY tx DESC, id DESC LIMIT 1",
        horizon(c.dialect())
    );
    c.one(&sql, &[])?
        .map(|r| {
            Ok(Place {
                tx: r.get(0)?,
                id: r.get(1)?,
            })
        })
        .transpose()
}
