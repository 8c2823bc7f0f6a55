//! User mode cron end to end: the agent's crontab through `crontab -`,
//! Debian's real `cron` daemon, `cc-agent cron-run`, and a hostile listener.
//! One test, in steps, because every step uses cc-agent-user's one crontab.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use cc_e2e::agent::{AGENT_USER, AgentProcess, root_and_agent_user};
use cc_e2e::listener::ListenerProcess;
use cc_e2e::{TempDir, bin, require, wait_for};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(30);
const HAND: &str = "# written by hand\nMAILTO=\"\"\n@yearly /bin/true hand-written-line\n";

fn crontab_l() -> String {
    let out = Command::new("crontab")
        .args(["-u", AGENT_USER, "-l"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn crontab_set(text: &str) {
    let mut c = Command::new("crontab")
        .args(["-u", AGENT_USER, "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    assert!(c.wait().unwrap().success());
}

fn spool_mtime() -> i64 {
    std::fs::metadata(format!("/var/spool/cron/crontabs/{AGENT_USER}"))
        .map(|m| m.mtime_nsec() + m.mtime() * 1_000_000_000)
        .unwrap_or(0)
}

fn cron_status(l: &ListenerProcess, host: &str) -> Option<Value> {
    let agents = l.get("/api/v1/agents").json();
    agents
        .as_array()?
        .iter()
        .find(|a| a["hostname"] == host)?
        .get("cronStatus")
        .cloned()
        .filter(|v| !v.is_null())
}

#[test]
fn user_crontab_real_cron_cron_run_and_a_hostile_listener() {
    let Some((uid, gid)) = root_and_agent_user() else {
        return;
    };
    if !require(
        "Debian's cron and crontab (the test command installs them)",
        Command::new("crontab").arg("-V").output().is_ok(),
    ) {
        return;
    }
    let dir = TempDir::new("cron");
    std::fs::create_dir_all(dir.path().join("listener")).unwrap();
    std::fs::create_dir_all(dir.path().join("agent")).unwrap();
    let listener = ListenerProcess::start(
        &bin("cc-listener"),
        &dir.path().join("listener"),
        "heartbeat_interval_secs = 2\n",
    );
    let host = "cron-e2e.test";
    let key = listener.add_key(host);
    crontab_set(HAND);
    let mut agent = AgentProcess::start(
        &bin("cc-agent"),
        &dir.path().join("agent"),
        &listener.ws_url(),
        &key,
        host,
        "",
        Some((uid, gid)),
    );
    wait_for(T, "the agent to connect", || {
        let a = listener.get("/api/v1/agents").json();
        a.as_array()
            .unwrap()
            .iter()
            .any(|a| a["hostname"] == host && a["connected"] == true)
            .then_some(())
    });

    let entries = json!([
        {"id": "every-minute", "schedule": "* * * * *", "command": "/bin/echo from-cron"},
        {"id": "nightly", "schedule": "0 3 * * *", "command": "/bin/echo nightly 'two words'"}
    ]);
    // 1. Entries install; the hand-written lines stay.
    entries_install(&listener, host, &agent, &entries);
    // 2. The same list again rewrites nothing.
    same_list_rewrites_nothing(&listener, host, &agent, &entries);
    // 3. Debian's cron runs the * * * * * entry; its report reaches the listener.
    cc_e2e::ensure_cron_daemon();
    real_cron_runs_the_entry(&listener, uid);
    // 4. A cron run while the agent is down is delivered when it is back.
    run_while_down_is_delivered(&listener, &mut agent);
    // 5. Runs of one job never overlap: with its lock held, a run is skipped.
    overlapping_run_is_skipped(&listener, &agent);
    agent.kill();

    // 6. A hostile listener: whatever it sends, no line of it changes the
    //    crontab's structure; valid entries still install.
    hostile_listener_cannot_inject(&dir, uid, gid);
    let tab = crontab_l();
    assert!(tab.starts_with(HAND), "{tab}");

    let _ = Command::new("crontab")
        .args(["-u", AGENT_USER, "-r"])
        .status();
}

/// Step 1: entries install as managed `cron-run` lines (no command reaches the
/// crontab); the hand-written lines stay.
fn entries_install(listener: &ListenerProcess, host: &str, agent: &AgentProcess, entries: &Value) {
    assert_eq!(
        listener
            .put(&format!("/api/v1/agents/{host}/cron"), entries)
            .status,
        200
    );
    let status = wait_for(T, "cron_status", || cron_status(listener, host));
    assert_eq!(
        status["installed"],
        json!(["every-minute", "nightly"]),
        "{status}"
    );
    let tab = crontab_l();
    assert!(tab.starts_with(HAND), "hand-written lines changed:\n{tab}");
    let config = agent.config_path();
    let line = format!(
        "* * * * * {} cron-run --config {} every-minute",
        bin("cc-agent").display(),
        config.display()
    );
    assert!(tab.contains(&line), "missing {line:?} in\n{tab}");
    assert!(
        !tab.contains("from-cron"),
        "a command reached the crontab:\n{tab}"
    );
}

/// Step 2: the same list again rewrites nothing.
fn same_list_rewrites_nothing(
    listener: &ListenerProcess,
    host: &str,
    agent: &AgentProcess,
    entries: &Value,
) {
    let before = spool_mtime();
    let applied_before = agent.log().matches("cron entries applied").count();
    assert_eq!(
        listener
            .put(&format!("/api/v1/agents/{host}/cron"), entries)
            .status,
        200
    );
    wait_for(T, "the second refresh", || {
        (agent.log().matches("cron entries applied").count() > applied_before).then_some(())
    });
    assert_eq!(
        spool_mtime(),
        before,
        "an unchanged refresh rewrote the crontab"
    );
}

/// Step 3: Debian's cron runs the `* * * * *` entry; its report reaches the
/// listener.
fn real_cron_runs_the_entry(listener: &ListenerProcess, uid: u32) {
    let report = wait_for(
        Duration::from_secs(150),
        "a report from the real cron daemon",
        || {
            let r = listener.get("/api/v1/reports?jobId=every-minute").json();
            r.as_array().and_then(|a| a.first().cloned())
        },
    );
    assert_eq!(report["kind"], "cron");
    assert_eq!(report["report"]["stdout"], "from-cron\n");
    assert_eq!(report["report"]["executingUid"], uid);
    assert_eq!(report["report"]["command"], "/bin/echo from-cron");
}

/// Step 4: a cron run while the agent is down is delivered when it is back.
fn run_while_down_is_delivered(listener: &ListenerProcess, agent: &mut AgentProcess) {
    let config = agent.config_path();
    agent.kill();
    let out = agent.run_subcommand(&["cron-run", "--config", config.to_str().unwrap(), "nightly"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    agent.restart();
    let nightly = wait_for(T, "the nightly report", || {
        listener
            .get("/api/v1/reports?jobId=nightly")
            .json()
            .as_array()
            .and_then(|a| a.first().cloned())
    });
    assert_eq!(nightly["report"]["stdout"], "nightly two words\n");
}

/// Step 5: runs of one job never overlap: with its lock held, a run is
/// skipped (exit 75, a warning that says so).
fn overlapping_run_is_skipped(listener: &ListenerProcess, agent: &AgentProcess) {
    let config = agent.config_path();
    let lock_path = agent.state().join("locks/nightly.lock");
    let lock_file = std::fs::OpenOptions::new()
        .write(true)
        .open(&lock_path)
        .unwrap();
    let held = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .unwrap();
    let out = agent.run_subcommand(&["cron-run", "--config", config.to_str().unwrap(), "nightly"]);
    assert!(out.status.success());
    drop(held);
    let skipped = wait_for(T, "the skipped run's report", || {
        let r = listener.get("/api/v1/reports?jobId=nightly").json();
        r.as_array()?
            .iter()
            .find(|r| r["report"]["exitCode"] == 75)
            .cloned()
    });
    assert!(
        skipped["report"]["warning"]
            .as_str()
            .unwrap()
            .contains("skipped"),
        "{skipped}"
    );
}

fn hostile_listener_cannot_inject(dir: &TempDir, uid: u32, gid: u32) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/agent", server.local_addr().unwrap());
        std::fs::create_dir_all(dir.path().join("hostile-agent")).unwrap();
        let _agent = AgentProcess::start(&bin("cc-agent"), &dir.path().join("hostile-agent"), &url, "cck_any", "victim.test", "", Some((uid, gid)));
        let (tcp, _) = tokio::time::timeout(T, server.accept()).await.unwrap().unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let register = ws.next().await.unwrap().unwrap();
        assert!(register.to_text().unwrap().contains("\"register\""));
        let hostile = json!({"type": "cron_refresh", "payload": [
            {"id": "fine", "schedule": "*/5 * * * *", "command": "/bin/true"},
            {"id": "newline", "schedule": "* * * * *", "command": "/bin/true\n* * * * * /bin/sh -c 'id > /tmp/pwned'"},
            {"id": "cr", "schedule": "* * * * *", "command": "/bin/true\r* * * * * /bin/evil"},
            {"id": "schedule-newline", "schedule": "* * * * *\n* * * * * /bin/evil", "command": "/bin/true"},
            {"id": "extra-field", "schedule": "* * * * * root", "command": "/bin/true"},
            {"id": "../../etc/passwd", "schedule": "@daily", "command": "/bin/true"},
            {"id": "percent", "schedule": "@daily", "command": "/bin/echo 100%"},
            {"id": "nul", "schedule": "@daily", "command": "/bin/true\u{0}x"},
            {"id": "far-jitter", "schedule": "@daily", "command": "/bin/true", "jitter": 86401},
            {"id": "huge-jitter", "schedule": "@daily", "command": "/bin/true", "jitter": u64::MAX},
            {"id": "no-timeout", "schedule": "@daily", "command": "/bin/true", "timeout": 0},
            {"id": "week-timeout", "schedule": "@daily", "command": "/bin/true", "timeout": 604801}
        ]});
        ws.send(Message::Text(hostile.to_string().into())).await.unwrap();
        let status = loop {
            let m = tokio::time::timeout(T, ws.next()).await.unwrap().unwrap().unwrap();
            // The agent pings after `register` (its backoff resets on the
            // answer): only text frames are messages.
            let Message::Text(text) = m else { continue };
            let v: Value = serde_json::from_str(text.as_str()).unwrap();
            if v["type"] == "cron_status" {
                break v["payload"].clone();
            }
        };
        assert_eq!(status["installed"], json!(["fine", "percent"]), "{status}");
        let rejected: Vec<&str> = status["rejected"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
        assert_eq!(rejected, ["newline", "cr", "schedule-newline", "extra-field", "../../etc/passwd", "nul", "far-jitter", "huge-jitter", "no-timeout", "week-timeout"]);
    });
    let tab = crontab_l();
    let managed: Vec<&str> = tab
        .lines()
        .skip_while(|l| !l.starts_with("# BEGIN croncommander"))
        .collect();
    assert_eq!(managed.len(), 4, "{tab}");
    for line in &managed[1..3] {
        assert!(
            line.contains(" cron-run --config ") && !line.contains("evil") && !line.contains('%'),
            "{line}"
        );
    }
    assert!(
        !tab.contains("pwned") && !tab.contains("/bin/evil") && !tab.contains(" root "),
        "{tab}"
    );
}
