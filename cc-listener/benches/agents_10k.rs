//! Load generator: N simulated agents (default 10,000) held against the real
//! release `cc-listener`, all heartbeating, while jobs go round trip one at
//! a time: operator API → `execute_job` to the agent → `execution_report`
//! back → `report_ack` (sent only after the report is committed to SQLite).
//!
//! Measures the listener's RSS per idle connection and the p50/p99 of the
//! round trip at that load; then one run fanned out to every agent (time
//! until all reports are stored and acknowledged), beside the same number
//! of reports stored one per transaction and in groups. Run:
//!
//!     cargo bench -p cc-listener --bench agents_10k
//!
//! `CC_BENCH_AGENTS`, `CC_BENCH_JOBS`, `CC_BENCH_HEARTBEAT_SECS` change the
//! defaults (10000, 2000, 10). `CC_BENCH_LISTENER=PATH` runs another
//! listener binary or a wrapper script (to profile it under a tool).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a failed step should stop it

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use cc_listener::store::Store;
use cc_testkit::agent::proc_status_kib;
use cc_testkit::listener::ListenerProcess;
use cc_testkit::sim::{self, Behaviour, Observer};
use cc_testkit::stats::percentile;
use cc_testkit::{TempDir, env_or};
use serde_json::json;
use tokio::sync::Semaphore;

/// The simulated agents' acknowledgements, each with the time it arrived;
/// a failed handshake stops the bench.
struct Acks(std_mpsc::Sender<(String, Instant)>);

impl Observer for Acks {
    fn connect_failed(&self, host: &str, why: &str) {
        panic!("connect {host}: {why}");
    }

    fn acked(&self, report_id: &str) {
        let _ = self.0.send((report_id.to_owned(), Instant::now()));
    }
}

/// `n` jobs' reports stored with the listener's store in a fresh database,
/// one transaction each, then `n` more in groups of `MAX_GROUP`.
fn store_side_by_side(n: usize) -> (Duration, Duration) {
    use cc_listener::store::{NewJob, ReportLimits, ReportWrite};
    use cc_proto::{Hostname, JobId};
    let dir = TempDir::new("bench-store");
    let store = Store::open(&dir.path().join("side.db")).unwrap();
    let payload = json!({"jobId": "j", "command": "/bin/true", "exitCode": 0, "stdout": "",
        "stderr": "", "startTime": "2024-03-20T10:00:00Z", "durationMs": 1,
        "executingUid": 1001, "executingUser": "cc-agent-user"})
    .to_string();
    let job = |i: usize| NewJob {
        job_id: format!("job-{i}"),
        hostname: format!("sim-{:05}", i % 10_000),
        command: "/bin/true".into(),
        args: vec![],
        timeout_secs: 60,
        created_ms: 0,
        expires_ms: i64::MAX,
        signed: None,
        submitter: None,
    };
    for i in 0..2 * n {
        store.create_job(&job(i)).unwrap();
    }
    let limits = ReportLimits::default();
    let t = Instant::now();
    for i in 0..n {
        let j = job(i);
        store
            .store_report(
                &Hostname::parse(&j.hostname).unwrap(),
                &JobId::parse(&j.job_id).unwrap(),
                &format!("id:{i}"),
                &payload,
                1,
                limits,
            )
            .unwrap();
    }
    let single = t.elapsed();
    let t = Instant::now();
    let ops: Vec<ReportWrite> = (n..2 * n)
        .map(|i| {
            let j = job(i);
            ReportWrite {
                hostname: Hostname::parse(&j.hostname).unwrap(),
                job_id: JobId::parse(&j.job_id).unwrap(),
                dedupe_key: format!("id:{i}"),
                payload: payload.clone(),
                limits,
            }
        })
        .collect();
    for group in ops.chunks(cc_listener::store::MAX_GROUP) {
        store.write_batch(group, 1).unwrap();
    }
    (single, t.elapsed())
}

/// Keys for `agents` hosts `sim-00000`…, made in the listener's database
/// in `dir` before it starts: the hosts and their keys.
fn keys(dir: &std::path::Path, agents: usize) -> (Vec<String>, Vec<String>) {
    let hosts: Vec<String> = (0..agents).map(|i| format!("sim-{i:05}")).collect();
    let store = Store::open(&dir.join("listener.db")).unwrap();
    let specs: Vec<(&str, Option<&str>)> = hosts
        .iter()
        .map(|h| (h.as_str(), Some(h.as_str())))
        .collect();
    let keys = store.add_keys(&specs, 0).unwrap();
    (hosts, keys)
}

/// Connects every simulated agent (256 handshakes in flight at most) and
/// waits until the listener shows them all connected: how long it took.
fn connect_all(
    runtime: &tokio::runtime::Runtime,
    listener: &ListenerProcess,
    hosts: &[String],
    keys: Vec<String>,
    heartbeat: Duration,
    acks: &Arc<Acks>,
) -> Duration {
    let url: Arc<str> = listener.ws_url().into();
    let how = Arc::new(Behaviour::bench(heartbeat));
    let connect_started = Instant::now();
    let gate = Arc::new(Semaphore::new(256));
    for (host, key) in hosts.iter().cloned().zip(keys) {
        let obs: Arc<dyn Observer + Send + Sync> = acks.clone();
        runtime.spawn(sim::run(
            Arc::clone(&url),
            key,
            host,
            Arc::clone(&how),
            Arc::clone(&gate),
            obs,
        ));
    }
    // Wait until the listener shows every agent connected.
    let connected = |l: &ListenerProcess| {
        let agents = l.get("/api/v1/agents").json();
        agents
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["connected"] == true)
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    while connected(listener) < hosts.len() {
        assert!(
            Instant::now() < deadline,
            "not all agents connected: {} of {}",
            connected(listener),
            hosts.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    connect_started.elapsed()
}

/// `jobs` jobs one at a time, each timed from the POST to its
/// `report_ack`: the sorted round trips and the time for all.
fn round_trips(
    listener: &ListenerProcess,
    hosts: &[String],
    jobs: usize,
    acks: &std_mpsc::Receiver<(String, Instant)>,
) -> (Vec<Duration>, Duration) {
    let mut latencies = Vec::with_capacity(jobs);
    let run_started = Instant::now();
    for i in 0..jobs {
        let host = &hosts[(i * 7919) % hosts.len()];
        let t0 = Instant::now();
        let job_id = listener.post_job(host, &json!({"command": "/bin/true", "timeout": 60}));
        loop {
            let (id, at) = acks
                .recv_timeout(Duration::from_secs(30))
                .expect("report_ack");
            if id == job_id.as_str() {
                latencies.push(at - t0);
                break;
            }
        }
    }
    let run_time = run_started.elapsed();
    latencies.sort();
    (latencies, run_time)
}

/// The listener's RSS (KiB) at start, with every agent idle, and after the
/// jobs.
struct Rss {
    start: u64,
    idle: u64,
    after: u64,
}

fn print_round_trips(
    agents: usize,
    heartbeat: Duration,
    connect_time: Duration,
    rss: &Rss,
    latencies: &[Duration],
    run_time: Duration,
) {
    let jobs = latencies.len();
    let per_conn = (rss.idle.saturating_sub(rss.start)) as f64 * 1024.0 / agents as f64;
    println!(
        "agents_10k: {agents} simulated agents, heartbeat every {}s, {jobs} sequential jobs",
        heartbeat.as_secs()
    );
    println!(
        "  connect + register all agents    {:>10.1} s",
        connect_time.as_secs_f64()
    );
    println!("  listener RSS at start            {:>10} KiB", rss.start);
    println!("  listener RSS, all agents idle    {:>10} KiB", rss.idle);
    println!(
        "  RSS per idle connection          {:>10.0} bytes ({:.1} KiB; target <= 16 KiB)",
        per_conn,
        per_conn / 1024.0
    );
    println!("  listener RSS after the jobs      {:>10} KiB", rss.after);
    println!(
        "  job round trip p50               {:>10.2} ms",
        percentile(latencies, 0.50).as_secs_f64() * 1e3
    );
    println!(
        "  job round trip p90               {:>10.2} ms",
        percentile(latencies, 0.90).as_secs_f64() * 1e3
    );
    println!(
        "  job round trip p99               {:>10.2} ms (target < 10 ms)",
        percentile(latencies, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "  job round trip max               {:>10.2} ms",
        latencies.last().unwrap().as_secs_f64() * 1e3
    );
    println!(
        "  jobs per second (sequential)     {:>10.0}",
        jobs as f64 / run_time.as_secs_f64()
    );
}

/// Fan-out: one run to every agent (all carry the tag "bench"), timed
/// from the POST until every report is stored and acknowledged.
fn fan_out(
    listener: &ListenerProcess,
    agents: usize,
    acks: &std_mpsc::Receiver<(String, Instant)>,
) {
    while acks.try_recv().is_ok() {}
    let fan_started = Instant::now();
    let r = listener.post(
        "/api/v1/runs",
        &json!({"tags": ["bench"], "command": "/bin/true", "timeout": 60}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let posted = fan_started.elapsed();
    let mut acked = std::collections::HashSet::new();
    while acked.len() < agents {
        let (id, _) = acks
            .recv_timeout(Duration::from_secs(60))
            .expect("every fanned-out report acknowledged");
        acked.insert(id);
    }
    let fan_time = fan_started.elapsed();
    println!(
        "  fan-out to {agents} agents: POST answered in {:.2} s; all reports stored and acknowledged in {:.2} s (target <= 3 s); {:.0} reports/s",
        posted.as_secs_f64(),
        fan_time.as_secs_f64(),
        agents as f64 / fan_time.as_secs_f64()
    );
}

fn main() {
    let agents = env_or("CC_BENCH_AGENTS", 10_000) as usize;
    let jobs = env_or("CC_BENCH_JOBS", 2_000) as usize;
    let heartbeat = Duration::from_secs(env_or("CC_BENCH_HEARTBEAT_SECS", 10));
    let dir = TempDir::new("bench");

    let (hosts, keys) = keys(dir.path(), agents);
    let config = format!(
        // Every simulated agent connects from 127.0.0.1: one source. The
        // other budgets are the defaults: registrations are committed in
        // groups, so the storm of 10,000 fits the unregistered budget.
        "heartbeat_interval_secs = {}\nmax_connections = {}\nmax_unauthenticated_per_source = 20000\n",
        heartbeat.as_secs(),
        agents + 100
    );
    let bin = std::env::var_os("CC_BENCH_LISTENER")
        .map_or_else(|| common::bin().to_owned(), PathBuf::from);
    let listener = ListenerProcess::start(&bin, dir.path(), &config);
    let pid = listener.child.id();
    std::thread::sleep(Duration::from_millis(500));
    let rss_start = proc_status_kib(pid, "VmRSS");

    let (ack_tx, ack_rx) = std_mpsc::channel();
    let acks = Arc::new(Acks(ack_tx));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let connect_time = connect_all(&runtime, &listener, &hosts, keys, heartbeat, &acks);

    // Idle (heartbeating only) for two heartbeat intervals.
    std::thread::sleep(heartbeat * 2);
    let rss_idle = proc_status_kib(pid, "VmRSS");
    let (latencies, run_time) = round_trips(&listener, &hosts, jobs, &ack_rx);
    let rss = Rss {
        start: rss_start,
        idle: rss_idle,
        after: proc_status_kib(pid, "VmRSS"),
    };
    print_round_trips(agents, heartbeat, connect_time, &rss, &latencies, run_time);
    fan_out(&listener, agents, &ack_rx);
    // Beside it, in the same run: the same number of reports stored one
    // per transaction, and in groups as the listener now does.
    let (single, grouped) = store_side_by_side(agents);
    println!(
        "  {agents} reports stored one per transaction {:.2} s ({:.0}/s); in groups of {} {:.2} s ({:.0}/s): {:.1}x",
        single.as_secs_f64(),
        agents as f64 / single.as_secs_f64(),
        cc_listener::store::MAX_GROUP,
        grouped.as_secs_f64(),
        agents as f64 / grouped.as_secs_f64(),
        single.as_secs_f64() / grouped.as_secs_f64()
    );

    let stored = listener
        .get("/api/v1/reports?limit=1000")
        .json()
        .as_array()
        .unwrap()
        .len();
    assert!(stored >= jobs.min(1000), "reports missing: {stored}");
    let mut listener = listener;
    assert!(
        listener.terminate().is_some_and(|s| s.success()),
        "listener did not stop cleanly"
    );
    runtime.shutdown_timeout(Duration::from_secs(1));
}
