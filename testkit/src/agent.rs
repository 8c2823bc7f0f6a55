//! A real `cc-agent` process, as the unprivileged `cc-agent-user` when the
//! test runs as root.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::unistd::{Gid, Uid, User, chown};

pub const AGENT_USER: &str = "cc-agent-user";

/// The agent user's uid and gid, if it exists.
pub fn agent_user() -> Option<(u32, u32)> {
    User::from_name(AGENT_USER)
        .ok()
        .flatten()
        .map(|u| (u.uid.as_raw(), u.gid.as_raw()))
}

pub fn is_root() -> bool {
    Uid::effective().is_root()
}

/// The agent user's (uid, gid), for a test that needs root and that
/// account; without them the test skips outside CI and fails in CI
/// ([`crate::require`]).
pub fn root_and_agent_user() -> Option<(u32, u32)> {
    let user = agent_user().filter(|_| is_root());
    let what = "root and the cc-agent-user account (the test command creates it)";
    if crate::require(what, user.is_some()) {
        user
    } else {
        None
    }
}

#[derive(Debug)]
pub struct AgentProcess {
    pub child: Child,
    pub dir: PathBuf,
    bin: PathBuf,
    user: Option<(u32, u32)>,
}

impl AgentProcess {
    /// Writes `dir/agent.toml`, `dir/key` (0600, root's) and `dir/state`
    /// (0700), the config and state owned by `user` when given, and starts
    /// `cc-agent run` as that user with the key on its standard input, as
    /// the packaged unit does (`StandardInput=file:`).
    /// The agent's tags are `["e2e"]` unless `extra` sets `tags`.
    pub fn start(
        bin: &Path,
        dir: &Path,
        url: &str,
        key: &str,
        hostname: &str,
        extra: &str,
        user: Option<(u32, u32)>,
    ) -> Self {
        let state = dir.join("state");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(dir.join("key"), format!("{key}\n")).unwrap();
        std::fs::set_permissions(dir.join("key"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let sets_tags = extra
            .lines()
            .any(|l| l.split('=').next().is_some_and(|k| k.trim() == "tags"));
        let tags = if sets_tags { "" } else { "tags = [\"e2e\"]\n" };
        // A TOML list (`[...]`) is written as it is: several listeners.
        let url = if url.starts_with('[') {
            url.to_owned()
        } else {
            format!("\"{url}\"")
        };
        // As the packaged unit runs it: the key is the test's (root's) own
        // file, opened for the agent on its standard input.
        let config = format!(
            "listener_url = {url}\napi_key_file = \"-\"\nhostname = \"{hostname}\"\n{tags}state_dir = {:?}\nheartbeat_interval_secs = 1\n{extra}\n",
            state
        );
        std::fs::write(dir.join("agent.toml"), config).unwrap();
        if let Some((uid, gid)) = user {
            for p in [dir.to_owned(), state.clone(), dir.join("agent.toml")] {
                chown(&p, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))).unwrap();
            }
        }
        let mut a = Self {
            child: Command::new("true").spawn().unwrap(),
            dir: dir.to_owned(),
            bin: bin.to_owned(),
            user,
        };
        let _ = a.child.wait();
        a.child = a.spawn();
        a
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("CC_LOG", "info,cc_agent=debug")
            .current_dir("/");
        if let Some((uid, gid)) = self.user {
            // std clears supplementary groups when root sets the uid.
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn spawn(&self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .unwrap();
        let config = self.config_path();
        let key = std::fs::File::open(self.dir.join("key")).unwrap();
        self.command(&["run", "--config", config.to_str().unwrap()])
            .stdin(key)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting cc-agent")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("agent.toml")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Runs another cc-agent subcommand as the same user.
    /// Its standard input is the key file, as for `run`.
    pub fn run_subcommand(&self, args: &[&str]) -> std::process::Output {
        let key = std::fs::File::open(self.dir.join("key")).unwrap();
        self.command(args).stdin(key).output().unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn restart(&mut self) {
        self.kill();
        self.child = self.spawn();
    }

    /// SIGTERM, as `systemctl stop` sends, and waits up to `limit` for the
    /// agent to exit; (its exit code, how long it took). None if it was
    /// still running at the limit (then it is SIGKILLed).
    pub fn terminate(&mut self, limit: std::time::Duration) -> (Option<i32>, std::time::Duration) {
        let start = std::time::Instant::now();
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return (status.code(), start.elapsed());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.kill();
        (None, start.elapsed())
    }

    /// Starts the agent again after it stopped.
    pub fn start_again(&mut self) {
        let _ = self.child.try_wait();
        self.child = self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:")
    }

    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:")
    }
}

/// A `kB` field of `/proc/PID/status` (`"VmRSS"` or `"VmRSS:"`). Panics when
/// the process or the field is missing: a measurement must not read as 0.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let field = field.trim_end_matches(':');
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
