//! Scheduled runs: a miss recorded once with the reason the listener can
//! see, `done` / `skipped` events written with the report, each entry's
//! last run.

use super::*;
use crate::schedules::{Missed, Reason};

fn miss(host: &str, entry: &str, due_ms: i64) -> Missed {
    Missed {
        hostname: host.into(),
        entry_id: entry.into(),
        due_ms,
        deadline_ms: due_ms + 60_000,
    }
}

/// (hostname, entry, status, exit code, detail).
type CronEvent = (String, String, String, Option<i64>, Option<String>);

fn cron_events(s: &Store) -> Vec<CronEvent> {
    s.events(0, &EventFilter::default(), 1000)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "cron")
        .map(|e| (e.hostname, e.job_id, e.status, e.exit_code, e.detail))
        .collect()
}

#[test]
fn a_miss_is_recorded_once_with_the_reason_the_listener_can_see() {
    for (_guard, s) in stores() {
        let s = s.held_as("me").unwrap();
        let now = crate::now_ms();
        for host in ["off", "nodaemon", "fine", "theirs", "came"] {
            s.upsert_agent(&agent_info(host), now).unwrap();
        }
        s.write(|tx| {
            tx.exec(
                "UPDATE agents SET listener = 'me', lease_conn = 1,
                        cron_host = '{\"daemon\":null,\"timeZone\":\"UTC\"}'
                 WHERE hostname = 'nodaemon'",
                &[],
            )?;
            tx.exec(
                "UPDATE agents SET listener = 'me', lease_conn = 1,
                        cron_host = '{\"daemon\":\"cron\",\"timeZone\":\"UTC\"}'
                 WHERE hostname = 'fine'",
                &[],
            )?;
            tx.exec(
                "INSERT INTO listeners (name, lease_ms) VALUES ('other', ?1)",
                &crate::sql::p![now + 60_000],
            )?;
            tx.exec(
                "UPDATE agents SET listener = 'other', lease_conn = 1 WHERE hostname = 'theirs'",
                &[],
            )
        })
        .unwrap();
        // `came`: not held here, but a report came (through another
        // listener) after the run was due.
        s.set_cron("came", &[], None, 0).unwrap();
        s.store_report(
            &h("came"),
            &j("e"),
            "k1",
            "{}",
            1_000,
            ReportLimits::default(),
        )
        .unwrap();
        let runs = [
            miss("off", "e", 500),
            miss("nodaemon", "e", 500),
            miss("fine", "e", 500),
            miss("theirs", "e", 500),
            miss("came", "e", 500),
            miss("unknown-host", "e", 500),
        ];
        let got = s.record_missed(&runs, now).unwrap();
        assert_eq!(
            got,
            vec![
                MissOutcome::Recorded(Reason::HostOffline),
                MissOutcome::Recorded(Reason::NoCronDaemon),
                MissOutcome::Recorded(Reason::None),
                MissOutcome::Elsewhere,
                MissOutcome::Reported,
                MissOutcome::Recorded(Reason::HostOffline),
            ],
            "{:?}",
            s.dialect()
        );
        // Found again (another listener, or after a restart): not twice.
        let again = s.record_missed(&runs[..3], now).unwrap();
        assert_eq!(again, vec![MissOutcome::Duplicate; 3]);
        let events = cron_events(&s);
        assert_eq!(events.len(), 4, "{events:?}");
        assert_eq!(
            events[1],
            (
                "nodaemon".into(),
                "e".into(),
                "missed".into(),
                None,
                Some("no cron daemon".into())
            )
        );
        assert_eq!(s.prune_schedule_misses(now + 1, 100).unwrap(), 4);
    }
}

#[test]
fn a_scheduled_report_writes_done_or_skipped_with_the_report_and_status_reads_the_last() {
    for (_guard, s) in stores() {
        let entry = |id: &str| CronEntry {
            id: id.into(),
            schedule: "* * * * *".into(),
            command: "/bin/true".into(),
            ..Default::default()
        };
        s.set_cron("h", &[entry("ok"), entry("bad"), entry("busy")], None, 0)
            .unwrap();
        let put = |key: &str, job: &str, exit: i32| {
            let payload = format!(r#"{{"jobId":"{job}","exitCode":{exit}}}"#);
            s.store_report(&h("h"), &j(job), key, &payload, 10, ReportLimits::default())
                .unwrap()
        };
        assert_eq!(put("1", "ok", 0), Stored::New);
        assert_eq!(put("2", "bad", 0), Stored::New);
        assert_eq!(put("3", "bad", 2), Stored::New);
        assert_eq!(put("4", "busy", 75), Stored::New);
        // A duplicate writes nothing; a job's or an unknown id's report
        // is not a scheduled run.
        assert_eq!(put("4", "busy", 75), Stored::Duplicate);
        assert_eq!(put("5", "stranger", 0), Stored::New);
        let events = cron_events(&s);
        assert_eq!(
            events
                .iter()
                .map(|e| (e.1.as_str(), e.2.as_str(), e.3))
                .collect::<Vec<_>>(),
            vec![
                ("ok", "done", Some(0)),
                ("bad", "done", Some(0)),
                ("bad", "done", Some(2)),
                ("busy", "skipped", Some(75)),
            ]
        );
        let now = crate::now_ms();
        s.record_missed(&[miss("h", "ok", 60_000)], now).unwrap();
        let last = s.last_scheduled("h", now).unwrap();
        let brief: Vec<_> = last
            .iter()
            .map(|l| (l.entry_id.as_str(), l.status, l.missed_24h))
            .collect();
        assert_eq!(
            brief,
            vec![
                ("bad", "failed", 0),
                ("busy", "skipped", 0),
                ("ok", "missed", 1)
            ]
        );
        assert_eq!(last[2].detail.as_deref(), Some("host offline"));
    }
}

/// Two listeners on one PostgreSQL database both find the same runs of an
/// unheld host missed, at the same time: each run is recorded, and its
/// event written, exactly once.
#[test]
fn two_listeners_record_each_miss_once() {
    let Some(cluster) = cc_testkit::pg::Cluster::start() else {
        return;
    };
    let url = cluster.create_db("cc");
    let a = Store::open_postgres(&url).unwrap().held_as("a").unwrap();
    let b = Store::open_postgres(&url).unwrap().held_as("b").unwrap();
    let now = crate::now_ms();
    a.upsert_agent(&agent_info("gone"), now).unwrap();
    let runs: Vec<Missed> = (0..200).map(|i| miss("gone", "e", i * 60_000)).collect();
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| {
            runs.chunks(10)
                .flat_map(|c| a.record_missed(c, now).unwrap())
                .collect::<Vec<_>>()
        });
        let tb = s.spawn(|| {
            runs.chunks(10)
                .flat_map(|c| b.record_missed(c, now).unwrap())
                .collect::<Vec<_>>()
        });
        (ta.join().unwrap(), tb.join().unwrap())
    });
    let recorded = |v: &[MissOutcome]| {
        v.iter()
            .filter(|o| **o == MissOutcome::Recorded(Reason::HostOffline))
            .count()
    };
    for (x, y) in ra.iter().zip(&rb) {
        assert!(
            matches!(
                (x, y),
                (MissOutcome::Recorded(_), MissOutcome::Duplicate)
                    | (MissOutcome::Duplicate, MissOutcome::Recorded(_))
            ),
            "{x:?} {y:?}"
        );
    }
    assert_eq!(recorded(&ra) + recorded(&rb), 200);
    assert_eq!(cron_events(&a).len(), 200);
}
