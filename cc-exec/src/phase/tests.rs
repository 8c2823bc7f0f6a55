//! Every transition of [`Phase::on`], and the timers of [`Phase::due`] and
//! [`Phase::wake_at`], with a made-up clock.

use super::*;

const GRACE: Duration = Duration::from_secs(5);
const SLACK: Duration = Duration::from_secs(2);

fn plan(t0: Instant, reaper: bool) -> Plan {
    Plan {
        deadline: t0 + Duration::from_secs(10),
        grace: GRACE,
        slack: if reaper { SLACK } else { Duration::ZERO },
        reaper,
    }
}

fn ms(t0: Instant, n: u64) -> Instant {
    t0 + Duration::from_millis(n)
}

fn all_events(t: Instant) -> [Event; 7] {
    [
        Event::ChildExited(t),
        Event::OutputClosed,
        Event::DeadlinePassed(t),
        Event::Cancelled(t),
        Event::GraceExpired,
        Event::LeftoverWaitOver,
        Event::AbandonWaitOver,
    ]
}

#[test]
fn running_stops_on_the_deadline_or_a_cancel_and_drains_on_exit() {
    let t0 = Instant::now();
    let p = plan(t0, false);
    let now = ms(t0, 10_000);
    let term = |reason| Phase::Terminating {
        reason,
        kill_at: now + GRACE,
    };
    let cases = [
        (
            Event::DeadlinePassed(now),
            term(StopReason::Timeout),
            &[Action::TermGroup][..],
        ),
        (
            Event::Cancelled(now),
            term(StopReason::Cancelled),
            &[Action::TermGroup][..],
        ),
        (Event::ChildExited(now), draining(now, None), &[][..]),
    ];
    for (event, next, actions) in cases {
        assert_eq!(Phase::Running.on(event, &p), (next, actions), "{event:?}");
    }
    // A reaper gets its slack on top of the grace.
    let p = plan(t0, true);
    let (next, _) = Phase::Running.on(Event::DeadlinePassed(now), &p);
    assert_eq!(
        next,
        Phase::Terminating {
            reason: StopReason::Timeout,
            kill_at: now + GRACE + SLACK
        }
    );
    for event in [
        Event::OutputClosed,
        Event::GraceExpired,
        Event::LeftoverWaitOver,
        Event::AbandonWaitOver,
    ] {
        assert_eq!(
            Phase::Running.on(event, &p),
            (Phase::Running, &[][..]),
            "{event:?}"
        );
    }
}

#[test]
fn terminating_kills_at_the_end_of_the_grace_and_keeps_its_reason() {
    let t0 = Instant::now();
    let p = plan(t0, false);
    for reason in [StopReason::Timeout, StopReason::Cancelled] {
        let phase = Phase::Terminating {
            reason,
            kill_at: ms(t0, 15_000),
        };
        assert_eq!(
            phase.on(Event::GraceExpired, &p),
            (Phase::Killed { reason }, &[Action::KillAll][..])
        );
        let at = ms(t0, 12_000);
        assert_eq!(
            phase.on(Event::ChildExited(at), &p),
            (draining(at, Some(reason)), &[][..])
        );
        // A second stop is never sent.
        for event in [
            Event::DeadlinePassed(at),
            Event::Cancelled(at),
            Event::OutputClosed,
            Event::LeftoverWaitOver,
            Event::AbandonWaitOver,
        ] {
            assert_eq!(phase.on(event, &p), (phase, &[][..]), "{event:?}");
        }
    }
}

#[test]
fn killed_waits_only_for_the_exit() {
    let t0 = Instant::now();
    let p = plan(t0, false);
    let phase = Phase::Killed {
        reason: StopReason::Timeout,
    };
    let at = ms(t0, 16_000);
    for event in all_events(at) {
        let expected = match event {
            Event::ChildExited(_) => draining(at, Some(StopReason::Timeout)),
            _ => phase,
        };
        assert_eq!(phase.on(event, &p), (expected, &[][..]), "{event:?}");
    }
}

#[test]
fn draining_ends_at_eof_or_abandons_and_kills_leftovers_once() {
    let t0 = Instant::now();
    let p = plan(t0, false);
    let at = ms(t0, 1_000);
    for stop in [None, Some(StopReason::Timeout), Some(StopReason::Cancelled)] {
        let phase = draining(at, stop);
        let killed = Phase::Draining {
            exited_at: at,
            stop,
            leftovers_killed: true,
        };
        assert_eq!(
            phase.on(Event::OutputClosed, &p),
            (Phase::Done { stop }, &[][..])
        );
        assert_eq!(
            phase.on(Event::LeftoverWaitOver, &p),
            (
                killed,
                &[Action::KillGroup, Action::Warn(LEFTOVERS_KILLED)][..]
            )
        );
        assert_eq!(killed.on(Event::LeftoverWaitOver, &p), (killed, &[][..]));
        for from in [phase, killed] {
            assert_eq!(
                from.on(Event::AbandonWaitOver, &p),
                (
                    Phase::Done { stop },
                    &[Action::AbandonOutput, Action::Warn(PIPES_ABANDONED)][..]
                )
            );
            for event in [Event::ChildExited(ms(t0, 2_000)), Event::GraceExpired] {
                assert_eq!(from.on(event, &p), (from, &[][..]), "{event:?}");
            }
        }
    }
}

#[test]
fn a_stop_while_draining_is_sent_once_and_decides_the_code() {
    let t0 = Instant::now();
    let p = plan(t0, false);
    let at = ms(t0, 9_000);
    let now = ms(t0, 10_000);
    for leftovers_killed in [false, true] {
        let phase = Phase::Draining {
            exited_at: at,
            stop: None,
            leftovers_killed,
        };
        for (event, reason) in [
            (Event::DeadlinePassed(now), StopReason::Timeout),
            (Event::Cancelled(now), StopReason::Cancelled),
        ] {
            let next = Phase::Draining {
                exited_at: at,
                stop: Some(reason),
                leftovers_killed,
            };
            assert_eq!(phase.on(event, &p), (next, &[Action::TermGroup][..]));
            assert_eq!(next.on(event, &p), (next, &[][..]));
            assert_eq!(next.stop(), Some(reason));
        }
    }
}

#[test]
fn done_is_final() {
    let t0 = Instant::now();
    let p = plan(t0, false);
    for stop in [None, Some(StopReason::Timeout)] {
        let phase = Phase::Done { stop };
        for event in all_events(ms(t0, 20_000)) {
            assert_eq!(phase.on(event, &p), (phase, &[][..]), "{event:?}");
        }
        assert!(phase.exited());
        assert_eq!(phase.stop(), stop);
        assert_eq!(phase.due(ms(t0, 60_000), true, &p), None);
        assert_eq!(phase.wake_at(&p), None);
    }
}

#[test]
fn the_clock_makes_events_due_at_each_mark_exactly() {
    let t0 = Instant::now();
    let p = plan(t0, false);
    let r = Phase::Running;
    assert_eq!(r.due(ms(t0, 9_999), false, &p), None);
    assert_eq!(
        r.due(ms(t0, 10_000), false, &p),
        Some(Event::DeadlinePassed(ms(t0, 10_000)))
    );
    assert_eq!(
        r.due(ms(t0, 5), true, &p),
        Some(Event::Cancelled(ms(t0, 5)))
    );
    // A cancel seen past the deadline is a timeout.
    assert_eq!(
        r.due(ms(t0, 10_001), true, &p),
        Some(Event::DeadlinePassed(ms(t0, 10_001)))
    );
    let t = Phase::Terminating {
        reason: StopReason::Timeout,
        kill_at: ms(t0, 15_000),
    };
    assert_eq!(t.due(ms(t0, 14_999), true, &p), None);
    assert_eq!(t.due(ms(t0, 15_000), false, &p), Some(Event::GraceExpired));
    let k = Phase::Killed {
        reason: StopReason::Timeout,
    };
    assert_eq!(k.due(ms(t0, 60_000), true, &p), None);
    assert_eq!(k.wake_at(&p), None);
    assert!(!k.exited() && !t.exited() && !r.exited());
    assert_eq!((r.stop(), k.stop()), (None, Some(StopReason::Timeout)));
}

#[test]
fn draining_timers_kill_leftovers_then_abandon_and_a_reaper_skips_the_kill() {
    let t0 = Instant::now();
    let at = ms(t0, 1_000);
    let p = plan(t0, false);
    let d = draining(at, None);
    assert_eq!(d.due(ms(t0, 1_499), false, &p), None);
    assert_eq!(
        d.due(ms(t0, 1_500), false, &p),
        Some(Event::LeftoverWaitOver)
    );
    assert_eq!(d.wake_at(&p), Some(ms(t0, 1_500)));
    let killed = Phase::Draining {
        exited_at: at,
        stop: None,
        leftovers_killed: true,
    };
    assert_eq!(killed.due(ms(t0, 1_999), false, &p), None);
    assert_eq!(
        killed.due(ms(t0, 2_000), false, &p),
        Some(Event::AbandonWaitOver)
    );
    assert_eq!(killed.wake_at(&p), Some(ms(t0, 2_000)));
    // The stop comes before the exit's timers, once.
    assert_eq!(
        d.due(ms(t0, 10_000), false, &p),
        Some(Event::DeadlinePassed(ms(t0, 10_000)))
    );
    assert_eq!(
        d.due(ms(t0, 1_200), true, &p),
        Some(Event::Cancelled(ms(t0, 1_200)))
    );
    let stopped = draining(at, Some(StopReason::Cancelled));
    assert_eq!(stopped.due(ms(t0, 1_200), true, &p), None);
    // With a reaper, the leftovers are its job: only the abandon.
    let p = plan(t0, true);
    assert_eq!(d.due(ms(t0, 1_999), false, &p), None);
    assert_eq!(
        d.due(ms(t0, 2_000), false, &p),
        Some(Event::AbandonWaitOver)
    );
    assert_eq!(d.wake_at(&p), Some(ms(t0, 2_000)));
}

#[test]
fn the_supervisor_wakes_at_the_nearest_mark() {
    let t0 = Instant::now();
    let p = plan(t0, false);
    assert_eq!(Phase::Running.wake_at(&p), Some(p.deadline));
    let kill_at = ms(t0, 15_000);
    let t = Phase::Terminating {
        reason: StopReason::Cancelled,
        kill_at,
    };
    assert_eq!(t.wake_at(&p), Some(kill_at));
    // Exited just before the deadline: the deadline comes first.
    let late = draining(ms(t0, 9_800), None);
    assert_eq!(late.wake_at(&p), Some(p.deadline));
    // Once stopped, the deadline no longer counts.
    let stopped = draining(ms(t0, 9_800), Some(StopReason::Timeout));
    assert_eq!(stopped.wake_at(&p), Some(ms(t0, 10_300)));
}

#[test]
fn a_zero_grace_stops_and_kills_in_one_wake() {
    // The supervisor asks `due` again after each transition: with no grace,
    // the SIGKILL is due the moment the SIGTERM was sent.
    let t0 = Instant::now();
    let p = Plan {
        grace: Duration::ZERO,
        ..plan(t0, false)
    };
    let now = ms(t0, 10_000);
    let mut phase = Phase::Running;
    let mut actions = Vec::new();
    while let Some(event) = phase.due(now, false, &p) {
        let (next, done) = phase.on(event, &p);
        actions.extend_from_slice(done);
        phase = next;
    }
    assert_eq!(actions, [Action::TermGroup, Action::KillAll]);
    assert_eq!(
        phase,
        Phase::Killed {
            reason: StopReason::Timeout
        }
    );
}
