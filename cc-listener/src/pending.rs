//! The door of the agent address: which connections that have not
//! registered yet get a place, and which one gives its place up.
//!
//! A connection goes through three stages before it registers:
//! - **silent**: accepted, not a byte from it yet;
//! - **spoken**: it sent something (a TLS hello, an HTTP request), no
//!   valid key yet;
//! - **keyed**: it presented a valid API key.
//!
//! Rules, each against a way of keeping agents out:
//! - Silent and spoken connections share a budget (`max_unauthenticated`).
//!   When it is full, the **oldest silent** one is closed to admit the
//!   newcomer; if none is silent, the newcomer is closed. A connection
//!   that has spoken is never pushed out by a newcomer, and one that
//!   presented a valid key has left the budget: anonymous sockets that
//!   never send a byte cannot churn an agent out, however fast they come.
//!   (Pushing out the *oldest* connection of any stage, as before, let 250
//!   connects a second lock out agents on a 200 ms link; pushing out the
//!   *newest* silent one would let ten a second close every honest
//!   newcomer before its first byte arrives.)
//! - Every source has a cap of places at once: an IPv4 address or an IPv6
//!   /64 (`max_unauthenticated_per_source`), and an IPv6 /48 as a whole
//!   (`max_unauthenticated_per_48`), since one network holds 65,536 /64s.
//! - Every source has a budget of **failures** (a connection that ended
//!   without presenting a valid key: closed, timed out, pushed out,
//!   refused at the handshake), refilled at `unauthenticated_failures_per_sec`
//!   (the /48 at four times that) up to a burst of
//!   `max_unauthenticated_per_source`: a source that spent it is refused
//!   until it refills. Agents with valid keys never spend it, so a fleet
//!   behind one NAT address reconnects at any speed.
//!
//! The arithmetic is in SECURITY.md ("Anonymous clients cannot lock agents
//! out").

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

/// Where a connection comes from, for the caps and failure budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4(std::net::Ipv4Addr),
    /// An IPv6 /64: one host usually owns a whole /64.
    V6([u8; 8]),
    /// An IPv6 /48: a site's network, holding 65,536 /64s.
    V6Site([u8; 6]),
}

/// The sources a connection from `ip` counts against (an IPv4-mapped
/// IPv6 address is its IPv4 address).
fn sources(ip: IpAddr) -> Vec<Source> {
    match ip {
        IpAddr::V4(v4) => vec![Source::V4(v4)],
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => vec![Source::V4(v4)],
            None => {
                let o = v6.octets();
                vec![
                    Source::V6([o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]]),
                    Source::V6Site([o[0], o[1], o[2], o[3], o[4], o[5]]),
                ]
            }
        },
    }
}

/// The door's limits (from the listener's settings).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Silent and spoken connections, in all.
    pub max: usize,
    /// Places at once, and the failure burst, per IPv4 address or /64.
    pub per_source: usize,
    /// Places at once per IPv6 /48.
    pub per_48: usize,
    /// Failures a second a source's budget refills by (a /48: four times).
    pub failures_per_sec: f64,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its source holds its share of places.
    SourceFull,
    /// Its source spent its failure budget.
    SourceFailing,
    /// Every place is held by a connection that has spoken.
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Silent,
    Spoken,
    Keyed,
    /// Pushed out to admit a newer one; its task is ending.
    Out,
}

impl Stage {
    /// Holds a place of the budget.
    fn anonymous(self) -> bool {
        matches!(self, Self::Silent | Self::Spoken)
    }
}

#[derive(Debug)]
struct Entry {
    sources: Vec<Source>,
    stage: Stage,
    /// Dropping it closes the connection (it was pushed out).
    closes: Option<oneshot::Sender<()>>,
}

/// Registrations one key may make in a burst, then one per
/// [`REGISTRATION_EVERY`] (the agent's own shortest backoff): an agent
/// that flaps is never refused,
/// a key used to reconnect in a loop (each registration is a key lookup
/// and three writes) is closed with 1013 until its budget refills.
pub const REGISTRATION_BURST: f64 = 10.0;
pub const REGISTRATION_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// A failure budget: tokens refill at a rate up to a burst.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets kept before full (idle) ones are dropped.
const BUCKETS_KEPT: usize = 4096;

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    conns: HashMap<u64, Entry>,
    /// Silent connections, oldest first: the ones pushed out when full.
    silent: BTreeSet<u64>,
    /// Silent and spoken connections.
    anonymous: usize,
    held: HashMap<Source, usize>,
    failures: HashMap<Source, Bucket>,
    /// Registrations by key id.
    registrations: HashMap<i64, Bucket>,
}

/// The door: shared by the accept loop and every unregistered connection.
#[derive(Debug)]
pub struct Pending {
    limits: Limits,
    inner: std::sync::Mutex<Inner>,
}

/// A connection's place; dropping it gives the place back (and, unless it
/// presented a valid key, spends one failure of its source).
#[derive(Debug)]
pub struct Admitted {
    pending: Arc<Pending>,
    id: u64,
    /// Resolves when the connection was pushed out to make room.
    pub evicted: oneshot::Receiver<()>,
}

impl Pending {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits: Limits {
                max: limits.max.max(1),
                per_source: limits.per_source.max(1),
                per_48: limits.per_48.max(1),
                failures_per_sec: limits.failures_per_sec.max(0.0),
            },
            inner: std::sync::Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn cap(&self, s: Source) -> usize {
        match s {
            Source::V4(_) | Source::V6(_) => self.limits.per_source,
            Source::V6Site(_) => self.limits.per_48,
        }
    }

    /// (refill rate, burst) of a source's failure budget.
    fn budget(&self, s: Source) -> (f64, f64) {
        let burst = self.limits.per_source as f64;
        match s {
            Source::V4(_) | Source::V6(_) => (self.limits.failures_per_sec, burst),
            Source::V6Site(_) => (self.limits.failures_per_sec * 4.0, burst * 4.0),
        }
    }

    /// `s`'s failure tokens now.
    fn tokens(&self, inner: &Inner, s: Source, now: Instant) -> f64 {
        let (rate, burst) = self.budget(s);
        inner.failures.get(&s).map_or(burst, |b| {
            (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst)
        })
    }

    /// Admits a connection from `ip`, or says why not; when the budget is
    /// full, the oldest silent connection is pushed out to make room.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refused> {
        self.admit_at(ip, Instant::now())
    }

    fn admit_at(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Admitted, Refused> {
        let sources = sources(ip);
        let mut g = self.lock();
        let inner = &mut *g;
        for &s in &sources {
            if inner.held.get(&s).copied().unwrap_or(0) >= self.cap(s) {
                return Err(Refused::SourceFull);
            }
            if self.tokens(inner, s, now) < 1.0 {
                return Err(Refused::SourceFailing);
            }
        }
        if inner.anonymous >= self.limits.max {
            let Some(oldest) = inner.silent.pop_first() else {
                return Err(Refused::Full);
            };
            // Its drop (the connection's task ending) gives its place
            // back; until then it no longer counts.
            if let Some(e) = inner.conns.get_mut(&oldest) {
                e.closes = None;
                e.stage = Stage::Out;
                inner.anonymous -= 1;
            }
        }
        let id = inner.next;
        inner.next += 1;
        let (tx, rx) = oneshot::channel();
        for &s in &sources {
            *inner.held.entry(s).or_default() += 1;
        }
        inner.conns.insert(
            id,
            Entry {
                sources,
                stage: Stage::Silent,
                closes: Some(tx),
            },
        );
        inner.silent.insert(id);
        inner.anonymous += 1;
        Ok(Admitted {
            pending: Arc::clone(self),
            id,
            evicted: rx,
        })
    }

    fn registration_at(&self, key_id: i64, now: Instant) -> bool {
        let rate = 1.0 / REGISTRATION_EVERY.as_secs_f64();
        let mut g = self.lock();
        let regs = &mut g.registrations;
        if regs.len() > BUCKETS_KEPT {
            regs.retain(|_, b| {
                b.tokens + now.duration_since(b.at).as_secs_f64() * rate < REGISTRATION_BURST
            });
        }
        let b = regs.entry(key_id).or_insert(Bucket {
            tokens: REGISTRATION_BURST,
            at: now,
        });
        b.tokens =
            (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(REGISTRATION_BURST);
        b.at = now;
        if b.tokens < 1.0 {
            return false;
        }
        b.tokens -= 1.0;
        true
    }

    /// Silent and spoken connections now.
    #[cfg(test)]
    fn anonymous(&self) -> usize {
        self.lock().anonymous
    }
}

/// Marks an admitted connection's stage from wherever it is served (the
/// handshake's key check), while its [`Admitted`] waits on `evicted`.
#[derive(Debug, Clone)]
pub struct Marker {
    pending: Arc<Pending>,
    id: u64,
}

impl Admitted {
    pub fn marker(&self) -> Marker {
        Marker {
            pending: Arc::clone(&self.pending),
            id: self.id,
        }
    }

    /// Whether key `key_id` may register now (and spends one if so).
    pub fn registration_allowed(&self, key_id: i64) -> bool {
        self.pending.registration_at(key_id, Instant::now())
    }

    /// See [`Marker::spoke`].
    pub fn spoke(&self) {
        self.marker().spoke();
    }

    /// See [`Marker::keyed`].
    pub fn keyed(&self) {
        self.marker().keyed();
    }
}

impl Marker {
    /// The connection sent its first bytes: it is no longer pushed out for
    /// a newcomer.
    pub fn spoke(&self) {
        let mut g = self.pending.lock();
        let inner = &mut *g;
        if inner.silent.remove(&self.id) {
            if let Some(e) = inner.conns.get_mut(&self.id) {
                e.stage = Stage::Spoken;
            }
        }
    }

    /// The connection presented a valid key: it leaves the budget, is never
    /// pushed out, and its end spends no failure.
    pub fn keyed(&self) {
        let mut g = self.pending.lock();
        let inner = &mut *g;
        inner.silent.remove(&self.id);
        if let Some(e) = inner.conns.get_mut(&self.id) {
            if e.stage.anonymous() {
                inner.anonymous -= 1;
                e.stage = Stage::Keyed;
            }
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let now = Instant::now();
        let pending = &*self.pending;
        let mut g = pending.lock();
        let inner = &mut *g;
        let Some(e) = inner.conns.remove(&self.id) else {
            return;
        };
        inner.silent.remove(&self.id);
        if e.stage.anonymous() {
            inner.anonymous -= 1;
        }
        // Pushed out, refused, timed out or closed: all without a key.
        let failed = e.stage != Stage::Keyed;
        for s in e.sources {
            if let Some(n) = inner.held.get_mut(&s) {
                *n -= 1;
                if *n == 0 {
                    inner.held.remove(&s);
                }
            }
            if failed {
                let tokens = pending.tokens(inner, s, now) - 1.0;
                inner.failures.insert(s, Bucket { tokens, at: now });
            }
        }
        if inner.failures.len() > BUCKETS_KEPT {
            let mut full = Vec::new();
            for (&s, b) in &inner.failures {
                let (rate, burst) = pending.budget(s);
                if b.tokens + now.duration_since(b.at).as_secs_f64() * rate >= burst {
                    full.push(s);
                }
            }
            for s in full {
                inner.failures.remove(&s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn limits(max: usize, per_source: usize) -> Limits {
        Limits {
            max,
            per_source,
            per_48: per_source * 2,
            failures_per_sec: 1.0,
        }
    }

    fn closed(a: &mut Admitted) -> bool {
        a.evicted
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Closed)
    }

    /// When full, the oldest *silent* connection goes; one that spoke or
    /// presented a key stays, and with nothing silent the newcomer is
    /// refused.
    #[test]
    fn a_full_door_pushes_out_the_oldest_silent_connection_only() {
        let p = Pending::new(limits(3, 10));
        let mut honest = p.admit(ip("10.0.0.1")).unwrap();
        let mut s1 = p.admit(ip("10.0.0.2")).unwrap();
        let s2 = p.admit(ip("10.0.0.3")).unwrap();
        honest.spoke();
        let mut n1 = p.admit(ip("10.0.0.4")).unwrap();
        assert!(closed(&mut s1), "the oldest silent one");
        assert!(!closed(&mut honest), "not the oldest, which spoke");
        assert_eq!(p.anonymous(), 3);
        n1.spoke();
        s2.spoke();
        assert_eq!(p.admit(ip("10.0.0.5")).unwrap_err(), Refused::Full);
        // A key takes a connection out of the budget.
        honest.keyed();
        assert_eq!(p.anonymous(), 2);
        let mut n2 = p.admit(ip("10.0.0.6")).unwrap();
        assert!(!closed(&mut n2) && !closed(&mut n1) && !closed(&mut honest));
        drop(s1);
        assert_eq!(
            p.anonymous(),
            3,
            "a pushed-out one gives nothing back twice"
        );
        drop((honest, s2, n1, n2));
        assert_eq!(p.anonymous(), 0);
        assert!(p.lock().conns.is_empty() && p.lock().held.is_empty());
    }

    /// A key registers ten times at once, then twice a second.
    #[test]
    fn a_key_registers_in_a_burst_then_at_a_pace() {
        let p = Pending::new(limits(10, 10));
        let t0 = Instant::now();
        for i in 0..10 {
            assert!(p.registration_at(7, t0), "registration {i}");
        }
        assert!(!p.registration_at(7, t0), "the eleventh at once");
        assert!(p.registration_at(8, t0), "another key has its own");
        assert!(!p.registration_at(7, t0 + Duration::from_millis(450)));
        assert!(p.registration_at(7, t0 + Duration::from_millis(550)));
        assert!(!p.registration_at(7, t0 + Duration::from_millis(600)));
    }

    /// Caps per IPv4 address, per /64 and per /48; a mapped address is its
    /// IPv4 address.
    #[test]
    fn sources_have_caps_per_address_64_and_48() {
        let p = Pending::new(Limits {
            max: 100,
            per_source: 1,
            per_48: 2,
            failures_per_sec: 1.0,
        });
        let _a = p.admit(ip("192.0.2.7")).unwrap();
        assert_eq!(
            p.admit(ip("::ffff:192.0.2.7")).unwrap_err(),
            Refused::SourceFull
        );
        let _b = p.admit(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(
            p.admit(ip("2001:db8:1:2::ff")).unwrap_err(),
            Refused::SourceFull,
            "same /64"
        );
        let _c = p.admit(ip("2001:db8:1:3::1")).unwrap();
        assert_eq!(
            p.admit(ip("2001:db8:1:4::1")).unwrap_err(),
            Refused::SourceFull,
            "a third /64 of the same /48"
        );
        assert!(p.admit(ip("2001:db8:2::1")).is_ok(), "another /48");
    }

    /// A source spends its budget with connections that end without a key,
    /// and gets it back over time; keyed ones spend nothing.
    #[test]
    fn failures_spend_a_sources_budget_and_keys_do_not() {
        let p = Pending::new(limits(100, 3));
        let t0 = Instant::now();
        for _ in 0..10 {
            let a = p.admit_at(ip("10.0.0.1"), t0).unwrap();
            a.keyed();
        }
        for _ in 0..3 {
            drop(p.admit_at(ip("10.0.0.9"), t0).unwrap());
        }
        assert_eq!(
            p.admit_at(ip("10.0.0.9"), t0).unwrap_err(),
            Refused::SourceFailing
        );
        assert!(
            p.admit_at(ip("10.0.0.1"), t0).is_ok(),
            "its keyed neighbour is fine"
        );
        // 1 a second: one more after a second.
        let later = Instant::now() + Duration::from_millis(1100);
        assert!(p.admit_at(ip("10.0.0.9"), later).is_ok());
    }

    /// `Admitted::registration_allowed` spends the key's budget, now.
    #[test]
    fn registration_allowed_spends_the_keys_budget() {
        let p = Pending::new(limits(100, 10));
        let a = p.admit(ip("10.0.0.1")).unwrap();
        for i in 0..10 {
            assert!(a.registration_allowed(9), "registration {i} of the burst");
        }
        assert!(!a.registration_allowed(9), "the burst is spent");
        assert!(a.registration_allowed(10), "another key has its own");
    }

    /// Past `BUCKETS_KEPT` keys, the buckets of keys back at their full
    /// burst are forgotten (a new one would be the same); the others stay.
    #[test]
    fn full_registration_buckets_are_forgotten_past_the_limit() {
        let p = Pending::new(limits(100, 10));
        let t0 = Instant::now();
        for key in 0..=BUCKETS_KEPT as i64 {
            assert!(p.registration_at(key, t0));
        }
        assert_eq!(p.lock().registrations.len(), BUCKETS_KEPT + 1);
        // Key 0 spends its whole burst, key 1 two, key 2 five, key 3
        // three (one each above); the rest keep 9 of 10.
        let spend = |key: i64, n: usize| {
            for _ in 0..n {
                assert!(p.registration_at(key, t0));
            }
        };
        spend(0, 9);
        spend(1, 1);
        spend(2, 4);
        spend(3, 2);
        assert!(!p.registration_at(0, t0), "key 0 has spent its burst");
        assert_eq!(
            p.lock().registrations.len(),
            BUCKETS_KEPT + 1,
            "no bucket is full yet: none is forgotten, key 0 keeps its debt"
        );
        // A second later each bucket has refilled by 2 (a token every
        // 500 ms): key 0 holds 2, key 1 exactly 10 (full), key 2 7, key 3
        // 9, the rest 11, capped at 10 (full).
        let later = t0 + REGISTRATION_EVERY * 2;
        assert!(p.registration_at(-1, later));
        let regs = &p.lock().registrations;
        let mut kept: Vec<i64> = regs.keys().copied().collect();
        kept.sort_unstable();
        assert_eq!(kept, [-1, 0, 2, 3], "the full ones are forgotten");
    }

    /// Pruning starts only past `BUCKETS_KEPT`: at exactly that many, a
    /// new key is added and no full bucket goes.
    #[test]
    fn registration_buckets_are_kept_up_to_the_limit() {
        let p = Pending::new(limits(100, 10));
        let t0 = Instant::now();
        for key in 0..BUCKETS_KEPT as i64 {
            assert!(p.registration_at(key, t0));
        }
        let later = t0 + REGISTRATION_EVERY * 2;
        assert!(p.registration_at(-1, later));
        assert_eq!(p.lock().registrations.len(), BUCKETS_KEPT + 1);
    }

    /// A /48 may fail four times as often as one source before it is
    /// refused, and refills four times as fast.
    #[test]
    fn a_48_has_four_times_a_sources_failure_budget() {
        let p = Pending::new(Limits {
            max: 1000,
            per_source: 2,
            per_48: 100,
            failures_per_sec: 2.0,
        });
        let t0 = Instant::now();
        // One failure from each of eight /64s: the /48's burst, 4 × 2.
        for i in 0..8 {
            drop(p.admit_at(ip(&format!("2001:db8:0:{i}::1")), t0).unwrap());
        }
        let after = Instant::now();
        assert_eq!(
            p.admit_at(ip("2001:db8:0:8::1"), after).unwrap_err(),
            Refused::SourceFailing,
            "the /48 spent its budget, not the /64"
        );
        // 4 × 2 a second: one more after 130 ms.
        let later = after + Duration::from_millis(130);
        assert!(p.admit_at(ip("2001:db8:0:8::1"), later).is_ok());
    }

    /// Past `BUCKETS_KEPT` sources, the failure buckets back at their full
    /// burst are forgotten; the others stay.
    #[test]
    fn full_failure_buckets_are_forgotten_past_the_limit() {
        let p = Pending::new(Limits {
            max: 10_000,
            per_source: 2,
            per_48: 8,
            failures_per_sec: 1.0,
        });
        for i in 0..=BUCKETS_KEPT as u32 {
            let addr = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            drop(p.admit(IpAddr::V4(addr)).unwrap());
        }
        // A second later, every one of them is full again.
        std::thread::sleep(Duration::from_millis(1100));
        drop(p.admit(ip("192.0.2.1")).unwrap());
        let failures = &p.lock().failures;
        assert_eq!(failures.len(), 1, "only the newest, not yet full");
    }
}
