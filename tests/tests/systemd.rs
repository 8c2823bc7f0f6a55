//! The package as operators run it: two Debian 12 machines booted with a
//! real systemd (`testkit/src/bed.rs`), the package the test command built
//! installed with `dpkg -i`, docs/install.md and docs/system-mode.md run
//! block by block as written, then what an operator relies on afterwards —
//! a user-mode job and cron entry, a signed root job inside its containment
//! and a signed root cron entry fired by the real cron, a reload, a restart
//! with jobs queued, an upgrade over a running install, and a purge.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cc_e2e::bed::{self, DocBlock, Link, Machine, Role};
use cc_e2e::require;
use serde_json::Value;

const LISTENER: &str = "listener.example.net";
const HOST: &str = "web-1.example.net";
const KEY: &str = "~/.config/croncommander/alice.key";

fn guide(name: &str) -> Vec<DocBlock> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    bed::doc_blocks(&text).unwrap_or_else(|e| panic!("docs/{name}: {e}"))
}

fn run_guide(name: &str, listener: &Machine, host: &Machine) -> Vec<(DocBlock, String)> {
    run_blocks(name, guide(name), listener, host)
}

/// Runs a guide's blocks on their machines, in order, as root in `/root`,
/// copying what a block says to copy to the host after it; returns each
/// block's output.
fn run_blocks(
    name: &str,
    blocks: Vec<DocBlock>,
    listener: &Machine,
    host: &Machine,
) -> Vec<(DocBlock, String)> {
    let mut outputs = Vec::new();
    for block in blocks {
        let m = match block.role {
            // The test command builds the package (checked below).
            Role::Build => continue,
            Role::Listener | Role::Operator => listener,
            Role::Host => host,
        };
        eprintln!("bed: docs/{name}:{} on {}", block.line, m.hostname);
        let r = m.sh(&format!("cd /root\n{}", block.script));
        assert!(
            r.ok(),
            "docs/{name}, the block at line {} on {} failed ({:?}):\n{}\nstdout:\n{}\nstderr:\n{}\n\
             cc-listener:\n{}\ncc-agent:\n{}\ncc-privhelper:\n{}",
            block.line,
            m.hostname,
            r.status,
            block.script,
            r.stdout,
            r.stderr,
            listener.journal("cc-listener"),
            host.journal("cc-agent"),
            host.journal("cc-privhelper"),
        );
        for f in &block.copy_to_host {
            host.write(f, &m.read(f), 0o600);
        }
        if block.role == Role::Host && block.script.contains("cc-agent") {
            wait_online(listener, host);
        }
        outputs.push((block, r.stdout));
    }
    outputs
}

/// Waits until the listener shows the host connected (the docs' next
/// command is an operator's, who would look first).
fn wait_online(listener: &Machine, host: &Machine) {
    let r = listener.until(
        &format!("ccctl agents | grep -E '^{HOST} +yes '"),
        Duration::from_secs(30),
    );
    assert!(
        r.ok(),
        "{HOST} never showed as connected: {}\n{}\ncc-agent:\n{}\ncc-listener:\n{}",
        r.stdout,
        r.stderr,
        host.journal("cc-agent"),
        listener.journal("cc-listener")
    );
}

/// Every report of `job` on the host, newest first.
fn reports(listener: &Machine, job: &str) -> Vec<Value> {
    let out = listener.ok(&format!(
        "ccctl reports --host {HOST} --job {job} --output json"
    ));
    serde_json::from_str::<Value>(&out)
        .map(|v| v.as_array().cloned().unwrap_or_default())
        .unwrap_or_else(|e| panic!("ccctl reports: {e}: {out}"))
}

/// Waits for a report of cron entry `id` until `until`: the report.
fn wait_cron_report(listener: &Machine, host: &Machine, id: &str, until: Instant) -> Value {
    loop {
        // Each item is `{receivedAt, hostname, jobId, kind, report}`.
        if let Some(r) = reports(listener, id).into_iter().next() {
            assert_eq!(r["kind"], "cron", "{r}");
            return r["report"].clone();
        }
        assert!(
            Instant::now() < until,
            "no report of cron entry {id} within two minutes\ncrontab:\n{}\ncron.d:\n{}\ncron:\n{}\ncc-agent:\n{}\ncc-privhelper:\n{}",
            host.sh("crontab -u cc-agent-user -l").stdout,
            host.sh("cat /etc/cron.d/croncommander").stdout,
            host.journal("cron"),
            host.journal("cc-agent"),
            host.journal("cc-privhelper"),
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// A signed root job's JSON report (through `ccctl run --system`).
fn root_job(listener: &Machine, argv: &str) -> Value {
    let r = listener.sh(&format!(
        "ccctl run --system --key {KEY} --timeout 30 --output json {HOST} -- {argv}"
    ));
    let v: Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("ccctl run --system {argv}: {e}: {r:?}"));
    v
}

/// The first host's report in `ccctl run --output json`'s answer (an
/// array of `{host, jobId, status, report}`).
fn first_report(run: &Value) -> &Value {
    let jobs = run
        .as_array()
        .unwrap_or_else(|| panic!("not a list of jobs: {run}"));
    &jobs[0]["report"]
}

fn active(m: &Machine, unit: &str) -> bool {
    m.sh(&format!("systemctl is-active --quiet {unit}")).ok()
}

fn main_pid(m: &Machine, unit: &str) -> String {
    m.ok(&format!("systemctl show -p MainPID --value {unit}"))
        .trim()
        .to_owned()
}

#[test]
fn every_role_runs_under_the_shipped_units() {
    let Some(bed) = boot_two_machines() else {
        return;
    };
    let (listener, host) = (&bed.listener, &bed.host);
    // docs/install.md, as written: the listener with TLS, a key, the host.
    install_guide(listener, host);

    // A user-mode cron entry, fired by the host's real cron.
    let cron_set = Instant::now();
    listener.ok(&format!(
        "printf 'bed-user * * * * * /usr/bin/id -un\\n' > /root/user.cron && ccctl cron set {HOST} /root/user.cron"
    ));

    // While cron gets there: a restart of the agent with jobs queued loses
    // none of them.
    queued_jobs_survive_a_restart(listener, host);

    let user_cron = wait_cron_report(
        listener,
        host,
        "bed-user",
        cron_set + Duration::from_secs(125),
    );
    assert_eq!(
        user_cron["stdout"].as_str().unwrap().trim(),
        "cc-agent-user",
        "{user_cron}"
    );

    // Under its unit the agent sees no other user's process, yet finds
    // root's cron (its pid file): the listener does not warn.
    let r = listener.until(
        &format!("ccctl agents | grep -E '^{HOST} ' | grep -v 'NO DAEMON'"),
        Duration::from_secs(30),
    );
    assert!(
        r.ok(),
        "the listener says no cron daemon runs on the host: {}\n{}",
        listener.ok("ccctl agents"),
        host.journal("cc-agent")
    );

    // docs/system-mode.md, as written: a key, the helper, a signed root job.
    system_mode_guide(listener, host);
    root_job_containment(listener, host);

    // A signed root cron entry, fired by the real cron through cron-run.
    let root_cron_set = Instant::now();
    listener.ok(&format!(
        "printf 'bed-root * * * * * /usr/bin/id -u\\n' > /root/root.cron && \
         ccctl cron set --system --key {KEY} {HOST} /root/root.cron"
    ));

    // A reload keeps the helper and its socket; root work still runs.
    reload_keeps_the_helper(listener, host);

    let root_cron = wait_cron_report(
        listener,
        host,
        "bed-root",
        root_cron_set + Duration::from_secs(125),
    );
    assert_eq!(root_cron["executingUid"], 0, "{root_cron}");
    assert_eq!(root_cron["stdout"].as_str().unwrap().trim(), "0");

    // A newer build over the running install: configs kept, services back.
    upgrade_over_the_running_install(listener, host, &bed.deb);
    purge_leaves_nothing(host);
    eprintln!("bed: done in {:.1} s", bed.started.elapsed().as_secs_f64());
}

/// Two machines booted with the package on both. Fields drop in order:
/// the machines, then the link between them.
struct Bed {
    host: Machine,
    listener: Machine,
    _link: Link,
    /// The package the test command built.
    deb: PathBuf,
    /// When the bed started booting.
    started: Instant,
}

/// The bed's prerequisites (a skip outside CI without them), then the two
/// machines booted with the package on both.
fn boot_two_machines() -> Option<Bed> {
    let ready = bed::available();
    if !require(
        &format!(
            "the systemd test bed: {}",
            ready.as_ref().err().map_or("", String::as_str)
        ),
        ready.is_ok(),
    ) {
        return None;
    }
    let Some(deb) = bed::deb() else {
        require(
            "target/debian/croncommander_*.deb (the test command builds it with cargo deb)",
            false,
        );
        return None;
    };
    let started = Instant::now();
    let tar = bed::rootfs();
    let link = Link::new("roles", 31);
    let listener = Machine::boot(&tar, LISTENER, &link.ns_a, &[(&link.addr_b, HOST)]);
    let host = Machine::boot(&tar, HOST, &link.ns_b, &[(&link.addr_a, LISTENER)]);
    let deb_name = deb.file_name().unwrap().to_string_lossy().into_owned();
    for m in [&listener, &host] {
        m.put(&deb, &format!("/root/{deb_name}"), 0o644);
    }
    eprintln!(
        "bed: two machines up in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Some(Bed {
        host,
        listener,
        _link: link,
        deb,
        started,
    })
}

/// docs/install.md, as written: its user-mode job ran as cc-agent-user,
/// and so does the agent.
fn install_guide(listener: &Machine, host: &Machine) {
    let out = run_guide("install.md", listener, host);
    let ran = out
        .iter()
        .find(|(b, _)| b.script.contains("ccctl run"))
        .expect("install.md runs a job");
    assert!(
        ran.1.contains("cc-agent-user"),
        "the docs' user-mode job did not run as cc-agent-user: {}",
        ran.1
    );
    assert_eq!(
        host.ok("ps -o uid= -C cc-agent").trim(),
        host.ok("id -u cc-agent-user").trim(),
        "the agent does not run as cc-agent-user"
    );
}

/// A restart of the agent with jobs queued loses none of them.
fn queued_jobs_survive_a_restart(listener: &Machine, host: &Machine) {
    let queued: Vec<String> = (0..6)
        .map(|i| {
            // `--no-wait` prints the run's id, then `HOST JOB_ID` per host.
            let out = listener.ok(&format!(
                "ccctl run --no-wait {HOST} -- /bin/sh -c 'sleep 1; echo queued-{i}'"
            ));
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("{HOST} ")))
                .unwrap_or_else(|| panic!("no job id in {out}"))
                .trim()
                .to_owned()
        })
        .collect();
    host.ok("systemctl restart cc-agent.service");
    wait_online(listener, host);
    for (i, job) in queued.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(60);
        let report = loop {
            let j = listener.sh(&format!("ccctl job {job} --output json"));
            let v: Value = serde_json::from_str(&j.stdout).unwrap_or(Value::Null);
            if !v["report"].is_null() {
                break v["report"].clone();
            }
            assert!(
                Instant::now() < deadline,
                "job {job} queued before the restart never reported: {j:?}\n{}",
                host.journal("cc-agent")
            );
            std::thread::sleep(Duration::from_millis(500));
        };
        assert_eq!(report["exitCode"], 0, "{report}");
        assert_eq!(
            report["stdout"].as_str().unwrap().trim(),
            format!("queued-{i}")
        );
    }
}

/// docs/system-mode.md, as written: a key, the helper, a signed root job.
/// The one container difference: the cgroup controllers are read-only
/// here (docs/testing.md), so a job's limits cannot be enforced.
fn system_mode_guide(listener: &Machine, host: &Machine) {
    let out = run_guide_with(
        "system-mode.md",
        listener,
        host,
        "sed -i 's/^\\[sandbox\\]$/[sandbox]\\nlimits = \"best_effort\"/' /etc/croncommander/helper.toml",
    );
    let ran = out
        .iter()
        .find(|(b, _)| b.script.contains("ccctl run --system"))
        .expect("system-mode.md runs a root job");
    assert!(
        ran.1
            .lines()
            .any(|l| l.starts_with(HOST) && l.ends_with(" 0")),
        "the docs' root job did not print uid 0: {}",
        ran.1
    );
}

/// The root job's containment, read from its own /proc; the audit line
/// before it ran; the landlock ABI; where it may write.
fn root_job_containment(listener: &Machine, host: &Machine) {
    let probe = root_job(
        listener,
        "/bin/sh -c 'grep -E \"^(Uid|NoNewPrivs|Seccomp|CapBnd|CapEff):\" /proc/self/status; \
         for n in mnt pid ipc uts net; do echo ns $n $(readlink /proc/self/ns/$n); done'",
    );
    let report = first_report(&probe);
    assert_eq!(report["exitCode"], 0, "{probe}");
    assert_eq!(report["executingUid"], 0, "{probe}");
    let status = report["stdout"].as_str().unwrap().to_owned();
    eprintln!("bed: the root job's view of itself:\n{status}");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no {name} in {status}"))
    };
    assert!(field("Uid").starts_with("0\t"), "{status}");
    assert_eq!(field("NoNewPrivs"), "1", "{status}");
    let bounding = u64::from_str_radix(&field("CapBnd"), 16).unwrap();
    const CAP_SYS_ADMIN: u64 = 1 << 21;
    const CAP_SETPCAP: u64 = 1 << 8;
    assert_eq!(bounding & (CAP_SYS_ADMIN | CAP_SETPCAP), 0, "{status}");
    for ns in ["mnt", "pid", "ipc", "uts"] {
        let own = host.ok(&format!("readlink /proc/1/ns/{ns}"));
        let job = status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("ns {ns} ")))
            .unwrap()
            .to_owned();
        assert_ne!(
            own.trim(),
            job.trim(),
            "the job shares the host's {ns} namespace"
        );
    }
    // Audited before it ran, as an operator reads it in the journal.
    host.ok(
        "journalctl -u cc-privhelper --no-pager -o cat | grep 'root run started' | grep -q 'alice@ops'",
    );
    let abi = host.ok(
        "journalctl -u cc-privhelper --no-pager -o cat | grep -o 'landlock_abi=[0-9]*' | tail -n 1",
    );
    let abi: u32 = abi
        .trim()
        .trim_start_matches("landlock_abi=")
        .parse()
        .unwrap();
    assert!(abi >= 6, "the helper runs jobs at landlock ABI {abi}");
    // A write outside write_paths is refused; inside, it lands.
    let outside = root_job(listener, "/bin/sh -c 'echo x > /etc/cc-bed-probe'");
    assert_ne!(first_report(&outside)["exitCode"], 0, "{outside}");
    assert!(!host.sh("test -e /etc/cc-bed-probe").ok());
    let inside = root_job(listener, "/bin/sh -c 'echo x > /var/backups/cc-bed-probe'");
    assert_eq!(first_report(&inside)["exitCode"], 0, "{inside}");
    assert_eq!(host.ok("stat -c %u /var/backups/cc-bed-probe").trim(), "0");
}

/// A reload keeps the helper and its socket; root work still runs.
fn reload_keeps_the_helper(listener: &Machine, host: &Machine) {
    let helper_pid = main_pid(host, "cc-privhelper.service");
    host.ok("systemctl reload cc-privhelper.service");
    assert_eq!(main_pid(host, "cc-privhelper.service"), helper_pid);
    let after_reload = root_job(listener, "/usr/bin/id -u");
    assert_eq!(first_report(&after_reload)["exitCode"], 0, "{after_reload}");
}

/// A newer build over the running install: configs kept, services back.
fn upgrade_over_the_running_install(listener: &Machine, host: &Machine, deb: &Path) {
    let newer = bed::newer_deb(deb);
    let configs =
        "sha256sum /etc/croncommander/*.toml /etc/systemd/system/cc-privhelper.service.d/*";
    let before = host.ok(configs);
    let agent_pid = main_pid(host, "cc-agent.service");
    host.put(&newer, "/root/newer.deb", 0o644);
    listener.put(&newer, "/root/newer.deb", 0o644);
    let _ = std::fs::remove_file(&newer);
    host.ok("dpkg -i /root/newer.deb");
    listener.ok("dpkg -i /root/newer.deb");
    assert_eq!(host.ok(configs), before, "the upgrade changed a config");
    for unit in ["cc-agent.service", "cc-privhelper.socket"] {
        assert!(
            active(host, unit),
            "{unit} is not running after the upgrade"
        );
    }
    assert!(active(listener, "cc-listener.service"));
    assert_ne!(
        main_pid(host, "cc-agent.service"),
        agent_pid,
        "the upgrade did not restart the agent (it runs the old binary)"
    );
    wait_online(listener, host);
    let upgraded = root_job(listener, "/usr/bin/id -u");
    assert_eq!(first_report(&upgraded)["exitCode"], 0, "{upgraded}");
}

/// A purge leaves nothing running, scheduled or enabled.
fn purge_leaves_nothing(host: &Machine) {
    host.ok("dpkg --purge croncommander");
    let left = host.sh("pgrep -l -f 'cc-(agent|privhelper)'");
    assert!(!left.ok(), "still running after the purge: {}", left.stdout);
    for gone in [
        "/etc/cron.d/croncommander",
        "/var/spool/cron/crontabs/cc-agent-user",
        "/var/lib/croncommander",
        "/var/lib/croncommander-helper",
        "/etc/croncommander",
        "/etc/systemd/system/sockets.target.wants/cc-privhelper.socket",
        "/etc/systemd/system/multi-user.target.wants/cc-agent.service",
    ] {
        assert!(
            !host.sh(&format!("test -e {gone}")).ok(),
            "{gone} is left after the purge"
        );
    }
}

/// [`run_guide`], with `bed_difference` run on the host in the guide's
/// first host block, after it writes helper.toml and before the helper
/// starts (a container difference, named at the call).
fn run_guide_with(
    name: &str,
    listener: &Machine,
    host: &Machine,
    bed_difference: &str,
) -> Vec<(DocBlock, String)> {
    let mut blocks = guide(name);
    let host_block = blocks
        .iter_mut()
        .find(|b| b.role == Role::Host)
        .expect("a host block");
    let at = host_block
        .script
        .find("mkdir -p /etc/systemd/system/cc-privhelper.service.d")
        .expect("the host block writes helper.toml, then the drop-in");
    host_block
        .script
        .insert_str(at, &format!("{bed_difference}\n"));
    run_blocks(name, blocks, listener, host)
}

/// The build steps install.md gives are the ones the test command runs.
#[test]
fn the_guides_build_steps_are_the_test_commands() {
    let script =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/test.sh"))
            .unwrap();
    let builds: Vec<DocBlock> = guide("install.md")
        .into_iter()
        .filter(|b| b.role == Role::Build)
        .collect();
    assert_eq!(builds.len(), 1, "install.md has one build block");
    for line in builds[0].script.lines().skip(1) {
        assert!(
            script.lines().any(|l| l.trim() == line.trim()),
            "install.md builds with `{line}`, which scripts/test.sh does not run"
        );
    }
    // Every sh block of both guides names where it runs (guide() fails
    // on one that does not).
    for g in ["install.md", "system-mode.md"] {
        assert!(guide(g).iter().any(|b| b.role == Role::Host), "{g}");
    }
}
