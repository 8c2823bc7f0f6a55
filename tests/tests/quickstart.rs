//! The README's "run it" command works: listener, key, token, agent, a
//! sample job through the API, its report printed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

use std::path::Path;
use std::process::Command;

use cc_e2e::bin;

#[test]
fn the_quickstart_runs_a_job_and_prints_its_report() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin_dir = bin("cc-agent").parent().unwrap().to_owned();
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
    assert!(stdout.contains(r#""status":"done""#), "{stdout}");
    assert!(
        stdout.contains(r#""stdout":"hello from CronCommander\n"#),
        "{stdout}"
    );
    assert!(stdout.contains(r#""exitCode":0"#), "{stdout}");
}
