//! The binaries exist, answer --help, and a subcommand that is not built yet
//! says so and fails rather than pretending to work.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

use std::process::Command;

use cc_e2e::bin;

#[test]
fn every_binary_answers_help() {
    for name in ["cc-agent", "cc-listener", "cc-privhelper"] {
        let out = Command::new(bin(name)).arg("--help").output().unwrap();
        assert!(out.status.success(), "{name} --help failed");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage:"),
            "{name}"
        );
    }
}

/// `cc-privhelper serve --help` (and any subcommand's `--help`): the usage
/// on stdout, exit 0, no error.
#[test]
fn the_helpers_subcommand_help_is_usage_not_an_error() {
    for sub in ["serve", "cron-run", "check-config"] {
        let out = Command::new(bin("cc-privhelper"))
            .args([sub, "--help"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{sub} --help: {out:?}");
        assert!(
            stdout.starts_with("Usage: cc-privhelper serve [--config FILE]"),
            "{sub}: {stdout}"
        );
        assert_eq!(String::from_utf8_lossy(&out.stderr), "", "{sub}");
    }
}

#[test]
fn unknown_subcommands_fail() {
    for name in ["cc-agent", "cc-listener", "cc-privhelper"] {
        let out = Command::new(bin(name))
            .arg("no-such-command")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name} accepted a bogus subcommand");
    }
}
