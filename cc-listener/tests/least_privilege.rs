//! Least privilege against the real `cc-listener`: an operator made with
//! `cc-listener operators add webop --role operator --hosts tag:web` acts
//! and reads only on the hosts whose bound tags include `web`. It cannot
//! run on a db host by name, by tag or through a run mixing both (403,
//! nothing queued), nor set its cron; it cannot read a db host's agent
//! row, reports, job, run, cron list or events, through the API or the
//! console; a viewer acts nowhere. Its open event stream ends within 1 s
//! of its revocation.
//!
//! Test agents: web1/web2.test (tag web), db1/db2.test and web1db.test
//! (tag db: named like a web host, it sorts between them, so a page or a
//! range of hostnames holds it), their tags bound by their keys' first
//! registration.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cc_testkit::TempDir;
use cc_testkit::http::{Response, console, console_login};
use cc_testkit::listener::ListenerProcess;
use cc_testkit::sse::Stream;
use cc_testkit::ws;
use serde_json::{Value, json};

use common::bin;

const T: Duration = Duration::from_secs(10);

/// A listener with two web and three db hosts answering every job after
/// 20 ms, and its database's path.
async fn fleet(dir: &TempDir) -> (ListenerProcess, PathBuf) {
    let l = ListenerProcess::start(bin(), dir.path(), "");
    for (host, tag) in [
        ("web1.test", "web"),
        ("web2.test", "web"),
        ("db1.test", "db"),
        ("db2.test", "db"),
        ("web1db.test", "db"),
    ] {
        ws::answering_agent(&l, host, &[tag], Duration::from_millis(20), |_| 0).await;
    }
    l.wait_connected_count(5);
    (l, dir.path().join("listener.db"))
}

/// `cc-listener operators add NAME --role ROLE --hosts HOSTS` on `l`'s
/// database: the token it prints, once `l` accepts it (it reloads its copy
/// of the operators every 250 ms).
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
        "operators add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    l.wait_for(T, |l| {
        (call(l, &token, "GET", "/api/v1/agents", None).status != 401).then_some(())
    });
    token
}

fn call(
    l: &ListenerProcess,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Response {
    l.request_as(method, path, token, body)
}

/// Jobs and runs in the store, for the db hosts and in all.
fn queued(db: &Path) -> (i64, i64, i64) {
    let c = rusqlite::Connection::open(db).unwrap();
    let n = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    (
        n("SELECT count(*) FROM jobs WHERE hostname IN ('db1.test', 'db2.test', 'web1db.test')"),
        n("SELECT count(*) FROM jobs"),
        n("SELECT count(*) FROM runs"),
    )
}

/// A run by name, by tag, mixing a web host with the db tag, and root
/// work an operator signed (the statements name the hosts), posted with
/// `token`: each refused whole, naming how many hosts are outside. How
/// many were posted.
fn runs_reaching_a_db_host_are_refused_whole(l: &ListenerProcess, token: &str) -> usize {
    let signed = |host: &str, id: &str| {
        use cc_testkit::signing::{exec_statement, operator, sign_exec};
        let job = json!({"jobId": id, "command": "/usr/bin/id", "timeout": 30});
        json!(sign_exec(&exec_statement(&job, host), &operator().1))
    };
    let cases = [
        (
            json!({"hosts": ["db1.test"], "command": "/bin/true"}),
            "1 of the 1 host this run reaches is",
        ),
        (
            json!({"tags": ["db"], "command": "/bin/true"}),
            "3 of the 3 hosts this run reaches are",
        ),
        (
            json!({"hosts": ["web1.test"], "tags": ["db"], "command": "/bin/true"}),
            "3 of the 4 hosts this run reaches are",
        ),
        (
            json!({"hosts": ["web1.test", "DB2.test"], "command": "/bin/true"}),
            "1 of the 2 hosts this run reaches is",
        ),
        (
            json!({"signed": [signed("web1.test", "signed-1"), signed("db1.test", "signed-2")]}),
            "1 of the 2 hosts this run reaches is",
        ),
    ];
    for (body, says) in &cases {
        let r = call(l, token, "POST", "/api/v1/runs", Some(body));
        assert_eq!(r.status, 403, "{body}: {}", r.body);
        assert!(r.body.contains(says), "{body}: {}", r.body);
    }
    cases.len()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_scoped_to_web_cannot_act_on_a_db_host() {
    let dir = TempDir::new("lp-act");
    let (l, db) = fleet(&dir).await;
    let web = operator(&l, &db, "webop", "operator", "tag:web");
    let viewer = operator(&l, &db, "look", "viewer", "*");
    let before = queued(&db);

    // By name, one job: 403, naming the selector.
    let r = call(
        &l,
        &web,
        "POST",
        "/api/v1/agents/db1.test/jobs",
        Some(&json!({"command": "/bin/true"})),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("outside your hosts selector"), "{}", r.body);
    let runs = runs_reaching_a_db_host_are_refused_whole(&l, &web);
    // Its cron: 403; the list stays unset.
    let entry = json!([{"id": "nightly", "schedule": "0 3 * * *", "command": "/bin/true"}]);
    let r = call(
        &l,
        &web,
        "PUT",
        "/api/v1/agents/db1.test/cron",
        Some(&entry),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(l.get("/api/v1/agents/db1.test/cron").json(), json!([]));
    // A viewer acts nowhere, even where its selector reaches.
    let r = call(
        &l,
        &viewer,
        "POST",
        "/api/v1/agents/web1.test/jobs",
        Some(&json!({"command": "/bin/true"})),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let r = call(
        &l,
        &viewer,
        "POST",
        "/api/v1/runs",
        Some(&json!({"tags": ["web"], "command": "/bin/true"})),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let r = call(
        &l,
        &viewer,
        "PUT",
        "/api/v1/agents/web1.test/cron",
        Some(&entry),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    // Nothing was queued by any of it, and each refusal is one audit row.
    assert_eq!(queued(&db), before, "(db jobs, jobs, runs) changed");
    let rows = l.get("/api/v1/audit?operator=webop&limit=1000").json();
    let refused = |action: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["action"] == action && r["outcome"] == 403)
            .count()
    };
    assert_eq!(refused("POST /api/v1/agents/{hostname}/jobs"), 1, "{rows}");
    assert_eq!(refused("POST /api/v1/runs"), runs, "{rows}");
    assert_eq!(refused("PUT /api/v1/agents/{hostname}/cron"), 1, "{rows}");

    // On its own hosts it acts: by tag it reaches exactly the web hosts.
    let r = call(
        &l,
        &web,
        "POST",
        "/api/v1/runs",
        Some(&json!({"tags": ["web"], "command": "/bin/true"})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(hostnames(&r.json()["jobs"]), ["web1.test", "web2.test"]);
    let r = call(
        &l,
        &web,
        "POST",
        "/api/v1/agents/web1.test/jobs",
        Some(&json!({"command": "/bin/true"})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let r = call(
        &l,
        &web,
        "PUT",
        "/api/v1/agents/web1.test/cron",
        Some(&entry),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(queued(&db).0, before.0, "still no db job");
}

/// What the admin ran for the read checks: a job on db1 and on web1, a
/// run over both tags, a run over web only, all settled.
struct Work {
    db_job: String,
    web_job: String,
    mixed_run: String,
    web_run: String,
}

fn admin_work(l: &ListenerProcess) -> Work {
    let db_job = l
        .post_job("db1.test", &json!({"command": "/bin/true"}))
        .to_string();
    let web_job = l
        .post_job("web1.test", &json!({"command": "/bin/true"}))
        .to_string();
    let (mixed_run, _) =
        l.post_run(&json!({"tags": ["db"], "hosts": ["web2.test"], "command": "/bin/true"}));
    let (web_run, _) = l.post_run(&json!({"tags": ["web"], "command": "/bin/true"}));
    l.wait_for(T, |l| {
        let done = |id: &str| l.get(&format!("/api/v1/jobs/{id}")).json()["status"] == "done";
        let settled = |run: &str| {
            let v = l.get(&format!("/api/v1/runs/{run}")).json();
            v["counts"]["done"] == v["hosts"].as_array().unwrap().len()
        };
        (done(&db_job) && done(&web_job) && settled(&mixed_run) && settled(&web_run)).then_some(())
    });
    Work {
        db_job,
        web_job,
        mixed_run,
        web_run,
    }
}

fn hostnames(list: &Value) -> Vec<String> {
    let mut v: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["hostname"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v.dedup();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_scoped_to_web_cannot_read_a_db_host() {
    let dir = TempDir::new("lp-read");
    let (l, db) = fleet(&dir).await;
    let web = operator(&l, &db, "webop", "viewer", "tag:web");
    // Its stream, open before anything runs, from the start.
    let mut stream = Stream::open(&l, "?since=0", None, Some(&web));
    assert_eq!(stream.status, 200);
    let w = admin_work(&l);
    let get = |path: &str| call(&l, &web, "GET", path, None);

    assert_eq!(
        hostnames(&get("/api/v1/agents").json()),
        ["web1.test", "web2.test"]
    );
    assert_eq!(
        hostnames(&get("/api/v1/agents?limit=1").json()),
        ["web1.test"]
    );
    let r = get("/api/v1/agents?limit=1&after=web1.test");
    assert_eq!(hostnames(&r.json()), ["web2.test"]);
    assert_eq!(r.header("x-cc-next-after"), None, "no db host follows");
    assert_eq!(
        hostnames(&get("/api/v1/reports").json()),
        ["web1.test", "web2.test"]
    );
    // Page by page: each page holds one of its reports, never an empty
    // page where another host's report was.
    let mut before = String::new();
    let mut walked = Vec::new();
    loop {
        let r = get(&format!("/api/v1/reports?limit=1{before}"));
        let page = r.json();
        assert_eq!(page.as_array().unwrap().len(), 1, "{walked:?} then {page}");
        walked.push(page[0]["hostname"].as_str().unwrap().to_owned());
        match r.header("x-cc-next-before") {
            Some(b) => before = format!("&before={b}"),
            None => break,
        }
    }
    assert_eq!(
        walked.len(),
        4,
        "web1's job, web2's in the mixed run, both in the web run: {walked:?}"
    );
    assert!(
        walked
            .iter()
            .all(|h| h.starts_with("web") && !h.contains("db")),
        "{walked:?}"
    );
    assert_eq!(get("/api/v1/reports?hostname=db1.test").json(), json!([]));
    let r = get(&format!("/api/v1/reports?jobId={}", w.db_job));
    assert_eq!(r.json(), json!([]), "a db job's report by its id");
    // Another host's job, run and cron list: 404, as ones that do not exist.
    for path in [
        format!("/api/v1/jobs/{}", w.db_job),
        format!("/api/v1/runs/{}", w.mixed_run),
        "/api/v1/agents/db1.test/cron".to_owned(),
        "/api/v1/agents/db1.test/cron/nightly/runs".to_owned(),
    ] {
        let r = get(&path);
        assert_eq!(r.status, 404, "{path}: {}", r.body);
    }
    assert_eq!(
        get("/api/v1/agents/web1.test/cron/nightly/runs").status,
        200
    );
    assert_eq!(get(&format!("/api/v1/jobs/{}", w.web_job)).status, 200);
    assert_eq!(get(&format!("/api/v1/runs/{}", w.web_run)).status, 200);
    assert_eq!(get("/api/v1/agents/web1.test/cron").status, 200);

    // Events: every web job's came through, no db host's at all.
    let want_done = 1 + 1 + 2; // web1's job, the mixed run's web2, the web run
    let seen = stream.until(T, |got| {
        got.iter().filter(|e| e["status"] == "done").count() >= want_done
    });
    assert!(
        seen.iter().any(|e| e["jobId"] == w.web_job.as_str()),
        "{seen:?}"
    );
    let rest = stream.until(Duration::from_millis(600), |_| false);
    let all: Vec<Value> = seen.into_iter().chain(rest).collect();
    assert_eq!(
        hostnames(&Value::from(all.clone())),
        ["web1.test", "web2.test"],
        "{all:?}"
    );
    // Asking for a db host's, or the db job's, shows nothing either.
    for q in [
        format!("?since=0&job={}", w.db_job),
        "?since=0&host=db1.test".to_owned(),
    ] {
        let mut s = Stream::open(&l, &q, None, Some(&web));
        assert_eq!(
            s.until(Duration::from_millis(600), |_| false),
            Vec::<Value>::new(),
            "{q}"
        );
    }
    console_shows_only_web(&l, &web, &w);
}

/// The console as the web viewer: the fleet lists web hosts only; a db
/// host, its job and a run touching it are not found.
fn console_shows_only_web(l: &ListenerProcess, token: &str, w: &Work) {
    let cookie = console_login(l.admin_addr, token);
    let page = |path: &str| console(l.admin_addr, "GET", path, "", Some(&cookie));
    let fleet = page("/ui/");
    assert!(fleet.starts_with("HTTP/1.1 200"), "{fleet}");
    assert!(
        fleet.contains("web1.test") && !fleet.contains("db1.test") && !fleet.contains("web1db"),
        "{fleet}"
    );
    for path in [
        "/ui/hosts/db1.test".to_owned(),
        "/ui/hosts/db1.test/cron/nightly".to_owned(),
        format!("/ui/jobs/{}", w.db_job),
        format!("/ui/jobs/{}/json", w.db_job),
        format!("/ui/runs/{}", w.mixed_run),
        format!("/ui/runs/{}/json", w.mixed_run),
    ] {
        let p = page(&path);
        assert!(p.starts_with("HTTP/1.1 404"), "{path}: {p}");
    }
    assert!(page("/ui/hosts/web1.test").starts_with("HTTP/1.1 200"));
    assert!(page("/ui/hosts/web1.test/cron/nightly").starts_with("HTTP/1.1 200"));
    let runs = page("/ui/runs");
    assert!(
        runs.contains(&w.web_run) && !runs.contains(&w.mixed_run),
        "{runs}"
    );
    assert!(
        !runs.contains("db1.test") && !runs.contains("db2.test"),
        "{runs}"
    );
    // A viewer gets no form to run anything.
    assert!(page("/ui/new").starts_with("HTTP/1.1 403"));
}

/// The console's form as the web operator: a run reaching a db host is
/// refused with the API's 403 and queues nothing.
#[tokio::test(flavor = "multi_thread")]
async fn the_console_form_refuses_a_run_reaching_a_db_host() {
    let dir = TempDir::new("lp-form");
    let (l, db) = fleet(&dir).await;
    let web = operator(&l, &db, "webop", "operator", "tag:web");
    let cookie = console_login(l.admin_addr, &web);
    let form = console(l.admin_addr, "GET", "/ui/new", "", Some(&cookie));
    assert!(
        form.contains("tag:web"),
        "the form says what it reaches: {form}"
    );
    let csrf = form
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();
    let before = queued(&db);
    for targets in ["hosts=db1.test", "tags=db", "hosts=web1.test&tags=db"] {
        let body = format!("csrf={csrf}&{targets}&command=%2Fbin%2Ftrue");
        let r = console(l.admin_addr, "POST", "/ui/new", &body, Some(&cookie));
        assert!(r.starts_with("HTTP/1.1 403"), "{targets}: {r}");
        assert!(r.contains("outside your hosts selector"), "{targets}: {r}");
    }
    assert_eq!(queued(&db), before);
    let body = format!("csrf={csrf}&tags=web&command=%2Fbin%2Ftrue");
    let r = console(l.admin_addr, "POST", "/ui/new", &body, Some(&cookie));
    assert!(r.starts_with("HTTP/1.1 303"), "{r}");
}

/// Reads the raw stream `s` until the listener ends it: how long that took
/// from `from`, or `None` by `limit`.
fn ended_after(s: &mut TcpStream, from: Instant, limit: Duration) -> Option<Duration> {
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut buf = [0u8; 4096];
    while from.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return Some(from.elapsed()),
            // The chunked body's last chunk: the stream is over.
            Ok(n) if buf[..n].ends_with(b"0\r\n\r\n") => return Some(from.elapsed()),
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Some(from.elapsed()),
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_operators_event_stream_ends_within_a_second() {
    let dir = TempDir::new("lp-revoke");
    let (l, db) = fleet(&dir).await;
    let web = operator(&l, &db, "webop", "operator", "tag:web");
    let other = operator(&l, &db, "other", "operator", "tag:web");
    let open = |token: &str| {
        let mut s = TcpStream::connect(l.admin_addr).unwrap();
        let head = format!(
            "GET /api/v1/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n"
        );
        s.write_all(head.as_bytes()).unwrap();
        s
    };
    let (mut mine, mut theirs) = (open(&web), open(&other));
    // Both open and kept open while nothing happens.
    assert_eq!(
        ended_after(&mut mine, Instant::now(), Duration::from_millis(700)),
        None
    );
    let out = std::process::Command::new(bin())
        .args(["operators", "revoke", "webop", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let revoked = Instant::now();
    let took = ended_after(&mut mine, revoked, Duration::from_secs(3));
    let took = took.expect("the revoked operator's stream is still open after 3 s");
    assert!(took <= Duration::from_secs(1), "ended after {took:?}");
    assert_eq!(
        ended_after(&mut theirs, Instant::now(), Duration::from_millis(700)),
        None,
        "another operator's stream ended too"
    );
    assert_eq!(call(&l, &web, "GET", "/api/v1/agents", None).status, 401);
}
