//! A real `cc-listener` process on loopback with its own database.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cc_proto::ids::JobId;

use crate::http::{self, Response};

pub const TOKEN: &str = "test-admin-token-0123456789";

/// Config lines for tests whose agents are played by hand (the test's own
/// WebSocket): heartbeats and pings every second, a silent agent closed
/// after three seconds, a `sent` job `lost` one second after its timeout,
/// and the sweep that finds both every 100 ms.
pub const FAST: &str = "heartbeat_interval_secs = 1\nping_interval_secs = 1\nlost_grace_secs = 1\nsweep_interval_ms = 100\n";

/// [`FAST`] for suites with real `cc-agent` processes: a 2 s heartbeat and
/// 5 s of grace before a `sent` job is `lost`, which leaves a real agent
/// (its process start, its executor, its reconnects) time to report.
pub const FAST_REAL_AGENTS: &str = "heartbeat_interval_secs = 2\nping_interval_secs = 1\nlost_grace_secs = 5\nsweep_interval_ms = 100\n";

#[derive(Debug)]
pub struct ListenerProcess {
    pub child: Child,
    pub agent_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    bin: PathBuf,
    dir: PathBuf,
    extra_config: String,
    /// The database it uses: `dir/listener.db`, or a shared one (a
    /// `postgres://` URL, [`ListenerProcess::start_shared`]).
    db: String,
}

impl ListenerProcess {
    /// Starts the listener in `dir` (database, token file, config) on free
    /// loopback ports. `extra_config` is appended to the TOML config.
    pub fn start(bin: &Path, dir: &Path, extra_config: &str) -> Self {
        Self::start_on(
            bin,
            dir,
            extra_config,
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
    }

    pub fn start_on(
        bin: &Path,
        dir: &Path,
        extra_config: &str,
        agent: SocketAddr,
        admin: SocketAddr,
    ) -> Self {
        let db = dir.join("listener.db").to_string_lossy().into_owned();
        Self::start_with(bin, dir, &db, extra_config, agent, admin)
    }

    /// One of several listeners sharing the database `db` (a
    /// `postgres://` URL), started in its own `dir` on free ports.
    pub fn start_shared(bin: &Path, dir: &Path, db: &str, extra_config: &str) -> Self {
        let any = "127.0.0.1:0".parse().unwrap();
        Self::start_with(bin, dir, db, extra_config, any, any)
    }

    fn start_with(
        bin: &Path,
        dir: &Path,
        db: &str,
        extra_config: &str,
        agent: SocketAddr,
        admin: SocketAddr,
    ) -> Self {
        std::fs::write(dir.join("token"), TOKEN).unwrap();
        let config = format!(
            "db = {db:?}\nadmin_token_file = {:?}\nlisten = \"{agent}\"\nadmin_listen = \"{admin}\"\n{extra_config}\n",
            dir.join("token"),
        );
        std::fs::write(dir.join("listener.toml"), &config).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("listener.log"))
            .unwrap();
        let mut child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(dir.join("listener.toml"))
            .env("CC_LOG", "info,cc_listener=debug")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("starting cc-listener");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let addrs = parse_banner(&line).unwrap_or_else(|| {
            let log = std::fs::read_to_string(dir.join("listener.log")).unwrap_or_default();
            panic!("cc-listener did not start: {line:?}\n{log}")
        });
        Self {
            child,
            agent_addr: addrs.0,
            admin_addr: addrs.1,
            bin: bin.to_owned(),
            dir: dir.to_owned(),
            extra_config: extra_config.to_owned(),
            db: db.to_owned(),
        }
    }

    /// SIGKILL, then start again on the same ports and database.
    pub fn kill_and_restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // The port may linger for a moment after the kill.
            let next = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Self::start_with(
                    &self.bin,
                    &self.dir,
                    &self.db,
                    &self.extra_config,
                    self.agent_addr,
                    self.admin_addr,
                )
            }));
            match next {
                Ok(p) => {
                    // The old one is already killed and reaped; dropping it
                    // only repeats a kill that is ignored.
                    *self = p;
                    return;
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => std::panic::resume_unwind(e),
            }
        }
    }

    /// SIGTERM, then wait up to 30 s for a clean exit (SIGKILL after that).
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        None
    }

    /// The config lines used from the next (re)start on.
    pub fn set_extra(&mut self, extra: &str) {
        extra.clone_into(&mut self.extra_config);
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn add_key(&self, name: &str) -> String {
        add_key_to(&self.bin, Path::new(&self.db), name)
    }

    /// `POST /api/v1/agents/{host}/jobs` with `body`, which must be
    /// accepted (202): the new job's id.
    pub fn post_job(&self, host: &str, body: &serde_json::Value) -> JobId {
        self.post_job_json(host, body).0
    }

    /// [`post_job`](Self::post_job), with the whole answer beside the id
    /// (its `status`, for one).
    pub fn post_job_json(
        &self,
        host: &str,
        body: &serde_json::Value,
    ) -> (JobId, serde_json::Value) {
        let r = self.post(&format!("/api/v1/agents/{host}/jobs"), body);
        assert_eq!(r.status, 202, "POST a job for {host}: {}", r.body);
        let answer = r.json();
        (job_id(&answer["jobId"]), answer)
    }

    /// `POST /api/v1/runs` with `body`, which must be accepted: the run id
    /// and each (hostname, job id).
    pub fn post_run(&self, body: &serde_json::Value) -> (String, Vec<(String, String)>) {
        let r = self.post("/api/v1/runs", body);
        assert_eq!(r.status, 202, "{}", r.body);
        let v = r.json();
        let jobs = v["jobs"]
            .as_array()
            .expect("jobs in the answer")
            .iter()
            .map(|j| {
                (
                    j["hostname"].as_str().unwrap_or_default().to_owned(),
                    j["jobId"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        (v["runId"].as_str().unwrap_or_default().to_owned(), jobs)
    }

    pub fn keys(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.bin)
            .arg("keys")
            .args(args)
            .arg("--db")
            .arg(&self.db)
            .output()
            .unwrap()
    }

    pub fn get(&self, path: &str) -> Response {
        http::request(self.admin_addr, "GET", path, Some(TOKEN), None)
    }

    /// `ccctl` as an operator runs it against this listener: the admin
    /// token in `dir/ccctl-token`, no `HOME` (so no `ccctl.toml`).
    pub fn ccctl_command(&self, dir: &Path, args: &[&str]) -> Command {
        std::fs::write(dir.join("ccctl-token"), TOKEN).unwrap();
        let mut c = Command::new(crate::bin("ccctl"));
        c.arg("--url")
            .arg(format!("http://{}", self.admin_addr))
            .arg("--token-file")
            .arg(dir.join("ccctl-token"))
            .args(args)
            .env_remove("HOME");
        c
    }

    /// [`ListenerProcess::ccctl_command`], run to its end.
    pub fn ccctl(&self, dir: &Path, args: &[&str]) -> std::process::Output {
        self.ccctl_command(dir, args).output().unwrap()
    }

    /// A request with an operator's own `token` (not the admin's), and a
    /// JSON body if any.
    pub fn request_as(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&serde_json::Value>,
    ) -> Response {
        let body = body.map(serde_json::Value::to_string);
        http::request(
            self.admin_addr,
            method,
            path,
            Some(token),
            body.as_deref().map(str::as_bytes),
        )
    }

    pub fn post(&self, path: &str, body: &serde_json::Value) -> Response {
        http::request(
            self.admin_addr,
            "POST",
            path,
            Some(TOKEN),
            Some(body.to_string().as_bytes()),
        )
    }

    pub fn put(&self, path: &str, body: &serde_json::Value) -> Response {
        http::request(
            self.admin_addr,
            "PUT",
            path,
            Some(TOKEN),
            Some(body.to_string().as_bytes()),
        )
    }

    /// Where its log (stderr) goes.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("listener.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("listener.log")).unwrap_or_default()
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/agent", self.agent_addr)
    }

    /// The agent `host` as `GET /api/v1/agents` lists it.
    pub fn agent_entry(&self, host: &str) -> Option<serde_json::Value> {
        let agents = self.get("/api/v1/agents").json();
        agents
            .as_array()?
            .iter()
            .find(|a| a["hostname"] == host)
            .cloned()
    }

    /// Waits (10 s at most) until `host` is listed as `connected`.
    pub fn wait_connected(&self, host: &str, connected: bool) -> serde_json::Value {
        self.wait_for(Duration::from_secs(10), |l| {
            l.agent_entry(host).filter(|a| a["connected"] == connected)
        })
    }

    /// Waits (10 s at most) until exactly `n` agents are connected.
    pub fn wait_connected_count(&self, n: usize) {
        self.wait_for(Duration::from_secs(10), |l| {
            let agents = l.get("/api/v1/agents").json();
            let up = agents
                .as_array()
                .map_or(0, |a| a.iter().filter(|x| x["connected"] == true).count());
            (up == n).then_some(())
        });
    }

    /// Polls `f` until it returns Some, for at most `limit`.
    pub fn wait_for<T>(&self, limit: Duration, mut f: impl FnMut(&Self) -> Option<T>) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "condition not met within {limit:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for ListenerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `v` (a `jobId` field of an answer or a message) as a [`JobId`]; panics
/// when it is missing or not a valid id.
pub fn job_id(v: &serde_json::Value) -> JobId {
    let text = v
        .as_str()
        .unwrap_or_else(|| panic!("a jobId is a string, not {v}"));
    JobId::parse(text).unwrap_or_else(|e| panic!("jobId {text:?}: {e}"))
}

fn parse_banner(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    // "cc-listener: agents on ws://A/agent, operator API on http://B/api/v1"
    let agent = line.split("://").nth(1)?.split('/').next()?.parse().ok()?;
    let admin = line.split("://").nth(2)?.split('/').next()?.parse().ok()?;
    Some((agent, admin))
}

/// A new agent key named `name` in the database at `db` (made if missing),
/// with `bin keys add`: before a listener runs, a copy of the database
/// gives a second listener the same key.
pub fn add_key_to(bin: &Path, db: &Path, name: &str) -> String {
    let out = Command::new(bin)
        .args(["keys", "add", name, "--db"])
        .arg(db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "keys add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
