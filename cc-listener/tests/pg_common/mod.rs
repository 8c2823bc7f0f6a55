//! What the PostgreSQL tests (`pg_errors`, `pg_tls`) share: a listener
//! or a `keys` command that must fail on a database URL, and what it said.
#![allow(dead_code)] // each test file uses its part

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cc_testkit::TempDir;

use crate::common;

/// Runs `cc-listener serve` on `db` and waits for it to fail; returns its
/// stdout and stderr. A listener that serves instead fails the test.
pub(crate) fn serve_fails(dir: &TempDir, db: &str) -> (String, String) {
    std::fs::write(dir.path().join("token"), cc_testkit::listener::TOKEN).unwrap();
    let config = format!(
        "db = {db:?}\nadmin_token_file = {:?}\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n",
        dir.path().join("token")
    );
    let config_path = dir.path().join("listener.toml");
    std::fs::write(&config_path, config).unwrap();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new(common::bin())
        .args(["serve", "--config"])
        .arg(&config_path)
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "cc-listener serve on {db} did not fail: {}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (out, err) = (
        std::fs::read_to_string(&out).unwrap(),
        std::fs::read_to_string(&err).unwrap(),
    );
    assert!(!status.success(), "serve on {db} exited 0: {err}");
    (out, err)
}

/// `cc-listener keys list --db DB`, which must fail; its stderr.
pub(crate) fn keys_list_fails(db: &str) -> String {
    let out = Command::new(common::bin())
        .args(["keys", "list", "--db", db])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "keys list on {db} exited 0: {err}");
    err
}
