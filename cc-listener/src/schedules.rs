//! Missed runs: which scheduled runs of which hosts' cron entries are due,
//! and which of them came and went without a report.
//!
//! [`Tracker`] is pure (no I/O, no clock: time comes in as milliseconds
//! since the epoch): the listener's task in [`task`] feeds it each host's
//! effective cron list and time zone ([`Tracker::set_host`]), each stored
//! report of a scheduled run ([`Tracker::report`]) and the time
//! ([`Tracker::tick`]), and records what `tick` returns as `missed`.
//!
//! A run of entry E on host H is *due* at each minute E's schedule names
//! in H's time zone (cron's own reading, [`Schedule::next_after`]). It is
//! *satisfied* by a report of E from H whose fire time — `startTime`
//! minus `waitedMs`, when cron started it, by the host's clock — falls in
//! that due minute. It is *missed* when no such report has come by its
//! deadline: due + the host's jitter offset ([`jitter_offset`]) + grace
//! (the entry's `grace`, default its jitter + 60 s). A run that exits 75
//! (skipped: the previous run still held the lock) reported, so it is not
//! missed; the caller calls it `skipped`.
//!
//! Cost: one heap item per tracked entry, keyed by the deadline of the
//! entry's oldest unresolved run; a tick pops only what is due, so it
//! costs nothing for an entry that is not due (no scan). A report sets a
//! bit in its entry (a hash lookup, no heap work). Per entry: its id, its
//! schedule (interned: a fleet's entries share one), three small numbers
//! and a 64-bit mask of which of the next 64 minutes reported.
//!
//! Invariants: each live entry has exactly one heap item with its
//! current `generation`; items of a replaced or removed host are dropped when
//! popped (their generation is stale). An entry's runs resolve in due
//! order, each exactly once. A run is only ever missed after its
//! deadline. Runs due before an entry was first seen (listener start, a
//! new entry) are never reported missed.
//!
//! Clock changes: cron's reading of local time is followed — a time
//! skipped by a spring-forward change is not expected (Debian's cron runs
//! it at the change instead; that report satisfies nothing and is
//! harmless), a time repeated by a fall-back change is expected once. So
//! the tracker may expect fewer runs than happen, never more.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use cc_proto::Schedule;
use cc_proto::wire::{CronEntry, jitter_offset};
use chrono::TimeZone;
use chrono_tz::Tz;

/// The exit code of a run skipped because the previous one still ran.
pub const EXIT_SKIPPED: i32 = 75;

/// Grace added to an entry's jitter when the entry sets none.
pub const DEFAULT_GRACE_SECS: u64 = 60;

const MINUTE_MS: i64 = 60_000;

/// Why a run was missed, as far as the listener can see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The host was not connected (to any listener) when the run was due.
    HostOffline,
    /// The host said no cron daemon runs on it.
    NoCronDaemon,
    /// Nothing the listener can see.
    None,
}

impl Reason {
    /// The word in the event's `detail` and the metric's label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::HostOffline => "host offline",
            Reason::NoCronDaemon => "no cron daemon",
            Reason::None => "none",
        }
    }
}

/// A run due at `due_ms` with no report by `deadline_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missed {
    pub hostname: String,
    pub entry_id: String,
    pub due_ms: i64,
    pub deadline_ms: i64,
}

/// What a report did to its entry's runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fed {
    /// It satisfies a run not resolved yet.
    Counted,
    /// Its run was resolved already (missed, or reported twice) or lies
    /// before the entry was tracked.
    Late,
    /// No tracked entry of that host has that id.
    Unknown,
    /// The host is known but not tracked: its time zone is not.
    Untracked,
}

struct Entry {
    id: Box<str>,
    schedule: u32,
    /// Seconds: this host's jitter offset, and the grace.
    offset_s: u32,
    grace_s: u32,
    /// The oldest unresolved run; `i64::MAX` when the schedule has no
    /// next run (`@reboot`).
    due_ms: i64,
    /// Bit i: a report fired in minute `due_ms / 60 s + i`.
    reported: u64,
    /// Same id, schedule, jitter and grace as a reload: keeps its state.
    fingerprint: (u32, u64, u64),
}

struct Host {
    name: Box<str>,
    tz: Tz,
    generation: u32,
    entries: Vec<Entry>,
}

/// The tracker. See the module comment.
#[derive(Default)]
pub struct Tracker {
    /// Entries with a next run, all hosts together.
    live: usize,
    by_name: HashMap<Box<str>, u32>,
    /// Hosts with a list whose zone is unknown (see [`Tracker::set_host`]).
    zoneless: std::collections::HashSet<Box<str>>,
    slots: Vec<Option<Host>>,
    free: Vec<u32>,
    schedules: Vec<Schedule>,
    schedule_ids: HashMap<Schedule, u32>,
    /// (deadline, slot, entry index, generation).
    heap: BinaryHeap<Reverse<(i64, u32, u32, u32)>>,
    next_generation: u32,
}

impl Tracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Hosts tracked.
    pub fn hosts(&self) -> usize {
        self.by_name.len()
    }

    /// Entries tracked (with a next run).
    pub fn entries(&self) -> usize {
        self.live
    }

    /// Keeps only the hosts `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let gone: Vec<Box<str>> = self.by_name.keys().filter(|h| !keep(h)).cloned().collect();
        for h in gone {
            self.remove(&h);
        }
    }

    /// Heap items, stale ones included (for the benchmark's figures).
    pub fn heap_len(&self) -> usize {
        self.heap.len()
    }

    /// `hostname`'s effective list is `entries`, read in `time_zone` (an
    /// IANA name): entries that stayed the same keep their state, others
    /// start at the first run after `now_ms`. Entries that do not validate
    /// are not tracked (they are refused where they are set). An empty
    /// list stops tracking the host, and so does a zone that is absent
    /// (the agent could not tell, or is a spec-only agent) or unknown to
    /// the listener: read in a guessed zone, a daily entry would be
    /// "missed" every day while it runs fine.
    pub fn set_host(
        &mut self,
        hostname: &str,
        time_zone: Option<&str>,
        entries: &[CronEntry],
        now_ms: i64,
    ) {
        let Some(tz) = time_zone.and_then(|z| z.parse::<Tz>().ok()) else {
            self.remove(hostname);
            if !entries.is_empty() {
                self.zoneless.insert(hostname.into());
            }
            return;
        };
        self.zoneless.remove(hostname);
        let mut old = match self.by_name.get(hostname) {
            Some(&slot) => self.slots[slot as usize].take(),
            None => None,
        };
        if let Some(h) = &old {
            self.live -= live_count(h);
        }
        if entries.is_empty() {
            self.remove(hostname);
            return;
        }
        let generation = self.bump_generation();
        let slot = match self.by_name.get(hostname) {
            Some(&s) => s,
            None => {
                let s = match self.free.pop() {
                    Some(s) => s,
                    None => {
                        self.slots.push(None);
                        u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
                    }
                };
                self.by_name.insert(hostname.into(), s);
                s
            }
        };
        let mut kept: Vec<Entry> = Vec::with_capacity(entries.len());
        for e in entries {
            let Ok(job) = e.validate() else { continue };
            if kept.iter().any(|k| &*k.id == job.id.as_str()) {
                continue;
            }
            let schedule = self.intern(job.schedule);
            let fingerprint = (schedule, job.jitter, job.grace.unwrap_or(u64::MAX));
            let same_zone = old.as_ref().is_some_and(|h| h.tz == tz);
            let previous = old.as_mut().filter(|_| same_zone).and_then(|h| {
                let i = h
                    .entries
                    .iter()
                    .position(|o| &*o.id == job.id.as_str() && o.fingerprint == fingerprint)?;
                Some(h.entries.swap_remove(i))
            });
            let entry = match previous {
                Some(p) => p,
                None => {
                    let offset = jitter_offset(hostname, job.id.as_str(), job.jitter);
                    let grace = job.grace.unwrap_or(job.jitter + DEFAULT_GRACE_SECS);
                    let due_ms = self.next_due(schedule, tz, now_ms);
                    Entry {
                        id: job.id.as_str().into(),
                        schedule,
                        offset_s: u32::try_from(offset).unwrap_or(u32::MAX),
                        grace_s: u32::try_from(grace).unwrap_or(u32::MAX),
                        due_ms,
                        reported: 0,
                        fingerprint,
                    }
                }
            };
            kept.push(entry);
        }
        for (i, e) in kept.iter().enumerate() {
            if e.due_ms != i64::MAX {
                let i = u32::try_from(i).unwrap_or(u32::MAX);
                self.heap.push(Reverse((deadline(e), slot, i, generation)));
            }
        }
        let host = Host {
            name: hostname.into(),
            tz,
            generation,
            entries: kept,
        };
        self.live += live_count(&host);
        self.slots[slot as usize] = Some(host);
    }

    /// Stops tracking `hostname` (its heap items go stale).
    pub fn remove(&mut self, hostname: &str) {
        self.zoneless.remove(hostname);
        if let Some(slot) = self.by_name.remove(hostname) {
            if let Some(h) = self.slots[slot as usize].take() {
                self.live -= live_count(&h);
            }
            self.free.push(slot);
        }
    }

    /// A stored report of entry `entry_id` from `hostname` whose run
    /// fired at `fire_ms` (the host's `startTime` − `waitedMs`).
    pub fn report(&mut self, hostname: &str, entry_id: &str, fire_ms: i64) -> Fed {
        let Some(&slot) = self.by_name.get(hostname) else {
            if self.zoneless.contains(hostname) {
                return Fed::Untracked;
            }
            return Fed::Unknown;
        };
        let Some(host) = self.slots[slot as usize].as_mut() else {
            return Fed::Unknown;
        };
        let Some(e) = host.entries.iter_mut().find(|e| &*e.id == entry_id) else {
            return Fed::Unknown;
        };
        if e.due_ms == i64::MAX {
            return Fed::Late;
        }
        let minute = fire_ms.div_euclid(MINUTE_MS) - e.due_ms.div_euclid(MINUTE_MS);
        if !(0..64).contains(&minute) {
            // Before the oldest unresolved run: resolved already. More
            // than 64 minutes ahead: a clock far off; nothing to satisfy.
            return Fed::Late;
        }
        let bit = 1u64 << minute;
        if e.reported & bit != 0 {
            return Fed::Late;
        }
        e.reported |= bit;
        Fed::Counted
    }

    /// Resolves every run whose deadline is at or before `now_ms`: those
    /// without a report are returned, oldest deadline first.
    pub fn tick(&mut self, now_ms: i64) -> Vec<Missed> {
        let mut missed = Vec::new();
        while let Some(&Reverse((at, slot, i, generation))) = self.heap.peek() {
            if at > now_ms {
                break;
            }
            self.heap.pop();
            let Some(Some(host)) = self.slots.get_mut(slot as usize) else {
                continue;
            };
            if host.generation != generation {
                continue;
            }
            let tz = host.tz;
            let Some(e) = host.entries.get_mut(i as usize) else {
                continue;
            };
            if e.reported & 1 == 0 {
                missed.push(Missed {
                    hostname: host.name.to_string(),
                    entry_id: e.id.to_string(),
                    due_ms: e.due_ms,
                    deadline_ms: at,
                });
            }
            let schedule = &self.schedules[e.schedule as usize];
            let next = next_after(schedule, tz, e.due_ms);
            let shift = next.div_euclid(MINUTE_MS) - e.due_ms.div_euclid(MINUTE_MS);
            e.reported = if (0..64).contains(&shift) {
                e.reported >> shift
            } else {
                0
            };
            e.due_ms = next;
            if next != i64::MAX {
                self.heap.push(Reverse((deadline(e), slot, i, generation)));
            } else {
                self.live -= 1;
            }
        }
        missed
    }

    /// The oldest unresolved run of `hostname`'s entry `entry_id`.
    pub fn due(&self, hostname: &str, entry_id: &str) -> Option<i64> {
        let slot = *self.by_name.get(hostname)?;
        let host = self.slots[slot as usize].as_ref()?;
        let e = host.entries.iter().find(|e| &*e.id == entry_id)?;
        (e.due_ms != i64::MAX).then_some(e.due_ms)
    }

    fn bump_generation(&mut self) -> u32 {
        self.next_generation = self.next_generation.wrapping_add(1);
        self.next_generation
    }

    fn intern(&mut self, s: Schedule) -> u32 {
        if let Some(&i) = self.schedule_ids.get(&s) {
            return i;
        }
        let i = u32::try_from(self.schedules.len()).unwrap_or(u32::MAX);
        self.schedules.push(s.clone());
        self.schedule_ids.insert(s, i);
        i
    }

    fn next_due(&self, schedule: u32, tz: Tz, after_ms: i64) -> i64 {
        next_after(&self.schedules[schedule as usize], tz, after_ms)
    }
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("hosts", &self.by_name.len())
            .field("entries", &self.live)
            .field("heap", &self.heap.len())
            .finish()
    }
}

fn live_count(h: &Host) -> usize {
    h.entries.iter().filter(|e| e.due_ms != i64::MAX).count()
}

fn deadline(e: &Entry) -> i64 {
    e.due_ms
        .saturating_add(i64::from(e.offset_s) * 1000)
        .saturating_add(i64::from(e.grace_s) * 1000)
}

/// The first run of `schedule` after `after_ms`, read in `tz`;
/// `i64::MAX` for none.
fn next_after(schedule: &Schedule, tz: Tz, after_ms: i64) -> i64 {
    let Some(after) = tz.timestamp_millis_opt(after_ms).single() else {
        return i64::MAX;
    };
    schedule
        .next_after(after)
        .map_or(i64::MAX, |t| t.timestamp_millis())
}

pub mod task;

#[cfg(test)]
mod tests;
