//! Live events: `GET /api/v1/events` streams every job state change once,
//! in commit order, filtered by run, host or job, and a client that comes
//! back with `Last-Event-ID` misses nothing and sees nothing twice.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

mod common;

use std::time::Duration;

use cc_testkit::TempDir;
use cc_testkit::listener::{ListenerProcess, TOKEN};
use cc_testkit::sse::Stream;
use cc_testkit::ws;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(10);

use common::bin;

/// A test agent answering every job after 50 ms: exit code 7 on hosts
/// whose name starts with "x", else 0.
async fn agent(l: &ListenerProcess, host: &str, tags: &[&str]) {
    let code = if host.starts_with('x') { 7 } else { 0 };
    ws::answering_agent(l, host, tags, Duration::from_millis(50), move |_| code).await;
}

fn states(events: &[Value], job: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["jobId"] == job)
        .map(|e| e["status"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_state_change_once_in_order_and_resumable() {
    let dir = TempDir::new("events");
    let l = ListenerProcess::start(bin(), dir.path(), "");
    for h in ["a.test", "b.test", "x.test", "other.test"] {
        agent(&l, h, if h == "other.test" { &["no"] } else { &["ev"] }).await;
    }
    l.wait_connected_count(4);

    // Refused without the token; an event stream with it.
    assert_eq!(Stream::open(&l, "", None, None).status, 401);
    assert_eq!(Stream::open(&l, "?run=a/b", None, Some(TOKEN)).status, 400);
    let mut live = Stream::open(&l, "", None, Some(TOKEN));
    assert_eq!(live.status, 200);
    assert!(
        live.content_type.starts_with("text/event-stream"),
        "{}",
        live.content_type
    );

    let (run, jobs) = l.post_run(&json!({"tags": ["ev"], "command": "/bin/true", "batch": 2}));
    let other_job = l.post_job("other.test", &json!({"command": "/bin/true"}));

    // The run's stream: read part of it, drop the connection, resume.
    let mut first = Stream::open(&l, &format!("?run={run}"), None, Some(TOKEN));
    let part = first.until(T, |got| got.len() >= 4);
    assert_eq!(part.len(), 4);
    drop(first);
    let last = part.last().unwrap()["id"].as_i64().unwrap();
    let done = |got: &[Value]| got.iter().filter(|e| e["status"] == "done").count() >= 3;
    let mut rest_stream = Stream::open(&l, &format!("?run={run}"), Some(last), Some(TOKEN));
    let rest = rest_stream.until(T, |got| {
        let all: Vec<Value> = part.iter().chain(got).cloned().collect();
        done(&all)
    });
    let resumed: Vec<Value> = part.iter().chain(&rest).cloned().collect();

    // Everything, from the start, in one go: the same events.
    let mut all_stream = Stream::open(&l, &format!("?run={run}"), None, Some(TOKEN));
    let all = all_stream.until(T, done);
    let ids = |v: &[Value]| {
        v.iter()
            .map(|e| e["id"].as_i64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&resumed), ids(&all), "resuming lost or repeated events");
    assert!(ids(&all).windows(2).all(|w| w[0] < w[1]), "in commit order");
    assert!(
        all.iter().all(|e| e["runId"] == run.as_str()),
        "only the run's"
    );

    // Each job: created held or queued, then queued, sent, done — once each.
    for (host, job) in &jobs {
        let s = states(&all, job);
        let want: &[&str] = if s.first().map(String::as_str) == Some("held") {
            &["held", "queued", "sent", "done"]
        } else {
            &["queued", "sent", "done"]
        };
        assert_eq!(s, want, "{host}");
        let done_event = all
            .iter()
            .find(|e| e["jobId"] == *job && e["status"] == "done")
            .unwrap();
        let code = if host.starts_with('x') { 7 } else { 0 };
        assert_eq!(
            done_event["exitCode"], code,
            "{host}: exit code in the event"
        );
    }
    assert_eq!(
        all.iter().filter(|e| e["status"] == "held").count(),
        1,
        "a batch of 2 over 3 hosts holds one"
    );

    // The unfiltered live stream saw the other job too; a host filter only it.
    let everything = live.until(T, |got| {
        got.iter().filter(|e| e["status"] == "done").count() >= 4
    });
    assert_eq!(
        states(&everything, other_job.as_str()),
        ["queued", "sent", "done"]
    );
    let mut by_host = Stream::open(&l, "?host=OTHER.test", None, Some(TOKEN));
    let theirs = by_host.until(Duration::from_secs(2), |got| got.len() >= 3);
    assert!(
        theirs.iter().all(|e| e["hostname"] == "other.test"),
        "{theirs:?}"
    );
    assert_eq!(
        states(&theirs, other_job.as_str()),
        ["queued", "sent", "done"]
    );
    let mut by_job = Stream::open(&l, &format!("?job={}", jobs[0].1), None, Some(TOKEN));
    let one = by_job.until(Duration::from_secs(2), |got| {
        got.iter().any(|e| e["status"] == "done")
    });
    assert!(one.iter().all(|e| e["jobId"] == jobs[0].1.as_str()));
}
