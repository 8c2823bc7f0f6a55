//! The console's pages with history: the fleet page with 10,000 agents and
//! the runs page with 100,000 stored reports (1,000 runs of 100 jobs, each
//! done with its report), rendered by the real release `cc-listener`.
//!
//! Prints, per page, the median and worst of 21 requests after 3 warm-up
//! ones, timed from the request to the last byte over loopback (the
//! server's time plus a loopback round trip), and the page's size; beside
//! them, in the same run, `GET /api/v1/healthz` (the floor: a request that
//! does nothing). Run:
//!
//!     cargo bench -p cc-listener --bench console_pages
//!
//! `CC_BENCH_AGENTS` (10000), `CC_BENCH_RUNS` (1000) and
//! `CC_BENCH_JOBS_PER_RUN` (100) change the fixture.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a failed step should stop it

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use cc_listener::store::Store;
use cc_testkit::listener::{ListenerProcess, TOKEN};
use cc_testkit::{TempDir, env_or};

fn get(addr: SocketAddr, path: &str, cookie: &str) -> (u16, usize, Duration) {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nCookie: {cookie}\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let took = t.elapsed();
    let text = String::from_utf8_lossy(&out);
    let status = text[9..12].parse().unwrap();
    (status, out.len(), took)
}

fn login(addr: SocketAddr) -> String {
    let body = format!("token={TOKEN}");
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /ui/login HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned()
}

fn main() {
    let agents = u32::try_from(env_or("CC_BENCH_AGENTS", 10_000)).unwrap();
    let runs = u32::try_from(env_or("CC_BENCH_RUNS", 1_000)).unwrap();
    let per_run = u32::try_from(env_or("CC_BENCH_JOBS_PER_RUN", 100)).unwrap();
    let dir = TempDir::new("bench-console");
    let t = Instant::now();
    let store = Store::open(&dir.path().join("listener.db")).unwrap();
    store.insert_fleet_for_test(agents, runs, per_run).unwrap();
    println!(
        "fixture: {agents} agents, {runs} runs of {per_run} jobs ({} reports) in {:.1} s",
        store.count_reports().unwrap(),
        t.elapsed().as_secs_f64()
    );
    drop(store);
    let listener = ListenerProcess::start(common::bin(), dir.path(), "");
    let addr = listener.admin_addr;
    let cookie = login(addr);
    println!(
        "{:<26} {:>10} {:>10} {:>12}",
        "page", "median", "worst", "bytes"
    );
    for path in [
        "/api/v1/healthz",
        "/ui/",
        "/ui/runs",
        "/ui/runs/run-999",
        "/ui/hosts/fleet-7.test",
    ] {
        for _ in 0..3 {
            get(addr, path, &cookie);
        }
        let mut times = Vec::new();
        let mut size = 0;
        for _ in 0..21 {
            let (status, bytes, took) = get(addr, path, &cookie);
            assert_eq!(status, 200, "{path}");
            size = bytes;
            times.push(took);
        }
        times.sort();
        println!(
            "{:<26} {:>8.1} ms {:>7.1} ms {:>12}",
            path,
            times[10].as_secs_f64() * 1000.0,
            times[20].as_secs_f64() * 1000.0,
            size
        );
    }
    println!(
        "target: the fleet page (10,000 agents) and the runs page (100,000 reports) under 200 ms"
    );
}
