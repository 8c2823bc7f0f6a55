//! A real `cc-privhelper serve` (as root) with its own config, socket, cron
//! directory and state, and a client that talks to it as cc-agent-user.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// One request by `cc-helper-client`, and what became of it.
#[derive(Debug)]
pub struct Exchange {
    /// The response body; empty when the helper closed without answering.
    pub answer: String,
    /// The client's exit code: 0 answered, 3 could not connect, 4 closed
    /// without an answer.
    pub code: Option<i32>,
    /// What the client said on stderr (why it could not connect).
    pub stderr: String,
    pub pid: u32,
}

/// The audit line the helper writes for a peer it turns away before
/// reading a byte (`server.rs`: `turned_away`), for the client `pid`.
pub fn stranger_refused_line(log: &str, uid: u32, pid: u32) -> bool {
    log.lines().any(|l| {
        l.contains(&format!("peer_uid={uid} peer_pid={pid} "))
            && l.contains("decision=\"refused\" reason=\"peer is neither agent_user nor root\"")
    })
}

#[derive(Debug)]
pub struct HelperProcess {
    pub child: Child,
    pub dir: PathBuf,
    pub agent: (u32, u32),
    /// The host identity in the helper's config (what statements name).
    pub hostname: String,
}

/// The helper's host identity unless a suite names one.
pub const HELPER_HOST: &str = "helper.test";

impl HelperProcess {
    /// The config is `dir/etc/helper.toml`; its keys `socket`, `cron_file`,
    /// `state_dir`, `agent_user` point into `dir`, `hostname` is
    /// [`HELPER_HOST`], and the suite's operator key is trusted; `extra`
    /// adds or overrides the rest (it must not repeat those keys).
    pub fn start(dir: &Path, extra: &str, agent: (u32, u32)) -> Self {
        Self::start_as(dir, extra, agent, HELPER_HOST)
    }

    /// [`HelperProcess::start`] with another host identity.
    pub fn start_as(dir: &Path, extra: &str, agent: (u32, u32), hostname: &str) -> Self {
        for d in ["cron.d", "writable", "etc"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let key = crate::signing::trusted_line(&crate::signing::operator().1, "suite-operator");
        let config = format!(
            "socket = {:?}\nagent_user = \"cc-agent-user\"\ncron_file = {:?}\nstate_dir = {:?}\nhostname = {hostname:?}\ntrusted_keys = [{key:?}]\n{extra}\n",
            dir.join("run/helper.sock"),
            dir.join("cron.d/croncommander"),
            dir.join("state"),
        );
        std::fs::write(dir.join("etc/helper.toml"), config).unwrap();
        let _ = std::fs::remove_file(dir.join("run/helper.sock"));
        let before = std::fs::read_to_string(dir.join("helper.log"))
            .unwrap_or_default()
            .matches("cc-privhelper serving")
            .count();
        let h = Self {
            child: Self::spawn(dir),
            dir: dir.to_owned(),
            agent,
            hostname: hostname.to_owned(),
        };
        h.wait_ready(before);
        h
    }

    fn spawn(dir: &Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("helper.log"))
            .unwrap();
        Command::new(crate::bin("cc-privhelper"))
            .args(["serve", "--config"])
            .arg(dir.join("etc/helper.toml"))
            .env("CC_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// How many times a helper logged that it serves, in this directory.
    fn starts(&self) -> usize {
        self.log().matches("cc-privhelper serving").count()
    }

    /// Waits for the helper started after `starts_before` start lines to
    /// serve: its start line is written once the socket is bound, owned by
    /// the agent's group and mode 0660. The socket's mere existence is not
    /// enough: between its bind and its chown a client of the agent's uid
    /// is refused with EACCES (seen under load, as a test's "could not
    /// connect").
    fn wait_ready(&self, starts_before: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.starts() <= starts_before {
            assert!(
                Instant::now() < deadline,
                "helper did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self.socket());
        let before = self.starts();
        self.child = Self::spawn(&self.dir);
        self.wait_ready(before);
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("etc/helper.toml")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("run/helper.sock")
    }

    pub fn cron_file(&self) -> PathBuf {
        self.dir.join("cron.d/croncommander")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("helper.log")).unwrap_or_default()
    }

    /// Sends `body` as `uid:gid` (None: as this process); returns the
    /// response text, empty when the helper closed without answering.
    pub fn send_as(&self, who: Option<(u32, u32)>, body: &[u8], raw: bool) -> String {
        let mut cmd = Command::new(crate::bin("cc-helper-client"));
        if raw {
            cmd.arg("--raw");
        }
        cmd.arg(self.socket())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = who {
            cmd.uid(uid).gid(gid);
        }
        let mut child = cmd.spawn().unwrap();
        let _ = child.stdin.take().unwrap().write_all(body);
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sends `body` as `uid:gid`; (response text, the client's exit code:
    /// 0 answered, 3 could not connect, 4 closed without an answer).
    pub fn exchange_as(&self, who: (u32, u32), body: &[u8]) -> (String, Option<i32>) {
        let e = self.exchange(who, body);
        (e.answer, e.code)
    }

    /// [`HelperProcess::exchange_as`], with the client's pid (the
    /// `peer_pid` the helper's audit line names).
    pub fn exchange(&self, who: (u32, u32), body: &[u8]) -> Exchange {
        let mut child = Command::new(crate::bin("cc-helper-client"))
            .arg(self.socket())
            .uid(who.0)
            .gid(who.1)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let _ = child.stdin.take().unwrap().write_all(body);
        let out = child.wait_with_output().unwrap();
        Exchange {
            answer: String::from_utf8_lossy(&out.stdout).into_owned(),
            code: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            pid,
        }
    }

    /// A request as the agent user; the parsed response.
    pub fn request(&self, req: &Value) -> Value {
        let text = self.send_as(Some(self.agent), req.to_string().as_bytes(), false);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("no response ({e}): {text:?}\n{}", self.log()))
    }

    /// An `exec` request carrying this `execute_job` payload, signed for
    /// this helper's host by the suite's operator key.
    pub fn exec(&self, job: &Value) -> Value {
        let st = crate::signing::exec_statement(job, &self.hostname);
        let signed = crate::signing::sign_exec(&st, &crate::signing::operator().1);
        self.exec_signed(job, Some(&signed))
    }

    /// An `exec` request with whatever signature (or none) the caller has.
    pub fn exec_signed(&self, job: &Value, signed: Option<&cc_proto::sign::Signed>) -> Value {
        let mut inner = serde_json::json!({"execute_job": job.to_string()});
        if let Some(s) = signed {
            inner["signed"] = Value::String(serde_json::to_string(s).unwrap());
        }
        self.request(&serde_json::json!({ "exec": inner }))
    }

    /// A `write_cron` of these entries, signed for this host with a new
    /// generation by the suite's operator key.
    pub fn write_cron(&self, entries: &Value) -> Value {
        let st = crate::signing::cron_statement(
            entries,
            &self.hostname,
            crate::signing::next_generation(),
        );
        let signed = crate::signing::sign_cron(&st, &crate::signing::operator().1);
        self.write_cron_signed(entries, Some(&signed))
    }

    pub fn write_cron_signed(
        &self,
        entries: &Value,
        signed: Option<&cc_proto::sign::Signed>,
    ) -> Value {
        let mut inner = serde_json::json!({"cron_refresh": entries.to_string()});
        if let Some(s) = signed {
            inner["signed"] = Value::String(serde_json::to_string(s).unwrap());
        }
        self.request(&serde_json::json!({ "write_cron": inner }))
    }
}

impl Drop for HelperProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
