//! Issue "The root boundary holds": the first review's attacks of a
//! compromised agent on the root boundary — the report spool race, metadata
//! outside write paths, processes that outlive their job, scheduled root
//! jobs, other root processes, device nodes and mounts, concurrent cron
//! writes, allowed commands, the audit log, slow clients, the config's
//! paths, and a root job's containment seen from outside.

use super::*;

/// Finding 1: `cron-run` (root, started by cron) left its report in a
/// directory the agent's group may write, and changed the owner of its temp
/// file by path: a symlink renamed over the temp name made any file
/// root:cc-agent-user. Played 200 times with a refused command and 200
/// times with system mode turned off (the old cron file still calls
/// `cron-run`); the target file must never change.
#[test]
fn the_report_spool_race_never_gives_the_agent_a_root_file() {
    let Some((dir, agent)) = setup("ca-spool") else {
        return;
    };
    // The spool as the package made it: root:agent-group 0770.
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    nix::unistd::chown(&spool, None, Some(nix::unistd::Gid::from_raw(agent.1))).unwrap();
    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o770)).unwrap();
    let target = dir.path().join("target");
    std::fs::write(&target, "root's secret\n").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Root's file as it must stay; after a won race it is put back, so
    // every run is counted.
    let won = || {
        let m = std::fs::metadata(&target).unwrap();
        let changed = (m.uid(), m.gid(), m.mode() & 0o7777) != (0, 0, 0o600);
        if changed {
            nix::unistd::chown(
                &target,
                Some(nix::unistd::Uid::from_raw(0)),
                Some(nix::unistd::Gid::from_raw(0)),
            )
            .unwrap();
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        changed
    };
    let extra = format!("allowed_commands = [\"/bin/true\"]\n{}", on(dir.path()));
    let mut h = HelperProcess::start(dir.path(), &extra, agent);
    let entries = json!([{"id": "race", "schedule": "@yearly", "command": "/nonexistent/program"}]);
    let w = h.write_cron(&entries);
    assert_eq!(w["cron_written"]["installed"], json!(["race"]), "{w}");

    for (round, system_mode) in [("refused command", true), ("system mode off", false)] {
        if !system_mode {
            let cfg = std::fs::read_to_string(h.config()).unwrap();
            std::fs::write(
                h.config(),
                cfg.replace("system_mode = true", "system_mode = false"),
            )
            .unwrap();
            h.restart();
        }
        let racer = {
            let (spool, target) = (spool.clone(), target.clone());
            std::thread::spawn(move || {
                attacker_as(
                    agent,
                    &[
                        "spool-race",
                        spool.to_str().unwrap(),
                        target.to_str().unwrap(),
                        "10",
                    ],
                )
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        let start = Instant::now();
        let (mut runs, mut wins) = (0, 0);
        while runs < 200 && start.elapsed() < Duration::from_secs(9) {
            let _ = cron_run(&h, "race");
            runs += 1;
            wins += usize::from(won());
        }
        let (_, said) = racer.join().unwrap();
        eprintln!("{round}: {wins} of {runs} races won; attacker {said}");
        assert!(runs >= 200, "{round}: only {runs} runs in 9 s");
        assert_eq!(
            wins, 0,
            "{round}: the attacker changed root's file in {wins} of {runs} runs"
        );
    }
}

/// Finding 2: landlock does not govern chmod, chown or utimes, and the
/// default capabilities kept CHOWN, FOWNER and FSETID: a root job limited
/// to one directory could make a root-owned copy of a program setuid, give
/// a file to the agent, or open the cron file to everyone for a moment.
#[test]
fn a_root_job_cannot_change_metadata_outside_write_paths() {
    let Some((dir, agent)) = setup("ca-meta") else {
        return;
    };
    let h = HelperProcess::start(dir.path(), &on(dir.path()), agent);
    let w = h.write_cron(&json!([{"id": "a", "schedule": "@daily", "command": "/bin/true"}]));
    assert!(w["cron_written"].is_object(), "{w}");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let copy = outside.join("id");
    std::fs::copy("/usr/bin/id", &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let owned = outside.join("file");
    std::fs::write(&owned, "x").unwrap();
    let before = std::fs::metadata(&owned).unwrap().mtime();
    let cron = h.cron_file();
    let attempts = [
        ("setuid copy", format!("chmod 4755 {}", copy.display())),
        (
            "chown to the agent",
            format!("chown {} {}", agent.0, owned.display()),
        ),
        ("utimes", format!("touch -d 2001-01-01 {}", owned.display())),
        ("cron file 0666", format!("chmod 666 {}", cron.display())),
    ];
    for (i, (what, script)) in attempts.iter().enumerate() {
        let r = h.exec(&job(&format!("m-{i}"), "/bin/sh", &["-c", script], 30));
        let rep = report(&r);
        assert_ne!(rep["exitCode"], 0, "{what} succeeded: {rep}");
    }
    assert_eq!(std::fs::metadata(&copy).unwrap().mode() & 0o7777, 0o755);
    let m = std::fs::metadata(&owned).unwrap();
    assert_eq!((m.uid(), m.mtime()), (0, before));
    assert_eq!(std::fs::metadata(&cron).unwrap().mode() & 0o7777, 0o644);
    // Inside write_paths the same job still works.
    let inside = dir.path().join("writable/ok");
    let r = h.exec(&job(
        "m-ok",
        "/bin/sh",
        &["-c", &format!("echo ok > {}", inside.display())],
        30,
    ));
    assert_eq!(report(&r)["exitCode"], 0, "{r}");
}

/// Finding 3: a job that calls `setsid` left its process group, outlived
/// the timeout and, holding stdout, kept the supervisor spinning for ever;
/// 16 of them wedged the helper.
#[test]
fn no_process_of_a_root_job_outlives_its_timeout_or_its_end() {
    let Some((dir, agent)) = setup("ca-escape") else {
        return;
    };
    let h = HelperProcess::start(dir.path(), &on(dir.path()), agent);
    let held = ["sleep", "31.4159"];
    let detached = ["sleep", "27.1828"];
    kill_all(&held);
    kill_all(&detached);
    // Keeps stdout open, past a 2 s timeout.
    let r = exec_within(
        &h.socket(),
        agent,
        &job(
            "esc-1",
            "/bin/sh",
            &["-c", "setsid sleep 31.4159 & echo started; exec sleep 40"],
            2,
        ),
        Duration::from_secs(15),
    );
    let survivors = processes(&held);
    kill_all(&held);
    let r = r.expect("the helper did not answer within 15 s (a job kept its stdout open)");
    assert_eq!(report(&r)["exitCode"], 124, "{r}");
    assert!(
        survivors.is_empty(),
        "left running after the timeout: {survivors:?}"
    );
    // Detached, stdout closed, the job itself ends at once.
    let r = h.exec(&job(
        "esc-2",
        "/bin/sh",
        &[
            "-c",
            "setsid sleep 27.1828 >/dev/null 2>&1 < /dev/null & echo started",
        ],
        30,
    ));
    assert_eq!(report(&r)["exitCode"], 0, "{r}");
    let survivors = processes(&detached);
    kill_all(&detached);
    assert!(
        survivors.is_empty(),
        "left running after the job ended: {survivors:?}"
    );

    // Sixteen at once (every slot the helper had), then the helper still
    // answers, and each of the sixteen comes back.
    let waiters: Vec<_> = (0..16)
        .map(|i| {
            let j = job(
                &format!("esc-many-{i}"),
                "/bin/sh",
                &["-c", "setsid sleep 31.4159 & echo started; exec sleep 40"],
                2,
            );
            let socket = h.socket();
            std::thread::spawn(move || exec_within(&socket, agent, &j, Duration::from_secs(20)))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    let asked = request_within(
        &h.socket(),
        agent,
        &json!("status"),
        Duration::from_secs(10),
    );
    assert!(
        asked.is_some(),
        "status unanswered for 10 s while 16 jobs escaped"
    );
    assert!(start.elapsed() < Duration::from_secs(10));
    let answered = waiters
        .into_iter()
        .filter_map(|w| w.join().unwrap())
        .count();
    let left = processes(&held);
    kill_all(&held);
    assert_eq!(answered, 16, "escaping jobs never came back");
    assert!(left.is_empty(), "{} escaped processes left", left.len());
}

/// Finding 4: `cron-run` ran scheduled root jobs itself, outside the
/// helper's service. Now it only asks the running helper, which runs the
/// entry in the same containment as an ad-hoc job and keeps the report
/// for the agent (taken over the socket, never through a directory).
#[test]
fn scheduled_root_jobs_run_in_the_helpers_containment() {
    let Some((dir, agent)) = setup("ca-sched") else {
        return;
    };
    let h = HelperProcess::start(dir.path(), &on(dir.path()), agent);
    let entries =
        json!([{"id": "sched", "schedule": "@yearly", "command": "/bin/cat /proc/self/status"}]);
    let w = h.write_cron(&entries);
    assert_eq!(w["cron_written"]["installed"], json!(["sched"]), "{w}");
    let adhoc = h.exec(&job("adhoc", "/bin/cat", &["/proc/self/status"], 30));
    let out = cron_run(&h, "sched");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let taken = h.request(&json!("take_reports"));
    let reports = taken["reports"]
        .as_array()
        .unwrap_or_else(|| panic!("{taken}"));
    let sched = reports
        .iter()
        .find(|r| r["jobId"] == "sched")
        .unwrap_or_else(|| panic!("no scheduled report: {taken}"));
    assert_eq!(sched["executingUid"], 0);
    let field = cc_e2e::status_field;
    let (s, a) = (
        sched["stdout"].as_str().unwrap(),
        report(&adhoc)["stdout"].as_str().unwrap(),
    );
    for name in ["CapBnd:", "CapEff:", "NoNewPrivs:", "Seccomp:"] {
        assert_eq!(field(s, name), field(a, name), "{name}\n{s}\n{a}");
    }
    // Its own PID namespace: the job is 1 there (seen from inside, its
    // /proc knows no other), and its name is the program's.
    assert_eq!(field(s, "NSpid:"), "1", "{s}");
    assert_eq!(field(s, "Name:"), "cat", "{s}");
    // Once acknowledged, the report is gone; nothing was left in a spool.
    let ids: Vec<Value> = reports.iter().map(|r| r["reportId"].clone()).collect();
    let acked = h.request(&json!({"ack_reports": {"report_ids": ids}}));
    assert_eq!(acked["acked"], reports.len(), "{acked}");
    assert_eq!(h.request(&json!("take_reports"))["reports"], json!([]));
    assert!(
        std::fs::read_dir(dir.path().join("spool")).map_or(true, |mut d| d.next().is_none()),
        "a report was left in a directory the agent can write"
    );
}

/// Finding 5 and the suite's own classes: a root job reaching another root
/// process (signal, ptrace, `/proc/PID/mem`), an abstract Unix socket, or a
/// root-only socket in /run.
#[test]
fn a_root_job_cannot_reach_other_root_processes_or_their_sockets() {
    let Some((dir, agent)) = setup("ca-reach") else {
        return;
    };
    let h = HelperProcess::start(dir.path(), &on(dir.path()), agent);
    let mut victim = Command::new("sleep").arg("301.5").spawn().unwrap();
    let vpid = victim.id().to_string();
    // Another root job, whose capabilities are the attacker's own.
    let sibling = {
        let socket = h.socket();
        std::thread::spawn(move || {
            exec_within(
                &socket,
                agent,
                &job("sibling", "/bin/sleep", &["302.5"], 8),
                Duration::from_secs(30),
            )
        })
    };
    let spid = cc_e2e::wait_for(Duration::from_secs(10), "the sibling root job", || {
        processes(&["/bin/sleep", "302.5"])
            .first()
            .map(i32::to_string)
    });
    use std::os::linux::net::SocketAddrExt;
    let name = format!("cc-victim-{}", std::process::id());
    let abstract_listener = std::os::unix::net::UnixListener::bind_addr(
        &std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap(),
    )
    .unwrap();
    let run_sock = PathBuf::from(format!("/run/cc-victim-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&run_sock);
    let path_listener = std::os::unix::net::UnixListener::bind(&run_sock).unwrap();
    std::fs::set_permissions(&run_sock, std::fs::Permissions::from_mode(0o600)).unwrap();

    let attacker = bin("cc-attacker");
    let attacker = attacker.to_str().unwrap();
    let mut got_through = Vec::new();
    for (what, args) in [
        ("SIGTERM to a root process", vec!["signal", vpid.as_str()]),
        ("ptrace a root process", vec!["ptrace", vpid.as_str()]),
        (
            "/proc/PID/mem of a root process",
            vec!["open-mem", vpid.as_str()],
        ),
        ("SIGTERM to another root job", vec!["signal", spid.as_str()]),
        ("ptrace another root job", vec!["ptrace", spid.as_str()]),
        (
            "/proc/PID/mem of another root job",
            vec!["open-mem", spid.as_str()],
        ),
        (
            "an abstract Unix socket",
            vec!["connect-abstract", name.as_str()],
        ),
        (
            "a root-only socket in /run",
            vec!["connect-path", run_sock.to_str().unwrap()],
        ),
    ] {
        let r = h.exec(&job("reach", attacker, &args, 30));
        let rep = report(&r);
        if rep["exitCode"] != 1 {
            got_through.push(format!("{what}: {rep}"));
        }
    }
    let victim_alive = victim.try_wait().unwrap().is_none();
    let _ = victim.kill();
    let _ = victim.wait();
    drop((abstract_listener, path_listener));
    let _ = std::fs::remove_file(&run_sock);
    let sib = sibling.join().unwrap();
    assert!(
        got_through.is_empty(),
        "a root job reached:\n{}",
        got_through.join("\n")
    );
    assert!(victim_alive, "the root process was killed");
    assert_eq!(
        sib.map(|s| s["exec_result"]["exitCode"].clone()),
        Some(json!(124))
    );
}

/// A root job may not create device nodes or mounts, and no configuration
/// can give it the capabilities to (or to undo its containment).
#[test]
fn device_nodes_and_mounts_are_refused_and_their_capabilities_never_kept() {
    let Some((dir, agent)) = setup("ca-dev") else {
        return;
    };
    let h = HelperProcess::start(dir.path(), &on(dir.path()), agent);
    let w = dir.path().join("writable");
    for (what, script) in [
        ("mknod", format!("mknod {}/null c 1 3", w.display())),
        ("mount", format!("mount -t tmpfs none {}", w.display())),
    ] {
        let r = h.exec(&job("dev", "/bin/sh", &["-c", &script], 30));
        assert_ne!(report(&r)["exitCode"], 0, "{what}: {r}");
    }
    assert!(!w.join("null").exists());
    drop(h);
    for cap in [
        "CAP_SYS_ADMIN",
        "CAP_MKNOD",
        "CAP_SYS_PTRACE",
        "CAP_CHOWN",
        "CAP_FOWNER",
    ] {
        let cfg = format!("system_mode = true\n[sandbox]\nkeep_capabilities = [\"{cap}\"]\n");
        let err = helper_refuses(dir.path(), &cfg);
        assert!(err.contains(cap) && err.contains("never"), "{cap}: {err}");
    }
}

/// Finding 6: concurrent `write_cron` requests deleted each other's temp
/// files and left the cron file and the state file disagreeing.
#[test]
fn concurrent_cron_writes_leave_the_cron_file_and_state_in_agreement() {
    let Some((dir, agent)) = setup("ca-cronrace") else {
        return;
    };
    let h = HelperProcess::start(dir.path(), &on(dir.path()), agent);
    let mut disagreements = Vec::new();
    for round in 0..60 {
        let writers: Vec<_> = (0..4)
            .map(|k| {
                let entries: Vec<Value> = (0..=k)
                    .map(|n| json!({"id": format!("r{round}-{k}-{n}"), "schedule": "@daily", "command": "/bin/true"}))
                    .collect();
                let entries = Value::Array(entries);
                let st = cc_e2e::signing::cron_statement(&entries, &h.hostname, cc_e2e::signing::next_generation());
                let signed = cc_e2e::signing::sign_cron(&st, &cc_e2e::signing::operator().1);
                let req = json!({"write_cron": {"cron_refresh": entries.to_string(), "signed": serde_json::to_string(&signed).unwrap()}});
                let socket = h.socket();
                std::thread::spawn(move || request_within(&socket, agent, &req, Duration::from_secs(20)))
            })
            .collect();
        for w in writers {
            let _ = w.join();
        }
        let cron: Option<std::collections::BTreeSet<String>> =
            std::fs::read_to_string(h.cron_file()).ok().map(|t| {
                t.lines()
                    .filter(|l| !l.starts_with('#') && l.contains(" cron-run "))
                    .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
                    .collect()
            });
        // A torn or missing state file is a disagreement too. Its entries
        // are those of the signed statement it keeps.
        let stated: Option<std::collections::BTreeSet<String>> =
            std::fs::read_to_string(dir.path().join("state/system-cron.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .and_then(|v| {
                    serde_json::from_value::<cc_proto::sign::Signed>(v["signed"].clone()).ok()
                })
                .and_then(|s| cc_proto::sign::statement_bytes(&s).ok())
                .and_then(|b| serde_json::from_slice::<cc_proto::sign::CronStatement>(&b).ok())
                .map(|st| st.entries.into_iter().map(|e| e.id).collect());
        if cron.is_none() || cron != stated {
            disagreements.push(format!("round {round}: cron {cron:?} state {stated:?}"));
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} of 60 rounds:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
}

/// Finding 7: `allowed_commands` compared resolved paths (a symlink allowed
/// its target under any name), checked the owner of nothing, and checked
/// a path, not the arguments.
#[test]
fn allowed_commands_are_exact_root_owned_paths_with_optional_argument_patterns() {
    let Some((dir, agent)) = setup("ca-allow") else {
        return;
    };
    let links = dir.path().join("links");
    std::fs::create_dir_all(&links).unwrap();
    std::os::unix::fs::symlink("/usr/bin/echo", links.join("ok")).unwrap();
    let agentdir = dir.path().join("agentdir");
    std::fs::create_dir_all(&agentdir).unwrap();
    std::fs::copy("/usr/bin/true", agentdir.join("tool")).unwrap();
    nix::unistd::chown(
        &agentdir,
        Some(nix::unistd::Uid::from_raw(agent.0)),
        Some(nix::unistd::Gid::from_raw(agent.1)),
    )
    .unwrap();
    let extra = format!(
        "allowed_commands = [{:?}, {:?}, {{ path = \"/usr/bin/printf\", args = [\"%s-ok\", \"*\"] }}]\n{}",
        links.join("ok"),
        agentdir.join("tool"),
        on(dir.path())
    );
    let h = HelperProcess::start(dir.path(), &extra, agent);
    let refused = |r: &Value| r["refused"]["code"] == "command_not_allowed";
    // The target of an allowed symlink, under its own name; the symlink.
    let r = h.exec(&job("s1", "/usr/bin/echo", &["hi"], 30));
    assert!(refused(&r), "{r}");
    let r = h.exec(&job("s2", links.join("ok").to_str().unwrap(), &["hi"], 30));
    assert!(refused(&r), "{r}");
    // The agent swaps the allowed program for its own script.
    let pwned = dir.path().join("writable/pwned");
    let script = format!("#!/bin/sh\nid -u > {}\n", pwned.display());
    let swap = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "rm -f {tool} && printf '%s' \"$0\" > {tool} && chmod 755 {tool}",
            tool = agentdir.join("tool").display()
        ))
        .arg(&script)
        .uid(agent.0)
        .gid(agent.1)
        .status()
        .unwrap();
    assert!(swap.success());
    let r = h.exec(&job("s3", agentdir.join("tool").to_str().unwrap(), &[], 30));
    assert!(refused(&r), "{r}");
    assert!(!pwned.exists(), "root ran the agent's script");
    // Argument patterns.
    let r = h.exec(&job("p1", "/usr/bin/printf", &["%s-ok", "x"], 30));
    assert_eq!(report(&r)["stdout"], "x-ok", "{r}");
    for args in [vec!["%s-bad", "x"], vec!["%s-ok", "x", "y"], vec!["%s-ok"]] {
        let r = h.exec(&job("p2", "/usr/bin/printf", &args, 30));
        assert!(refused(&r), "{args:?}: {r}");
    }
}

/// Finding 8: the job id was logged before it was validated (a newline
/// forged a whole line), and neither the argv of a root run nor the cron
/// entries written were logged.
#[test]
fn the_audit_log_holds_only_validated_values_and_every_root_argv() {
    let Some((dir, agent)) = setup("ca-audit") else {
        return;
    };
    let h = HelperProcess::start(dir.path(), &on(dir.path()), agent);
    let forged = "x\nFORGED helper request decision=\"done\"";
    let r = h.exec(&json!({"jobId": forged, "command": "/bin/true"}));
    assert_eq!(r["refused"]["code"], "invalid_payload", "{r}");
    let r = h.exec(&job("argv-1", "/usr/bin/echo", &["a b", "c\"d"], 30));
    assert_eq!(report(&r)["exitCode"], 0);
    let entries =
        json!([{"id": "logged", "schedule": "*/5 * * * *", "command": "/usr/bin/echo five"}]);
    h.write_cron(&entries);
    let log = h.log();
    assert!(
        !log.lines().any(|l| l.starts_with("FORGED")),
        "a forged line reached the audit log:\n{log}"
    );
    let run = log
        .lines()
        .find(|l| l.contains("argv-1") && l.contains("argv="))
        .unwrap_or_else(|| panic!("no argv for the root run:\n{log}"));
    assert!(run.contains(r#"/usr/bin/echo 'a b' 'c\"d'"#), "{run}");
    assert!(
        log.lines().any(|l| l.contains("cron entry written")
            && l.contains("logged")
            && l.contains("*/5 * * * *")
            && l.contains("/usr/bin/echo five")),
        "{log}"
    );
}

/// Finding 9: the 30 s timeout was per read, so 16 clients sending a byte
/// at a time held every slot; a root request (a scheduled job) waited
/// behind them.
#[test]
fn slow_clients_cannot_hold_the_helper() {
    let Some((dir, agent)) = setup("ca-slow") else {
        return;
    };
    let h = HelperProcess::start(dir.path(), &on(dir.path()), agent);
    let entries = json!([{"id": "tick", "schedule": "@yearly", "command": "/bin/true"}]);
    h.write_cron(&entries);
    let socket = h.socket();
    let slow: Vec<_> = (0..24)
        .map(|_| {
            let s = socket.to_str().unwrap().to_owned();
            std::thread::spawn(move || attacker_as(agent, &["trickle", &s, "20"]).1)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    // A scheduled root job gets through at once.
    let start = Instant::now();
    let out = cron_run(&h, "tick");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "cron-run waited {:?}",
        start.elapsed()
    );
    // The agent's own requests wait at most one request deadline.
    let asked = request_within(&socket, agent, &json!("status"), Duration::from_secs(10));
    assert!(asked.is_some(), "status unanswered for 10 s");
    for s in slow {
        let said = s.join().unwrap();
        let held: f64 = said
            .trim()
            .strip_prefix("held_secs=")
            .and_then(|v| v.parse().ok())
            .unwrap_or(99.0);
        assert!(held < 8.0, "a slow client was kept {held} s");
    }
}

/// Finding 10: `write_paths` were compared as text (`writable/..` let a job
/// append to the helper's config), the protected list missed the system's
/// own trees, and the config's parent directories were not checked.
#[test]
fn the_config_refuses_dot_dot_protected_trees_and_unsafe_parents() {
    let Some((dir, _agent)) = setup("ca-config") else {
        return;
    };
    let up = format!(
        "system_mode = true\n[sandbox]\nwrite_paths = [{:?}]\n",
        dir.path().join("refuse/writable/..")
    );
    std::fs::create_dir_all(dir.path().join("refuse/writable")).unwrap();
    let err = helper_refuses(dir.path(), &up);
    assert!(err.contains("write_paths"), "{err}");
    for protected in [
        "/usr/local",
        "/etc/sudoers.d",
        "/etc/systemd/system",
        "/usr",
    ] {
        let cfg = format!("system_mode = true\n[sandbox]\nwrite_paths = [{protected:?}]\n");
        let err = helper_refuses(dir.path(), &cfg);
        assert!(err.contains("write_paths"), "{protected}: {err}");
    }
    // A root-owned config in a directory the agent may write.
    let (uid, gid) = agent_user().unwrap();
    let shaky = dir.path().join("shaky");
    std::fs::create_dir_all(&shaky).unwrap();
    std::fs::write(shaky.join("helper.toml"), "system_mode = false\n").unwrap();
    std::fs::set_permissions(
        shaky.join("helper.toml"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    nix::unistd::chown(
        &shaky,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .unwrap();
    let err = helper_refuses_config(&shaky.join("helper.toml"));
    assert!(err.contains("not owned by root"), "{err}");
}

/// From outside, through /proc: a root job has its own mount and PID
/// namespaces, the configured bounding set, no_new_privs and its limits;
/// the helper says which landlock ABI it enforces. A job that starts
/// 10,000 processes or allocates 10 GiB is stopped by its limit and says
/// so, and the helper keeps answering.
#[test]
fn a_root_jobs_containment_is_seen_from_outside_and_its_limits_hold() {
    let Some((dir, agent)) = setup("ca-outside") else {
        return;
    };
    let h = HelperProcess::start(dir.path(), &on(dir.path()), agent);
    let status = h.request(&json!("status"));
    assert!(
        status["status"]["landlock_abi"].as_u64().unwrap_or(0) >= 6,
        "{status}"
    );
    let long = {
        let socket = h.socket();
        std::thread::spawn(move || {
            exec_within(
                &socket,
                agent,
                &job("outside", "/bin/sleep", &["33.3"], 4),
                Duration::from_secs(30),
            )
        })
    };
    let pid = cc_e2e::wait_for(Duration::from_secs(10), "the root job", || {
        processes(&["/bin/sleep", "33.3"]).first().copied()
    });
    job_seen_from_proc(&h, pid);
    let done = long.join().unwrap().expect("the long job's report");
    assert_eq!(done["exec_result"]["exitCode"], 124);

    let attacker = bin("cc-attacker");
    let attacker = attacker.to_str().unwrap();
    fork_bomb_is_stopped(&h, agent, attacker);
    allocation_is_stopped(&h, attacker);
    assert_eq!(h.request(&json!("status"))["status"]["system_mode"], true);
}

/// The running root job `pid`, seen through /proc: its own namespaces,
/// the configured bounding set, no_new_privs, seccomp, PID 1 of its
/// namespace, no core dumps, and its cgroup's limits.
fn job_seen_from_proc(h: &HelperProcess, pid: i32) {
    let helper = h.child.id();
    for ns in ["mnt", "pid", "ipc", "uts"] {
        let job_ns = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        let helper_ns = std::fs::read_link(format!("/proc/{helper}/ns/{ns}")).unwrap();
        assert_ne!(
            job_ns, helper_ns,
            "the job shares the helper's {ns} namespace"
        );
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| cc_e2e::status_field(&status, name);
    // The default set: DAC_OVERRIDE, KILL, SETGID, SETUID, NET_BIND_SERVICE,
    // AUDIT_WRITE — nothing that changes an owner or a mode, and not
    // DAC_READ_SEARCH (files by handle).
    let want: u64 = [1u32, 5, 6, 7, 10, 29].iter().map(|b| 1u64 << b).sum();
    assert_eq!(field("CapBnd:"), format!("{want:016x}"), "{status}");
    assert_eq!(field("NoNewPrivs:"), "1");
    // The helper's own seccomp filter (the helper itself runs under none
    // here: no service manager).
    assert_eq!(
        cc_e2e::status_field(
            &std::fs::read_to_string(format!("/proc/{helper}/status")).unwrap(),
            "Seccomp:"
        ),
        "0"
    );
    assert_eq!(field("Seccomp:"), "2", "{status}");
    assert_eq!(
        field("NSpid:").split_whitespace().last(),
        Some("1"),
        "{status}"
    );
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    assert!(
        limits.lines().any(
            |l| l.starts_with("Max core file size") && l.split_whitespace().nth(4) == Some("0")
        ),
        "{limits}"
    );
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let limit_of = |controller: &str, file: &str| -> Option<String> {
        cgroups.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctl, path) = (parts.next()?, parts.next()?, parts.next()?);
            let base = if ctl.split(',').any(|c| c == controller) {
                format!("/sys/fs/cgroup/{controller}{path}")
            } else if ctl.is_empty() {
                format!("/sys/fs/cgroup{path}")
            } else {
                return None;
            };
            std::fs::read_to_string(format!("{base}/{file}"))
                .ok()
                .map(|s| s.trim().to_owned())
        })
    };
    assert_eq!(
        limit_of("pids", "pids.max").as_deref(),
        Some("512"),
        "{cgroups}"
    );
    let mem =
        limit_of("memory", "memory.limit_in_bytes").or_else(|| limit_of("memory", "memory.max"));
    assert_eq!(mem.as_deref(), Some("1073741824"), "{cgroups}");
}

/// A job that starts 10,000 processes is stopped by its process limit and
/// says so; the helper keeps answering meanwhile.
fn fork_bomb_is_stopped(h: &HelperProcess, agent: (u32, u32), attacker: &str) {
    let fork = {
        let socket = h.socket();
        let a = attacker.to_owned();
        std::thread::spawn(move || {
            exec_within(
                &socket,
                agent,
                &job("fork", &a, &["spawn", "10000"], 60),
                Duration::from_secs(90),
            )
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let asked = request_within(&h.socket(), agent, &json!("status"), Duration::from_secs(5));
    assert!(
        asked.is_some(),
        "the helper stopped answering during the fork bomb"
    );
    let fork = fork.join().unwrap().expect("the fork job's report");
    let rep = report(&fork);
    let started: u64 = rep["stdout"]
        .as_str()
        .unwrap()
        .trim()
        .strip_prefix("started=")
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX);
    assert!(started < 512, "{rep}");
    assert!(
        rep["warning"]
            .as_str()
            .unwrap_or("")
            .contains("process limit"),
        "{rep}"
    );
}

/// A job that allocates 10 GiB is killed by its memory limit and says so.
fn allocation_is_stopped(h: &HelperProcess, attacker: &str) {
    let r = h.exec(&job("alloc", attacker, &["alloc", "10240"], 120));
    let rep = report(&r);
    assert_eq!(rep["exitCode"], 137, "{rep}");
    assert!(
        rep["warning"]
            .as_str()
            .unwrap_or("")
            .contains("memory limit"),
        "{rep}"
    );
}
