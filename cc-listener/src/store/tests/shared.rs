//! Two listeners sharing one PostgreSQL database (skipped where
//! PostgreSQL is not installed, outside CI).

use super::*;

/// Two stores on one PostgreSQL database, as two listeners are.
fn shared_pair() -> Option<(cc_testkit::pg::Cluster, Store, Store)> {
    let cluster = cc_testkit::pg::Cluster::start()?;
    let url = cluster.create_db("shared");
    let a = Store::open_postgres(&url).unwrap();
    let b = Store::open_postgres(&url).unwrap();
    Some((cluster, a, b))
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
        let op = RegisterWrite {
            info: agent_info("h.test"),
            conn,
        };
        assert!(s.write_batch(&[op], 1).unwrap()[0].is_ok());
    };
    let take = |s: &Store, conn| {
        let op = TakeWrite {
            hostname: h("h.test"),
            window: Some(10),
            conn,
            nudges: None,
        };
        s.write_batch(&[op], 2).unwrap().remove(0)
    };
    a.create_job(&queued("j1".into(), "h.test")).unwrap();
    register(&a, 1);
    let moved = |r: Result<Vec<JobRow>>| match r {
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
        Ok(jobs) => assert_eq!(jobs.len(), 1),
        other => panic!("{other:?}"),
    }
    let row = |s: &Store| {
        s.agents_between("h.test", "h.test").unwrap()[0]
            .listener
            .clone()
    };
    assert_eq!(row(&a).as_deref(), Some("l-b"));
    // a's stale connection ending does not release b's hold; b's does.
    a.touch_agent(&h("h.test"), 5, 1).unwrap();
    assert_eq!(row(&a).as_deref(), Some("l-b"));
    b.touch_agent(&h("h.test"), 6, 9).unwrap();
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
        let op = RegisterWrite {
            info: agent_info("h.test"),
            conn,
        };
        assert!(s.write_batch(&[op], 1).unwrap()[0].is_ok());
    };
    a.create_job(&queued("j1".into(), "h.test")).unwrap();
    register(&a, 1);
    let op = TakeWrite {
        hostname: h("h.test"),
        window: Some(10),
        conn: 1,
        nudges: None,
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
    assert!(moved(a.resend_unreported(&h("h.test"), 1, 10)));
    assert!(
        moved(b.resend_unreported(&h("h.test"), 8, 10)),
        "b, another connection"
    );
    let jobs = b.resend_unreported(&h("h.test"), 9, 10).unwrap();
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
                    let jobs = s.take_for_host(&h("h.test"), None, 1).unwrap();
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

/// The sweep has a connection of its own: one that waits for a row
/// another listener holds (or for a busy server) holds up no job's
/// creation or hand-over on this listener. On the writer's connection, as
/// it was, every write of this listener waited behind it.
#[test]
fn a_sweep_that_waits_for_a_row_holds_up_no_hand_over() {
    let Some(cluster) = cc_testkit::pg::Cluster::start() else {
        return;
    };
    let url = cluster.create_db("sweep");
    let s = std::sync::Arc::new(Store::open_postgres(&url).unwrap());
    let job = |id: &str, host: &str| NewJob {
        timeout_secs: 1,
        ..queued(id.into(), host)
    };
    // Sent at 0 with a 1 s timeout: overdue (lost) at 10 s.
    s.create_job(&job("overdue", "a")).unwrap();
    assert_eq!(s.take_for_host(&h("a"), None, 0).unwrap().len(), 1);
    // Another session (another listener settling it, say) holds its row.
    let mut other = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let mut holding = other.transaction().unwrap();
    holding
        .execute(
            "SELECT 1 FROM jobs WHERE job_id = 'overdue' FOR UPDATE",
            &[],
        )
        .unwrap();
    let sweeper = {
        let s = std::sync::Arc::clone(&s);
        std::thread::spawn(move || s.sweep(10_000, 0))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while s.lock_waiters().unwrap() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the sweep never waited for the held row"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // Meanwhile a job is created and handed over on this listener.
    let (done, answer) = std::sync::mpsc::channel();
    {
        let s = std::sync::Arc::clone(&s);
        std::thread::spawn(move || {
            let taken = s
                .create_job(&job("next", "b"))
                .and_then(|()| s.take_for_host(&h("b"), None, 0));
            let _ = done.send(taken.map(|t| t.len()));
        });
    }
    let taken = answer
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("a job created and handed over while the sweep waits for a row");
    assert_eq!(taken.unwrap(), 1);
    assert!(!sweeper.is_finished(), "the sweep still waits for the row");
    holding.rollback().unwrap();
    assert_eq!(sweeper.join().unwrap().unwrap(), (1, 0));
}
