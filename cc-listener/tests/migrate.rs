//! `cc-listener migrate`: a SQLite database copied into PostgreSQL, read
//! back through the store and used by a listener as if nothing happened.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

mod common;
mod pg_common;

use std::process::Command;

use cc_listener::store::{
    EventFilter, NewJob, NewRun, ReportLimits, ReportQuery, Store, StoreError,
};
use cc_proto::wire::{AgentInfo, CronEntry, ExecutionMode};
use cc_testkit::TempDir;

fn h(text: &str) -> cc_proto::Hostname {
    cc_proto::Hostname::parse(text).unwrap()
}

fn j(text: &str) -> cc_proto::JobId {
    cc_proto::JobId::parse(text).unwrap()
}

fn info(host: &str, root: bool) -> AgentInfo {
    AgentInfo {
        hostname: cc_proto::Hostname::parse(host).unwrap(),
        os: "linux".into(),
        arch: "amd64".into(),
        tags: vec![cc_proto::Tag::parse("db").unwrap()],
        execution_mode: ExecutionMode::User,
        is_root: root,
        job_window: Some(8),
        cron_host: Some(cc_proto::wire::CronHost {
            daemon: root.then(|| "cron".to_owned()),
            time_zone: Some("Europe/Berlin".into()),
        }),
    }
}

fn job(id: &str, host: &str) -> NewJob {
    NewJob {
        job_id: id.into(),
        hostname: host.into(),
        command: "/bin/echo".into(),
        args: vec!["hi".into()],
        timeout_secs: 30,
        created_ms: 1_000,
        expires_ms: i64::MAX,
        signed: None,
        submitter: None,
    }
}

/// A history with something in every table: keys (one revoked), two
/// agents (one root), a cron list, a run of three jobs with a batch, a
/// single job, reports of a job, a cron run and nothing (unmatched).
fn history(s: &Store) -> (String, String) {
    let keys = s
        .add_keys(&[("a", Some("a.test")), ("b", Some("b.test"))], 10)
        .unwrap();
    s.add_key("old", None, 11).unwrap();
    s.revoke_key("old", 12).unwrap();
    s.upsert_agent(&info("a.test", false), 20).unwrap();
    s.upsert_agent(&info("b.test", true), 21).unwrap();
    s.set_cron(
        "a.test",
        &[CronEntry {
            id: "tick".into(),
            schedule: "* * * * *".into(),
            command: "/bin/true".into(),
            ..Default::default()
        }],
        None,
        30,
    )
    .unwrap();
    let run = NewRun {
        run_id: "run-1".into(),
        command: "/bin/echo".into(),
        args: vec!["hi".into()],
        timeout_secs: 30,
        batch: Some(1),
        selector: r#"{"tags":["db"]}"#.into(),
        queue_ttl_ms: 60_000,
        created_ms: 40,
        submitter: None,
    };
    s.create_run(
        &run,
        &[
            job("r1", "a.test"),
            job("r2", "b.test"),
            job("r3", "a.test"),
        ],
    )
    .unwrap();
    s.create_job(&job("single", "b.test")).unwrap();
    s.take_for_host(&h("a.test"), Some(8), 50).unwrap();
    let limits = ReportLimits::default();
    let report = |job: &str, code: i32| {
        format!(
            r#"{{"jobId":"{job}","command":"/bin/echo hi","exitCode":{code},"stdout":"hi\n","stderr":"","startTime":"2026-11-30T10:00:00Z","durationMs":4,"executingUid":999,"executingUser":"cc-agent-user"}}"#
        )
    };
    s.store_report(
        &h("a.test"),
        &j("r1"),
        "id:r1",
        &report("r1", 0),
        60,
        limits,
    )
    .unwrap();
    s.store_report(
        &h("a.test"),
        &j("tick"),
        "id:t1",
        &report("tick", 3),
        61,
        limits,
    )
    .unwrap();
    s.store_report(
        &h("b.test"),
        &j("nojob"),
        "id:n1",
        &report("nojob", 1),
        62,
        limits,
    )
    .unwrap();
    (keys[0].clone(), keys[1].clone())
}

/// Everything an operator or agent can read back, in one comparable form.
fn snapshot(s: &Store) -> String {
    let mut out = String::new();
    for k in s.list_keys().unwrap() {
        out += &format!("key {k:?}\n");
    }
    for mut a in s.agents_between("", "~").unwrap() {
        (a.listener, a.lease_ms) = (None, None);
        out += &format!("agent {a:?}\n");
    }
    for host in ["a.test", "b.test"] {
        out += &format!("cron {host} {:?}\n", s.get_cron(host).unwrap());
        out += &format!("usage {host} {:?}\n", s.usage(host).unwrap());
    }
    for id in ["r1", "r2", "r3", "single"] {
        out += &format!("job {:?}\n", s.get_job(id).unwrap());
    }
    out += &format!("run {:?}\n", s.get_run("run-1").unwrap());
    for e in s.events(0, &EventFilter::default(), 1000).unwrap() {
        out += &format!("event {e:?}\n");
    }
    let q = ReportQuery {
        limit: 100,
        ..Default::default()
    };
    let page = s.report_page(&q).unwrap();
    let (high, low) = (page[0].0, page[page.len() - 1].0);
    for r in s.reports_between(&q, high, low).unwrap() {
        out += &format!("report {r:?}\n");
    }
    out += &format!("report ids {page:?}\n");
    out
}

fn migrate(from: &str, to: &str) -> std::process::Output {
    Command::new(common::bin())
        .args(["migrate", "--from", from, "--to", to])
        .output()
        .unwrap()
}

#[test]
fn a_sqlite_database_moves_to_postgres_whole_and_once() {
    let Some(cluster) = cc_testkit::pg::Cluster::start() else {
        return;
    };
    let dir = TempDir::new("migrate");
    let path = dir.path().join("listener.db");
    let src = Store::open(&path).unwrap();
    let (key_a, _) = history(&src);
    let before = snapshot(&src);
    assert!(before.contains("event") && before.contains("report ids"));
    drop(src);

    let url = cluster.create_db("fleet");
    let out = migrate(&format!("sqlite:{}", path.display()), &url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts = String::from_utf8_lossy(&out.stdout);
    for line in [
        "api_keys\t3",
        "agents\t2",
        "reports\t3",
        "jobs\t4",
        "runs\t1",
    ] {
        assert!(counts.lines().any(|l| l == line), "{line} in {counts}");
    }

    let pg = Store::open_postgres(&url).unwrap();
    assert_eq!(snapshot(&pg), before, "everything reads back the same");
    assert_eq!(
        pg.authenticate(&key_a)
            .unwrap()
            .unwrap()
            .hostname
            .as_deref(),
        Some("a.test")
    );
    // New rows continue after the copied ids: nothing collides.
    let last_report = pg.report_page(&ReportQuery {
        limit: 1,
        ..Default::default()
    });
    let last_report = last_report.unwrap()[0].0;
    let last_event = pg.last_event_id().unwrap();
    pg.create_job(&job("after", "b.test")).unwrap();
    pg.store_report(
        &h("b.test"),
        &j("after"),
        "id:after",
        "{}",
        70,
        ReportLimits::default(),
    )
    .unwrap();
    assert!(pg.last_event_id().unwrap() > last_event);
    let newest = pg
        .report_page(&ReportQuery {
            limit: 1,
            ..Default::default()
        })
        .unwrap()[0]
        .0;
    assert!(newest > last_report, "{newest} after {last_report}");
    pg.add_key("c", Some("c.test"), 80).unwrap();
    let e = pg.create_job(&job("r1", "a.test")).unwrap_err();
    assert_eq!(
        StoreError::classify(&e),
        cc_listener::store::ErrorKind::Conflict
    );
    let reports_now = pg.count_reports().unwrap();
    drop(pg);

    // Into a database that holds something: refused, and nothing written.
    let again = migrate(path.to_str().unwrap(), &url);
    assert!(!again.status.success());
    let why = String::from_utf8_lossy(&again.stderr);
    assert!(
        why.contains("already holds data") && why.contains("rows in api_keys"),
        "{why}"
    );
    let pg = Store::open_postgres(&url).unwrap();
    assert_eq!(pg.count_reports().unwrap(), reports_now);
    // And the other way round is refused before anything is read.
    let back = migrate(&url, dir.path().join("back.db").to_str().unwrap());
    assert!(!back.status.success());
    assert!(
        String::from_utf8_lossy(&back.stderr).contains("must be a PostgreSQL database"),
        "{}",
        String::from_utf8_lossy(&back.stderr)
    );
}

/// Whether the PostgreSQL database `db` of `cluster` was never used by a
/// listener (no schema created in it).
fn untouched(cluster: &cc_testkit::pg::Cluster, db: &str) -> bool {
    cluster.psql(db, "SELECT to_regclass('cc_schema') IS NULL") == "t"
}

/// A typo in `--from` used to exit 0: SQLite created an empty file there,
/// the copy "copied" its nothing, and the destination got a schema.
#[test]
fn a_source_that_does_not_exist_is_refused_and_nothing_is_created() {
    let Some(cluster) = cc_testkit::pg::Cluster::start() else {
        return;
    };
    let dir = TempDir::new("migrate-missing");
    let url = cluster.create_db("fleet");
    let typo = dir.path().join("listner.db");
    for from in [
        typo.display().to_string(),
        format!("sqlite:{}", typo.display()),
    ] {
        let out = migrate(&from, &url);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{from}: exited 0: {err}");
        assert!(
            err.contains(&typo.display().to_string()) && err.contains("no such file"),
            "{err}"
        );
        assert!(!typo.exists(), "{from}: the source was created");
        assert!(untouched(&cluster, "fleet"), "{from}: the destination was");
    }
    // A file that is not a listener's database is refused too.
    std::fs::write(&typo, "").unwrap();
    let out = migrate(typo.to_str().unwrap(), &url);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a listener's database"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(untouched(&cluster, "fleet"));
}

/// A copy of a database that a running listener still writes loses what
/// it writes after the copy; before, nothing noticed. The listener holds a
/// lock on its SQLite file, which `migrate` (and a second listener) meets.
#[test]
fn a_source_a_running_listener_serves_is_refused() {
    let Some(cluster) = cc_testkit::pg::Cluster::start() else {
        return;
    };
    let dir = TempDir::new("migrate-busy");
    let url = cluster.create_db("fleet");
    let mut listener = cc_testkit::listener::ListenerProcess::start(common::bin(), dir.path(), "");
    let db = dir.path().join("listener.db");
    let out = migrate(db.to_str().unwrap(), &url);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exited 0: {err}");
    assert!(
        err.contains("a running cc-listener serves it") && err.contains(&db.display().to_string()),
        "{err}"
    );
    assert!(untouched(&cluster, "fleet"));
    // `keys` still works beside the listener: the lock is not SQLite's.
    listener.add_key("beside");
    // A second listener on the same file is refused, without a banner.
    let second = TempDir::new("migrate-busy-2");
    let (banner, err) = pg_common::serve_fails(&second, db.to_str().unwrap());
    assert!(!banner.contains("agents on"), "{banner}");
    assert!(err.contains("in use by another cc-listener"), "{err}");
    // Stopped, its database moves.
    listener.terminate().expect("the listener stops on SIGTERM");
    let out = migrate(db.to_str().unwrap(), &url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("api_keys\t1"));
}

/// Listeners on PostgreSQL hold no lock: their leases say they run. (An
/// empty database as the source used to get a schema and "copy" nothing.)
#[test]
fn a_postgres_source_with_a_live_listener_is_refused() {
    let Some(cluster) = cc_testkit::pg::Cluster::start() else {
        return;
    };
    let dir = TempDir::new("migrate-pg-busy");
    let src = cluster.create_db("old");
    let dst = cluster.create_db("new");
    // A database no listener used is not a source, and stays unused.
    let empty = cluster.create_db("empty");
    let out = migrate(&empty, &dst);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a listener's database"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(untouched(&cluster, "empty") && untouched(&cluster, "new"));
    let _listener =
        cc_testkit::listener::ListenerProcess::start_shared(common::bin(), dir.path(), &src, "");
    let out = migrate(&src, &dst);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exited 0: {err}");
    assert!(
        err.contains("listener(s) use it") && err.contains("lease"),
        "{err}"
    );
    assert!(untouched(&cluster, "new"));
}
