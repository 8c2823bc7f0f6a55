//! The systemd units pass `systemd-analyze security --offline=true` at the
//! exposure levels SECURITY.md states.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

use std::path::Path;
use std::process::Command;

use cc_e2e::require;

fn exposure(unit: &str) -> f64 {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging/systemd")
        .join(unit);
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| {
            panic!(
                "no exposure level for {unit}:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    line.split(':')
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn unit_exposure_levels_are_within_their_targets() {
    let have = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !require(
        "systemd-analyze (Debian's systemd; the test command installs it)",
        have,
    ) {
        return;
    }
    // The targets are the levels SECURITY.md states, not a margin above
    // them: with 1.5 for the listener (at 1.1), 12 of the 14 directives
    // whose removal raises its score could each be dropped unnoticed.
    for (unit, target) in [
        ("cc-agent.service", 1.1),
        ("cc-listener.service", 1.1),
        ("cc-privhelper.service", 3.3),
    ] {
        let level = exposure(unit);
        eprintln!("{unit}: {level}");
        assert!(level <= target, "{unit}: exposure {level} over {target}");
    }
}
