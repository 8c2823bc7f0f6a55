//! Load: a fan-out-sized backlog for one agent, and 1,000 simulated agents
//! beside 5 real ones taking 10,000 jobs.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cc_e2e::agent::AgentProcess;
use cc_e2e::listener::{TOKEN, job_id};
use cc_e2e::{http, wait_for};
use serde_json::json;

use crate::common::{Rig, T, rig};

/// Issue "An agent restart loses no job": a fan-out-sized backlog lives in
/// the listener's store, not in the agent's memory.
#[test]
fn load_10000_jobs_queued_for_one_agent() {
    let Some(r) = rig("load", "load_2_backlog_for_one_agent", "") else {
        return;
    };
    let host = "rel-backlog.test";
    let agent = r.agent(host, "max_concurrent_jobs = 4\n");
    // Idle as in service: it has run jobs (its threads and buffers exist)
    // and has none now.
    let warm: Vec<String> = (0..8)
        .map(|_| r.post(host, &json!({"command": "/bin/true"})))
        .collect();
    assert_eq!(r.settle(&warm, T), 8);
    std::thread::sleep(Duration::from_secs(2));
    let idle = agent.rss_kib();
    let admin = r.listener.admin_addr;
    let hosts = vec![host.to_owned(); 10_000];
    std::thread::scope(|sc| {
        for chunk in hosts.chunks(2500) {
            sc.spawn(move || {
                for h in chunk {
                    let body = json!({"command": "/bin/sleep", "args": ["60"], "timeout": 120})
                        .to_string();
                    let resp = http::request(
                        admin,
                        "POST",
                        &format!("/api/v1/agents/{h}/jobs"),
                        Some(TOKEN),
                        Some(body.as_bytes()),
                    );
                    assert_eq!(resp.status, 202, "{}", resp.body);
                }
            });
        }
    });
    std::thread::sleep(Duration::from_secs(3));
    let loaded = agent.rss_kib();
    let running = std::fs::read_dir(agent.state().join("jobs")).map_or(0, Iterator::count) - 8;
    let agents = r.listener.get("/api/v1/agents").json();
    let connected = agents.as_array().is_some_and(|a| {
        a.iter()
            .any(|x| x["hostname"] == host && x["connected"] == true)
    });
    r.rec.row(
        "agent",
        "10,000 `sleep 60` jobs posted for one agent (max_concurrent_jobs = 4, so its window is 8)",
        "the backlog stays in the listener's store: the agent's RSS within 1 MiB of idle (after 8 jobs, none running); 4 jobs started",
        &format!(
            "agent RSS {idle} KiB idle, {loaded} KiB with the backlog ({:+} KiB); {running} jobs started; connected: {connected}",
            loaded as i64 - idle as i64
        ),
        loaded <= idle + 1024 && running == 4 && connected,
    );
}

#[test]
fn load_1000_simulated_and_5_real_agents_10000_jobs() {
    let Some(r) = rig(
        "load",
        "load_1_agents_and_jobs",
        // Every simulated agent connects from 127.0.0.1: one source.
        "max_connections = 2000\nmax_unauthenticated_per_source = 4096\nheartbeat_interval_secs = 10\nping_interval_secs = 10\n",
    ) else {
        return;
    };
    let sims: Vec<String> = (0..1000).map(|i| format!("sim-{i:04}.test")).collect();
    let (runtime, stats) = simulated_agents(&r, &sims);
    let reals: Vec<String> = (0..5).map(|i| format!("rel-real-{i}.test")).collect();
    let agents: Vec<AgentProcess> = reals
        .iter()
        .map(|h| r.agent(h, "max_concurrent_jobs = 4\n"))
        .collect();
    let connected = wait_for(Duration::from_secs(120), "1,005 agents connected", || {
        let a = r.listener.get("/api/v1/agents").json();
        let n = a
            .as_array()?
            .iter()
            .filter(|x| x["connected"] == true)
            .count();
        (n == 1005).then_some(n)
    });
    // Handshakes refused while 1,000 connect at once are retried; what
    // counts is that none drops once connected.
    let setup_retries = stats.reconnects.load(Ordering::Relaxed);
    let setup_errors = stats.errors.lock().unwrap().clone();
    if setup_retries > 0 {
        for l in r
            .listener
            .log()
            .lines()
            .filter(|l| {
                l.contains("WARN")
                    || l.contains("ERROR")
                    || l.contains("ended")
                    || l.contains("timed out")
            })
            .take(20)
        {
            eprintln!("listener: {l}");
        }
    }
    // 10,000 jobs: every tenth to a real agent (1,000 in all), the rest
    // spread over the simulated ones; posted from 4 threads.
    let started = Instant::now();
    let plan: Vec<String> = (0..10_000usize)
        .map(|i| {
            if i % 10 == 0 {
                reals[(i / 10) % 5].clone()
            } else {
                sims[(i * 7919) % 1000].clone()
            }
        })
        .collect();
    let ids = post_all(r.listener.admin_addr, &plan);
    let posted = started.elapsed();
    // Every job settled, then counted per host from the stored reports.
    let done = settle_all(&r, &ids);
    let elapsed = started.elapsed();
    let (missing, twice) = count_reports(&r, &ids);
    let rss = cc_e2e::agent::proc_status_kib(r.listener.child.id(), "VmRSS:");
    r.rec.row(
        "listener",
        "1,000 simulated agents beside 5 real agents (max_concurrent_jobs = 4); 10,000 /bin/true jobs posted from 4 threads (1,000 to the real agents)",
        "every job done; one stored report per job",
        &format!(
            "{connected} agents connected; posted in {:.1} s; {done}/10000 done in {:.1} s; {missing} missing, {twice} stored twice; listener RSS {} MiB",
            posted.as_secs_f64(),
            elapsed.as_secs_f64(),
            rss / 1024
        ),
        done == 10_000 && missing == 0 && twice == 0,
    );
    let reconnects = stats.reconnects.load(Ordering::Relaxed) - setup_retries;
    let real_connects: Vec<usize> = agents
        .iter()
        .map(|a| a.log().matches("connected and registered").count())
        .collect();
    r.rec.row(
        "listener",
        "connections while 1,005 agents connect (keys added with `keys add` meanwhile) and during the load",
        "no connection dropped",
        &format!(
            "simulated agents: {setup_retries} connections ended while connecting {setup_errors:?}, {reconnects} during the load; real agents' connections {real_connects:?}"
        ),
        setup_retries == 0 && reconnects == 0 && real_connects.iter().all(|c| *c == 1),
    );
    drop(runtime);
}

/// 1,000 simulated agents (keys added straight to the listener's
/// database), connecting at most 128 at a time, on a runtime of their own.
fn simulated_agents(
    r: &Rig,
    sims: &[String],
) -> (tokio::runtime::Runtime, Arc<cc_e2e::sim::SimStats>) {
    let keys = {
        let store =
            cc_listener::store::Store::open(&r.dir.path().join("listener/listener.db")).unwrap();
        let specs: Vec<(&str, Option<&str>)> = sims
            .iter()
            .map(|h| (h.as_str(), Some(h.as_str())))
            .collect();
        store.add_keys(&specs, 0).unwrap()
    };
    let stats = Arc::new(cc_e2e::sim::SimStats::default());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let gate = Arc::new(tokio::sync::Semaphore::new(128));
    let url = r.listener.ws_url();
    for (host, key) in sims.iter().cloned().zip(keys) {
        runtime.spawn(cc_e2e::sim::agent(
            url.clone(),
            key,
            host,
            Duration::from_secs(10),
            Arc::clone(&stats),
            Arc::clone(&gate),
        ));
    }
    (runtime, stats)
}

/// Posts a job for each host of `plan` from 4 threads; returns (host, job
/// id) pairs.
fn post_all(admin: std::net::SocketAddr, plan: &[String]) -> Vec<(String, String)> {
    std::thread::scope(|sc| {
        let handles: Vec<_> = plan
            .chunks(2500)
            .map(|chunk| {
                sc.spawn(move || {
                    chunk
                        .iter()
                        .map(|host| {
                            let body = json!({"command": "/bin/true", "timeout": 60}).to_string();
                            let resp = http::request(
                                admin,
                                "POST",
                                &format!("/api/v1/agents/{host}/jobs"),
                                Some(TOKEN),
                                Some(body.as_bytes()),
                            );
                            assert_eq!(resp.status, 202, "{}", resp.body);
                            (host.clone(), job_id(&resp.json()["jobId"]).to_string())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

/// Settles every job (from 4 threads); returns how many are done.
fn settle_all(r: &Rig, ids: &[(String, String)]) -> usize {
    let all: Vec<String> = ids.iter().map(|(_, id)| id.clone()).collect();
    std::thread::scope(|sc| {
        all.chunks(2500)
            .map(|c| sc.spawn(move || r.settle(c, Duration::from_secs(300))))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum()
    })
}

/// Counted per host from the stored reports: how many jobs have none, and
/// how many more than one.
fn count_reports(r: &Rig, ids: &[(String, String)]) -> (usize, usize) {
    let mut per: HashMap<String, usize> = HashMap::new();
    let hosts: HashSet<&String> = ids.iter().map(|(h, _)| h).collect();
    for h in hosts {
        per.extend(r.reports_per_job(h));
    }
    let missing = ids.iter().filter(|(_, i)| !per.contains_key(i)).count();
    let twice = ids
        .iter()
        .filter(|(_, i)| per.get(i).is_some_and(|n| *n > 1))
        .count();
    (missing, twice)
}
