//! The audit log: one row per state-changing request, login, failed login
//! and refusal, in a hash chain.
//!
//! Each row's `hash` is the SHA-256 of its canonical form ([`canonical`]:
//! a JSON array of its sequence number, time, operator, source, action,
//! target, ids, outcome and `prev_hash`), and `prev_hash` is the hash of
//! the row before it; the first row's `prev_hash` is the anchor (64 zeros, set by the migration,
//! or the hash of the last row pruned). Editing a row breaks its own hash;
//! deleting one breaks the sequence and the next row's link; cutting the
//! end off disagrees with `audit_head`, which records the last row.
//!
//! Appends are serialised: each first updates the one row of
//! `audit_head` (`last_seq = last_seq + 1 … RETURNING`), which on
//! PostgreSQL takes that row's lock until the commit, so two listeners
//! appending at once chain one after the other, never both after the
//! same row (the second's `UPDATE` waits, then reads the head the first
//! committed). SQLite's single writer serialises them anyway.
//!
//! What the chain does not do: someone who can write the database can
//! rewrite every row after the one they change and the head, and the
//! chain verifies. The JSON line each row also goes to in the log (target
//! `audit`, for a SIEM) is the copy kept elsewhere that catches that.

use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::sql::{Row, Sql, p};

use super::Store;

/// What happened, as the listener records it (never a secret: no token,
/// no body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub at_ms: i64,
    /// The operator's name, or `-` when nobody was authenticated.
    pub operator: String,
    /// The peer's address.
    pub source: String,
    /// Method and route template: `POST /api/v1/agents/{hostname}/jobs`.
    pub action: String,
    /// The host or name the path named, or `-`.
    pub target: String,
    /// The job and run ids the request made, if any.
    pub ids: Vec<String>,
    /// The HTTP status answered.
    pub outcome: u16,
}

/// A stored row: its entry and its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRow {
    pub seq: i64,
    #[serde(flatten)]
    pub entry: AuditEntry,
    pub prev_hash: String,
    pub hash: String,
}

/// What [`Store::verify_audit`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every row from the anchor to the head chains.
    Ok { rows: u64, anchor_seq: i64 },
    /// The first row that does not: its sequence number and why.
    Bad { seq: i64, reason: String },
}

/// The canonical form a row's hash is taken over.
pub(super) fn canonical(seq: i64, e: &AuditEntry, prev_hash: &str) -> String {
    serde_json::json!([
        seq, e.at_ms, e.operator, e.source, e.action, e.target, e.ids, e.outcome, prev_hash
    ])
    .to_string()
}

/// SHA-256 of [`canonical`], hex.
pub(super) fn row_hash(seq: i64, e: &AuditEntry, prev_hash: &str) -> String {
    hex::encode(Sha256::digest(canonical(seq, e, prev_hash).as_bytes()))
}

const AUDIT_COLUMNS: &str =
    "seq, at_ms, operator, source, action, target, ids, outcome, prev_hash, hash";

fn audit_row(r: &Row) -> Result<AuditRow> {
    let ids: String = r.get(6)?;
    let outcome: i64 = r.get(7)?;
    Ok(AuditRow {
        seq: r.get(0)?,
        entry: AuditEntry {
            at_ms: r.get(1)?,
            operator: r.get(2)?,
            source: r.get(3)?,
            action: r.get(4)?,
            target: r.get(5)?,
            ids: serde_json::from_str(&ids)
                .with_context(|| format!("audit row's ids {ids:?} are not a JSON list"))?,
            outcome: u16::try_from(outcome).unwrap_or(0),
        },
        prev_hash: r.get(8)?,
        hash: r.get(9)?,
    })
}

/// `audit_head`: (last_seq, last_hash, anchor_seq, anchor_hash).
type Head = (i64, String, i64, String);

fn head(c: &mut dyn Sql) -> Result<Head> {
    let r = c
        .one(
            "SELECT last_seq, last_hash, anchor_seq, anchor_hash FROM audit_head WHERE id = 1",
            &[],
        )?
        .context("the audit log's head row is missing")?;
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

/// Rows verified per read.
const VERIFY_PAGE: i64 = 1000;

impl Store {
    /// Appends `entry` to the chain and returns the stored row.
    pub fn append_audit(&self, entry: &AuditEntry) -> Result<AuditRow> {
        let ids = serde_json::to_string(&entry.ids)?;
        self.write(|tx| {
            // The row lock that serialises appends (module comment).
            let r = tx
                .one(
                    "UPDATE audit_head SET last_seq = last_seq + 1 WHERE id = 1
                     RETURNING last_seq, last_hash",
                    &[],
                )?
                .context("the audit log's head row is missing")?;
            let (seq, prev_hash): (i64, String) = (r.get(0)?, r.get(1)?);
            let hash = row_hash(seq, entry, &prev_hash);
            tx.exec(
                &format!("INSERT INTO audit ({AUDIT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
                &p![
                    seq,
                    entry.at_ms,
                    entry.operator,
                    entry.source,
                    entry.action,
                    entry.target,
                    ids,
                    i64::from(entry.outcome),
                    prev_hash,
                    hash
                ],
            )?;
            tx.exec(
                "UPDATE audit_head SET last_hash = ?1 WHERE id = 1",
                &p![hash],
            )?;
            Ok(AuditRow {
                seq,
                entry: entry.clone(),
                prev_hash,
                hash,
            })
        })
    }

    /// The newest `limit` rows at or after `since_ms`, of `operator` if
    /// given, oldest first.
    pub fn list_audit(
        &self,
        since_ms: Option<i64>,
        operator: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditRow>> {
        let mut rows = self.read(|c| {
            c.query(
                &format!(
                    "SELECT {AUDIT_COLUMNS} FROM audit
                     WHERE (CAST(?1 AS BIGINT) IS NULL OR at_ms >= ?1)
                       AND (CAST(?2 AS TEXT) IS NULL OR operator = ?2)
                     ORDER BY seq DESC LIMIT ?3"
                ),
                &p![since_ms, operator, limit],
            )?
            .iter()
            .map(audit_row)
            .collect::<Result<Vec<_>>>()
        })?;
        rows.reverse();
        Ok(rows)
    }

    /// Checks the chain from the anchor to the head: the first row that
    /// was edited, deleted, or is missing from the end, named.
    pub fn verify_audit(&self) -> Result<Verdict> {
        // A prune between reading the head and the first rows moves the
        // anchor: verified again from the new one.
        for _ in 0..3 {
            let (verdict, anchor) = self.verify_once()?;
            let moved = self.read(head)?.2 != anchor;
            if !moved || matches!(verdict, Verdict::Ok { .. }) {
                return Ok(verdict);
            }
        }
        self.verify_once().map(|(v, _)| v)
    }

    fn verify_once(&self) -> Result<(Verdict, i64)> {
        let (last_seq, last_hash, anchor_seq, anchor_hash) = self.read(head)?;
        let (mut want_seq, mut want_prev) = (anchor_seq + 1, anchor_hash);
        let mut rows = 0u64;
        loop {
            let page = self.read(|c| {
                c.query(
                    &format!(
                        "SELECT {AUDIT_COLUMNS} FROM audit WHERE seq > ?1 AND seq <= ?2
                         ORDER BY seq LIMIT ?3"
                    ),
                    &p![want_seq - 1, last_seq, VERIFY_PAGE],
                )
            })?;
            for r in &page {
                let seq: i64 = r.get(0)?;
                let row = match audit_row(r) {
                    Ok(row) => row,
                    Err(e) => return Ok((bad(seq, format!("unreadable: {e:#}")), anchor_seq)),
                };
                if let Some(why) = check_row(&row, want_seq, &want_prev) {
                    return Ok((bad(row.seq.min(want_seq), why), anchor_seq));
                }
                want_seq = row.seq + 1;
                want_prev = row.hash;
                rows += 1;
            }
            if (page.len() as i64) < VERIFY_PAGE {
                break;
            }
        }
        if want_seq - 1 != last_seq {
            let why = format!(
                "rows {want_seq} to {last_seq} are missing from the end (the head records {last_seq})"
            );
            return Ok((bad(want_seq, why), anchor_seq));
        }
        if want_prev != last_hash {
            let why = "is not the last row the head records (its hash differs)".to_owned();
            return Ok((bad(last_seq, why), anchor_seq));
        }
        Ok((Verdict::Ok { rows, anchor_seq }, anchor_seq))
    }

    /// Deletes the rows older than `before_ms` at the start of the chain
    /// (at most `batch`), keeping the last deleted row's hash as the
    /// anchor the next row chains from. Returns how many.
    pub fn prune_audit(&self, before_ms: i64, batch: u32) -> Result<usize> {
        self.chore(|tx| {
            let oldest = tx.query(
                "SELECT seq, at_ms, hash FROM audit ORDER BY seq LIMIT ?1",
                &p![batch],
            )?;
            let mut last: Option<(i64, String)> = None;
            for r in &oldest {
                let at: i64 = r.get(1)?;
                if at >= before_ms {
                    break;
                }
                last = Some((r.get(0)?, r.get(2)?));
            }
            let Some((seq, hash)) = last else {
                return Ok(0);
            };
            let n = tx.exec("DELETE FROM audit WHERE seq <= ?1", &p![seq])?;
            tx.exec(
                "UPDATE audit_head SET anchor_seq = ?1, anchor_hash = ?2 WHERE id = 1",
                &p![seq, hash],
            )?;
            Ok(n)
        })
    }
}

fn bad(seq: i64, reason: String) -> Verdict {
    Verdict::Bad { seq, reason }
}

/// Why `row`, expected at `want_seq` after a row whose hash is
/// `want_prev`, breaks the chain; `None` when it does not.
fn check_row(row: &AuditRow, want_seq: i64, want_prev: &str) -> Option<String> {
    if row.seq != want_seq {
        let gap = if row.seq == want_seq + 1 {
            format!("row {want_seq} is missing")
        } else {
            format!("rows {want_seq} to {} are missing", row.seq - 1)
        };
        return Some(format!(
            "{gap}: row {} follows row {}",
            row.seq,
            want_seq - 1
        ));
    }
    if row_hash(row.seq, &row.entry, &row.prev_hash) != row.hash {
        return Some("its contents do not match its hash: the row was edited".into());
    }
    if row.prev_hash != want_prev {
        return Some(format!(
            "its prev_hash is not the hash of row {}: a row before it was changed or replaced",
            want_seq - 1
        ));
    }
    None
}
