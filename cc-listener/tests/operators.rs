//! Named operators against the real listener: a viewer's writes are
//! refused (403), change nothing and are audited; an expired token is
//! refused; a revoked operator's API access, console session and open
//! event stream end within a second; operators are managed by
//! `cc-listener operators`, the API and `ccctl operators`, admins only.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use cc_testkit::TempDir;
use cc_testkit::http::{console, console_login};
use cc_testkit::listener::{ListenerProcess, TOKEN};
use cc_testkit::ws;
use serde_json::{Value, json};

use common::bin;

/// `cc-listener operators ARGS --db` the listener's database.
fn operators(dir: &Path, args: &[&str]) -> Output {
    std::process::Command::new(bin())
        .arg("operators")
        .args(args)
        .arg("--db")
        .arg(dir.join("listener.db"))
        .output()
        .unwrap()
}

/// A new operator made by the real CLI; returned once the listener
/// accepts its token (its copy is reloaded every 250 ms).
fn add_operator(l: &ListenerProcess, dir: &Path, name: &str, role: &str, hosts: &str) -> String {
    let out = operators(dir, &["add", name, "--role", role, "--hosts", hosts]);
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(
        token.starts_with("cco_"),
        "only the token on stdout: {token:?}"
    );
    l.wait_for(Duration::from_secs(5), |l| {
        (l.request_as("GET", "/api/v1/agents", &token, None).status == 200).then_some(())
    });
    token
}

/// The audit log's newest rows, read by the admin.
fn audit(l: &ListenerProcess) -> Vec<Value> {
    let r = l.request_as("GET", "/api/v1/audit?limit=1000", TOKEN, None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json().as_array().unwrap().clone()
}

fn jobs_in_db(dir: &Path) -> i64 {
    let c = rusqlite::Connection::open(dir.join("listener.db")).unwrap();
    c.query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_viewers_writes_are_refused_change_nothing_and_are_audited() {
    let dir = TempDir::new("ops-viewer");
    let l = ListenerProcess::start(bin(), dir.path(), "");
    let _agent = ws::registered(&l, "web-1").await;
    let viewer = add_operator(&l, dir.path(), "vera", "viewer", "*");

    // Reads are hers.
    let agents = l.request_as("GET", "/api/v1/agents", &viewer, None);
    assert_eq!(agents.status, 200, "{}", agents.body);
    // Writes are not, whatever they are.
    let writes: [(&str, &str, Value); 6] = [
        (
            "POST",
            "/api/v1/agents/web-1/jobs",
            json!({"command": "/bin/true"}),
        ),
        (
            "PUT",
            "/api/v1/agents/web-1/cron",
            json!([{"id": "n", "schedule": "* * * * *", "command": "/bin/true"}]),
        ),
        (
            "POST",
            "/api/v1/runs",
            json!({"hosts": ["web-1"], "command": "/bin/true"}),
        ),
        ("POST", "/api/v1/keys", json!({"name": "sneaky"})),
        ("DELETE", "/api/v1/keys/web-1", json!(null)),
        (
            "POST",
            "/api/v1/operators",
            json!({"name": "mallory", "role": "admin"}),
        ),
    ];
    for (method, path, body) in &writes {
        let r = l.request_as(method, path, &viewer, Some(body));
        assert_eq!(r.status, 403, "{method} {path}: {}", r.body);
        assert!(r.body.contains("your role (viewer)"), "{}", r.body);
    }
    // Nothing changed: no job, no cron entry, the key live, no operator.
    assert_eq!(jobs_in_db(dir.path()), 0);
    let cron = l.request_as("GET", "/api/v1/agents/web-1/cron", TOKEN, None);
    assert_eq!(
        cron.json().as_array().map_or(0, Vec::len),
        0,
        "{}",
        cron.body
    );
    let keys = l.request_as("GET", "/api/v1/keys", TOKEN, None).json();
    assert_eq!(keys.as_array().unwrap().len(), 1);
    assert_eq!(keys[0]["revoked"], false);
    let ops = l.request_as("GET", "/api/v1/operators", TOKEN, None).json();
    assert_eq!(ops.as_array().unwrap().len(), 1, "{ops}");
    // One audit row for each refusal, naming her.
    let rows = audit(&l);
    let refused: Vec<&Value> = rows
        .iter()
        .filter(|r| r["operator"] == "vera" && r["outcome"] == 403)
        .collect();
    assert_eq!(refused.len(), writes.len(), "{rows:#?}");
    assert!(refused.iter().any(|r| r["action"] == "POST /api/v1/agents/{hostname}/jobs" && r["target"] == "web-1"));

    // The console's run form is refused her too.
    let cookie = console_login(l.admin_addr, &viewer);
    let page = console(l.admin_addr, "GET", "/ui/", "", Some(&cookie));
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.contains("vera · viewer"),
        "the header names her: {page}"
    );
    // With the session's own CSRF token (from the logout form): refused for
    // her role, not as a forged form.
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|v| v.split('"').next())
        .unwrap();
    let body = format!("csrf={csrf}&hosts=web-1&command=%2Fbin%2Ftrue");
    let form = console(l.admin_addr, "POST", "/ui/new", &body, Some(&cookie));
    assert!(form.starts_with("HTTP/1.1 403"), "{form}");
    assert!(form.contains("your role (viewer)"), "{form}");
    assert_eq!(jobs_in_db(dir.path()), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_token_is_refused() {
    let dir = TempDir::new("ops-expired");
    let l = ListenerProcess::start(bin(), dir.path(), "");
    let out = operators(
        dir.path(),
        &["add", "eve", "--role", "operator", "--expires", "1"],
    );
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    l.wait_for(Duration::from_secs(5), |l| {
        (l.request_as("GET", "/api/v1/agents", &token, None).status == 200).then_some(())
    });
    // A day later, as far as the listener can tell.
    let c = rusqlite::Connection::open(dir.path().join("listener.db")).unwrap();
    c.execute(
        "UPDATE operators SET expires_ms = expires_ms - 86400000 - 1000 WHERE name = 'eve'",
        [],
    )
    .unwrap();
    let started = Instant::now();
    l.wait_for(Duration::from_secs(5), |l| {
        (l.request_as("GET", "/api/v1/agents", &token, None).status == 401).then_some(())
    });
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let listed = String::from_utf8(operators(dir.path(), &["list"]).stdout).unwrap();
    assert!(listed.contains("\texpired"), "{listed}");
    // Nor does it log in to the console.
    let login = console(
        l.admin_addr,
        "POST",
        "/ui/login",
        &format!("token={token}"),
        None,
    );
    assert!(login.starts_with("HTTP/1.1 401"), "{login}");
    assert!(
        audit(&l).iter().any(|r| r["action"] == "POST /ui/login"
            && r["outcome"] == 401
            && r["operator"] == "-")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_operators_api_access_and_console_session_end_within_a_second() {
    let dir = TempDir::new("ops-revoked");
    let l = ListenerProcess::start(bin(), dir.path(), "");
    let token = add_operator(&l, dir.path(), "otto", "operator", "*");
    let cookie = console_login(l.admin_addr, &token);
    let page = console(l.admin_addr, "GET", "/ui/", "", Some(&cookie));
    assert!(page.contains("otto · operator"), "{page}");

    // Revoked by the CLI, another process: this listener learns it from
    // the database.
    let out = operators(dir.path(), &["revoke", "otto"]);
    assert!(out.status.success(), "{out:?}");
    let revoked = Instant::now();
    let (mut api_gone, mut console_gone) = (None, None);
    while revoked.elapsed() < Duration::from_secs(3)
        && (api_gone.is_none() || console_gone.is_none())
    {
        if api_gone.is_none() && l.request_as("GET", "/api/v1/agents", &token, None).status == 401 {
            api_gone = Some(revoked.elapsed());
        }
        let page = console(l.admin_addr, "GET", "/ui/", "", Some(&cookie));
        if console_gone.is_none() && page.contains("location: /ui/login") {
            console_gone = Some(revoked.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = Duration::from_secs(1);
    assert!(
        api_gone.is_some_and(|t| t < second),
        "API access: {api_gone:?}"
    );
    assert!(
        console_gone.is_some_and(|t| t < second),
        "console: {console_gone:?}"
    );
    // Gone for good: the session was dropped, not only refused once.
    let page = console(l.admin_addr, "GET", "/ui/runs", "", Some(&cookie));
    assert!(page.contains("location: /ui/login"), "{page}");
}

#[tokio::test(flavor = "multi_thread")]
async fn admins_manage_operators_through_the_api_and_ccctl_others_may_not() {
    let dir = TempDir::new("ops-api");
    let l = ListenerProcess::start(bin(), dir.path(), "");
    let made = l.request_as(
        "POST",
        "/api/v1/operators",
        TOKEN,
        Some(&json!({"name": "wendy", "role": "operator", "hosts": "tag:web", "expiresDays": 30})),
    );
    assert_eq!(made.status, 201, "{}", made.body);
    let wendy = made.json()["token"].as_str().unwrap().to_owned();
    // Usable at once, and only for what an operator may do.
    assert_eq!(
        l.request_as("GET", "/api/v1/agents", &wendy, None).status,
        200
    );
    let no = l.request_as(
        "POST",
        "/api/v1/operators",
        &wendy,
        Some(&json!({"name": "x", "role": "viewer"})),
    );
    assert_eq!(no.status, 403, "{}", no.body);
    assert_eq!(
        l.request_as("GET", "/api/v1/audit", &wendy, None).status,
        403
    );
    assert_eq!(
        l.request_as("GET", "/api/v1/operators", &wendy, None)
            .status,
        403
    );
    // Bad input is named; an admin reaches every host; names are not reused.
    for (body, field) in [
        (json!({"name": "a b", "role": "viewer"}), "name"),
        (json!({"name": "admin", "role": "viewer"}), "name"),
        (json!({"name": "r", "role": "root"}), "role"),
        (
            json!({"name": "s", "role": "viewer", "hosts": "web"}),
            "hosts",
        ),
        (
            json!({"name": "t", "role": "admin", "hosts": "tag:web"}),
            "hosts",
        ),
        (
            json!({"name": "u", "role": "viewer", "expiresDays": 0}),
            "expiresDays",
        ),
    ] {
        let r = l.request_as("POST", "/api/v1/operators", TOKEN, Some(&body));
        assert_eq!(
            (r.status, r.json()["field"].as_str()),
            (400, Some(field)),
            "{body}: {}",
            r.body
        );
    }
    let again = l.request_as(
        "POST",
        "/api/v1/operators",
        TOKEN,
        Some(&json!({"name": "wendy", "role": "viewer"})),
    );
    assert_eq!(again.status, 409);
    // Revoked through the API: refused at once.
    assert_eq!(
        l.request_as("DELETE", "/api/v1/operators/wendy", TOKEN, None)
            .status,
        204
    );
    assert_eq!(
        l.request_as("GET", "/api/v1/agents", &wendy, None).status,
        401
    );
    assert_eq!(
        l.request_as("DELETE", "/api/v1/operators/wendy", TOKEN, None)
            .status,
        404
    );

    // ccctl, as an admin.
    let ccctl = |args: &[&str]| l.ccctl(dir.path(), args);
    let add = ccctl(&[
        "operators",
        "add",
        "carl",
        "--role",
        "viewer",
        "--hosts",
        "host:web-1",
    ]);
    assert!(add.status.success(), "{add:?}");
    let carl = String::from_utf8(add.stdout).unwrap().trim().to_owned();
    assert!(carl.starts_with("cco_"), "{carl}");
    assert_eq!(
        l.request_as("GET", "/api/v1/agents", &carl, None).status,
        200
    );
    let list = String::from_utf8(ccctl(&["operators", "list"]).stdout).unwrap();
    assert!(
        list.contains("carl") && list.contains("host:web-1") && list.contains("revoked"),
        "{list}"
    );
    assert!(!list.contains("cco_"), "no token listed: {list}");
    assert!(ccctl(&["operators", "revoke", "carl"]).status.success());
    assert_eq!(
        l.request_as("GET", "/api/v1/agents", &carl, None).status,
        401
    );
}

/// Two listeners on one PostgreSQL database: an operator revoked through
/// one is refused by the other within a second (its copy of the
/// operators is read again every 250 ms).
#[tokio::test(flavor = "multi_thread")]
async fn revoked_through_one_listener_refused_by_another_on_postgresql_within_a_second() {
    let Some(cluster) = cc_testkit::pg::Cluster::start() else {
        return;
    };
    let url = cluster.create_db("cc");
    let (d1, d2) = (TempDir::new("ops-pg-1"), TempDir::new("ops-pg-2"));
    let l1 = ListenerProcess::start_shared(bin(), d1.path(), &url, "");
    let l2 = ListenerProcess::start_shared(bin(), d2.path(), &url, "");
    let made = l1.request_as(
        "POST",
        "/api/v1/operators",
        TOKEN,
        Some(&json!({"name": "pat", "role": "viewer"})),
    );
    assert_eq!(made.status, 201, "{}", made.body);
    let pat = made.json()["token"].as_str().unwrap().to_owned();
    l2.wait_for(Duration::from_secs(5), |l| {
        (l.request_as("GET", "/api/v1/agents", &pat, None).status == 200).then_some(())
    });
    let cookie = console_login(l2.admin_addr, &pat);
    assert_eq!(
        l1.request_as("DELETE", "/api/v1/operators/pat", TOKEN, None)
            .status,
        204
    );
    let revoked = Instant::now();
    l2.wait_for(Duration::from_secs(5), |l| {
        let page = console(l.admin_addr, "GET", "/ui/", "", Some(&cookie));
        (l.request_as("GET", "/api/v1/agents", &pat, None).status == 401
            && page.contains("location: /ui/login"))
        .then_some(())
    });
    assert!(
        revoked.elapsed() < Duration::from_secs(1),
        "{:?}",
        revoked.elapsed()
    );
}
