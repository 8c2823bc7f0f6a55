//! Hostile peers against the real `cc-listener`: an agent with a valid key
//! that tries to fill the disk, operator clients that page through large
//! reports at once, anonymous sockets that try to lock agents out, and an
//! agent that registers a case-variant of another host's name. Each test
//! plays the attacker and then checks what the listener refused. Hostile
//! operator clients (trickled heads, held connections) are in
//! `hostile_operator.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cc_testkit::listener::{FAST, ListenerProcess};
use cc_testkit::ws::{self, Ws};
use cc_testkit::{TempDir, agent::proc_status_kib};
use serde_json::{Value, json};

use common::bin;

const T: Duration = Duration::from_secs(10);

/// Report ids acknowledged on `ws` until `quiet` passes with no message.
async fn acks(ws: &mut Ws, quiet: Duration) -> Vec<String> {
    let mut ids = Vec::new();
    loop {
        match tokio::time::timeout(quiet, ws::recv(ws, Duration::from_secs(3600))).await {
            Ok(Some(m)) if m["type"] == "report_ack" => {
                ids.push(m["payload"]["reportId"].as_str().unwrap().to_owned());
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return ids,
        }
    }
}

fn db_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("listener.db"))
        .map(|e| e.metadata().map_or(0, |m| m.len()))
        .sum()
}

/// A report of about `size` bytes on the wire, half of it in a field the
/// spec does not have.
fn big_report(job_id: &str, report_id: &str, size: usize) -> Value {
    let mut r = ws::report(job_id, Some(report_id));
    r["payload"]["stdout"] = json!("o".repeat(size / 4));
    r["payload"]["stderr"] = json!("e".repeat(size / 4));
    r["payload"]["junk"] = json!("j".repeat(size / 2));
    r
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disk_filling_agent_stops_at_its_quota_while_another_keeps_reporting() {
    let dir = TempDir::new("h-quota");
    let quota: u64 = 8_000_000;
    let l = ListenerProcess::start(
        bin(),
        dir.path(),
        &format!("{FAST}report_quota_bytes = {quota}\nunmatched_report_quota = 20\n"),
    );
    let mut filler = ws::registered(&l, "filler.test").await;
    let before = db_bytes(dir.path());

    // 1. Reports for jobs that do not exist: only the unmatched quota is kept.
    for i in 0..60 {
        ws::send(
            &mut filler,
            &ws::report(&format!("made-up-{i}"), Some(&format!("u-{i}"))),
        )
        .await;
    }
    let unmatched_acked = acks(&mut filler, Duration::from_secs(2)).await;
    assert_eq!(
        unmatched_acked.len(),
        20,
        "60 reports for made-up jobs: only the unmatched quota (20) is stored and acknowledged"
    );

    // 2. Large reports for its real jobs, with a field the spec does not have.
    let mut jobs = Vec::new();
    for i in 0..40 {
        jobs.push(l.post_job(
            "filler.test",
            &json!({"command": "/bin/echo", "args": [format!("{i}")]}),
        ));
    }
    for (i, id) in jobs.iter().enumerate() {
        ws::send(
            &mut filler,
            &big_report(id.as_str(), &format!("big-{i}"), 900_000),
        )
        .await;
    }
    let big_acked = acks(&mut filler, Duration::from_secs(3)).await;
    let grown = db_bytes(dir.path()).saturating_sub(before);
    eprintln!(
        "figures: unmatched acked {}/60; large acked {}/40; database grew {grown} bytes (quota {quota})",
        unmatched_acked.len(),
        big_acked.len()
    );
    assert!(
        !big_acked.is_empty() && big_acked.len() < 40,
        "40 reports of 900 kB against an 8 MB quota: some stored, the rest refused; {} acknowledged",
        big_acked.len()
    );
    // What is kept is what the spec defines: the junk field is not stored.
    let stored = l.get("/api/v1/reports?hostname=filler.test&limit=1").json();
    let report = &stored[0]["report"];
    assert!(
        report["stdout"]
            .as_str()
            .is_some_and(|s| s.len() == 225_000)
    );
    assert!(
        report.get("junk").is_none(),
        "unknown fields are not stored"
    );
    // The disk holds the quota, not the attack (the WAL may hold a copy).
    assert!(
        grown < 3 * quota,
        "the database grew by {grown} bytes for a {quota}-byte quota"
    );
    // The operator sees why.
    let entry = l.agent_entry("filler.test").unwrap();
    assert!(
        entry["reportsRefused"].as_u64().unwrap_or(0) >= 40 + (40 - big_acked.len() as u64),
        "{entry}"
    );
    assert!(
        entry["reportBytes"].as_u64().unwrap_or(u64::MAX) <= quota,
        "{entry}"
    );
    assert!(
        entry["lastRefusal"]
            .as_str()
            .is_some_and(|s| s.contains("quota")),
        "{entry}"
    );
    assert!(
        l.log().contains("report refused") && l.log().contains("quota"),
        "the listener logs each refusal"
    );

    // 3. Another agent's reports are stored and acknowledged meanwhile.
    let mut bystander = ws::registered(&l, "bystander.test").await;
    let id = l.post_job(
        "bystander.test",
        &json!({"command": "/bin/echo", "args": ["hi"]}),
    );
    let job = ws::recv_type(&mut bystander, "execute_job", T).await;
    assert_eq!(job["payload"]["jobId"], id.as_str());
    ws::send(
        &mut bystander,
        &ws::report(id.as_str(), Some("bystander-1")),
    )
    .await;
    let got = acks(&mut bystander, Duration::from_secs(2)).await;
    assert_eq!(got, vec!["bystander-1".to_owned()]);
    assert_eq!(
        l.get(&format!("/api/v1/jobs/{id}")).json()["status"],
        "done"
    );
}

/// Three clients page through 150 reports of about 600 kB at once.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_large_report_pages_keep_the_listener_small() {
    let dir = TempDir::new("h-pages");
    {
        let store = cc_listener::store::Store::open(&dir.path().join("listener.db")).unwrap();
        let filler = "x".repeat(600_000);
        store
            .insert_reports_for_test("pages.test", 150, &filler)
            .unwrap();
    }
    let l = ListenerProcess::start(bin(), dir.path(), FAST);
    let base = proc_status_kib(l.child.id(), "VmRSS");
    let addr = l.admin_addr;
    let clients: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(move || {
                let mut seen = 0usize;
                let mut pages = 0usize;
                let mut next: Option<String> = None;
                loop {
                    let path = match &next {
                        Some(c) => format!("/api/v1/reports?limit=1000&before={c}"),
                        None => "/api/v1/reports?limit=1000".to_owned(),
                    };
                    let r = cc_testkit::http::request(
                        addr,
                        "GET",
                        &path,
                        Some(cc_testkit::listener::TOKEN),
                        None,
                    );
                    assert_eq!(r.status, 200);
                    seen += r.json().as_array().unwrap().len();
                    pages += 1;
                    next = r.header("x-cc-next-before").map(ToOwned::to_owned);
                    if next.is_none() || pages > 1000 {
                        return (seen, pages);
                    }
                }
            })
        })
        .collect();
    let results: Vec<(usize, usize)> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let peak = proc_status_kib(l.child.id(), "VmHWM");
    eprintln!("figures: RSS at start {base} KiB, peak {peak} KiB; pages per client {results:?}");
    // 3 × 90 MB of reports; a page is at most 8 MiB and is streamed.
    assert!(
        peak < base + 64 * 1024,
        "peak RSS {peak} KiB (started at {base} KiB) while 3 clients paged through 90 MB"
    );
    for (seen, pages) in &results {
        assert_eq!(*seen, 150, "every report is reached by paging");
        assert!(*pages > 1, "a 1000-row page is cut by bytes");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_anonymous_sockets_do_not_keep_an_agent_out() {
    let dir = TempDir::new("h-idle");
    // Default liveness: the early agent is not expected to say anything.
    let l = ListenerProcess::start(bin(), dir.path(), "max_connections = 1000\n");
    let key = l.add_key("late.test");
    let early = ws::registered(&l, "early.test").await;
    // 5,000 sockets from 250 loopback addresses that never say a word.
    let mut idle = Vec::new();
    for i in 0..5000u32 {
        let src = std::net::SocketAddr::from(([127, 0, 1, (i % 250 + 1) as u8], 0));
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(src).unwrap();
        if let Ok(Ok(c)) =
            tokio::time::timeout(Duration::from_secs(2), s.connect(l.agent_addr)).await
        {
            idle.push(c);
        }
    }
    assert!(idle.len() >= 4000, "only {} sockets opened", idle.len());
    let started = Instant::now();
    let mut ws = ws::agent(&l.ws_url(), &key, "late.test").await;
    ws::send(&mut ws, &json!({"type": "heartbeat", "payload": {}})).await;
    l.wait_for(Duration::from_secs(2), |l| {
        l.agent_entry("late.test")
            .filter(|a| a["connected"] == true)
    });
    let took = started.elapsed();
    eprintln!(
        "figures: {} idle sockets open; agent registered in {took:?}",
        idle.len()
    );
    assert!(
        took < Duration::from_secs(2),
        "registered in {took:?} beside 5,000 idle sockets"
    );
    assert_eq!(
        l.agent_entry("early.test").unwrap()["connected"],
        true,
        "an authenticated agent is never dropped for anonymous ones"
    );
    drop((idle, early));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_case_variant_of_a_bound_hostname_is_refused() {
    let dir = TempDir::new("h-case");
    let l = ListenerProcess::start(bin(), dir.path(), FAST);
    let _web1 = ws::registered(&l, "web1.test").await;
    let k2 = l.add_key("impostor");
    let mut impostor = ws::agent(&l.ws_url(), &k2, "WEB1.test").await;
    let closed = ws::recv_close(&mut impostor, T).await;
    assert_eq!(
        closed,
        Some((1008, "this hostname belongs to another key".to_owned()))
    );
    let agents = l.get("/api/v1/agents").json();
    let names: Vec<&str> = agents
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["hostname"].as_str())
        .collect();
    assert_eq!(names, vec!["web1.test"], "one host, in one canonical form");
    // The operator's spelling does not matter either.
    let id = l.post_job("WEB1.Test", &json!({"command": "/bin/true"}));
    let job = l.get(&format!("/api/v1/jobs/{}", id));
    assert_eq!(job.json()["hostname"], "web1.test");
    // A key cannot be bound to a case variant of a bound name either.
    let out = l.keys(&["add", "other", "--hostname", "Web1.TEST"]);
    assert!(
        !out.status.success(),
        "keys add --hostname of a bound name (any case) is refused"
    );
}

/// Every list endpoint pages: `GET /agents` by `limit` with a cursor, in
/// hostname order, each agent once.
#[tokio::test(flavor = "multi_thread")]
async fn the_agent_list_pages_with_a_cursor() {
    let dir = TempDir::new("h-agents");
    let l = ListenerProcess::start(bin(), dir.path(), "");
    let mut conns = Vec::new();
    for i in 0..23 {
        let host = format!("page-{i:02}.test");
        let key = l.add_key(&host);
        conns.push(ws::agent(&l.ws_url(), &key, &host).await);
    }
    l.wait_for(T, |l| {
        let n = l
            .get("/api/v1/agents")
            .json()
            .as_array()
            .map_or(0, Vec::len);
        (n == 23).then_some(())
    });
    let mut seen: Vec<String> = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = after.as_ref().map_or_else(
            || "/api/v1/agents?limit=5".to_owned(),
            |a| format!("/api/v1/agents?limit=5&after={a}"),
        );
        let r = l.get(&path);
        assert_eq!(r.status, 200, "{}", r.body);
        let page = r.json();
        let page = page.as_array().unwrap();
        assert!(page.len() <= 5);
        seen.extend(
            page.iter()
                .map(|a| a["hostname"].as_str().unwrap().to_owned()),
        );
        pages += 1;
        after = r.header("x-cc-next-after").map(ToOwned::to_owned);
        if after.is_none() || pages > 10 {
            break;
        }
    }
    let want: Vec<String> = (0..23).map(|i| format!("page-{i:02}.test")).collect();
    assert_eq!(seen, want, "every agent once, in order");
    assert_eq!(pages, 5);
    for bad in ["limit=0", "limit=10001", "after=a/b", "nope=1"] {
        assert_eq!(l.get(&format!("/api/v1/agents?{bad}")).status, 400, "{bad}");
    }
    drop(conns);
}

/// A fast reporter is paced, not refused: 20 reports of about 480 kB
/// (9.6 MB) at 1 MiB/s with a 4 s burst take at least 4 s to be
/// acknowledged, and every one is.
#[tokio::test(flavor = "multi_thread")]
async fn a_fast_reporter_is_paced_and_loses_nothing() {
    let dir = TempDir::new("h-rate");
    let l = ListenerProcess::start(
        bin(),
        dir.path(),
        &format!("{FAST}report_rate_bytes_per_sec = 1048576\n"),
    );
    let mut a = ws::registered(&l, "fast.test").await;
    let started = Instant::now();
    for i in 0..20 {
        let mut r = ws::report(&format!("fast-{i}"), Some(&format!("f-{i}")));
        r["payload"]["stdout"] = json!("o".repeat(240_000));
        r["payload"]["stderr"] = json!("e".repeat(240_000));
        ws::send(&mut a, &r).await;
    }
    let mut acked = 0;
    while acked < 20 {
        let m = ws::recv(&mut a, Duration::from_secs(30))
            .await
            .expect("closed");
        if m["type"] == "report_ack" {
            acked += 1;
        }
    }
    let took = started.elapsed();
    eprintln!("figures: 20 reports of 480 kB acknowledged in {took:?}");
    assert!(
        took >= Duration::from_secs(4),
        "9.6 MB at 1 MiB/s (burst 4 MiB) acknowledged in {took:?}: not paced"
    );
}

/// Issue "Hostile peers, round two", finding 2: `cron_status` was neither
/// validated nor paced, logged whole and written on every message — 1,076
/// messages with a 1 MB reason grew the log by 1.08 GB, and short ones
/// made 784 fsync'd writes a second from one connection. Now it is bounded
/// like a cron list (a reason ≤ 1 KiB, no control characters), paced with
/// the reports, logged as counts, and stored only when it changed.
#[tokio::test(flavor = "multi_thread")]
async fn cron_status_is_bounded_paced_logged_as_counts_and_stored_when_it_changes() {
    let dir = TempDir::new("hostile-cronstatus");
    let l = ListenerProcess::start(bin(), dir.path(), FAST);
    let mut a = ws::registered(&l, "cs.test").await;
    let status = |reason: &str| {
        json!({"type": "cron_status", "payload": {
            "installed": ["ok"], "rejected": [{"id": "bad", "reason": reason}]
        }})
    };
    // A megabyte of reason, and a reason that would start a log line of
    // its own.
    let huge = format!("FORGED-HUGE {}", "x".repeat(1_000_000));
    ws::send(&mut a, &status(&huge)).await;
    ws::send(
        &mut a,
        &status("fine\n2026-01-01T00:00:00Z  INFO cc_listener: FORGED-LINE all hosts ok"),
    )
    .await;
    // A valid one after them is stored: the two above were dropped.
    ws::send(&mut a, &status("schedule: 61 is not a minute")).await;
    let agent = l.wait_for(T, |l| {
        l.agent_entry("cs.test")
            .filter(|a| a["cronStatus"]["rejected"][0]["reason"] == "schedule: 61 is not a minute")
    });
    assert_eq!(agent["cronStatus"]["installed"], json!(["ok"]), "{agent}");
    let log = l.log();
    assert!(!log.contains("FORGED-HUGE"), "the huge reason was logged");
    assert!(
        !log.contains("FORGED-LINE"),
        "a peer's text started a log line"
    );
    assert!(log.len() < 200_000, "the log grew to {} bytes", log.len());

    // The same status again and again: not written again. Writes to the
    // agent's cron status are counted by a trigger the test adds.
    let db = rusqlite::Connection::open(dir.path().join("listener.db")).unwrap();
    db.execute_batch(
        "CREATE TABLE test_cron_writes (at INTEGER);
         CREATE TRIGGER test_count_cron_writes AFTER UPDATE OF cron_status ON agents
         BEGIN INSERT INTO test_cron_writes VALUES (1); END;",
    )
    .unwrap();
    for _ in 0..200 {
        ws::send(&mut a, &status("schedule: 61 is not a minute")).await;
    }
    // Then a new one: once it shows, every copy before it was read (one
    // connection is read in order).
    ws::send(&mut a, &status("the last one")).await;
    l.wait_for(T, |l| {
        l.agent_entry("cs.test")
            .filter(|a| a["cronStatus"]["rejected"][0]["reason"] == "the last one")
    });
    let commits: i64 = db
        .query_row("SELECT count(*) FROM test_cron_writes", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        commits, 1,
        "{commits} writes for 200 copies of one cron status and one new one"
    );

    // Two statuses in turn, each a change: written at most once a second
    // (review of the fix above: "stored when it changes" alone let 200
    // alternations make 200 fsync'd writes in 0.1 s).
    let started = Instant::now();
    for i in 0..5 {
        let reason = if i % 2 == 0 { "even" } else { "odd" };
        ws::send(&mut a, &status(reason)).await;
    }
    ws::send(&mut a, &status("the very last one")).await;
    l.wait_for(Duration::from_secs(30), |l| {
        l.agent_entry("cs.test")
            .filter(|a| a["cronStatus"]["rejected"][0]["reason"] == "the very last one")
    });
    let secs = started.elapsed().as_secs_f64();
    let alternating: i64 = db
        .query_row("SELECT count(*) FROM test_cron_writes", [], |r| r.get(0))
        .unwrap();
    let alternating = alternating - commits;
    eprintln!("figures: 6 changing statuses made {alternating} writes in {secs:.1} s");
    assert_eq!(alternating, 6, "each a change, each stored");
    assert!(
        secs >= 5.0,
        "{alternating} writes in {secs:.1} s: more than one a second"
    );
}

/// A tag is an operator's statement about a host, like its hostname. Played
/// as a host with a valid key: registered once without `role=db`, it comes
/// back claiming `role=db`, hoping for the jobs (and their secret
/// arguments) the operator sends to the database hosts.
#[tokio::test(flavor = "multi_thread")]
async fn a_host_cannot_claim_tags_its_key_does_not_carry() {
    let dir = TempDir::new("h-tags");
    let l = ListenerProcess::start(bin(), dir.path(), FAST);
    let register = |host: &str, tags: &[&str]| {
        json!({"type": "register", "payload": {
            "hostname": host, "os": "linux", "arch": "amd64", "tags": tags,
            "executionMode": "user", "isRoot": false, "jobWindow": 4
        }})
    };
    // The real database host; its key was made with its tags.
    let r = l.post(
        "/api/v1/keys",
        &json!({"name": "db-1", "hostname": "db-1.test", "tags": ["role=db", "dc=1"]}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["tags"], json!(["dc=1", "role=db"]));
    let db_key = r.json()["key"].as_str().unwrap().to_owned();
    let db = ws::registered_as(&l, &db_key, &register("db-1.test", &["role=db", "dc=1"])).await;

    // The attacker's host first registers as what it is (its tags are
    // bound then), and comes back claiming role=db.
    let evil_key = l.add_key("evil.test");
    let evil = ws::registered_as(&l, &evil_key, &register("evil.test", &["role=web"])).await;
    drop(evil);
    l.wait_connected("evil.test", false);
    let mut evil = ws::connect(&l.ws_url(), Some(&evil_key)).await.unwrap();
    ws::send(&mut evil, &register("evil.test", &["role=web", "role=db"])).await;
    let closed = ws::recv_close(&mut evil, T).await;
    assert_eq!(
        closed,
        Some((
            1008,
            "tags are not this key's (ccctl keys retag): +role=db".to_owned()
        )),
        "a host claimed a tag its key does not carry"
    );
    // A run for the database hosts goes to the database host alone.
    let (_, jobs) =
        l.post_run(&json!({"tags": ["role=db"], "command": "/bin/echo", "args": ["s3cret"]}));
    let hosts: Vec<&str> = jobs.iter().map(|(h, _)| h.as_str()).collect();
    assert_eq!(hosts, ["db-1.test"], "the run went to {hosts:?}");
    // What the operator sees is what runs select on.
    let agents = l.get("/api/v1/agents").json();
    let tags_of = |host: &str| {
        agents
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["hostname"] == host)
            .map(|a| a["tags"].clone())
    };
    assert_eq!(tags_of("evil.test"), Some(json!(["role=web"])));

    // The operator may change a key's tags; then the host registers with
    // the new ones, and only with them.
    let r = l.put("/api/v1/keys/evil.test/tags", &json!(["role=db"]));
    assert_eq!(r.status, 200, "{}", r.body);
    let (_, jobs) = l.post_run(&json!({"tags": ["role=db"], "command": "/bin/true"}));
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    let _evil = ws::registered_as(&l, &evil_key, &register("evil.test", &["role=db"])).await;
    let keys = l.get("/api/v1/keys").json();
    let evil_tags = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "evil.test")
        .map(|k| k["tags"].clone());
    assert_eq!(evil_tags, Some(json!(["role=db"])));
    // Bad tags and unknown keys get the API's usual answers.
    assert_eq!(
        l.put("/api/v1/keys/evil.test/tags", &json!(["a b"])).status,
        400
    );
    assert_eq!(l.put("/api/v1/keys/nobody/tags", &json!([])).status, 404);
    drop(db);
}

/// Played as an anonymous attacker: sockets from many loopback sources
/// that never send a byte — half dropped at once, half held until the
/// listener closes them — as fast as `per_source_gap` lets each source,
/// while `honest` agents on a link with 100 ms each way (200 ms round
/// trip) try to register, each retrying for up to 10 s. Returns how many
/// registered, the slowest registration, and the connects made a second.
async fn churn(
    l: &ListenerProcess,
    sources: u32,
    per_source_gap: Duration,
    honest: usize,
) -> (usize, Duration, f64) {
    let link = cc_testkit::proxy::SlowLink::start(l.agent_addr, Duration::from_millis(100));
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicU64::new(0));
    let attackers: Vec<_> = (0..sources)
        .map(|i| {
            let (stop, made) = (Arc::clone(&stop), Arc::clone(&made));
            tokio::spawn(attacker(i, l.agent_addr, per_source_gap, stop, made))
        })
        .collect();
    // The churn is up before the agents come.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let url = format!("ws://{}/agent", link.addr);
    let mut agents = Vec::new();
    for i in 0..honest {
        let host = format!("slow-{i}.test");
        let key = l.add_key(&host);
        agents.push(tokio::spawn(honest_agent(url.clone(), key, host)));
    }
    let mut registered = 0;
    let mut slowest = Duration::ZERO;
    let mut conns = Vec::new();
    for a in agents {
        if let Some((took, ws)) = a.await.unwrap() {
            registered += 1;
            slowest = slowest.max(took);
            conns.push(ws);
        }
    }
    let rate = made.load(Ordering::Relaxed) as f64 / (started.elapsed().as_secs_f64() + 0.5);
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        let _ = a.await;
    }
    // Every one of them is registered in the listener's eyes too.
    for i in 0..registered {
        let host = format!("slow-{i}.test");
        assert!(
            l.agent_entry(&host).is_some_and(|a| a["connected"] == true),
            "{host}"
        );
    }
    drop(conns);
    (registered, slowest, rate)
}

/// One anonymous source of [`churn`] (the `i`th, from 127.2.x.y: never
/// the honest link's 127.0.0.1): connects to `target` until `stop`, every
/// `per_source_gap`, dropping every other socket at once and holding the
/// rest (the last 64) until the listener closes them; counts in `made`.
async fn attacker(
    i: u32,
    target: std::net::SocketAddr,
    per_source_gap: Duration,
    stop: Arc<AtomicBool>,
    made: Arc<AtomicU64>,
) {
    let src = std::net::SocketAddr::from(([127, 2, (i / 250) as u8, (i % 250 + 1) as u8], 0));
    let mut held = std::collections::VecDeque::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(src).unwrap();
        if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_secs(1), s.connect(target)).await {
            made.fetch_add(1, Ordering::Relaxed);
            n += 1;
            if n % 2 == 0 {
                held.push_back(c);
                if held.len() > 64 {
                    held.pop_front();
                }
            }
        }
        if per_source_gap.is_zero() {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(per_source_gap).await;
        }
    }
}

/// One honest agent of [`churn`]: connects through `url` with `key` and
/// registers as `host`, retrying for up to 10 s; registered once the
/// listener answers its ping. How long it took and its connection, or
/// None when it never got in.
async fn honest_agent(url: String, key: String, host: String) -> Option<(Duration, Ws)> {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    let begun = Instant::now();
    while begun.elapsed() < Duration::from_secs(10) {
        let Ok(Ok(mut ws)) =
            tokio::time::timeout(Duration::from_secs(3), ws::connect_checked(&url, &key)).await
        else {
            // As the agent does, a pause before the next attempt.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        ws::send(&mut ws, &ws::register(&host)).await;
        ws::send(&mut ws, &json!({"type": "heartbeat", "payload": {}})).await;
        // Registered: the listener answers the agent's ping (the round
        // trip proves `register` was read and kept).
        let _ = ws.send(Message::Ping(b"p".to_vec().into())).await;
        let mut got_pong = false;
        while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
            if matches!(m, Message::Pong(_)) {
                got_pong = true;
                break;
            }
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
        if got_pong {
            return Some((begun.elapsed(), ws));
        }
    }
    None
}

/// Anonymous churn cannot keep agents out (issue finding: with a budget of
/// 16 and 8 per source, four sources opening and dropping about 250
/// sockets a second kept 5 of 5 agents on a 200 ms link from registering).
#[tokio::test(flavor = "multi_thread")]
async fn anonymous_churn_does_not_keep_agents_on_a_slow_link_out() {
    // The finding's small budget, at its rate (4 sources, ~250/s).
    let dir = TempDir::new("h-churn-small");
    let l = ListenerProcess::start(
        bin(),
        dir.path(),
        "max_unauthenticated = 16\nmax_unauthenticated_per_source = 8\n",
    );
    let (n, slowest, rate) = churn(&l, 4, Duration::from_millis(16), 5).await;
    eprintln!(
        "figures: small budget: {n} of 5 registered, slowest {slowest:?}, {rate:.0} connects/s"
    );
    assert_eq!(n, 5, "{n} of 5 agents registered under churn\n{}", l.log());
    drop(l);

    // The same budget with the failure budget out of the way: the choice
    // of what is pushed out holds on its own.
    let dir = TempDir::new("h-churn-policy");
    let l = ListenerProcess::start(
        bin(),
        dir.path(),
        "max_unauthenticated = 16\nmax_unauthenticated_per_source = 8\nunauthenticated_failures_per_sec = 1000000\n",
    );
    let (n, slowest, rate) = churn(&l, 4, Duration::from_millis(16), 5).await;
    eprintln!(
        "figures: small budget, no failure budget: {n} of 5 registered, slowest {slowest:?}, {rate:.0} connects/s"
    );
    assert_eq!(n, 5, "{n} of 5 agents registered under churn\n{}", l.log());
    drop(l);

    // The defaults, against as many sources as this machine drives flat out.
    let dir = TempDir::new("h-churn-default");
    let l = ListenerProcess::start(bin(), dir.path(), "");
    let (n, slowest, rate) = churn(&l, 1000, Duration::ZERO, 5).await;
    eprintln!(
        "figures: defaults, 1000 sources: {n} of 5 registered, slowest {slowest:?}, {rate:.0} connects/s"
    );
    assert_eq!(n, 5, "{n} of 5 agents registered under churn\n{}", l.log());
}

/// Handshakes with a wrong key cost an attacker nothing to make: the
/// listener counts every one but logs them at a bounded rate, saying how
/// many it left out (issue finding: 7,088 WARN lines in 5 s from one
/// client). From 200 sources, so that no source's failure budget stops
/// them first.
#[tokio::test(flavor = "multi_thread")]
async fn bad_key_handshakes_are_logged_at_a_bounded_rate() {
    let dir = TempDir::new("h-badkeys");
    let l = ListenerProcess::start(bin(), dir.path(), "");
    let url = l.ws_url();
    let target = l.agent_addr;
    let started = Instant::now();
    let mut tries = Vec::new();
    for i in 0..200u32 {
        let url = url.clone();
        tries.push(tokio::spawn(async move {
            let src = std::net::SocketAddr::from(([127, 3, 0, (i % 250 + 1) as u8], 0));
            let mut refused = 0u32;
            for _ in 0..20 {
                let s = tokio::net::TcpSocket::new_v4().unwrap();
                s.bind(src).unwrap();
                let Ok(tcp) = s.connect(target).await else {
                    continue;
                };
                let req = {
                    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
                    let mut r = url.as_str().into_client_request().unwrap();
                    r.headers_mut()
                        .insert("X-CC-API-KEY", "cck_wrong".parse().unwrap());
                    r
                };
                if let Err(tokio_tungstenite::tungstenite::Error::Http(resp)) =
                    tokio_tungstenite::client_async(req, tcp).await
                {
                    refused += u32::from(resp.status() == 401);
                }
            }
            refused
        }));
    }
    let mut refused = 0;
    for t in tries {
        refused += t.await.unwrap();
    }
    let took = started.elapsed();
    let log = l.log();
    let lines = log.matches("refused: unknown or revoked API key").count();
    let left_out: u64 = log
        .lines()
        .filter_map(|x| {
            x.split("left_out=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    eprintln!(
        "figures: {refused} bad-key handshakes in {took:?}; {lines} log lines, {left_out} said left out"
    );
    assert!(
        refused >= 2000,
        "only {refused} handshakes were refused with 401"
    );
    let allowed = 20 * (took.as_secs() as usize + 2);
    assert!(
        lines <= allowed,
        "{lines} lines for {refused} bad keys in {took:?}"
    );
    assert!(left_out > 0, "the lines say what they left out");
}

/// Played as an agent with a valid key: a report whose `durationMs` is past
/// what the store keeps as a signed 64-bit number. Before, it was stored,
/// and every read of it failed: the run's page (and the console's recent
/// jobs, every host's) answered 500 until the job left the page.
#[tokio::test(flavor = "multi_thread")]
async fn a_report_with_an_impossible_duration_is_refused_and_breaks_no_page() {
    let dir = TempDir::new("h-duration");
    let l = ListenerProcess::start(bin(), dir.path(), FAST);
    let mut ws = ws::registered(&l, "long.test").await;
    let (run, jobs) = l.post_run(&json!({"hosts": ["long.test"], "command": "/bin/true"}));
    let job = ws::recv_type(&mut ws, "execute_job", T).await;
    let id = ws::job_id(&job);
    assert_eq!(jobs[0].1, id.as_str());
    let mut r = ws::report(id.as_str(), Some("long-1"));
    r["payload"]["durationMs"] = json!(9_223_372_036_854_775_808u64);
    ws::send(&mut ws, &r).await;
    // A report after it, acknowledged: the first was read and dealt with.
    ws::send(&mut ws, &ws::report("nojob-1", Some("after-1"))).await;
    loop {
        let m = ws::recv(&mut ws, T).await.expect("an answer");
        if m["type"] == "report_ack" && m["payload"]["reportId"] == "after-1" {
            break;
        }
        assert_ne!(
            m["payload"]["reportId"], "long-1",
            "the impossible report was taken: {m}"
        );
    }
    let page = l.get(&format!("/api/v1/runs/{run}"));
    assert_eq!(page.status, 200, "{}", page.body);
    let job = l.get(&format!("/api/v1/jobs/{id}"));
    assert_eq!(job.status, 200, "{}", job.body);
    assert_eq!(job.json()["status"], "sent", "{}", job.body);
}

/// Played as an agent with a valid key: invalid messages whose bad value
/// is 900 KB. serde's error quotes the value it refused, and the listener
/// logs each dropped message: before, each made a log line of 900 KB.
#[tokio::test(flavor = "multi_thread")]
async fn a_huge_invalid_value_makes_a_short_log_line() {
    let dir = TempDir::new("h-loglen");
    let l = ListenerProcess::start(bin(), dir.path(), FAST);
    let mut ws = ws::registered(&l, "loud.test").await;
    let before = std::fs::metadata(l.log_path()).unwrap().len();
    let big = "x".repeat(900_000);
    for _ in 0..8 {
        let mut r = ws::report("j-1", None);
        r["payload"]["exitCode"] = json!(big);
        ws::send(&mut ws, &r).await;
    }
    // Dealt with in order: the ack of a good report after them.
    ws::send(&mut ws, &ws::report("nojob-2", Some("after-2"))).await;
    loop {
        let m = ws::recv(&mut ws, T).await.expect("an answer");
        if m["type"] == "report_ack" && m["payload"]["reportId"] == "after-2" {
            break;
        }
    }
    let grew = std::fs::metadata(l.log_path()).unwrap().len() - before;
    eprintln!("figures: 8 invalid messages of 900 KB grew the log by {grew} bytes");
    assert!(grew < 64 * 1024, "the log grew by {grew} bytes");
    assert!(l.log().contains("bytes cut)"), "the cut is said");
}

/// Played as a holder of a valid key: reconnecting in a loop, each time a
/// full registration (a key lookup, three writes, log lines). Ten at once
/// are fine (an agent that flaps), then twice a second; the rest are
/// closed with 1013 before anything is written.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_that_registers_in_a_loop_is_paced() {
    let dir = TempDir::new("h-reconnect");
    let l = ListenerProcess::start(bin(), dir.path(), FAST);
    let key = l.add_key("loop.test");
    let started = Instant::now();
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..40 {
        let mut ws = ws::agent(&l.ws_url(), &key, "loop.test").await;
        ws::send(&mut ws, &json!({"type": "heartbeat", "payload": {}})).await;
        use futures_util::SinkExt as _;
        let _ = ws
            .send(tokio_tungstenite::tungstenite::Message::Ping(
                b"p".to_vec().into(),
            ))
            .await;
        loop {
            match tokio::time::timeout(T, futures_util::StreamExt::next(&mut ws)).await {
                Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Pong(_)))) => {
                    accepted += 1;
                    break;
                }
                Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(c))))) => {
                    assert_eq!(u16::from(c.code), 1013, "{c:?}");
                    refused += 1;
                    break;
                }
                Ok(Some(Ok(_))) => {}
                other => panic!("neither registered nor refused: {other:?}"),
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let registered = l
        .log()
        .matches("agent registered hostname=loop.test")
        .count();
    eprintln!(
        "figures: 40 registrations in {secs:.2} s: {accepted} accepted, {refused} refused (1013)"
    );
    assert_eq!(accepted, registered, "each accepted one registered once");
    assert!(
        (accepted as f64) <= 10.0 + 2.0 * secs + 1.0,
        "{accepted} registrations in {secs:.2} s"
    );
    assert!(refused > 0);
}

/// `cronHost` (what an agent says of its cron daemon and time zone, in
/// every heartbeat) is a peer's text the console, `ccctl` and the log show:
/// a zone that is a path or carries a forged log line is dropped, never
/// stored; the same one again is not written again; a change is written
/// once a second at most; and a daemon that stopped is said in `GET
/// /agents` and the metric.
#[tokio::test(flavor = "multi_thread")]
async fn a_heartbeats_cron_host_is_bounded_stored_when_it_changes_and_counted() {
    let dir = TempDir::new("hostile-cronhost");
    let l = ListenerProcess::start(bin(), dir.path(), FAST);
    let mut a = ws::registered(&l, "ch.test").await;
    let hb = |daemon: Value, tz: &str| json!({"type": "heartbeat", "payload": {"cronHost": {"daemon": daemon, "timeZone": tz}}});
    // Writes of the agent's cronHost, counted by a trigger the test adds.
    let db = rusqlite::Connection::open(dir.path().join("listener.db")).unwrap();
    db.execute_batch(
        "CREATE TABLE test_host_writes (at INTEGER);
         CREATE TRIGGER test_count_host_writes AFTER UPDATE OF cron_host ON agents
         BEGIN INSERT INTO test_host_writes VALUES (1); END;",
    )
    .unwrap();
    let writes = || -> i64 {
        db.query_row("SELECT count(*) FROM test_host_writes", [], |r| r.get(0))
            .unwrap()
    };
    for (daemon, tz) in [
        (json!("cron"), "../../../etc/passwd"),
        (
            json!("cron"),
            "UTC\n2026-01-01T00:00:00Z  INFO cc_listener: FORGED-LINE",
        ),
        (json!("cron\u{1b}[2J"), "UTC"),
        (json!("x".repeat(100)), "UTC"),
    ] {
        ws::send(&mut a, &hb(daemon, tz)).await;
    }
    ws::send(&mut a, &hb(Value::Null, "Europe/Berlin")).await;
    let agent = l.wait_for(T, |l| {
        l.agent_entry("ch.test")
            .filter(|a| a["cronHost"]["timeZone"] == "Europe/Berlin")
    });
    assert_eq!(agent["cronHost"]["daemon"], Value::Null, "{agent}");
    assert!(
        agent["cronWarning"]
            .as_str()
            .is_some_and(|w| w.starts_with("no cron daemon is running on this host")),
        "{agent}"
    );
    let metrics = l.get("/metrics").body;
    assert!(
        metrics.contains("croncommander_agents_without_cron_daemon 1\n"),
        "{metrics}"
    );
    let log = l.log();
    assert!(
        !log.contains("FORGED-LINE"),
        "a peer's text reached the log"
    );
    assert!(!log.contains("passwd"), "a peer's path reached the log");

    // Only the valid one was written.
    assert_eq!(writes(), 1, "an invalid cronHost was stored");

    // The same one again and again: not written again.
    for _ in 0..200 {
        ws::send(&mut a, &hb(Value::Null, "Europe/Berlin")).await;
    }
    // Alternating, each a change: at most one write a second.
    let started = Instant::now();
    for i in 0..4 {
        let daemon = if i % 2 == 0 {
            json!("cron")
        } else {
            Value::Null
        };
        ws::send(&mut a, &hb(daemon, "Europe/Berlin")).await;
    }
    ws::send(&mut a, &hb(json!("crond"), "Europe/Berlin")).await;
    l.wait_for(Duration::from_secs(30), |l| {
        l.agent_entry("ch.test")
            .filter(|a| a["cronHost"]["daemon"] == "crond")
    });
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(writes(), 6, "one, 200 copies of it, then 5 changes");
    assert!(secs >= 4.0, "5 changes written in {secs:.1} s");
    let agent = l.agent_entry("ch.test").unwrap();
    assert!(agent["cronWarning"].is_null(), "{agent}");
    assert!(
        l.get("/metrics")
            .body
            .contains("croncommander_agents_without_cron_daemon 0\n")
    );
}
