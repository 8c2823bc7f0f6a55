//! The compromised agent: every attack a process running as `cc-agent-user`
//! (or a root job it got the helper to start) was seen to win against the
//! root boundary, played again with the real binaries, as root, and each
//! must now fail. Issue "The root boundary holds"; SECURITY.md's table names
//! the test behind each line.
//!
//! Attacks come from `cc-attacker` (tests/src/bin), run as `cc-agent-user`
//! or as the program of a root job; what they achieved is checked from
//! outside: owners and modes, `/proc/PID/*`, files that must not change,
//! processes that must be gone.
//!
//! One test binary: [`boundary`] holds the first review's attacks (issue
//! "The root boundary holds"), [`fails_closed`] the second's (issue "Root
//! jobs stay in their box, and the helper fails closed"); this file, what
//! they share.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cc_e2e::agent::{agent_user, root_and_agent_user};
use cc_e2e::helper::HelperProcess;
use cc_e2e::{TempDir, bin};
use serde_json::{Value, json};

mod boundary;
mod fails_closed;

fn setup(name: &str) -> Option<(TempDir, (u32, u32))> {
    let user = root_and_agent_user()?;
    Some((TempDir::new(name), user))
}

/// System mode on, writes only beneath `dir/writable`, default capabilities.
fn on(dir: &Path) -> String {
    format!(
        "system_mode = true\n[sandbox]\nwrite_paths = [{:?}]\n",
        dir.join("writable")
    )
}

fn job(id: &str, command: &str, args: &[&str], timeout: u64) -> Value {
    json!({"jobId": id, "command": command, "args": args, "timeout": timeout})
}

fn report(resp: &Value) -> &Value {
    let r = &resp["exec_result"];
    assert!(r.is_object(), "not a report: {resp}");
    r
}

/// Host pids of processes running `argv`: the same arguments, and a
/// program of the same file name (it may be named by another path).
fn processes(argv: &[&str]) -> Vec<i32> {
    let name = |p: &[u8]| p.rsplit(|&b| b == b'/').next().map(<[u8]>::to_vec);
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let got: Vec<&[u8]> = cmdline
            .strip_suffix(b"\0")
            .unwrap_or(&cmdline)
            .split(|&b| b == 0)
            .collect();
        let same = got.len() == argv.len()
            && name(got[0]) == name(argv[0].as_bytes())
            && got[1..]
                .iter()
                .zip(&argv[1..])
                .all(|(g, a)| *g == a.as_bytes());
        if same {
            found.push(pid);
        }
    }
    found
}

fn kill_all(argv: &[&str]) {
    for pid in processes(argv) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Runs `cc-attacker ARGS` as `who`; (exit code, stdout).
fn attacker_as(who: (u32, u32), args: &[&str]) -> (i32, String) {
    let out = Command::new(bin("cc-attacker"))
        .args(args)
        .uid(who.0)
        .gid(who.1)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn cron_run(h: &HelperProcess, id: &str) -> std::process::Output {
    Command::new(bin("cc-privhelper"))
        .args(["cron-run", "--config"])
        .arg(h.config())
        .arg(id)
        .env("CC_LOG", "warn")
        .output()
        .unwrap()
}

/// The helper's answer to `job` within `limit` (as the agent), or None.
fn exec_within(socket: &Path, agent: (u32, u32), job: &Value, limit: Duration) -> Option<Value> {
    let st = cc_e2e::signing::exec_statement(job, cc_e2e::helper::HELPER_HOST);
    let signed = cc_e2e::signing::sign_exec(&st, &cc_e2e::signing::operator().1);
    let req = json!({"exec": {"execute_job": job.to_string(), "signed": serde_json::to_string(&signed).unwrap()}});
    request_within(socket, agent, &req, limit)
}

/// The helper's answer to `req` within `limit` (as the agent), or None.
fn request_within(socket: &Path, agent: (u32, u32), req: &Value, limit: Duration) -> Option<Value> {
    let body = req.to_string();
    let mut child = Command::new(bin("cc-helper-client"))
        .arg(socket)
        .uid(agent.0)
        .gid(agent.1)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let _ = child.stdin.take().unwrap().write_all(body.as_bytes());
    }
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    serde_json::from_slice(&child.wait_with_output().unwrap().stdout).ok()
}

/// Writes `dir/refuse/helper.toml` with `extra` and the usual paths, runs
/// `cc-privhelper serve` on it and returns its error; fails the test if it
/// is still serving after 3 s (it accepted the config).
fn helper_refuses(dir: &Path, extra: &str) -> String {
    helper_refuses_at(dir, &dir.join("refuse/run/helper.sock"), extra)
}

/// [`helper_refuses`] with the socket at `socket`.
fn helper_refuses_at(dir: &Path, socket: &Path, extra: &str) -> String {
    let d = dir.join("refuse");
    std::fs::create_dir_all(&d).unwrap();
    let key = cc_e2e::signing::trusted_line(&cc_e2e::signing::operator().1, "op");
    let cfg = format!(
        "socket = {socket:?}\ncron_file = {:?}\nstate_dir = {:?}\ntrusted_keys = [{key:?}]\n{extra}\n",
        d.join("cron.d/croncommander"),
        d.join("state"),
    );
    std::fs::create_dir_all(d.join("cron.d")).unwrap();
    std::fs::write(d.join("helper.toml"), cfg).unwrap();
    helper_refuses_config(&d.join("helper.toml"))
}

fn helper_refuses_config(config: &Path) -> String {
    let mut child = Command::new(bin("cc-privhelper"))
        .args(["serve", "--config"])
        .arg(config)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(3) {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the helper accepted the config:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The attacker's path as a string (root jobs name it as their program).
fn attacker() -> String {
    bin("cc-attacker").to_str().unwrap().to_owned()
}
