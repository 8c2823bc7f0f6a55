//! Grouped writes: each its own answer, of its own type, in order; a
//! failed group answers every write with the failure's kind.

use super::*;
use crate::store::writer::testing::{queue, run_group};
use std::sync::Arc;

fn report(key: &str, job: &str, payload: &str, limits: ReportLimits) -> ReportWrite {
    ReportWrite {
        hostname: h("h"),
        job_id: j(job),
        dedupe_key: key.into(),
        payload: payload.into(),
        limits,
    }
}

/// A group gives each write the result it would have had alone, in
/// order: later writes see earlier ones (duplicate, quota).
#[test]
fn a_group_of_writes_is_each_write_in_order() {
    for (_guard, s) in stores() {
        s.create_job(&queued("j".into(), "h")).unwrap();
        let limits = ReportLimits {
            quota_bytes: 6,
            unmatched: 10,
        };
        let mut group = Vec::new();
        let take = queue(
            &mut group,
            TakeWrite {
                hostname: h("h"),
                window: Some(1),
                conn: 0,
                nudges: None,
            },
        );
        let reports: Vec<_> = [
            ("1", "other", "{}"),
            ("1", "other", "{}"),
            ("2", "j", "1234"),
            ("3", "other", "1"),
        ]
        .into_iter()
        .map(|(key, job, payload)| queue(&mut group, report(key, job, payload, limits)))
        .collect();
        run_group(&s, group, 5);
        let taken: Vec<String> = take
            .blocking_recv()
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|j| j.job_id)
            .collect();
        assert_eq!(taken, ["j"]);
        let stored: Vec<Stored> = reports
            .into_iter()
            .map(|r| r.blocking_recv().unwrap().unwrap().stored)
            .collect();
        assert_eq!(
            stored,
            [
                Stored::New,
                Stored::Duplicate,
                Stored::New,
                Stored::Refused(Refusal::Quota {
                    used: 6,
                    size: 1,
                    quota: 6
                })
            ]
        );
        assert_eq!(s.get_job("j").unwrap().unwrap().status, JobStatus::Done);
        assert_eq!(s.count_reports().unwrap(), 2);
        assert!(s.write_batch::<ReportWrite>(&[], 6).unwrap().is_empty());
        // One kind at a time, without the writer's task: the same answers.
        let outs = s
            .write_batch(&[report("4", "other", "1", limits)], 7)
            .unwrap();
        assert_eq!(
            outs[0].as_ref().unwrap().stored,
            Stored::Refused(Refusal::Quota {
                used: 6,
                size: 1,
                quota: 6
            })
        );
    }
}

/// A write of a group that fails gets its own error, of its kind (an
/// agent that moved: [`StoreError::Moved`]); the others commit. A group
/// whose transaction fails answers every write with that failure, as a
/// [`StoreError`] of its kind, and none of them happened.
#[test]
fn a_failed_write_or_group_answers_with_the_store_error_kind() {
    /// A write that breaks its group's transaction (as a database that
    /// fails mid-group would): what follows it in the group cannot commit.
    struct Breaks;
    impl GroupWrite for Breaks {
        type Out = ();
        fn apply(&self, _: &Store, tx: &mut dyn Sql, _: i64) -> anyhow::Result<()> {
            tx.batch("ROLLBACK")
        }
    }
    for (_guard, s) in stores() {
        let s = s.held_as("l-a").unwrap();
        s.create_job(&queued("j".into(), "h")).unwrap();
        let limits = ReportLimits::default();
        // Its own failure: the take of a connection that holds no agent.
        let mut group = Vec::new();
        let stale = TakeWrite {
            hostname: h("h"),
            window: Some(1),
            conn: 7,
            nudges: None,
        };
        let take = queue(&mut group, stale);
        let stored = queue(&mut group, report("1", "j", "{}", limits));
        run_group(&s, group, 5);
        assert_eq!(
            take.blocking_recv().unwrap().unwrap_err(),
            StoreError::Moved("h".into())
        );
        assert_eq!(stored.blocking_recv().unwrap().unwrap().stored, Stored::New);
        // The group's failure: every write gets it, none happened.
        let mut group = Vec::new();
        let first = queue(&mut group, report("2", "other", "{}", limits));
        let breaks = queue(&mut group, Breaks);
        let last = queue(&mut group, report("3", "other", "{}", limits));
        run_group(&s, group, 6);
        let first = first.blocking_recv().unwrap().unwrap_err();
        assert!(matches!(first, StoreError::Backend(_)), "{first:?}");
        assert_eq!(breaks.blocking_recv().unwrap().unwrap_err(), first);
        assert_eq!(last.blocking_recv().unwrap().unwrap_err(), first);
        assert_eq!(s.count_reports().unwrap(), 1, "only the first group's");
    }
}

/// A store error handed on keeps its kind: a `StoreError` whole, any
/// other error by what it is ([`StoreError::classify`]).
#[test]
fn store_errors_handed_on_keep_their_kind() {
    for e in [
        StoreError::Conflict("c".into()),
        StoreError::NotFound("n".into()),
        StoreError::Corrupt("x".into()),
        StoreError::Moved("h".into()),
        StoreError::Backend("b".into()),
    ] {
        assert_eq!(StoreError::of(&e.clone().into()), e);
    }
    let unreadable = rusqlite::Error::InvalidColumnType(0, "x".into(), rusqlite::types::Type::Null);
    let e = StoreError::of(&unreadable.into());
    assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}");
    let e = StoreError::of(&anyhow::anyhow!("disk on fire"));
    assert_eq!(e, StoreError::Backend("disk on fire".into()));
    assert_eq!(StoreError::classify(&e.into()), ErrorKind::Backend);
}

/// Only a group of hand-overs may commit without waiting for the
/// disk: everything else is acknowledged to someone, or would show a
/// gone connection holding its agent.
#[test]
fn only_hand_overs_commit_without_waiting_for_the_disk() {
    let take = TakeWrite {
        hostname: h("h"),
        window: Some(1),
        conn: 1,
        nudges: None,
    };
    assert!(take.may_be_lost());
    let report = report("d", "j", "{}", ReportLimits::default());
    assert!(!report.may_be_lost(), "{report:?}");
    let bind = BindWrite {
        key_id: 1,
        hostname: h("h"),
        tags: vec![],
    };
    assert!(!bind.may_be_lost(), "{bind:?}");
    let register = RegisterWrite {
        info: agent_info("h"),
        conn: 1,
    };
    assert!(!register.may_be_lost(), "{register:?}");
    let touch = TouchWrite {
        hostname: h("h"),
        last_seen_ms: 1,
        conn: 1,
        offline: false,
    };
    assert!(!touch.may_be_lost(), "{touch:?}");
    // On PostgreSQL, the transaction says so.
    for (_guard, s) in stores() {
        if s.dialect() != Dialect::Postgres {
            continue;
        }
        let setting = |flush, plans| {
            s.write_with(flush, plans, |tx| {
                Ok((
                    scalar::<String>(tx, "SHOW synchronous_commit", &[])?,
                    scalar::<String>(tx, "SHOW plan_cache_mode", &[])?,
                ))
            })
            .unwrap()
        };
        let fresh = "force_custom_plan";
        for (flush, plans, want) in [
            (Flush::Wait, Plans::Fresh, ("on", fresh)),
            (Flush::Later, Plans::Fresh, ("off", fresh)),
            (Flush::Later, Plans::Kept, ("off", "auto")),
            (Flush::Wait, Plans::Kept, ("on", "auto")),
            (Flush::Wait, Plans::Fresh, ("on", fresh)),
        ] {
            let (sync, plan) = setting(flush, plans);
            assert_eq!((sync.as_str(), plan.as_str()), want, "{flush:?} {plans:?}");
        }
    }
}

/// A group of one write keeps PostgreSQL's plans; a larger one (the
/// set-based pass) plans for its values: a generic plan of the set-based
/// hand-over read every queued job per host.
#[test]
fn only_a_group_of_one_keeps_plans() {
    for (_guard, s) in stores() {
        if s.dialect() != Dialect::Postgres {
            continue;
        }
        let modes = |n: usize| -> Vec<String> {
            let mut state = ();
            s.grouped_with(
                Flush::Wait,
                n,
                &mut state,
                |_, _| Ok((0..n).map(|_| None).collect()),
                |_, tx, _| scalar::<String>(tx, "SHOW plan_cache_mode", &[]),
            )
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect()
        };
        assert_eq!(modes(1), ["auto"]);
        assert_eq!(modes(2), ["force_custom_plan", "force_custom_plan"]);
    }
}

/// On PostgreSQL a group's plain reports of jobs and its hand-overs go
/// through the set-based pass (`store/batch.rs`); on SQLite one by one.
/// Both give every write the same answer: jobs handed out oldest first
/// within each window, a stale connection told the agent moved,
/// duplicates and quota decided in the group's order, jobs settled once.
#[test]
fn the_set_based_pass_answers_as_one_by_one() {
    for (_guard, s) in stores() {
        let s = s.held_as("l-a").unwrap();
        hand_overs_in_one_group(&s);
        // A report stored before the group: the group's copy is a duplicate.
        let limits = ReportLimits {
            quota_bytes: 25,
            unmatched: 10,
        };
        let old = ReportWrite {
            hostname: h("a"),
            job_id: j("a3"),
            dedupe_key: "kdup".into(),
            payload: "{}".into(),
            limits,
        };
        assert_eq!(
            s.write_batch(std::slice::from_ref(&old), 3).unwrap()[0]
                .as_ref()
                .unwrap()
                .stored,
            Stored::New
        );
        let report = |host: &str, job: &str, key: &str| ReportWrite {
            hostname: h(host),
            job_id: j(job),
            dedupe_key: key.into(),
            payload: r#"{"a":1234}"#.into(),
            limits,
        };
        let outs = s
            .write_batch(
                &[
                    report("a", "a1", "ka1"),
                    report("b", "b1", "kb1"),
                    report("a", "a2", "ka2"),
                    report("a", "a3", "ka3"),
                    old,
                ],
                4,
            )
            .unwrap();
        let got: Vec<(Stored, Option<NewReport>)> = outs
            .iter()
            .map(|o| {
                let o = o.as_ref().unwrap();
                (o.stored, o.new)
            })
            .collect();
        let job = cc_proto::wire::ReportKind::Job;
        assert_eq!(
            got,
            [
                (Stored::New, Some((job, true))),
                (Stored::New, Some((job, true))),
                (Stored::New, Some((job, true))),
                (
                    Stored::Refused(Refusal::Quota {
                        used: 22,
                        size: 10,
                        quota: 25
                    }),
                    None
                ),
                (Stored::Duplicate, None),
            ]
        );
        for id in ["a1", "a2", "a3", "b1"] {
            assert_eq!(
                s.get_job(id).unwrap().unwrap().status,
                JobStatus::Done,
                "{id}"
            );
        }
        assert_eq!(s.usage("a").unwrap().bytes, 22);
        assert_eq!(s.usage("b").unwrap().bytes, 10);
        let done = s
            .events(0, &EventFilter::default(), 100)
            .unwrap()
            .into_iter()
            .filter(|e| e.status == "done")
            .count();
        assert_eq!(done, 4, "one done event per job");
    }
}

/// The hand-over half of `the_set_based_pass_answers_as_one_by_one`:
/// four hosts' takes in one group, one of them by a stale connection.
fn hand_overs_in_one_group(s: &Store) {
    for (host, conn) in [("a", 1), ("b", 2), ("c", 3), ("d", 4)] {
        let op = RegisterWrite {
            info: agent_info(host),
            conn,
        };
        assert!(s.write_batch(&[op], 1).unwrap()[0].is_ok());
    }
    for (id, host) in [
        ("a1", "a"),
        ("a2", "a"),
        ("a3", "a"),
        ("b1", "b"),
        ("d1", "d"),
    ] {
        s.create_job(&queued(id.into(), host)).unwrap();
    }
    let take = |host: &str, window, conn| TakeWrite {
        hostname: h(host),
        window,
        conn,
        nudges: None,
    };
    let takes = s
        .write_batch(
            &[
                take("a", Some(2), 1),
                take("b", None, 2),
                take("c", Some(1), 3),
                take("d", Some(1), 9),
            ],
            2,
        )
        .unwrap();
    let ids = |r: &anyhow::Result<Vec<JobRow>>| -> Vec<String> {
        r.as_ref()
            .unwrap()
            .iter()
            .map(|j| j.job_id.clone())
            .collect()
    };
    assert_eq!(ids(&takes[0]), ["a1", "a2"]);
    assert_eq!(ids(&takes[1]), ["b1"]);
    assert!(ids(&takes[2]).is_empty());
    let moved = takes[3].as_ref().unwrap_err().downcast_ref::<StoreError>();
    assert_eq!(moved, Some(&StoreError::Moved("d".into())));
    assert_eq!(s.get_job("d1").unwrap().unwrap().status, JobStatus::Queued);
}

/// A hand-over answers the nudges given before it read the queue (they
/// were given for jobs it saw), and says whether it filled the agent's
/// window: only then, or after a nudge since, does a report that frees
/// room call for another. In a group (the set-based pass on PostgreSQL)
/// and alone.
#[test]
fn a_hand_over_answers_the_nudges_given_before_it_read_the_queue() {
    for (_guard, s) in stores() {
        for (host, conn) in [("a", 1), ("b", 2), ("c", 3)] {
            let op = RegisterWrite {
                info: agent_info(host),
                conn,
            };
            assert!(s.write_batch(&[op], 1).unwrap()[0].is_ok());
        }
        for (id, host) in [("a1", "a"), ("a2", "a"), ("b1", "b")] {
            s.create_job(&queued(id.into(), host)).unwrap();
        }
        let nudges: Vec<Arc<Nudges>> = (0..3).map(|_| Arc::default()).collect();
        let take = |host: &str, window, conn, n: &Arc<Nudges>| TakeWrite {
            hostname: h(host),
            window: Some(window),
            conn,
            nudges: Some(Arc::clone(n)),
        };
        for n in &nudges {
            n.give();
            assert!(!n.answered(), "{:?}", s.dialect());
        }
        let takes = [
            take("a", 1, 1, &nudges[0]),
            take("b", 4, 2, &nudges[1]),
            take("c", 1, 3, &nudges[2]),
        ];
        for (t, n) in s.write_batch(&takes, 2).unwrap().iter().zip(&nudges) {
            assert!(t.is_ok(), "{t:?}");
            n.committed();
            assert!(n.answered(), "{:?}", s.dialect());
        }
        // a: one of two taken, its window full; b: one, room for three
        // more; c: nothing queued.
        let wanted: Vec<bool> = nudges.iter().map(|n| n.room_wanted()).collect();
        assert_eq!(wanted, [true, false, false], "{:?}", s.dialect());
        nudges[1].give();
        assert!(nudges[1].room_wanted(), "a nudge since: {:?}", s.dialect());

        // Alone, with no room at all: the window stays full.
        nudges[0].give();
        let again = s.write_batch(&[take("a", 1, 1, &nudges[0])], 2).unwrap();
        assert!(again[0].as_ref().unwrap().is_empty());
        nudges[0].committed();
        assert!(nudges[0].answered() && nudges[0].room_wanted());
        // Alone, with room left over: b has b1 in flight, nothing queued.
        let alone = s.write_batch(&[take("b", 4, 2, &nudges[1])], 2).unwrap();
        assert!(alone[0].as_ref().unwrap().is_empty());
        nudges[1].committed();
        assert!(!nudges[1].room_wanted(), "{:?}", s.dialect());
    }
}

/// A fan-out queues a hand-over for every host at once; a report that
/// comes after them is in the next group, not behind them: hand-overs and
/// the writes somebody waits for come through two queues. With one, the
/// report waited for room behind every hand-over still to be queued (the
/// first report of a 19,000-host fan-out: 2 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_does_not_wait_behind_a_fan_outs_hand_overs() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dir = tempdir::Dir::new();
    let store = Store::open(&dir.path().join("cc.db")).unwrap();
    store.create_job(&queued("j".into(), "h")).unwrap();
    let writer = Writer::spawn(Db::new(store), |_, _, _| {});
    let n = 12 * MAX_GROUP;
    let (started, answered) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    for i in 0..n {
        let (w, s, a) = (writer.clone(), Arc::clone(&started), Arc::clone(&answered));
        tokio::spawn(async move {
            let take = TakeWrite {
                hostname: h(&format!("t{i}")),
                window: Some(1),
                conn: 0,
                nudges: None,
            };
            // Counted in the same poll that queues the write or waits
            // for room.
            s.fetch_add(1, Ordering::SeqCst);
            w.take(take).await.unwrap();
            a.fetch_add(1, Ordering::SeqCst);
        });
    }
    // Every hand-over is queued or waits for room in the queue.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while started.load(Ordering::SeqCst) < n {
        assert!(
            std::time::Instant::now() < deadline,
            "the hand-overs never queued"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let limits = ReportLimits {
        quota_bytes: 1 << 20,
        unmatched: 10,
    };
    let at_send = answered.load(Ordering::SeqCst);
    let out = writer.report(report("k", "j", "{}", limits)).await.unwrap();
    assert_eq!(out.stored, Stored::New);
    // The group running when it came, and the one it went into.
    let meanwhile = answered.load(Ordering::SeqCst) - at_send;
    assert!(
        meanwhile <= 4 * MAX_GROUP,
        "{meanwhile} of the {} hand-overs waiting were answered before the report",
        n - at_send
    );
}
