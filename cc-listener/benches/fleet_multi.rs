//! A fleet across several listeners on one PostgreSQL database (issue #15),
//! beside one listener on SQLite.
//!
//! PostgreSQL side (defaults): 100,000 simulated agents, connected and
//! heartbeating, spread over 6 release `cc-listener` processes sharing a
//! private PostgreSQL cluster. A process here may hold at most 20,000
//! descriptors, so the simulated agents live in load processes too: this
//! bench re-executes itself (`CC_FLEET_ROLE=load`), one load process per
//! 17,000 agents or fewer, each connecting its agents to one listener.
//! Measured: each listener's RSS per connection; jobs one at a time, each
//! posted to a listener *other* than the one holding the agent, timed from
//! just before the POST to the agent's `report_ack` (the report is
//! committed), p50/p99; and one run of `/bin/true` fanned out to every
//! agent, timed until every report is acknowledged (stored).
//!
//! SQLite side: the same figures for one listener on SQLite at 19,000
//! agents (two load processes).
//!
//!     cargo bench -p cc-listener --bench fleet_multi
//!
//! Knobs: `CC_BENCH_AGENTS` (100000), `CC_BENCH_LISTENERS` (6),
//! `CC_BENCH_SQLITE_AGENTS` (19000), `CC_BENCH_JOBS` (1000),
//! `CC_BENCH_HEARTBEAT_SECS` (30), `CC_BENCH_IDLE_SECS` (two heartbeats),
//! `CC_BENCH_PER_LOAD` (17000 agents per load process at most),
//! `CC_BENCH_CONNECT_GATE` (64 handshakes in flight per load process),
//! `CC_BENCH_ONLY` (`postgres`, `postgres-1` or `sqlite`; all three by
//! default), `CC_BENCH_PG_STATEMENTS` (N: the N statements the sequential
//! jobs and the fan-out each spent most time in, with the server started
//! with `CC_PG_EXTRA_OPTS="-c shared_preload_libraries=pg_stat_statements
//! -c pg_stat_statements.track=all"`).
//!
//! Times cross processes as wall-clock microseconds (`SystemTime`): the
//! load process stamps each `report_ack` as it arrives, the bench stamps
//! the POST, both on this machine's one clock.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a failed step should stop it

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "fleet_multi/load.rs"]
mod load;
#[path = "fleet_multi/print.rs"]
mod print;
#[path = "fleet_multi/stages.rs"]
mod stages;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cc_listener::store::Store;
use cc_testkit::agent::proc_status_kib;
use cc_testkit::http::dechunk;
use cc_testkit::listener::{ListenerProcess, TOKEN, job_id};
use cc_testkit::pg::Cluster;
use cc_testkit::sim::{self, Behaviour, Observer, Reconnect};
use cc_testkit::stats::percentile;
use cc_testkit::{TempDir, env_or};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use common::bin;
use stages::Stages;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn host_name(i: usize) -> String {
    format!("sim-{i:06}")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---------------------------------------------------------------------------
// The bench.

/// A load process: its agents `from..to` connect to `listener`.
struct Load {
    child: Child,
    listener: usize,
    from: usize,
    to: usize,
}

impl Drop for Load {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

enum Line {
    /// An agent got the job (`execute_job` arrived), at a wall-clock µs.
    Got(String, u64),
    Ack(String, u64),
    Done {
        load: usize,
        ok: usize,
        failed: usize,
        retries: usize,
    },
    Other(usize, String),
}

/// Starts load processes for `hosts` (indexes into `keys_file`) spread
/// evenly over `urls`; every line they print arrives on the receiver.
fn start_loads(
    urls: &[String],
    agents: usize,
    keys_file: &Path,
    heartbeat: Duration,
) -> (Vec<Load>, std_mpsc::Receiver<Line>) {
    let per_load = env_or("CC_BENCH_PER_LOAD", 17_000) as usize;
    let gate = env_or("CC_BENCH_CONNECT_GATE", 64);
    let exe = std::env::current_exe().unwrap();
    let (tx, rx) = std_mpsc::channel();
    let mut loads = Vec::new();
    let n = urls.len();
    for (k, url) in urls.iter().enumerate() {
        let (lo, hi) = (agents * k / n, agents * (k + 1) / n);
        let parts = (hi - lo).div_ceil(per_load).max(1);
        for p in 0..parts {
            let from = lo + (hi - lo) * p / parts;
            let to = lo + (hi - lo) * (p + 1) / parts;
            let mut child = Command::new(&exe)
                .env("CC_FLEET_ROLE", "load")
                .env("CC_FLEET_URL", url)
                .env("CC_FLEET_KEYS", keys_file)
                .env("CC_FLEET_FROM", from.to_string())
                .env("CC_FLEET_TO", to.to_string())
                .env("CC_FLEET_HEARTBEAT_MS", heartbeat.as_millis().to_string())
                .env("CC_FLEET_GATE", gate.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("starting a load process");
            let stdout = child.stdout.take().unwrap();
            let tx = tx.clone();
            let index = loads.len();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { return };
                    let mut f = line.split(' ');
                    let parsed = match f.next() {
                        Some(kind @ ("ack" | "got")) => {
                            let id = f.next().unwrap_or_default().to_owned();
                            let at = f.next().and_then(|t| t.parse().ok()).unwrap_or(0);
                            if kind == "ack" {
                                Line::Ack(id, at)
                            } else {
                                Line::Got(id, at)
                            }
                        }
                        Some("done") => {
                            let mut num = || f.next().and_then(|t| t.parse().ok()).unwrap_or(0);
                            Line::Done {
                                load: index,
                                ok: num(),
                                failed: num(),
                                retries: num(),
                            }
                        }
                        _ => Line::Other(index, line),
                    };
                    if tx.send(parsed).is_err() {
                        return;
                    }
                }
            });
            loads.push(Load {
                child,
                listener: k,
                from,
                to,
            });
        }
    }
    (loads, rx)
}

/// Registered agents a listener holds now (`croncommander_agents_connected`);
/// `None` when the scrape fails or takes over 60 s (the listener is busy).
fn connected(l: &ListenerProcess) -> Option<u64> {
    let (status, body) = request_slow(l.admin_addr, "GET", "/metrics", None, 60)?;
    (status == 200).then(|| {
        body.lines()
            .filter(|line| line.starts_with("croncommander_agents_connected{"))
            .filter_map(|line| line.split_whitespace().last()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    })
}

/// One request with a chosen read timeout (a run for 100,000 hosts is one
/// large transaction and a large answer; a scrape during a connect storm
/// waits behind the key checks); `None` if it fails.
fn request_slow(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout_secs: u64,
) -> Option<(u16, String)> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(timeout_secs)))
        .ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Some((status, body))
}

/// What one side (PostgreSQL or SQLite) measured.
struct Figures {
    label: String,
    agents: usize,
    listeners: usize,
    loads: usize,
    keys_time: Duration,
    connect_time: Duration,
    connect_retries: usize,
    slowest_scrape: Duration,
    scrape_failures: usize,
    rss_start: Vec<u64>,
    rss_idle: Vec<u64>,
    held: Vec<u64>,
    jobs: usize,
    latencies: Vec<Duration>,
    jobs_time: Duration,
    fan_posted: Duration,
    /// From the POST's answer to the first report acknowledged.
    fan_first: Option<Duration>,
    fan_time: Duration,
    fan_stored: usize,
    fan_acked: usize,
    registered: usize,
    silent: usize,
    drops: Vec<String>,
}

/// What connecting every agent measured.
struct Connected {
    time: Duration,
    retries: usize,
    held: Vec<u64>,
    scrape_failures: usize,
    slowest_scrape: Duration,
}

/// Prints (and keeps in `drops`) what the load processes said beside
/// acknowledgements, until nothing is waiting.
fn note_drops(lines: &std_mpsc::Receiver<Line>, drops: &mut Vec<String>) {
    while let Ok(line) = lines.try_recv() {
        if let Line::Other(load, text) = line {
            eprintln!("  load {load}: {text}");
            drops.push(text);
        }
    }
}

/// Waits until every load process has made its agents' first connections
/// and the listeners hold all `agents` (scraping each every 500 ms).
fn wait_all_registered(
    label: &str,
    listeners: &[ListenerProcess],
    agents: usize,
    loads: &[Load],
    lines: &std_mpsc::Receiver<Line>,
    drops: &mut Vec<String>,
    connect_started: Instant,
) -> Connected {
    let mut done = 0;
    let mut retries = 0;
    let connect_limit = Duration::from_secs(env_or("CC_BENCH_CONNECT_TIMEOUT_SECS", 1200));
    let mut last_note = Instant::now();
    let mut held = vec![0; listeners.len()];
    let mut scrape_failures = 0;
    let mut slowest_scrape = Duration::ZERO;
    loop {
        while let Ok(line) = lines.try_recv() {
            match line {
                Line::Done {
                    load,
                    ok,
                    failed,
                    retries: r,
                } => {
                    done += 1;
                    retries += r;
                    eprintln!("  load {load}: {ok} connected, {failed} gave up, {r} retries");
                    assert_eq!(failed, 0, "load process {load}: {failed} agents gave up");
                }
                Line::Other(load, text) => {
                    eprintln!("  load {load}: {text}");
                    drops.push(text);
                }
                Line::Ack(..) | Line::Got(..) => {}
            }
        }
        for (k, l) in listeners.iter().enumerate() {
            let t = Instant::now();
            let c = connected(l);
            slowest_scrape = slowest_scrape.max(t.elapsed());
            match c {
                Some(n) => held[k] = n,
                None => scrape_failures += 1,
            }
        }
        let total: u64 = held.iter().sum();
        if done == loads.len() && total == agents as u64 {
            break;
        }
        if last_note.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "  {:.0} s: {total} of {agents} registered {held:?}, {done} load processes done, {scrape_failures} failed scrapes",
                connect_started.elapsed().as_secs_f64()
            );
            last_note = Instant::now();
        }
        assert!(
            connect_started.elapsed() < connect_limit,
            "{label}: not all agents registered within {connect_limit:?}: {total} of {agents} ({held:?})"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    Connected {
        time: connect_started.elapsed(),
        retries,
        held,
        scrape_failures,
        slowest_scrape,
    }
}

/// `jobs` jobs one at a time, each posted to the next listener after the
/// one holding the agent (`holder`), timed from just before the POST to
/// the `report_ack`: the sorted round trips and the time for all.
fn sequential_jobs(
    label: &str,
    listeners: &[ListenerProcess],
    agents: usize,
    jobs: usize,
    holder: &dyn Fn(usize) -> usize,
    lines: &std_mpsc::Receiver<Line>,
    drops: &mut Vec<String>,
) -> (Vec<Duration>, Duration) {
    let n = listeners.len();
    let mut latencies = Vec::with_capacity(jobs);
    let mut stages = Vec::with_capacity(jobs);
    let jobs_started = Instant::now();
    for i in 0..jobs {
        let host = (i * 7919) % agents;
        let post_to = &listeners[(holder(host) + 1) % n];
        let t0 = now_us();
        let job_id = post_to.post_job(
            &host_name(host),
            &json!({"command": "/bin/true", "timeout": 60}),
        );
        let answered = now_us().saturating_sub(t0);
        let mut got = 0;
        loop {
            match lines.recv_timeout(Duration::from_secs(30)) {
                Ok(Line::Got(id, at)) if id == job_id.as_str() => got = at.saturating_sub(t0),
                Ok(Line::Ack(id, at)) if id == job_id.as_str() => {
                    let acked = at.saturating_sub(t0);
                    latencies.push(Duration::from_micros(acked));
                    stages.push(Stages {
                        t0,
                        answered,
                        got,
                        acked,
                    });
                    break;
                }
                Ok(Line::Other(load, text)) => {
                    eprintln!("  load {load}: {text}");
                    drops.push(text);
                }
                Ok(_) => {}
                Err(e) => panic!(
                    "{label}: job {job_id} for {} not acknowledged within 30 s ({e})",
                    host_name(host)
                ),
            }
        }
    }
    let jobs_time = jobs_started.elapsed();
    stages::print(label, &mut stages);
    latencies.sort();
    (latencies, jobs_time)
}

/// What the fan-out measured.
struct FanOut {
    posted: Duration,
    first: Option<Duration>,
    time: Duration,
    stored: usize,
    acked: usize,
}

/// One run of `/bin/true` to every agent (all carry the tag "bench"),
/// posted to the first listener; done when the database holds every report
/// (a report whose ack was lost with its connection is stored all the
/// same), acknowledgements counted beside it.
fn fan_out(
    label: &str,
    listeners: &[ListenerProcess],
    agents: usize,
    lines: &std_mpsc::Receiver<Line>,
    drops: &mut Vec<String>,
    stored: &dyn Fn(&str) -> usize,
) -> FanOut {
    let fan_started = Instant::now();
    let fan_t0 = now_us();
    let (status, body) = request_slow(
        listeners[0].admin_addr,
        "POST",
        "/api/v1/runs",
        Some(&json!({"tags": ["bench"], "command": "/bin/true", "timeout": 600})),
        900,
    )
    .expect("POST /api/v1/runs: no answer within 900 s");
    assert_eq!(status, 202, "{body}");
    let posted = fan_started.elapsed();
    let answered_us = now_us();
    let mut first_at = u64::MAX;
    let answer: Value = serde_json::from_str(&body).unwrap();
    let run_id = answer["runId"].as_str().unwrap().to_owned();
    let mut wanted: HashSet<String> = answer["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| job_id(&j["jobId"]).as_str().to_owned())
        .collect();
    assert_eq!(wanted.len(), agents, "the run did not reach every agent");
    let fan_limit = Duration::from_secs(env_or("CC_BENCH_FANOUT_TIMEOUT_SECS", 900));
    let (mut last_at, mut last_note, mut last_poll) = (0, Instant::now(), Instant::now());
    let mut last_ack = Instant::now();
    let acks_wanted = wanted.len();
    let time = loop {
        match lines.recv_timeout(Duration::from_millis(100)) {
            Ok(Line::Ack(id, at)) => {
                if wanted.remove(&id) {
                    last_at = last_at.max(at);
                    first_at = first_at.min(at);
                    last_ack = Instant::now();
                }
            }
            Ok(Line::Other(load, text)) => {
                eprintln!("  load {load}: {text}");
                drops.push(text);
            }
            Ok(_) | Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            Err(e) => panic!("{label}: the load processes went away: {e}"),
        }
        if wanted.is_empty() {
            break Duration::from_micros(last_at.saturating_sub(fan_t0));
        }
        // The database is counted only when acknowledgements stall (some
        // were lost with their connections) or every 5 s: counting a
        // run's reports is a join over all of them, and twice a second it
        // cost the database a fifth of a core while it stored them.
        let stalled = last_ack.elapsed() > Duration::from_millis(500);
        let poll_every = Duration::from_millis(if stalled { 500 } else { 5000 });
        if last_poll.elapsed() > poll_every {
            last_poll = Instant::now();
            let t = fan_started.elapsed();
            if stored(&run_id) == agents {
                break t;
            }
        }
        if last_note.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "  {:.0} s: {} of {agents} acknowledged",
                fan_started.elapsed().as_secs_f64(),
                agents - wanted.len()
            );
            last_note = Instant::now();
        }
        assert!(
            fan_started.elapsed() < fan_limit,
            "{label}: fan-out: {} of {agents} reports not acknowledged within {fan_limit:?}",
            wanted.len()
        );
    };
    // An ack stamped before the answer arrived counts as 0.
    let first =
        (first_at != u64::MAX).then(|| Duration::from_micros(first_at - answered_us.min(first_at)));
    FanOut {
        posted,
        first,
        time,
        stored: stored(&run_id),
        acked: acks_wanted - wanted.len(),
    }
}

/// Connects `agents` agents (keys in `keys_file`, hosts `sim-000000…`)
/// to `listeners`, then measures. `stored` counts the run's reports in
/// the database (checked against the acknowledgements).
fn measure(
    label: &str,
    listeners: &[ListenerProcess],
    agents: usize,
    keys_file: &Path,
    keys_time: Duration,
    stored: &dyn Fn(&str) -> usize,
    around: &dyn Fn(&str, bool),
) -> Figures {
    let jobs = env_or("CC_BENCH_JOBS", 1_000) as usize;
    let heartbeat = Duration::from_secs(env_or("CC_BENCH_HEARTBEAT_SECS", 30));
    let idle = Duration::from_secs(env_or("CC_BENCH_IDLE_SECS", 2 * heartbeat.as_secs()));
    let n = listeners.len();
    std::thread::sleep(Duration::from_millis(500));
    let rss = || -> Vec<u64> {
        listeners
            .iter()
            .map(|l| proc_status_kib(l.child.id(), "VmRSS"))
            .collect()
    };
    let rss_start = rss();
    let urls: Vec<String> = listeners.iter().map(ListenerProcess::ws_url).collect();

    eprintln!("{label}: connecting {agents} agents to {n} listener(s)");
    let connect_started = Instant::now();
    let (loads, lines) = start_loads(&urls, agents, keys_file, heartbeat);
    let holder = |host: usize| {
        loads
            .iter()
            .find(|l| (l.from..l.to).contains(&host))
            .unwrap()
            .listener
    };
    let mut drops = Vec::new();
    let c = wait_all_registered(
        label,
        listeners,
        agents,
        &loads,
        &lines,
        &mut drops,
        connect_started,
    );
    eprintln!(
        "  all {agents} registered in {:.1} s; idle for {} s",
        c.time.as_secs_f64(),
        idle.as_secs()
    );

    // Idle (heartbeating only).
    std::thread::sleep(idle);
    let rss_idle = rss();
    let held = &c.held;
    eprintln!("  FIGURE {label} RSS start {rss_start:?} idle {rss_idle:?} held {held:?}");
    let still: u64 = listeners
        .iter()
        .map(|l| connected(l).expect("metrics after the idle time"))
        .sum();
    assert_eq!(still, agents as u64, "{label}: agents were lost while idle");

    note_drops(&lines, &mut drops);
    eprintln!("  {jobs} sequential jobs");
    around("sequential jobs", true);
    let (latencies, jobs_time) =
        sequential_jobs(label, listeners, agents, jobs, &holder, &lines, &mut drops);
    around("sequential jobs", false);
    eprintln!(
        "  FIGURE {label} round trip p50 {:.2} p90 {:.2} p99 {:.2} max {:.2} ms, {:.1} s",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.9)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap()),
        jobs_time.as_secs_f64()
    );

    note_drops(&lines, &mut drops);
    eprintln!("  fan-out to {agents}");
    around("fan-out", true);
    let fan = fan_out(label, listeners, agents, &lines, &mut drops, stored);
    around("fan-out", false);
    eprintln!(
        "  FIGURE {label} fan-out: POST {:.2} s, first ack {:?} after the answer, all stored {:.2} s, {} acked, {} stored",
        fan.posted.as_secs_f64(),
        fan.first,
        fan.time.as_secs_f64(),
        fan.acked,
        fan.stored
    );
    assert_eq!(fan.stored, agents, "{label}: not every report stored");
    let load_count = loads.len();
    drop(loads);
    let (registered, silent) = log_counts(listeners);
    Figures {
        label: label.to_owned(),
        agents,
        listeners: n,
        loads: load_count,
        keys_time,
        connect_time: c.time,
        connect_retries: c.retries,
        slowest_scrape: c.slowest_scrape,
        scrape_failures: c.scrape_failures,
        rss_start,
        rss_idle,
        held: c.held,
        jobs,
        latencies,
        jobs_time,
        fan_posted: fan.posted,
        fan_first: fan.first,
        fan_time: fan.time,
        fan_stored: fan.stored,
        fan_acked: fan.acked,
        registered,
        silent,
        drops,
    }
}

/// Registrations, and connections closed as silent, in the listeners' logs.
fn log_counts(listeners: &[ListenerProcess]) -> (usize, usize) {
    let (mut registered, mut silent) = (0, 0);
    for l in listeners {
        let log = l.log();
        registered += log.matches("agent registered").count();
        silent += log
            .matches("closing: silent for three heartbeat intervals")
            .count();
    }
    (registered, silent)
}

/// Keys for `agents` hosts in one transaction; written to `file` as
/// `HOST KEY` lines.
fn make_keys(store: &Store, agents: usize, file: &Path) -> Duration {
    let hosts: Vec<String> = (0..agents).map(host_name).collect();
    let specs: Vec<(&str, Option<&str>)> = hosts
        .iter()
        .map(|h| (h.as_str(), Some(h.as_str())))
        .collect();
    let t = Instant::now();
    let keys = store.add_keys(&specs, 0).unwrap();
    let took = t.elapsed();
    let mut text = String::with_capacity(agents * 64);
    for (h, k) in hosts.iter().zip(keys) {
        text.push_str(h);
        text.push(' ');
        text.push_str(&k);
        text.push('\n');
    }
    std::fs::write(file, text).unwrap();
    took
}

fn listener_config(per_listener: usize, heartbeat_secs: u64) -> String {
    // Every simulated agent connects from 127.0.0.1: one source.
    // The other budgets are the defaults: an agent leaves the budget of
    // unregistered connections (2,048) once it has sent a valid
    // `register`, so a storm of every agent at once finishes even while
    // registrations wait on the fleet-wide write lock.
    let mut config = format!(
        "heartbeat_interval_secs = {heartbeat_secs}\nmax_connections = {}\nmax_unauthenticated_per_source = 20000\n",
        per_listener + 100
    );
    if let Ok(ms) = std::env::var("CC_BENCH_SWEEP_MS") {
        config.push_str(&format!("sweep_interval_ms = {ms}\n"));
    }
    config
}

/// `agents` agents over `n` listeners sharing one PostgreSQL database.
fn postgres_side(label: &str, agents: usize, n: usize) -> Option<Figures> {
    let heartbeat = env_or("CC_BENCH_HEARTBEAT_SECS", 30);
    let cluster = Cluster::start()?;
    let url = cluster.create_db("fleet");
    let dir = TempDir::new("bench-fleet-pg");
    let keys_file = dir.path().join("keys.txt");
    // The PostgreSQL client blocks: no async runtime in this process.
    let keys_time = {
        let store = Store::open_postgres(&url).unwrap();
        make_keys(&store, agents, &keys_file)
    };
    let config = listener_config(agents.div_ceil(n), heartbeat);
    let listeners: Vec<ListenerProcess> = (0..n)
        .map(|k| {
            let d = dir.path().join(format!("l{k}"));
            std::fs::create_dir_all(&d).unwrap();
            ListenerProcess::start_shared(bin(), &d, &url, &config)
        })
        .collect();
    let stored = |run: &str| -> usize {
        cluster
            .psql(
                "fleet",
                &format!(
                    "SELECT count(*) FROM jobs j JOIN reports r ON r.id = j.report_id \
                     WHERE j.run_id = '{run}' AND j.status = 'done'"
                ),
            )
            .parse()
            .unwrap()
    };
    // With `CC_BENCH_PG_STATEMENTS=N` (and the server started with
    // `CC_PG_EXTRA_OPTS="-c shared_preload_libraries=pg_stat_statements"`):
    // the N statements each phase (sequential jobs, fan-out) spent most
    // time in.
    let top = env_or("CC_BENCH_PG_STATEMENTS", 0);
    let statements = |phase: &str, start: bool| print::statements(&cluster, top, phase, start);
    let f = measure(
        label,
        &listeners,
        agents,
        &keys_file,
        keys_time,
        &stored,
        &statements,
    );
    for (k, mut l) in listeners.into_iter().enumerate() {
        if !l.terminate().is_some_and(|s| s.success()) {
            eprintln!("listener {k} did not stop cleanly");
        }
    }
    println!(
        "  PostgreSQL database size after the run: {}",
        cluster.psql("fleet", "SELECT pg_size_pretty(pg_database_size('fleet'))")
    );
    Some(f)
}

fn sqlite_side() -> Figures {
    let agents = env_or("CC_BENCH_SQLITE_AGENTS", 19_000) as usize;
    let heartbeat = env_or("CC_BENCH_HEARTBEAT_SECS", 30);
    let dir = TempDir::new("bench-fleet-sqlite");
    let keys_file = dir.path().join("keys.txt");
    let keys_time = {
        let store = Store::open(&dir.path().join("listener.db")).unwrap();
        make_keys(&store, agents, &keys_file)
    };
    let listener = ListenerProcess::start(bin(), dir.path(), &listener_config(agents, heartbeat));
    let stored = |run: &str| -> usize {
        let out = Command::new("sqlite3")
            .arg(dir.path().join("listener.db"))
            .arg(format!(
                "SELECT count(*) FROM jobs j JOIN reports r ON r.id = j.report_id \
                 WHERE j.run_id = '{run}' AND j.status = 'done'"
            ))
            .output();
        match out {
            Ok(o) if o.status.success() => {
                String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
            }
            // No sqlite3 tool: the acknowledgements (sent after each
            // commit) are the count.
            _ => agents,
        }
    };
    let listeners = [listener];
    let f = measure(
        "sqlite",
        &listeners,
        agents,
        &keys_file,
        keys_time,
        &stored,
        &|_, _| {},
    );
    let [mut listener] = listeners;
    if !listener.terminate().is_some_and(|s| s.success()) {
        eprintln!("the listener did not stop cleanly");
    }
    f
}

fn main() {
    if std::env::var_os("CC_FLEET_ROLE").is_some_and(|r| r == "load") {
        load::load_main();
        return;
    }
    let only = std::env::var("CC_BENCH_ONLY").unwrap_or_default();
    let started = Instant::now();
    let sqlite_agents = env_or("CC_BENCH_SQLITE_AGENTS", 19_000) as usize;
    let (agents, n) = (
        env_or("CC_BENCH_AGENTS", 100_000),
        env_or("CC_BENCH_LISTENERS", 6),
    );
    // postgres-1: the SQLite side's fleet on one PostgreSQL listener.
    let sides = [
        ("postgres", agents as usize, n.max(1) as usize),
        ("postgres-1", sqlite_agents, 1),
    ];
    for (label, agents, n) in sides {
        if only.is_empty() || only == label {
            let Some(f) = postgres_side(label, agents, n) else {
                println!("fleet_multi [{label}]: skipped: no PostgreSQL server installed");
                continue;
            };
            print::print(&f);
        }
    }
    if only.is_empty() || only == "sqlite" {
        print::print(&sqlite_side());
    }
    println!(
        "fleet_multi: whole run {:.0} s",
        started.elapsed().as_secs_f64()
    );
}
