//! Reports: stored once, settling their job, held to the quota.

use super::*;

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
            submitter: None,
        })
        .unwrap();
        // Other hosts' reports first, so row ids of the tables differ: the
        // job must point at its own report.
        for (i, host) in ["a", "a", "b"].iter().enumerate() {
            let key = format!("x{i}");
            s.store_report(
                &h(host),
                &j("other"),
                &key,
                r#"{"other":1}"#,
                1,
                ReportLimits::default(),
            )
            .unwrap();
        }
        assert_eq!(
            s.store_report(&h("h"), &j("j1"), "r1", "{}", 5, ReportLimits::default())
                .unwrap(),
            Stored::New
        );
        assert_eq!(
            s.store_report(&h("h"), &j("j1"), "r1", "{}", 6, ReportLimits::default())
                .unwrap(),
            Stored::Duplicate
        );
        let job = s.get_job("j1").unwrap().unwrap();
        assert_eq!(job.status, JobStatus::Done);
        assert_eq!(job.report.as_deref(), Some("{}"));
        assert_eq!(s.count_reports().unwrap(), 4);
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
                ..Default::default()
            }],
            None,
            0,
        )
        .unwrap();
        let put = |key: &str, job: &str, payload: &str, at: i64| {
            s.store_report(&h("h"), &j(job), key, payload, at, limits)
                .unwrap()
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
            s.store_report(&h("g"), &j("x"), "1", "12345678", 5, limits)
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
        let un = |key: &str| {
            s.store_report(&h("u"), &j("nojob"), key, "{}", 8, wide)
                .unwrap()
        };
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
