//! A fleet on one listener: 5 real agents (`cc-agent` as cc-agent-user) and
//! 1,000 simulated agents, all connected at once, driven through the
//! operator API.
//!
//! - A run by tags reaches exactly the hosts that carry every tag, real and
//!   simulated alike, and each of their jobs ends `done` with a report.
//! - `batch: 2` never has more than 2 jobs running, by the clock of the
//!   jobs themselves (each prints its start and end), and does run 2 at once.
//! - The event stream of a run over real and simulated hosts gives each
//!   state change once, in order, and a client that drops it and comes back
//!   with `Last-Event-ID` misses nothing and sees nothing twice.
//!
//! Each test brings up its own fleet (well under a second for 1,005
//! agents), so each check passes or fails on its own.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cc_e2e::agent::{AgentProcess, root_and_agent_user};
use cc_e2e::listener::{ListenerProcess, TOKEN};
use cc_e2e::sim::{self, SimStats};
use cc_e2e::sse::Stream;
use cc_e2e::{TempDir, bin};
use serde_json::{Value, json};

/// Every wait's deadline.
const T: Duration = Duration::from_secs(30);
const SIMS: usize = 1000;
const DB_SITE_A: [&str; 2] = ["role:db", "site:a"];

/// The real agents' hostnames and tags: 0..3 in the database at site a,
/// 3..5 web servers.
fn real_hosts() -> Vec<(String, Vec<&'static str>)> {
    (0..5)
        .map(|i| {
            let tags = if i < 3 {
                DB_SITE_A.to_vec()
            } else {
                vec!["role:web"]
            };
            (format!("real-{i}.fleet.test"), tags)
        })
        .collect()
}

/// The simulated agents' hostnames and tags: a fifth carry both
/// `role:db` and `site:a` (half of them with one more tag, listed in
/// another order), a fifth only `role:db`, a fifth only `site:a`, a fifth
/// `role:web`, a fifth none.
fn sim_hosts() -> Vec<(String, Vec<&'static str>)> {
    (0..SIMS)
        .map(|i| {
            let tags = match (i % 5, i % 2) {
                (0, 0) => DB_SITE_A.to_vec(),
                (0, _) => vec!["site:a", "big", "role:db"],
                (1, _) => vec!["role:db"],
                (2, _) => vec!["site:a"],
                (3, _) => vec!["role:web"],
                _ => vec![],
            };
            (format!("sim-{i:04}.fleet.test"), tags)
        })
        .collect()
}

/// Hosts (of `hosts`) that carry every tag of `want`.
fn carrying(hosts: &[(String, Vec<&str>)], want: &[&str]) -> BTreeSet<String> {
    hosts
        .iter()
        .filter(|(_, have)| want.iter().all(|t| have.contains(t)))
        .map(|(h, _)| h.clone())
        .collect()
}

struct Fleet {
    /// The simulated agents' tasks: dropped first, so they go before the
    /// listener does.
    runtime: Option<tokio::runtime::Runtime>,
    stats: Arc<SimStats>,
    /// Handshakes retried while 1,000 agents connected at once.
    retried: usize,
    reals: Vec<AgentProcess>,
    listener: ListenerProcess,
    _dir: TempDir,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

impl Fleet {
    /// The listener, 1,000 simulated agents and 5 real ones, all seen
    /// connected; None when the machine cannot run real agents (outside CI).
    fn start() -> Option<Self> {
        let user = root_and_agent_user()?;
        let started = Instant::now();
        let dir = TempDir::new("fleet");
        let ldir = dir.path().join("listener");
        std::fs::create_dir_all(&ldir).unwrap();
        let (reals, sims) = (real_hosts(), sim_hosts());
        // Every key at once, straight into the listener's database.
        let keys = {
            let store = cc_listener::store::Store::open(&ldir.join("listener.db")).unwrap();
            let specs: Vec<(&str, Option<&str>)> = reals
                .iter()
                .chain(&sims)
                .map(|(h, _)| (h.as_str(), Some(h.as_str())))
                .collect();
            store.add_keys(&specs, 0).unwrap()
        };
        let listener = ListenerProcess::start(
            &bin("cc-listener"),
            &ldir,
            // Every simulated agent connects from 127.0.0.1: one source.
            "max_connections = 2000\nmax_unauthenticated_per_source = 4096\nheartbeat_interval_secs = 10\nping_interval_secs = 10\n",
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let stats = Arc::new(SimStats::default());
        let gate = Arc::new(tokio::sync::Semaphore::new(128));
        for ((host, tags), key) in sims.into_iter().zip(&keys[reals.len()..]) {
            let (url, key) = (listener.ws_url(), key.clone());
            let (stats, gate) = (Arc::clone(&stats), Arc::clone(&gate));
            runtime.spawn(async move {
                let heartbeat = Duration::from_secs(10);
                sim::tagged(url, key, host, &tags, heartbeat, stats, gate).await;
            });
        }
        let agent_bin = bin("cc-agent");
        let agents: Vec<AgentProcess> = reals
            .iter()
            .zip(&keys)
            .map(|((host, tags), key)| {
                let adir = dir.path().join(host);
                std::fs::create_dir_all(&adir).unwrap();
                AgentProcess::start(
                    &agent_bin,
                    &adir,
                    &listener.ws_url(),
                    key,
                    host,
                    &format!("tags = {}\n", json!(tags)),
                    Some(user),
                )
            })
            .collect();
        let mut fleet = Self {
            runtime: Some(runtime),
            stats,
            retried: 0,
            reals: agents,
            listener,
            _dir: dir,
        };
        fleet.wait_all_connected();
        fleet.retried = fleet.stats.reconnects.load(Ordering::Relaxed);
        eprintln!(
            "fleet: {} agents started and connected in {:.1} s ({} handshakes retried)",
            SIMS + fleet.reals.len(),
            started.elapsed().as_secs_f64(),
            fleet.retried
        );
        Some(fleet)
    }

    /// No simulated agent's connection ended once all were connected, and
    /// every agent is still listed connected.
    fn assert_none_dropped(&self) {
        assert_eq!(
            self.stats.reconnects.load(Ordering::Relaxed),
            self.retried,
            "a simulated agent's connection ended: {:?}",
            self.stats.errors.lock().unwrap()
        );
        let agents = self.listener.get("/api/v1/agents").json();
        let up = agents
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["connected"] == true)
            .count();
        assert_eq!(up, SIMS + self.reals.len(), "agents still connected");
    }

    fn wait_all_connected(&self) {
        let want = SIMS + self.reals.len();
        let deadline = Instant::now() + T;
        loop {
            let agents = self.listener.get("/api/v1/agents").json();
            let up: BTreeSet<&str> = agents
                .as_array()
                .unwrap()
                .iter()
                .filter(|a| a["connected"] == true)
                .map(|a| a["hostname"].as_str().unwrap())
                .collect();
            if up.len() == want {
                return;
            }
            if Instant::now() >= deadline {
                let missing: Vec<String> = real_hosts()
                    .into_iter()
                    .map(|(h, _)| h)
                    .filter(|h| !up.contains(h.as_str()))
                    .collect();
                panic!(
                    "{} of {want} agents connected; real ones missing: {missing:?}; simulated agents' errors: {:?}\n{}",
                    up.len(),
                    self.stats.errors.lock().unwrap(),
                    self.reals.iter().map(AgentProcess::log).collect::<String>()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn post_run(&self, body: &Value) -> (String, Vec<(String, String)>) {
        self.listener.post_run(body)
    }

    /// The run's view once all `n` of its jobs are done.
    fn settled(&self, run: &str, n: usize) -> Value {
        let deadline = Instant::now() + T;
        loop {
            let view = self.listener.get(&format!("/api/v1/runs/{run}")).json();
            if view["counts"]["done"].as_u64() == Some(n as u64) {
                return view;
            }
            assert!(
                Instant::now() < deadline,
                "run {run} not settled within {T:?}: {}",
                view["counts"]
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn job(&self, id: &str) -> Value {
        self.listener.get(&format!("/api/v1/jobs/{id}")).json()
    }
}

/// Tags `role:db` + `site:a` select exactly the agents carrying both, real
/// and simulated, and each of their jobs ends `done` with a report.
#[test]
fn a_run_by_tags_reaches_exactly_the_hosts_with_every_tag() {
    let Some(fleet) = Fleet::start() else {
        return;
    };
    let (reals, sims) = (real_hosts(), sim_hosts());
    let expected: BTreeSet<String> = carrying(&reals, &DB_SITE_A)
        .into_iter()
        .chain(carrying(&sims, &DB_SITE_A))
        .collect();
    assert_eq!(expected.len(), 3 + SIMS / 5, "the fixture itself");
    let (run, jobs) = fleet.post_run(&json!({
        "tags": DB_SITE_A, "command": "/bin/echo", "args": ["fleet"], "timeout": 30
    }));
    let got: BTreeSet<String> = jobs.iter().map(|(h, _)| h.clone()).collect();
    assert_eq!(got.len(), jobs.len(), "a host twice in the run");
    let extra: Vec<&String> = got.difference(&expected).collect();
    let missed: Vec<&String> = expected.difference(&got).collect();
    assert!(
        extra.is_empty() && missed.is_empty(),
        "selected but without both tags: {extra:?}; with both but not selected: {missed:?}"
    );

    let view = fleet.settled(&run, jobs.len());
    assert_eq!(view["succeeded"], jobs.len(), "{}", view["counts"]);
    let real_names: BTreeSet<String> = reals.into_iter().map(|(h, _)| h).collect();
    for (host, id) in &jobs {
        let job = fleet.job(id);
        assert_eq!(job["status"], "done", "{host}: {job}");
        let report = &job["report"];
        assert_eq!(report["jobId"], id.as_str(), "{host}: {job}");
        assert_eq!(report["exitCode"], 0, "{host}: {job}");
        if real_names.contains(host) {
            // A real agent ran it, as its own unprivileged user.
            assert_eq!(report["stdout"], "fleet\n", "{host}: {job}");
            assert_eq!(report["executingUser"], "cc-agent-user", "{host}: {job}");
        } else {
            assert_eq!(report["executingUser"], "sim", "{host}: {job}");
        }
    }
    fleet.assert_none_dropped();
    eprintln!(
        "fleet: tags {DB_SITE_A:?} matched {} hosts ({} real), each done with a report",
        jobs.len(),
        jobs.iter().filter(|(h, _)| real_names.contains(h)).count()
    );
}

/// Nanoseconds since the epoch from `date +%s.%N`.
fn nanos(line: &str) -> i128 {
    let (s, n) = line
        .trim()
        .split_once('.')
        .unwrap_or_else(|| panic!("not `date +%s.%N`: {line:?}"));
    assert_eq!(n.len(), 9, "{line:?}");
    s.parse::<i128>().unwrap() * 1_000_000_000 + n.parse::<i128>().unwrap()
}

/// The most of `spans` (start, end) that overlap at any instant; an end
/// and a start at the same instant do not overlap.
fn most_at_once(spans: &[(i128, i128)]) -> usize {
    let mut edges: Vec<(i128, i32)> = spans.iter().flat_map(|&(s, e)| [(s, 1), (e, -1)]).collect();
    // Ends (-1) sort before starts (+1) at the same instant.
    edges.sort_unstable();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    usize::try_from(most).unwrap()
}

/// `batch: 2` over the 5 real agents, each job printing its own start and
/// end: never more than 2 at once, and 2 at once at some point.
#[test]
fn a_batch_of_2_never_runs_more_than_2_by_the_jobs_own_clocks() {
    let Some(fleet) = Fleet::start() else {
        return;
    };
    const BATCH: usize = 2;
    let hosts: Vec<String> = real_hosts().into_iter().map(|(h, _)| h).collect();
    let (run, jobs) = fleet.post_run(&json!({
        "hosts": hosts, "command": "/bin/sh",
        "args": ["-c", "date +%s.%N; sleep 0.5; date +%s.%N"],
        "timeout": 30, "batch": BATCH
    }));
    assert_eq!(jobs.len(), 5);
    fleet.settled(&run, jobs.len());
    let spans: Vec<(i128, i128)> = jobs
        .iter()
        .map(|(host, id)| {
            let job = fleet.job(id);
            let report = &job["report"];
            assert_eq!(report["exitCode"], 0, "{host}: {job}");
            let out = report["stdout"].as_str().unwrap();
            let lines: Vec<&str> = out.lines().collect();
            assert_eq!(lines.len(), 2, "{host}: {out:?}");
            let (start, end) = (nanos(lines[0]), nanos(lines[1]));
            assert!(start < end, "{host}: {out:?}");
            (start, end)
        })
        .collect();
    let most = most_at_once(&spans);
    let t0 = spans.iter().map(|s| s.0).min().unwrap();
    let shown: Vec<(i128, i128)> = spans
        .iter()
        .map(|&(s, e)| ((s - t0) / 1_000_000, (e - t0) / 1_000_000))
        .collect();
    assert!(
        most <= BATCH,
        "{most} jobs ran at once with batch {BATCH}: spans in ms {shown:?}"
    );
    assert_eq!(
        most, BATCH,
        "the batch was not used: never {BATCH} at once: spans in ms {shown:?}"
    );
    fleet.assert_none_dropped();
    eprintln!(
        "fleet: batch {BATCH} over 5 real agents: at most {most} at once; spans in ms {shown:?}"
    );
}

fn ids(events: &[Value]) -> Vec<i64> {
    events.iter().map(|e| e["id"].as_i64().unwrap()).collect()
}

fn strictly_increasing(events: &[Value]) -> bool {
    ids(events).windows(2).all(|w| w[0] < w[1])
}

/// The event stream of a run over `role:db` (3 real agents, 400 simulated;
/// batch 100, so most jobs start held) gives each job's changes once and
/// in order, and resumes after a drop with neither a gap nor a repeat.
#[test]
fn the_event_stream_gives_each_change_once_in_order_and_resumes() {
    let Some(fleet) = Fleet::start() else {
        return;
    };
    const BATCH: usize = 100;
    let l = &fleet.listener;
    assert_eq!(Stream::open(l, "", None, None).status, 401);
    let (run, jobs) = fleet.post_run(&json!({
        "tags": ["role:db"], "command": "/bin/true", "timeout": 30, "batch": BATCH
    }));
    let n = jobs.len();
    let real_names: BTreeSet<String> = real_hosts().into_iter().map(|(h, _)| h).collect();
    let reals = jobs.iter().filter(|(h, _)| real_names.contains(h)).count();
    assert_eq!((n, reals), (3 + 2 * SIMS / 5, 3), "role:db hosts");
    // Each job: held or queued, (queued,) sent, done.
    let expected = 3 * n + (n - BATCH);
    let query = format!("?run={run}");
    let done_in = |v: &[Value]| v.iter().filter(|e| e["status"] == "done").count();
    // A stop condition for `until`: `n` done events in all, counting
    // `before` already seen, each event looked at once.
    let all_done = |before: usize| {
        let (mut seen, mut done) = (0, before);
        move |got: &[Value]| {
            done += done_in(&got[seen..]);
            seen = got.len();
            done >= n
        }
    };

    // Part of the stream, dropped midway; then the rest from its last id.
    let mut first = Stream::open(l, &query, None, Some(TOKEN));
    assert_eq!(first.status, 200);
    assert!(
        first.content_type.starts_with("text/event-stream"),
        "{}",
        first.content_type
    );
    let part = first.until(T, |got| got.len() >= expected / 2);
    drop(first);
    assert_eq!(part.len(), expected / 2, "the first part of the stream");
    let last = *ids(&part).last().unwrap();
    let mut second = Stream::open(l, &query, Some(last), Some(TOKEN));
    let rest = second.until(T, all_done(done_in(&part)));
    // Nothing more once every job is done (a repeat would come here).
    let late = second.until(Duration::from_millis(500), |_| false);
    let resumed: Vec<Value> = part.iter().chain(&rest).chain(&late).cloned().collect();

    // The whole stream from the start, read afterwards.
    let mut whole = Stream::open(l, &query, None, Some(TOKEN));
    let mut all = whole.until(T, all_done(0));
    all.extend(whole.until(Duration::from_millis(500), |_| false));

    assert!(strictly_increasing(&part), "first part out of order");
    assert!(strictly_increasing(&rest), "resumed part out of order");
    assert!(strictly_increasing(&all), "ids not strictly increasing");
    assert!(
        strictly_increasing(&resumed),
        "the resumed stream repeated events: {last} then {:?}",
        ids(&rest).first()
    );
    assert_eq!(
        ids(&resumed),
        ids(&all),
        "dropped and resumed at {last}: events lost or repeated"
    );
    assert_eq!(
        all.len(),
        expected,
        "events for {n} jobs with batch {BATCH}"
    );

    let by_job: HashMap<&str, &str> = jobs.iter().map(|(h, j)| (j.as_str(), h.as_str())).collect();
    let mut states: HashMap<&str, Vec<&str>> = HashMap::new();
    for e in &all {
        assert_eq!(e["runId"], run.as_str(), "only the run's events: {e}");
        let job = e["jobId"].as_str().unwrap();
        let host = by_job
            .get(job)
            .unwrap_or_else(|| panic!("an event for a job not in the run: {e}"));
        assert_eq!(e["hostname"], *host, "{e}");
        if e["status"] == "done" {
            assert_eq!(e["exitCode"], 0, "{e}");
        }
        states
            .entry(job)
            .or_default()
            .push(e["status"].as_str().unwrap());
    }
    let mut held = 0;
    for (host, job) in &jobs {
        let s = states.get(job.as_str()).cloned().unwrap_or_default();
        if s.first() == Some(&"held") {
            held += 1;
            assert_eq!(s, ["held", "queued", "sent", "done"], "{host}");
        } else {
            assert_eq!(s, ["queued", "sent", "done"], "{host}");
        }
    }
    assert_eq!(held, n - BATCH, "jobs beyond the batch start held");
    fleet.assert_none_dropped();
    eprintln!(
        "fleet: events for {n} jobs ({reals} real, batch {BATCH}, {held} held): {} in all; dropped after {}, resumed with {} more, none repeated",
        all.len(),
        part.len(),
        rest.len() + late.len()
    );
}
