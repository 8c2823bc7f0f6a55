//! `cc-listener migrate`: a SQLite store copied into PostgreSQL.
//!
//! Invariants: one transaction, into a database that holds nothing; ids
//! are kept and the sequences continue after them.

use anyhow::{Context, Result};

use crate::sql::{P, scalar};

use super::{Dialect, Store};

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
        "hostname, os, arch, tags, execution_mode, is_root, first_seen_ms, last_seen_ms, cron_status, cron_host",
    ),
    (
        "cron_sets",
        "hostname",
        false,
        "hostname, entries, updated_ms, signed",
    ),
    (
        "fleet_cron",
        "one",
        true,
        "one, generation, entries, updated_ms",
    ),
    (
        "fleet_signed",
        "hostname",
        false,
        "hostname, signed, updated_ms",
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
        "run_id, command, args, timeout_secs, batch, selector, queue_ttl_ms, created_ms, submitter",
    ),
    (
        "jobs",
        "rowid",
        true,
        "job_id, hostname, command, args, timeout_secs, status, created_ms, expires_ms, sent_ms,
         finished_ms, report_id, signed, run_id, submitter",
    ),
    (
        "events",
        "id",
        true,
        "id, at_ms, job_id, run_id, hostname, status, exit_code, kind, detail",
    ),
    (
        "operators",
        "name",
        false,
        "name, role, hosts, token_hash, created_ms, expires_ms, revoked_ms",
    ),
    (
        "audit",
        "seq",
        true,
        "seq, at_ms, operator, source, action, target, ids, outcome, prev_hash, hash",
    ),
    (
        "notify_state",
        "hostname || '/' || aspect || '/' || subject",
        false,
        "hostname, aspect, subject, state, since_ms",
    ),
    (
        "host_conditions",
        "hostname || '/' || aspect",
        false,
        "hostname, aspect, state, since_ms",
    ),
    (
        "notify_queue",
        "id",
        true,
        "id, sink, event, hostname, subject, body, idem_key, created_ms, next_ms, attempts,
         claim, claim_until_ms",
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
                "ALTER TABLE jobs DISABLE TRIGGER jobs_created;
                 ALTER TABLE jobs DISABLE TRIGGER jobs_changed;",
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
                "ALTER TABLE jobs ENABLE TRIGGER jobs_created;
                 ALTER TABLE jobs ENABLE TRIGGER jobs_changed;",
            )?;
            // The chain's head and anchor come along: the copied log
            // verifies as it did.
            let head = self.read(|c| {
                c.one(
                    "SELECT last_seq, last_hash, anchor_seq, anchor_hash FROM audit_head WHERE id = 1",
                    &[],
                )
            })?;
            if let Some(h) = head {
                let values: Vec<P<'_>> = h.0.iter().map(crate::sql::V::as_p).collect();
                tx.exec(
                    "UPDATE audit_head SET last_seq = ?1, last_hash = ?2, anchor_seq = ?3,
                     anchor_hash = ?4 WHERE id = 1",
                    &values,
                )?;
            }
            // The notifier goes on from where the source's stopped (the
            // copied events are not notified again).
            let cursor: i64 = self.read(|c| {
                scalar(c, "SELECT last_event_id FROM notify_cursor WHERE id = 1", &[])
            })?;
            tx.exec(
                "UPDATE notify_cursor SET last_event_id = ?1 WHERE id = 1",
                &[P::Int(cursor)],
            )?;
            for (table, col) in [
                ("notify_queue", "id"),
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
