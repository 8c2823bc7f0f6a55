//! When and where to connect again, as a pure policy: no sockets, no
//! clock, no randomness of its own (the caller passes the jitter), so it is
//! unit-tested as is.
//!
//! The listeners are tried in order; after a round of failures, a capped
//! exponential backoff with jitter. A connection that carried something
//! from its listener (after `register` the agent pings; a listener that
//! accepted it answers), or lasted [`STABLE`], resets it: the first
//! listener again, after the shortest wait. The agent never gives up: it
//! reconnects until it is stopped.

use std::time::Duration;

const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(60);
/// A connection that lasted this long resets the backoff.
const STABLE: Duration = Duration::from_secs(30);

/// How one connection went, as far as the policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ended {
    /// A frame other than a close came from the listener.
    pub delivered: bool,
    /// From the start of the attempt to its end.
    pub lasted: Duration,
}

/// What to do after a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Try [`Policy::listener`] at once (the rest of a round).
    Now,
    /// Wait this long, then try [`Policy::listener`].
    After(Duration),
}

/// Where the agent is in its attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Policy {
    listeners: usize,
    /// Index of the listener to try next.
    next: usize,
    /// Backoffs waited since the last reset.
    attempt: u32,
}

impl Policy {
    /// For `listeners` listeners (at least one: the config requires it).
    pub(crate) fn new(listeners: usize) -> Self {
        Self {
            listeners: listeners.max(1),
            next: 0,
            attempt: 0,
        }
    }

    /// The index of the listener to connect to.
    pub(crate) fn listener(&self) -> usize {
        self.next
    }

    /// After a connection to [`Policy::listener`] ended: what next, with
    /// `jitter` a random number.
    pub(crate) fn after(&mut self, ended: Ended, jitter: u32) -> Next {
        if ended.delivered || ended.lasted >= STABLE {
            self.attempt = 0;
            self.next = 0;
        } else {
            self.next += 1;
            if self.next < self.listeners {
                // The next listener at once: a round waits only at its end.
                return Next::Now;
            }
            self.next = 0;
        }
        let delay = backoff(self.attempt, jitter);
        self.attempt = self.attempt.saturating_add(1);
        Next::After(delay)
    }
}

/// Capped exponential backoff with full jitter in the upper half.
pub(crate) fn backoff(attempt: u32, jitter: u32) -> Duration {
    let exp = BACKOFF_FIRST
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_CAP);
    let half = exp / 2;
    half + Duration::from_millis(u64::from(jitter) % (half.as_millis().max(1) as u64 + 1))
}

/// A random number for [`Policy::after`] (0 if the system has none).
pub(crate) fn jitter() -> u32 {
    let mut r = [0u8; 4];
    if getrandom::fill(&mut r).is_ok() {
        u32::from_le_bytes(r)
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        for attempt in 0..30 {
            for j in [0, 1, 499, 500, 501, u32::MAX / 2, u32::MAX, jitter()] {
                let d = backoff(attempt, j);
                let exp = BACKOFF_FIRST
                    .saturating_mul(1u32 << attempt.min(16))
                    .min(BACKOFF_CAP);
                assert!(d >= exp / 2 && d <= exp, "attempt {attempt}, {j}: {d:?}");
            }
        }
        assert!(backoff(30, jitter()) <= BACKOFF_CAP);
        // The jitter spans the upper half, both ends included.
        assert_eq!(backoff(1, 0), Duration::from_secs(1));
        assert_eq!(backoff(1, 1000), Duration::from_secs(2));
        assert_eq!(backoff(0, 499), Duration::from_millis(999));
        assert_eq!(backoff(0, 501), Duration::from_millis(500));
        assert_eq!(backoff(20, 0), Duration::from_secs(30));
    }

    /// Agents that lost the same listener must not come back in step: the
    /// jitter is random (eight equal draws: a chance of 2^-224).
    #[test]
    fn the_jitter_is_drawn_at_random() {
        let first = jitter();
        assert!((0..7).any(|_| jitter() != first), "jitter is constant");
    }

    const FAILED: Ended = Ended {
        delivered: false,
        lasted: Duration::from_secs(1),
    };

    #[test]
    fn a_round_of_failures_tries_each_listener_then_backs_off_more_each_round() {
        let mut p = Policy::new(3);
        for round in 0..8u32 {
            assert_eq!(p.listener(), 0);
            assert_eq!(p.after(FAILED, 0), Next::Now);
            assert_eq!(p.listener(), 1);
            assert_eq!(p.after(FAILED, 0), Next::Now);
            assert_eq!(p.listener(), 2);
            // Jitter 0: the lower end, half the exponential step.
            assert_eq!(p.after(FAILED, 0), Next::After(backoff(round, 0)));
        }
        assert_eq!(p.listener(), 0);
        // Capped.
        let mut p = Policy::new(1);
        for _ in 0..40 {
            let Next::After(d) = p.after(FAILED, u32::MAX) else {
                panic!("one listener: every failure waits");
            };
            assert!(d <= BACKOFF_CAP);
        }
        assert_eq!(p.after(FAILED, 0), Next::After(BACKOFF_CAP / 2));
    }

    #[test]
    fn a_connection_that_delivered_or_lasted_resets_to_the_first_listener_and_shortest_wait() {
        for good in [
            Ended {
                delivered: true,
                lasted: Duration::ZERO,
            },
            Ended {
                delivered: false,
                lasted: STABLE,
            },
        ] {
            let mut p = Policy::new(2);
            for _ in 0..10 {
                p.after(FAILED, 0);
            }
            assert_eq!(p.after(FAILED, 0), Next::Now);
            assert_eq!(p.listener(), 1);
            // Even from the second listener: the first again, shortest wait.
            assert_eq!(p.after(good, 0), Next::After(BACKOFF_FIRST / 2));
            assert_eq!(p.listener(), 0);
            assert_eq!(p.after(FAILED, 0), Next::Now);
            assert_eq!(p.after(FAILED, 0), Next::After(BACKOFF_FIRST));
        }
        // Just short of stable, not delivered: a failure.
        let mut p = Policy::new(1);
        let short = Ended {
            delivered: false,
            lasted: STABLE - Duration::from_millis(1),
        };
        p.after(short, 0);
        assert_eq!(p.after(short, 0), Next::After(BACKOFF_FIRST));
    }
}
