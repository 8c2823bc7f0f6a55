//! Tests of the store against each engine.

use super::*;
use crate::sql::{p, scalar};
use cc_proto::wire::{AgentInfo, CronEntry, ExecutionMode};

/// What keeps a test's store alive: its directory or its cluster.
#[allow(dead_code)]
enum Guard {
    Dir(tempdir::Dir),
    Pg(cc_e2e::pg::Cluster),
}

/// A fresh store of each backend: a SQLite file, and a database in a
/// private PostgreSQL cluster (skipped, with a note, outside CI when
/// PostgreSQL is not installed). Each test runs against both.
fn stores() -> Vec<(Guard, Store)> {
    let dir = tempdir::Dir::new();
    let sqlite = Store::open(&dir.path().join("cc.db")).unwrap();
    let mut all = vec![(Guard::Dir(dir), sqlite)];
    if let Some(cluster) = cc_e2e::pg::Cluster::start() {
        let url = cluster.create_db("cc");
        let pg = Store::open_postgres(&url).unwrap();
        all.push((Guard::Pg(cluster), pg));
    }
    all
}

/// A tiny temp dir, removed on drop (avoids a dependency for one test).
mod tempdir {
    use std::path::{Path, PathBuf};
    pub(super) struct Dir(PathBuf);
    impl Dir {
        pub(super) fn new() -> Self {
            let p = std::env::temp_dir().join(format!(
                "cc-store-test-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4()
            ));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
        pub(super) fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[test]
fn job_states_are_stored_as_their_words_and_an_unknown_one_is_an_error() {
    for st in JobStatus::ALL {
        assert_eq!(JobStatus::parse(st.as_str()), Some(st));
        assert_eq!(serde_json::to_value(st).unwrap(), st.as_str());
    }
    assert_eq!(JobStatus::parse("Done"), None);
    for (_guard, s) in stores() {
        let job = |id: &str| NewJob {
            job_id: id.into(),
            hostname: "h".into(),
            command: "/bin/true".into(),
            args: vec![],
            timeout_secs: 5,
            created_ms: 0,
            expires_ms: 10,
            signed: None,
        };
        s.create_job(&job("j")).unwrap();
        assert_eq!(s.get_job("j").unwrap().unwrap().status, JobStatus::Queued);
        s.write(|tx| tx.exec("UPDATE jobs SET status = 'running' WHERE job_id = 'j'", &[]))
            .unwrap();
        let e = s.get_job("j").unwrap_err();
        assert!(
            e.to_string().contains("unknown job status \"running\""),
            "{e}"
        );
        assert_eq!(StoreError::classify(&e), ErrorKind::Corrupt);
    }
}

#[test]
fn store_errors_have_kinds_the_api_answers_from() {
    for (_guard, s) in stores() {
        let job = NewJob {
            job_id: "once".into(),
            hostname: "h".into(),
            command: "/bin/true".into(),
            args: vec![],
            timeout_secs: 5,
            created_ms: 0,
            expires_ms: 10,
            signed: None,
        };
        s.create_job(&job).unwrap();
        let again = s.create_job(&job).unwrap_err();
        assert_eq!(StoreError::classify(&again), ErrorKind::Conflict);
        assert_eq!(again.to_string(), "a job once exists already");
        // The same id in a run: the whole run is refused, nothing stored.
        let run = NewRun {
            run_id: "r".into(),
            command: "/bin/true".into(),
            args: vec![],
            timeout_secs: 5,
            batch: None,
            selector: "{}".into(),
            queue_ttl_ms: 10,
            created_ms: 0,
        };
        let fresh = NewJob {
            job_id: "fresh".into(),
            ..job.clone()
        };
        let e = s.create_run(&run, &[fresh, job.clone()]).unwrap_err();
        assert_eq!(StoreError::classify(&e), ErrorKind::Conflict);
        assert!(s.get_job("fresh").unwrap().is_none(), "rolled back");
        assert!(s.get_run("r").unwrap().is_none(), "rolled back");
        s.add_key("k", None, 0).unwrap();
        let dup = s.add_key("k", None, 0).unwrap_err();
        assert_eq!(StoreError::classify(&dup), ErrorKind::Conflict);
        assert_eq!(
            StoreError::classify(&anyhow::anyhow!("disk on fire")),
            ErrorKind::Backend
        );
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        assert_eq!(StoreError::classify(&busy.into()), ErrorKind::Backend);
    }
}

#[test]
fn keys_are_stored_hashed_bound_once_and_revocable() {
    for (_guard, s) in stores() {
        let key = s.add_key("web1", None, 1).unwrap();
        assert!(key.starts_with("cck_") && key.len() == 68);
        let rec = s.authenticate(&key).unwrap().unwrap();
        assert_eq!(rec.name, "web1");
        assert!(s.authenticate("cck_wrong").unwrap().is_none());
        let tags = |t: &[&str]| t.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>();
        // The first registration binds hostname and tags (in any order,
        // each once); the same again is fine.
        let web = tags(&["role=web", "dc=1", "role=web"]);
        assert_eq!(
            s.bind_key(rec.id, "web1.example", &web).unwrap(),
            Binding::Ok
        );
        let same = tags(&["dc=1", "role=web"]);
        assert_eq!(
            s.bind_key(rec.id, "web1.example", &same).unwrap(),
            Binding::Ok
        );
        assert_eq!(
            s.bind_key(rec.id, "db1.example", &same).unwrap(),
            Binding::OtherHost("web1.example".into())
        );
        // Other tags, fewer or more, are not the key's.
        for claim in [
            tags(&["dc=1"]),
            tags(&["dc=1", "role=web", "role=db"]),
            vec![],
        ] {
            assert_eq!(
                s.bind_key(rec.id, "web1.example", &claim).unwrap(),
                Binding::OtherTags(same.clone()),
                "{claim:?}"
            );
        }
        // Until an operator changes them.
        assert_eq!(
            s.retag_key("web1", &tags(&["role=db"])).unwrap(),
            tags(&["role=db"])
        );
        assert_eq!(
            s.bind_key(rec.id, "web1.example", &tags(&["role=db"]))
                .unwrap(),
            Binding::Ok
        );
        assert_eq!(
            s.list_keys().unwrap()[0].tags.as_deref(),
            Some(tags(&["role=db"]).as_slice())
        );
        let nobody = s.retag_key("nobody", &[]).unwrap_err();
        assert_eq!(StoreError::classify(&nobody), ErrorKind::NotFound);
        let other = s.add_key("other", None, 1).unwrap();
        let other = s.authenticate(&other).unwrap().unwrap();
        assert_eq!(
            s.bind_key(other.id, "web1.example", &[]).unwrap(),
            Binding::HostnameTaken
        );
        // Tags given with the key are the ones its host must have.
        let tagged = s
            .add_key_tagged("tagged", None, Some(&tags(&["b", "a"])), 1)
            .unwrap();
        let tagged = s.authenticate(&tagged).unwrap().unwrap();
        assert_eq!(
            s.bind_key(tagged.id, "t.example", &tags(&["a"])).unwrap(),
            Binding::OtherTags(tags(&["a", "b"]))
        );
        let refused = s.list_keys().unwrap();
        let refused = refused.iter().find(|k| k.name == "tagged").unwrap();
        assert_eq!(
            refused.hostname, None,
            "a refused registration binds nothing"
        );
        s.revoke_key("web1", 2).unwrap();
        assert!(s.authenticate(&key).unwrap().is_none());
        let revoked = s.retag_key("web1", &[]).unwrap_err();
        assert_eq!(StoreError::classify(&revoked), ErrorKind::NotFound);
        let again = s.revoke_key("web1", 3).unwrap_err();
        assert_eq!(StoreError::classify(&again), ErrorKind::NotFound);
        assert!(s.add_key("web1", None, 4).is_err(), "names are unique");
    }
}

#[test]
fn reports_are_stored_once_and_settle_their_job() {
    for (_guard, s) in stores() {
        s.create_job(&NewJob {
            job_id: "j1".into(),
            hostname: "h".into(),
            command: "/bin/true".into(),
            args: vec![],
            timeout_secs: 10,
            created_ms: 0,
            expires_ms: 100,
            signed: None,
        })
        .unwrap();
        // Other hosts' reports first, so row ids of the tables differ: the
        // job must point at its own report.
        for (i, host) in ["a", "a", "b"].iter().enumerate() {
            let key = format!("x{i}");
            s.store_report(
                host,
                "other",
                &key,
                r#"{"other":1}"#,
                1,
                ReportLimits::default(),
            )
            .unwrap();
        }
        assert_eq!(
            s.store_report("h", "j1", "r1", "{}", 5, ReportLimits::default())
                .unwrap(),
            Stored::New
        );
        assert_eq!(
            s.store_report("h", "j1", "r1", "{}", 6, ReportLimits::default())
                .unwrap(),
            Stored::Duplicate
        );
        let job = s.get_job("j1").unwrap().unwrap();
        assert_eq!(job.status, JobStatus::Done);
        assert_eq!(job.report.as_deref(), Some("{}"));
        assert_eq!(s.count_reports().unwrap(), 4);
    }
}

#[test]
fn sweep_marks_overdue_jobs_lost_and_old_queued_jobs_expired() {
    for (_guard, s) in stores() {
        let job = |id: &str| NewJob {
            job_id: id.into(),
            hostname: "h".into(),
            command: "x".into(),
            args: vec![],
            timeout_secs: 1,
            created_ms: 0,
            expires_ms: 500,
            signed: None,
        };
        s.create_job(&job("sent")).unwrap();
        assert_eq!(s.take_for_host("h", None, 0).unwrap().len(), 1);
        s.create_job(&job("queued")).unwrap();
        assert_eq!(s.sweep(400, 100).unwrap(), (0, 0));
        assert_eq!(s.sweep(1_101, 100).unwrap(), (1, 1));
        assert_eq!(s.get_job("sent").unwrap().unwrap().status, JobStatus::Lost);
        assert_eq!(
            s.get_job("queued").unwrap().unwrap().status,
            JobStatus::Expired
        );
    }
}

/// Issue "An agent restart loses no job": the listener hands a host no
/// more than its window, oldest first, and the next as one settles.
#[test]
fn jobs_go_out_in_submission_order_within_the_window() {
    for (_guard, s) in stores() {
        // Ids that sort against their submission order.
        let ids = ["z", "b", "y", "a", "x"];
        for id in ids {
            s.create_job(&NewJob {
                job_id: id.into(),
                hostname: "h".into(),
                command: "x".into(),
                args: vec![],
                timeout_secs: 10,
                created_ms: 7,
                expires_ms: 1_000,
                signed: None,
            })
            .unwrap();
        }
        let take = |w| -> Vec<String> {
            s.take_for_host("h", w, 1)
                .unwrap()
                .into_iter()
                .map(|j| j.job_id)
                .collect()
        };
        assert_eq!(take(Some(2)), ["z", "b"]);
        assert!(take(Some(2)).is_empty(), "the window is full");
        s.store_report("h", "z", "r-z", "{}", 2, ReportLimits::default())
            .unwrap();
        assert_eq!(take(Some(2)), ["y"]);
        assert!(s.take_for_host("other", Some(2), 1).unwrap().is_empty());
        assert_eq!(take(None), ["a", "x"], "no window: everything queued");
        assert!(s.hosts_with_queued(1).unwrap().is_empty());
    }
}

/// The quota admits a report that reaches it exactly and refuses one
/// byte more; unmatched reports have their own count; a refused report
/// writes nothing; pruning gives the bytes back.
#[test]
fn reports_are_held_to_the_hosts_quota() {
    for (_guard, s) in stores() {
        let limits = ReportLimits {
            quota_bytes: 10,
            unmatched: 2,
        };
        s.set_cron(
            "h",
            &[CronEntry {
                id: "c".into(),
                schedule: "* * * * *".into(),
                command: "/bin/true".into(),
            }],
            None,
            0,
        )
        .unwrap();
        let put = |key: &str, job: &str, payload: &str, at: i64| {
            s.store_report("h", job, key, payload, at, limits).unwrap()
        };
        assert_eq!(put("1", "c", "1234", 1), Stored::New);
        assert_eq!(
            put("2", "c", "123456", 2),
            Stored::New,
            "exactly at the quota"
        );
        assert_eq!(
            put("3", "c", "1", 3),
            Stored::Refused(Refusal::Quota {
                used: 10,
                size: 1,
                quota: 10
            })
        );
        assert_eq!(
            put("2", "c", "123456", 4),
            Stored::Duplicate,
            "a resend is still a duplicate"
        );
        assert_eq!(
            s.usage("h").unwrap(),
            Usage {
                bytes: 10,
                unmatched: 0
            }
        );
        assert_eq!(
            s.count_reports().unwrap(),
            2,
            "a refused report writes nothing"
        );
        // Another host has its own quota.
        assert_eq!(
            s.store_report("g", "x", "1", "12345678", 5, limits)
                .unwrap(),
            Stored::New
        );
        // Pruning the oldest gives its bytes back: 4 bytes free again.
        assert_eq!(s.prune_reports(2, 100).unwrap(), 1);
        assert_eq!(s.usage("h").unwrap().bytes, 6);
        assert_eq!(put("4", "c", "1234", 6), Stored::New);
        assert_eq!(
            put("5", "c", "1", 7),
            Stored::Refused(Refusal::Quota {
                used: 10,
                size: 1,
                quota: 10
            })
        );
        // Unmatched: two kept, the third refused, quota bytes or not.
        let wide = ReportLimits {
            quota_bytes: 1000,
            unmatched: 2,
        };
        let un = |key: &str| s.store_report("u", "nojob", key, "{}", 8, wide).unwrap();
        assert_eq!(un("a"), Stored::New);
        assert_eq!(un("b"), Stored::New);
        assert_eq!(un("c"), Stored::Refused(Refusal::Unmatched { quota: 2 }));
        assert_eq!(
            s.usage("u").unwrap(),
            Usage {
                bytes: 4,
                unmatched: 2
            }
        );
        // The batch bounds one pass, oldest first; pruned unmatched
        // reports free their count too.
        assert_eq!(s.prune_reports(9, 1).unwrap(), 1);
        assert_eq!(s.usage("h").unwrap().bytes, 4, "the report at 2 went first");
        assert_eq!(s.prune_reports(9, 100).unwrap(), 4);
        assert_eq!(s.usage("u").unwrap(), Usage::default());
        assert_eq!(s.usage("h").unwrap(), Usage::default());
        assert_eq!(un("d"), Stored::New);
    }
}

/// A group gives each write the result it would have had alone, in
/// order: later writes see earlier ones (duplicate, quota).
#[test]
fn a_group_of_writes_is_each_write_in_order() {
    for (_guard, s) in stores() {
        s.create_job(&NewJob {
            job_id: "j".into(),
            hostname: "h".into(),
            command: "/bin/true".into(),
            args: vec![],
            timeout_secs: 10,
            created_ms: 0,
            expires_ms: 1_000_000,
            signed: None,
        })
        .unwrap();
        let limits = ReportLimits {
            quota_bytes: 6,
            unmatched: 10,
        };
        let report = |key: &str, job: &str, payload: &str| WriteOp::Report {
            hostname: "h".into(),
            job_id: job.into(),
            dedupe_key: key.into(),
            payload: payload.into(),
            limits,
        };
        let ops = [
            WriteOp::Take {
                hostname: "h".into(),
                window: Some(1),
                conn: 0,
            },
            report("1", "other", "{}"),
            report("1", "other", "{}"),
            report("2", "j", "1234"),
            report("3", "other", "1"),
        ];
        let outs = s.write_batch(&ops, 5).unwrap();
        let taken = |o: &Result<WriteOut>| match o {
            Ok(WriteOut::Taken(jobs)) => jobs.iter().map(|j| j.job_id.clone()).collect(),
            _ => Vec::new(),
        };
        let stored = |o: &Result<WriteOut>| match o {
            Ok(WriteOut::Report { stored, .. }) => Some(*stored),
            _ => None,
        };
        assert_eq!(taken(&outs[0]), ["j"]);
        assert_eq!(stored(&outs[1]), Some(Stored::New));
        assert_eq!(stored(&outs[2]), Some(Stored::Duplicate));
        assert_eq!(stored(&outs[3]), Some(Stored::New));
        assert_eq!(
            stored(&outs[4]),
            Some(Stored::Refused(Refusal::Quota {
                used: 6,
                size: 1,
                quota: 6
            }))
        );
        assert_eq!(s.get_job("j").unwrap().unwrap().status, JobStatus::Done);
        assert_eq!(s.count_reports().unwrap(), 2);
        assert!(s.write_batch(&[], 6).unwrap().is_empty());
    }
}

/// Regression: `serve` and `keys add` opening a fresh file at the same
/// moment both saw schema version 0 and the second failed with "table
/// api_keys already exists".
#[test]
fn concurrent_first_opens_migrate_once() {
    let dir = tempdir::Dir::new();
    let path = dir.path().join("cc.db");
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let p = path.clone();
            std::thread::spawn(move || Store::open(&p).map(|_| ()))
        })
        .collect();
    for h in handles {
        h.join().unwrap().unwrap();
    }
}

#[test]
fn reopening_keeps_everything_and_does_not_migrate_twice() {
    let dir = tempdir::Dir::new();
    let path = dir.path().join("cc.db");
    let key = Store::open(&path).unwrap().add_key("k", None, 1).unwrap();
    let again = Store::open(&path).unwrap();
    assert!(again.authenticate(&key).unwrap().is_some());
}

/// Two stores on one PostgreSQL database, as two listeners are.
fn shared_pair() -> Option<(cc_e2e::pg::Cluster, Store, Store)> {
    let cluster = cc_e2e::pg::Cluster::start()?;
    let url = cluster.create_db("shared");
    let a = Store::open_postgres(&url).unwrap();
    let b = Store::open_postgres(&url).unwrap();
    Some((cluster, a, b))
}

fn agent_info(host: &str) -> AgentInfo {
    AgentInfo {
        hostname: cc_proto::Hostname::parse(host).unwrap(),
        os: "linux".into(),
        arch: "amd64".into(),
        tags: vec![],
        execution_mode: ExecutionMode::User,
        is_root: false,
        job_window: Some(4),
    }
}

fn queued(id: String, host: &str) -> NewJob {
    NewJob {
        job_id: id,
        hostname: host.into(),
        command: "/bin/true".into(),
        args: vec![],
        timeout_secs: 10,
        created_ms: 0,
        expires_ms: i64::MAX,
        signed: None,
    }
}

/// Only the listener (and connection) that registered an agent last
/// hands it jobs; a stale connection elsewhere is told the agent moved.
#[test]
fn only_the_listener_holding_an_agent_hands_it_jobs() {
    let Some((_c, a, b)) = shared_pair() else {
        return;
    };
    let (a, b) = (a.held_as("l-a").unwrap(), b.held_as("l-b").unwrap());
    let register = |s: &Store, conn| {
        let op = WriteOp::Register {
            info: agent_info("h.test"),
            conn,
        };
        assert!(s.write_batch(&[op], 1).unwrap()[0].is_ok());
    };
    let take = |s: &Store, conn| {
        let op = WriteOp::Take {
            hostname: "h.test".into(),
            window: Some(10),
            conn,
        };
        s.write_batch(&[op], 2).unwrap().remove(0)
    };
    a.create_job(&queued("j1".into(), "h.test")).unwrap();
    register(&a, 1);
    let moved = |r: Result<WriteOut>| match r {
        Err(e) => matches!(e.downcast_ref(), Some(StoreError::Moved(h)) if h == "h.test"),
        Ok(_) => false,
    };
    assert!(moved(take(&b, 1)), "b does not hold it");
    assert!(
        moved(take(&a, 2)),
        "another connection of a does not hold it"
    );
    // The agent reconnects to b: a's connection is stale.
    register(&b, 9);
    assert!(moved(take(&a, 1)));
    match take(&b, 9) {
        Ok(WriteOut::Taken(jobs)) => assert_eq!(jobs.len(), 1),
        other => panic!("{other:?}"),
    }
    let row = |s: &Store| {
        s.agents_between("h.test", "h.test").unwrap()[0]
            .listener
            .clone()
    };
    assert_eq!(row(&a).as_deref(), Some("l-b"));
    // a's stale connection ending does not release b's hold; b's does.
    a.touch_agent("h.test", 5, 1).unwrap();
    assert_eq!(row(&a).as_deref(), Some("l-b"));
    b.touch_agent("h.test", 6, 9).unwrap();
    assert_eq!(row(&a), None);
}

/// On reconnect, jobs sent and unreported go out again — but only from
/// the listener and connection that hold the agent: a stale one (the
/// agent moved on) resends nothing and is told the agent moved.
#[test]
fn only_the_listener_holding_an_agent_resends_its_unreported_jobs() {
    let Some((_c, a, b)) = shared_pair() else {
        return;
    };
    let (a, b) = (a.held_as("l-a").unwrap(), b.held_as("l-b").unwrap());
    let register = |s: &Store, conn| {
        let op = WriteOp::Register {
            info: agent_info("h.test"),
            conn,
        };
        assert!(s.write_batch(&[op], 1).unwrap()[0].is_ok());
    };
    a.create_job(&queued("j1".into(), "h.test")).unwrap();
    register(&a, 1);
    let op = WriteOp::Take {
        hostname: "h.test".into(),
        window: Some(10),
        conn: 1,
    };
    assert!(a.write_batch(&[op], 2).unwrap()[0].is_ok());
    // The agent moves to b; a's connection is stale.
    register(&b, 9);
    let moved = |r: Result<Vec<JobRow>>| match r {
        Err(e) => matches!(e.downcast_ref(), Some(StoreError::Moved(h)) if h == "h.test"),
        Ok(jobs) => {
            assert!(jobs.is_empty(), "a stale connection resent {jobs:?}");
            false
        }
    };
    assert!(moved(a.resend_unreported("h.test", 1, 10)));
    assert!(
        moved(b.resend_unreported("h.test", 8, 10)),
        "b, another connection"
    );
    let jobs = b.resend_unreported("h.test", 9, 10).unwrap();
    assert_eq!(jobs.len(), 1);
}

/// Hosts taken from two listeners at once: every job handed out
/// exactly once.
#[test]
fn jobs_taken_from_two_listeners_at_once_go_out_once() {
    let Some((_c, a, b)) = shared_pair() else {
        return;
    };
    for i in 0..400 {
        a.create_job(&queued(format!("j{i}"), "h.test")).unwrap();
    }
    let (a, b) = (Arc::new(a), Arc::new(b));
    let takers: Vec<_> = [a, b]
        .into_iter()
        .flat_map(|s| (0..2).map(move |_| Arc::clone(&s)))
        .map(|s| {
            std::thread::spawn(move || {
                let mut got = Vec::new();
                loop {
                    let jobs = s.take_for_host("h.test", None, 1).unwrap();
                    if jobs.is_empty() {
                        return got;
                    }
                    got.extend(jobs.into_iter().map(|j| j.job_id));
                    // Smaller bites, so the takers interleave.
                    std::thread::yield_now();
                }
            })
        })
        .collect();
    let mut all: Vec<String> = takers.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!((n, all.len()), (400, 400), "each job once");
}

/// A reader that follows the events (`id > last seen`) while two
/// listeners write misses none: ids are given in commit order.
#[test]
fn a_follower_of_the_events_misses_none_while_two_listeners_write() {
    let Some((_c, a, b)) = shared_pair() else {
        return;
    };
    let (a, b) = (Arc::new(a), Arc::new(b));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let follower = {
        let (r, done) = (Arc::clone(&b), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut last = 0;
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let page = r.events(last, &EventFilter::default(), 10_000).unwrap();
                for e in &page {
                    seen.push(e.id);
                    last = e.id;
                }
                if finished && page.is_empty() {
                    return seen;
                }
            }
        })
    };
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let s = Arc::clone(if w % 2 == 0 { &a } else { &b });
            std::thread::spawn(move || {
                for i in 0..300 {
                    s.create_job(&queued(format!("w{w}-{i}"), "h.test"))
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = follower.join().unwrap();
    let all: Vec<i64> = a
        .events(0, &EventFilter::default(), 10_000)
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(all.len(), 1200);
    let missed = all.iter().filter(|id| !seen.contains(id)).count();
    assert_eq!(missed, 0, "events the follower never saw");
}

/// Retention: jobs that ended before the cut go (not queued or sent
/// ones, not newer ones), and runs left without jobs with them.
/// Only a group of hand-overs may commit without waiting for the
/// disk: everything else is acknowledged to someone, or would show a
/// gone connection holding its agent.
#[test]
fn only_hand_overs_commit_without_waiting_for_the_disk() {
    let take = WriteOp::Take {
        hostname: "h".into(),
        window: Some(1),
        conn: 1,
    };
    assert!(take.may_be_lost());
    let waits = [
        WriteOp::Report {
            hostname: "h".into(),
            job_id: "j".into(),
            dedupe_key: "d".into(),
            payload: "{}".into(),
            limits: ReportLimits::default(),
        },
        WriteOp::Bind {
            key_id: 1,
            hostname: "h".into(),
            tags: vec![],
        },
        WriteOp::Register {
            info: agent_info("h"),
            conn: 1,
        },
        WriteOp::Touch {
            hostname: "h".into(),
            last_seen_ms: 1,
            conn: 1,
        },
    ];
    for op in &waits {
        assert!(!op.may_be_lost(), "{op:?}");
    }
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

/// Every listener reads the revoked keys each second: through the
/// partial index, not by reading every key.
#[test]
fn revoked_keys_are_read_through_their_own_index() {
    for (_guard, s) in stores() {
        let plan = s
            .read(|c| {
                if c.dialect() == Dialect::Postgres {
                    // A table this small would be read whole anyway.
                    c.batch("SET enable_seqscan = off")?;
                }
                let explain = match c.dialect() {
                    Dialect::Sqlite => "EXPLAIN QUERY PLAN ",
                    Dialect::Postgres => "EXPLAIN ",
                };
                let rows = c.query(
                    &format!("{explain}SELECT id FROM api_keys WHERE revoked_ms IS NOT NULL"),
                    &[],
                )?;
                let col = rows.first().map_or(0, |r| r.0.len() - 1);
                rows.iter()
                    .map(|r| r.get::<String>(col))
                    .collect::<Result<Vec<_>>>()
            })
            .unwrap()
            .join("\n");
        assert!(plan.contains("api_keys_revoked"), "{plan}");
    }
}

#[test]
fn pruning_removes_old_finished_jobs_and_empty_runs_only() {
    for (_guard, s) in stores() {
        let job = |id: &str| NewJob {
            job_id: id.into(),
            hostname: "h".into(),
            command: "x".into(),
            args: vec![],
            timeout_secs: 1,
            created_ms: 0,
            expires_ms: 500,
            signed: None,
        };
        let run = NewRun {
            run_id: "old-run".into(),
            command: "x".into(),
            args: vec![],
            timeout_secs: 1,
            batch: None,
            selector: "{}".into(),
            queue_ttl_ms: 500,
            created_ms: 0,
        };
        s.create_run(&run, &[job("r1")]).unwrap();
        for id in ["done", "lost", "expired", "queued", "sent", "late"] {
            s.create_job(&job(id)).unwrap();
        }
        s.store_report("h", "done", "k1", "{}", 100, ReportLimits::default())
            .unwrap();
        s.store_report("h", "r1", "k2", "{}", 100, ReportLimits::default())
            .unwrap();
        // "lost" and "sent" go out; the sweep loses "lost" and expires
        // "expired" (and "late" and "queued", queued past 500).
        let taken: Vec<String> = s
            .take_for_host("h", Some(2), 1)
            .unwrap()
            .into_iter()
            .map(|j| j.job_id)
            .collect();
        assert_eq!(taken, ["lost", "expired"]);
        s.sweep(3_000, 100).unwrap();
        assert_eq!(s.get_job("lost").unwrap().unwrap().status, JobStatus::Lost);
        // "sent": taken now, still unreported; "late": ends after the cut.
        s.write(|tx| {
            tx.exec(
                "UPDATE jobs SET status = ?1, finished_ms = NULL WHERE job_id = 'sent'",
                &p![JobStatus::Sent],
            )?;
            tx.exec(
                "UPDATE jobs SET finished_ms = 9000 WHERE job_id = 'late'",
                &[],
            )
        })
        .unwrap();
        assert_eq!(s.prune_jobs(5_000, 2).unwrap(), 2, "a batch at a time");
        assert_eq!(s.prune_jobs(5_000, 100).unwrap(), 3);
        assert_eq!(s.prune_jobs(5_000, 100).unwrap(), 0);
        let left: Vec<&str> = ["r1", "done", "lost", "expired", "queued", "sent", "late"]
            .into_iter()
            .filter(|id| s.get_job(id).unwrap().is_some())
            .collect();
        assert_eq!(left, ["sent", "late"]);
        assert!(s.get_run("old-run").unwrap().is_none(), "its only job went");
    }
}
