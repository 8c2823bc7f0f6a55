//! System mode end to end: listener, agent (system mode, as cc-agent-user),
//! cc-privhelper (root), driven through the operator API.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

use std::path::Path;
use std::time::Duration;

use cc_e2e::agent::{AgentProcess, root_and_agent_user};
use cc_e2e::helper::HelperProcess;
use cc_e2e::listener::ListenerProcess;
use cc_e2e::{TempDir, bin, ensure_cron_daemon, wait_for};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

fn job_report(l: &ListenerProcess, host: &str, body: &Value) -> Value {
    let id = l.post_job(host, body);
    wait_for(T, "the job's report", || {
        let j = l.get(&format!("/api/v1/jobs/{id}")).json();
        (j["status"] == "done").then(|| j["report"].clone())
    })
}

#[test]
fn system_jobs_run_as_root_through_the_helper_and_fail_clearly_without_it() {
    let Some((uid, gid)) = root_and_agent_user() else {
        return;
    };
    let dir = TempDir::new("sys");
    for d in ["listener", "agent", "helper"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    // The real /etc/cron.d, under a name of this test's own (no dots),
    // removed however the test ends.
    let cron_file = "/etc/cron.d/croncommander-e2e";
    struct RemoveOnDrop(&'static str);
    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(self.0);
        }
    }
    let _cleanup = RemoveOnDrop(cron_file);
    let host = "sys-e2e.test";
    let mut helper = helper_writing_to(&dir.path().join("helper"), host, (uid, gid), cron_file);
    let (listener, agent) = system_mode_agent(&dir, host, &helper, (uid, gid));
    root_jobs_and_a_stopped_helper(&listener, &mut helper, host, uid);
    // 4. A cron list goes to /etc/cron.d through the helper, and Debian's
    //    real cron runs the entry as root; the report reaches the listener.
    cron_list_reaches_the_cron_file(&listener, host, cron_file);
    ensure_cron_daemon();
    scheduled_report_is_roots(&listener);
    drop(agent);
}

/// The helper for `host`, its cron file at `cron_file`.
fn helper_writing_to(
    hdir: &Path,
    host: &str,
    (uid, gid): (u32, u32),
    cron_file: &str,
) -> HelperProcess {
    let helper_cfg = format!(
        "system_mode = true\n[sandbox]\nwrite_paths = [{:?}]\nlandlock = \"required\"\n",
        hdir.join("writable")
    );
    // HelperProcess points cron_file into its dir; override for this test.
    let mut helper = HelperProcess::start_as(hdir, &helper_cfg, (uid, gid), host);
    let cfg = std::fs::read_to_string(hdir.join("etc/helper.toml")).unwrap();
    let cfg = cfg.replace(
        &format!("cron_file = {:?}", hdir.join("cron.d/croncommander")),
        &format!("cron_file = {cron_file:?}"),
    );
    std::fs::write(hdir.join("etc/helper.toml"), cfg).unwrap();
    helper.restart();
    helper
}

/// A listener that signs system-mode work with a key the helper trusts,
/// and an agent in system mode through `helper`, registered as such.
fn system_mode_agent(
    dir: &TempDir,
    host: &str,
    helper: &HelperProcess,
    (uid, gid): (u32, u32),
) -> (ListenerProcess, AgentProcess) {
    // The listener signs system-mode work on the API's behalf with a key
    // the helper trusts (the operator-signed path: tests/tests/signed.rs).
    let key_file = dir.path().join("listener/signing.key");
    std::fs::write(&key_file, &cc_e2e::signing::operator().0).unwrap();
    let listener = ListenerProcess::start(
        &bin("cc-listener"),
        &dir.path().join("listener"),
        &format!("heartbeat_interval_secs = 2\nsigning_key_file = {key_file:?}\n"),
    );
    let key = listener.add_key(host);
    let agent_extra = format!(
        "execution_mode = \"system\"\nhelper_socket = {:?}\n",
        helper.socket(),
    );
    let agent = AgentProcess::start(
        &bin("cc-agent"),
        &dir.path().join("agent"),
        &listener.ws_url(),
        &key,
        host,
        &agent_extra,
        Some((uid, gid)),
    );
    let me = wait_for(T, "registration", || {
        let a = listener.get("/api/v1/agents").json();
        a.as_array()
            .unwrap()
            .iter()
            .find(|a| a["hostname"] == host && a["connected"] == true)
            .cloned()
    });
    assert_eq!(
        (me["executionMode"].as_str(), me["isRoot"].as_bool()),
        (Some("system"), Some(false))
    );
    (listener, agent)
}

/// Steps 1 to 3: a system job runs as root, stamped by the helper; with
/// the helper stopped it fails with a report that says why; with the
/// helper back, system jobs work again.
fn root_jobs_and_a_stopped_helper(
    listener: &ListenerProcess,
    helper: &mut HelperProcess,
    host: &str,
    uid: u32,
) {
    // 1. A system job runs as root, stamped by the helper.
    let r = job_report(
        listener,
        host,
        &json!({"command": "/usr/bin/id", "args": ["-u"]}),
    );
    assert_eq!(
        (r["exitCode"].as_i64(), r["stdout"].as_str()),
        (Some(0), Some("0\n")),
        "{r}"
    );
    assert_eq!(
        (r["executingUid"].as_u64(), r["executingUser"].as_str()),
        (Some(0), Some("root"))
    );

    // 2. Helper stopped: the job fails with a report that says why.
    let _ = helper.child.kill();
    let _ = helper.child.wait();
    let r = job_report(listener, host, &json!({"command": "/bin/true"}));
    assert_eq!(r["exitCode"], 126, "{r}");
    assert!(
        r["warning"]
            .as_str()
            .unwrap()
            .contains("root helper is not reachable"),
        "{r}"
    );
    assert_eq!(r["executingUid"], uid, "nothing ran as root");

    // 3. Back again: system jobs work again.
    helper.restart();
    let r = job_report(
        listener,
        host,
        &json!({"command": "/usr/bin/id", "args": ["-u"]}),
    );
    assert_eq!(r["executingUid"], 0, "{r}");
}

/// The cron list lands in the cron file as a root `cron-run` line.
fn cron_list_reaches_the_cron_file(listener: &ListenerProcess, host: &str, cron_file: &str) {
    let put = listener.put(
        &format!("/api/v1/agents/{host}/cron"),
        &json!([{"id": "sys-every-minute", "schedule": "* * * * *", "command": "/usr/bin/id -un"}]),
    );
    assert_eq!(put.status, 200);
    wait_for(T, "the cron file", || {
        std::path::Path::new(cron_file).exists().then_some(())
    });
    let text = std::fs::read_to_string(cron_file).unwrap();
    assert!(
        text.contains("* * * * * root ")
            && text.contains(" cron-run --config ")
            && text.ends_with(" sys-every-minute\n"),
        "{text}"
    );
}

/// Debian's real cron runs the entry as root; the report reaches the
/// listener.
fn scheduled_report_is_roots(listener: &ListenerProcess) {
    ensure_cron_daemon();
    let report = wait_for(
        Duration::from_secs(150),
        "a scheduled system job's report",
        || {
            let r = listener
                .get("/api/v1/reports?jobId=sys-every-minute")
                .json();
            r.as_array().and_then(|a| a.first().cloned())
        },
    );
    assert_eq!(report["kind"], "cron");
    assert_eq!(report["report"]["executingUid"], 0, "{report}");
    assert_eq!(report["report"]["stdout"], "root\n");
}
