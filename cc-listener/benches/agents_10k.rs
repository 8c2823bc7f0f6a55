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

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use cc_e2e::agent::proc_status_kib;
use cc_e2e::listener::ListenerProcess;
use cc_e2e::{TempDir, env_or};
use cc_listener::store::Store;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn simulated_agent(
    url: String,
    key: String,
    host: String,
    heartbeat: Duration,
    acks: std_mpsc::Sender<(String, Instant)>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("X-CC-API-KEY", HeaderValue::from_str(&key).unwrap());
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(config), true)
        .await
        .expect("connect");
    let register = json!({"type": "register", "payload": {"hostname": host, "os": "linux", "arch": "amd64",
        "tags": ["bench"], "executionMode": "user", "isRoot": false}});
    ws.send(Message::Text(register.to_string().into()))
        .await
        .unwrap();
    drop(permit);
    // Spread heartbeats over the interval.
    let seed: u64 = host
        .bytes()
        .fold(0, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let offset = Duration::from_millis(seed % heartbeat.as_millis().max(1) as u64);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + offset, heartbeat);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if ws.send(Message::Text(r#"{"type":"heartbeat","payload":{}}"#.into())).await.is_err() { return }
            }
            msg = ws.next() => {
                let Some(Ok(msg)) = msg else { return };
                let Message::Text(text) = msg else { continue };
                let v: Value = serde_json::from_str(text.as_str()).unwrap();
                match v["type"].as_str() {
                    Some("execute_job") => {
                        let job_id = v["payload"]["jobId"].as_str().unwrap();
                        let report = json!({"type": "execution_report", "payload": {
                            "jobId": job_id, "command": "/bin/true", "exitCode": 0, "stdout": "", "stderr": "",
                            "startTime": "2024-03-20T10:00:00Z", "durationMs": 1, "executingUid": 1001,
                            "executingUser": "cc-agent-user", "reportId": job_id}});
                        if ws.send(Message::Text(report.to_string().into())).await.is_err() { return }
                    }
                    Some("report_ack") => {
                        let id = v["payload"]["reportId"].as_str().unwrap().to_owned();
                        let _ = acks.send((id, Instant::now()));
                    }
                    _ => {}
                }
            }
        }
    }
}

/// `n` jobs' reports stored with the listener's store in a fresh database,
/// one transaction each, then `n` more in groups of `MAX_GROUP`.
fn store_side_by_side(n: usize) -> (Duration, Duration) {
    use cc_listener::store::{NewJob, ReportLimits, WriteOp};
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
                &j.hostname,
                &j.job_id,
                &format!("id:{i}"),
                &payload,
                1,
                limits,
            )
            .unwrap();
    }
    let single = t.elapsed();
    let t = Instant::now();
    let ops: Vec<WriteOp> = (n..2 * n)
        .map(|i| {
            let j = job(i);
            WriteOp::Report {
                hostname: j.hostname,
                job_id: j.job_id,
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

fn main() {
    let agents = env_or("CC_BENCH_AGENTS", 10_000) as usize;
    let jobs = env_or("CC_BENCH_JOBS", 2_000) as usize;
    let heartbeat = Duration::from_secs(env_or("CC_BENCH_HEARTBEAT_SECS", 10));
    let dir = TempDir::new("bench");

    let hosts: Vec<String> = (0..agents).map(|i| format!("sim-{i:05}")).collect();
    let keys = {
        let store = Store::open(&dir.path().join("listener.db")).unwrap();
        let specs: Vec<(&str, Option<&str>)> = hosts
            .iter()
            .map(|h| (h.as_str(), Some(h.as_str())))
            .collect();
        store.add_keys(&specs, 0).unwrap()
    };
    let config = format!(
        // Every simulated agent connects from 127.0.0.1: one source. The
        // other budgets are the defaults: registrations are committed in
        // groups, so the storm of 10,000 fits the unregistered budget.
        "heartbeat_interval_secs = {}\nmax_connections = {}\nmax_unauthenticated_per_source = 20000\n",
        heartbeat.as_secs(),
        agents + 100
    );
    let bin = std::env::var_os("CC_BENCH_LISTENER").map_or_else(
        || Path::new(env!("CARGO_BIN_EXE_cc-listener")).to_owned(),
        std::path::PathBuf::from,
    );
    let listener = ListenerProcess::start(&bin, dir.path(), &config);
    let pid = listener.child.id();
    std::thread::sleep(Duration::from_millis(500));
    let rss_start = proc_status_kib(pid, "VmRSS");

    let (ack_tx, ack_rx) = std_mpsc::channel();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let connect_time = connect_all(&listener, &runtime, &hosts, keys, heartbeat, &ack_tx);
    // Idle (heartbeating only) for two heartbeat intervals.
    std::thread::sleep(heartbeat * 2);
    let rss_idle = proc_status_kib(pid, "VmRSS");

    let (mut latencies, run_time) = sequential_jobs(&listener, &hosts, jobs, &ack_rx);
    let rss_after = proc_status_kib(pid, "VmRSS");
    latencies.sort();

    print_sequential(
        &Measured {
            agents,
            jobs,
            heartbeat,
            connect_time,
            rss: [rss_start, rss_idle, rss_after],
            run_time,
        },
        &latencies,
    );
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

/// Connects every agent (at most 256 connecting at once) and waits until
/// the listener shows them all connected; returns how long that took.
fn connect_all(
    listener: &ListenerProcess,
    runtime: &tokio::runtime::Runtime,
    hosts: &[String],
    keys: Vec<String>,
    heartbeat: Duration,
    ack_tx: &std_mpsc::Sender<(String, Instant)>,
) -> Duration {
    let agents = hosts.len();
    let url = listener.ws_url();
    let connect_started = Instant::now();
    runtime.block_on(async {
        let gate = Arc::new(Semaphore::new(256));
        for (host, key) in hosts.iter().cloned().zip(keys) {
            let permit = Arc::clone(&gate).acquire_owned().await.unwrap();
            let (url, acks) = (url.clone(), ack_tx.clone());
            tokio::spawn(simulated_agent(url, key, host, heartbeat, acks, permit));
        }
    });
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
    while connected(listener) < agents {
        assert!(
            Instant::now() < deadline,
            "not all agents connected: {} of {agents}",
            connected(listener)
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    connect_started.elapsed()
}

/// `jobs` jobs one after another, each to another agent; returns each
/// one's round trip (POST to `report_ack`) and the time for all.
fn sequential_jobs(
    listener: &ListenerProcess,
    hosts: &[String],
    jobs: usize,
    ack_rx: &std_mpsc::Receiver<(String, Instant)>,
) -> (Vec<Duration>, Duration) {
    let agents = hosts.len();
    let mut latencies = Vec::with_capacity(jobs);
    let run_started = Instant::now();
    for i in 0..jobs {
        let host = &hosts[(i * 7919) % agents];
        let t0 = Instant::now();
        let r = listener.post(
            &format!("/api/v1/agents/{host}/jobs"),
            &json!({"command": "/bin/true", "timeout": 60}),
        );
        assert_eq!(r.status, 202, "{}", r.body);
        let job_id = r.json()["jobId"].as_str().unwrap().to_owned();
        loop {
            let (id, at) = ack_rx
                .recv_timeout(Duration::from_secs(30))
                .expect("report_ack");
            if id == job_id {
                latencies.push(at - t0);
                break;
            }
        }
    }
    let run_time = run_started.elapsed();
    (latencies, run_time)
}

/// What `main` measured before the fan-out.
struct Measured {
    agents: usize,
    jobs: usize,
    heartbeat: Duration,
    connect_time: Duration,
    /// The listener's RSS (KiB) at start, with every agent idle, after the
    /// jobs.
    rss: [u64; 3],
    run_time: Duration,
}

fn print_sequential(m: &Measured, latencies: &[Duration]) {
    let Measured {
        agents,
        jobs,
        heartbeat,
        connect_time,
        rss: [rss_start, rss_idle, rss_after],
        run_time,
    } = *m;
    let per_conn = (rss_idle.saturating_sub(rss_start)) as f64 * 1024.0 / agents as f64;
    println!(
        "agents_10k: {agents} simulated agents, heartbeat every {}s, {jobs} sequential jobs",
        heartbeat.as_secs()
    );
    println!(
        "  connect + register all agents    {:>10.1} s",
        connect_time.as_secs_f64()
    );
    println!("  listener RSS at start            {:>10} KiB", rss_start);
    println!("  listener RSS, all agents idle    {:>10} KiB", rss_idle);
    println!(
        "  RSS per idle connection          {:>10.0} bytes ({:.1} KiB; target <= 16 KiB)",
        per_conn,
        per_conn / 1024.0
    );
    println!("  listener RSS after the jobs      {:>10} KiB", rss_after);
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

/// Fan-out: one run to every agent, timed until every report is stored
/// and acknowledged.
fn fan_out(
    listener: &ListenerProcess,
    agents: usize,
    ack_rx: &std_mpsc::Receiver<(String, Instant)>,
) {
    // Fan-out: one run to every agent (all carry the tag "bench"), timed
    // from the POST until every report is stored and acknowledged.
    while ack_rx.try_recv().is_ok() {}
    let fan_started = Instant::now();
    let r = listener.post(
        "/api/v1/runs",
        &json!({"tags": ["bench"], "command": "/bin/true", "timeout": 60}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let posted = fan_started.elapsed();
    let mut acked = std::collections::HashSet::new();
    while acked.len() < agents {
        let (id, _) = ack_rx
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
