//! `ccctl` against the real listener: cron lists, reports, agent keys,
//! the agent table's filters, Ctrl-C, completions. Test agents are
//! WebSocket clients (see `cc_testkit::ws`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cc_testkit::TempDir;
use cc_testkit::listener::{ListenerProcess, job_id};
use cc_testkit::ws;
use serde_json::{Value, json};

use common::bin;

/// The id of the first run the listener accepted, from its log (ccctl
/// names a run only when it stops following it before its end).
fn accepted_run(l: &ListenerProcess) -> String {
    l.wait_for(Duration::from_secs(10), |l| {
        let log = l.log();
        let line = log.lines().find(|l| l.contains("run accepted"))?;
        let at = line.find("run_id=")? + "run_id=".len();
        Some(line[at..].split_whitespace().next()?.to_owned())
    })
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
    let refused = l.ccctl(
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
    let set = l.ccctl(
        dir.path(),
        &["cron", "set", "cron.test", good_path.to_str().unwrap()],
    );
    assert!(set.status.success(), "{}", text(&set.stderr));
    assert!(text(&set.stdout).contains("2 entries stored for cron.test"));
    let got = l.ccctl(dir.path(), &["cron", "get", "cron.test"]);
    assert!(got.status.success(), "{}", text(&got.stderr));
    // The listener keeps a command's canonical rendering: its words, each
    // quoted only where it needs to be; then the next runs, as comments.
    let out = text(&got.stdout);
    let (entries, next): (Vec<&str>, Vec<&str>) = out.lines().partition(|l| !l.starts_with('#'));
    assert_eq!(
        entries,
        [
            "backup 0 3 * * * /usr/local/sbin/backup --full --quiet",
            "ping @hourly /bin/echo 'a  b'"
        ]
    );
    assert_eq!(
        next[0],
        "# next runs, in the host's time zone: UTC (the host did not say its time zone)"
    );
    // What `get` prints is a file `set` takes, and it stores the same list.
    std::fs::write(dir.path().join("again.cron"), &got.stdout).unwrap();
    let before = l.get("/api/v1/agents/cron.test/cron").json();
    let again_path = dir.path().join("again.cron");
    let again = l.ccctl(
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
    let added = l.ccctl(
        dir.path(),
        &["keys", "add", "web1", "--hostname", "Web1.Test"],
    );
    assert!(added.status.success(), "{}", text(&added.stderr));
    let out = text(&added.stdout);
    let key = out.trim();
    assert_eq!(out.lines().count(), 1, "the key and only it: {out:?}");
    assert!(key.starts_with("cck_") && key.len() == 68, "{key}");

    let dup = l.ccctl(dir.path(), &["keys", "add", "web1"]);
    assert_eq!(dup.status.code(), Some(2));
    assert!(text(&dup.stderr).contains("409"), "{}", text(&dup.stderr));
    let bad = l.ccctl(dir.path(), &["keys", "add", "no/slash"]);
    assert!(text(&bad.stderr).contains("400"), "{}", text(&bad.stderr));

    let mut ws = ws::registered_as(&l, key, &ws::register("web1.test")).await;

    let list = text(&l.ccctl(dir.path(), &["keys", "list"]).stdout);
    let row = list.lines().find(|r| r.starts_with("web1 ")).unwrap();
    assert!(
        row.contains("web1.test") && row.contains(" active ") && row.ends_with(" test"),
        "bound to the first registration's tags: {list}"
    );
    assert!(!list.contains("cck_"), "no key value listed: {list}");

    // Tags: given with the key, and changed only by an operator.
    let tagged = l.ccctl(
        dir.path(),
        &["keys", "add", "db1", "--tags", "role=db,dc=1"],
    );
    assert!(tagged.status.success(), "{}", text(&tagged.stderr));
    let list = text(&l.ccctl(dir.path(), &["keys", "list"]).stdout);
    let row = list.lines().find(|r| r.starts_with("db1 ")).unwrap();
    assert!(row.ends_with(" dc=1,role=db"), "{list}");
    let retag = l.ccctl(dir.path(), &["keys", "retag", "db1", "role=db"]);
    assert!(retag.status.success(), "{}", text(&retag.stderr));
    assert!(
        text(&retag.stderr).contains("tags role=db"),
        "{}",
        text(&retag.stderr)
    );
    let list = text(&l.ccctl(dir.path(), &["keys", "list"]).stdout);
    let row = list.lines().find(|r| r.starts_with("db1 ")).unwrap();
    assert!(row.ends_with(" role=db"), "{list}");
    let bad = l.ccctl(dir.path(), &["keys", "retag", "db1", "no spaces"]);
    assert!(text(&bad.stderr).contains("400"), "{}", text(&bad.stderr));
    let unknown = l.ccctl(dir.path(), &["keys", "retag", "nobody", "x"]);
    assert!(
        text(&unknown.stderr).contains("404"),
        "{}",
        text(&unknown.stderr)
    );

    let t0 = Instant::now();
    let revoked = l.ccctl(dir.path(), &["keys", "revoke", "web1"]);
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
    let list = text(&l.ccctl(dir.path(), &["keys", "list"]).stdout);
    assert!(
        list.lines()
            .any(|r| r.starts_with("web1 ") && r.contains(" revoked ")),
        "{list}"
    );
    let again = l.ccctl(dir.path(), &["keys", "revoke", "web1"]);
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

    let all = text(&l.ccctl(dir.path(), &["agents"]).stdout);
    assert!(
        all.starts_with("WARNING: 1 agent(s) run as root (UID 0) in user mode"),
        "{all}"
    );
    assert!(all.contains("2 installed, 1 refused"), "{all}");
    let tagged = text(
        &l.ccctl(dir.path(), &["agents", "--tag", "db", "--tag", "eu"])
            .stdout,
    );
    let hosts = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|r| r.ends_with(".test") || r.contains(".test "))
            .filter(|r| !r.starts_with(' '))
            .map(|r| r.split_whitespace().next().unwrap().to_owned())
            .collect()
    };
    assert_eq!(hosts(&tagged), ["root1.test"], "{tagged}");
    let offline = text(&l.ccctl(dir.path(), &["agents", "--offline"]).stdout);
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
    let table = text(
        &l.ccctl(dir.path(), &["reports", "--host", "db1.test"])
            .stdout,
    );
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
    let by_job = l.ccctl(
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
    let limited = text(&l.ccctl(dir.path(), &["reports", "--limit", "2"]).stdout);
    assert_eq!(limited.lines().count(), 3, "{limited}");
    let recent = text(&l.ccctl(dir.path(), &["reports", "--since", "1h"]).stdout);
    assert_eq!(recent.lines().count(), 5, "{recent}");
    let future = text(
        &l.ccctl(dir.path(), &["reports", "--since", "2999-01-01T00:00:00Z"])
            .stdout,
    );
    assert_eq!(future.lines().count(), 1, "only the header: {future}");
    let nonsense = l.ccctl(dir.path(), &["reports", "--since", "yesterday"]);
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
    let mut child = l
        .ccctl_command(dir.path(), &["run", "slow.test", "--", "/bin/true"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // ccctl says nothing while it waits (how to follow the run is said
    // only if it stops before the run ends): the run is in the listener's
    // log.
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut all = String::new();
        std::io::BufReader::new(stderr)
            .read_to_string(&mut all)
            .unwrap();
        all
    });
    let run = accepted_run(&l);
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
    let run = l.ccctl(
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
    let run_id = accepted_run(&l);
    let job = job_id(&l.get(&format!("/api/v1/runs/{run_id}")).json()["hosts"][0]["jobId"]);
    let mut shown = vec![("run".to_owned(), run)];
    for args in [
        vec!["run", "status", run_id.as_str()],
        vec!["job", job.as_str()],
        vec!["reports", "--host", "evil.test"],
    ] {
        shown.push((args.join(" "), l.ccctl(dir.path(), &args)));
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

/// `ccctl` with no flags, as a new operator runs it: `HOME` is `home`
/// (so `home/.config/croncommander/ccctl.toml` is its config) and none of
/// the `CC_*` variables is set.
fn ccctl_home(home: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(cc_testkit::bin("ccctl"));
    c.args(args)
        .env("HOME", home)
        .env_remove("CC_URL")
        .env_remove("CC_TOKEN_FILE")
        .env_remove("CC_CA_FILE")
        .env_remove("CC_KEY_FILE");
    c
}

/// Writes `home/.config/croncommander/ccctl.toml`.
fn write_config(home: &Path, toml: &str) {
    let dir = home.join(".config/croncommander");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ccctl.toml"), toml).unwrap();
}

/// Each error of issue #30, item 5, says what failed, the value, and what
/// to do, once: no OS error twice, no ureq type names.
#[test]
fn errors_name_what_failed_and_the_next_step_once() {
    let dir = TempDir::new("ccctl-errors");
    let home = dir.path();
    std::fs::write(home.join("token"), "t").unwrap();
    let token = home.join("token");
    let token = token.to_str().unwrap();
    let fails = |args: &[&str]| {
        let out = ccctl_home(home, args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(!err.contains("os error"), "{err}");
        err
    };
    let e = fails(&["--url", "127.0.0.1:8080", "--token-file", token, "agents"]);
    assert_eq!(
        e,
        "ccctl: error: the listener URL \"127.0.0.1:8080\" (from --url) needs http:// or https://, for example http://127.0.0.1:8080\n"
    );
    let e = fails(&[
        "--url",
        "http://127.0.0.1:8080/api/v1",
        "--token-file",
        token,
        "agents",
    ]);
    assert!(e.contains("must not end in /api/v1: give the listener's address only, for example http://127.0.0.1:8080"), "{e}");
    // A port nothing listens on.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", free.local_addr().unwrap());
    drop(free);
    let e = fails(&["--url", &url, "--token-file", token, "agents"]);
    assert_eq!(
        e,
        format!(
            "ccctl: error: cannot reach the listener at {url}: connection refused; is the listener running? (CC_URL / --url / config `url`)\n"
        )
    );
    // The token file, from the config: the file and the key are named.
    write_config(
        home,
        &format!("url = {url:?}\ntoken_file = \"~/missing-token\"\n"),
    );
    let e = fails(&["agents"]);
    let config = home.join(".config/croncommander/ccctl.toml");
    assert_eq!(
        e,
        format!(
            "ccctl: error: the token file {} (from `token_file` in {}) cannot be read: it does not exist; put the listener's operator token there, or point `token_file` in {} at the file holding it\n",
            home.join("missing-token").display(),
            config.display(),
            config.display()
        )
    );
    // A program without `--`.
    let e = fails(&[
        "--url",
        &url,
        "--token-file",
        token,
        "run",
        "web1",
        "/bin/true",
    ]);
    assert_eq!(
        e,
        "ccctl: error: `/bin/true` was read as a host: the program and its arguments go after `--`: ccctl run web1 -- /bin/true\n"
    );
    let e = fails(&[
        "--url",
        &url,
        "--token-file",
        token,
        "run",
        "--tag",
        "db",
        "/bin/echo",
        "hi",
    ]);
    assert!(e.ends_with("ccctl run --tag db -- /bin/echo hi\n"), "{e}");
}

/// `token_file = "~/token"` in ccctl.toml is under `$HOME`; a wrong token
/// is said to be the token; `--tag` and `--host` that match nothing exit 0
/// with a hint on stderr.
#[tokio::test(flavor = "multi_thread")]
async fn the_config_expands_tilde_and_empty_filters_give_a_hint() {
    let dir = TempDir::new("ccctl-home");
    let l = ListenerProcess::start(bin(), dir.path(), "");
    let _a = ws::registered(&l, "web1.test").await;
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("token"), cc_testkit::listener::TOKEN).unwrap();
    let url = format!("http://{}", l.admin_addr);
    write_config(&home, &format!("url = {url:?}\ntoken_file = \"~/token\"\n"));
    let all = ccctl_home(&home, &["agents"]).output().unwrap();
    assert!(all.status.success(), "{}", text(&all.stderr));
    assert!(text(&all.stdout).contains("web1.test"));

    let typo = ccctl_home(&home, &["agents", "--tag", "typo"])
        .output()
        .unwrap();
    assert_eq!(typo.status.code(), Some(0));
    assert_eq!(
        text(&typo.stderr),
        "ccctl: no agent has tag typo; `ccctl agents` lists every agent's tags\n"
    );
    let typo = ccctl_home(&home, &["reports", "--host", "typo"])
        .output()
        .unwrap();
    assert_eq!(typo.status.code(), Some(0));
    assert_eq!(
        text(&typo.stderr),
        "ccctl: no report from host typo; `ccctl agents` lists the hosts\n"
    );

    std::fs::write(home.join("token"), "not-the-token").unwrap();
    let refused = ccctl_home(&home, &["agents"]).output().unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert_eq!(
        text(&refused.stderr),
        "ccctl: error: the token was refused (the listener answered 401: missing or wrong bearer token); check that the token file (--token-file / CC_TOKEN_FILE / `token_file`) holds the listener's operator token\n"
    );
}

/// `ccctl keygen --out DIR/ops.key` into a directory that does not exist
/// yet (docs/system-mode.md's command on a fresh machine): the missing
/// directories are made 0700, the key 0600; a second run does not
/// overwrite it.
#[test]
fn keygen_makes_the_missing_directories() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("ccctl-keygen");
    let key = dir.path().join(".config/croncommander/ops.key");
    let out = Command::new(cc_testkit::bin("ccctl"))
        .args(["keygen", "--out", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("ed25519:"),
        "{}",
        text(&out.stdout)
    );
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&dir.path().join(".config/croncommander")), 0o700);
    assert_eq!(mode(&dir.path().join(".config")), 0o700);
    let again = Command::new(cc_testkit::bin("ccctl"))
        .args(["keygen", "--out", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert_eq!(
        text(&again.stderr),
        format!(
            "ccctl: error: {} already exists: ccctl keygen never overwrites a key; give another --out, or move the old key away first\n",
            key.display()
        )
    );
}

/// `ccctl run`'s table carries each host's job id (for `ccctl job`), marks
/// an output cut to fit, and says nothing of following a run that ended;
/// `run status ID --output json` is `ccctl run --output json`'s JSON.
#[tokio::test(flavor = "multi_thread")]
async fn run_tables_carry_job_ids_and_status_speaks_json() {
    let dir = TempDir::new("ccctl-runs");
    let l = ListenerProcess::start(bin(), dir.path(), "");
    ws::answering_agent(&l, "one.test", &[], Duration::from_millis(10), |_| 0).await;
    l.wait_connected("one.test", true);
    let out = l.ccctl(dir.path(), &["run", "one.test", "--", "/bin/true"]);
    let (table, err) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{table}\n{err}");
    assert_eq!(err, "", "a run that ended needs no following");
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["HOST", "JOB", "STATUS", "EXIT", "MS", "OUTPUT"]);
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[0], "one.test");
    let job = row[1];
    let shown = l.ccctl(dir.path(), &["job", job]);
    assert!(
        shown.status.success(),
        "the id is the job's: {}",
        text(&shown.stderr)
    );

    let later = l.ccctl(
        dir.path(),
        &["run", "--no-wait", "one.test", "--", "/bin/true"],
    );
    let id = text(&later.stdout).lines().next().unwrap()["run ".len()..].to_owned();
    let watched = l.ccctl(dir.path(), &["run", "watch", &id, "--output", "json"]);
    assert!(watched.status.success(), "{}", text(&watched.stderr));
    let status = l.ccctl(dir.path(), &["run", "status", &id, "--output", "json"]);
    assert!(status.status.success(), "{}", text(&status.stderr));
    let v: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v[0]["host"], "one.test", "{v}");
    assert_eq!(v[0]["status"], "done", "{v}");
    assert_eq!(v[0]["report"]["exitCode"], 0, "{v}");
    assert!(v[0]["jobId"].is_string(), "{v}");
    assert_eq!(serde_json::from_slice::<Value>(&watched.stdout).unwrap(), v);
}

/// A report whose first line is longer than the table's column: cut, and
/// the cut marked with `…`.
#[tokio::test(flavor = "multi_thread")]
async fn a_cut_output_is_marked() {
    let dir = TempDir::new("ccctl-cut");
    let l = ListenerProcess::start(bin(), dir.path(), "");
    let mut a = ws::registered(&l, "long.test").await;
    let long = "x".repeat(100);
    let mut r = ws::report("job-long", Some("long-1"));
    r["payload"]["stdout"] = json!(format!("{long}\n"));
    ws::send(&mut a, &r).await;
    ws::recv_type(&mut a, "report_ack", Duration::from_secs(10)).await;
    let table = text(
        &l.ccctl(dir.path(), &["reports", "--host", "long.test"])
            .stdout,
    );
    let row = table.lines().nth(1).unwrap();
    assert!(row.ends_with(&format!(" {}…", "x".repeat(60))), "{table}");
}

/// `cron set HOST -` reads standard input; a line written for a shell is
/// stored as it is, with a warning naming it; a schedule that never fires
/// is refused by its line.
#[tokio::test(flavor = "multi_thread")]
async fn cron_set_reads_stdin_warns_of_shell_syntax_and_refuses_never() {
    use std::io::Write;
    let dir = TempDir::new("ccctl-cron-stdin");
    let l = ListenerProcess::start(bin(), dir.path(), "");
    let _a = ws::registered(&l, "cron.test").await;
    let set = |input: &str| {
        let mut child = l
            .ccctl_command(dir.path(), &["cron", "set", "cron.test", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = set("# from stdin\nout @daily /bin/echo hi > /tmp/out\nok @hourly /bin/true\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("2 entries stored for cron.test"));
    assert_eq!(
        text(&out.stderr),
        "ccctl: warning: line 2 (out): `/bin/echo hi > /tmp/out` looks written for a shell (`>`), but commands are not run by a shell: `>` reaches the program as an argument. For a shell, wrap it: /bin/sh -c '/bin/echo hi > /tmp/out'\n"
    );
    let stored = l.get("/api/v1/agents/cron.test/cron").json();
    // Stored as it is: its canonical form shows `>` is one argument.
    assert_eq!(
        stored[0]["command"], "/bin/echo hi '>' /tmp/out",
        "{stored}"
    );

    let never = set("feb 0 0 31 2 * /bin/true\n");
    assert_eq!(never.status.code(), Some(2));
    let err = text(&never.stderr);
    assert!(
        err.starts_with("ccctl: error: line 1: \"feb 0 0 31 2 * /bin/true\": schedule \"0 0 31 2 *\" never fires"),
        "{err}"
    );
    // The listener refuses it too, whoever sends it.
    let put = l.put(
        "/api/v1/agents/cron.test/cron",
        &json!([{"id": "feb", "schedule": "0 0 30 2 *", "command": "/bin/true"}]),
    );
    assert_eq!(put.status, 400, "{}", put.body);
    assert_eq!(
        l.get("/api/v1/agents/cron.test/cron")
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

/// A TLS proxy in front of the listener's operator address (plain HTTP),
/// as an operator behind one reaches it: `https://localhost:PORT`, with a
/// new self-signed certificate for `localhost` written to `dir/ca.pem`.
async fn tls_proxy(l: &ListenerProcess, dir: &Path) -> String {
    use std::sync::Arc;
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.join("ca.pem"), cert.cert.pem()).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![CertificateDer::from(cert.cert.der().to_vec())], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = front.local_addr().unwrap().port();
    let backend = l.admin_addr;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = front.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut up) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    format!("https://localhost:{port}")
}

/// `https://` works: with the CA given by `--ca-file` or `ca_file` in
/// ccctl.toml; without it the certificate is not trusted, and the error
/// says how to trust it.
#[tokio::test(flavor = "multi_thread")]
async fn https_works_with_the_ca_given_and_says_how_when_not_trusted() {
    let dir = TempDir::new("ccctl-https");
    let l = ListenerProcess::start(bin(), dir.path(), "");
    let _a = ws::registered(&l, "tls.test").await;
    let url = tls_proxy(&l, dir.path()).await;
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("token"), cc_testkit::listener::TOKEN).unwrap();
    let ca = dir.path().join("ca.pem");
    let token = home.join("token");
    let args = [
        "--url",
        &url,
        "--token-file",
        token.to_str().unwrap(),
        "--ca-file",
        ca.to_str().unwrap(),
        "agents",
    ];
    let ok = ccctl_home(&home, &args).output().unwrap();
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert!(
        text(&ok.stdout).contains("tls.test"),
        "{}",
        text(&ok.stdout)
    );

    // The platform's roots do not hold this certificate.
    write_config(&home, &format!("url = {url:?}\ntoken_file = \"~/token\"\n"));
    let untrusted = ccctl_home(&home, &["agents"]).output().unwrap();
    assert_eq!(untrusted.status.code(), Some(2));
    let err = text(&untrusted.stderr);
    assert!(
        err.starts_with(&format!("ccctl: error: the TLS connection to the listener at {url} failed: invalid peer certificate: UnknownIssuer; if a CA of your own signed its certificate, give it with --ca-file PATH (or `ca_file` in ccctl.toml) or install it in this machine's trust store")),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    write_config(
        &home,
        &format!(
            "url = {url:?}\ntoken_file = \"~/token\"\nca_file = {:?}\n",
            ca
        ),
    );
    let ok = ccctl_home(&home, &["agents"]).output().unwrap();
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let doctor = ccctl_home(&home, &["doctor"]).output().unwrap();
    let shown = text(&doctor.stdout);
    assert_eq!(doctor.status.code(), Some(0), "{shown}");
    assert!(
        shown.contains(&format!(
            "ok   listener reachable at {url}\nok   TLS: the listener's certificate is verified\n"
        )),
        "{shown}"
    );
}

/// `ccctl doctor` against a real listener: every line ok (exit 0); then a
/// wrong token, a loose token file, and a stopped listener, each named
/// with what to do (exit 1).
#[tokio::test(flavor = "multi_thread")]
async fn doctor_checks_the_operators_side() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("ccctl-doctor");
    let mut l = ListenerProcess::start(bin(), dir.path(), "");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let token = home.join("token");
    std::fs::write(&token, cc_testkit::listener::TOKEN).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let url = format!("http://{}", l.admin_addr);
    write_config(&home, &format!("url = {url:?}\ntoken_file = \"~/token\"\n"));
    let config = home.join(".config/croncommander/ccctl.toml");
    let doctor = || {
        let out = ccctl_home(&home, &["doctor"]).output().unwrap();
        assert_eq!(text(&out.stderr), "");
        (out.status.code(), text(&out.stdout))
    };
    let (code, shown) = doctor();
    assert_eq!(
        shown,
        format!(
            "ok   config file {}\n\
             ok   listener URL {url} (from `url` in {})\n\
             ok   token file {} (from `token_file` in {}), mode 600\n\
             ok   listener reachable at {url}\n\
             ok   the token is accepted\n\
             all checks passed\n",
            config.display(),
            config.display(),
            token.display(),
            config.display()
        )
    );
    assert_eq!(code, Some(0));

    std::fs::write(&token, "wrong").unwrap();
    let (code, shown) = doctor();
    assert_eq!(code, Some(1), "{shown}");
    assert!(
        shown.contains(&format!("ok   listener reachable at {url}\n")),
        "{shown}"
    );
    assert!(
        shown.ends_with("FAIL the token was refused (401): put the listener's operator token in the token file\n"),
        "{shown}"
    );

    std::fs::write(&token, cc_testkit::listener::TOKEN).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, shown) = doctor();
    assert_eq!(code, Some(1), "{shown}");
    assert!(
        shown.contains(&format!(
            "FAIL the token file {} is mode 644: others can read the operator token; chmod 600 {}\n",
            token.display(),
            token.display()
        )),
        "{shown}"
    );
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();

    l.terminate();
    let (code, shown) = doctor();
    assert_eq!(code, Some(1), "{shown}");
    assert!(
        shown.ends_with(&format!("FAIL cannot reach the listener at {url}: connection refused; is the listener running? (CC_URL / --url / config `url`)\n")),
        "{shown}"
    );
}

/// The listener stops while `ccctl run` follows a run: ccctl says what
/// failed and, since the run has not ended, how to follow it later.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_left_unfinished_says_how_to_follow_it() {
    let dir = TempDir::new("ccctl-gone");
    let mut l = ListenerProcess::start(bin(), dir.path(), "");
    // Registered, and never answers.
    let _a = ws::registered(&l, "mute.test").await;
    let child = l
        .ccctl_command(dir.path(), &["run", "mute.test", "--", "/bin/true"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let run = accepted_run(&l);
    let url = format!("http://{}", l.admin_addr);
    l.terminate();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    // The reason (ccctl reconnects half a second after the stream ends,
    // when the port refuses), then, once, how to follow the run.
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!("ccctl: error: cannot reach the listener at {url}: connection refused; is the listener running? (CC_URL / --url / config `url`); ")),
        "{err}"
    );
    assert!(
        err.ends_with(&format!(
            "; run {run} goes on: follow it later with `ccctl run watch {run}`\n"
        )),
        "{err}"
    );
}

/// `ccctl job ENTRY --host H` shows the latest scheduled run of a cron
/// entry (`--all`: every one, newest first); without `--host` the 404 says
/// to use it. `cron get` says when each entry fires next in the host's
/// time zone, with its jitter wait. The runs of a host outside an
/// operator's selector are 404, as an unknown host's.
#[tokio::test(flavor = "multi_thread")]
async fn job_host_shows_an_entrys_scheduled_runs_and_cron_get_its_next_runs() {
    let dir = TempDir::new("ccctl-entry-runs");
    let l = ListenerProcess::start(bin(), dir.path(), "");
    let mut a = ws::registered(&l, "sched.test").await;
    ws::send(
        &mut a,
        &json!({"type": "heartbeat", "payload": {"cronHost": {"daemon": "cron", "timeZone": "Asia/Tokyo"}}}),
    )
    .await;
    l.wait_for(Duration::from_secs(10), |l| {
        l.agent_entry("sched.test")
            .filter(|a| a["cronHost"]["timeZone"] == "Asia/Tokyo")
    });
    let list = json!([
        {"id": "nightly", "schedule": "0 3 * * *", "command": "/usr/bin/backup", "jitter": 600},
        {"id": "boot", "schedule": "@reboot", "command": "/bin/true"}
    ]);
    let put = l.put("/api/v1/agents/sched.test/cron", &list);
    assert_eq!(put.status, 200, "{}", put.body);
    // Without ?next the answer is the bare list, as before.
    assert_eq!(l.get("/api/v1/agents/sched.test/cron").json(), list);

    runs_print_latest_first(&l, dir.path(), &mut a).await;
    runs_api_pages_and_refuses_bad_queries(&l);
    job_without_host_says_to_use_it(&l, dir.path());
    cron_get_gives_next_runs_in_the_hosts_zone(&l, dir.path());
    console_links_each_entry_to_its_runs(&l);
    runs_outside_the_selector_are_not_found(&l, dir.path());
}

/// The console's host page: next runs in the host's zone, each entry
/// linked to its runs; the runs page lists them, output as text.
fn console_links_each_entry_to_its_runs(l: &ListenerProcess) {
    use cc_testkit::http::{console, console_login};
    let cookie = console_login(l.admin_addr, cc_testkit::listener::TOKEN);
    let host = console(
        l.admin_addr,
        "GET",
        "/ui/hosts/sched.test",
        "",
        Some(&cookie),
    );
    assert!(host.starts_with("HTTP/1.1 200"), "{host}");
    assert!(host.contains("Next run (Asia/Tokyo)"), "{host}");
    assert!(
        host.contains(r#"href="/ui/hosts/sched.test/cron/nightly""#),
        "{host}"
    );
    assert!(host.contains(" 03:00 JST"), "{host}");
    let runs = console(
        l.admin_addr,
        "GET",
        "/ui/hosts/sched.test/cron/nightly",
        "",
        Some(&cookie),
    );
    assert!(runs.starts_with("HTTP/1.1 200"), "{runs}");
    assert!(
        runs.contains("1234 ms") && runs.contains("second") && runs.contains("first"),
        "{runs}"
    );
    let none = console(
        l.admin_addr,
        "GET",
        "/ui/hosts/sched.test/cron/boot",
        "",
        Some(&cookie),
    );
    assert!(none.contains("no run reported yet"), "{none}");
}

/// Before any run, an error that says so; then two scheduled runs, the
/// latest printed as a job, `--all` listing both, newest first.
async fn runs_print_latest_first(l: &ListenerProcess, dir: &Path, a: &mut ws::Ws) {
    let none = l.ccctl(dir, &["job", "nightly", "--host", "sched.test"]);
    assert_eq!(none.status.code(), Some(2));
    assert!(
        text(&none.stderr)
            .contains("no run of cron entry nightly on sched.test has been reported yet"),
        "{}",
        text(&none.stderr)
    );
    // Two scheduled runs: a failure, then a success that waited its jitter.
    for (exit, waited, out) in [(3, None, "first\n"), (0, Some(1234), "second\n")] {
        let mut r = ws::report("nightly", Some(&uuid::Uuid::new_v4().to_string()));
        r["payload"]["exitCode"] = json!(exit);
        r["payload"]["stdout"] = json!(out);
        if let Some(ms) = waited {
            r["payload"]["waitedMs"] = json!(ms);
        }
        ws::send(a, &r).await;
        ws::recv_type(a, "report_ack", Duration::from_secs(10)).await;
    }
    let latest = l.ccctl(dir, &["job", "nightly", "--host", "sched.test"]);
    let out = text(&latest.stdout);
    assert!(latest.status.success(), "{out}{}", text(&latest.stderr));
    for want in [
        "entry    nightly (scheduled)",
        "host     sched.test",
        "exit     0",
        "waited   1234 ms (jitter)",
        "--- stdout ---\nsecond\n",
    ] {
        assert!(out.contains(want), "{want:?} in {out}");
    }
    let all = l.ccctl(dir, &["job", "nightly", "--host", "sched.test", "--all"]);
    let table = text(&all.stdout);
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(
        rows[0].ends_with("second") && rows[0].contains(" 1234 "),
        "newest first: {table}"
    );
    assert!(rows[1].ends_with("first"), "{table}");
    let json_all = l.ccctl(
        dir,
        &[
            "job",
            "nightly",
            "--host",
            "sched.test",
            "--all",
            "--output",
            "json",
        ],
    );
    let v: Value = serde_json::from_slice(&json_all.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v[0]["kind"], "cron");
    assert_eq!(v[1]["report"]["exitCode"], 3);
}

fn runs_api_pages_and_refuses_bad_queries(l: &ListenerProcess) {
    // The API pages: one at a time, with a cursor.
    let one = l.get("/api/v1/agents/sched.test/cron/nightly/runs?limit=1");
    assert_eq!(one.json().as_array().unwrap().len(), 1);
    for bad in ["limit=0", "limit=1001", "before=0", "bogus=1"] {
        let r = l.get(&format!(
            "/api/v1/agents/sched.test/cron/nightly/runs?{bad}"
        ));
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }
    assert_eq!(
        l.get("/api/v1/agents/sched.test/cron/a%20b/runs").status,
        400
    );
    assert_eq!(
        l.get("/api/v1/agents/nobody.test/cron/nightly/runs").status,
        404
    );
}

fn job_without_host_says_to_use_it(l: &ListenerProcess, dir: &Path) {
    // Without --host: the 404 says what to do.
    let plain = l.ccctl(dir, &["job", "nightly"]);
    let err = text(&plain.stderr);
    assert_ne!(plain.status.code(), Some(0));
    assert!(
        err.contains("404") && err.contains("is this a cron entry? use --host"),
        "{err}"
    );
    let unknown = l.ccctl(dir, &["job", "nightly", "--host", "nobody.test"]);
    assert!(
        text(&unknown.stderr).contains("404"),
        "{}",
        text(&unknown.stderr)
    );
    let needs_host = l.ccctl(dir, &["job", "nightly", "--all"]);
    assert_eq!(needs_host.status.code(), Some(2), "--all needs --host");
}

/// Next runs in the host's zone, with this host's jitter wait.
fn cron_get_gives_next_runs_in_the_hosts_zone(l: &ListenerProcess, dir: &Path) {
    // Next runs in the host's zone (Tokyo, +09:00), with this host's jitter wait.
    let got = text(&l.ccctl(dir, &["cron", "get", "sched.test"]).stdout);
    let offset = cc_proto::wire::jitter_offset("sched.test", "nightly", 600);
    assert!(
        got.contains("# next runs, in the host's time zone: Asia/Tokyo\n"),
        "{got}"
    );
    let line = got.lines().find(|l| l.starts_with("#   nightly ")).unwrap();
    assert!(
        line.contains("T03:00:00+09:00")
            && line.ends_with(&format!(", then waits {offset} s (jitter)")),
        "{got}"
    );
    assert!(got.contains("#   boot never on its own (@reboot)"), "{got}");
    let next = l.get("/api/v1/agents/sched.test/cron?next=true").json();
    assert_eq!(next[0]["timeZone"], "Asia/Tokyo");
    assert_eq!(next[0]["jitterOffset"], offset);
    assert_eq!(next[0]["jitter"], 600);
    assert_eq!(next[1]["nextRun"], Value::Null);
}

fn runs_outside_the_selector_are_not_found(l: &ListenerProcess, dir: &Path) {
    // An operator whose selector does not reach the host: 404, as unknown.
    let db = dir.join("listener.db");
    let out = Command::new(bin())
        .args([
            "operators",
            "add",
            "dbop",
            "--role",
            "viewer",
            "--hosts",
            "tag:db",
            "--db",
        ])
        .arg(&db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_owned();
    let runs = l.wait_for(Duration::from_secs(10), |l| {
        let r = l.request_as(
            "GET",
            "/api/v1/agents/sched.test/cron/nightly/runs",
            &token,
            None,
        );
        (r.status != 401).then_some(r)
    });
    assert_eq!(runs.status, 404, "{}", runs.body);
    assert_eq!(
        runs.json()["error"],
        "no agent \"sched.test\" has registered"
    );
}
