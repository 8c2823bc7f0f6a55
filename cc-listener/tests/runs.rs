//! Fan-out: one `POST /api/v1/runs` aimed at hosts and tags makes one job
//! per matched host; a batch bounds how many run at once. Test agents
//! (WebSocket clients) answer each job after a delay.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

mod common;

use std::time::Duration;

use cc_testkit::TempDir;
use cc_testkit::listener::ListenerProcess;
use cc_testkit::ws;
use serde_json::{Value, json};

use common::bin;

/// A test agent answering every job after `delay` with exit code 0, or 3
/// for a job whose first arg is "fail".
async fn agent(l: &ListenerProcess, host: &str, tags: &[&str], delay: Duration) {
    ws::answering_agent(l, host, tags, delay, |m| {
        if m["payload"]["args"][0] == "fail" {
            3
        } else {
            0
        }
    })
    .await;
}

fn settled(l: &ListenerProcess, run: &str, total: usize) -> Value {
    l.wait_for(Duration::from_secs(30), |l| {
        let r = l.get(&format!("/api/v1/runs/{run}")).json();
        (r["counts"]["done"].as_u64() == Some(total as u64)).then_some(r)
    })
}

fn hosts_of(accepted: &Value) -> Vec<String> {
    accepted["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["hostname"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_reaches_exactly_the_hosts_its_tags_and_names_select() {
    let dir = TempDir::new("runs-tags");
    let l = ListenerProcess::start(bin(), dir.path(), "");
    let fast = Duration::from_millis(10);
    agent(&l, "a.test", &["db", "eu"], fast).await;
    agent(&l, "b.test", &["db", "eu", "big"], fast).await;
    agent(&l, "c.test", &["db", "us"], fast).await;
    agent(&l, "d.test", &["web", "eu"], fast).await;
    agent(&l, "e.test", &[], fast).await;
    l.wait_connected_count(5);

    // Every tag given must be carried.
    let r = l.post(
        "/api/v1/runs",
        &json!({"tags": ["db", "eu"], "command": "/bin/true"}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let accepted = r.json();
    assert_eq!(hosts_of(&accepted), ["a.test", "b.test"]);
    let run = accepted["runId"].as_str().unwrap().to_owned();
    let view = settled(&l, &run, 2);
    assert_eq!(view["succeeded"], 2);
    assert_eq!(view["hosts"][0]["exitCode"], 0);
    assert_eq!(view["hosts"][0]["durationMs"], 3);

    // Names and tags together: the union, each host once.
    let r = l.post(
        "/api/v1/runs",
        &json!({"tags": ["db"], "hosts": ["E.test", "a.test"], "command": "/bin/echo", "args": ["fail"]}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let accepted = r.json();
    assert_eq!(
        hosts_of(&accepted),
        ["a.test", "b.test", "c.test", "e.test"]
    );
    let view = settled(&l, accepted["runId"].as_str().unwrap(), 4);
    assert_eq!(view["failed"], 4, "exit code 3 everywhere: {view}");

    // Nothing matches: a 400 that says so; an unknown name: a 400 naming it.
    let r = l.post(
        "/api/v1/runs",
        &json!({"tags": ["db", "web"], "command": "/bin/true"}),
    );
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("no host matches"),
        "{}",
        r.body
    );
    let r = l.post(
        "/api/v1/runs",
        &json!({"hosts": ["nowhere.test"], "command": "/bin/true"}),
    );
    assert_eq!(r.status, 400);
    assert!(r.body.contains("nowhere.test"), "{}", r.body);
    for bad in [
        json!({"command": "/bin/true"}),
        json!({"tags": ["db"]}),
        json!({"tags": ["db"], "command": "/bin/true", "batch": 0}),
        json!({"tags": ["a b"], "command": "/bin/true"}),
        json!({"tags": ["db"], "command": "/bin/true", "shell": true}),
    ] {
        assert_eq!(l.post("/api/v1/runs", &bad).status, 400, "{bad}");
    }
    assert_eq!(l.get("/api/v1/runs/no-such-run").status, 404);
}

/// `batch: 2` over 6 hosts whose jobs take 300 ms: never more than 2 at
/// once, and the next host starts as one reports (not at the next sweep,
/// every 2 s here), shown from the jobs' own sent and finished times.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_never_has_more_than_its_size_running() {
    let dir = TempDir::new("runs-batch");
    let l = ListenerProcess::start(bin(), dir.path(), "sweep_interval_ms = 2000\n");
    for i in 0..6 {
        agent(
            &l,
            &format!("b{i}.test"),
            &["batch"],
            Duration::from_millis(300),
        )
        .await;
    }
    l.wait_connected_count(6);
    let r = l.post(
        "/api/v1/runs",
        &json!({"tags": ["batch"], "command": "/bin/true", "batch": 2}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let accepted = r.json();
    let run = accepted["runId"].as_str().unwrap().to_owned();
    let early = l.get(&format!("/api/v1/runs/{run}")).json();
    assert_eq!(early["counts"]["held"], 4, "{early}");
    settled(&l, &run, 6);
    let mut spans: Vec<(String, String)> = accepted["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            let job = l
                .get(&format!("/api/v1/jobs/{}", j["jobId"].as_str().unwrap()))
                .json();
            (
                job["sentAt"].as_str().unwrap().to_owned(),
                job["finishedAt"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    spans.sort();
    // RFC 3339 in UTC with milliseconds sorts as time does.
    let mut most = 0;
    for (start, _) in &spans {
        let running = spans
            .iter()
            .filter(|(s, f)| s <= start && start < f)
            .count();
        most = most.max(running);
    }
    assert_eq!(
        most, 2,
        "at most 2 at once, and the batch was used: {spans:?}"
    );
    let ms = |t: &str| {
        chrono::DateTime::parse_from_rfc3339(t)
            .unwrap()
            .timestamp_millis()
    };
    for (start, _) in spans.iter().skip(2) {
        let gap = spans
            .iter()
            .map(|(_, f)| ms(start) - ms(f))
            .filter(|g| *g >= 0)
            .min()
            .unwrap();
        assert!(
            gap < 500,
            "a held job started {gap} ms after the report that made room: {spans:?}"
        );
    }
}

/// `ccctl run --tag …` fans out through the API, prints one line per host,
/// and exits 0 only when every host succeeded; `run status` shows a run
/// later; JSON for scripts; no progress line when stderr is not a terminal.
#[tokio::test(flavor = "multi_thread")]
async fn ccctl_runs_by_tag_and_exits_non_zero_when_a_host_fails() {
    let dir = TempDir::new("runs-ccctl");
    let l = ListenerProcess::start(bin(), dir.path(), "");
    let fast = Duration::from_millis(10);
    agent(&l, "a.test", &["db", "eu"], fast).await;
    agent(&l, "b.test", &["db", "eu"], fast).await;
    agent(&l, "c.test", &["db", "us"], fast).await;
    l.wait_connected_count(3);
    let ok = l.ccctl(
        dir.path(),
        &["run", "--tag", "db", "--tag", "eu", "--", "/bin/true"],
    );
    let out = String::from_utf8_lossy(&ok.stdout);
    let err = String::from_utf8_lossy(&ok.stderr);
    assert!(ok.status.success(), "{out}\n{err}");
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(
        rows[0].starts_with("a.test") && rows[1].starts_with("b.test"),
        "{out}"
    );
    assert!(
        rows.iter().all(|r| r.contains("done") && r.contains(" 0 ")),
        "{out}"
    );
    assert!(
        !err.contains("follow it later"),
        "a run that ended needs no following: {err}"
    );
    assert!(!err.contains('\r'), "no progress line in a pipe: {err:?}");

    let bad = l.ccctl(
        dir.path(),
        &[
            "run",
            "--tag",
            "db",
            "--batch",
            "1",
            "--output",
            "json",
            "--",
            "/bin/echo",
            "fail",
        ],
    );
    assert_eq!(bad.status.code(), Some(1), "a failed host makes ccctl fail");
    let v: Value = serde_json::from_slice(&bad.stdout).unwrap();
    let hosts: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["host"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, ["a.test", "b.test", "c.test"]);
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .all(|x| x["report"]["exitCode"] == 3),
        "{v}"
    );

    let none = l.ccctl(dir.path(), &["run", "--tag", "nope", "--", "/bin/true"]);
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("no host matches"));

    let later = l.ccctl(
        dir.path(),
        &["run", "--no-wait", "c.test", "--", "/bin/true"],
    );
    let text = String::from_utf8_lossy(&later.stdout).into_owned();
    let id = text
        .lines()
        .next()
        .unwrap()
        .strip_prefix("run ")
        .unwrap()
        .to_owned();
    let watched = l.ccctl(dir.path(), &["run", "watch", &id]);
    assert!(
        watched.status.success(),
        "{}",
        String::from_utf8_lossy(&watched.stderr)
    );
    let status = l.ccctl(dir.path(), &["run", "status", &id]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("c.test"));

    // On a terminal (a pty from util-linux `script`): the progress line.
    let cmd = format!(
        "{} --url http://{} --token-file {} run --tag db -- /bin/true",
        cc_testkit::bin("ccctl").display(),
        l.admin_addr,
        dir.path().join("ccctl-token").display()
    );
    let tty = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .env_remove("HOME")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{shown}");
    assert!(
        shown.contains("\r3 done (0 failed), 0 lost, 0 expired of 3"),
        "a progress line on a terminal: {shown:?}"
    );
}

/// A run of operator-signed root work: one statement per host names the
/// host and the job id; the listener relays each statement as it was
/// signed, batches them like any run, and refuses what it can see is wrong
/// (another field beside the statements, two commands, one host twice, a
/// broken signature, a host registered in user mode). Whether the key is
/// trusted is each host's to decide.
#[tokio::test(flavor = "multi_thread")]
async fn a_signed_run_relays_each_hosts_statement_and_refuses_what_is_malformed() {
    use cc_testkit::signing::{exec_statement, operator, sign_exec};
    let dir = TempDir::new("runs-signed");
    let l = ListenerProcess::start(bin(), dir.path(), "");
    let key = &operator().1;
    let hosts = ["s1.test", "s2.test", "s3.test"];
    for h in hosts {
        ws::answering_agent_in("system", &l, h, &[], Duration::from_millis(300), |_| 0).await;
    }
    // And one in user mode, where root work would not run as root.
    agent(&l, "u1.test", &[], Duration::from_millis(300)).await;
    l.wait_connected_count(4);
    let job =
        |id: &str| json!({"jobId": id, "command": "/usr/bin/id", "args": ["-u"], "timeout": 30});
    let statements: Vec<Value> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            json!(sign_exec(
                &exec_statement(&job(&format!("signed-{i}")), h),
                key
            ))
        })
        .collect();

    let refused = |body: Value, why: &str| {
        let r = l.post("/api/v1/runs", &body);
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert!(r.body.contains(why), "{why:?} in {}", r.body);
    };
    refused(
        json!({"signed": statements, "hosts": ["s1.test"]}),
        "give no hosts or tags",
    );
    refused(
        json!({"signed": statements, "command": "/bin/true"}),
        "are its statements'",
    );
    refused(
        json!({"signed": [statements[0].clone(), statements[0].clone()]}),
        "two statements for \\\"s1.test\\\"",
    );
    let other = json!(sign_exec(
        &exec_statement(
            &json!({"jobId": "x-1", "command": "/bin/true", "args": [], "timeout": 30}),
            "s2.test"
        ),
        key
    ));
    refused(
        json!({"signed": [statements[0].clone(), other]}),
        "the same command, args and timeout",
    );
    let mut forged = statements[1].clone();
    let sig = forged["signature"].as_str().unwrap().to_owned();
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    forged["signature"] = json!(format!("{flipped}{}", &sig[1..]));
    refused(json!({"signed": [forged]}), "signature");
    let for_user_mode = json!(sign_exec(&exec_statement(&job("signed-u"), "u1.test"), key));
    refused(
        json!({"signed": [for_user_mode]}),
        "u1.test registered in user mode",
    );

    let accepted = l
        .post("/api/v1/runs", &json!({"signed": statements, "batch": 1}))
        .json();
    let mut ids: Vec<&str> = accepted["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["jobId"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        ["signed-0", "signed-1", "signed-2"],
        "the statements' job ids"
    );
    let run = accepted["runId"].as_str().unwrap();
    let first = l.get(&format!("/api/v1/runs/{run}")).json();
    assert_eq!(first["counts"]["held"], 2, "batch 1: {first}");
    let r = settled(&l, run, 3);
    assert_eq!(r["command"], "/usr/bin/id");
    let j = l.get("/api/v1/jobs/signed-1").json();
    assert_eq!(j["status"], "done");
    let again = l.post("/api/v1/runs", &json!({"signed": [statements[2].clone()]}));
    assert_eq!(again.status, 409, "a job id is used once: {}", again.body);
}
