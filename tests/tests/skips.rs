//! A test whose prerequisite is missing says so where the test command's
//! summary shows it, and never passes quietly in CI.
//!
//! The probe below needs root. The check runs this very test executable
//! again as `cc-agent-user` (not root), asking for the probe alone:
//! - outside CI it skips — exit 0, as nextest would count it "passed" — and
//!   writes "TEST: needs root" to `CC_SKIP_LOG`, which
//!   `scripts/skip-summary.sh` (the test command's summary) names, with
//!   the reason and both counts;
//! - with `CI=true` it fails, naming what is missing.
//!
//! Run as root (as the test command is), the probe itself passes: the same
//! suite run with `CI=` and with `CI=true` runs the same tests.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

use std::os::unix::process::CommandExt;
use std::process::Command;

use cc_e2e::agent::{is_root, root_and_agent_user};
use cc_e2e::{TempDir, require};

#[test]
fn probe_needs_root() {
    if !require("root", is_root()) {
        return;
    }
    assert_eq!(nix::unistd::geteuid().as_raw(), 0);
}

/// This executable, run as `who` for the probe alone, with `ci` as CI's
/// value and the skip log at `log`.
fn probe_as(who: (u32, u32), ci: Option<&str>, log: &std::path::Path) -> std::process::Output {
    let exe = cc_e2e::reachable(&std::env::current_exe().unwrap());
    let mut c = Command::new(exe);
    c.args(["--exact", "probe_needs_root", "--nocapture"])
        .env("CC_SKIP_LOG", log)
        .env_remove("CI")
        .current_dir("/")
        .uid(who.0)
        .gid(who.1);
    if let Some(v) = ci {
        c.env("CI", v);
    }
    c.output().unwrap()
}

#[test]
fn a_missing_prerequisite_is_named_outside_ci_and_fails_in_ci() {
    let Some(agent) = root_and_agent_user() else {
        return;
    };
    let dir = TempDir::new("skips");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let log = dir.path().join("skipped.txt");

    let outside = probe_as(agent, None, &log);
    let out = String::from_utf8_lossy(&outside.stdout);
    let err = String::from_utf8_lossy(&outside.stderr);
    assert!(outside.status.success(), "a skip exits 0: {out}\n{err}");
    assert!(out.contains("1 passed"), "{out}");
    assert!(err.contains("skipped: needs root"), "{err}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(logged, "probe_needs_root: needs root\n");

    // The test command's summary names it, its reason, and both counts.
    let nextest = dir.path().join("nextest.log");
    std::fs::write(
        &nextest,
        "     Summary [  12.345s] 181 tests run: 181 passed, 0 skipped\n",
    )
    .unwrap();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/skip-summary.sh");
    let summary = Command::new("bash")
        .arg(&script)
        .arg(&log)
        .arg(&nextest)
        .output()
        .unwrap();
    assert!(summary.status.success());
    let text = String::from_utf8_lossy(&summary.stdout);
    assert_eq!(
        text,
        "probe_needs_root: needs root\n\
         1 tests skipped; the reasons (count, reason):\n      1 needs root\n\
         counts: 181 tests run, 1 skipped for a missing prerequisite\n"
    );
    let empty = dir.path().join("none.txt");
    let none = Command::new("bash")
        .arg(&script)
        .arg(&empty)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&none.stdout),
        "none\ncounts: ? tests run, 0 skipped for a missing prerequisite\n"
    );

    std::fs::remove_file(&log).unwrap();
    let in_ci = probe_as(agent, Some("true"), &log);
    let out = String::from_utf8_lossy(&in_ci.stdout);
    let err = String::from_utf8_lossy(&in_ci.stderr);
    assert!(
        !in_ci.status.success(),
        "CI=true: a missing prerequisite fails"
    );
    assert!(
        err.contains("CI=true but this test's prerequisite is missing: root"),
        "{out}\n{err}"
    );
    assert!(!log.exists(), "a failure is not logged as a skip");
}
