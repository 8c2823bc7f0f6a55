//! What every scenario of the reliability suite shares: the rig (root, the
//! agent user, a private mount namespace, a listener with a fresh database,
//! the scenario's [`Record`]), real agents connected to it, and the counts
//! the checks are made of (jobs settled, reports stored per job, runs
//! counted from what the jobs wrote).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cc_e2e::agent::{AgentProcess, root_and_agent_user};
use cc_e2e::isolation::Isolation;
use cc_e2e::listener::{FAST_REAL_AGENTS, ListenerProcess, job_id};
use cc_e2e::reliability::Record;
use cc_e2e::{TempDir, bin, wait_for};
use serde_json::Value;

pub(crate) const T: Duration = Duration::from_secs(30);

/// One scenario's world; dropping it stops the listener and leaves the
/// namespace.
pub(crate) struct Rig {
    pub(crate) listener: ListenerProcess,
    pub(crate) rec: Record,
    /// The agent user's uid and gid.
    pub(crate) user: (u32, u32),
    pub(crate) dir: TempDir,
    _iso: Isolation,
}

/// Root, the agent user, a private mount namespace with its own cron, and
/// a listener with a fresh database.
pub(crate) fn rig(area: &str, scenario: &str, listener_extra: &str) -> Option<Rig> {
    let user = root_and_agent_user()?;
    let iso = Isolation::enter();
    assert!(Isolation::is_private());
    let dir = TempDir::new(scenario);
    std::fs::create_dir_all(dir.path().join("listener")).unwrap();
    // The listener signs system-mode work with the suite's operator key
    // (which the helpers trust), so jobs posted through the API run.
    let key_file = dir.path().join("listener/signing.key");
    std::fs::write(&key_file, &cc_e2e::signing::operator().0).unwrap();
    let listener = ListenerProcess::start(
        &bin("cc-listener"),
        &dir.path().join("listener"),
        &merge(
            &format!("{FAST_REAL_AGENTS}signing_key_file = {key_file:?}\n"),
            listener_extra,
        ),
    );
    Some(Rig {
        listener,
        rec: Record::new(area, scenario),
        user,
        dir,
        _iso: iso,
    })
}

/// `base` TOML lines with `over`'s keys taken from `over`.
fn merge(base: &str, over: &str) -> String {
    let key = |l: &str| l.split('=').next().unwrap_or("").trim().to_owned();
    let overridden: HashSet<String> = over.lines().map(key).collect();
    let mut out: String = base
        .lines()
        .filter(|l| !overridden.contains(&key(l)))
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str(over);
    out
}

impl Rig {
    /// A real agent as cc-agent-user, connected to `url` (None: the
    /// listener) with a fresh key bound to `host`.
    pub(crate) fn agent_via(&self, host: &str, url: Option<&str>, extra: &str) -> AgentProcess {
        let key = self.listener.add_key(host);
        let adir = self.dir.path().join(host);
        std::fs::create_dir_all(&adir).unwrap();
        AgentProcess::start(
            &bin("cc-agent"),
            &adir,
            url.unwrap_or(&self.listener.ws_url()),
            &key,
            host,
            extra,
            Some(self.user),
        )
    }

    /// A directory of the rig's, `name`, owned by the agent user: where
    /// jobs write what they did.
    pub(crate) fn owned_dir(&self, name: &str) -> PathBuf {
        let d = self.dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        nix::unistd::chown(
            &d,
            Some(nix::unistd::Uid::from_raw(self.user.0)),
            Some(nix::unistd::Gid::from_raw(self.user.1)),
        )
        .unwrap();
        d
    }

    pub(crate) fn agent(&self, host: &str, extra: &str) -> AgentProcess {
        let a = self.agent_via(host, None, extra);
        self.wait_connected(host, &a);
        a
    }

    pub(crate) fn wait_connected(&self, host: &str, a: &AgentProcess) {
        wait_for(T, &format!("{host} connected\n{}", a.log()), || {
            let agents = self.listener.get("/api/v1/agents").json();
            agents
                .as_array()?
                .iter()
                .any(|x| x["hostname"] == host && x["connected"] == true)
                .then_some(())
        });
    }

    /// Posts a job for `host`, which must be accepted: its id.
    pub(crate) fn post(&self, host: &str, body: &Value) -> String {
        self.listener.post_job(host, body).to_string()
    }

    pub(crate) fn job(&self, id: &str) -> Value {
        self.listener.get(&format!("/api/v1/jobs/{id}")).json()
    }

    /// Waits until every job is settled (done, lost or expired); returns
    /// how many are done.
    pub(crate) fn settle(&self, ids: &[String], limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        let mut done = 0;
        for id in ids {
            loop {
                let s = self.job(id)["status"].as_str().unwrap_or("").to_owned();
                if s == "done" {
                    done += 1;
                    break;
                }
                if s == "lost" || s == "expired" || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        done
    }

    /// Stored reports per job id for `host` (at most 1,000).
    pub(crate) fn reports_per_job(&self, host: &str) -> HashMap<String, usize> {
        reports_per_job(&self.listener, host)
    }

    /// The one-line summary of `ids`' delivery: (done, missing, twice).
    pub(crate) fn delivery(
        &self,
        host: &str,
        ids: &[String],
        limit: Duration,
    ) -> (usize, usize, usize) {
        let done = self.settle(ids, limit);
        let per = self.reports_per_job(host);
        let missing = ids.iter().filter(|i| !per.contains_key(*i)).count();
        let twice = ids
            .iter()
            .filter(|i| per.get(*i).is_some_and(|n| *n > 1))
            .count();
        (done, missing, twice)
    }
}

/// Stored reports per job id for `host` (at most 1,000), as listener `l`
/// lists them.
pub(crate) fn reports_per_job(l: &ListenerProcess, host: &str) -> HashMap<String, usize> {
    let reports = l
        .get(&format!("/api/v1/reports?hostname={host}&limit=1000"))
        .json();
    let mut per: HashMap<String, usize> = HashMap::new();
    for r in reports.as_array().unwrap() {
        *per.entry(job_id(&r["jobId"]).to_string()).or_default() += 1;
    }
    per
}

/// How many times each job number appears in `ran`, the file the jobs
/// append their number to: runs counted from what ran.
pub(crate) fn times_run(ran: &std::path::Path) -> HashMap<usize, usize> {
    let mut times: HashMap<usize, usize> = HashMap::new();
    for l in std::fs::read_to_string(ran).unwrap_or_default().lines() {
        if let Ok(i) = l.trim().parse::<usize>() {
            *times.entry(i).or_default() += 1;
        }
    }
    times
}

pub(crate) fn poll<V>(limit: Duration, mut f: impl FnMut() -> Option<V>) -> Option<V> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn outbox_len(a: &AgentProcess) -> usize {
    std::fs::read_dir(a.state().join("outbox")).map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .count()
    })
}

pub(crate) fn alive(child: &mut std::process::Child) -> bool {
    child.try_wait().ok().flatten().is_none()
}
