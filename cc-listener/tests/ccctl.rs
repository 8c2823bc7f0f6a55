//! `ccctl` against the real listener: cron lists, reports, agent keys,
//! the agent table's filters, Ctrl-C, completions. Test agents are
//! WebSocket clients (see `cc_testkit::ws`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cc_testkit::TempDir;
use cc_testkit::listener::{ListenerProcess, job_id};
use cc_testkit::ws;
use serde_json::{Value, json};

use common::bin;

fn ccctl_cmd(l: &ListenerProcess, dir: &Path, args: &[&str]) -> Command {
    std::fs::write(dir.join("ccctl-token"), cc_testkit::listener::TOKEN).unwrap();
    let mut c = Command::new(cc_testkit::bin("ccctl"));
    c.arg("--url")
        .arg(format!("http://{}", l.admin_addr))
        .arg("--token-file")
        .arg(dir.join("ccctl-token"))
        .args(args)
        .env_remove("HOME");
    c
}

fn ccctl(l: &ListenerProcess, dir: &Path, args: &[&str]) -> Output {
    ccctl_cmd(l, dir, args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `cron set` checks every line before anything is sent and names the bad
/// one (the stored list is unchanged); a good file comes back from `cron
/// get` entry for entry, each command with its own spacing.
#[tokio::test(flavor = "multi_thread")]
async fn cron_set_refuses_a_bad_line_by_number_and_a_good_file_round_trips() {
    let dir = TempDir::new("ccctl-cron");
    let l = ListenerProcess::start(bin(), dir.path(), "");
    let _a = ws::registered(&l, "cron.test").await;

    let good = "# nightly backup\n\
                backup 0 3 * * * /usr/local/sbin/backup --full  --quiet\n\
                \n\
                ping @hourly /bin/echo 'a  b'\n";
    std::fs::write(dir.path().join("good.cron"), good).unwrap();
    let bad = format!("{good}oops 61 * * * * /bin/true\n");
    std::fs::write(dir.path().join("bad.cron"), bad).unwrap();
    let bad_path = dir.path().join("bad.cron");
    let refused = ccctl(
        &l,
        dir.path(),
        &["cron", "set", "cron.test", bad_path.to_str().unwrap()],
    );
    let err = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{err}");
    assert!(err.contains("line 5"), "the bad line is named: {err}");
    assert_eq!(
        l.get("/api/v1/agents/cron.test/cron").json(),
        json!([]),
        "nothing stored"
    );

    let good_path = dir.path().join("good.cron");
    let set = ccctl(
        &l,
        dir.path(),
        &["cron", "set", "cron.test", good_path.to_str().unwrap()],
    );
    assert!(set.status.success(), "{}", text(&set.stderr));
    assert!(text(&set.stdout).contains("2 entries stored for cron.test"));
    let got = ccctl(&l, dir.path(), &["cron", "get", "cron.test"]);
    assert!(got.status.success(), "{}", text(&got.stderr));
    // The listener keeps a command's canonical rendering: its words, each
    // quoted only where it needs to be.
    assert_eq!(
        text(&got.stdout),
        "backup 0 3 * * * /usr/local/sbin/backup --full --quiet\n\
         ping @hourly /bin/echo 'a  b'\n"
    );
    // What `get` prints is a file `set` takes, and it stores the same list.
    std::fs::write(dir.path().join("again.cron"), &got.stdout).unwrap();
    let before = l.get("/api/v1/agents/cron.test/cron").json();
    let again_path = dir.path().join("again.cron");
    let again = ccctl(
        &l,
        dir.path(),
        &["cron", "set", "cron.test", again_path.to_str().unwrap()],
    );
    assert!(again.status.success());
    assert_eq!(l.get("/api/v1/agents/cron.test/cron").json(), before);
}

/// `ccctl keys` is the listener's `keys` through the API: `add` prints
/// the key only, an agent connects with it, `list` never shows a value,
/// and `revoke` disconnects that agent at once (the sweep that would find
/// it otherwise is set to an hour here).
#[tokio::test(flavor = "multi_thread")]
async fn keys_are_added_listed_and_revoked_through_the_api() {
    let dir = TempDir::new("ccctl-keys");
    let l = ListenerProcess::start(bin(), dir.path(), "sweep_interval_ms = 3600000\n");
    let added = ccctl(
        &l,
        dir.path(),
        &["keys", "add", "web1", "--hostname", "Web1.Test"],
    );
    assert!(added.status.success(), "{}", text(&added.stderr));
    let out = text(&added.stdout);
    let key = out.trim();
    assert_eq!(out.lines().count(), 1, "the key and only it: {out:?}");
    assert!(key.starts_with("cck_") && key.len() == 68, "{key}");

    let dup = ccctl(&l, dir.path(), &["keys", "add", "web1"]);
    assert_eq!(dup.status.code(), Some(2));
    assert!(text(&dup.stderr).contains("409"), "{}", text(&dup.stderr));
    let bad = ccctl(&l, dir.path(), &["keys", "add", "no/slash"]);
    assert!(text(&bad.stderr).contains("400"), "{}", text(&bad.stderr));

    let mut ws = ws::registered_as(&l, key, &ws::register("web1.test")).await;

    let list = text(&ccctl(&l, dir.path(), &["keys", "list"]).stdout);
    let row = list.lines().find(|r| r.starts_with("web1 ")).unwrap();
    assert!(
        row.contains("web1.test") && row.contains(" active ") && row.ends_with(" test"),
        "bound to the first registration's tags: {list}"
    );
    assert!(!list.contains("cck_"), "no key value listed: {list}");

    // Tags: given with the key, and changed only by an operator.
    let tagged = ccctl(
        &l,
        dir.path(),
        &["keys", "add", "db1", "--tags", "role=db,dc=1"],
    );
    assert!(tagged.status.success(), "{}", text(&tagged.stderr));
    let list = text(&ccctl(&l, dir.path(), &["keys", "list"]).stdout);
    let row = list.lines().find(|r| r.starts_with("db1 ")).unwrap();
    assert!(row.ends_with(" dc=1,role=db"), "{list}");
    let retag = ccctl(&l, dir.path(), &["keys", "retag", "db1", "role=db"]);
    assert!(retag.status.success(), "{}", text(&retag.stderr));
    assert!(
        text(&retag.stderr).contains("tags role=db"),
        "{}",
        text(&retag.stderr)
    );
    let list = text(&ccctl(&l, dir.path(), &["keys", "list"]).stdout);
    let row = list.lines().find(|r| r.starts_with("db1 ")).unwrap();
    assert!(row.ends_with(" role=db"), "{list}");
    let bad = ccctl(&l, dir.path(), &["keys", "retag", "db1", "no spaces"]);
    assert!(text(&bad.stderr).contains("400"), "{}", text(&bad.stderr));
    let unknown = ccctl(&l, dir.path(), &["keys", "retag", "nobody", "x"]);
    assert!(
        text(&unknown.stderr).contains("404"),
        "{}",
        text(&unknown.stderr)
    );

    let t0 = Instant::now();
    let revoked = ccctl(&l, dir.path(), &["keys", "revoke", "web1"]);
    assert!(revoked.status.success(), "{}", text(&revoked.stderr));
    let closed = ws::recv_close(&mut ws, Duration::from_secs(10)).await;
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "closed at once, not by the hourly sweep: {:?}",
        t0.elapsed()
    );
    assert_eq!(closed.map(|c| c.0), Some(1008), "policy close");
    assert!(
        ws::connect(&l.ws_url(), Some(key)).await.is_err(),
        "a revoked key is refused at the handshake"
    );
    let list = text(&ccctl(&l, dir.path(), &["keys", "list"]).stdout);
    assert!(
        list.lines()
            .any(|r| r.starts_with("web1 ") && r.contains(" revoked ")),
        "{list}"
    );
    let again = ccctl(&l, dir.path(), &["keys", "revoke", "web1"]);
    assert!(
        text(&again.stderr).contains("404"),
        "{}",
        text(&again.stderr)
    );
}

/// `ccctl agents --tag … --offline` filters the table, warns above it about
/// an agent that is root in user mode, and shows the cron status;
/// `ccctl reports` filters by host, job and age, newest first, and a
/// hostile report's escape sequences reach the table as text.
#[tokio::test(flavor = "multi_thread")]
async fn agents_and_reports_filter_and_show_hostile_output_as_text() {
    let dir = TempDir::new("ccctl-read");
    let l = ListenerProcess::start(bin(), dir.path(), "");
    let mut db = ws::registered(&l, "db1.test").await;
    // A root agent in user mode, with tags db and eu.
    let key = l.add_key("root1.test");
    let mut root = ws::registered_as(
        &l,
        &key,
        &json!({"type": "register", "payload": {
            "hostname": "root1.test", "os": "linux", "arch": "amd64", "tags": ["db", "eu"],
            "executionMode": "user", "isRoot": true
        }}),
    )
    .await;
    let gone = ws::registered(&l, "gone.test").await;
    drop(gone);
    l.wait_connected("gone.test", false);
    ws::send(
        &mut db,
        &json!({"type": "cron_status", "payload": {"installed": ["a", "b"],
            "rejected": [{"id": "c", "reason": "bad schedule"}]}}),
    )
    .await;
    l.wait_for(Duration::from_secs(10), |l| {
        l.agent_entry("db1.test")
            .filter(|a| a["cronStatus"].is_object())
    });

    let all = text(&ccctl(&l, dir.path(), &["agents"]).stdout);
    assert!(
        all.starts_with("WARNING: 1 agent(s) run as root (UID 0) in user mode"),
        "{all}"
    );
    assert!(all.contains("2 installed, 1 refused"), "{all}");
    let tagged = text(&ccctl(&l, dir.path(), &["agents", "--tag", "db", "--tag", "eu"]).stdout);
    let hosts = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|r| r.ends_with(".test") || r.contains(".test "))
            .filter(|r| !r.starts_with(' '))
            .map(|r| r.split_whitespace().next().unwrap().to_owned())
            .collect()
    };
    assert_eq!(hosts(&tagged), ["root1.test"], "{tagged}");
    let offline = text(&ccctl(&l, dir.path(), &["agents", "--offline"]).stdout);
    assert_eq!(hosts(&offline), ["gone.test"], "{offline}");
    assert!(!offline.contains("WARNING"), "{offline}");

    // Reports: three for db1 (one hostile), one for root1.
    for (on_root, id, out) in [
        (false, "job-a", "first\n"),
        (false, "job-b", "\u{1b}[2J\u{1b}[31mred\rover\n"),
        (true, "job-c", "root's\n"),
        (false, "job-a", "again\n"),
    ] {
        let ws_ = if on_root { &mut root } else { &mut db };
        let mut r = ws::report(id, Some(&uuid::Uuid::new_v4().to_string()));
        r["payload"]["stdout"] = json!(out);
        ws::send(ws_, &r).await;
        ws::recv_type(ws_, "report_ack", Duration::from_secs(10)).await;
    }
    let table = text(&ccctl(&l, dir.path(), &["reports", "--host", "db1.test"]).stdout);
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert!(
        rows[0].contains("job-a") && rows[0].ends_with("again"),
        "newest first: {table}"
    );
    assert!(
        !table.chars().any(|c| c.is_control() && c != '\n'),
        "no escape reaches the terminal: {table:?}"
    );
    assert!(table.contains("\\u{1b}[2J"), "shown as text: {table}");
    let by_job = ccctl(
        &l,
        dir.path(),
        &["reports", "--job", "job-a", "--output", "json"],
    );
    let v: Value = serde_json::from_slice(&by_job.stdout).unwrap();
    let outs: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["report"]["stdout"].as_str().unwrap())
        .collect();
    assert_eq!(outs, ["again\n", "first\n"]);
    let limited = text(&ccctl(&l, dir.path(), &["reports", "--limit", "2"]).stdout);
    assert_eq!(limited.lines().count(), 3, "{limited}");
    let recent = text(&ccctl(&l, dir.path(), &["reports", "--since", "1h"]).stdout);
    assert_eq!(recent.lines().count(), 5, "{recent}");
    let future = text(
        &ccctl(
            &l,
            dir.path(),
            &["reports", "--since", "2999-01-01T00:00:00Z"],
        )
        .stdout,
    );
    assert_eq!(future.lines().count(), 1, "only the header: {future}");
    let nonsense = ccctl(&l, dir.path(), &["reports", "--since", "yesterday"]);
    assert_eq!(nonsense.status.code(), Some(2));
    assert!(text(&nonsense.stderr).contains("--since"));
}

/// Ctrl-C while `ccctl run` waits: it stops waiting (exit 130), says how to
/// follow the run, and the job goes on to its report.
#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_stops_the_waiting_not_the_job() {
    let dir = TempDir::new("ccctl-int");
    let l = ListenerProcess::start(bin(), dir.path(), "");
    ws::answering_agent(&l, "slow.test", &[], Duration::from_secs(3), |_| 0).await;
    l.wait_connected("slow.test", true);
    let mut child = ccctl_cmd(&l, dir.path(), &["run", "slow.test", "--", "/bin/true"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // ccctl's first stderr line names the run; then it waits on the stream.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::{BufRead, Read};
        let mut r = std::io::BufReader::new(stderr);
        let mut first = String::new();
        r.read_line(&mut first).unwrap();
        tx.send(first.clone()).unwrap();
        let mut rest = String::new();
        r.read_to_string(&mut rest).unwrap();
        first + &rest
    });
    let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let run = first
        .strip_prefix("run ")
        .and_then(|r| r.split(':').next())
        .unwrap_or_else(|| panic!("{first:?}"))
        .to_owned();
    let job = job_id(&l.get(&format!("/api/v1/runs/{run}")).json()["hosts"][0]["jobId"]);
    l.wait_for(Duration::from_secs(10), |l| {
        (l.get(&format!("/api/v1/jobs/{job}")).json()["status"] == "sent").then_some(())
    });
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    let err = reader.join().unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(
        err.contains(&format!("stopped waiting; run {run} goes on"))
            && err.contains(&format!("ccctl run watch {run}")),
        "{err}"
    );
    let waiting = l.get(&format!("/api/v1/jobs/{job}")).json();
    assert_eq!(waiting["status"], "sent", "Ctrl-C came before the report");
    let j = l.wait_for(Duration::from_secs(15), |l| {
        let j = l.get(&format!("/api/v1/jobs/{job}")).json();
        (j["status"] == "done").then_some(j)
    });
    assert_eq!(j["report"]["exitCode"], 0);
}

/// A hostile agent answers a run with a report whose `warning` clears the
/// screen, homes the cursor, writes "ALL HOSTS OK" and retitles the window
/// (issue #25, finding 5: it came through `ccctl run`'s table and `ccctl
/// job` raw), then with the honest report of the same run. The listener
/// refuses the first (a control character in `warning`: not stored, not
/// acknowledged, named in its log with the character escaped) and keeps the
/// second, so no escape reaches `ccctl run`, `run status`, `job` or
/// `reports`.
#[tokio::test(flavor = "multi_thread")]
async fn a_warning_with_escapes_is_refused_and_never_reaches_the_operators_terminal() {
    const WARNING: &str = "\u{1b}[2J\u{1b}[H ALL HOSTS OK \u{1b}]0;pwned\u{7}";
    let dir = TempDir::new("ccctl-warning");
    let l = ListenerProcess::start(bin(), dir.path(), "");
    let mut agent = ws::registered(&l, "evil.test").await;
    let answered = tokio::spawn(async move {
        let job = ws::recv_type(&mut agent, "execute_job", Duration::from_secs(60)).await;
        let id = ws::job_id(&job);
        let mut hostile = ws::report(id.as_str(), Some("hostile-1"));
        hostile["payload"]["warning"] = json!(WARNING);
        ws::send(&mut agent, &hostile).await;
        ws::send(&mut agent, &ws::report(id.as_str(), Some("honest-1"))).await;
        // The listener reads one connection's messages in order: once the
        // honest report is acknowledged, the hostile one has had its answer.
        let mut acked = Vec::new();
        while acked.last().is_none_or(|a| a != "honest-1") {
            let ack = ws::recv_type(&mut agent, "report_ack", Duration::from_secs(30)).await;
            acked.push(ack["payload"]["reportId"].as_str().unwrap().to_owned());
        }
        acked
    });
    // Bounded: with no report stored, ccctl gives up after timeout + 120 s.
    let run = ccctl(
        &l,
        dir.path(),
        &[
            "run",
            "evil.test",
            "--timeout",
            "10",
            "--",
            "/bin/echo",
            "hi",
        ],
    );
    let acked = answered.await.unwrap();
    let run_id = text(&run.stderr)
        .strip_prefix("run ")
        .and_then(|r| r.split(':').next())
        .unwrap_or_else(|| panic!("{}", text(&run.stderr)))
        .to_owned();
    let job = job_id(&l.get(&format!("/api/v1/runs/{run_id}")).json()["hosts"][0]["jobId"]);
    let mut shown = vec![("run".to_owned(), run)];
    for args in [
        vec!["run", "status", run_id.as_str()],
        vec!["job", job.as_str()],
        vec!["reports", "--host", "evil.test"],
    ] {
        shown.push((args.join(" "), ccctl(&l, dir.path(), &args)));
    }
    let raw = |b: &[u8]| {
        text(b)
            .chars()
            .filter(|c| c.is_control() && *c != '\n')
            .count()
    };
    let leaked: Vec<String> = shown
        .iter()
        .filter(|(_, o)| raw(&o.stdout) + raw(&o.stderr) > 0)
        .map(|(cmd, o)| {
            format!(
                "ccctl {cmd}: {} raw on stdout, {} on stderr:\n{}",
                raw(&o.stdout),
                raw(&o.stderr),
                text(&o.stdout).escape_debug()
            )
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "{} of {} commands printed the agent's control characters raw:\n{}",
        leaked.len(),
        shown.len(),
        leaked.join("\n")
    );
    assert!(shown[0].1.status.success(), "{}", text(&shown[0].1.stderr));
    assert_eq!(
        acked,
        ["honest-1"],
        "the hostile report is not acknowledged"
    );
    let stored = l.get(&format!("/api/v1/jobs/{job}")).json();
    assert_eq!(stored["status"], "done", "{stored}");
    assert!(stored["report"]["warning"].is_null(), "{stored}");
    let reports = l.get("/api/v1/reports?hostname=evil.test").json();
    assert_eq!(
        reports.as_array().unwrap().len(),
        1,
        "only the honest one: {reports}"
    );
    let log = l.log();
    assert!(
        log.contains("warning contains a control character ('\\u{1b}') at byte 0"),
        "{log}"
    );
    assert!(!log.contains('\u{1b}'), "the log shows it escaped");
}

/// `ccctl completions bash` prints a script that knows the subcommands.
#[test]
fn completions_know_the_subcommands() {
    let out = Command::new(cc_testkit::bin("ccctl"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let script = text(&out.stdout);
    for word in [
        "agents", "reports", "keys", "cron", "run", "keygen", "--tag",
    ] {
        assert!(script.contains(word), "{word} missing");
    }
    let bad = Command::new(cc_testkit::bin("ccctl"))
        .args(["completions", "cmd.exe"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}
