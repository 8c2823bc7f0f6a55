//! Signed root work: the helper runs only what a key its own config trusts
//! signed, for this host, recently, once. The real `cc-privhelper` as root,
//! spoken to as `cc-agent-user`; then the whole system with `ccctl`.
//!
//! Every refusal is checked by the reason it gives, so a test cannot pass on
//! the wrong refusal.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cc_e2e::agent::{AgentProcess, root_and_agent_user};
use cc_e2e::helper::HelperProcess;
use cc_e2e::listener::ListenerProcess;
use cc_e2e::signing::{self, operator};
use cc_e2e::{TempDir, bin, wait_for};
use cc_proto::Timestamp;
use cc_proto::sign::{self as proto_sign, ExecStatement, Signed};
use ring::signature::Ed25519KeyPair;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

fn setup(name: &str, extra: &str) -> Option<(TempDir, HelperProcess)> {
    let user = root_and_agent_user()?;
    let dir = TempDir::new(name);
    let cfg = format!(
        "system_mode = true\n{extra}[sandbox]\nwrite_paths = [{:?}]\n",
        dir.path().join("writable")
    );
    let h = HelperProcess::start(dir.path(), &cfg, user);
    Some((dir, h))
}

fn job(id: &str, command: &str, args: &[&str]) -> Value {
    json!({"jobId": id, "command": command, "args": args, "timeout": 30})
}

/// The refusal's message, or a panic naming what came back instead.
fn refusal(resp: &Value) -> String {
    assert_eq!(resp["refused"]["code"], "signature_refused", "{resp}");
    resp["refused"]["message"].as_str().unwrap().to_owned()
}

fn at(offset_secs: i64) -> String {
    let ms = Timestamp::now().unix_millis() + offset_secs * 1000;
    Timestamp::from_datetime(chrono::DateTime::from_timestamp_millis(ms).unwrap()).to_string()
}

#[test]
fn a_job_signed_by_a_trusted_key_runs_as_root_and_nothing_else_does() {
    let Some((_d, mut h)) = setup("sg-exec", "") else {
        return;
    };
    let op = &operator().1;
    let ok = h.exec(&job("ok-1", "/usr/bin/id", &["-u"]));
    assert_eq!(ok["exec_result"]["exitCode"], 0, "{ok}");
    assert_eq!(ok["exec_result"]["stdout"], "0\n");
    assert_eq!(ok["exec_result"]["executingUid"], 0);

    let (_, stranger) = signing::new_key();
    for (what, j, signed, reason) in refused_statements(&h, op, &stranger) {
        let msg = refusal(&h.exec_signed(&j, signed.as_ref()));
        assert!(msg.contains(reason), "{what}: {msg}");
    }

    // A forged signature (another statement's) and a truncated one.
    let good = signing::sign_exec(&statement(&h, "f-1"), op);
    let other = signing::sign_exec(&statement(&h, "f-2"), op);
    let forged = Signed {
        signature: other.signature.clone(),
        ..good.clone()
    };
    let msg = refusal(&h.exec_signed(&job("f-1", "/usr/bin/id", &["-u"]), Some(&forged)));
    assert!(msg.contains("bad signature"), "{msg}");
    let truncated = Signed {
        signature: good.signature[..44].to_owned(),
        ..good.clone()
    };
    let msg = refusal(&h.exec_signed(&job("f-1", "/usr/bin/id", &["-u"]), Some(&truncated)));
    assert!(msg.contains("64 bytes"), "{msg}");

    // The same statement twice: refused as a replay, also after a restart.
    let once = signing::sign_exec(&statement(&h, "r-1"), op);
    let j = job("r-1", "/usr/bin/id", &["-u"]);
    assert_eq!(h.exec_signed(&j, Some(&once))["exec_result"]["exitCode"], 0);
    let msg = refusal(&h.exec_signed(&j, Some(&once)));
    assert!(msg.contains("replayed"), "{msg}");
    h.restart();
    let msg = refusal(&h.exec_signed(&j, Some(&once)));
    assert!(msg.contains("replayed"), "after a restart: {msg}");

    refusals_are_audited(&h);
}

/// The statement `job(id, "/usr/bin/id", ["-u"])` on `h`'s host, valid for
/// the next hour.
fn statement(h: &HelperProcess, id: &str) -> ExecStatement {
    signing::exec_statement(&job(id, "/usr/bin/id", &["-u"]), &h.hostname)
}

/// Jobs the helper must refuse: (what, the job, its signature, the reason
/// the refusal names).
fn refused_statements(
    h: &HelperProcess,
    op: &Ed25519KeyPair,
    stranger: &Ed25519KeyPair,
) -> Vec<(&'static str, Value, Option<Signed>, &'static str)> {
    let base = |id: &str| statement(h, id);
    vec![
        (
            "unsigned",
            job("u-1", "/usr/bin/id", &["-u"]),
            None,
            "unsigned",
        ),
        (
            "signed by an unknown key",
            job("k-1", "/usr/bin/id", &["-u"]),
            Some(signing::sign_exec(&base("k-1"), stranger)),
            "unknown key",
        ),
        (
            "another host's statement",
            job("h-1", "/usr/bin/id", &["-u"]),
            Some(signing::sign_exec(
                &ExecStatement {
                    host: "other.test".into(),
                    ..base("h-1")
                },
                op,
            )),
            "wrong host",
        ),
        (
            "expired",
            job("e-1", "/usr/bin/id", &["-u"]),
            Some(signing::sign_exec(
                &ExecStatement {
                    not_before: at(-7200),
                    expires_at: at(-3600),
                    ..base("e-1")
                },
                op,
            )),
            "expired",
        ),
        (
            "not yet valid",
            job("n-1", "/usr/bin/id", &["-u"]),
            Some(signing::sign_exec(
                &ExecStatement {
                    not_before: at(3600),
                    expires_at: at(7200),
                    ..base("n-1")
                },
                op,
            )),
            "not yet valid",
        ),
        (
            "valid for more than a day",
            job("l-1", "/usr/bin/id", &["-u"]),
            Some(signing::sign_exec(
                &ExecStatement {
                    not_before: at(-60),
                    expires_at: at(25 * 3600),
                    ..base("l-1")
                },
                op,
            )),
            "more than 24 h",
        ),
        (
            "argv changed after signing",
            job("a-1", "/usr/bin/id", &["-g"]),
            Some(signing::sign_exec(&base("a-1"), op)),
            "argv",
        ),
        (
            "program changed after signing",
            job("a-2", "/usr/bin/whoami", &[]),
            Some(signing::sign_exec(&base("a-2"), op)),
            "argv",
        ),
        (
            "timeout changed after signing",
            json!({"jobId": "t-1", "command": "/usr/bin/id", "args": ["-u"], "timeout": 31}),
            Some(signing::sign_exec(&base("t-1"), op)),
            "timeout",
        ),
    ]
}

/// Each refusal is in the audit log with the key it named.
fn refusals_are_audited(h: &HelperProcess) {
    let log = h.log();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("decision=\"refused\"") && l.contains("op=\"exec\""))
        .collect();
    assert!(refused.len() >= 12, "{log}");
    assert!(
        refused
            .iter()
            .filter(|l| !l.contains("unsigned"))
            .all(|l| l.contains("key=\"ed25519:") || l.contains("key=\"suite-operator\"")),
        "{}",
        refused.join("\n")
    );
}

#[test]
fn revoking_a_key_refuses_its_jobs_and_its_installed_cron_entries() {
    let (alice_pem, alice) = signing::new_key();
    let _ = alice_pem;
    let line = signing::trusted_line(&alice, "alice");
    let Some((_d, h)) = setup("sg-revoke", "") else {
        return;
    };
    // Trust alice too, then restart with that config.
    let cfg = std::fs::read_to_string(h.config()).unwrap();
    let with_alice = cfg.replace("trusted_keys = [", &format!("trusted_keys = [{line:?}, "));
    std::fs::write(h.config(), &with_alice).unwrap();
    let mut h = h;
    h.restart();
    let j = job("alice-1", "/usr/bin/id", &["-u"]);
    let st = signing::exec_statement(&j, &h.hostname);
    assert_eq!(
        h.exec_signed(&j, Some(&signing::sign_exec(&st, &alice)))["exec_result"]["exitCode"],
        0
    );
    let entries = json!([{"id": "alice-cron", "schedule": "@yearly", "command": "/usr/bin/id -u"}]);
    let cst = signing::cron_statement(&entries, &h.hostname, signing::next_generation());
    let w = h.write_cron_signed(&entries, Some(&signing::sign_cron(&cst, &alice)));
    assert_eq!(w["cron_written"]["installed"], json!(["alice-cron"]), "{w}");

    // Alice's key goes; SIGHUP.
    std::fs::write(h.config(), &cfg).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(h.child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    wait_for(T, "the keys reloaded", || {
        h.log().contains("trusted keys reloaded").then_some(())
    });
    let j = job("alice-2", "/usr/bin/id", &["-u"]);
    let st = signing::exec_statement(&j, &h.hostname);
    let msg = refusal(&h.exec_signed(&j, Some(&signing::sign_exec(&st, &alice))));
    assert!(msg.contains("unknown key"), "{msg}");
    // Her installed entry runs no more: the scheduled run is refused and
    // reported.
    let out = Command::new(bin("cc-privhelper"))
        .args(["cron-run", "--config"])
        .arg(h.config())
        .arg("alice-cron")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reports = h.request(&json!("take_reports"));
    let r = &reports["reports"][0];
    assert_eq!(
        (r["jobId"].as_str(), r["exitCode"].as_i64()),
        (Some("alice-cron"), Some(126)),
        "{reports}"
    );
    assert!(
        r["warning"].as_str().unwrap().contains("unknown key"),
        "{r}"
    );
}

#[test]
fn cron_lists_must_be_signed_newer_and_left_alone() {
    let Some((dir, h)) = setup("sg-cron", "") else {
        return;
    };
    let op = &operator().1;
    let entries = json!([{"id": "nightly", "schedule": "0 3 * * *", "command": "/usr/bin/id -u"}]);
    let msg = refusal(&h.write_cron_signed(&entries, None));
    assert!(msg.contains("unsigned"), "{msg}");
    let g = signing::next_generation();
    let newer = signing::sign_cron(&signing::cron_statement(&entries, &h.hostname, g + 10), op);
    let w = h.write_cron_signed(&entries, Some(&newer));
    assert_eq!(w["cron_written"]["installed"], json!(["nightly"]), "{w}");
    // The listener pushes the same list on every reconnect: accepted.
    let again = h.write_cron_signed(&entries, Some(&newer));
    assert_eq!(
        again["cron_written"]["installed"],
        json!(["nightly"]),
        "{again}"
    );
    // An older generation is a rollback.
    let older = signing::sign_cron(&signing::cron_statement(&json!([]), &h.hostname, g), op);
    let msg = refusal(&h.write_cron_signed(&json!([]), Some(&older)));
    assert!(msg.contains("rolled back"), "{msg}");
    // A statement for another host.
    let other = signing::sign_cron(&signing::cron_statement(&entries, "other.test", g + 20), op);
    assert!(refusal(&h.write_cron_signed(&entries, Some(&other))).contains("wrong host"));

    // The state file edited by hand (root's file, an attacker who got
    // that far): the scheduled run refuses and says why.
    let state_path = dir.path().join("state/system-cron.json");
    let mut state: Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    let mut stmt: Value = serde_json::from_slice(
        &proto_sign::statement_bytes(&serde_json::from_value(state["signed"].clone()).unwrap())
            .unwrap(),
    )
    .unwrap();
    stmt["entries"][0]["command"] = json!("/bin/sh -c 'id -u > /tmp/pwned'");
    use base64::Engine as _;
    state["signed"]["statement"] =
        json!(base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&stmt).unwrap()));
    std::fs::write(&state_path, state.to_string()).unwrap();
    let out = Command::new(bin("cc-privhelper"))
        .args(["cron-run", "--config"])
        .arg(h.config())
        .arg("nightly")
        .output()
        .unwrap();
    assert!(out.status.success());
    let reports = h.request(&json!("take_reports"));
    let r = &reports["reports"][0];
    assert_eq!(r["exitCode"], 126, "{reports}");
    assert!(
        r["warning"].as_str().unwrap().contains("bad signature"),
        "{r}"
    );
    assert!(!std::path::Path::new("/tmp/pwned").exists());
}

#[test]
fn a_user_mode_job_replaying_a_captured_statement_gets_nothing() {
    let Some((_d, h)) = setup("sg-replay", "") else {
        return;
    };
    let op = &operator().1;
    let j = job("cap-1", "/usr/bin/id", &["-u"]);
    let signed = signing::sign_exec(&signing::exec_statement(&j, &h.hostname), op);
    let req = json!({"exec": {"execute_job": j.to_string(), "signed": serde_json::to_string(&signed).unwrap()}});
    // The agent relays it once: it runs.
    assert_eq!(h.request(&req)["exec_result"]["exitCode"], 0);
    // A user-mode job (any process of the agent's uid) sends the captured
    // bytes again, or under another job's argv.
    let (answer, _) = h.exchange_as(h.agent, req.to_string().as_bytes());
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert!(refusal(&v).contains("replayed"), "{v}");
    let mut other = j.clone();
    other["args"] = json!(["-n"]);
    let req2 = json!({"exec": {"execute_job": other.to_string(), "signed": serde_json::to_string(&signed).unwrap()}});
    let (answer, _) = h.exchange_as(h.agent, req2.to_string().as_bytes());
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert!(refusal(&v).contains("argv"), "{v}");
}

#[test]
fn only_an_operators_signature_makes_root_work_through_the_whole_system() {
    let Some((uid, gid)) = root_and_agent_user() else {
        return;
    };
    let dir = TempDir::new("sg-e2e");
    let host = "signed-e2e.test";
    let (helper, mut listener, _agent) = system_host(&dir, host, (uid, gid));
    listeners_signatures_are_refused(&mut listener, host);
    // The operator signs with ccctl: root.
    let op = dir.path().join("op");
    std::fs::write(op.join("operator.key"), &operator().0).unwrap();
    operator_signs_a_root_job(&listener, &op, host);
    signed_root_cron_entry(&listener, &op, host, &helper);
    let _ = helper;
}

/// A helper, a listener with a key of its own (which the helper does not
/// trust) and an agent in system mode on `host`, connected.
fn system_host(
    dir: &TempDir,
    host: &str,
    (uid, gid): (u32, u32),
) -> (HelperProcess, ListenerProcess, AgentProcess) {
    for d in ["listener", "agent", "helper", "op"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    let hdir = dir.path().join("helper");
    let helper = HelperProcess::start_as(
        &hdir,
        &format!(
            "system_mode = true\n[sandbox]\nwrite_paths = [{:?}]\n",
            hdir.join("writable")
        ),
        (uid, gid),
        host,
    );
    // The listener has a key of its own, which the helper does not trust.
    let (listener_pem, _) = signing::new_key();
    std::fs::write(dir.path().join("listener/own.key"), listener_pem).unwrap();
    let listener = ListenerProcess::start(
        &bin("cc-listener"),
        &dir.path().join("listener"),
        &format!(
            "heartbeat_interval_secs = 2\nsigning_key_file = {:?}\n",
            dir.path().join("listener/own.key")
        ),
    );
    let key = listener.add_key(host);
    let agent = AgentProcess::start(
        &bin("cc-agent"),
        &dir.path().join("agent"),
        &listener.ws_url(),
        &key,
        host,
        &format!(
            "execution_mode = \"system\"\nhelper_socket = {:?}\n",
            helper.socket()
        ),
        Some((uid, gid)),
    );
    wait_for(T, "registration", || {
        let a = listener.get("/api/v1/agents").json();
        a.as_array()?
            .iter()
            .any(|a| a["hostname"] == host && a["connected"] == true)
            .then_some(())
    });
    (helper, listener, agent)
}

/// The job's report, once done.
fn report_of(listener: &ListenerProcess, host: &str, body: &Value) -> Value {
    let id = listener.post_job(host, body);
    wait_for(T, "the report", || {
        let j = listener.get(&format!("/api/v1/jobs/{id}")).json();
        (j["status"] == "done").then(|| j["report"].clone())
    })
}

/// Signed by the listener's own key, or not signed at all: refused, and
/// reported.
fn listeners_signatures_are_refused(listener: &mut ListenerProcess, host: &str) {
    // The listener signs with its own key: refused, reported.
    let r = report_of(
        listener,
        host,
        &json!({"command": "/usr/bin/id", "args": ["-u"]}),
    );
    assert_eq!(r["exitCode"], 126, "{r}");
    assert!(
        r["warning"].as_str().unwrap().contains("unknown key"),
        "{r}"
    );
    // No key at all: unsigned, refused, reported.
    listener.set_extra("heartbeat_interval_secs = 2\n");
    listener.kill_and_restart();
    wait_for(T, "reconnection", || {
        let a = listener.get("/api/v1/agents").json();
        a.as_array()?
            .iter()
            .any(|a| a["hostname"] == host && a["connected"] == true)
            .then_some(())
    });
    let r = report_of(
        listener,
        host,
        &json!({"command": "/usr/bin/id", "args": ["-u"]}),
    );
    assert_eq!(r["exitCode"], 126, "{r}");
    assert!(r["warning"].as_str().unwrap().contains("unsigned"), "{r}");
}

/// The operator signs with ccctl: the job runs as root.
fn operator_signs_a_root_job(listener: &ListenerProcess, op: &Path, host: &str) {
    let out = listener.ccctl(
        op,
        &[
            "run",
            host,
            "--system",
            "--key",
            op.join("operator.key").to_str().unwrap(),
            "--output",
            "json",
            "--",
            "/usr/bin/id",
            "-u",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v[0]["report"]["executingUid"], 0, "{v}");
    assert_eq!(v[0]["report"]["stdout"], "0\n");
}

/// A signed root cron entry, through the API to the helper's file; and
/// ccctl's own checks: a bad line is named, and nothing is sent.
fn signed_root_cron_entry(
    listener: &ListenerProcess,
    op: &Path,
    host: &str,
    helper: &HelperProcess,
) {
    // And a signed root cron entry, through the API to the helper's file.
    let list = op.join("cron.txt");
    std::fs::write(&list, "# nightly\nroot-nightly 0 3 * * * /usr/bin/id -u\n").unwrap();
    let out = listener.ccctl(
        op,
        &[
            "cron",
            "set",
            host,
            list.to_str().unwrap(),
            "--system",
            "--key",
            op.join("operator.key").to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(T, "the signed cron entry installed", || {
        let text = std::fs::read_to_string(helper.cron_file()).ok()?;
        text.lines()
            .any(|l| l.ends_with(" root-nightly") && l.starts_with("0 3 * * * root "))
            .then_some(())
    });
    // ccctl's own checks: a bad line is named, and nothing is sent.
    std::fs::write(&list, "ok @daily /bin/true\nbad 61 * * * * /bin/true\n").unwrap();
    let out = listener.ccctl(op, &["cron", "set", host, list.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2"));
}

/// Issue "Hostile peers, round two", finding 8: `ccctl run --system`
/// against a host registered in **user** mode ran the job as the agent's
/// uid (999) and exited 0 with no warning — an operator who asked for root
/// silently got something else. The API refuses such root work (400,
/// naming the host and its mode), for jobs, runs and cron lists, and
/// nothing is queued.
#[test]
fn root_work_for_a_user_mode_host_is_refused_not_run_as_someone_else() {
    let Some((uid, gid)) = root_and_agent_user() else {
        return;
    };
    let dir = TempDir::new("sg-usermode");
    for d in ["listener", "agent", "op"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    let host = "user-mode.test";
    let mut listener = ListenerProcess::start(
        &bin("cc-listener"),
        &dir.path().join("listener"),
        "heartbeat_interval_secs = 2\n",
    );
    let key = listener.add_key(host);
    let _agent = AgentProcess::start(
        &bin("cc-agent"),
        &dir.path().join("agent"),
        &listener.ws_url(),
        &key,
        host,
        "",
        Some((uid, gid)),
    );
    listener.wait_connected(host, true);
    let op = dir.path().join("op");
    std::fs::write(op.join("operator.key"), &operator().0).unwrap();
    let keyfile = op.join("operator.key");
    let out = listener.ccctl(
        &op,
        &[
            "run",
            host,
            "--system",
            "--key",
            keyfile.to_str().unwrap(),
            "--",
            "/usr/bin/id",
            "-u",
        ],
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        !out.status.success(),
        "root work ran on a user-mode host:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains(host) && stderr.contains("user mode"),
        "{stderr}"
    );
    let list = op.join("cron.txt");
    std::fs::write(&list, "nightly 0 3 * * * /usr/bin/id -u\n").unwrap();
    let out = listener.ccctl(
        &op,
        &[
            "cron",
            "set",
            host,
            list.to_str().unwrap(),
            "--system",
            "--key",
            keyfile.to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a root cron list was accepted for a user-mode host"
    );
    assert!(stderr.contains("user mode"), "{stderr}");
    // Nothing was queued for it.
    let jobs = listener
        .get(&format!("/api/v1/jobs?hostname={host}"))
        .json();
    assert_eq!(jobs.as_array().map_or(0, Vec::len), 0, "{jobs}");
    let _ = &mut listener;
}
