//! The listener's missed-run task: owns the [`Tracker`], feeds it, and
//! records what it finds missed.
//!
//! What reaches it, and from where:
//! - a host's list and zone ([`Schedules::host_changed`], read then from the store's
//!   `effective_cron`): when the host registers and whenever its agent
//!   sends a changed `cron_status` (which it does after applying every
//!   pushed list: so a `cron set`, a fleet change or a retag reaches the
//!   tracker once the agent has it), and a full resync every
//!   [`RESYNC`] for whatever changed without either (a host that never
//!   connects again);
//! - each stored scheduled report ([`Feed::Report`]), from the connection
//!   that stored it;
//! - the time: a tick a second ([`TICK`]), so a miss is recorded within a
//!   second of its deadline (plus the store's write).
//!
//! Reports come through a bounded channel that never blocks a connection:
//! when it is full a report is dropped and counted in the log (it can make
//! a run look missed). Host changes are a set (a host changed twice is
//! read once), so a reconnection storm of 100,000 hosts is 100,000 reads
//! in pages, never a dropped change.
//!
//! Several listeners on one PostgreSQL database: each tracks the hosts it
//! holds and the hosts no live listener holds, and skips (and stops
//! tracking) a host held by another live listener when it meets one —
//! that listener sees its reports. A miss of an unheld host may be found
//! by every listener: the `schedule_misses` row (primary key host, entry,
//! due) lets one record it and write its event.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tracing::{debug, info, warn};

use super::{Fed, Tracker};
use crate::store::MissOutcome;
use crate::{AppState, now_ms};

/// How often the tracker resolves due runs.
pub const TICK: Duration = Duration::from_secs(1);

/// How often every host's list is read again.
pub const RESYNC: Duration = Duration::from_secs(600);

/// Feeds waiting for the task at most.
pub const FEED_QUEUE: usize = 65_536;

/// Hosts read per page of a resync.
const RESYNC_PAGE: u32 = 1000;

/// Missed-run rows kept (they only dedupe recent misses).
const KEEP_MISSES_MS: i64 = 2 * 24 * 3600 * 1000;

/// What the task is told, in order.
#[derive(Debug)]
pub enum Feed {
    /// A scheduled report of `entry_id` was stored; its run fired at
    /// `fire_ms`.
    Report {
        hostname: String,
        entry_id: String,
        fire_ms: i64,
    },
}

/// The handle connections feed the task through (in [`AppState`]).
#[derive(Debug, Clone)]
pub struct Schedules {
    tx: mpsc::Sender<Feed>,
    dropped: Arc<AtomicU64>,
    /// Hosts to read again, and the task's bell.
    changed: Arc<Mutex<HashSet<String>>>,
    bell: Arc<Notify>,
}

impl Schedules {
    /// The handle and the receiving end [`run`] takes.
    pub fn channel() -> (Self, mpsc::Receiver<Feed>) {
        let (tx, rx) = mpsc::channel(FEED_QUEUE);
        (
            Self {
                tx,
                dropped: Arc::default(),
                changed: Arc::default(),
                bell: Arc::default(),
            },
            rx,
        )
    }

    /// `hostname`'s list or zone may have changed.
    pub fn host_changed(&self, hostname: &str) {
        let first = {
            let mut set = self
                .changed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            set.insert(hostname.to_owned()) && set.len() == 1
        };
        if first {
            self.bell.notify_one();
        }
    }

    fn take_changed(&self) -> Vec<String> {
        let mut set = self
            .changed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        set.drain().collect()
    }

    /// A scheduled report was stored.
    pub fn reported(&self, hostname: &str, entry_id: &str, fire_ms: i64) {
        self.feed(Feed::Report {
            hostname: hostname.to_owned(),
            entry_id: entry_id.to_owned(),
            fire_ms,
        });
    }

    fn feed(&self, f: Feed) {
        if self.tx.try_send(f).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() {
                warn!(
                    dropped = n + 1,
                    "the missed-run tracker is behind: feeds dropped"
                );
            }
        }
    }
}

/// Runs the tracker until shutdown.
pub async fn run(
    state: Arc<AppState>,
    mut rx: mpsc::Receiver<Feed>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tracker = Tracker::new();
    resync(&state, &mut tracker).await;
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut resync_at = tokio::time::Instant::now() + RESYNC;
    let mut pruned_at = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            feed = rx.recv() => match feed {
                None => return,
                Some(Feed::Report { hostname, entry_id, fire_ms }) => {
                    if tracker.report(&hostname, &entry_id, fire_ms) == Fed::Unknown {
                        // A list the tracker has not read yet: read now,
                        // then count the report.
                        reload(&state, &mut tracker, vec![hostname.clone()]).await;
                        tracker.report(&hostname, &entry_id, fire_ms);
                    }
                }
            },
            () = state.schedules.bell.notified() => {
                let hosts = state.schedules.take_changed();
                for page in hosts.chunks(RESYNC_PAGE as usize) {
                    reload(&state, &mut tracker, page.to_vec()).await;
                }
            },
            _ = ticker.tick() => {
                tick(&state, &mut tracker).await;
                let now = tokio::time::Instant::now();
                if now >= resync_at {
                    resync_at = now + RESYNC;
                    resync(&state, &mut tracker).await;
                }
                if now.duration_since(pruned_at) >= Duration::from_secs(3600) {
                    pruned_at = now;
                    let before = now_ms() - KEEP_MISSES_MS;
                    if let Err(e) = state.db.call(move |s| s.prune_schedule_misses(before, 5000)).await {
                        warn!("deleting old missed-run rows failed: {e:#}");
                    }
                }
            }
        }
    }
}

async fn tick(state: &AppState, tracker: &mut Tracker) {
    let missed = tracker.tick(now_ms());
    if missed.is_empty() {
        return;
    }
    let batch = missed.clone();
    let outcomes = match state
        .db
        .call(move |s| s.record_missed(&batch, now_ms()))
        .await
    {
        Ok(o) => o,
        Err(e) => {
            warn!(runs = missed.len(), "recording missed runs failed: {e:#}");
            return;
        }
    };
    for (m, outcome) in missed.iter().zip(outcomes) {
        match outcome {
            MissOutcome::Recorded(reason) => {
                state.metrics.scheduled_missed(reason);
                info!(hostname = %m.hostname, entry_id = %m.entry_id, due_ms = m.due_ms, reason = reason.as_str(), "scheduled run missed");
            }
            MissOutcome::Elsewhere => tracker.remove(&m.hostname),
            MissOutcome::Duplicate | MissOutcome::Reported => {
                debug!(hostname = %m.hostname, entry_id = %m.entry_id, ?outcome, "miss not recorded here");
            }
        }
    }
    state.metrics.schedules_tracked(tracker.entries());
}

/// Reads `hosts`' lists again (one store call).
async fn reload(state: &AppState, tracker: &mut Tracker, hosts: Vec<String>) {
    let asked = hosts.clone();
    let read = state
        .db
        .call(move |s| {
            hosts
                .iter()
                .map(|h| s.schedule_host(h, now_ms()))
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .await;
    match read {
        Ok(found) => {
            for (hostname, host) in asked.iter().zip(found) {
                match host {
                    Some(host) if !host.held_elsewhere => tracker.set_host(
                        &host.hostname,
                        host.time_zone.as_deref(),
                        &host.entries,
                        now_ms(),
                    ),
                    _ => tracker.remove(hostname),
                }
            }
        }
        Err(e) => warn!(
            hosts = asked.len(),
            "reading cron lists for the tracker failed: {e:#}"
        ),
    }
}

/// Reads every host's list again: the ones held by another live listener
/// are dropped, hosts gone are dropped, unchanged entries keep their
/// state.
async fn resync(state: &AppState, tracker: &mut Tracker) {
    let mut after: Option<String> = None;
    let mut seen = std::collections::HashSet::new();
    loop {
        let from = after.clone();
        let page = match state
            .db
            .call(move |s| s.schedule_page(from.as_deref(), RESYNC_PAGE, now_ms()))
            .await
        {
            Ok(p) => p,
            Err(e) => {
                warn!("reading cron lists for the tracker failed: {e:#}");
                return;
            }
        };
        let last = page.last().map(|h| h.hostname.clone());
        for host in page {
            if host.held_elsewhere {
                tracker.remove(&host.hostname);
            } else {
                tracker.set_host(
                    &host.hostname,
                    host.time_zone.as_deref(),
                    &host.entries,
                    now_ms(),
                );
                seen.insert(host.hostname);
            }
        }
        match last {
            Some(l) => after = Some(l),
            None => break,
        }
    }
    tracker.retain(|h| seen.contains(h));
    state.metrics.schedules_tracked(tracker.entries());
}
