//! Fleet cron entries against the real `cc-listener`: a set applied through
//! `PUT /api/v1/fleet/cron` reaches exactly the hosts its targets match
//! (on bound tags; comma = all terms) within 1 s, a host registering or
//! retagged later gets its entries, a plan of the unchanged set shows
//! nothing, a set is applied whole or not at all (a bad entry, a clash
//! with a host's own entry, a stale plan), a scoped operator cannot apply
//! a change reaching hosts outside its selector, reports of fleet entries
//! are cron reports, and a system-mode host gets fleet entries only with a
//! signature over its whole list.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use cc_testkit::TempDir;
use cc_testkit::listener::ListenerProcess;
use cc_testkit::ws::{self, Ws};
use serde_json::{Value, json};

use common::bin;

const T: Duration = Duration::from_secs(10);

fn register(host: &str, tags: &[&str], mode: &str) -> Value {
    json!({"type": "register", "payload": {
        "hostname": host, "os": "linux", "arch": "amd64", "tags": tags,
        "executionMode": mode, "isRoot": false
    }})
}

/// A new key for `host`, registered with `tags` (bound by this first
/// registration) in `mode`.
async fn agent(l: &ListenerProcess, host: &str, tags: &[&str], mode: &str) -> Ws {
    let key = l.add_key(host);
    ws::registered_as(l, &key, &register(host, tags, mode)).await
}

/// The ids of the next `cron_refresh` within `limit`, or `None`.
async fn next_refresh(ws: &mut Ws, limit: Duration) -> Option<(Vec<String>, Value)> {
    let m = tokio::time::timeout(limit, ws::recv_type(ws, "cron_refresh", T + limit))
        .await
        .ok()?;
    let ids = m["payload"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    Some((ids, m))
}

fn entry(id: &str, target: &str) -> Value {
    json!({"id": id, "target": target, "schedule": "0 3 * * *", "command": "/bin/true"})
}

fn apply(l: &ListenerProcess, entries: &[Value]) -> cc_testkit::http::Response {
    l.put("/api/v1/fleet/cron", &json!({ "entries": entries }))
}

fn generation(l: &ListenerProcess) -> u64 {
    l.get("/api/v1/fleet/cron").json()["generation"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn a_fleet_set_reaches_exactly_the_matching_hosts() {
    let dir = TempDir::new("fleet");
    let l = ListenerProcess::start(bin(), dir.path(), "");
    let mut web_eu = agent(&l, "web1.test", &["web", "eu"], "user").await;
    let mut web = agent(&l, "web2.test", &["web"], "user").await;
    let mut db = agent(&l, "db1.test", &["db"], "user").await;
    // Before any set: nothing is pushed on registration.
    assert!(
        next_refresh(&mut web, Duration::from_millis(300))
            .await
            .is_none()
    );

    let set = [
        entry("a", "tag:web,tag:eu"),
        entry("b", "*"),
        entry("c", "host:db1.test"),
    ];
    let started = Instant::now();
    let r = apply(&l, &set);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["changed"], 3);
    let (ids, _) = next_refresh(&mut web_eu, T).await.unwrap();
    assert_eq!(ids, ["a", "b"], "comma: all of the terms");
    let (ids, _) = next_refresh(&mut web, T).await.unwrap();
    assert_eq!(ids, ["b"], "web only: not web and eu");
    let (ids, _) = next_refresh(&mut db, T).await.unwrap();
    assert_eq!(ids, ["b", "c"]);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "pushed within 1 s: {:?}",
        started.elapsed()
    );
    assert_eq!(generation(&l), 1);
    assert_eq!(
        l.get("/api/v1/agents/web1.test/cron").json(),
        json!([]),
        "own list untouched"
    );

    // The same set again: the plan shows nothing, and no host is sent
    // anything.
    let plan = l.post("/api/v1/fleet/cron/plan", &json!({ "entries": set }));
    assert_eq!(plan.status, 200, "{}", plan.body);
    assert_eq!(plan.json()["hosts"], json!([]), "{}", plan.body);
    // A change: the plan names it per host, and only that host is sent it.
    let mut changed = set.to_vec();
    changed[2]["schedule"] = json!("0 4 * * *");
    changed.push(entry("d", "tag:web"));
    let plan = l
        .post("/api/v1/fleet/cron/plan", &json!({ "entries": changed }))
        .json();
    let hosts: Vec<(&str, &Value)> = plan["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["hostname"].as_str().unwrap(), h))
        .collect();
    assert_eq!(hosts.len(), 3, "{plan}");
    assert_eq!(hosts[0].0, "db1.test");
    assert_eq!(hosts[0].1["changed"], json!(["c"]));
    assert_eq!(hosts[1].1["added"], json!(["d"]));
    assert_eq!(hosts[0].1["added"], json!([]));

    // Status: wanted against installed; drift until the agent says so.
    let rows = l.get("/api/v1/cron/status?tag=web").json();
    assert_eq!(rows.as_array().unwrap().len(), 2, "{rows}");
    assert_eq!(rows[1]["hostname"], "web2.test");
    assert_eq!(rows[1]["wanted"], 1);
    assert_eq!(rows[1]["drift"], true);
    assert_eq!(rows[1]["generation"], 1);
    ws::send(
        &mut web,
        &json!({"type": "cron_status", "payload": {"installed": ["b"], "rejected": []}}),
    )
    .await;
    l.wait_for(T, |l| {
        let r = l.get("/api/v1/cron/status?host=web2.test").json();
        (r[0]["drift"] == false && r[0]["installed"] == 1).then_some(())
    });

    // An entry the agent refused: drift again, and the reason shown.
    ws::send(
        &mut web,
        &json!({"type": "cron_status", "payload": {"installed": [], "rejected": [{"id": "b", "reason": "crontab failed"}]}}),
    )
    .await;
    l.wait_for(T, |l| {
        let r = l.get("/api/v1/cron/status?host=web2.test").json();
        (r[0]["drift"] == true && r[0]["rejected"][0]["reason"] == "crontab failed").then_some(())
    });

    // A report of a fleet entry is a cron report, not an unmatched one.
    let mut report = ws::report("b", Some("fleet-b-1"));
    report["payload"]["executingUser"] = json!("cc-agent-user");
    ws::send(&mut web, &report).await;
    l.wait_for(T, |l| {
        let r = l.get("/api/v1/reports?hostname=web2.test&jobId=b").json();
        r.as_array()
            .and_then(|a| a.first())
            .map(|r| assert_eq!(r["kind"], "cron", "{r}"))
    });
    drop(db);
}

#[tokio::test]
async fn later_hosts_and_retagged_hosts_get_their_entries() {
    let dir = TempDir::new("fleet");
    let l = ListenerProcess::start(bin(), dir.path(), "");
    let mut db = agent(&l, "db1.test", &["db"], "user").await;
    let r = apply(&l, &[entry("w", "tag:web")]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        next_refresh(&mut db, Duration::from_millis(600))
            .await
            .is_none()
    );

    // Registering later with a matching tag: its entries at once.
    let started = Instant::now();
    let mut late = agent(&l, "web9.test", &["web"], "user").await;
    let (ids, _) = next_refresh(&mut late, T).await.unwrap();
    assert_eq!(ids, ["w"]);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // Retagged to web: pushed; retagged away: removed.
    let started = Instant::now();
    let r = l.put("/api/v1/keys/db1.test/tags", &json!(["db", "web"]));
    assert_eq!(r.status, 200, "{}", r.body);
    let (ids, _) = next_refresh(&mut db, T).await.unwrap();
    assert_eq!(ids, ["w"]);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let r = l.put("/api/v1/keys/db1.test/tags", &json!(["db"]));
    assert_eq!(r.status, 200, "{}", r.body);
    let (ids, _) = next_refresh(&mut db, T).await.unwrap();
    assert!(ids.is_empty(), "{ids:?}");
}

#[tokio::test]
async fn a_set_is_applied_whole_or_refused_saying_why() {
    let dir = TempDir::new("fleet");
    let l = ListenerProcess::start(bin(), dir.path(), "");
    let _web = agent(&l, "web1.test", &["web"], "user").await;
    let _db = agent(&l, "db1.test", &["db"], "user").await;
    assert_eq!(apply(&l, &[entry("a", "*")]).status, 200);
    let before = l.get("/api/v1/fleet/cron").json();

    // Each refusal leaves the set as it was.
    let mut bad_schedule = entry("b", "*");
    bad_schedule["schedule"] = json!("61 * * * *");
    let mut bad_jitter = entry("b", "*");
    bad_jitter["jitter"] = json!(86_401);
    for (set, says) in [
        (vec![entry("a", "*"), bad_schedule], r#"entry 1 (id \"b\")"#),
        (vec![entry("a", "*"), entry("a", "tag:db")], "appears twice"),
        (vec![entry("a", "web")], "target"),
        (vec![entry("a", "tag:web;x")], "target"),
        (vec![bad_jitter], "86400"),
    ] {
        let r = apply(&l, &set);
        assert_eq!(r.status, 400, "{set:?}: {}", r.body);
        assert!(r.body.contains(says), "{says}: {}", r.body);
        let r = l.post("/api/v1/fleet/cron/plan", &json!({ "entries": set }));
        assert_eq!(r.status, 400, "plan {set:?}: {}", r.body);
    }
    // An id a host already has in its own list: refused naming the host.
    let own = json!([{"id": "mine", "schedule": "@daily", "command": "/bin/true"}]);
    assert_eq!(l.put("/api/v1/agents/db1.test/cron", &own).status, 200);
    let r = apply(&l, &[entry("a", "*"), entry("mine", "*")]);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("\\\"mine\\\"") && r.body.contains("1 host (db1.test)"),
        "{}",
        r.body
    );
    // Unknown fields are refused, not ignored.
    let r = l.put(
        "/api/v1/fleet/cron",
        &json!({"entries": [], "generaton": 1}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(l.get("/api/v1/fleet/cron").json(), before);

    // A plan made against a set that changed since: 409, plan again.
    let r = l.put(
        "/api/v1/fleet/cron",
        &json!({"entries": [entry("x", "*")], "generation": 0}),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("plan again"), "{}", r.body);
    let r = l.put(
        "/api/v1/fleet/cron",
        &json!({"entries": [entry("x", "*")], "generation": 1}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(generation(&l), 2);
}

/// `cc-listener operators add NAME --role ROLE --hosts HOSTS`: its token,
/// once the listener accepts it.
fn operator(l: &ListenerProcess, db: &Path, name: &str, role: &str, hosts: &str) -> String {
    let out = std::process::Command::new(bin())
        .args([
            "operators",
            "add",
            name,
            "--role",
            role,
            "--hosts",
            hosts,
            "--db",
        ])
        .arg(db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    l.wait_for(T, |l| {
        (l.request_as("GET", "/api/v1/agents", &token, None).status != 401).then_some(())
    });
    token
}

#[tokio::test]
async fn a_scoped_operator_applies_only_what_its_selector_reaches() {
    let dir = TempDir::new("fleet");
    let l = ListenerProcess::start(bin(), dir.path(), "");
    let db_path = dir.path().join("listener.db");
    let _w1 = agent(&l, "web1.test", &["web"], "user").await;
    let _w2 = agent(&l, "web2.test", &["web"], "user").await;
    let _d1 = agent(&l, "db1.test", &["db"], "user").await;
    let webop = operator(&l, &db_path, "webop", "operator", "tag:web");
    let viewer = operator(&l, &db_path, "viewer", "viewer", "*");

    // Every host: db1 is out of reach. 403, counting, not naming it.
    let all = json!({"entries": [entry("a", "*")]});
    let r = l.request_as("PUT", "/api/v1/fleet/cron", &webop, Some(&all));
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        r.body.contains("affects 3 hosts, 1 of them outside"),
        "{}",
        r.body
    );
    assert!(!r.body.contains("db1"), "{}", r.body);
    let r = l.request_as("POST", "/api/v1/fleet/cron/plan", &webop, Some(&all));
    assert_eq!(r.status, 200, "{}", r.body);
    let plan = r.json();
    assert_eq!(plan["outsideSelector"], 1);
    assert_eq!(plan["hosts"].as_array().unwrap().len(), 2, "{plan}");
    assert!(!r.body.contains("db1"), "{}", r.body);
    assert_eq!(generation(&l), 0, "nothing applied");

    // Its own hosts only: applied.
    let web = json!({"entries": [entry("a", "tag:web")]});
    let r = l.request_as("PUT", "/api/v1/fleet/cron", &webop, Some(&web));
    assert_eq!(r.status, 200, "{}", r.body);
    // Removing an entry that reaches a db host is also a change there.
    let r = l.put(
        "/api/v1/fleet/cron",
        &json!({"entries": [entry("a", "tag:web"), entry("d", "tag:db")]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = l.request_as("PUT", "/api/v1/fleet/cron", &webop, Some(&web));
    assert_eq!(r.status, 403, "dropping db's entry: {}", r.body);

    // A viewer may read, not plan or apply; status lists what it reaches.
    let r = l.request_as("PUT", "/api/v1/fleet/cron", &viewer, Some(&web));
    assert_eq!(r.status, 403, "{}", r.body);
    let r = l.request_as("POST", "/api/v1/fleet/cron/plan", &viewer, Some(&web));
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(
        l.request_as("GET", "/api/v1/fleet/cron", &viewer, None)
            .status,
        200
    );
    let rows = l
        .request_as("GET", "/api/v1/cron/status", &webop, None)
        .json();
    let names: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["hostname"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web1.test", "web2.test"]);
    let rows = l
        .request_as("GET", "/api/v1/cron/status?host=db1.test", &webop, None)
        .json();
    assert_eq!(rows, json!([]));
}

/// A system-mode host gets fleet entries only in a list an operator
/// signed: without one it keeps what it had ("awaiting signature"); a
/// signature over another list is refused.
#[tokio::test]
async fn system_hosts_get_fleet_entries_only_signed() {
    let dir = TempDir::new("fleet");
    let l = ListenerProcess::start(bin(), dir.path(), "");
    let sys_key = l.add_key("sys1.test");
    let mut sys = ws::registered_as(&l, &sys_key, &register("sys1.test", &["web"], "system")).await;
    let root = json!([{"id": "r", "target": "tag:web", "schedule": "@daily", "command": "/usr/bin/backup"}]);

    let plan = l
        .post("/api/v1/fleet/cron/plan", &json!({"entries": root}))
        .json();
    assert_eq!(plan["hosts"][0]["hostname"], "sys1.test");
    assert_eq!(plan["hosts"][0]["awaitingSignature"], true);
    let list = plan["hosts"][0]["entries"].clone();
    assert_eq!(list.as_array().unwrap().len(), 1);

    // Unsigned: applied to the set, but not sent to the root host.
    let r = l.put("/api/v1/fleet/cron", &json!({"entries": root}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["awaitingSignature"], json!(["sys1.test"]));
    assert!(
        next_refresh(&mut sys, Duration::from_millis(800))
            .await
            .is_none()
    );
    let rows = l.get("/api/v1/cron/status?host=sys1.test").json();
    assert_eq!(rows[0]["awaitingSignature"], true, "{rows}");

    let (_, key) = cc_testkit::signing::operator();
    // A signature over some other list: refused, nothing stored.
    let other = json!([{"id": "r", "schedule": "@daily", "command": "/bin/sh -c id"}]);
    let st = cc_testkit::signing::cron_statement(&other, "sys1.test", 1);
    let forged = cc_testkit::signing::sign_cron(&st, key);
    let r = l.put(
        "/api/v1/fleet/cron",
        &json!({"entries": root, "signed": {"sys1.test": forged}}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("not the host's new list"), "{}", r.body);
    // A signature for another host: refused.
    let st = cc_testkit::signing::cron_statement(&list, "other.test", 1);
    let r = l.put(
        "/api/v1/fleet/cron",
        &json!({"entries": root, "signed": {"sys1.test": cc_testkit::signing::sign_cron(&st, key)}}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    // A signature for a user-mode host: nothing to sign there.
    let _user = agent(&l, "user1.test", &["web"], "user").await;
    let st = cc_testkit::signing::cron_statement(&list, "user1.test", 1);
    let r = l.put(
        "/api/v1/fleet/cron",
        &json!({"entries": root, "signed": {"user1.test": cc_testkit::signing::sign_cron(&st, key)}}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("not a system-mode host"), "{}", r.body);
    assert!(
        next_refresh(&mut sys, Duration::from_millis(500))
            .await
            .is_none()
    );

    // Signed over exactly its new list: sent, with the signature.
    let st = cc_testkit::signing::cron_statement(
        &list,
        "sys1.test",
        cc_testkit::signing::next_generation(),
    );
    let r = l.put(
        "/api/v1/fleet/cron",
        &json!({"entries": root, "signed": {"sys1.test": cc_testkit::signing::sign_cron(&st, key)}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["signed"], 1);
    let (ids, m) = next_refresh(&mut sys, T).await.unwrap();
    assert_eq!(ids, ["r"]);
    assert!(m["signed"].is_object(), "{m}");
    let rows = l.get("/api/v1/cron/status?host=sys1.test").json();
    assert_eq!(rows[0]["awaitingSignature"], false, "{rows}");

    // A second entry: its list no longer covered. It keeps the signed one
    // (on reconnect too), never an unsigned list with root entries.
    let two = json!([
        root[0],
        {"id": "r2", "target": "*", "schedule": "@hourly", "command": "/usr/bin/rotate"}
    ]);
    assert_eq!(
        l.put("/api/v1/fleet/cron", &json!({"entries": two})).status,
        200
    );
    drop(sys);
    l.wait_connected("sys1.test", false);
    let mut sys = ws::registered_as(&l, &sys_key, &register("sys1.test", &["web"], "system")).await;
    let (ids, m) = next_refresh(&mut sys, T).await.unwrap();
    assert_eq!(ids, ["r"], "the last signed list");
    assert!(m["signed"].is_object(), "{m}");
    let rows = l.get("/api/v1/cron/status?host=sys1.test").json();
    assert_eq!(rows[0]["awaitingSignature"], true, "{rows}");
    assert_eq!(rows[0]["wanted"], 2, "{rows}");
}

/// `ccctl cron plan`, `apply` (refused without a terminal or `--yes`),
/// `status`, and entry options printed back by `cron get` as `cron set`
/// reads them.
#[tokio::test]
async fn ccctl_plans_applies_and_shows_status() {
    let dir = TempDir::new("fleet-ccctl");
    let l = ListenerProcess::start(bin(), dir.path(), "");
    let mut web = agent(&l, "web1.test", &["web"], "user").await;
    let _db = agent(&l, "db1.test", &["db"], "user").await;
    let file = dir.path().join("fleet.cron");
    std::fs::write(
        &file,
        "# the fleet\nbackup tag:web [timeout=60,jitter=300] 0 3 * * * /usr/bin/backup --full\nping * @hourly /bin/true\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let run = |args: &[&str]| {
        let out = l.ccctl(dir.path(), args);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = run(&["cron", "plan", f]);
    assert!(ok, "{err}");
    assert_eq!(out, "db1.test: +ping\nweb1.test: +backup +ping\n");
    // No terminal, no --yes: nothing applied.
    let (ok, _, err) = run(&["cron", "apply", f]);
    assert!(!ok);
    assert!(err.contains("--yes"), "{err}");
    assert_eq!(generation(&l), 0);
    let (ok, out, err) = run(&["cron", "apply", f, "--yes"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("applied: generation 1, 2 hosts changed"),
        "{out}"
    );
    let (ids, m) = next_refresh(&mut web, T).await.unwrap();
    assert_eq!(ids, ["backup", "ping"]);
    assert_eq!(m["payload"][0]["jitter"], 300);
    assert_eq!(m["payload"][0]["timeout"], 60);
    // Unchanged: the plan shows nothing, apply does nothing.
    let (ok, out, _) = run(&["cron", "plan", f]);
    assert!(ok);
    assert_eq!(out, "no changes\n");
    let (ok, _, _) = run(&["cron", "apply", f]);
    assert!(ok, "nothing to ask about");
    assert_eq!(generation(&l), 1);

    let (ok, out, err) = run(&["cron", "status", "--tag", "web"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[1].starts_with("web1.test  user  2  -  yes"), "{out}");
    let (ok, out, _) = run(&["cron", "status", "--missed", "--output", "json"]);
    assert!(ok);
    assert_eq!(out.trim(), "[]", "nothing C's tracker filled");

    // Options round-trip through a host's own list.
    let own = dir.path().join("own.cron");
    std::fs::write(&own, "mine [jitter=30,grace=90] @daily /bin/true\n").unwrap();
    let (ok, _, err) = run(&["cron", "set", "db1.test", own.to_str().unwrap()]);
    assert!(ok, "{err}");
    let (ok, out, _) = run(&["cron", "get", "db1.test"]);
    assert!(ok);
    // The entry line, then next runs as `#` comments (so it reads back).
    assert_eq!(
        out.lines().next(),
        Some("mine [jitter=30,grace=90] @daily /bin/true"),
        "{out}"
    );
    assert!(out.lines().skip(1).all(|l| l.starts_with('#')), "{out}");
    // A bad target is named with its line before anything is sent.
    std::fs::write(&file, "x web @hourly /bin/true\n").unwrap();
    let (ok, _, err) = run(&["cron", "plan", f]);
    assert!(!ok);
    assert!(err.contains("target \"web\""), "{err}");
}

/// Two listeners on one PostgreSQL database: a set applied through one
/// reaches, within 1 s, the hosts the other holds (each listener watches
/// the set's generation and pushes to its own hosts).
#[tokio::test(flavor = "multi_thread")]
async fn a_set_applied_on_one_listener_reaches_the_hosts_another_holds() {
    let Some(cluster) = cc_testkit::pg::Cluster::start() else {
        return;
    };
    let url = cluster.create_db("cc");
    let dir = TempDir::new("fleet-pg");
    let start = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        ListenerProcess::start_shared(bin(), &d, &url, &format!("listener_name = \"{name}\"\n"))
    };
    let (east, west) = (start("east"), start("west"));
    let key = east.add_key("one.test");
    let mut one = ws::registered_as(&east, &key, &register("one.test", &["web"], "user")).await;
    let key = west.add_key("two.test");
    let mut two = ws::registered_as(&west, &key, &register("two.test", &["db"], "user")).await;

    let started = Instant::now();
    let r = west.put(
        "/api/v1/fleet/cron",
        &json!({"entries": [entry("w", "tag:web"), entry("all", "*")]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let (ids, _) = next_refresh(&mut one, T).await.unwrap();
    assert_eq!(ids, ["w", "all"], "held by east, applied on west");
    let (ids, _) = next_refresh(&mut two, T).await.unwrap();
    assert_eq!(ids, ["all"]);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // Each listener sent its own host once: nothing more arrives.
    assert!(
        next_refresh(&mut one, Duration::from_millis(500))
            .await
            .is_none()
    );
    assert_eq!(east.get("/api/v1/fleet/cron").json()["generation"], 1);
    // Retagged through west, held by east: sent by east within 1 s.
    let started = Instant::now();
    let r = west.put("/api/v1/keys/one.test/tags", &json!(["db"]));
    assert_eq!(r.status, 200, "{}", r.body);
    let (ids, _) = next_refresh(&mut one, T).await.unwrap();
    assert_eq!(ids, ["all"]);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // Its own list set through west: east sends own + fleet entries.
    let own = json!([{"id": "mine", "schedule": "@daily", "command": "/bin/true"}]);
    assert_eq!(west.put("/api/v1/agents/one.test/cron", &own).status, 200);
    let (ids, _) = next_refresh(&mut one, T).await.unwrap();
    assert_eq!(ids, ["mine", "all"]);
}

/// `ccctl cron apply --system --key K` signs each system-mode host's new
/// list: the host is sent it with the signature, and status no longer
/// says it awaits one.
#[tokio::test]
async fn ccctl_apply_system_signs_each_root_hosts_list() {
    let dir = TempDir::new("fleet-ccctl-system");
    let l = ListenerProcess::start(bin(), dir.path(), "");
    let mut sys = agent(&l, "sys1.test", &["db"], "system").await;
    let key = dir.path().join("ops.key");
    let out = l.ccctl(dir.path(), &["keygen", "--out", key.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = dir.path().join("fleet.cron");
    std::fs::write(
        &file,
        "dump tag:db @daily /usr/bin/pg_dumpall\nrel tag:db @hourly relative\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let k = key.to_str().unwrap();
    // A program by name: refused before anything is signed or sent.
    let out = l.ccctl(
        dir.path(),
        &["cron", "apply", f, "--yes", "--system", "--key", k],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("absolute path"));
    assert_eq!(generation(&l), 0);
    std::fs::write(&file, "dump tag:db @daily /usr/bin/pg_dumpall\n").unwrap();
    let (_, plan_out) = {
        let o = l.ccctl(dir.path(), &["cron", "plan", f]);
        (o.status, String::from_utf8_lossy(&o.stdout).into_owned())
    };
    assert!(
        plan_out.contains("sys1.test: +dump (root list awaiting signature"),
        "{plan_out}"
    );
    let out = l.ccctl(
        dir.path(),
        &["cron", "apply", f, "--yes", "--system", "--key", k],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 lists signed"));
    let (ids, m) = next_refresh(&mut sys, T).await.unwrap();
    assert_eq!(ids, ["dump"]);
    assert!(
        m["signed"]["key"].as_str().unwrap().starts_with("ed25519:"),
        "{m}"
    );
    let rows = l.get("/api/v1/cron/status?host=sys1.test").json();
    assert_eq!(rows[0]["awaitingSignature"], false, "{rows}");
}

/// The console shows what `cron status` shows: on the fleet page a host
/// with drift or missed runs says so in its cron cell and its row is red;
/// on the host page the effective list (fleet entries too) with drift, and
/// each entry's last scheduled run — a failed or missed one in a red row
/// with its reason. `cron status --failing --missed` select the same.
#[tokio::test(flavor = "multi_thread")]
async fn the_console_shows_drift_and_failed_and_missed_runs_in_red() {
    use cc_testkit::http::{console, console_login};
    let dir = TempDir::new("fleet-console");
    let l = ListenerProcess::start(bin(), dir.path(), "");
    let mut web = agent(&l, "web1.test", &["web"], "user").await;
    let _calm = agent(&l, "calm.test", &["db"], "user").await;
    let set = [entry("nightly", "tag:web"), entry("hourly", "tag:web")];
    assert_eq!(apply(&l, &set).status, 200);
    next_refresh(&mut web, T).await.expect("the fleet list");
    // The agent installed one of two: drift.
    ws::send(
        &mut web,
        &json!({"type": "cron_status", "payload": {"installed": ["nightly"], "rejected": []}}),
    )
    .await;
    // `nightly` ran and failed (a cron report: exit 2).
    let mut report = cc_testkit::sim::suite_report("nightly");
    report["payload"]["exitCode"] = json!(2);
    ws::send(&mut web, &report).await;
    l.wait_for(T, |l| {
        let r = l.get("/api/v1/cron/status?host=web1.test").json();
        (r[0]["lastStatus"]["nightly"]["status"] == "failed" && r[0]["installed"] == 1)
            .then_some(())
    });
    // `hourly` was missed (as the tracker records one: a row and an event).
    let db = rusqlite::Connection::open(dir.path().join("listener.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    let now = cc_listener::now_ms();
    db.execute_batch(&format!(
        "INSERT INTO schedule_misses (hostname, entry_id, due_ms, reason, at_ms)
         VALUES ('web1.test', 'hourly', {due}, 'host offline', {now});
         INSERT INTO events (at_ms, kind, job_id, hostname, status, detail)
         VALUES ({now}, 'cron', 'hourly', 'web1.test', 'missed', 'host offline');",
        due = now - 120_000
    ))
    .unwrap();

    let rows = l.get("/api/v1/cron/status?host=web1.test").json();
    assert_eq!(rows[0]["missed"], json!(["hourly"]), "{rows}");
    assert_eq!(rows[0]["drift"], true, "{rows}");
    let cookie = console_login(l.admin_addr, cc_testkit::listener::TOKEN);
    let fleet = console(l.admin_addr, "GET", "/ui/", "", Some(&cookie));
    assert!(fleet.contains(r#"id="missed-warning""#), "{fleet}");
    assert!(fleet.contains("1 host missed scheduled runs"), "{fleet}");
    let row = |page: &str, attr: &str| -> String {
        let start = page.find(attr).unwrap_or_else(|| panic!("{attr}: {page}"));
        let open = page[..start].rfind("<tr").unwrap();
        page[open..start + page[start..].find("</tr>").unwrap()].to_owned()
    };
    let web_row = row(&fleet, r#"data-host="web1.test""#);
    let tag = |row: &str| row[..row.find('>').unwrap()].to_owned();
    assert!(tag(&web_row).contains("missed"), "{web_row}");
    assert!(web_row.contains("drift: wants 2"), "{web_row}");
    assert!(web_row.contains("1 missed (24 h)"), "{web_row}");
    let calm_row = row(&fleet, r#"data-host="calm.test""#);
    assert!(
        !calm_row.contains("missed") && !calm_row.contains("drift"),
        "{calm_row}"
    );

    let host = console(
        l.admin_addr,
        "GET",
        "/ui/hosts/web1.test",
        "",
        Some(&cookie),
    );
    assert!(host.starts_with("HTTP/1.1 200"), "{host}");
    let at = host.find(r#"id="cron-drift""#).expect("the drift line");
    let drift = &host[at..at + host[at..].find("</p>").unwrap()];
    assert!(
        drift.contains("wanted: 2") && drift.contains("drift"),
        "{drift}"
    );
    let nightly = row(&host, r#"data-entry="nightly""#);
    assert!(tag(&nightly).contains("missed"), "{nightly}");
    assert!(nightly.contains("failed, exit 2"), "{nightly}");
    let hourly = row(&host, r#"data-entry="hourly""#);
    assert!(tag(&hourly).contains("missed"), "{hourly}");
    assert!(
        hourly.contains("missed: host offline (1 missed in 24 h)"),
        "{hourly}"
    );
}
