//! An entry's `jitter` and `timeout`, end to end, on both paths a
//! scheduled run takes: the user-mode agent's `cc-agent cron-run` (as
//! cc-agent-user, its entry installed through the listener into the real
//! crontab) and the root helper's `cc-privhelper cron-run` (a signed list
//! in the helper's state). `cron-run` is called directly, as cron would,
//! rather than waiting for a minute to come round. In the `cron-daemon`
//! group: the user-mode test owns cc-agent-user's one crontab meanwhile.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

use std::process::Command;
use std::time::{Duration, Instant};

use cc_e2e::agent::{AGENT_USER, AgentProcess, root_and_agent_user};
use cc_e2e::helper::HelperProcess;
use cc_e2e::listener::ListenerProcess;
use cc_e2e::{TempDir, bin, require, wait_for};
use cc_proto::wire::jitter_offset;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);
/// The entries' jitter: small, so a run waits a few seconds at most.
const JITTER: u64 = 5;

/// An entry id whose offset on `host` is `want` seconds.
fn entry_with_offset(host: &str, want: u64) -> String {
    (0..10_000)
        .map(|i| format!("jit{i}"))
        .find(|id| jitter_offset(host, id, JITTER) == want)
        .unwrap()
}

fn latest_run(l: &ListenerProcess, host: &str, id: &str) -> Option<Value> {
    let runs = l
        .get(&format!("/api/v1/agents/{host}/cron/{id}/runs?limit=1"))
        .json();
    runs.as_array()?.first().cloned()
}

/// User mode: `cc-agent cron-run` waits this host's offset before it runs
/// and reports it (`waitedMs`); the entry's timeout stops a long run.
#[test]
fn user_mode_cron_run_waits_its_jitter_offset_and_honours_the_timeout() {
    let Some((uid, gid)) = root_and_agent_user() else {
        return;
    };
    if !require(
        "Debian's cron and crontab (the test command installs them)",
        Command::new("crontab").arg("-V").output().is_ok(),
    ) {
        return;
    }
    let dir = TempDir::new("cron-jitter");
    std::fs::create_dir_all(dir.path().join("listener")).unwrap();
    std::fs::create_dir_all(dir.path().join("agent")).unwrap();
    let listener = ListenerProcess::start(
        &bin("cc-listener"),
        &dir.path().join("listener"),
        "heartbeat_interval_secs = 2\n",
    );
    let host = "jitter-e2e.test";
    let key = listener.add_key(host);
    let agent = AgentProcess::start(
        &bin("cc-agent"),
        &dir.path().join("agent"),
        &listener.ws_url(),
        &key,
        host,
        "",
        Some((uid, gid)),
    );
    let id = entry_with_offset(host, 3);
    let entries = json!([
        {"id": id, "schedule": "@yearly", "command": "/bin/echo jittered", "jitter": JITTER},
        {"id": "long", "schedule": "@yearly", "command": "/bin/sleep 60", "timeout": 2}
    ]);
    wait_for(T, "the agent to connect", || {
        listener
            .get("/api/v1/agents")
            .json()
            .as_array()?
            .iter()
            .any(|a| a["hostname"] == host && a["connected"] == true)
            .then_some(())
    });
    let put = listener.put(&format!("/api/v1/agents/{host}/cron"), &entries);
    assert_eq!(put.status, 200, "{}", put.body);
    wait_for(T, "the entries installed", || {
        let a = listener.get("/api/v1/agents").json();
        let me = a
            .as_array()?
            .iter()
            .find(|a| a["hostname"] == host)?
            .clone();
        (me["cronStatus"]["installed"] == json!([id, "long"])).then_some(())
    });
    let config = agent.config_path();
    let config = config.to_str().unwrap();

    // The jittered entry: waits 3 s (this host's offset), then runs.
    let began = Instant::now();
    let out = agent.run_subcommand(&["cron-run", "--config", config, &id]);
    let took = began.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(took >= Duration::from_secs(3), "{took:?}");
    let run = wait_for(T, "the jittered run's report", || {
        latest_run(&listener, host, &id)
    });
    let r = &run["report"];
    assert_eq!(
        (r["exitCode"].as_i64(), r["stdout"].as_str()),
        (Some(0), Some("jittered\n")),
        "{run}"
    );
    assert_eq!(run["kind"], "cron");
    let waited = r["waitedMs"].as_u64().unwrap();
    assert_eq!(
        waited / 1000,
        3,
        "waitedMs {waited} is the offset, 3 s: {run}"
    );
    assert_eq!(r["executingUser"], AGENT_USER);
    // What the listener says this host's next run will wait: the same.
    let next = listener
        .get(&format!("/api/v1/agents/{host}/cron?next=true"))
        .json();
    assert_eq!(next[0]["jitterOffset"], 3, "{next}");

    // The long entry: its 2 s timeout stops it, not its own 60 s.
    let began = Instant::now();
    let out = agent.run_subcommand(&["cron-run", "--config", config, "long"]);
    let took = began.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(took < Duration::from_secs(20), "{took:?}");
    let run = wait_for(T, "the long run's report", || {
        latest_run(&listener, host, "long")
    });
    assert_eq!(run["report"]["exitCode"], 124, "timed out: {run}");
    assert_eq!(
        run["report"]["waitedMs"],
        Value::Null,
        "no jitter, no waitedMs: {run}"
    );
    drop(agent);
    let _ = Command::new("crontab")
        .args(["-u", AGENT_USER, "-r"])
        .status();
}

/// System mode: `cc-privhelper cron-run` of a signed entry waits this
/// host's offset (the helper's configured hostname) and keeps a report
/// that says so; the signed entry's timeout stops a long run; a second
/// run fired while the first waits is skipped (exit 75).
#[test]
fn helper_cron_run_waits_its_jitter_offset_and_honours_the_timeout() {
    let Some(user) = root_and_agent_user() else {
        return;
    };
    let dir = TempDir::new("cron-jitter-helper");
    let cfg = format!(
        "system_mode = true\n[sandbox]\nwrite_paths = [{:?}]\n",
        dir.path().join("writable")
    );
    let host = "jitter-sys.test";
    let h = HelperProcess::start_as(dir.path(), &cfg, user, host);
    let id = entry_with_offset(host, 3);
    let entries = json!([
        {"id": id, "schedule": "@yearly", "command": "/usr/bin/id -u", "jitter": JITTER},
        {"id": "long", "schedule": "@yearly", "command": "/bin/sleep 60", "timeout": 2}
    ]);
    let w = h.write_cron(&entries);
    assert_eq!(w["cron_written"]["installed"], json!([id, "long"]), "{w}");
    let cron_run = |id: &str| {
        let mut c = Command::new(bin("cc-privhelper"));
        c.args(["cron-run", "--config"]).arg(h.config()).arg(id);
        c
    };

    let began = Instant::now();
    let first = cron_run(&id).spawn().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    // Fired while the first still waits: skipped at once.
    let second = cron_run(&id).output().unwrap();
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(
        began.elapsed() < Duration::from_millis(2900),
        "{:?}",
        began.elapsed()
    );
    let first = first.wait_with_output().unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(began.elapsed() >= Duration::from_secs(3));

    let began = Instant::now();
    let long = cron_run("long").output().unwrap();
    assert!(
        long.status.success(),
        "{}",
        String::from_utf8_lossy(&long.stderr)
    );
    assert!(
        began.elapsed() < Duration::from_secs(20),
        "{:?}",
        began.elapsed()
    );

    let reports = h.request(&json!("take_reports"));
    let all = reports["reports"].as_array().unwrap();
    let of = |id: &str, exit: i64| {
        all.iter()
            .find(|r| r["jobId"] == id && r["exitCode"] == exit)
            .unwrap_or_else(|| panic!("no {id} report with exit {exit}: {reports}"))
    };
    let ran = of(&id, 0);
    assert_eq!(
        (ran["stdout"].as_str(), ran["executingUid"].as_u64()),
        (Some("0\n"), Some(0)),
        "{ran}"
    );
    assert_eq!(ran["waitedMs"].as_u64().unwrap() / 1000, 3, "{ran}");
    let skipped = of(&id, 75);
    assert_eq!(skipped["waitedMs"], Value::Null, "{skipped}");
    assert!(
        skipped["warning"]
            .as_str()
            .unwrap()
            .contains("still running"),
        "{skipped}"
    );
    let timed_out = of("long", 124);
    assert_eq!(timed_out["waitedMs"], Value::Null, "{timed_out}");
}
