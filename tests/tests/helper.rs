//! cc-privhelper as root with the real binaries, spoken to as the
//! unprivileged cc-agent-user: every refusal, and the sandbox checked from
//! outside (`/proc/self/status` of the job, a write that must fail).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

use cc_e2e::agent::{agent_user, root_and_agent_user};
use cc_e2e::helper::{HelperProcess, stranger_refused_line};
use cc_e2e::{TempDir, bin, wait_for};
use cc_proto::frame;
use serde_json::{Value, json};

fn setup(name: &str, extra: &str) -> Option<(TempDir, HelperProcess)> {
    let user = root_and_agent_user()?;
    let dir = TempDir::new(name);
    let h = HelperProcess::start(dir.path(), extra, user);
    Some((dir, h))
}

fn on(dir: &TempDir) -> String {
    format!(
        "system_mode = true\n[sandbox]\nkeep_capabilities = [\"CAP_KILL\", \"CAP_NET_BIND_SERVICE\"]\nwrite_paths = [{:?}]\n",
        dir.path().join("writable")
    )
}

fn job(id: &str, command: &str, args: &[&str]) -> Value {
    json!({"jobId": id, "command": command, "args": args, "timeout": 30})
}

fn refused_code(resp: &Value) -> &str {
    resp["refused"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not refused: {resp}"))
}

#[test]
fn a_client_with_another_uid_is_refused_before_anything_is_read() {
    let Some((_d, h)) = setup("h-peer", "") else {
        return;
    };
    // `nobody` in the agent's group: the socket's mode lets it connect,
    // so only the helper's own peer check stands between it and an answer.
    // The client connected (exit 4: closed without an answer, not 3: could
    // not connect), and the helper's audit line names this very client.
    let e = h.exchange((65534, h.agent.1), br#""status""#);
    assert_eq!(
        e.code,
        Some(4),
        "the stranger was not turned away after connecting (exit 0: answered, 3: could not connect): {e:?}"
    );
    assert_eq!(e.answer, "", "the helper answered a stranger");
    assert!(
        stranger_refused_line(&h.log(), 65534, e.pid),
        "no refusal of peer_pid={} in the helper's log:\n{}",
        e.pid,
        h.log()
    );
    // The agent user gets an answer.
    assert_eq!(h.request(&json!("status"))["status"]["system_mode"], false);
    // Socket 0660 and directory 0750, group = the agent's.
    let sock = std::fs::metadata(h.socket()).unwrap();
    assert_eq!(
        (sock.mode() & 0o777, sock.uid(), sock.gid()),
        (0o660, 0, h.agent.1)
    );
    let dir = std::fs::metadata(h.socket().parent().unwrap()).unwrap();
    assert_eq!(
        (dir.mode() & 0o777, dir.uid(), dir.gid()),
        (0o750, 0, h.agent.1)
    );
}

#[test]
fn with_system_mode_off_exec_and_write_cron_are_refused() {
    let Some((_d, h)) = setup("h-off", "") else {
        return;
    };
    let r = h.exec(&job("j1", "/bin/true", &[]));
    assert_eq!(refused_code(&r), "system_mode_disabled");
    assert!(
        r["refused"]["message"]
            .as_str()
            .unwrap()
            .contains("system mode is not enabled on this host")
    );
    let r = h.request(&json!({"write_cron": {"cron_refresh": "[]"}}));
    assert_eq!(refused_code(&r), "system_mode_disabled");
    assert!(!h.cron_file().exists());
}

#[test]
fn a_system_job_runs_as_root_with_the_configured_sandbox() {
    let Some((dir, h)) = setup("h-exec", "") else {
        return;
    };
    drop(h);
    let h = HelperProcess::start(dir.path(), &on(&dir), agent_user().unwrap());
    let r = h.exec(&job("status-1", "/bin/cat", &["/proc/self/status"]));
    let report = &r["exec_result"];
    assert_eq!(report["executingUid"], 0, "{r}");
    assert_eq!(report["executingUser"], "root");
    assert_eq!(report["exitCode"], 0, "{r}");
    // Nothing to warn about: no limit was reached, the sandbox is whole.
    assert!(report["warning"].is_null(), "{r}");
    let status = report["stdout"].as_str().unwrap();
    let field = |name: &str| cc_e2e::status_field(status, name);
    // CAP_KILL (5) and CAP_NET_BIND_SERVICE (10): 0x420.
    assert_eq!(field("CapBnd:"), "0000000000000420", "{status}");
    assert_eq!(field("CapEff:"), "0000000000000420");
    assert_eq!(field("CapInh:"), "0000000000000000");
    assert_eq!(field("CapAmb:"), "0000000000000000");
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("Uid:").split_whitespace().next(), Some("0"));

    // A write outside write_paths fails: the tree is mounted read-only
    // (EROFS) and landlock would refuse it too (EACCES)…
    let refused_write = |r: &Value| {
        let e = r["exec_result"]["stderr"].as_str().unwrap_or("");
        e.contains("Read-only file system") || e.contains("Permission denied")
    };
    let outside = "/etc/cc-landlock-probe";
    let r = h.exec(&job(
        "w-1",
        "/bin/sh",
        &["-c", &format!("echo x > {outside}")],
    ));
    assert_ne!(r["exec_result"]["exitCode"], 0, "{r}");
    assert!(refused_write(&r), "{r}");
    assert!(!std::path::Path::new(outside).exists());
    // …so does a write to the helper's own config…
    let cfg = dir.path().join("etc/helper.toml");
    let r = h.exec(&job(
        "w-2",
        "/bin/sh",
        &["-c", &format!("echo x >> {}", cfg.display())],
    ));
    assert!(refused_write(&r), "{r}");
    // …and one inside write_paths works.
    let inside = dir.path().join("writable/ok");
    let r = h.exec(&job(
        "w-3",
        "/bin/sh",
        &["-c", &format!("echo fine > {}", inside.display())],
    ));
    assert_eq!(r["exec_result"]["exitCode"], 0, "{r}");
    assert_eq!(std::fs::read_to_string(&inside).unwrap(), "fine\n");
    // A `#!` script runs: its interpreter reads it through the descriptor
    // the helper checked, kept open for it alone. A binary gets no
    // descriptor of its own file: `ls` sees stdin, stdout, stderr and the
    // directory it lists.
    let script = dir.path().join("hello.sh");
    std::fs::write(&script, "#!/bin/sh\necho \"script $1\"\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let r = h.exec(&job("script-1", script.to_str().unwrap(), &["ran"]));
    assert_eq!(r["exec_result"]["exitCode"], 0, "{r}");
    assert_eq!(r["exec_result"]["stdout"], "script ran\n", "{r}");
    let r = h.exec(&job("fds-1", "/usr/bin/ls", &["/proc/self/fd"]));
    assert_eq!(r["exec_result"]["stdout"], "0\n1\n2\n3\n", "{r}");
    // The environment is the helper's, not the agent's.
    let r = h.exec(&job("env-1", "/usr/bin/env", &[]));
    let mut env: Vec<&str> = r["exec_result"]["stdout"]
        .as_str()
        .unwrap()
        .lines()
        .collect();
    env.sort_unstable();
    assert_eq!(
        env,
        [
            "HOME=/root",
            "LANG=C.UTF-8",
            "LOGNAME=root",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "SHELL=/bin/sh",
            "USER=root"
        ]
    );
}

#[test]
fn a_job_whose_sandbox_cannot_be_applied_never_starts() {
    let Some((dir, h)) = setup("h-nosandbox", "") else {
        return;
    };
    drop(h);
    // A file limit above fs.nr_open: setrlimit fails with EPERM even for
    // root, in the child, before exec.
    let extra = format!("{}[rlimits]\nnofile = 1073741824\ncore = 0\n", on(&dir));
    let h = HelperProcess::start(dir.path(), &extra, agent_user().unwrap());
    let marker = dir.path().join("writable/started");
    let r = h.exec(&job(
        "ns-1",
        "/bin/sh",
        &["-c", &format!("echo started > {}", marker.display())],
    ));
    let report = &r["exec_result"];
    assert_eq!(report["exitCode"], 126, "{r}");
    assert!(
        report["warning"]
            .as_str()
            .unwrap()
            .contains("the job was not started: rlimits failed"),
        "the refusal names the step that failed: {r}"
    );
    assert!(!marker.exists(), "the job ran without its sandbox");
}

#[test]
fn allowed_commands_is_enforced_on_the_exact_path() {
    let Some((dir, h)) = setup("h-allow", "") else {
        return;
    };
    drop(h);
    let extra = format!("allowed_commands = [\"/usr/bin/true\"]\n{}", on(&dir));
    let h = HelperProcess::start(dir.path(), &extra, agent_user().unwrap());
    assert_eq!(
        h.exec(&job("a-1", "/usr/bin/true", &[]))["exec_result"]["exitCode"],
        0
    );
    // A bare name is never looked up in PATH: the signature covers a path.
    let r = h.exec(&job("a-1a", "true", &[]));
    assert_eq!(refused_code(&r), "invalid_payload", "{r}");
    assert!(
        r["refused"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("absolute path"),
        "{r}"
    );
    // The same file by another path (merged /usr: /bin is a symlink) is
    // not the allowed path.
    let r = h.exec(&job("a-1b", "/bin/true", &[]));
    assert_eq!(refused_code(&r), "command_not_allowed", "{r}");
    let r = h.exec(&job("a-2", "/bin/echo", &["hi"]));
    assert_eq!(refused_code(&r), "command_not_allowed", "{r}");
    let r = h.exec(&job("a-3", "/bin/sh", &["-c", "true"]));
    assert_eq!(refused_code(&r), "command_not_allowed");
    assert!(h.log().contains("decision=\"refused\""), "{}", h.log());
}

#[test]
fn unknown_requests_fields_bad_frames_and_invalid_jobs_are_refused() {
    let Some((dir, h)) = setup("h-hostile", "") else {
        return;
    };
    drop(h);
    let h = HelperProcess::start(dir.path(), &on(&dir), agent_user().unwrap());
    let as_agent = |body: &[u8], raw: bool| h.send_as(Some(h.agent), body, raw);
    let cases: &[&[u8]] = &[
        br#""shell""#,
        br#"{"exec":{"execute_job":"{}","as_uid":0}}"#,
        br#"{"exec":{}}"#,
        b"\xff\xfe",
        br#""status" trailing"#,
    ];
    for body in cases {
        let v: Value = serde_json::from_str(&as_agent(body, false)).unwrap();
        assert_eq!(
            refused_code(&v),
            "bad_request",
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    // A declared length of 64 MiB is refused before it is read.
    let mut huge = (64u32 * 1024 * 1024).to_be_bytes().to_vec();
    huge.extend_from_slice(b"xx");
    let v: Value = serde_json::from_str(&as_agent(&huge, true)).unwrap();
    assert!(
        v["refused"]["message"]
            .as_str()
            .unwrap()
            .contains("at most"),
        "{v}"
    );
    // Invalid jobs inside a well-formed request.
    for bad in [
        json!({"jobId": "j", "command": "/bin/echo", "args": ["a\nb"]}),
        json!({"jobId": "../x", "command": "/bin/true"}),
        json!({"jobId": "j", "command": "/bin/true", "timeout": 0}),
    ] {
        assert_eq!(refused_code(&h.exec(&bad)), "invalid_payload", "{bad}");
    }
    let r = h.request(&json!({"exec": {"execute_job": "not json"}}));
    assert_eq!(refused_code(&r), "invalid_payload");
    // Still serving.
    assert_eq!(h.request(&json!("status"))["status"]["system_mode"], true);
}

#[test]
fn the_cron_file_is_root_owned_0644_atomic_and_no_entry_changes_its_structure() {
    let Some((dir, h)) = setup("h-cron", "") else {
        return;
    };
    drop(h);
    let mut h = HelperProcess::start(dir.path(), &on(&dir), agent_user().unwrap());
    let entries = json!([
        {"id": "ok", "schedule": "*/5 * * * *", "command": "/bin/echo five"},
        {"id": "pct", "schedule": "@daily", "command": "/bin/echo 100%"},
        {"id": "lf", "schedule": "* * * * *", "command": "/bin/true\n* * * * * root /bin/sh -c evil"},
        {"id": "cr", "schedule": "* * * * *", "command": "/bin/true\r* * * * * root evil"},
        {"id": "nul", "schedule": "@daily", "command": "/bin/true\u{0}evil"},
        {"id": "sched-lf", "schedule": "* * * * *\n* * * * * root evil", "command": "/bin/true"},
        {"id": "extra", "schedule": "* * * * * root", "command": "/bin/true"},
        {"id": "bad", "schedule": "61 * * * *", "command": "/bin/true"}
    ]);
    let text = entries_install_only_as_fixed_lines(&h, &dir, &entries);
    debian_cron_accepts_the_syntax(&h);
    a_kill_mid_write_leaves_a_whole_file(&mut h, &entries, &text);
}

/// Only the valid entries install, each as a fixed-wrapper line; the file
/// is root's, 0644, with one link. Returns its text.
fn entries_install_only_as_fixed_lines(
    h: &HelperProcess,
    dir: &TempDir,
    entries: &Value,
) -> String {
    let r = h.write_cron(entries);
    assert_eq!(r["cron_written"]["installed"], json!(["ok", "pct"]), "{r}");
    assert_eq!(r["cron_written"]["rejected"].as_array().unwrap().len(), 6);
    let text = std::fs::read_to_string(h.cron_file()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(lines[0].starts_with("# Managed by CronCommander"));
    let exe = bin("cc-privhelper");
    assert_eq!(
        lines[3],
        format!(
            "*/5 * * * * root {} cron-run --config {} ok",
            exe.display(),
            dir.path().join("etc/helper.toml").display()
        )
    );
    assert!(!text.contains("evil") && !text.contains('%'), "{text}");
    let meta = std::fs::metadata(h.cron_file()).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777, meta.nlink()),
        (0, 0, 0o644, 1)
    );
    text
}

/// Debian's cron accepts the file's syntax: the same lines as a crontab.
fn debian_cron_accepts_the_syntax(h: &HelperProcess) {
    let check = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "sed 's/ root / /' {} | crontab -u nobody - && crontab -u nobody -r",
            h.cron_file().display()
        ))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "cron refused the syntax: {}",
        String::from_utf8_lossy(&check.stderr)
    );
}

/// A SIGKILL in the middle of a write leaves a whole file: either the
/// one before or the new one, never a mix. A kill "in the middle" is one
/// that finds the helper, stopped with SIGSTOP so what it does cannot
/// change under the look, holding a file in the cron directory open for
/// writing (the temp file today; the cron file itself if the write were
/// ever made in place). The helper is probed again and again from the
/// moment the request is sent and killed at the first such look; every
/// third write is let through and killed after its answer, so the file
/// does change. At least MID_WRITE kills must land mid-write.
fn a_kill_mid_write_leaves_a_whole_file(h: &mut HelperProcess, entries: &Value, text: &str) {
    const MID_WRITE: usize = 8;
    let new_entries = json!([{"id": "other", "schedule": "@hourly", "command": "/bin/true"}]);
    let whole = |list: &Value, now: &str| {
        if list == &new_entries {
            now.lines().count() == 4 && now.contains(" other")
        } else {
            now == text
        }
    };
    let cron_dir = h.cron_file().parent().unwrap().to_owned();
    let (mut mid_write, mut after, mut changed) = (0, 0, 0);
    let mut before = text.to_owned();
    for i in 0..60 {
        if mid_write >= MID_WRITE && changed > 0 {
            break;
        }
        let list = if i % 2 == 0 { &new_entries } else { entries };
        let sender = signed_write_as_the_agent(h, list);
        let pid = h.child.id();
        let let_through = i % 3 == 2;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut looks = 0u64;
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "write {i} neither answered nor seen\n{}",
                h.log()
            );
            // Answered before the look: this kill lands after the write.
            let answered = sender.is_finished();
            let stopped = Stopped::new(pid);
            if !let_through && writing_into(pid, &cron_dir) {
                stopped.kill();
                mid_write += 1;
                break;
            }
            if answered {
                stopped.kill();
                after += 1;
                break;
            }
            drop(stopped);
            // Let the helper run between looks: stopped again the moment
            // it was continued, on a loaded machine it never got a turn (a
            // write neither answered nor seen in 10 s, in CI). The pause
            // grows to 1 ms, shorter than the write's fsync.
            looks += 1;
            std::thread::sleep(std::time::Duration::from_micros(25 * looks.min(40)));
        }
        h.restart(); // reaps the killed helper and starts a new one
        let _ = sender.join();
        let now = std::fs::read_to_string(h.cron_file()).unwrap();
        assert!(
            now == before || whole(list, &now),
            "torn cron file after kill {i} ({mid_write} mid-write so far):\n{now}"
        );
        changed += usize::from(now != before);
        before = now;
    }
    assert!(
        mid_write >= MID_WRITE,
        "only {mid_write} kills landed while the helper was writing the cron file ({after} after the answer): the claim is unproven"
    );
    assert!(changed > 0, "no write ever changed the cron file");
}

/// Sends a signed `write_cron` of `list` to `h` as the agent user, from a
/// thread of its own (`cc-helper-client`), so `h` can be watched while it
/// writes.
fn signed_write_as_the_agent(h: &HelperProcess, list: &Value) -> std::thread::JoinHandle<()> {
    let st = cc_e2e::signing::cron_statement(list, &h.hostname, cc_e2e::signing::next_generation());
    let signed = cc_e2e::signing::sign_cron(&st, &cc_e2e::signing::operator().1);
    let req = json!({"write_cron": {"cron_refresh": list.to_string(), "signed": serde_json::to_string(&signed).unwrap()}});
    let sock = h.socket();
    let agent = h.agent;
    std::thread::spawn(move || {
        let mut c = Command::new(bin("cc-helper-client"));
        use std::os::unix::process::CommandExt;
        c.arg(sock)
            .uid(agent.0)
            .gid(agent.1)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null());
        let mut child = c.spawn().unwrap();
        use std::io::Write;
        let _ = child
            .stdin
            .take()
            .unwrap()
            .write_all(req.to_string().as_bytes());
        let _ = child.wait();
    })
}

/// A process held stopped (SIGSTOP, every thread seen stopped) until dropped.
struct Stopped(nix::unistd::Pid);

impl Stopped {
    fn new(pid: u32) -> Self {
        use nix::sys::signal::{Signal, kill};
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        kill(pid, Signal::SIGSTOP).unwrap();
        // A thread inside a system call stops when it returns from it.
        let tasks = format!("/proc/{pid}/task");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !std::fs::read_dir(&tasks).unwrap().all(|t| {
            let stat = std::fs::read_to_string(t.unwrap().path().join("stat")).unwrap_or_default();
            // The state follows the command name's closing parenthesis.
            let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
            matches!(state, Some(Some('T' | 't' | 'Z' | 'X')) | None)
        }) {
            assert!(
                std::time::Instant::now() < deadline,
                "the helper did not stop"
            );
            std::thread::yield_now();
        }
        Self(pid)
    }
}

impl Stopped {
    /// SIGKILL while still stopped: the process runs not one more
    /// instruction after the look.
    fn kill(self) {
        nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGKILL).unwrap();
        std::mem::forget(self);
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

/// Whether process `pid` holds a file in `dir` open for writing.
fn writing_into(pid: u32, dir: &std::path::Path) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok).any(|fd| {
        let in_dir = std::fs::read_link(fd.path()).is_ok_and(|t| t.parent() == Some(dir));
        let info = format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy());
        let flags = std::fs::read_to_string(info)
            .ok()
            .and_then(|i| {
                let f = i
                    .lines()
                    .find_map(|l| l.strip_prefix("flags:"))?
                    .trim()
                    .to_owned();
                u32::from_str_radix(&f, 8).ok()
            })
            .unwrap_or(0);
        // O_ACCMODE: O_WRONLY or O_RDWR.
        in_dir && flags & 0o3 != 0
    })
}

#[test]
fn a_config_not_owned_by_root_or_writable_by_others_is_refused() {
    let Some((dir, h)) = setup("h-config", "") else {
        return;
    };
    drop(h);
    use std::os::unix::fs::PermissionsExt;
    let cfg = dir.path().join("etc/helper.toml");
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = serve_refused(&cfg, "a config writable by others");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("writable by group or others"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (uid, gid) = agent_user().unwrap();
    nix::unistd::chown(
        &cfg,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .unwrap();
    let out = serve_refused(&cfg, "a config owned by the agent's uid");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not owned by root"));
}

/// `cc-privhelper serve --config cfg`, which must exit at once: a helper
/// that accepts the config serves until killed, and waiting on it with
/// `output()` would hang the test instead of failing it.
fn serve_refused(cfg: &std::path::Path, what: &str) -> std::process::Output {
    let child = Command::new(bin("cc-privhelper"))
        .args(["serve", "--config"])
        .arg(cfg)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(std::time::Duration::from_secs(10)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let out = rx.recv().unwrap().unwrap();
            panic!(
                "cc-privhelper started with {what} and was still serving after 10 s:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn systemd_socket_activation_is_accepted() {
    let Some((dir, mut h)) = setup("h-activate", "") else {
        return;
    };
    // The config HelperProcess wrote, served on a socket that
    // systemd-socket-activate (Debian's systemd) creates and passes as fd 3.
    let _ = h.child.kill();
    let _ = h.child.wait();
    let sock = dir.path().join("activated.sock");
    let log = std::fs::File::create(dir.path().join("activated.log")).unwrap();
    // Its own process group, ended as a whole however the test ends: the
    // activator and the helper it starts (nothing may outlive the suite).
    struct Group(std::process::Child);
    impl Drop for Group {
        fn drop(&mut self) {
            let pg = nix::unistd::Pid::from_raw(self.0.id() as i32);
            let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL);
            let _ = self.0.wait();
        }
    }
    use std::os::unix::process::CommandExt as _;
    let activator = Command::new("systemd-socket-activate")
        .process_group(0)
        .arg("-l")
        .arg(&sock)
        .arg("--")
        .arg(bin("cc-privhelper"))
        .args(["serve", "--config"])
        .arg(dir.path().join("etc/helper.toml"))
        .env("CC_LOG", "debug")
        .stderr(log)
        .spawn()
        .unwrap();
    let activator = Group(activator);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !sock.exists() {
        assert!(std::time::Instant::now() < deadline, "no activation socket");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Its mode is the activator's business (SocketMode= in the unit); let
    // the agent user reach it here.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let ask = |who: Option<(u32, u32)>| {
        let mut c = Command::new(bin("cc-helper-client"));
        c.arg(&sock)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        if let Some((uid, gid)) = who {
            use std::os::unix::process::CommandExt;
            c.uid(uid).gid(gid);
        }
        c.stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        let pid = child.id();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(br#""status""#)
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (text(&out.stdout), out.status.code(), text(&out.stderr), pid)
    };
    let (answer, ..) = ask(Some(h.agent));
    let (stranger, code, stderr, pid) = ask(Some((65534, 65534)));
    let log = std::fs::read_to_string(dir.path().join("activated.log")).unwrap_or_default();
    drop(activator);
    assert!(answer.contains(r#""status""#), "{answer}\n{log}");
    assert!(log.contains("using the socket passed by systemd"), "{log}");
    // The peer check holds on the passed socket too: the stranger
    // connected (exit 4, not 3: could not connect), got no answer, and the
    // helper's audit line names it.
    assert_eq!(
        code,
        Some(4),
        "the stranger was not turned away after connecting (exit 0: answered, 3: could not connect): {stderr}\n{log}"
    );
    assert_eq!(stranger, "", "{log}");
    assert!(
        stranger_refused_line(&log, 65534, pid),
        "no refusal of peer_pid={pid} in the helper's log:\n{log}"
    );
}

/// The helper is code a reviewer must read whole: under 2,000 lines of
/// code, not counting blank lines, comments and unit tests (each file's
/// `#[cfg(test)]` module, which closes it). What it links — `cc-exec`,
/// `cc-proto` and the crates its manifest lists — is counted apart.
#[test]
fn the_helper_stays_under_2400_lines_of_code() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../cc-privhelper/src");
    let mut total = 0;
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text
                .lines()
                .take_while(|l| l.trim() != "#[cfg(test)]")
                .filter(|l| !l.trim().is_empty() && !l.trim().starts_with("//"))
                .count();
            total += code;
        }
    }
    assert!(
        total > 1000,
        "the count found the helper's sources ({total} lines)"
    );
    // 2,000 until the second review: its fixes took 1,974 to 2,248 (the
    // job's seccomp filter, audit lines before and after each root run,
    // the fail-closed reload and `check-config`, killing a dead helper's
    // leftover jobs, the socket's and write paths' parent chains, allowed
    // scripts' interpreters). The issue's ceiling is 2,400; the job's
    // filter compiled as a search tree of its own (`bpf.rs`, attaching in
    // 60 µs where seccompiler's chain took 165) took it to 2,370.
    assert!(
        total < 2400,
        "cc-privhelper has {total} lines of code; the limit is 2,400"
    );
}

/// Played as the agent's uid flooding root's journal: 120 invalid frames
/// and 120 `status` reads. Root work is audited whole elsewhere; these are
/// logged 50 in 10 s at most (invalid) and at debug (reads that went
/// through), and the helper still answers.
#[test]
fn the_agents_uid_cannot_flood_roots_journal() {
    let Some((_dir, h)) = setup("h-flood", "") else {
        return;
    };
    let agent = Some(agent_user().unwrap());
    let status = frame::encode_frame(br#""status""#, frame::MAX_FRAME_LEN).unwrap();
    for _ in 0..120 {
        h.send_as(agent, b"not a frame at all, again and again", true);
        h.send_as(agent, &status, true);
    }
    let log = h.log();
    let invalid = log.lines().filter(|l| l.contains("op=\"invalid\"")).count();
    let reads = log
        .lines()
        .filter(|l| l.contains(" INFO ") && l.contains("op=\"status\""))
        .count();
    eprintln!(
        "figures: 120 invalid frames made {invalid} lines; 120 status reads {reads} INFO lines"
    );
    assert!(
        (1..=50).contains(&invalid),
        "{invalid} lines for 120 invalid frames"
    );
    assert_eq!(reads, 0, "status reads at INFO");
    assert!(
        h.send_as(agent, &status, true).contains("status"),
        "still answering"
    );
}

/// The helper's start line says in words where job cgroups go (no Rust
/// debug text such as `Ok(V1 { … })`).
#[test]
fn the_start_line_is_plain_words() {
    let Some((_d, h)) = setup("h-start", "") else {
        return;
    };
    let log = wait_for(Duration::from_secs(10), "the helper's start line", || {
        let log = h.log();
        log.contains("cc-privhelper serving").then_some(log)
    });
    let line = log
        .lines()
        .find(|l| l.contains("cc-privhelper serving"))
        .unwrap();
    let cgroups = line.split("cgroups=").nth(1).unwrap_or_default();
    assert!(
        cgroups.starts_with("v2 under /")
            || cgroups.starts_with("v1 under /")
            || cgroups.starts_with("none ("),
        "{line}"
    );
    assert!(!line.contains("Ok(") && !line.contains(" { "), "{line}");
}
