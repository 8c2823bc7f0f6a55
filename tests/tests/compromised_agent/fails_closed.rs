//! Issue "Root jobs stay in their box, and the helper fails closed": a
//! second review's findings, each played against the real helper.

use super::*;

/// Finding 1: with `CAP_DAC_READ_SEARCH` in the default keep set, a root
/// job found any file's handle (`name_to_handle_at`) and opened it for
/// writing through a write path's mount (`open_by_handle_at`), past the
/// read-only tree and landlock; `linkat(AT_EMPTY_PATH)` linked a file from
/// outside into a write path the same way.
#[test]
fn a_root_job_cannot_reach_files_outside_write_paths_by_handle() {
    let Some((dir, agent)) = setup("ca-handle") else {
        return;
    };
    let h = HelperProcess::start(dir.path(), &on(dir.path()), agent);
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let victim = outside.join("trusted.toml");
    std::fs::write(&victim, "trusted_keys = []\n").unwrap();
    let writable = dir.path().join("writable");
    let (v, w) = (victim.to_str().unwrap(), writable.to_str().unwrap());
    let a = attacker();
    let write = h.exec(&job(
        "handle-write",
        &a,
        &["handle-write", v, w, "injected"],
        30,
    ));
    let link = h.exec(&job(
        "handle-link",
        &a,
        &["handle-link", v, w, "linked"],
        30,
    ));
    for (what, r) in [("write", &write), ("link", &link)] {
        let rep = report(r);
        assert_ne!(
            rep["exitCode"], 0,
            "the {what} by handle got through: {rep}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "trusted_keys = []\n"
    );
    assert!(!writable.join("linked").exists());
}

/// Finding 2: the installed generation was read before the cron file's
/// lock was taken, so of two signed lists sent together (G2, then the
/// older G1) both passed the check and the older often landed last (18 of
/// 20 rounds): its removed entries ran again, and the honest G2 was then
/// refused as replayed.
#[test]
fn two_signed_cron_lists_sent_together_never_roll_back() {
    let Some((dir, agent)) = setup("ca-rollback") else {
        return;
    };
    let h = HelperProcess::start(dir.path(), &on(dir.path()), agent);
    let installed = || -> u64 {
        std::fs::read_to_string(dir.path().join("state/system-cron.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| {
                serde_json::from_value::<cc_proto::sign::Signed>(v["signed"].clone()).ok()
            })
            .and_then(|s| cc_proto::sign::statement_bytes(&s).ok())
            .and_then(|b| serde_json::from_slice::<cc_proto::sign::CronStatement>(&b).ok())
            .map_or(0, |st| st.generation)
    };
    let mut rolled_back = Vec::new();
    for round in 0..50 {
        let signed = |generation: u64, id: &str| {
            let entries = json!([{"id": id, "schedule": "@daily", "command": "/bin/true"}]);
            let st = cc_e2e::signing::cron_statement(&entries, &h.hostname, generation);
            let s = cc_e2e::signing::sign_cron(&st, &cc_e2e::signing::operator().1);
            json!({"write_cron": {"cron_refresh": entries.to_string(), "signed": serde_json::to_string(&s).unwrap()}})
        };
        let g1 = cc_e2e::signing::next_generation();
        let g2 = cc_e2e::signing::next_generation();
        let (older, newer) = (
            signed(g1, &format!("old-{round}")),
            signed(g2, &format!("new-{round}")),
        );
        let send = |req: Value| {
            let socket = h.socket();
            std::thread::spawn(move || {
                request_within(&socket, agent, &req, Duration::from_secs(20))
            })
        };
        let a = send(newer);
        let b = send(older);
        let _ = (a.join(), b.join());
        let now = installed();
        if now != g2 {
            rolled_back.push(format!("round {round}: installed {now}, newest {g2}"));
        }
    }
    assert!(
        rolled_back.is_empty(),
        "{} of 50 rounds rolled back:\n{}",
        rolled_back.len(),
        rolled_back.join("\n")
    );
    // A list signed too far ahead would lock out every later one.
    let far = cc_e2e::signing::next_generation() + 25 * 3600 * 1000;
    let entries = json!([{"id": "far", "schedule": "@daily", "command": "/bin/true"}]);
    let st = cc_e2e::signing::cron_statement(&entries, &h.hostname, far);
    let s = cc_e2e::signing::sign_cron(&st, &cc_e2e::signing::operator().1);
    let r = h.write_cron_signed(&entries, Some(&s));
    assert!(
        r["refused"].is_object(),
        "a generation 25 h ahead was accepted: {r}"
    );
}

/// Finding 3: write paths were `nosuid` only inside the job's mount
/// namespace: a root job made a setuid-root shell there, and outside any
/// user ran it as euid 0.
#[test]
fn a_setuid_file_made_by_a_root_job_does_not_outlive_it() {
    let Some((dir, agent)) = setup("ca-setuid") else {
        return;
    };
    let h = HelperProcess::start(dir.path(), &on(dir.path()), agent);
    let w = dir.path().join("writable");
    let script = format!(
        "cp /bin/sh {w}/rootsh; chmod 4755 {w}/rootsh; cp /bin/sh {w}/groupsh; chmod g+s {w}/groupsh; install -m 6755 /bin/sh {w}/installed",
        w = w.display()
    );
    let r = h.exec(&job("setuid", "/bin/sh", &["-c", &script], 30));
    let _ = report(&r);
    for name in ["rootsh", "groupsh", "installed"] {
        let path = w.join(name);
        if let Ok(m) = std::fs::metadata(&path) {
            assert_eq!(
                m.mode() & 0o6000,
                0,
                "{name} kept its set-id bits: {:o}",
                m.mode() & 0o7777
            );
        }
    }
    // And as nobody, outside the job, the shell it left is nobody's.
    let rootsh = w.join("rootsh");
    if rootsh.exists() {
        let out = Command::new(&rootsh)
            .args(["-p", "-c", "id -u"])
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "65534");
    }
}

/// Finding 4: a reload whose config had any error kept the old key set,
/// so a key removed in the same edit as a mistake stayed trusted; a reload
/// also dropped changes to other fields without a word.
#[test]
fn a_reload_that_cannot_apply_the_config_trusts_no_key() {
    let Some((dir, agent)) = setup("ca-reload") else {
        return;
    };
    let h = HelperProcess::start(dir.path(), &on(dir.path()), agent);
    let ok = h.exec(&job("before", "/usr/bin/id", &["-u"], 30));
    assert_eq!(report(&ok)["exitCode"], 0, "{ok}");
    let good = std::fs::read_to_string(h.config()).unwrap();
    // The operator's key is revoked, and in the same edit a write path
    // that does not exist.
    let other = cc_e2e::signing::trusted_line(&cc_e2e::signing::new_key().1, "other");
    let broken = good
        .lines()
        .map(|l| {
            if l.starts_with("trusted_keys") {
                format!("trusted_keys = [{other:?}]")
            } else if l.starts_with("write_paths") {
                format!("write_paths = [{:?}]", dir.path().join("no-such-dir"))
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(h.config(), &broken).unwrap();
    let pid = nix::unistd::Pid::from_raw(h.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    cc_e2e::wait_for(
        Duration::from_secs(10),
        "the failed reload's log line",
        || {
            h.log()
                .lines()
                .any(|l| l.contains("ERROR") && l.contains("no key is trusted"))
                .then_some(())
        },
    );
    let r = h.exec(&job("revoked", "/usr/bin/id", &["-u"], 30));
    assert_eq!(
        r["refused"]["code"], "signature_refused",
        "the revoked key still ran: {r}"
    );
    // `check-config` says what is wrong without serving.
    let check = Command::new(bin("cc-privhelper"))
        .args(["check-config", "--config"])
        .arg(h.config())
        .output()
        .unwrap();
    assert!(!check.status.success());
    assert!(
        String::from_utf8_lossy(&check.stderr).contains("no-such-dir"),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // A valid config again: its keys, and the fields a reload does not
    // apply are named.
    let next = good.replace(
        "system_mode = true",
        "system_mode = true\nallowed_commands = [\"/usr/bin/id\"]",
    );
    std::fs::write(h.config(), next).unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    cc_e2e::wait_for(Duration::from_secs(10), "the next reload", || {
        h.log()
            .lines()
            .any(|l| l.contains("not applied") && l.contains("allowed_commands"))
            .then_some(())
    });
    let back = h.exec(&job("after", "/usr/bin/id", &["-u"], 30));
    assert_eq!(report(&back)["exitCode"], 0, "{back}");
}

/// Finding 5: a root run was logged only when it ended, and outlived a
/// helper killed with SIGKILL (`sleep 40`, timeout 5, still running as
/// uid 0 with parent 1 seven seconds later, never logged at all).
#[test]
fn a_root_run_is_logged_when_it_starts_and_dies_with_its_helper() {
    let Some((dir, agent)) = setup("ca-deathsig") else {
        return;
    };
    let mut h = HelperProcess::start(dir.path(), &on(dir.path()), agent);
    let socket = h.socket();
    let runner = std::thread::spawn(move || {
        exec_within(
            &socket,
            agent,
            &job("orphan", "/bin/sleep", &["40.7"], 5),
            Duration::from_secs(20),
        )
    });
    let pid = cc_e2e::wait_for(Duration::from_secs(10), "the root job", || {
        processes(&["/bin/sleep", "40.7"]).first().copied()
    });
    // The run is logged while it runs (the line is written before the
    // job starts, so it is there by now).
    let started = h
        .log()
        .lines()
        .find(|l| l.contains("root run started") && l.contains("orphan"))
        .map(str::to_owned);
    let _ = h.child.kill();
    let _ = h.child.wait();
    let gone = Instant::now() + Duration::from_secs(1);
    while Instant::now() < gone && std::path::Path::new(&format!("/proc/{pid}")).exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = processes(&["/bin/sleep", "40.7"]);
    kill_all(&["/bin/sleep", "40.7"]);
    assert!(
        left.is_empty(),
        "the job outlived its helper by 1 s: {left:?}"
    );
    let started = started.expect("no audit line while the root run ran");
    assert!(
        started.contains("/bin/sleep") && started.contains("40.7"),
        "{started}"
    );
    assert!(started.contains("suite-operator"), "{started}");
    let _ = runner.join();
    // The next helper's run ends with a line too.
    h.restart();
    let r = h.exec(&job("ended", "/usr/bin/id", &["-u"], 30));
    assert_eq!(report(&r)["exitCode"], 0);
    let log = h.log();
    assert!(
        log.lines().any(|l| l.contains("root run ended")
            && l.contains("ended")
            && l.contains("exit_code=0")),
        "{log}"
    );
}

/// Finding 6: jobs shared the host's IPC namespace (a job found a root-only
/// SysV segment and could leave queues behind) and could create user
/// namespaces.
#[test]
fn a_root_job_has_its_own_ipc_and_creates_no_user_namespace() {
    let Some((dir, agent)) = setup("ca-ipc") else {
        return;
    };
    let h = HelperProcess::start(dir.path(), &on(dir.path()), agent);
    let key = (std::process::id() % 100_000 + 7_000_000).to_string();
    let made = Command::new(bin("cc-attacker"))
        .args(["shm-make", &key])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let a = attacker();
    let shm = h.exec(&job("shm", &a, &["shm-find", &key], 30));
    let _ = Command::new("ipcrm").args(["-M", &key]).output();
    let userns = h.exec(&job("userns", &a, &["userns"], 30));
    assert_ne!(
        report(&userns)["exitCode"],
        0,
        "the job made a user namespace: {userns}"
    );
    assert_ne!(
        report(&shm)["exitCode"],
        0,
        "the job found the host's segment: {shm}"
    );
}

/// Finding 7, from reading: the socket's directory was made and chowned by
/// path without a look at the directories above it, and write paths were
/// checked for symlinks but not for who may replace them: a non-root owner
/// of a directory above either could swap what the helper then binds or
/// chowns. Both chains must be root's now, as the config's is.
#[test]
fn the_socket_and_write_paths_sit_below_root_owned_directories_only() {
    let Some((dir, (uid, gid))) = setup("ca-chains") else {
        return;
    };
    let agents = dir.path().join("agents");
    std::fs::create_dir_all(agents.join("run")).unwrap();
    std::fs::create_dir_all(agents.join("backups")).unwrap();
    nix::unistd::chown(
        &agents,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .unwrap();
    // A write path below the agent's directory.
    let cfg = format!(
        "system_mode = true\n[sandbox]\nwrite_paths = [{:?}]\n",
        agents.join("backups")
    );
    let err = helper_refuses(dir.path(), &cfg);
    assert!(
        err.contains("write_paths") && err.contains("not owned by root"),
        "{err}"
    );
    // The socket below the agent's directory.
    let err = helper_refuses_at(dir.path(), &agents.join("run/helper.sock"), "");
    assert!(
        err.contains("socket") && err.contains("not owned by root"),
        "{err}"
    );
}

/// Finding 7, from reading: `allowed_commands` held the script to its
/// root-owned chain but not the interpreter its `#!` line names, so
/// whoever could replace the interpreter ran as root through an allowed
/// script.
#[test]
fn an_allowed_scripts_interpreter_is_checked_like_the_script() {
    let Some((dir, (uid, gid))) = setup("ca-interp") else {
        return;
    };
    let theirs = dir.path().join("theirs");
    std::fs::create_dir_all(&theirs).unwrap();
    std::fs::copy("/bin/sh", theirs.join("sh")).unwrap();
    nix::unistd::chown(
        &theirs,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .unwrap();
    let tools = dir.path().join("tools");
    std::fs::create_dir_all(&tools).unwrap();
    let script = tools.join("backup");
    std::fs::write(
        &script,
        format!("#!{}\necho backed up\n", theirs.join("sh").display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mine = tools.join("backup-ok");
    std::fs::write(&mine, "#!/bin/sh\necho backed up\n").unwrap();
    std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o755)).unwrap();
    let extra = format!(
        "allowed_commands = [{:?}, {:?}]\n{}",
        script,
        mine,
        on(dir.path())
    );
    let h = HelperProcess::start(dir.path(), &extra, (uid, gid));
    let r = h.exec(&job("interp", script.to_str().unwrap(), &[], 30));
    assert_eq!(r["refused"]["code"], "command_not_allowed", "{r}");
    assert!(
        r["refused"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("interpreter"),
        "{r}"
    );
    // A script whose interpreter is root's runs.
    let ok = h.exec(&job("interp-ok", mine.to_str().unwrap(), &[], 30));
    assert_eq!(report(&ok)["stdout"], "backed up\n", "{ok}");
}
