//! The first hour of a new operator (#30), played as a script: the README's
//! quickstart from a copy of the checkout only its owner may enter (0700),
//! with `CARGO_TARGET_DIR` set elsewhere; its console address and the
//! `CC_URL` it says to export; then, in "another shell", the commands it
//! suggests, exactly as it prints them, and the console at the address it
//! printed; then the rest of the first hour — `ccctl run` (job ids in the
//! table), `job`, `run status --output json`, `cron set HOST -` from
//! standard input, `keygen` into a missing directory, and the doctor
//! commands (`ccctl doctor`, `cc-agent check`, `cc-listener check`); then
//! Ctrl-C (SIGINT), which stops everything and removes its work directory.
//!
//! The build: the script runs `cargo build --release --bins` and asks
//! `cargo metadata` where the binaries went. A real release build takes
//! about 8 minutes on 2 cores, so the `cargo` the script finds first on
//! `PATH` here is a stand-in that records the build it was asked for and
//! puts the suite's already-built binaries into `$CARGO_TARGET_DIR/release`
//! (as the real build would); every other `cargo` command, `cargo metadata`
//! included, is the real cargo's.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use cc_e2e::{TempDir, bin, wait_for};

/// The quickstart, started in the background as a person starts it.
struct Quickstart {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Quickstart {
    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Ctrl-C, as the script's closing words say; its exit status.
    fn interrupt(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        wait_for(Duration::from_secs(20), "the quickstart to stop", || {
            self.child.try_wait().unwrap()
        })
    }
}

impl Drop for Quickstart {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.interrupt();
        }
    }
}

/// The checkout's files copied into `to`: not what git ignores (build
/// output, the fuzz corpus the test command grows), not `.git`.
fn copy_checkout(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let ignored = ["target", ".git", "corpus", "artifacts", "coverage"];
        if ignored.iter().any(|i| name == *i) {
            continue;
        }
        let kind = entry.file_type().unwrap();
        let dest = to.join(&name);
        if kind.is_dir() {
            copy_checkout(&entry.path(), &dest);
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path()).unwrap(), &dest).unwrap();
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

/// The stand-in `cargo` described above, in `dir`.
fn cargo_stand_in(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let script = r#"#!/bin/sh
if [ "$1" = build ]; then
    printf '%s|%s\n' "$*" "${CARGO_TARGET_DIR:-}" >> "$CC_FIRST_HOUR_BUILDS"
    mkdir -p "${CARGO_TARGET_DIR:-target}/release"
    for b in cc-agent cc-listener ccctl; do
        cp "$CC_FIRST_HOUR_BUILT/$b" "${CARGO_TARGET_DIR:-target}/release/$b" || exit 101
    done
    exit 0
fi
exec "$CC_FIRST_HOUR_CARGO" "$@"
"#;
    let path = dir.join("cargo");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// One HTTP request to `addr` (host:port), the whole answer as text.
fn http(addr: &str, method: &str, path: &str, body: &str, cookie: Option<&str>) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(c) = cookie {
        head.push_str(&format!("Cookie: {c}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// A command line the quickstart printed, run by bash in "another shell"
/// with the two variables it said to export.
fn shell(line: &str, url: &str, token_file: &str) -> Output {
    Command::new("bash")
        .args(["-c", line])
        .env("CC_URL", url)
        .env("CC_TOKEN_FILE", token_file)
        .output()
        .unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_first_hour_from_the_readme() {
    for b in ["cc-agent", "cc-listener", "ccctl"] {
        bin(b);
    }
    let tmp = TempDir::new("first-hour");
    // 1. The README's command, from a 0700 checkout, CARGO_TARGET_DIR set.
    let (mut qs, out, release) = start_quickstart(tmp.path());

    // 2. What it prints: the console's address and CC_URL without /api/v1.
    let export = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("export CC_URL="))
        .unwrap_or_else(|| panic!("no CC_URL to export:\n{out}"));
    let (url, token_file) = export.split_once(" CC_TOKEN_FILE=").unwrap();
    let addr = url.strip_prefix("http://").unwrap();
    assert!(!url.contains("/api/v1"), "{url}");
    let console = format!("The console: {url}/ui/ (log in with the token in {token_file}).");
    assert!(out.contains(&console), "{out}");
    let work = Path::new(token_file).parent().unwrap().to_owned();
    assert!(out.contains(&format!(
        "Ctrl-C stops both and removes {}.",
        work.display()
    )));

    // 3. "What to try next": the three commands as printed.
    let ccctl = format!("{}/ccctl", release.display());
    what_to_try_next(&out, &ccctl, url, token_file);

    // 4. The console at the printed address; the bare address leads there.
    the_console_at(addr, token_file);

    // 5. The rest of the first hour, in the same shell.
    let ccctl_out = |args: &[&str], stdin: &str| -> (Output, String, String) {
        let mut child = Command::new(&ccctl)
            .args(args)
            .env("CC_URL", url)
            .env("CC_TOKEN_FILE", token_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let (o, e) = text(&out);
        (out, o, e)
    };
    first_hour_with_ccctl(&ccctl_out, tmp.path());
    first_hour_checks(&release, &work, &ccctl_out);

    // 6. Ctrl-C: everything stops, and the work directory is gone.
    let status = qs.interrupt();
    assert!(status.success(), "{status}: {}", qs.stderr());
    assert!(
        !work.exists(),
        "{} is left behind after Ctrl-C",
        work.display()
    );
    let after = std::net::TcpStream::connect(addr);
    assert!(after.is_err(), "the listener still answers on {addr}");
}

/// The quickstart started from a copy of the checkout in a 0700 directory
/// under `tmp`, with `CARGO_TARGET_DIR` outside it and the stand-in cargo
/// first on `PATH`, once it printed its closing words: it, its output so
/// far, and `$CARGO_TARGET_DIR/release`. It built once, into
/// `CARGO_TARGET_DIR`, and took its binaries from there.
fn start_quickstart(tmp: &Path) -> (Quickstart, String, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let home = tmp.join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    let checkout = home.join("croncommander");
    copy_checkout(&root, &checkout);
    let target = tmp.join("elsewhere/target");
    let stand_in = tmp.join("stand-in");
    cargo_stand_in(&stand_in);
    let builds = tmp.join("builds.txt");
    let real_cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let path = format!(
        "{}:{}",
        stand_in.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (stdout, stderr) = (tmp.join("qs.out"), tmp.join("qs.err"));
    let mut qs = Quickstart {
        child: Command::new("bash")
            .arg("scripts/quickstart.sh")
            .current_dir(&checkout)
            .env("PATH", path)
            .env("CARGO_TARGET_DIR", &target)
            .env("CC_FIRST_HOUR_BUILDS", &builds)
            .env("CC_FIRST_HOUR_BUILT", cc_e2e::bin_dir())
            .env("CC_FIRST_HOUR_CARGO", real_cargo)
            .env_remove("CC_QUICKSTART_BIN_DIR")
            .env_remove("CC_QUICKSTART_ONCE")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap(),
        stdout,
        stderr,
    };
    let out = wait_for(
        Duration::from_secs(90),
        "the quickstart's closing words",
        || {
            if let Some(status) = qs.child.try_wait().unwrap() {
                panic!(
                    "the quickstart ended ({status}) before its closing words:\n{}\n{}",
                    qs.stdout(),
                    qs.stderr()
                );
            }
            let out = qs.stdout();
            out.contains("Ctrl-C stops both").then_some(out)
        },
    );
    let built = std::fs::read_to_string(&builds).unwrap();
    assert_eq!(
        built.trim(),
        format!("build --release --bins|{}", target.display()),
        "the one build, into CARGO_TARGET_DIR"
    );
    assert!(
        !checkout.join("target").exists(),
        "nothing built into the checkout"
    );
    let release = target.join("release");
    assert!(
        out.contains(&format!("{}/ccctl agents", release.display())),
        "the binaries are taken from CARGO_TARGET_DIR/release:\n{out}"
    );
    (qs, out, release)
}

/// The three commands the quickstart suggests, run as printed.
fn what_to_try_next(out: &str, ccctl: &str, url: &str, token_file: &str) {
    let suggested: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.contains("In another shell:"))
        .skip(2)
        .take(3)
        .map(str::trim)
        .collect();
    assert_eq!(
        suggested,
        [
            format!("{ccctl} agents"),
            format!("{ccctl} run --tag quickstart -- /usr/bin/uptime"),
            format!("{ccctl} reports --host quickstart-host"),
        ],
        "{out}"
    );
    let (agents, err) = text(&shell(suggested[0], url, token_file));
    assert!(
        agents
            .lines()
            .any(|l| l.starts_with("quickstart-host") && l.contains(" yes ")),
        "{agents}{err}"
    );
    let (run, err) = text(&shell(suggested[1], url, token_file));
    assert!(
        run.lines().any(|l| l.starts_with("quickstart-host")
            && l.contains("done")
            && l.contains("load average")),
        "{run}{err}"
    );
    let (reports, err) = text(&shell(suggested[2], url, token_file));
    assert!(
        reports
            .lines()
            .filter(|l| l.contains("quickstart-host"))
            .count()
            >= 3,
        "the quickstart's two jobs and uptime: {reports}{err}"
    );
}

/// The console at the operator address the quickstart printed: `/` leads
/// to it, its pages want a login, the token logs in, the fleet shows the
/// quickstart's host.
fn the_console_at(addr: &str, token_file: &str) {
    let bare = http(addr, "GET", "/", "", None);
    assert!(bare.starts_with("HTTP/1.1 303"), "{bare}");
    assert!(bare.contains("location: /ui/"), "{bare}");
    let page = http(addr, "GET", "/ui/", "", None);
    assert!(page.contains("location: /ui/login"), "{page}");
    let token = std::fs::read_to_string(token_file).unwrap();
    let login = http(
        addr,
        "POST",
        "/ui/login",
        &format!("token={}", token.trim()),
        None,
    );
    let cookie = login
        .lines()
        .find(|h| h.to_ascii_lowercase().starts_with("set-cookie:"))
        .and_then(|h| h.split_once(':'))
        .and_then(|(_, v)| v.trim().split(';').next())
        .unwrap_or_else(|| panic!("{login}"))
        .to_owned();
    let fleet = http(addr, "GET", "/ui/", "", Some(&cookie));
    assert!(fleet.starts_with("HTTP/1.1 200"), "{fleet}");
    assert!(fleet.contains("quickstart-host"), "{fleet}");
}

/// `ccctl` with these arguments and this standard input, in the shell
/// the quickstart's variables were exported in: its output, stdout, stderr.
type Ccctl<'a> = &'a dyn Fn(&[&str], &str) -> (Output, String, String);

/// `ccctl` as an operator goes on: a run whose table carries the job id
/// (and no "follow it later" once it finished), `job ID`, `run status ID
/// --output json`, `cron set HOST -` from standard input (with a line that
/// looks written for a shell), `keygen` into a directory not made yet.
fn first_hour_with_ccctl(ccctl: Ccctl<'_>, tmp: &Path) {
    let (out, table, err) = ccctl(
        &["run", "quickstart-host", "--", "/bin/echo", "first hour"],
        "",
    );
    assert!(out.status.success(), "{table}{err}");
    assert!(table.starts_with("HOST "), "{table}");
    assert!(table.lines().next().unwrap().contains(" JOB "), "{table}");
    assert!(!table.contains("follow it later"), "{table}{err}");
    let row = table
        .lines()
        .find(|l| l.starts_with("quickstart-host"))
        .unwrap_or_else(|| panic!("{table}"));
    let job = row.split_whitespace().nth(1).unwrap().to_owned();
    assert!(
        row.contains(" done ") && row.ends_with("first hour"),
        "{row}"
    );
    let (out, report, err) = ccctl(&["job", &job], "");
    assert!(out.status.success(), "{report}{err}");
    assert!(report.contains("status   done"), "{report}");
    assert!(report.contains("--- stdout ---\nfirst hour\n"), "{report}");

    let (out, started, err) = ccctl(
        &[
            "run",
            "--no-wait",
            "quickstart-host",
            "--",
            "/bin/echo",
            "later",
        ],
        "",
    );
    assert!(out.status.success(), "{started}{err}");
    let run = started
        .lines()
        .find_map(|l| l.strip_prefix("run "))
        .unwrap_or_else(|| panic!("{started}"))
        .to_owned();
    let (out, _, err) = ccctl(&["run", "watch", &run], "");
    assert!(out.status.success(), "{err}");
    let (out, json, err) = ccctl(&["run", "status", &run, "--output", "json"], "");
    assert!(out.status.success(), "{json}{err}");
    let status: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(status[0]["host"], "quickstart-host", "{json}");
    assert_eq!(status[0]["status"], "done", "{json}");
    assert_eq!(status[0]["report"]["stdout"], "later\n", "{json}");

    let (out, stored, err) = ccctl(
        &["cron", "set", "quickstart-host", "-"],
        "# from standard input\ngreet */5 * * * * /bin/echo hi > /tmp/out\n",
    );
    assert!(out.status.success(), "{stored}{err}");
    assert_eq!(stored, "1 entries stored for quickstart-host\n", "{err}");
    assert!(
        err.contains("line 2 (greet): `/bin/echo hi > /tmp/out` looks written for a shell (`>`), but commands are not run by a shell"),
        "{err}"
    );
    let (out, list, err) = ccctl(&["cron", "get", "quickstart-host"], "");
    assert!(out.status.success(), "{err}");
    // Stored as the program's arguments, `>` one of them: quoted as such.
    assert!(
        list.contains("greet */5 * * * * /bin/echo hi '>' /tmp/out"),
        "{list}"
    );

    // The agent wrote it into its user's crontab: an empty list takes it
    // out again, so the machine keeps no line naming the quickstart's copy.
    let (out, stored, err) = ccctl(&["cron", "set", "quickstart-host", "-"], "");
    assert!(out.status.success(), "{stored}{err}");
    assert_eq!(stored, "0 entries stored for quickstart-host\n", "{err}");

    let key = tmp.join("fresh/config/croncommander/ops.key");
    let (out, public, err) = ccctl(&["keygen", "--out", key.to_str().unwrap()], "");
    assert!(out.status.success(), "{public}{err}");
    assert!(public.starts_with("ed25519:"), "{public}");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", key.display());
}

/// The doctor commands, when something does not work: `ccctl doctor` on
/// the operator's side, `cc-agent check` with the quickstart's agent
/// config, `cc-listener check` with its database and token. Each line says
/// ok or what to do.
fn first_hour_checks(release: &Path, work: &Path, ccctl: Ccctl<'_>) {
    let (out, doctor, err) = ccctl(&["doctor"], "");
    assert!(out.status.success(), "{doctor}{err}");
    assert!(
        doctor
            .lines()
            .all(|l| l.starts_with("ok ") || l == "all checks passed"),
        "{doctor}"
    );
    assert!(doctor.contains("ok   the token is accepted"), "{doctor}");

    let agent = Command::new(release.join("cc-agent"))
        .args(["check", "--config"])
        .arg(work.join("agent.toml"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (lines, err) = text(&agent);
    assert!(lines.contains("ok: config "), "{lines}{err}");
    assert!(
        lines.contains("ok: listener ws://127.0.0.1:"),
        "{lines}{err}"
    );
    // Every line ok, but for a cron daemon this machine may not run: then
    // the line says how to start it.
    for l in lines.lines() {
        assert!(
            l.starts_with("ok: ")
                || (l.starts_with("FAIL: no cron daemon is running")
                    && l.contains("systemctl enable --now cron")),
            "{lines}{err}"
        );
    }

    let listener = Command::new(release.join("cc-listener"))
        .args(["check", "--db"])
        .arg(work.join("listener.db"))
        .arg("--admin-token-file")
        .arg(work.join("admin-token"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let (lines, err) = text(&listener);
    assert!(listener.status.success(), "{lines}{err}");
    assert!(lines.lines().all(|l| l.starts_with("ok: ")), "{lines}");
    assert!(
        lines.contains("(current)"),
        "the database is migrated: {lines}"
    );
    assert!(lines.contains("mode 0600"), "{lines}");
}
