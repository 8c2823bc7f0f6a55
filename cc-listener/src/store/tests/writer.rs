//! Grouped writes: each its own answer, of its own type, in order; a
//! failed group answers every write with the failure's kind.

use super::*;
use crate::store::writer::testing::{queue, run_group};

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
        let setting = |flush| {
            s.write_with(flush, |tx| {
                scalar::<String>(tx, "SHOW synchronous_commit", &[])
            })
            .unwrap()
        };
        assert_eq!(setting(Flush::Wait), "on");
        assert_eq!(setting(Flush::Later), "off");
        assert_eq!(setting(Flush::Wait), "on", "for that transaction only");
    }
}
