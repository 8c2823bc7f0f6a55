//! The real agent, as the unprivileged `cc-agent-user`, against the real
//! listener, driven through the operator API.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cc_e2e::agent::{AgentProcess, root_and_agent_user};
use cc_e2e::listener::{FAST_REAL_AGENTS, ListenerProcess, job_id};
use cc_e2e::{TempDir, bin};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

struct Rig {
    _dir: TempDir,
    listener: ListenerProcess,
    agent: AgentProcess,
    host: String,
    uid: u32,
}

/// A listener and an agent (as cc-agent-user) registered to it; None when
/// the machine cannot run it outside CI.
fn rig(name: &str, agent_extra: &str) -> Option<Rig> {
    rig_with(name, "", agent_extra)
}

/// [`rig`] with more listener configuration lines.
fn rig_with(name: &str, listener_extra: &str, agent_extra: &str) -> Option<Rig> {
    let user = root_and_agent_user()?;
    let (uid, gid) = user;
    let dir = TempDir::new(name);
    std::fs::create_dir_all(dir.path().join("listener")).unwrap();
    std::fs::create_dir_all(dir.path().join("agent")).unwrap();
    let listener = ListenerProcess::start(
        &bin("cc-listener"),
        &dir.path().join("listener"),
        &format!("{FAST_REAL_AGENTS}{listener_extra}"),
    );
    let host = format!("{name}.test");
    let key = listener.add_key(&host);
    let agent = AgentProcess::start(
        &bin("cc-agent"),
        &dir.path().join("agent"),
        &listener.ws_url(),
        &key,
        &host,
        agent_extra,
        Some((uid, gid)),
    );
    let rig = Rig {
        _dir: dir,
        listener,
        agent,
        host,
        uid,
    };
    rig.wait_connected();
    Some(rig)
}

impl Rig {
    fn wait_connected(&self) {
        let host = self.host.clone();
        let deadline = Instant::now() + T;
        loop {
            let agents = self.listener.get("/api/v1/agents").json();
            if agents
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["hostname"] == host.as_str() && a["connected"] == true)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agent never connected\n{}",
                self.agent.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn post_job(&self, body: Value) -> String {
        let deadline = Instant::now() + T;
        loop {
            let r = self
                .listener
                .post(&format!("/api/v1/agents/{}/jobs", self.host), &body);
            if r.status == 202 {
                return job_id(&r.json()["jobId"]).to_string();
            }
            assert!(
                Instant::now() < deadline,
                "job refused: {} {}",
                r.status,
                r.body
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_report(&self, job_id: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let job = self.listener.get(&format!("/api/v1/jobs/{job_id}")).json();
            if job["status"] == "done" {
                return job["report"].clone();
            }
            assert!(
                Instant::now() < deadline,
                "no report for {job_id}: {job}\n--- agent log ---\n{}\n--- listener log ---\n{}",
                self.agent.log(),
                self.listener.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn a_job_report_has_exactly_the_spec_fields_and_the_real_uid() {
    let Some(rig) = rig("a-fields", "") else {
        return;
    };
    let id = rig.post_job(json!({"command": "/bin/echo", "args": ["hello world"], "timeout": 30}));
    let r = rig.wait_report(&id, T);
    let mut keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "command",
            "durationMs",
            "executingUid",
            "executingUser",
            "exitCode",
            "jobId",
            "reportId",
            "startTime",
            "stderr",
            "stdout"
        ]
    );
    assert_eq!(r["jobId"], id.as_str());
    assert_eq!(r["command"], "/bin/echo 'hello world'");
    assert_eq!(r["exitCode"], 0);
    assert_eq!(r["stdout"], "hello world\n");
    assert_eq!(r["stderr"], "");
    assert_eq!(r["executingUid"], rig.uid);
    assert_eq!(r["executingUser"], "cc-agent-user");
    assert!(
        chrono_like(r["startTime"].as_str().unwrap()),
        "{}",
        r["startTime"]
    );
    assert!(r["durationMs"].as_u64().unwrap() < 10_000);
    // The key never shows up in the agent's log.
    let key = std::fs::read_to_string(rig.agent.dir.join("key")).unwrap();
    assert!(!rig.agent.log().contains(key.trim()));
    // Registered as the spec spells it.
    let agents = rig.listener.get("/api/v1/agents").json();
    let me = agents
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["hostname"] == rig.host.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        (me["os"].as_str(), me["arch"].as_str()),
        (Some("linux"), Some("amd64"))
    );
    assert_eq!(
        (me["executionMode"].as_str(), me["isRoot"].as_bool()),
        (Some("user"), Some(false))
    );
}

fn chrono_like(s: &str) -> bool {
    s.len() >= 20 && s.ends_with('Z') && s.as_bytes()[10] == b'T'
}

#[test]
fn missing_programs_give_127_and_timeouts_kill_the_whole_group() {
    let Some(rig) = rig("a-codes", "") else {
        return;
    };
    let missing = rig.post_job(json!({"command": "no-such-program-anywhere"}));
    let r = rig.wait_report(&missing, T);
    assert_eq!(r["exitCode"], 127);
    assert!(r["stderr"].as_str().unwrap().contains("not found"), "{r}");

    // A grandchild that ignores SIGTERM still goes (SIGKILL after the grace).
    let script = "trap '' TERM; sh -c 'trap \"\" TERM; exec sleep 600' & wait";
    let t = rig.post_job(json!({"command": "/bin/sh", "args": ["-c", script], "timeout": 1}));
    let r = rig.wait_report(&t, Duration::from_secs(60));
    assert_eq!(r["exitCode"], 124);
    assert!(
        r["warning"]
            .as_str()
            .unwrap()
            .contains("timed out after 1 s"),
        "{r}"
    );
    let leftovers = std::process::Command::new("pgrep")
        .args(["-u", "cc-agent-user", "-f", "sleep 600"])
        .output()
        .unwrap();
    assert!(
        leftovers.stdout.is_empty(),
        "sleep 600 survived: {}",
        String::from_utf8_lossy(&leftovers.stdout)
    );
}

#[test]
fn a_gibibyte_of_stdout_keeps_the_agent_small_and_the_report_capped() {
    let Some(rig) = rig("a-gib", "") else { return };
    let id = rig.post_job(json!({"command": "/usr/bin/head", "args": ["-c", "1073741824", "/dev/zero"], "timeout": 600}));
    let r = rig.wait_report(&id, Duration::from_secs(600));
    assert_eq!(r["exitCode"], 0);
    assert!(r["stdout"].as_str().unwrap().len() <= 262_144);
    assert!(r["warning"].as_str().unwrap().contains("stdout: "), "{r}");
    let peak = rig.agent.peak_rss_kib();
    eprintln!("agent peak RSS after a 1 GiB job: {peak} KiB");
    assert!(peak > 0 && peak < 32 * 1024, "agent peak RSS {peak} KiB");
}

#[test]
fn listener_killed_twice_during_200_jobs_loses_no_report_and_stores_none_twice() {
    let Some(mut rig) = rig("a-durable", "max_concurrent_jobs = 4") else {
        return;
    };
    let mut ids = Vec::new();
    for i in 0..200 {
        if i == 70 || i == 140 {
            rig.listener.kill_and_restart();
            rig.wait_connected();
        }
        ids.push(rig.post_job(
            json!({"command": "/bin/sh", "args": ["-c", format!("sleep 0.0{}; echo {i}", i % 5)]}),
        ));
    }
    for id in &ids {
        rig.wait_report(id, Duration::from_secs(120));
    }
    let reports = rig.listener.get("/api/v1/reports?limit=1000").json();
    let mut per_job: HashMap<String, usize> = HashMap::new();
    for r in reports.as_array().unwrap() {
        *per_job.entry(job_id(&r["jobId"]).to_string()).or_default() += 1;
    }
    for id in &ids {
        assert_eq!(
            per_job.get(id),
            Some(&1),
            "job {id} has {:?} reports",
            per_job.get(id)
        );
    }
    assert_eq!(per_job.len(), 200);
    // The kills really cut the stream: the agent reconnected at least twice.
    let connects = rig.agent.log().matches("connected and registered").count();
    assert!(
        connects >= 3,
        "agent connected {connects} times\n{}",
        rig.agent.log()
    );
    // Every report was acknowledged, so the outbox drains: nothing left
    // but its reserve (space held for a full disk, never a report).
    let deadline = Instant::now() + T;
    while std::fs::read_dir(rig.agent.state().join("outbox"))
        .unwrap()
        .filter(|e| e.as_ref().map_or(true, |e| e.file_name() != ".reserve"))
        .count()
        > 0
    {
        assert!(Instant::now() < deadline, "outbox never drained");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn reports_written_while_the_agent_is_down_are_sent_when_it_returns() {
    let Some(mut rig) = rig("a-restart", "") else {
        return;
    };
    let id = rig.post_job(
        json!({"command": "/bin/sh", "args": ["-c", "sleep 2; echo survived"], "timeout": 60}),
    );
    let job_status = |rig: &Rig| {
        let job = rig.listener.get(&format!("/api/v1/jobs/{id}")).json();
        job["status"].as_str().unwrap_or_default().to_owned()
    };
    cc_e2e::wait_for(T, "the job sent to the agent", || {
        (job_status(&rig) == "sent").then_some(())
    });
    // The link goes down while the job runs: its report can only go to the
    // outbox. Then the agent is killed too, so the report is nowhere but
    // on disk when the agent returns.
    rig.listener.kill();
    let outbox = rig.agent.state().join("outbox");
    let stored = cc_e2e::wait_for(T, "the report in the agent's outbox", || {
        let file = std::fs::read_dir(&outbox)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            // As the agent reads its outbox: a dot-named file is a write
            // still in progress (`.tmp-…json`, renamed once fsync'd). A
            // kill before the rename leaves no report, so the test must
            // not count one (it did, and the test failed now and then).
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
            })
            .find(|p| p.extension().is_some_and(|x| x == "json"))?;
        serde_json::from_str::<Value>(&std::fs::read_to_string(file).ok()?).ok()
    });
    assert_eq!(stored["jobId"], id.as_str(), "{stored}");
    rig.agent.kill();
    rig.listener.kill_and_restart();
    rig.agent.restart();
    rig.wait_connected();
    // No new job is posted before the report arrives: the outbox is sent
    // because the agent returned, not because another report pushed it.
    // The agent never starts a job twice (`seen.rs`), so the report that
    // arrives is the one from the outbox; its reportId says so.
    let report = rig.wait_report(&id, T);
    assert_eq!(job_status(&rig), "done");
    assert_eq!(report["stdout"], "survived\n", "{report}");
    assert_eq!(report["exitCode"], 0, "{report}");
    assert_eq!(report["reportId"], stored["reportId"], "{report}");
    // And the agent that returned runs new work.
    let next = rig.post_job(json!({"command": "/bin/echo", "args": ["after"]}));
    assert_eq!(rig.wait_report(&next, T)["stdout"], "after\n");
}

#[test]
fn the_agent_refuses_a_world_readable_key_and_plaintext_to_a_remote_host() {
    let Some(rig) = rig("a-refuse", "") else {
        return;
    };
    use std::os::unix::fs::PermissionsExt;
    let dir = &rig.agent.dir;
    std::fs::set_permissions(dir.join("key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out =
        rig.agent
            .run_subcommand(&["run", "--config", dir.join("agent.toml").to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("group or others can read it"), "{err}");

    let remote = dir.join("remote.toml");
    let text = std::fs::read_to_string(dir.join("agent.toml")).unwrap();
    let text = text.replace(&rig.listener.ws_url(), "ws://192.0.2.10:8081/agent");
    std::fs::write(&remote, text).unwrap();
    let out = rig
        .agent
        .run_subcommand(&["run", "--config", remote.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("insecure_allow_plaintext"));
}

/// The reports in the agent's outbox, read as the agent reads it: a
/// dot-named file (a write in progress, the reserve) is not a report.
fn outbox_reports(rig: &Rig) -> Vec<Value> {
    let Ok(dir) = std::fs::read_dir(rig.agent.state().join("outbox")) else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            !name.starts_with('.') && name.ends_with(".json")
        })
        .filter_map(|e| serde_json::from_str(&std::fs::read_to_string(e.path()).ok()?).ok())
        .collect()
}

fn job_status(rig: &Rig, id: &str) -> String {
    let job = rig.listener.get(&format!("/api/v1/jobs/{id}")).json();
    job["status"].as_str().unwrap_or_default().to_owned()
}

/// A report the listener refuses for good (the host's report quota is
/// full) stayed in the agent's outbox: it went again on every connection,
/// was refused again every time, and left only when the outbox's bound
/// (10,000 reports) pushed it out. Now the listener answers
/// `report_rejected` and the agent deletes it at once, saying why.
#[test]
fn a_report_refused_for_the_hosts_quota_leaves_the_outbox_at_once() {
    let Some(mut rig) = rig_with("a-refused", "report_quota_bytes = 3000\n", "") else {
        return;
    };
    // 3,893 bytes of stdout: over the host's 3,000-byte quota on its own.
    let big = rig.post_job(json!({"command": "/usr/bin/seq", "args": ["1", "1000"]}));
    let entry = rig.listener.wait_for(T, |l| {
        l.agent_entry(&rig.host)
            .filter(|a| a["reportsRefused"].as_u64().unwrap_or(0) >= 1)
    });
    assert!(
        entry["lastRefusal"]
            .as_str()
            .is_some_and(|s| s.contains("report quota reached")),
        "{entry}"
    );
    // Right after the refusal the report is gone from the outbox.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !outbox_reports(&rig).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the refused report is still in the outbox 5 s after the refusal: {:?}\n--- agent log ---\n{}",
            outbox_reports(&rig)
                .iter()
                .map(|r| r["jobId"].clone())
                .collect::<Vec<_>>(),
            rig.agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = rig.agent.log();
    let said = log
        .lines()
        .find(|l| l.contains("the listener rejected a report") && l.contains(big.as_str()))
        .unwrap_or_else(|| panic!("the agent does not say why the report went\n{log}"));
    assert!(said.contains("WARN"), "{said}");
    assert!(said.contains("report quota reached"), "{said}");
    // Not stored: the job has no report.
    assert_eq!(job_status(&rig, &big), "sent");
    let stored = rig
        .listener
        .get(&format!("/api/v1/reports?hostname={}", rig.host))
        .json();
    assert_eq!(stored.as_array().map(Vec::len), Some(0), "{stored}");
    // And it is not sent again: a new listener process (refusals are
    // counted in memory) sees none, and the next report goes through.
    rig.listener.kill_and_restart();
    rig.wait_connected();
    let small = rig.post_job(json!({"command": "/bin/echo", "args": ["fits"]}));
    assert_eq!(rig.wait_report(&small, T)["stdout"], "fits\n");
    let entry = rig.listener.agent_entry(&rig.host).unwrap();
    assert_eq!(entry["reportsRefused"].as_u64().unwrap_or(0), 0, "{entry}");
}

/// A report the listener fails to store (another writer holds its
/// database's lock past the listener's 10 s busy timeout) is not refused
/// for good: nothing tells the agent to drop it, so it stays in the outbox
/// and is stored when it goes again on the next connection.
#[test]
fn a_report_the_listener_could_not_store_stays_in_the_outbox() {
    let Some(mut rig) = rig("a-store-error", "") else {
        return;
    };
    let id = rig.post_job(json!({"command": "/bin/sh", "args": ["-c", "sleep 1; echo kept"]}));
    cc_e2e::wait_for(T, "the job sent to the agent", || {
        (job_status(&rig, &id) == "sent").then_some(())
    });
    let db = rusqlite::Connection::open(rig._dir.path().join("listener/listener.db")).unwrap();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();
    cc_e2e::wait_for(
        Duration::from_secs(40),
        "the listener failing to store the report",
        || {
            rig.listener
                .log()
                .contains("storing report failed")
                .then_some(())
        },
    );
    // Longer than a message takes to arrive: no rejection follows.
    std::thread::sleep(Duration::from_secs(1));
    let kept = outbox_reports(&rig);
    assert_eq!(kept.len(), 1, "{kept:?}\n{}", rig.agent.log());
    assert_eq!(kept[0]["jobId"], id.as_str());
    assert!(!rig.agent.log().contains("rejected"), "{}", rig.agent.log());
    db.execute_batch("ROLLBACK").unwrap();
    drop(db);
    // The next connection sends it again, and it is stored.
    rig.listener.kill_and_restart();
    rig.wait_connected();
    let report = rig.wait_report(&id, T);
    assert_eq!(report["stdout"], "kept\n");
    assert_eq!(report["reportId"], kept[0]["reportId"]);
}

/// A user-mode job runs as the agent's own uid. Played as the job: it tries
/// the key file, the agent's `/proc` files (`environ`, `mem`, its standard
/// input's descriptor) and `ptrace`. Run the way the packaged unit runs the
/// agent (the key in a root-only file, opened by root on standard input).
#[test]
fn a_user_mode_job_gets_nothing_of_the_agents_key() {
    let Some(rig) = rig("a-key", "") else {
        return;
    };
    let key_file = rig.agent.dir.join("key");
    let key = std::fs::read_to_string(&key_file).unwrap();
    let key = key.trim();
    let pid = rig.agent.pid().to_string();
    let attacker = bin("cc-attacker");
    let script = format!(
        "cat {key}; cat /proc/{pid}/environ; cat /proc/{pid}/fd/0; \
         {a} open-mem {pid}; echo open-mem=$?; {a} ptrace {pid}; echo ptrace=$?",
        key = key_file.display(),
        a = attacker.display(),
    );
    let id = rig.post_job(json!({"command": "/bin/sh", "args": ["-c", script], "timeout": 30}));
    let r = rig.wait_report(&id, T);
    let out = format!("{}{}", r["stdout"], r["stderr"]);
    assert_eq!(r["executingUid"], rig.uid, "{r}");
    assert!(
        !out.contains(key),
        "a user-mode job read the agent's key: {r}"
    );
    let stdout = r["stdout"].as_str().unwrap();
    assert!(
        stdout.contains("open-mem=1"),
        "the job opened the agent's memory: {r}"
    );
    assert!(
        stdout.contains("ptrace=1"),
        "the job attached to the agent: {r}"
    );
    for what in ["environ", "fd/0"] {
        assert!(
            r["stderr"]
                .as_str()
                .unwrap()
                .contains(&format!("/proc/{pid}/{what}: Permission denied")),
            "the job read the agent's {what}: {r}"
        );
    }
}

/// A key bound to another hostname: the listener names that host in its
/// refusal, and the agent says so once at WARN with what to do, never
/// "registered", while it keeps retrying (each refusal after the first
/// only at debug).
#[test]
fn a_key_bound_to_another_host_is_refused_once_loudly_naming_the_host() {
    let Some(rig) = rig("bound", "") else {
        return;
    };
    let dir = TempDir::new("bound-other");
    let key = std::fs::read_to_string(rig.agent.dir.join("key")).unwrap();
    let other = AgentProcess::start(
        &bin("cc-agent"),
        dir.path(),
        &rig.listener.ws_url(),
        key.trim(),
        "other.test",
        "",
        root_and_agent_user(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while rig
        .listener
        .log()
        .matches("refused: key belongs to another hostname")
        .count()
        < 3
    {
        assert!(Instant::now() < deadline, "{}", other.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = other.log();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("the listener refused this agent"))
        .collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(
        warned[0].contains(
            "the listener refused this agent: this key belongs to hostname \"bound.test\"; \
             this agent registers as \"other.test\": if this host is \"bound.test\", set hostname = \"bound.test\" in the agent's config; \
             otherwise give it a key of its own (on the listener: cc-listener keys add other.test) and put that key in its key file; \
             retrying with backoff (the same refusal is logged again at most every 10 minutes)"
        ),
        "{log}"
    );
    assert!(!log.contains("connected and registered"), "{log}");
    assert!(log.contains("refused again"), "{log}");
}
