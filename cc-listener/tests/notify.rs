//! Notifications end to end: a real listener with `[[notify]]` blocks, a
//! real HTTP receiver on 127.0.0.1 that checks each request's HMAC, and
//! simulated agents (or, for scheduled runs, the `cron` events the report
//! path writes, inserted into the listener's database as it would).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use cc_testkit::listener::{FAST, ListenerProcess};
use cc_testkit::webhook::{Mode, Receiver};
use cc_testkit::{TempDir, ws};
use serde_json::{Value, json};

use common::bin;

const SECRET: &str = "receiver-shared-secret-0123456789";

/// A private secret file in `dir`.
fn secret_file(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("hook.secret");
    std::fs::write(&p, SECRET).unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    p
}

/// A `[[notify]]` block named `name` for the receiver, and fast retries.
fn sink(dir: &Path, name: &str, to: &Receiver, events: &str) -> String {
    format!(
        "notify_retry_base_ms = 200\nnotify_retry_cap_secs = 1\nnotify_timeout_secs = 1\n\
         notify_offline_grace_secs = 1\n\
         [[notify]]\nname = \"{name}\"\nurl = \"{}\"\n\
         events = [{events}]\nsecret_file = {:?}\n",
        to.url("token=url-s3cret"),
        secret_file(dir)
    )
}

fn cron_status(rejected: &[(&str, &str)]) -> Value {
    let rejected: Vec<Value> = rejected
        .iter()
        .map(|(id, reason)| json!({"id": id, "reason": reason}))
        .collect();
    json!({"type": "cron_status", "payload": {"installed": [], "rejected": rejected}})
}

/// A scheduled run's event, as the report path writes it for an entry's
/// report (kind `cron`, status `done`, the exit code).
fn cron_done(dir: &Path, host: &str, entry: &str, exit: i64) {
    let s = cc_listener::store::Store::open(&dir.join("listener.db")).unwrap();
    s.insert_event(&cc_listener::store::NewEvent {
        at_ms: cc_listener::now_ms(),
        kind: "cron",
        job_id: entry.into(),
        hostname: host.into(),
        status: "done".into(),
        exit_code: Some(exit),
        detail: None,
    })
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_entry_sends_one_signed_webhook_and_one_recovered() {
    let rx = Receiver::start(SECRET.as_bytes());
    let dir = TempDir::new("notify-once");
    let extra = format!(
        "{FAST}{}",
        sink(dir.path(), "ops", &rx, "\"run_failed\", \"cron_refused\"")
    );
    let l = ListenerProcess::start(bin(), dir.path(), &extra);
    let mut agent = ws::registered(&l, "web1.test").await;

    // A scheduled run fails three times: one notification.
    for _ in 0..3 {
        cron_done(dir.path(), "web1.test", "backup", 1);
    }
    let got = rx.wait_delivered(1, Duration::from_secs(10));
    assert!(got[0].signed, "the HMAC does not verify: {:?}", got[0]);
    assert_eq!(got[0].event["event"], "run_failed");
    assert_eq!(got[0].event["entry"], "backup");
    assert_eq!(got[0].event["hostname"], "web1.test");
    assert_eq!(got[0].event["exitCode"], 1);
    // Ok again: one recovered.
    cron_done(dir.path(), "web1.test", "backup", 0);
    cron_done(dir.path(), "web1.test", "backup", 0);
    let got = rx.wait_delivered(2, Duration::from_secs(10));
    assert_eq!(got[1].event["event"], "recovered");
    assert_eq!(got[1].event["recoveredFrom"], "run_failed");
    assert!(got[1].signed);
    assert_ne!(got[0].key, got[1].key);

    // The agent refuses an entry (twice the same, then another): one
    // cron_refused; accepting all again: one recovered.
    ws::send(&mut agent, &cron_status(&[("x", "bad schedule")])).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    ws::send(
        &mut agent,
        &cron_status(&[("x", "bad schedule"), ("y", "bad")]),
    )
    .await;
    let got = rx.wait_delivered(3, Duration::from_secs(10));
    assert_eq!(got[2].event["event"], "cron_refused");
    assert_eq!(got[2].event["detail"], "x: bad schedule");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    ws::send(&mut agent, &cron_status(&[])).await;
    let got = rx.wait_delivered(4, Duration::from_secs(10));
    assert_eq!(got[3].event["event"], "recovered");
    assert_eq!(got[3].event["recoveredFrom"], "cron_refused");
    // Nothing more comes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rx.seen().len(), 4, "{:?}", rx.seen());
    // The URL's token is in no log line.
    let log = l.log();
    assert!(
        !log.contains("url-s3cret") && !log.contains(SECRET),
        "{log}"
    );
    // The API lists the sink without its query or secret.
    let list = l.get("/api/v1/notify");
    assert_eq!(list.status, 200, "{}", list.body);
    assert!(!list.body.contains("url-s3cret") && !list.body.contains(SECRET));
    assert_eq!(list.json()["sinks"][0]["name"], "ops");
    assert_eq!(list.json()["queued"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_offline_past_the_grace_notifies_and_a_blip_does_not() {
    let rx = Receiver::start(SECRET.as_bytes());
    let dir = TempDir::new("notify-offline");
    let extra = format!("{FAST}{}", sink(dir.path(), "ops", &rx, "\"host_offline\""));
    let l = ListenerProcess::start(bin(), dir.path(), &extra);
    let key = l.add_key("db1.test");
    let agent = ws::registered_as(&l, &key, &ws::register("db1.test")).await;
    // A blip: gone and back within the grace (1 s): nothing.
    drop(agent);
    l.wait_connected("db1.test", false);
    let agent = ws::registered_as(&l, &key, &ws::register("db1.test")).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(rx.seen().is_empty(), "{:?}", rx.seen());
    // Gone for longer: host_offline once; back: recovered once.
    drop(agent);
    let got = rx.wait_delivered(1, Duration::from_secs(10));
    assert_eq!(got[0].event["event"], "host_offline");
    assert_eq!(got[0].event["hostname"], "db1.test");
    let _agent = ws::registered_as(&l, &key, &ws::register("db1.test")).await;
    let got = rx.wait_delivered(2, Duration::from_secs(10));
    assert_eq!(got[1].event["event"], "recovered");
    assert_eq!(got[1].event["recoveredFrom"], "host_offline");
}

/// The receiver fails; the listener is killed with the notification
/// queued; after the restart it is delivered, with the key it had.
#[tokio::test(flavor = "multi_thread")]
async fn a_queued_notification_survives_a_sigkill_with_its_idempotency_key() {
    let rx = Receiver::start(SECRET.as_bytes());
    rx.set(Mode::Fail);
    let dir = TempDir::new("notify-kill");
    let extra = format!("{FAST}{}", sink(dir.path(), "ops", &rx, "\"run_failed\""));
    let mut l = ListenerProcess::start(bin(), dir.path(), &extra);
    cron_done(dir.path(), "web1.test", "backup", 3);
    let deadline = Instant::now() + Duration::from_secs(10);
    while rx.seen().len() < 2 {
        assert!(Instant::now() < deadline, "no attempts: {:?}", rx.seen());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first = rx.seen()[0].key.clone();
    assert!(rx.seen().iter().all(|s| s.key == first), "{:?}", rx.seen());
    l.kill();
    let tried = rx.seen().len();
    rx.set(Mode::Ok);
    l.kill_and_restart();
    let got = rx.wait_delivered(1, Duration::from_secs(20));
    assert_eq!(got[0].key, first, "a new key after the restart");
    assert!(got[0].signed);
    assert!(rx.seen().len() > tried);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rx.delivered().len(), 1, "{:?}", rx.seen());
    let m = l.get("/metrics").body;
    assert!(
        m.contains("croncommander_notifications_sent_total 1"),
        "{m}"
    );
}

/// `ccctl notify test NAME` goes through the same queue; an unknown sink
/// is a 404, a viewer may not.
#[tokio::test(flavor = "multi_thread")]
async fn notify_test_sends_through_the_queue_and_is_for_admins() {
    let rx = Receiver::start(SECRET.as_bytes());
    let dir = TempDir::new("notify-test");
    let extra = format!("{FAST}{}", sink(dir.path(), "ops", &rx, "\"run_failed\""));
    let l = ListenerProcess::start(bin(), dir.path(), &extra);
    let out = l.ccctl(dir.path(), &["notify", "test", "ops"]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let got = rx.wait_delivered(1, Duration::from_secs(10));
    assert_eq!(got[0].event["event"], "test");
    assert!(got[0].signed);
    assert!(said.contains(&got[0].key), "{said}");
    let out = l.ccctl(dir.path(), &["notify"]);
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        table.contains("ops") && !table.contains("url-s3cret"),
        "{table}"
    );
    let none = l.post("/api/v1/notify/nope/test", &json!({}));
    assert_eq!(none.status, 404, "{}", none.body);
    // Below admin: refused (a sink's events name every host it reaches).
    let out = std::process::Command::new(bin())
        .args(["operators", "add", "op1", "--role", "operator", "--db"])
        .arg(dir.path().join("listener.db"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    // Known to the listener within a second (its operators reload).
    l.wait_for(Duration::from_secs(5), |l| {
        (l.request_as("GET", "/api/v1/agents", &token, None).status == 200).then_some(())
    });
    for (method, path) in [
        ("GET", "/api/v1/notify"),
        ("POST", "/api/v1/notify/ops/test"),
    ] {
        let r = l.request_as(method, path, &token, None);
        assert_eq!(r.status, 403, "{method} {path}: {}", r.body);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rx.seen().len(), 1, "{:?}", rx.seen());
}

/// A receiver that never answers, then one that fails for ever: the
/// listener goes on serving, the queue stays within its bound (what does
/// not fit is refused and counted), and memory does not grow with it.
#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_or_failing_receiver_does_not_grow_memory_or_block() {
    let rx = Receiver::start(SECRET.as_bytes());
    rx.set(Mode::Hang);
    let dir = TempDir::new("notify-hostile");
    let extra = format!(
        "{FAST}notify_queue_max = 50\nnotify_max_attempts = 3\n{}",
        sink(dir.path(), "ops", &rx, "\"run_failed\"")
    );
    let l = ListenerProcess::start(bin(), dir.path(), &extra);
    let rss = || -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", l.child.id())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    };
    let before = rss();
    for i in 0..400 {
        cron_done(dir.path(), &format!("h{i}.test"), "e", 1);
    }
    let mut full = 0;
    for _ in 0..100 {
        if l.post("/api/v1/notify/ops/test", &json!({})).status == 503 {
            full += 1;
        }
    }
    assert!(full > 0, "the queue took every test notification");
    // The API answers at once while requests hang.
    let t = Instant::now();
    assert_eq!(l.get("/api/v1/agents").status, 200);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    let depth = l.get("/api/v1/notify").json()["queued"].as_i64().unwrap();
    assert!(depth <= 50, "{depth}");
    // Now it fails for ever: rows are given up after 3 attempts.
    rx.set(Mode::Fail);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = rss();
    assert!(
        after < before + 30 * 1024,
        "RSS grew from {before} kB to {after} kB"
    );
    let m = l.get("/metrics").body;
    let value = |name: &str| -> f64 {
        m.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in {m}"))
    };
    assert!(
        value("croncommander_notifications_dropped_total") >= 300.0,
        "{m}"
    );
    assert!(value("croncommander_notification_failures_total") > 0.0);
    assert!(value("croncommander_notifications_given_up_total") > 0.0);
    assert!(rx.delivered().is_empty());
}

/// Two listeners on one PostgreSQL database with the same sink: each
/// notification is delivered once.
#[tokio::test(flavor = "multi_thread")]
async fn two_listeners_deliver_each_notification_once() {
    let Some(cluster) = cc_testkit::pg::Cluster::start() else {
        return;
    };
    let url = cluster.create_db("cc");
    let rx = Receiver::start(SECRET.as_bytes());
    rx.set(Mode::Slow);
    let dir = TempDir::new("notify-shared");
    let start = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        let extra = format!(
            "{FAST}listener_name = \"{name}\"\n{}",
            sink(&d, "ops", &rx, "\"cron_refused\"")
        );
        ListenerProcess::start_shared(bin(), &d, &url, &extra)
    };
    let (east, west) = (start("east"), start("west"));
    let mut agents = Vec::new();
    for i in 0..20 {
        let l = if i % 2 == 0 { &east } else { &west };
        let host = format!("h{i}.test");
        let mut a = ws::registered(l, &host).await;
        ws::send(&mut a, &cron_status(&[("x", "bad")])).await;
        agents.push(a);
    }
    for i in 0..10 {
        let l = if i % 2 == 0 { &east } else { &west };
        assert_eq!(l.post("/api/v1/notify/ops/test", &json!({})).status, 202);
    }
    let got = rx.wait_delivered(30, Duration::from_secs(20));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut by_key: HashMap<String, usize> = HashMap::new();
    for s in rx.seen() {
        *by_key.entry(s.key).or_default() += 1;
    }
    assert_eq!(by_key.len(), 30, "{by_key:?}");
    assert!(by_key.values().all(|n| *n == 1), "{by_key:?}");
    assert!(got.iter().all(|s| s.signed));
}
