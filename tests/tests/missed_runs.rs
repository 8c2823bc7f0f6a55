//! Missed runs end to end: a per-minute entry on a real agent as
//! cc-agent-user, run by Debian's real `cron` (the test's own, in a private
//! mount namespace: see cron_host.rs). With cron stopped, the run due next
//! is recorded `missed` with the reason "no cron daemon" within grace + 5 s
//! of its due time, on the event stream and in the metric; with cron
//! started again, the entry's next run reports `done`. A `[[notify]]` sink
//! for missed runs gets one signed `run_missed` webhook at a real HTTP
//! receiver, and one `recovered` when the next run is done.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

use std::time::Duration;

use cc_e2e::agent::{AgentProcess, root_and_agent_user};
use cc_e2e::isolation::Isolation;
use cc_e2e::listener::{ListenerProcess, TOKEN};
use cc_e2e::webhook::Receiver;
use cc_e2e::{TempDir, bin};
use cc_testkit::sse::Stream;
use serde_json::{Value, json};

const SECRET: &str = "missed-runs-webhook-secret-0123";

/// The entry's grace: small, so the test is quick.
const GRACE_S: i64 = 5;

fn at_ms(event: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(event["at"].as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

fn missed_metric(listener: &ListenerProcess) -> String {
    listener
        .get("/metrics")
        .body
        .lines()
        .find(|l| {
            l.starts_with("croncommander_scheduled_runs_missed_total{reason=\"no_cron_daemon\"}")
        })
        .unwrap_or("")
        .to_owned()
}

/// `missed` came within grace + 5 s of the minute its run was due.
fn assert_on_time(missed: &Value) {
    let at = at_ms(missed);
    // The run it is about was due at the minute before its deadline.
    let due = (at - GRACE_S * 1000).div_euclid(60_000) * 60_000;
    let late = at - due;
    assert!(
        (GRACE_S * 1000..=(GRACE_S + 5) * 1000).contains(&late),
        "missed {late} ms after it was due (grace {GRACE_S} s): {missed}"
    );
}

/// A listener in `dir` whose `[[notify]]` sink "ops" sends missed and
/// failed runs to `rx`.
fn listener_with_sink(dir: &std::path::Path, rx: &Receiver) -> ListenerProcess {
    let secret = dir.join("hook.secret");
    std::fs::write(&secret, SECRET).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let extra = format!(
        "notify_retry_base_ms = 200\n[[notify]]\nname = \"ops\"\nurl = \"{}\"\n\
         events = [\"run_missed\", \"run_failed\"]\nsecret_file = {secret:?}\n",
        rx.url("")
    );
    ListenerProcess::start(&bin("cc-listener"), dir, &extra)
}

#[test]
fn a_run_that_cannot_fire_is_missed_with_its_reason_and_the_next_real_run_is_done() {
    let Some(user) = root_and_agent_user() else {
        return;
    };
    let mut iso = Isolation::enter();
    assert!(Isolation::is_private());
    let dir = TempDir::new("missed-runs");
    for d in ["listener", "agent"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    let rx = Receiver::start(SECRET.as_bytes());
    let listener = listener_with_sink(&dir.path().join("listener"), &rx);
    let host = "missed-runs.test";
    let key = listener.add_key(host);
    let _agent = AgentProcess::start(
        &bin("cc-agent"),
        &dir.path().join("agent"),
        &listener.ws_url(),
        &key,
        host,
        "",
        Some(user),
    );
    listener.wait_connected(host, true);
    let mut events = Stream::open(&listener, &format!("?host={host}"), None, Some(TOKEN));
    assert_eq!(events.status, 200);

    let entries = json!([
        {"id": "tick", "schedule": "* * * * *", "command": "/bin/true", "grace": GRACE_S}
    ]);
    assert_eq!(
        listener
            .put(&format!("/api/v1/agents/{host}/cron"), &entries)
            .status,
        200
    );
    listener.wait_for(Duration::from_secs(10), |l| {
        l.agent_entry(host)
            .filter(|a| a["cronStatus"]["installed"] == json!(["tick"]))
    });

    // Cron stopped: the agent says so within a heartbeat.
    iso.stop_cron();
    listener.wait_for(Duration::from_secs(5), |l| {
        l.agent_entry(host)
            .filter(|a| a["connected"] == true && a["cronHost"]["daemon"].is_null())
    });
    // The next due minute passes without a run: missed, within grace + 5 s
    // of it, with the reason.
    let got = events.until(Duration::from_secs(60 + GRACE_S as u64 + 10), |got| {
        got.iter().any(|e| e["status"] == "missed")
    });
    let missed = got
        .iter()
        .find(|e| e["status"] == "missed")
        .unwrap_or_else(|| panic!("no missed event: {got:?}\n{}", listener.log()))
        .clone();
    assert_eq!(missed["kind"], "cron", "{missed}");
    assert_eq!(missed["jobId"], "tick", "{missed}");
    assert_eq!(missed["hostname"], host, "{missed}");
    assert_eq!(missed["detail"], "no cron daemon", "{missed}");
    assert_on_time(&missed);
    // Counted once the store write that streamed the event returns.
    listener.wait_for(Duration::from_secs(2), |l| {
        (missed_metric(l)
            == "croncommander_scheduled_runs_missed_total{reason=\"no_cron_daemon\"} 1")
            .then_some(())
    });

    // One webhook for the miss, signed.
    let hooks = rx.wait_delivered(1, Duration::from_secs(10));
    assert_eq!(hooks[0].event["event"], "run_missed", "{:?}", hooks[0]);
    assert_eq!(hooks[0].event["hostname"], host, "{:?}", hooks[0]);
    assert!(hooks[0].signed, "the HMAC does not verify: {:?}", hooks[0]);

    // Cron started again: the entry's next run reports, and is `done`.
    iso.start_cron();
    let got = events.until(Duration::from_secs(75), |got| {
        got.iter().any(|e| e["status"] == "done")
    });
    let done = got
        .iter()
        .find(|e| e["status"] == "done")
        .unwrap_or_else(|| panic!("no done event: {got:?}\n{}", listener.log()))
        .clone();
    assert_eq!(
        (&done["kind"], &done["jobId"], &done["exitCode"]),
        (&json!("cron"), &json!("tick"), &json!(0)),
        "{done}"
    );
    // That run reached the tracker too: its deadline passes without a
    // `missed` (a report the tracker never heard of would be missed
    // grace seconds after its due minute).
    let after = events.until(Duration::from_secs(GRACE_S as u64 + 3), |_| false);
    assert!(
        !got.iter().chain(&after).any(|e| e["status"] == "missed"),
        "missed while cron ran: {got:?} {after:?}"
    );
    // One `recovered`, and nothing more: one notification per change of
    // state, not per run.
    let hooks = rx.wait_delivered(2, Duration::from_secs(10));
    assert_eq!(hooks[1].event["event"], "recovered", "{:?}", hooks[1]);
    assert_eq!(
        hooks[1].event["recoveredFrom"], "run_missed",
        "{:?}",
        hooks[1]
    );
    assert!(hooks[1].signed);
    assert_ne!(hooks[0].key, hooks[1].key);
    assert_eq!(rx.delivered().len(), 2, "{:?}", rx.seen());
}
