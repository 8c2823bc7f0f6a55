//! The audit log against the real listener: every route in the table is
//! served and every state-changing one writes a row; a row names the
//! operator, source, route template, target, ids and outcome, and goes to
//! the log as a JSON line; `ccctl audit --verify` passes on an untouched
//! log and names the first bad row after one is edited or deleted — with
//! `sqlite3` on SQLite, with `psql` on PostgreSQL, where two listeners
//! appending at once still make one chain.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use cc_testkit::TempDir;
use cc_testkit::http::{self, console_login};
use cc_testkit::listener::{ListenerProcess, TOKEN};
use cc_testkit::ws;
use serde_json::{Value, json};

use common::bin;

/// One request, read for at most two seconds (an event stream never
/// ends): its status and what came of its answer.
fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: &str,
    body: &str,
    form: bool,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let kind = if form {
        "application/x-www-form-urlencoded"
    } else {
        "application/json"
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Type: {kind}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn audit(l: &ListenerProcess) -> Vec<Value> {
    let r = l.request_as("GET", "/api/v1/audit?limit=10000", TOKEN, None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json().as_array().unwrap().clone()
}

fn last_seq(l: &ListenerProcess) -> i64 {
    audit(l).last().map_or(0, |r| r["seq"].as_i64().unwrap())
}

fn operators(db: &str, args: &[&str]) -> Output {
    std::process::Command::new(bin())
        .arg("operators")
        .args(args)
        .args(["--db", db])
        .output()
        .unwrap()
}

/// Every (method, route) of `api::ROUTES` is served (no "no such route",
/// no 405), and every one that is not a GET writes a row naming it —
/// whatever it answered. With `api::tests::every_route_is_in_the_table`
/// (the routers' sources against the table), a new route without an
/// entry, or without its row, fails the suite.
#[tokio::test(flavor = "multi_thread")]
async fn every_route_in_the_table_is_served_and_every_write_is_a_row() {
    let dir = TempDir::new("audit-routes");
    let l = ListenerProcess::start(bin(), dir.path(), "");
    let _agent = ws::registered(&l, "web-1").await;
    let cookie = console_login(l.admin_addr, TOKEN);
    for (method, template, _) in cc_listener::api::ROUTES {
        let path = template
            .replace("{hostname}", "web-1")
            .replace("{host}", "web-1")
            .replace("{name}", "no-such-name")
            .replace("{job_id}", "no-such-job")
            .replace("{run_id}", "no-such-run")
            .replace("{id}", "no-such-id");
        assert!(
            !path.contains('{'),
            "a parameter this test does not fill: {template}"
        );
        let before = last_seq(&l);
        let console = template.starts_with("/ui");
        let auth = if console {
            format!("Cookie: {cookie}\r\n")
        } else {
            format!("Authorization: Bearer {TOKEN}\r\n")
        };
        let body = if console { "" } else { "{}" };
        let (status, answer) = send(l.admin_addr, method, &path, &auth, body, console);
        assert!(
            status != 0 && status != 405,
            "{method} {template}: {answer}"
        );
        assert!(
            !answer.contains("no such route"),
            "{method} {template}: {answer}"
        );
        let rows: Vec<Value> = audit(&l)
            .into_iter()
            .filter(|r| r["seq"].as_i64().unwrap() > before)
            .collect();
        let action = format!("{method} {template}");
        if *method == "GET" {
            assert!(
                rows.iter().all(|r| r["action"] != action.as_str()),
                "a read is no row: {rows:?}"
            );
        } else {
            assert!(
                rows.iter()
                    .any(|r| r["action"] == action.as_str() && r["outcome"] == status),
                "{action} answered {status} and wrote no row: {rows:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_names_who_from_where_what_on_what_with_which_ids_and_goes_to_the_log() {
    let dir = TempDir::new("audit-row");
    let l = ListenerProcess::start(bin(), dir.path(), "");
    let _agent = ws::registered(&l, "web-1").await;
    let db = dir
        .path()
        .join("listener.db")
        .to_string_lossy()
        .into_owned();
    let out = operators(&db, &["add", "olga", "--role", "operator"]);
    assert!(out.status.success(), "{out:?}");
    let olga = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    l.wait_for(Duration::from_secs(5), |l| {
        (l.request_as("GET", "/api/v1/agents", &olga, None).status == 200).then_some(())
    });

    let job = l.request_as(
        "POST",
        "/api/v1/agents/web-1/jobs",
        &olga,
        Some(&json!({"command": "/bin/true"})),
    );
    assert_eq!(job.status, 202, "{}", job.body);
    let job_id = job.json()["jobId"].as_str().unwrap().to_owned();
    let run = l.request_as(
        "POST",
        "/api/v1/runs",
        &olga,
        Some(&json!({"hosts": ["web-1"], "command": "/bin/true"})),
    );
    assert_eq!(run.status, 202, "{}", run.body);
    let run_id = run.json()["runId"].as_str().unwrap().to_owned();
    assert_eq!(
        http::request(
            l.admin_addr,
            "GET",
            "/api/v1/agents",
            Some("wrong-token-wrong-token"),
            None
        )
        .status,
        401
    );

    let rows = audit(&l);
    let job_row = rows
        .iter()
        .find(|r| r["ids"] == json!([job_id]))
        .unwrap_or_else(|| panic!("{rows:#?}"));
    assert_eq!(job_row["operator"], "olga");
    assert!(
        job_row["source"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{job_row}"
    );
    assert_eq!(job_row["action"], "POST /api/v1/agents/{hostname}/jobs");
    assert_eq!(job_row["target"], "web-1");
    assert_eq!(job_row["outcome"], 202);
    let run_row = rows.iter().find(|r| r["ids"] == json!([run_id])).unwrap();
    assert_eq!(
        (run_row["action"].as_str(), run_row["operator"].as_str()),
        (Some("POST /api/v1/runs"), Some("olga"))
    );
    let refused = rows.iter().find(|r| r["outcome"] == 401).unwrap();
    assert_eq!(
        (refused["operator"].as_str(), refused["action"].as_str()),
        (Some("-"), Some("GET /api/v1/agents"))
    );
    // Never a secret.
    let text = serde_json::to_string(&rows).unwrap();
    assert!(
        !text.contains(&olga) && !text.contains(TOKEN) && !text.contains("wrong-token"),
        "{text}"
    );

    // Jobs and runs record who submitted them.
    let c = rusqlite::Connection::open(&db).unwrap();
    let submitters: Vec<Option<String>> = c
        .prepare("SELECT submitter FROM jobs UNION ALL SELECT submitter FROM runs")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(submitters.len(), 3);
    assert!(
        submitters.iter().all(|s| s.as_deref() == Some("olga")),
        "{submitters:?}"
    );
    let shown = l
        .request_as("GET", &format!("/api/v1/jobs/{job_id}"), TOKEN, None)
        .json();
    assert_eq!(shown["submitter"], "olga", "{shown}");
    let shown = l
        .request_as("GET", &format!("/api/v1/runs/{run_id}"), TOKEN, None)
        .json();
    assert_eq!(shown["submitter"], "olga", "{shown}");

    // The same rows, as JSON lines for a SIEM.
    let log = l.wait_for(Duration::from_secs(5), |l| {
        let log = l.log();
        log.contains(&format!("\"ids\":[\"{run_id}\"]"))
            .then_some(log)
    });
    let line = log
        .lines()
        .find(|l| l.contains(&format!("\"ids\":[\"{job_id}\"]")))
        .unwrap();
    assert!(line.contains(" audit: {"), "{line}");
    let json: Value = serde_json::from_str(&line[line.find('{').unwrap()..]).unwrap();
    assert_eq!(json["hash"], job_row["hash"]);
    assert_eq!(json["operator"], "olga");
}

/// Rows of several kinds: writes by the admin, a refusal, a login.
fn some_rows(l: &ListenerProcess) {
    for i in 0..3 {
        let r = l.request_as(
            "POST",
            "/api/v1/keys",
            TOKEN,
            Some(&json!({"name": format!("k{i}")})),
        );
        assert_eq!(r.status, 201, "{}", r.body);
    }
    assert_eq!(
        http::request(l.admin_addr, "GET", "/api/v1/agents", None, None).status,
        401
    );
    console_login(l.admin_addr, TOKEN);
}

/// `ccctl audit --verify`: (exit code, stdout).
fn verify(l: &ListenerProcess, dir: &Path) -> (i32, String) {
    let out = l.ccctl(dir, &["audit", "--verify"]);
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_names_the_row_edited_or_deleted_with_sqlite3() {
    let dir = TempDir::new("audit-sqlite");
    let l = ListenerProcess::start(bin(), dir.path(), "");
    some_rows(&l);
    let (code, out) = verify(&l, dir.path());
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("ok: the audit log's 5 rows"), "{out}");
    let listed =
        String::from_utf8(l.ccctl(dir.path(), &["audit", "--operator", "-"]).stdout).unwrap();
    assert!(
        listed.contains("GET /api/v1/agents") && !listed.contains("POST /api/v1/keys"),
        "{listed}"
    );

    let db = dir.path().join("listener.db");
    let sqlite3 = |sql: &str| {
        let out = std::process::Command::new("sqlite3")
            .arg(&db)
            .arg(sql)
            .output()
            .expect("sqlite3");
        assert!(out.status.success(), "{out:?}");
    };
    sqlite3("UPDATE audit SET target = 'k9' WHERE seq = 2");
    let (code, out) = verify(&l, dir.path());
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with("FAIL: audit row 2: its contents do not match its hash"),
        "{out}"
    );
    sqlite3("UPDATE audit SET target = 'k1' WHERE seq = 2");
    assert_eq!(verify(&l, dir.path()).0, 0);
    sqlite3("DELETE FROM audit WHERE seq = 3");
    let (code, out) = verify(&l, dir.path());
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with("FAIL: audit row 3: row 3 is missing"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_names_the_row_edited_or_deleted_on_postgresql_where_two_listeners_share_one_chain()
{
    let Some(cluster) = cc_testkit::pg::Cluster::start() else {
        return;
    };
    let url = cluster.create_db("cc");
    let (d1, d2) = (TempDir::new("audit-pg-1"), TempDir::new("audit-pg-2"));
    let l1 = ListenerProcess::start_shared(bin(), d1.path(), &url, "");
    let l2 = ListenerProcess::start_shared(bin(), d2.path(), &url, "");
    // Both append at once: one chain, every row in it.
    std::thread::scope(|s| {
        for l in [&l1, &l2] {
            for t in 0..4 {
                s.spawn(move || {
                    for i in 0..5 {
                        let name = format!("k-{}-{t}-{i}", l.admin_addr.port());
                        let r = l.request_as(
                            "POST",
                            "/api/v1/keys",
                            TOKEN,
                            Some(&json!({"name": name})),
                        );
                        assert_eq!(r.status, 201, "{}", r.body);
                    }
                });
            }
        }
    });
    let (code, out) = verify(&l1, d1.path());
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("ok: the audit log's 40 rows"), "{out}");

    cluster.psql("cc", "UPDATE audit SET operator = 'nobody' WHERE seq = 7");
    let (code, out) = verify(&l2, d2.path());
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with("FAIL: audit row 7: its contents do not match its hash"),
        "{out}"
    );
    cluster.psql("cc", "UPDATE audit SET operator = 'admin' WHERE seq = 7");
    assert_eq!(verify(&l2, d2.path()).0, 0);
    cluster.psql("cc", "DELETE FROM audit WHERE seq = 12");
    let (code, out) = verify(&l1, d1.path());
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with("FAIL: audit row 12: row 12 is missing"),
        "{out}"
    );
}
