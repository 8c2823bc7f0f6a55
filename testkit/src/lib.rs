//! The end-to-end harness: real binaries in fresh temp directories, a small
//! HTTP client for the operator API, and WebSocket helpers that play an agent.
//!
//! Cargo gives `CARGO_BIN_EXE_*` only to a binary's own package, so suites in
//! this crate find `cc-agent`, `cc-listener` and `cc-privhelper` next to
//! their own test executable with [`bin`] (the test command builds them
//! first); suites inside a binary's package pass `CARGO_BIN_EXE_*`.
#![forbid(unsafe_code)]
// Test support: a broken set-up should stop the test with a message, which is
// what `expect` does.
#![allow(clippy::expect_used, clippy::unwrap_used, unreachable_pub)]

pub mod agent;
pub mod bed;
pub mod helper;
pub mod http;
pub mod isolation;
pub mod listener;
pub mod pg;
pub mod proxy;
pub mod rawws;
pub mod reliability;
pub mod signing;
pub mod sim;
pub mod sse;
pub mod stats;
pub mod webhook;
pub mod ws;

use std::path::{Path, PathBuf};

/// The directory the workspace's binaries are built in, beside the running
/// test executable (`target/<profile>`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps")
        .to_owned()
}

/// Path of a workspace binary built beside the running test executable
/// (or of a copy other users can run: [`reachable`]).
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    reachable(&path)
}

/// `path`, or — when a directory above it does not let other users
/// through (a checkout in root's 0700 home, a `mktemp -d` directory) — a
/// copy other users can run, so tests can start binaries as
/// `cc-agent-user` and Debian's cron can run the lines that name them.
///
/// Copies live in `$TMPDIR/cc-e2e-bins-<euid>/<size>-<mtime>/`, under a
/// directory this user created and only it may write (checked, so another
/// user cannot plant a binary there first), and are shared by concurrent
/// test processes: each writes its own temporary name and renames it.
pub fn reachable(path: &Path) -> PathBuf {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let others_can_reach = path.ancestors().skip(1).all(|d| {
        d.as_os_str().is_empty()
            || std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0)
    });
    let meta = std::fs::metadata(path).expect("the binary's metadata");
    if others_can_reach && meta.permissions().mode() & 0o005 == 0o005 {
        return path.to_owned();
    }
    let euid = nix::unistd::geteuid().as_raw();
    let root = std::env::temp_dir().join(format!("cc-e2e-bins-{euid}"));
    let made = std::fs::DirBuilder::new().mode(0o755).create(&root);
    if let Err(e) = made {
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::AlreadyExists,
            "creating {}: {e}",
            root.display()
        );
    }
    let m = std::fs::symlink_metadata(&root).expect("the copies' directory");
    assert!(
        m.is_dir() && m.uid() == euid && m.mode() & 0o022 == 0,
        "{} is not a directory that only this user may write: refusing to run binaries from it",
        root.display()
    );
    let dir = root.join(format!(
        "{}-{}-{}",
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec()
    ));
    let _ = std::fs::DirBuilder::new().mode(0o755).create(&dir);
    let name = path.file_name().expect("a binary has a name");
    let copy = dir.join(name);
    if !copy.is_file() {
        let tmp = dir.join(format!(
            "{}.tmp-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        std::fs::copy(path, &tmp).expect("copying a binary where other users can run it");
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, &copy).expect("renaming the copied binary");
    }
    copy
}

/// A number from the environment (benchmarks' knobs), or `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A fresh directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "cc-{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("creating a temp dir");
        Self(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `f` every 100 ms until it returns `Some`, for at most `limit`;
/// panics naming `what` when it never does.
pub fn wait_for<V>(limit: std::time::Duration, what: &str, mut f: impl FnMut() -> Option<V>) -> V {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The value of `name` (with its colon, as `"CapBnd:"`) in the text of a
/// `/proc/PID/status`, its whitespace collapsed to single spaces; empty
/// when the field is absent.
pub fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Whether CI asked for every test to run (`CI=true`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// For a test that needs something of the machine (root, a kernel feature,
/// a package): true when it is there; outside CI a missing prerequisite
/// skips the test with a note, in CI it fails the test.
pub fn require(what: &str, available: bool) -> bool {
    if available {
        return true;
    }
    assert!(
        !in_ci(),
        "CI=true but this test's prerequisite is missing: {what}"
    );
    eprintln!("skipped: needs {what}");
    // The test command lists every skip in its summary.
    if let Some(log) = std::env::var_os("CC_SKIP_LOG") {
        let test = std::thread::current().name().unwrap_or("?").to_owned();
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = std::io::Write::write_all(&mut f, format!("{test}: needs {what}\n").as_bytes());
        }
    }
    false
}

/// Makes sure Debian's cron daemon runs in this mount namespace, for as
/// long as the machine does. Tests of several processes rely on it at once (nextest
/// runs each test in a process of its own), so none of them may stop it: a
/// test that started cron and killed it when it ended took it away from a
/// test still waiting for a run (seen in CI). It is started the way the
/// package's unit would leave it: once, and running.
pub fn ensure_cron_daemon() {
    use std::process::{Command, Stdio};
    // A cron of this mount namespace: the reliability suite runs crons
    // of its own in private namespaces, which see other files.
    let mine = std::fs::read_link("/proc/self/ns/mnt").ok();
    let running = || {
        Command::new("pgrep")
            .args(["-x", "cron"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
            .split_whitespace()
            .any(|pid| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok() == mine)
    };
    if running() {
        return;
    }
    // Without -f cron forks, and its parent exits once the daemon holds
    // its pid file: two tests starting it at once leave one daemon (the
    // second finds the pid file locked and exits).
    let status = Command::new("cron")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("starting cron");
    assert!(
        status.success() || running(),
        "cron did not start: {status}"
    );
    wait_for(std::time::Duration::from_secs(10), "cron to run", || {
        running().then_some(())
    });
}
