//! The supervisor's phases as a state machine, free of I/O.
//!
//! [`supervise`](crate::supervise) turns what it sees (the process exited,
//! both pipes closed, the clock) into [`Event`]s, feeds them to
//! [`Phase::on`] and executes the [`Action`]s it returns. Everything here
//! is pure: the clock is an argument, so every transition is unit-tested.
//!
//! ```text
//!  Running ──deadline/cancel──▶ Terminating ──grace expired──▶ Killed
//!     │ (SIGTERM to the group)      │           (SIGKILL all)     │
//!     └──────── child exited ───────┴─────────── child exited ────┘
//!                                   ▼
//!         Draining (output still open; a deadline or cancel here
//!                   still SIGTERMs the group and decides the code)
//!           │ leftover wait: SIGKILL the group (no reaper only)
//!           │ output closed, or abandon wait: close the pipes
//!           ▼
//!         Done
//! ```
//!
//! Invariants: a stop (SIGTERM) is sent at most once and its reason is
//! kept to the end, since it decides the exit code; SIGKILL at the end of
//! the grace goes only to a process that has not exited; `Done` is reached
//! only once the process has exited and the pipes are closed (at EOF or
//! abandoned), so nothing can keep the supervisor waiting past
//! [`ABANDON_WAIT`] after the exit.

use std::time::{Duration, Instant};

/// After the job's process is gone, how long something it started may keep
/// the output pipes open: first a moment to finish writing, then the
/// process group is killed (a job without a reaper), and after the second
/// mark the pipes are abandoned, so nothing can keep the supervisor waiting.
pub(crate) const LEFTOVER_WAIT: Duration = Duration::from_millis(500);
pub(crate) const ABANDON_WAIT: Duration = Duration::from_millis(1000);

/// Warnings the machine asks for (the report's `warning`).
pub(crate) const LEFTOVERS_KILLED: &str =
    "processes the job left running in its process group were killed";
pub(crate) const PIPES_ABANDONED: &str = "the output pipes were still held open by a process outside the job's control; they were closed";

/// Why a job was stopped; it decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopReason {
    /// The timeout passed (exit code 124).
    Timeout,
    /// The caller cancelled before the timeout (exit code 143).
    Cancelled,
}

/// Where a supervised job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// The process runs; nothing has been sent to it.
    Running,
    /// SIGTERM went to the group; SIGKILL follows at `kill_at` unless the
    /// process exits first.
    Terminating {
        reason: StopReason,
        kill_at: Instant,
    },
    /// SIGKILL went to everything; waiting for the process to exit.
    Killed { reason: StopReason },
    /// The process exited at `exited_at`; the output is read to EOF.
    Draining {
        exited_at: Instant,
        stop: Option<StopReason>,
        /// The group was SIGKILLed for holding the pipes open.
        leftovers_killed: bool,
    },
    /// The process exited and the pipes are closed.
    Done { stop: Option<StopReason> },
}

/// What happened, as the supervisor saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// The process was reaped (its status read) at this instant.
    ChildExited(Instant),
    /// Both pipes are closed (reported each time it is seen).
    OutputClosed,
    /// The timeout passed; seen at this instant.
    DeadlinePassed(Instant),
    /// The caller asked for a stop before the timeout; seen at this instant.
    Cancelled(Instant),
    /// The grace after SIGTERM ran out with the process still there.
    GraceExpired,
    /// [`LEFTOVER_WAIT`] passed since the exit with the pipes still open.
    LeftoverWaitOver,
    /// [`ABANDON_WAIT`] passed since the exit with the pipes still open.
    AbandonWaitOver,
}

/// What the supervisor must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// SIGTERM to the job's process group (a reaper forwards it to
    /// everything the job started and SIGKILLs after the grace).
    TermGroup,
    /// SIGKILL to the group, to the reaper's job's group, and to the
    /// process itself.
    KillAll,
    /// SIGKILL to the group only (what the job left holding the pipes).
    KillGroup,
    /// Stop reading the pipes: whatever holds them writes to no one.
    AbandonOutput,
    /// Add this line to the report's warnings.
    Warn(&'static str),
}

/// The fixed facts the transitions and timers depend on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub deadline: Instant,
    /// Between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// Added to the grace when a reaper runs its own SIGKILL round.
    pub slack: Duration,
    /// The job runs under a reaper, which ends its leftovers itself.
    pub reaper: bool,
}

impl Phase {
    /// The next phase and what to do, for `event` in this phase. An event
    /// that means nothing in a phase leaves it as it is and does nothing.
    pub(crate) fn on(self, event: Event, plan: &Plan) -> (Phase, &'static [Action]) {
        use Phase::*;
        let stop = |now: Instant, reason| Terminating {
            reason,
            kill_at: now + plan.grace + plan.slack,
        };
        match (self, event) {
            (Running, Event::DeadlinePassed(now)) => {
                (stop(now, StopReason::Timeout), &[Action::TermGroup])
            }
            (Running, Event::Cancelled(now)) => {
                (stop(now, StopReason::Cancelled), &[Action::TermGroup])
            }
            (Terminating { reason, .. }, Event::GraceExpired) => {
                (Killed { reason }, &[Action::KillAll])
            }
            (Running, Event::ChildExited(at)) => (draining(at, None), &[]),
            (Terminating { reason, .. } | Killed { reason }, Event::ChildExited(at)) => {
                (draining(at, Some(reason)), &[])
            }
            (
                Draining {
                    exited_at,
                    stop: None,
                    leftovers_killed,
                },
                Event::DeadlinePassed(_) | Event::Cancelled(_),
            ) => {
                let reason = match event {
                    Event::Cancelled(_) => StopReason::Cancelled,
                    _ => StopReason::Timeout,
                };
                let next = Draining {
                    exited_at,
                    stop: Some(reason),
                    leftovers_killed,
                };
                (next, &[Action::TermGroup])
            }
            (
                Draining {
                    exited_at,
                    stop,
                    leftovers_killed: false,
                },
                Event::LeftoverWaitOver,
            ) => {
                let next = Draining {
                    exited_at,
                    stop,
                    leftovers_killed: true,
                };
                (next, &[Action::KillGroup, Action::Warn(LEFTOVERS_KILLED)])
            }
            (Draining { stop, .. }, Event::OutputClosed) => (Done { stop }, &[]),
            (Draining { stop, .. }, Event::AbandonWaitOver) => (
                Done { stop },
                &[Action::AbandonOutput, Action::Warn(PIPES_ABANDONED)],
            ),
            (phase, _) => (phase, &[]),
        }
    }

    /// The event the clock makes due at `now`, if any; `cancel` is whether
    /// the caller has asked for a stop. Asked again after each transition,
    /// it yields a phase's timed events in order: the stop, the SIGKILL,
    /// the leftovers, the abandon.
    pub(crate) fn due(&self, now: Instant, cancel: bool, plan: &Plan) -> Option<Event> {
        match *self {
            Phase::Running | Phase::Draining { stop: None, .. }
                if now >= plan.deadline || cancel =>
            {
                Some(if now < plan.deadline {
                    Event::Cancelled(now)
                } else {
                    Event::DeadlinePassed(now)
                })
            }
            Phase::Terminating { kill_at, .. } if now >= kill_at => Some(Event::GraceExpired),
            Phase::Draining {
                exited_at,
                leftovers_killed,
                ..
            } => {
                let since = now.duration_since(exited_at);
                if !plan.reaper && !leftovers_killed && since >= LEFTOVER_WAIT {
                    Some(Event::LeftoverWaitOver)
                } else if since >= ABANDON_WAIT {
                    Some(Event::AbandonWaitOver)
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// The next moment the clock can make something due (the supervisor
    /// sleeps at most until then), or `None` if only I/O can.
    pub(crate) fn wake_at(&self, plan: &Plan) -> Option<Instant> {
        match *self {
            Phase::Running => Some(plan.deadline),
            Phase::Terminating { kill_at, .. } => Some(kill_at),
            Phase::Killed { .. } | Phase::Done { .. } => None,
            Phase::Draining {
                exited_at,
                stop,
                leftovers_killed,
            } => {
                let wait = if leftovers_killed || plan.reaper {
                    ABANDON_WAIT
                } else {
                    LEFTOVER_WAIT
                };
                let exit_mark = exited_at + wait;
                Some(match stop {
                    None => exit_mark.min(plan.deadline),
                    Some(_) => exit_mark,
                })
            }
        }
    }

    /// Whether the process has exited (its status was read).
    pub(crate) fn exited(&self) -> bool {
        matches!(self, Phase::Draining { .. } | Phase::Done { .. })
    }

    /// Why the job was stopped, if it was.
    pub(crate) fn stop(&self) -> Option<StopReason> {
        match *self {
            Phase::Running => None,
            Phase::Terminating { reason, .. } | Phase::Killed { reason } => Some(reason),
            Phase::Draining { stop, .. } | Phase::Done { stop } => stop,
        }
    }
}

fn draining(exited_at: Instant, stop: Option<StopReason>) -> Phase {
    Phase::Draining {
        exited_at,
        stop,
        leftovers_killed: false,
    }
}

#[cfg(test)]
mod tests;
