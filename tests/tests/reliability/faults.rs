//! Faults one process or one link at a time: the listener killed during a
//! stream of jobs, an agent killed mid-job while cron goes on, the root
//! helper stopped, a proxy cutting the agent's link at random bytes, the
//! agent's state directory full.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cc_e2e::agent::AgentProcess;
use cc_e2e::helper::HelperProcess;
use cc_e2e::proxy::CuttingProxy;
use cc_e2e::wait_for;
use serde_json::{Value, json};

use crate::common::{Rig, T, alive, outbox_len, poll, rig};

#[test]
fn fault_listener_killed_during_500_jobs() {
    let Some(mut r) = rig("fault", "fault_1_listener_killed", "") else {
        return;
    };
    let host = "rel-listener-kill.test";
    let agent = r.agent(host, "max_concurrent_jobs = 4\n");
    let mut ids = Vec::new();
    for i in 0..500 {
        if i > 0 && i % 125 == 0 {
            r.listener.kill_and_restart();
            r.wait_connected(host, &agent);
        }
        ids.push(r.post(
            host,
            &json!({"command": "/bin/echo", "args": [i.to_string()]}),
        ));
    }
    let (done, missing, twice) = r.delivery(host, &ids, Duration::from_secs(240));
    let connects = agent.log().matches("connected and registered").count();
    r.rec.row(
        "listener",
        "SIGKILL and restart, 3 times during a stream of 500 jobs (agent: max_concurrent_jobs = 4)",
        "every job done; one stored report per job; the agent reconnects",
        &format!(
            "{done}/500 done, {missing} reports missing, {twice} stored twice; agent connected {connects} times"
        ),
        done == 500 && missing == 0 && twice == 0 && connects >= 4,
    );
    let drained = poll(T, || (outbox_len(&agent) == 0).then_some(())).is_some();
    r.rec.row(
        "agent",
        "outbox after the stream",
        "empty: every report acknowledged after the listener's commit",
        &format!("{} reports left in the outbox", outbox_len(&agent)),
        drained,
    );
}

#[test]
fn fault_agent_killed_mid_job_and_cron_runs_while_it_is_down() {
    let Some(r) = rig("fault", "fault_2_agent_killed", "") else {
        return;
    };
    let host = "rel-agent-kill.test";
    let mut agent = r.agent(host, "");
    let put = r.listener.put(
        &format!("/api/v1/agents/{host}/cron"),
        &json!([{"id": "rel-tick", "schedule": "* * * * *", "command": "/bin/echo tick"}]),
    );
    assert_eq!(put.status, 200, "{}", put.body);
    wait_for(T, "the managed crontab", || {
        let out = Command::new("crontab")
            .args(["-l", "-u", "cc-agent-user"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .contains("cron-run")
            .then_some(())
    });
    let id = r.post(
        host,
        &json!({"command": "/bin/sleep", "args": ["15"], "timeout": 3}),
    );
    wait_for(T, "the job to start", || {
        agent.log().contains(&format!("job_id={id}")).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    agent.kill();
    let before = r.job(&id)["status"].clone();
    let lost = poll(Duration::from_secs(40), || {
        (r.job(&id)["status"] == "lost").then_some(())
    })
    .is_some();
    let reports = r.reports_per_job(host).get(&id).copied().unwrap_or(0);
    r.rec.row(
        "agent",
        "SIGKILL while a job (timeout 3 s) runs",
        "the job is marked lost after its timeout + lost_grace_secs (5 s); no report is invented",
        &format!(
            "status {before} at the kill, then {}; {reports} reports for it",
            r.job(&id)["status"],
        ),
        lost && reports == 0,
    );
    // Debian's cron runs the entry while the agent is down: its report
    // waits in the outbox.
    let waiting = poll(Duration::from_secs(90), || {
        (outbox_len(&agent) > 0).then_some(())
    })
    .is_some();
    r.rec.row(
        "agent",
        "Debian's cron runs `cc-agent cron-run rel-tick` while the agent is down",
        "the run's report is written to the outbox and waits",
        &format!("{} report(s) in the outbox", outbox_len(&agent)),
        waiting,
    );
    // Runs of the entry the listener has already (some may have come
    // before the kill): the waiting one must come on top of these.
    let cron_reports = || {
        let rs = r
            .listener
            .get("/api/v1/reports?jobId=rel-tick&limit=100")
            .json();
        rs.as_array().cloned().unwrap_or_default()
    };
    let before_restart = cron_reports().len();
    agent.restart();
    r.wait_connected(host, &agent);
    let got = poll(T, || {
        let rs = cron_reports();
        (rs.len() > before_restart)
            .then(|| rs.into_iter().find(|x| x["kind"] == "cron"))
            .flatten()
    });
    let drained = poll(T, || (outbox_len(&agent) == 0).then_some(())).is_some();
    r.rec.row(
        "agent",
        "agent restarted after the kill",
        "the waiting cron report reaches the listener (kind cron, stdout tick); the outbox drains",
        &format!(
            "report {}; outbox {}",
            got.as_ref().map_or("missing".to_owned(), |g| format!(
                "kind {} stdout {:?} uid {}",
                g["kind"],
                g["report"]["stdout"].as_str().unwrap_or(""),
                g["report"]["executingUid"]
            )),
            if drained { "empty" } else { "not empty" }
        ),
        got.is_some_and(|g| g["report"]["stdout"] == "tick\n") && drained,
    );
    let next = r.post(host, &json!({"command": "/bin/echo", "args": ["after"]}));
    let ok = r.settle(std::slice::from_ref(&next), T) == 1;
    r.rec.row(
        "agent",
        "a job after the restart",
        "runs as usual",
        &format!("status {}", r.job(&next)["status"]),
        ok,
    );
    let still_lost = r.job(&id)["status"] == "lost";
    r.rec.row(
        "listener",
        "the killed job after the agent is back",
        "still lost: not run again (at most once per job id)",
        &format!("status {}", r.job(&id)["status"]),
        still_lost,
    );
}

#[test]
fn fault_helper_stopped_and_restarted() {
    let Some(r) = rig("fault", "fault_3_helper_stopped", "") else {
        return;
    };
    let sys = "rel-system.test";
    let mut helper = system_helper(&r, sys);
    let usr = "rel-user.test";
    let extra = format!(
        "execution_mode = \"system\"\nhelper_socket = {:?}\n",
        helper.socket(),
    );
    let sys_agent = r.agent(sys, &extra);
    let usr_agent = r.agent(usr, "");
    let run = |host: &str, body: Value| -> Value {
        let id = r.post(host, &body);
        r.settle(std::slice::from_ref(&id), T);
        r.job(&id)["report"].clone()
    };
    let id_u = json!({"command": "/usr/bin/id", "args": ["-u"]});
    let rep = run(sys, id_u.clone());
    r.rec.row(
        "helper",
        "system job with the helper up",
        "runs as root: executingUid 0",
        &format!(
            "exitCode {} executingUid {}",
            rep["exitCode"], rep["executingUid"]
        ),
        rep["executingUid"] == 0 && rep["stdout"] == "0\n",
    );
    let _ = helper.child.kill();
    let _ = helper.child.wait();
    let rep = run(sys, id_u.clone());
    let why = rep["warning"].as_str().unwrap_or("").to_owned();
    r.rec.row(
        "helper",
        "helper SIGKILLed, then a system job",
        "a report that says why (exit 126, root helper not reachable), stamped with the agent's uid: nothing ran as root",
        &format!(
            "exitCode {} executingUid {} warning {why:?}",
            rep["exitCode"], rep["executingUid"]
        ),
        rep["exitCode"] == 126
            && why.contains("root helper is not reachable")
            && rep["executingUid"] == r.user.0,
    );
    let rep = run(usr, json!({"command": "/bin/echo", "args": ["user"]}));
    r.rec.row(
        "agent",
        "a user-mode job on the same host while the helper is down",
        "goes on: runs as cc-agent-user",
        &format!(
            "exitCode {} executingUid {}",
            rep["exitCode"], rep["executingUid"]
        ),
        rep["exitCode"] == 0 && rep["executingUid"] == r.user.0,
    );
    helper.restart();
    let rep = run(sys, id_u);
    r.rec.row(
        "helper",
        "helper started again, then a system job",
        "works again: executingUid 0",
        &format!(
            "exitCode {} executingUid {}",
            rep["exitCode"], rep["executingUid"]
        ),
        rep["executingUid"] == 0,
    );
    scheduled_system_job(&r, sys, &helper, &sys_agent);
    drop((sys_agent, usr_agent));
}

/// The root helper for `sys`, writing the system cron file where the
/// namespace's cron reads it.
fn system_helper(r: &Rig, sys: &str) -> HelperProcess {
    let hdir = r.dir.path().join("helper");
    let helper_cfg = format!(
        "system_mode = true\n[sandbox]\nwrite_paths = [{:?}]\nlandlock = \"required\"\n",
        hdir.join("writable")
    );
    let mut helper = HelperProcess::start_as(&hdir, &helper_cfg, r.user, sys);
    // The system cron file where the namespace's cron reads it.
    let cfg = std::fs::read_to_string(hdir.join("etc/helper.toml")).unwrap();
    let cfg = cfg.replace(
        &format!("cron_file = {:?}", hdir.join("cron.d/croncommander")),
        "cron_file = \"/etc/cron.d/croncommander\"",
    );
    std::fs::write(hdir.join("etc/helper.toml"), cfg).unwrap();
    helper.restart();
    helper
}

/// A scheduled system job: helper writes /etc/cron.d (the namespace's),
/// the namespace's Debian cron runs it as root, the agent collects it.
fn scheduled_system_job(r: &Rig, sys: &str, helper: &HelperProcess, sys_agent: &AgentProcess) {
    let put = r.listener.put(
        &format!("/api/v1/agents/{sys}/cron"),
        &json!([{"id": "rel-sys-tick", "schedule": "* * * * *", "command": "/usr/bin/id -un"}]),
    );
    assert_eq!(put.status, 200, "{}", put.body);
    let got = poll(Duration::from_secs(150), || {
        let rs = r
            .listener
            .get("/api/v1/reports?jobId=rel-sys-tick&limit=10")
            .json();
        rs.as_array().and_then(|a| a.first().cloned())
    });
    if got.is_none() {
        let out = Command::new("sh")
            .args([
                "-c",
                "ls -la /etc/cron.d; cat /etc/cron.d/*; ps -ef | grep [c]ron",
            ])
            .output()
            .unwrap();
        eprintln!(
            "{}\n--- helper ---\n{}\n--- agent ---\n{}",
            String::from_utf8_lossy(&out.stdout),
            helper.log(),
            sys_agent.log()
        );
    }
    r.rec.row(
        "cron",
        "a `* * * * *` system entry through the helper, run by Debian's cron",
        "its report reaches the listener with executingUid 0",
        &got.as_ref()
            .map_or("no report within 150 s".to_owned(), |g| {
                format!(
                    "kind {} stdout {:?} executingUid {}",
                    g["kind"], g["report"]["stdout"], g["report"]["executingUid"]
                )
            }),
        got.is_some_and(|g| g["report"]["executingUid"] == 0 && g["report"]["stdout"] == "root\n"),
    );
}

#[test]
fn fault_connection_cut_at_random_points() {
    let Some(r) = rig("fault", "fault_4_cutting_proxy", "") else {
        return;
    };
    let host = "rel-proxy.test";
    let proxy = CuttingProxy::start(r.listener.agent_addr, 4_000, 64_000, 0x5eed_cafe);
    let url = format!("ws://{}/agent", proxy.addr);
    let agent = r.agent_via(host, Some(&url), "max_concurrent_jobs = 4\n");
    r.wait_connected(host, &agent);
    // Each job appends its number to a file: the count shows how many
    // times each really ran.
    let file = r.owned_dir("runs").join("log");
    let n = 200;
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(r.post(
            host,
            &json!({"command": "/bin/sh", "args": ["-c", format!("echo {i} >> {}", file.display())]}),
        ));
        if i % 10 == 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Cutting goes on for up to 60 s; then the link is left whole so the
    // rest settles (the agent's backoff, grown by the cuts, may first make
    // it wait up to a minute).
    let during = r.settle(&ids, Duration::from_secs(60));
    let cuts = proxy.cuts();
    proxy.set_cutting(false);
    let (done, missing, twice) = r.delivery(host, &ids, Duration::from_secs(120));
    let runs = std::fs::read_to_string(&file).unwrap_or_default();
    let mut seen = HashSet::new();
    let ran_twice = runs.lines().filter(|l| !seen.insert(*l)).count();
    r.rec.row(
        "agent ↔ listener link",
        &format!("a proxy cutting each connection after 4,000–64,000 bytes (mid-frame), {n} jobs"),
        "every job done, one report each, each job run once",
        &format!(
            "{cuts} cuts; {during}/{n} done while cutting, {done}/{n} in the end; {missing} missing, {twice} stored twice; {} runs, {ran_twice} repeated",
            runs.lines().count()
        ),
        cuts >= 3 && done == n && missing == 0 && twice == 0 && seen.len() == n && ran_twice == 0,
    );
}

#[test]
fn fault_state_directory_full() {
    let Some(r) = rig("fault", "fault_5_full_state_dir", "") else {
        return;
    };
    let host = "rel-full.test";
    let state = tiny_state_dir(&r, host);
    let mut agent = r.agent(host, "max_concurrent_jobs = 2\n");
    let full = FullDisk {
        reserve: state.join("outbox/.reserve"),
        filler: state.join("filler"),
    };
    reserve_takes_the_first_report(&r, host, &agent, &full);
    let ids = reports_wait_in_memory(&r, host, &mut agent, &full, &state);
    no_partial_report(&r, &state);
    std::fs::remove_file(&full.filler).unwrap();
    let (done, missing, twice) = r.delivery(host, &ids, T);
    r.rec.row(
        "agent",
        "space freed",
        "the waiting reports are stored and delivered, once each",
        &format!("{done}/5 done, {missing} missing, {twice} stored twice"),
        done == 5 && missing == 0 && twice == 0,
    );
    let back = poll(T, || full.reserve_whole().then_some(())).is_some();
    r.rec.row(
        "agent",
        "space freed, the outbox drained",
        "the outbox reserve is made again: 1 MiB, every block allocated",
        &format!("reserve back: {back}"),
        back,
    );
    drop(agent);
    let _ = nix::mount::umount(&state);
}

/// The agent's state directory for `host`, on a 2 MiB tmpfs of its own.
fn tiny_state_dir(r: &Rig, host: &str) -> PathBuf {
    let adir = r.dir.path().join(host);
    let state = adir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &state,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some(format!("size=2m,mode=0700,uid={},gid={}", r.user.0, r.user.1).as_str()),
    )
    .unwrap();
    state
}

/// The agent's full state directory: its outbox reserve, and the file
/// that fills the rest.
struct FullDisk {
    reserve: PathBuf,
    filler: PathBuf,
}

impl FullDisk {
    /// The agent holds 1 MiB of the disk back: the outbox's reserve,
    /// every block allocated.
    fn reserve_whole(&self) -> bool {
        std::fs::metadata(&self.reserve).is_ok_and(|m| {
            m.len() == 1 << 20 && std::os::unix::fs::MetadataExt::blocks(&m) * 512 >= 1 << 20
        })
    }

    /// Fills what is left of the disk.
    fn fill(&self) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.filler)
            .unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
    }
}

/// The reserve is made at start; with the disk full, the first report
/// the disk refuses takes the reserve's place.
fn reserve_takes_the_first_report(r: &Rig, host: &str, agent: &AgentProcess, full: &FullDisk) {
    let made = poll(T, || full.reserve_whole().then_some(())).is_some();
    // Fill the rest.
    full.fill();
    let first = r.post(
        host,
        &json!({"command": "/bin/echo", "args": ["full-reserve"]}),
    );
    let used = poll(T, || {
        agent
            .log()
            .lines()
            .find(|l| l.contains("reserve") && l.contains("was used"))
            .map(ToOwned::to_owned)
    });
    let (done, missing, twice) = r.delivery(host, std::slice::from_ref(&first), T);
    r.rec.row(
        "agent",
        "state directory on a 2 MiB tmpfs (1 MiB of it the outbox reserve, made at start), filled up; 1 job",
        "the reserve is given up and the report written to disk in its place (logged at error), then delivered once",
        &format!(
            "reserve made at start: {made}; {done}/1 done, {missing} missing, {twice} stored twice; reserve left: {}; log: {:?}",
            full.reserve.exists(),
            used.as_deref()
                .map(|l| l.split("the state directory").nth(1).unwrap_or(l))
                .unwrap_or("nothing")
        ),
        made && done == 1 && missing == 0 && twice == 0 && used.is_some() && !full.reserve.exists(),
    );
}

/// The disk full again and the reserve used: 5 jobs, of which only the 2
/// slots' worth start, their reports held in memory. Returns the 5 ids.
fn reports_wait_in_memory(
    r: &Rig,
    host: &str,
    agent: &mut AgentProcess,
    full: &FullDisk,
    state: &Path,
) -> Vec<String> {
    // Fill what the reserve gave back.
    full.fill();
    let ids: Vec<String> = (0..5)
        .map(|i| {
            r.post(
                host,
                &json!({"command": "/bin/echo", "args": [format!("full-{i}")]}),
            )
        })
        .collect();
    let said = poll(T, || {
        agent
            .log()
            .lines()
            .find(|l| l.contains("could not store the report") && l.contains("No space left"))
            .map(ToOwned::to_owned)
    });
    std::thread::sleep(Duration::from_secs(3));
    let statuses: Vec<String> = ids
        .iter()
        .map(|i| r.job(i)["status"].as_str().unwrap_or("").to_owned())
        .collect();
    // The listener sends the agent's window (twice the slots); the fifth waits.
    let waiting = statuses.iter().all(|s| s == "sent" || s == "queued");
    // Started jobs leave a marker; a slot is freed only once its report is
    // on disk, so no more than the 2 slots' worth may have started.
    let started = ids
        .iter()
        .filter(|i| state.join("jobs").join(i.as_str()).exists())
        .count();
    r.rec.row(
        "agent",
        "the same state directory filled up again, the reserve used; 5 jobs, max_concurrent_jobs = 2",
        "2 jobs run and their reports wait in memory (not sent before they are on disk: every job still sent or queued); the other 3 do not start; the agent logs why",
        &format!(
            "statuses {statuses:?}; {started} started; agent up: {}; log: {:?}",
            alive(&mut agent.child),
            said.as_deref()
                .map(|l| l.split("could not").nth(1).unwrap_or(l))
                .unwrap_or("nothing")
        ),
        waiting && started == 2 && said.is_some() && alive(&mut agent.child),
    );
    ids
}

/// Nothing half-written: no temp files, every outbox file a whole report
/// (or the reserve, were it back).
fn no_partial_report(r: &Rig, state: &Path) {
    let mut bad = Vec::new();
    for e in std::fs::read_dir(state.join("outbox")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name == ".reserve" {
            continue;
        }
        let whole = std::fs::read(e.path())
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .is_some();
        if name.starts_with('.') || !whole {
            bad.push(name);
        }
    }
    r.rec.row(
        "agent",
        "the outbox while the disk is full",
        "no temp file left, no partial report",
        &format!("{} bad entries {bad:?}", bad.len()),
        bad.is_empty(),
    );
}
