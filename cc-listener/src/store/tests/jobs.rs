//! Jobs: hand-over, sweep, pruning, and the status transition table.

use super::*;

/// A job for host `h` with a 1 s timeout, created at 0, queued until 500.
fn job(id: &str) -> NewJob {
    NewJob {
        job_id: id.into(),
        hostname: "h".into(),
        command: "x".into(),
        args: vec![],
        timeout_secs: 1,
        created_ms: 0,
        expires_ms: 500,
        signed: None,
        submitter: None,
    }
}

#[test]
fn sweep_marks_overdue_jobs_lost_and_old_queued_jobs_expired() {
    for (_guard, s) in stores() {
        s.create_job(&job("sent")).unwrap();
        assert_eq!(s.take_for_host(&h("h"), None, 0).unwrap().len(), 1);
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

/// An operator's job is stored only for a host an agent registered as or
/// a key names, in the statement that stores it; a job id used before is
/// still a conflict.
#[test]
fn a_job_is_created_only_for_a_known_host() {
    for (_guard, s) in stores() {
        let for_host = |id: &str, host: &str| NewJob {
            hostname: host.into(),
            signed: Some("{}".into()),
            submitter: Some("op".into()),
            ..job(id)
        };
        assert!(!s.create_job_if_known(&for_host("j1", "nobody")).unwrap());
        assert!(s.get_job("j1").unwrap().is_none(), "nothing stored");
        s.add_key("k", Some("named"), 0).unwrap();
        assert!(s.create_job_if_known(&for_host("j2", "named")).unwrap());
        s.upsert_agent(&agent_info("registered"), 0).unwrap();
        assert!(
            s.create_job_if_known(&for_host("j3", "registered"))
                .unwrap()
        );
        let stored = s.get_job("j3").unwrap().unwrap();
        assert_eq!(
            (stored.hostname.as_str(), stored.status, stored.timeout_secs),
            ("registered", JobStatus::Queued, 1)
        );
        assert_eq!((stored.created_ms, stored.expires_ms), (0, 500));
        assert_eq!(stored.signed.as_deref(), Some("{}"));
        let again = s.create_job_if_known(&for_host("j3", "named")).unwrap_err();
        assert!(
            matches!(again.downcast_ref(), Some(StoreError::Conflict(_))),
            "{again:#}"
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
                submitter: None,
            })
            .unwrap();
        }
        let take = |w| -> Vec<String> {
            s.take_for_host(&h("h"), w, 1)
                .unwrap()
                .into_iter()
                .map(|j| j.job_id)
                .collect()
        };
        assert_eq!(take(Some(2)), ["z", "b"]);
        assert!(take(Some(2)).is_empty(), "the window is full");
        s.store_report(&h("h"), &j("z"), "r-z", "{}", 2, ReportLimits::default())
            .unwrap();
        assert_eq!(take(Some(2)), ["y"]);
        assert!(s.take_for_host(&h("other"), Some(2), 1).unwrap().is_empty());
        assert_eq!(take(None), ["a", "x"], "no window: everything queued");
        assert!(s.hosts_with_queued(1).unwrap().is_empty());
    }
}

/// Retention: jobs that ended before the cut go (not queued or sent
/// ones, not newer ones), and runs left without jobs with them.
#[test]
fn pruning_removes_old_finished_jobs_and_empty_runs_only() {
    for (_guard, s) in stores() {
        let run = NewRun {
            run_id: "old-run".into(),
            command: "x".into(),
            args: vec![],
            timeout_secs: 1,
            batch: None,
            selector: "{}".into(),
            queue_ttl_ms: 500,
            created_ms: 0,
            submitter: None,
        };
        s.create_run(&run, &[job("r1")]).unwrap();
        for id in ["done", "lost", "expired", "queued", "sent", "late"] {
            s.create_job(&job(id)).unwrap();
        }
        s.store_report(
            &h("h"),
            &j("done"),
            "k1",
            "{}",
            100,
            ReportLimits::default(),
        )
        .unwrap();
        s.store_report(&h("h"), &j("r1"), "k2", "{}", 100, ReportLimits::default())
            .unwrap();
        // "lost" and "sent" go out; the sweep loses "lost" and expires
        // "expired" (and "late" and "queued", queued past 500).
        let taken: Vec<String> = s
            .take_for_host(&h("h"), Some(2), 1)
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

/// What happens to a job in the transition table's walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// Its host's connection takes what its window allows.
    Take,
    /// The connection could not take it.
    Requeue,
    /// The sweep, long after every timeout and queue time.
    Sweep,
    /// Its own first report.
    Report,
    /// A report of the running job of its run (which frees a place in
    /// the run's batch, if that job was still running).
    ReportOther,
}

/// Every change of a job's status the store makes: the table of
/// `store::jobs`' documentation, from-status, event, to-status.
const TRANSITIONS: &[(JobStatus, Event, JobStatus)] = &[
    (JobStatus::Held, Event::ReportOther, JobStatus::Queued),
    (JobStatus::Held, Event::Sweep, JobStatus::Queued),
    (JobStatus::Queued, Event::Take, JobStatus::Sent),
    (JobStatus::Sent, Event::Requeue, JobStatus::Queued),
    (JobStatus::Sent, Event::Sweep, JobStatus::Lost),
    (JobStatus::Queued, Event::Sweep, JobStatus::Expired),
    (JobStatus::Held, Event::Report, JobStatus::Done),
    (JobStatus::Queued, Event::Report, JobStatus::Done),
    (JobStatus::Sent, Event::Report, JobStatus::Done),
    (JobStatus::Lost, Event::Report, JobStatus::Done),
    (JobStatus::Expired, Event::Report, JobStatus::Done),
];

const EVENTS: [Event; 5] = [
    Event::Take,
    Event::Requeue,
    Event::Sweep,
    Event::Report,
    Event::ReportOther,
];

/// Far past every timeout and queue time the walk uses.
const LATE: i64 = 10_000_000;

/// A store on disk with job `j` of host `h` in `status`: `j` is the
/// second job of run `r` (batch 1), behind `first`, which runs (queued)
/// while `j` is held and has reported for every other status.
fn job_in(status: JobStatus) -> (tempdir::Dir, Store) {
    let dir = tempdir::Dir::new();
    let s = Store::open(&dir.path().join("cc.db")).unwrap();
    let run = NewRun {
        run_id: "r".into(),
        command: "/bin/true".into(),
        args: vec![],
        timeout_secs: 1,
        batch: Some(1),
        selector: "{}".into(),
        queue_ttl_ms: 1_000,
        created_ms: 0,
        submitter: None,
    };
    let first = NewJob {
        expires_ms: 1_000,
        ..queued("first".into(), "h")
    };
    let job = NewJob {
        expires_ms: 1_000,
        ..queued("j".into(), "h")
    };
    s.create_run(&run, &[first, job]).unwrap();
    let report = |id: &str, key: &str, at: i64| {
        s.store_report(&h("h"), &j(id), key, "{}", at, ReportLimits::default())
            .unwrap()
    };
    if status != JobStatus::Held {
        // `first` settles: `j` is let into the batch, queued until 1_010.
        assert_eq!(report("first", "first-1", 10), Stored::New);
    }
    match status {
        JobStatus::Held | JobStatus::Queued => {}
        JobStatus::Sent => assert_eq!(s.take_for_host(&h("h"), None, 20).unwrap().len(), 1),
        JobStatus::Done => assert_eq!(report("j", "j-1", 20), Stored::New),
        JobStatus::Lost => {
            assert_eq!(s.take_for_host(&h("h"), None, 20).unwrap().len(), 1);
            assert_eq!(s.sweep(LATE, 0).unwrap(), (1, 0));
        }
        JobStatus::Expired => assert_eq!(s.sweep(LATE, 0).unwrap(), (0, 1)),
    }
    assert_eq!(s.get_job("j").unwrap().unwrap().status, status, "set up");
    (dir, s)
}

fn happen(s: &Store, event: Event) {
    match event {
        Event::Take => {
            s.take_for_host(&h("h"), None, 30).unwrap();
        }
        Event::Requeue => s.requeue("j").unwrap(),
        Event::Sweep => {
            s.sweep(2 * LATE, 0).unwrap();
        }
        Event::Report => {
            s.store_report(&h("h"), &j("j"), "j-2", "{}", 30, ReportLimits::default())
                .unwrap();
        }
        Event::ReportOther => {
            s.store_report(
                &h("h"),
                &j("first"),
                "first-2",
                "{}",
                30,
                ReportLimits::default(),
            )
            .unwrap();
        }
    }
}

/// Walks the table against a real SQLite store on disk: from each status,
/// each event makes exactly the change the table lists, and every event
/// the table does not list for that status leaves the job as it was.
#[test]
fn job_status_transitions_are_exactly_the_table() {
    let mut walked = 0;
    for from in JobStatus::ALL {
        for event in EVENTS {
            let (_dir, s) = job_in(from);
            happen(&s, event);
            let to = TRANSITIONS
                .iter()
                .find(|t| t.0 == from && t.1 == event)
                .map_or(from, |t| t.2);
            let now = s.get_job("j").unwrap().unwrap().status;
            assert_eq!(now, to, "{from} on {event:?}");
            walked += usize::from(to != from);
        }
    }
    assert_eq!(walked, TRANSITIONS.len(), "every listed change happened");
}
