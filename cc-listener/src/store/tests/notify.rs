//! Notifications in the store: one per change of state, the cursor and
//! the queue in one transaction, claims that one sender holds.

use std::sync::Arc;

use super::*;
use crate::notify::{Sink, SinkConfig, Tuning};

fn sink(dir: &std::path::Path, name: &str, events: &[&str], hosts: Option<&str>) -> Arc<Sink> {
    let secret = dir.join(format!("{name}.secret"));
    std::fs::write(&secret, "0123456789abcdef0123").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    Arc::new(
        Sink::from_config(&SinkConfig {
            name: name.into(),
            url: "http://127.0.0.1:9/hook".into(),
            events: events.iter().map(|e| (*e).to_owned()).collect(),
            hosts: hosts.map(str::to_owned),
            secret_file: secret,
            format: None,
        })
        .unwrap(),
    )
}

fn cron(s: &Store, host: &str, entry: &str, status: &str, exit: Option<i64>) {
    s.insert_event(&NewEvent {
        at_ms: 1_000,
        kind: "cron",
        job_id: entry.into(),
        hostname: host.into(),
        status: status.into(),
        exit_code: exit,
        detail: (status == "missed").then(|| "no cron daemon".into()),
    })
    .unwrap();
}

fn queued(s: &Store) -> Vec<(String, String, String)> {
    s.read(|c| {
        c.query(
            "SELECT sink, event, body FROM notify_queue ORDER BY id",
            &[],
        )?
        .iter()
        .map(|r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .collect()
    })
    .unwrap()
}

#[test]
fn a_failing_entry_notifies_once_and_recovers_once() {
    let dir = tempdir::Dir::new();
    let sinks = [sink(dir.path(), "ops", &["run_failed", "run_missed"], None)];
    for (_g, s) in stores() {
        let t = Tuning::default();
        cron(&s, "a.test", "backup", "done", Some(0));
        cron(&s, "a.test", "backup", "done", Some(2));
        cron(&s, "a.test", "backup", "done", Some(2));
        cron(&s, "a.test", "backup", "skipped", Some(75));
        cron(&s, "a.test", "backup", "missed", None);
        cron(&s, "a.test", "backup", "done", Some(0));
        cron(&s, "a.test", "backup", "done", Some(0));
        cron(&s, "b.test", "other", "done", Some(0));
        let out = s.notify_consume(0, &sinks, &t, 100).unwrap();
        let q = queued(&s);
        let events: Vec<&str> = q.iter().map(|(_, e, _)| e.as_str()).collect();
        assert_eq!(
            events,
            ["run_failed", "run_missed", "recovered"],
            "{:?}",
            s.dialect()
        );
        assert_eq!(out.queued, 3);
        let last: serde_json::Value = serde_json::from_str(&q[2].2).unwrap();
        assert_eq!(last["recoveredFrom"], "run_missed");
        assert_eq!(last["entry"], "backup");
        assert_eq!(last["hostname"], "a.test");
        // Consumed: nothing again.
        assert_eq!(s.notify_consume(0, &sinks, &t, 100).unwrap().queued, 0);
    }
}

/// Events an hour old when read (a listener ran without sinks, then got
/// some) move the state and send nothing.
#[test]
fn old_events_move_the_state_and_send_nothing() {
    let dir = tempdir::Dir::new();
    let sinks = [sink(dir.path(), "ops", &["run_failed"], None)];
    for (_g, s) in stores() {
        let t = Tuning::default();
        cron(&s, "a.test", "e", "done", Some(1));
        let late = 1_000 + 3600 * 1000 + 1;
        assert_eq!(s.notify_consume(late, &sinks, &t, 100).unwrap().queued, 0);
        cron(&s, "a.test", "e", "done", Some(1));
        assert_eq!(s.notify_consume(0, &sinks, &t, 100).unwrap().queued, 0);
        cron(&s, "a.test", "e", "done", Some(0));
        let out = s.notify_consume(0, &sinks, &t, 100).unwrap();
        assert_eq!(out.queued, 1);
        assert_eq!(queued(&s)[0].1, "recovered");
    }
}

#[test]
fn a_sink_gets_only_its_events_and_hosts_and_a_full_queue_drops() {
    let dir = tempdir::Dir::new();
    let sinks = [
        sink(dir.path(), "missed", &["run_missed"], None),
        sink(dir.path(), "only-b", &["run_failed"], Some("host:b.test")),
    ];
    for (_g, s) in stores() {
        let t = Tuning {
            queue_max: 2,
            ..Tuning::default()
        };
        cron(&s, "a.test", "e", "done", Some(1));
        cron(&s, "b.test", "e", "done", Some(1));
        cron(&s, "b.test", "e", "done", Some(0));
        cron(&s, "c.test", "e", "done", Some(1));
        let out = s.notify_consume(0, &sinks, &t, 100).unwrap();
        let q = queued(&s);
        let got: Vec<(&str, &str)> = q.iter().map(|(s, e, _)| (s.as_str(), e.as_str())).collect();
        assert_eq!(got, [("only-b", "run_failed"), ("only-b", "recovered")]);
        assert_eq!((out.queued, out.dropped), (2, 0));
        cron(&s, "b.test", "e", "done", Some(1));
        let out = s.notify_consume(0, &sinks, &t, 100).unwrap();
        assert_eq!((out.queued, out.dropped), (0, 1), "{:?}", s.dialect());
    }
}

#[test]
fn an_offline_host_back_within_the_grace_sends_nothing() {
    let dir = tempdir::Dir::new();
    let sinks = [sink(dir.path(), "ops", &["host_offline"], None)];
    for (_g, s) in stores() {
        let t = Tuning::default();
        s.note_offline("a.test", 1_000).unwrap();
        s.note_offline("a.test", 1_001).unwrap();
        s.note_registration("a.test", false, 2_000).unwrap();
        let out = s.notify_consume(2_000, &sinks, &t, 100).unwrap();
        assert_eq!((out.queued, out.withdrawn), (1, 1), "{:?}", s.dialect());
        assert!(queued(&s).is_empty());
        // Offline for longer than the grace: one offline, then recovered.
        s.note_offline("a.test", 3_000).unwrap();
        s.notify_consume(3_000, &sinks, &t, 100).unwrap();
        let due = 3_000 + 60_000;
        assert!(s.notify_claim(due - 1, 1000, 10).unwrap().is_empty());
        let c = s.notify_claim(due, 1000, 10).unwrap();
        assert_eq!(c.len(), 1);
        s.notify_done(c[0].id, &c[0].claim).unwrap();
        s.note_registration("a.test", false, due + 5).unwrap();
        s.notify_consume(due + 5, &sinks, &t, 100).unwrap();
        let q = queued(&s);
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].1, "recovered");
        // The events say what happened, once each.
        let ev = s
            .events(0, &EventFilter::default(), 100)
            .unwrap()
            .into_iter()
            .map(|e| (e.kind, e.status))
            .collect::<Vec<_>>();
        let host = |st: &str| ("host".to_owned(), st.to_owned());
        assert_eq!(
            ev,
            [
                host("offline"),
                host("online"),
                host("offline"),
                host("online")
            ]
        );
    }
}

#[test]
fn root_and_refused_cron_entries_are_events_when_they_change() {
    for (_g, s) in stores() {
        s.note_registration("a.test", true, 1).unwrap();
        s.note_registration("a.test", true, 2).unwrap();
        s.note_registration("a.test", false, 3).unwrap();
        let refused = cc_proto::wire::CronStatus {
            installed: vec![],
            rejected: vec![cc_proto::wire::CronRejection {
                id: "x".into(),
                reason: "bad\nschedule".into(),
            }],
        };
        s.note_cron_status("a.test", &refused, 4).unwrap();
        s.note_cron_status("a.test", &refused, 5).unwrap();
        s.note_cron_status("a.test", &cc_proto::wire::CronStatus::default(), 6)
            .unwrap();
        let ev = s.events(0, &EventFilter::default(), 100).unwrap();
        let got: Vec<(&str, Option<&str>)> = ev
            .iter()
            .map(|e| (e.status.as_str(), e.detail.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "root_in_user_mode",
                    Some("the agent runs as root in user mode")
                ),
                ("root_cleared", None),
                ("cron_refused", Some("x: bad schedule")),
                ("cron_accepted", None),
            ]
        );
    }
}

#[test]
fn a_claimed_row_is_sent_by_one_and_taken_over_when_its_claim_runs_out() {
    for (_g, s) in stores() {
        assert!(s.notify_enqueue_test("ops", "{}", "k1", 0, 10).unwrap());
        let a = s.notify_claim(0, 1_000, 10).unwrap();
        assert_eq!(a.len(), 1);
        assert!(s.notify_claim(500, 1_000, 10).unwrap().is_empty());
        // The first sender died: the claim ran out, another takes it, with
        // the same key; the first one's late answer changes nothing.
        let b = s.notify_claim(1_000, 1_000, 10).unwrap();
        assert_eq!(b[0].idem_key, "k1");
        s.notify_retry(a[0].id, &a[0].claim, 0).unwrap();
        s.notify_retry(b[0].id, &b[0].claim, 5_000).unwrap();
        assert!(s.notify_claim(4_999, 1_000, 10).unwrap().is_empty());
        let c = s.notify_claim(5_000, 1_000, 10).unwrap();
        assert_eq!((c[0].attempts, c[0].idem_key.as_str()), (1, "k1"));
        s.notify_done(c[0].id, &c[0].claim).unwrap();
        assert!(s.notify_depths().unwrap().is_empty());
    }
}

/// Two listeners consuming and claiming at once on one PostgreSQL
/// database: every event becomes its notifications once, every row is
/// claimed by one.
#[test]
fn two_listeners_queue_and_claim_each_notification_once() {
    let Some(cluster) = cc_testkit::pg::Cluster::start() else {
        return;
    };
    let dir = tempdir::Dir::new();
    let sinks = vec![sink(dir.path(), "ops", &["run_failed"], None)];
    let url = cluster.create_db("notify");
    let a = Store::open_postgres(&url).unwrap();
    let b = Store::open_postgres(&url).unwrap();
    for i in 0..200 {
        cron(&a, &format!("h{i}.test"), "e", "done", Some(1));
    }
    let claimed = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|sc| {
        for s in [&a, &b] {
            let (sinks, claimed) = (&sinks, &claimed);
            sc.spawn(move || {
                for _ in 0..40 {
                    s.notify_consume(0, sinks, &Tuning::default(), 7).unwrap();
                    let c = s.notify_claim(0, 60_000, 5).unwrap();
                    claimed
                        .lock()
                        .unwrap()
                        .extend(c.into_iter().map(|c| c.idem_key));
                }
            });
        }
    });
    let mut keys = claimed.into_inner().unwrap();
    let n = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), n, "a row was claimed twice");
    let left: i64 = a.notify_depths().unwrap().iter().map(|(_, d)| d).sum();
    assert_eq!(n as i64, 200, "claimed {n}, {left} rows in all");
}
