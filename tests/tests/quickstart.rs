//! The README's "run it" command works: listener, key, token, agent, then
//! `ccctl agents`, `ccctl run` and `ccctl job` as a newcomer types them; it
//! names the console's address and the `CC_URL` to export, and leaves no
//! work directory behind. The whole first hour, from a build to the
//! commands the quickstart suggests, is `first_hour.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

use std::path::Path;
use std::process::Command;

use cc_e2e::bin;

#[test]
fn the_quickstart_runs_a_job_and_prints_its_report() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // The build's own directory, not a copy (the script copies what the
    // agent's user runs): `bin` only checks the binaries are there.
    for b in ["cc-agent", "cc-listener", "ccctl"] {
        bin(b);
    }
    let bin_dir = cc_e2e::bin_dir();
    let out = Command::new("bash")
        .arg(root.join("scripts/quickstart.sh"))
        .env("CC_QUICKSTART_BIN_DIR", &bin_dir)
        .env("CC_QUICKSTART_ONCE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ccctl agents: the host, online, in user mode.
    assert!(
        stdout.lines().any(|l| l.starts_with("quickstart-host")
            && l.contains(" yes ")
            && l.contains(" user ")),
        "{stdout}"
    );
    // ccctl run: its table, the host done with exit code 0.
    assert!(
        stdout.lines().any(|l| l.starts_with("quickstart-host")
            && l.contains("done")
            && l.contains(" 0 ")
            && l.contains("hello from CronCommander")),
        "{stdout}"
    );
    // ccctl job: the report as a person reads it, output verbatim.
    assert!(stdout.contains("status   done"), "{stdout}");
    assert!(stdout.contains("exit     0"), "{stdout}");
    assert!(
        stdout.contains("--- stdout ---\nhello from CronCommander\n"),
        "{stdout}"
    );
    assert!(!stdout.contains(r#""exitCode""#), "no raw JSON: {stdout}");
    // The console's address, and the operators' base URL as CC_URL takes
    // it: without `/api/v1` (ccctl adds it).
    let console = stdout
        .lines()
        .find_map(|l| l.strip_prefix("console: http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("no console address: {stdout}"));
    let port = console.split('/').next().unwrap();
    assert!(
        console.starts_with(&format!(
            "{port}/ui/ (log in with the token in /tmp/croncommander-quickstart."
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("operators on http://127.0.0.1:{port}/ (CC_URL=http://127.0.0.1:{port}, console http://127.0.0.1:{port}/ui/)")),
        "{stdout}"
    );
    assert!(!stdout.contains("/api/v1"), "{stdout}");
    // Its work directory is gone once it stopped.
    let work = stdout
        .lines()
        .find_map(|l| l.split("fresh database in ").nth(1))
        .map(|w| w.trim_end_matches("\u{1b}[0m"))
        .unwrap_or_else(|| panic!("no work directory named: {stdout}"));
    assert!(
        work.starts_with("/tmp/croncommander-quickstart.") && !Path::new(work).exists(),
        "{work} is left behind"
    );
}

/// Without Rust installed, the quickstart says so and what to do, before
/// it starts anything.
#[test]
fn without_cargo_the_quickstart_says_what_to_install() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = cc_e2e::TempDir::new("qs-no-cargo");
    // A PATH with what the script needs before the build and no cargo.
    std::os::unix::fs::symlink("/usr/bin/dirname", dir.path().join("dirname")).unwrap();
    let out = Command::new("/bin/bash")
        .arg(root.join("scripts/quickstart.sh"))
        .env("PATH", dir.path())
        .env_remove("CC_QUICKSTART_BIN_DIR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "quickstart: cargo not found on PATH: install Rust 1.85 or newer (https://rustup.rs), \
         open a new shell, and run this again; or set CC_QUICKSTART_BIN_DIR to a directory of built binaries\n"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
}
