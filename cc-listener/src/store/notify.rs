//! Notifications' durable half (see `crate::notify`): host conditions
//! and the kind `host` events written when one changes, the notifier's
//! cursor over the event log, each subject's state, and the queue.
//!
//! Invariants: the cursor advances in the transaction that queues what
//! the events it passes caused, so an event is turned into notifications
//! exactly once (the consumer first takes the cursor row's lock: two
//! listeners consuming at once take turns, and the second finds the
//! cursor moved). The cursor reads the log in its order, below its
//! horizon (`events`), so no event is skipped. A row is sent by whoever holds its
//! claim; a claim expires, so a listener that died while sending leaves
//! the row to the next (at least once, with the row's idempotency key).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Result;

use crate::notify::{Notice, Sink, Transition, Tuning, body, classify, transition};
use crate::sql::{Sql, p, scalar};

use super::{NewEvent, Store, json_list};

/// What one pass of the consumer did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Consumed {
    /// Events read (kind cron and host).
    pub events: usize,
    /// Notifications queued.
    pub queued: usize,
    /// Notifications dropped: the queue was full.
    pub dropped: usize,
    /// `host_offline` notifications withdrawn: the host came back within
    /// the grace.
    pub withdrawn: usize,
}

/// A queued notification this listener has claimed.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub claim: String,
    pub sink: String,
    pub event: String,
    pub hostname: String,
    pub body: String,
    pub idem_key: String,
    pub attempts: i64,
}

/// Events older than this when read move their subject's state but send
/// nothing: what a listener that ran without sinks (its cursor left
/// behind) would otherwise send once sinks are added — old news.
const STALE_MS: i64 = 3600 * 1000;

/// The longest `detail` of a `cron_refused` event.
const MAX_REFUSED_DETAIL: usize = 512;

impl Store {
    /// A host's condition `aspect` is now `state` (`ok` or bad): when that
    /// changes it, a kind `host` event `event` is written in the same
    /// transaction. Returns whether it changed.
    fn set_condition(
        tx: &mut dyn Sql,
        hostname: &str,
        aspect: &str,
        state: &str,
        event: &str,
        detail: Option<String>,
        now_ms: i64,
    ) -> Result<bool> {
        let old: Option<String> = tx
            .one(
                "SELECT state FROM host_conditions WHERE hostname = ?1 AND aspect = ?2",
                &p![hostname, aspect],
            )?
            .map(|r| r.get(0))
            .transpose()?;
        if old.as_deref().unwrap_or("ok") == state {
            return Ok(false);
        }
        tx.exec(
            "INSERT INTO host_conditions (hostname, aspect, state, since_ms)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (hostname, aspect) DO UPDATE SET state = ?3, since_ms = ?4",
            &p![hostname, aspect, state, now_ms],
        )?;
        Self::insert_event_in(
            tx,
            &NewEvent {
                at_ms: now_ms,
                kind: "host",
                job_id: String::new(),
                hostname: hostname.to_owned(),
                status: event.to_owned(),
                exit_code: None,
                detail,
            },
        )?;
        Ok(true)
    }

    /// A host registered: `online` if it was offline, `root_in_user_mode`
    /// or `root_cleared` when that changed ([`RegisterWrite`](super::RegisterWrite)
    /// does this in its group's transaction).
    pub fn note_registration(
        &self,
        hostname: &str,
        root_in_user_mode: bool,
        now_ms: i64,
    ) -> Result<()> {
        self.write(|tx| Self::note_registration_in(tx, hostname, root_in_user_mode, now_ms))
    }

    /// [`Store::note_registration`] in the caller's transaction: two point
    /// reads, and a write only when a condition changed.
    pub(super) fn note_registration_in(
        tx: &mut dyn Sql,
        hostname: &str,
        root_in_user_mode: bool,
        now_ms: i64,
    ) -> Result<()> {
        Self::set_condition(tx, hostname, "connection", "ok", "online", None, now_ms)?;
        if root_in_user_mode {
            Self::set_condition(
                tx,
                hostname,
                "root",
                "root_in_user_mode",
                "root_in_user_mode",
                Some("the agent runs as root in user mode".into()),
                now_ms,
            )?;
        } else {
            Self::set_condition(tx, hostname, "root", "ok", "root_cleared", None, now_ms)?;
        }
        Ok(())
    }

    /// A host's connection ended (not replaced, not this listener
    /// stopping): `offline` ([`TouchWrite`](super::TouchWrite) with
    /// `offline` does this in its group's transaction).
    pub fn note_offline(&self, hostname: &str, now_ms: i64) -> Result<()> {
        self.write(|tx| Self::note_offline_in(tx, hostname, now_ms))
    }

    pub(super) fn note_offline_in(tx: &mut dyn Sql, hostname: &str, now_ms: i64) -> Result<()> {
        Self::set_condition(
            tx,
            hostname,
            "connection",
            "offline",
            "offline",
            None,
            now_ms,
        )
        .map(|_| ())
    }

    /// A host's cron status: `cron_refused` (the refused ids and reasons
    /// in `detail`, one line, bounded) when it refuses entries and did not
    /// before, `cron_accepted` when it refuses none and did before.
    pub fn note_cron_status(
        &self,
        hostname: &str,
        status: &cc_proto::wire::CronStatus,
        now_ms: i64,
    ) -> Result<()> {
        self.write(|tx| {
            if status.rejected.is_empty() {
                Self::set_condition(tx, hostname, "cron", "ok", "cron_accepted", None, now_ms)?;
            } else {
                let mut detail = status
                    .rejected
                    .iter()
                    .map(|r| format!("{}: {}", r.id, r.reason))
                    .collect::<Vec<_>>()
                    .join("; ")
                    .replace(|c: char| c.is_control(), " ");
                if detail.len() > MAX_REFUSED_DETAIL {
                    let mut end = MAX_REFUSED_DETAIL;
                    while !detail.is_char_boundary(end) {
                        end -= 1;
                    }
                    detail.truncate(end);
                    detail.push('…');
                }
                Self::set_condition(
                    tx,
                    hostname,
                    "cron",
                    "cron_refused",
                    "cron_refused",
                    Some(detail),
                    now_ms,
                )?;
            }
            Ok(())
        })
    }

    /// Turns the events after the cursor (at most `limit` of kind cron and
    /// host) into queued notifications for `sinks`, and advances the
    /// cursor, in one transaction.
    pub fn notify_consume(
        &self,
        now_ms: i64,
        sinks: &[Arc<Sink>],
        tuning: &Tuning,
        limit: u32,
    ) -> Result<Consumed> {
        self.write(|tx| {
            // Taking the cursor's row lock first: two listeners consuming
            // at once take turns, and the second reads the cursor the
            // first moved (under READ COMMITTED the `UPDATE` reads the
            // row as committed once the lock is free).
            let cursor: i64 = scalar(
                tx,
                "UPDATE notify_cursor SET last_event_id = last_event_id WHERE id = 1
                 RETURNING last_event_id",
                &[],
            )?;
            let start = super::events::place_of(tx, cursor)?;
            let (from, start_tx) = match start {
                Some(place) => ("(e.tx, e.id) > (?2, ?1)", place.tx),
                None => ("e.id > ?1 AND CAST(?2 AS BIGINT) IS NOT NULL", 0),
            };
            let horizon = super::events::horizon(tx.dialect());
            let rows = tx.query(
                &format!(
                    "SELECT e.id, e.at_ms, e.kind, e.job_id, e.hostname, e.status, e.exit_code,
                            e.detail, e.tx
                     FROM events e WHERE {from} AND e.tx < {horizon}
                       AND e.kind IN ('cron', 'host')
                     ORDER BY e.tx, e.id LIMIT ?3"
                ),
                &p![cursor, start_tx, limit],
            )?;
            let next = if rows.len() as u64 == u64::from(limit) {
                rows.last().map_or(Ok(cursor), |r| r.get(0))?
            } else {
                // Everything up to the final log's end (job events
                // included) is read.
                match super::events::last_place(tx)? {
                    Some(end) if start.is_none_or(|s| end > s) => end.id,
                    _ => cursor,
                }
            };
            // The states of the batch's hosts, in one read: only subjects
            // not ok have a row, so a batch of runs that succeed, on hosts
            // with nothing wrong, reads one empty result and writes none.
            let (last_tx, last_id) = match rows.last() {
                Some(r) => (r.get(8)?, r.get(0)?),
                None => (start_tx, cursor),
            };
            let mut states = HashMap::new();
            for r in tx.query(
                &format!(
                    "SELECT s.hostname, s.aspect, s.subject, s.state FROM notify_state s
                     WHERE s.hostname IN (SELECT e.hostname FROM events e
                                          WHERE {from} AND (e.tx, e.id) <= (?3, ?4)
                                            AND e.kind IN ('cron', 'host'))"
                ),
                &p![cursor, start_tx, last_tx, last_id],
            )? {
                states.insert((r.get(0)?, r.get(1)?, r.get(2)?), r.get::<String>(3)?);
            }
            let mut pass = Pass {
                states,
                sinks,
                now_ms,
                grace: i64::try_from(tuning.offline_grace.as_millis()).unwrap_or(i64::MAX / 4),
                queue_max: i64::try_from(tuning.queue_max).unwrap_or(i64::MAX),
                depth: scalar(tx, "SELECT count(*) FROM notify_queue", &[])?,
                tags: HashMap::new(),
                out: Consumed {
                    events: rows.len(),
                    ..Consumed::default()
                },
            };
            for r in &rows {
                let e = Ev {
                    id: r.get(0)?,
                    at_ms: r.get(1)?,
                    kind: r.get(2)?,
                    job_id: r.get(3)?,
                    hostname: r.get(4)?,
                    status: r.get(5)?,
                    exit_code: r.get(6)?,
                    detail: r.get(7)?,
                };
                pass.event(tx, &e)?;
            }
            tx.exec(
                "UPDATE notify_cursor SET last_event_id = ?1 WHERE id = 1",
                &p![next],
            )?;
            Ok(pass.out)
        })
    }

    /// Claims up to `max` due rows for `claim_ms` (rows whose claim ran
    /// out included: their sender died). The condition is repeated outside
    /// the subquery: on PostgreSQL a row another listener claimed while
    /// this `UPDATE` waited for its lock is checked again as committed,
    /// and left to that listener.
    pub fn notify_claim(&self, now_ms: i64, claim_ms: i64, max: u32) -> Result<Vec<Claimed>> {
        let claim = uuid::Uuid::new_v4().to_string();
        self.write(|tx| {
            let n = tx.exec(
                "UPDATE notify_queue SET claim = ?1, claim_until_ms = ?2
                 WHERE id IN (SELECT id FROM notify_queue
                              WHERE next_ms <= ?3 AND (claim_until_ms IS NULL OR claim_until_ms <= ?3)
                              ORDER BY next_ms, id LIMIT ?4)
                   AND next_ms <= ?3 AND (claim_until_ms IS NULL OR claim_until_ms <= ?3)",
                &p![claim, now_ms + claim_ms, now_ms, max],
            )?;
            if n == 0 {
                return Ok(Vec::new());
            }
            tx.query(
                "SELECT id, sink, event, hostname, body, idem_key, attempts
                 FROM notify_queue WHERE claim = ?1 ORDER BY id",
                &p![claim],
            )?
            .iter()
            .map(|r| {
                Ok(Claimed {
                    id: r.get(0)?,
                    claim: claim.clone(),
                    sink: r.get(1)?,
                    event: r.get(2)?,
                    hostname: r.get(3)?,
                    body: r.get(4)?,
                    idem_key: r.get(5)?,
                    attempts: r.get(6)?,
                })
            })
            .collect()
        })
    }

    /// Delivered (or given up): the row goes, if this claim still holds it.
    pub fn notify_done(&self, id: i64, claim: &str) -> Result<()> {
        self.write(|tx| {
            tx.exec(
                "DELETE FROM notify_queue WHERE id = ?1 AND claim = ?2",
                &p![id, claim],
            )
        })?;
        Ok(())
    }

    /// Not delivered: tried again from `next_ms`.
    pub fn notify_retry(&self, id: i64, claim: &str, next_ms: i64) -> Result<()> {
        self.write(|tx| {
            tx.exec(
                "UPDATE notify_queue SET attempts = attempts + 1, next_ms = ?3,
                     claim = NULL, claim_until_ms = NULL
                 WHERE id = ?1 AND claim = ?2",
                &p![id, claim, next_ms],
            )
        })?;
        Ok(())
    }

    /// Queues a test notification; false when the queue is full.
    pub fn notify_enqueue_test(
        &self,
        sink: &str,
        body: &str,
        key: &str,
        now_ms: i64,
        queue_max: u64,
    ) -> Result<bool> {
        self.write(|tx| {
            let depth: i64 = scalar(tx, "SELECT count(*) FROM notify_queue", &[])?;
            if depth >= i64::try_from(queue_max).unwrap_or(i64::MAX) {
                return Ok(false);
            }
            tx.exec(
                "INSERT INTO notify_queue (sink, event, hostname, subject, body, idem_key,
                     created_ms, next_ms, attempts)
                 VALUES (?1, 'test', '', '', ?2, ?3, ?4, ?4, 0)",
                &p![sink, body, key, now_ms],
            )?;
            Ok(true)
        })
    }

    /// Rows queued per sink (delivered rows are deleted).
    pub fn notify_depths(&self) -> Result<Vec<(String, i64)>> {
        self.read(|c| {
            c.query(
                "SELECT sink, count(*) FROM notify_queue GROUP BY sink ORDER BY sink",
                &[],
            )?
            .iter()
            .map(|r| Ok((r.get(0)?, r.get(1)?)))
            .collect()
        })
    }
}

/// An event the consumer reads.
struct Ev {
    id: i64,
    at_ms: i64,
    kind: String,
    job_id: String,
    hostname: String,
    status: String,
    exit_code: Option<i64>,
    detail: Option<String>,
}

/// One pass of the consumer over a batch of events, in its transaction.
struct Pass<'a> {
    /// (hostname, aspect, subject) → state, for the subjects not ok.
    states: HashMap<(String, String, String), String>,
    sinks: &'a [Arc<Sink>],
    now_ms: i64,
    grace: i64,
    queue_max: i64,
    /// Rows in the queue now.
    depth: i64,
    /// Bound tags of the hosts seen, read once.
    tags: HashMap<String, Vec<String>>,
    out: Consumed,
}

impl Pass<'_> {
    /// The state of the event's subject moves; a change queues its
    /// notifications.
    fn event(&mut self, tx: &mut dyn Sql, e: &Ev) -> Result<()> {
        let Some((aspect, fixed, new)) = classify(&e.kind, &e.status, e.exit_code) else {
            return Ok(());
        };
        let subject = fixed.unwrap_or(e.job_id.as_str());
        let at = (e.hostname.clone(), aspect.to_owned(), subject.to_owned());
        let old = self.states.get(&at).map_or("ok", String::as_str);
        let Some(change) = transition(old, new) else {
            return Ok(());
        };
        if new == "ok" {
            tx.exec(
                "DELETE FROM notify_state WHERE hostname = ?1 AND aspect = ?2 AND subject = ?3",
                &p![e.hostname, aspect, subject],
            )?;
            self.states.remove(&at);
        } else {
            tx.exec(
                "INSERT INTO notify_state (hostname, aspect, subject, state, since_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (hostname, aspect, subject) DO UPDATE SET state = ?4, since_ms = ?5",
                &p![e.hostname, aspect, subject, new, e.at_ms],
            )?;
            self.states.insert(at, new.to_owned());
        }
        if e.at_ms < self.now_ms - STALE_MS {
            return Ok(());
        }
        let (event, bad, recovered_from, not_before) = match change {
            Transition::Failing(b) if b == "host_offline" => (b, b, None, e.at_ms + self.grace),
            Transition::Failing(b) => (b, b, None, self.now_ms),
            Transition::Recovered(from) => {
                if from == "host_offline" {
                    // Back within the grace: the offline notice not yet
                    // sent is withdrawn, and no recovery is sent.
                    let n = tx.exec(
                        "DELETE FROM notify_queue WHERE hostname = ?1
                         AND event = 'host_offline' AND attempts = 0
                         AND claim IS NULL AND next_ms > ?2",
                        &p![e.hostname, self.now_ms],
                    )?;
                    if n > 0 {
                        self.out.withdrawn += n;
                        self.depth -= i64::try_from(n).unwrap_or(0);
                        return Ok(());
                    }
                }
                ("recovered", from, Some(from), self.now_ms)
            }
        };
        let notice = Notice {
            key: "",
            sink: "",
            event,
            recovered_from,
            hostname: &e.hostname,
            entry: (aspect == "cron").then_some(e.job_id.as_str()),
            status: &e.status,
            exit_code: e.exit_code,
            detail: e.detail.as_deref(),
            at_ms: e.at_ms,
        };
        for sink in self.sinks.iter().filter(|s| s.wants(bad)) {
            if !sink.reaches(&e.hostname, self.bound_tags(tx, sink, &e.hostname)?) {
                continue;
            }
            if self.depth >= self.queue_max {
                self.out.dropped += 1;
                continue;
            }
            let key = format!("ev{}.{}", e.id, sink.name);
            let text = body(
                sink.format,
                &Notice {
                    key: &key,
                    sink: &sink.name,
                    ..notice.clone()
                },
            );
            let n = tx.exec(
                "INSERT INTO notify_queue (sink, event, hostname, subject, body, idem_key,
                     created_ms, next_ms, attempts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0)
                 ON CONFLICT (idem_key) DO NOTHING",
                &p![
                    sink.name,
                    event,
                    e.hostname,
                    subject,
                    text,
                    key,
                    self.now_ms,
                    not_before
                ],
            )?;
            self.out.queued += n;
            self.depth += i64::try_from(n).unwrap_or(0);
        }
        Ok(())
    }

    /// The host's bound tags when `sink` selects by them (read once per
    /// pass), else none.
    fn bound_tags(&mut self, tx: &mut dyn Sql, sink: &Sink, hostname: &str) -> Result<&[String]> {
        if sink.hosts.is_none() {
            return Ok(&[]);
        }
        if !self.tags.contains_key(hostname) {
            let t = tx
                .one(
                    "SELECT tags FROM api_keys WHERE hostname = ?1
                     AND revoked_ms IS NULL AND tags IS NOT NULL",
                    &p![hostname],
                )?
                .map(|r| r.get::<String>(0))
                .transpose()?
                .map(|t| json_list(&t))
                .unwrap_or_default();
            self.tags.insert(hostname.to_owned(), t);
        }
        Ok(self.tags.get(hostname).map_or(&[][..], Vec::as_slice))
    }
}
