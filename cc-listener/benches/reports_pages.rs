//! Memory under report reads: 100,000 stored reports (2 KiB of output
//! each, about 230 MB of reports) in the real release `cc-listener`'s
//! database, and 3 operator clients paging through all of them at once
//! (`GET /api/v1/reports?limit=1000`, following `X-CC-Next-Before`).
//!
//! Prints the listener's RSS before, its peak (VmHWM) during, their ratio,
//! and the time each client took. Run:
//!
//!     cargo bench -p cc-listener --bench reports_pages
//!
//! `CC_BENCH_REPORTS` (100000), `CC_BENCH_OUTPUT_BYTES` (2048) and
//! `CC_BENCH_CLIENTS` (3) change the defaults.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a failed step should stop it

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use cc_listener::store::Store;
use cc_testkit::agent::proc_status_kib;
use cc_testkit::listener::{ListenerProcess, TOKEN};
use cc_testkit::{TempDir, env_or};

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let reports = u32::try_from(env_or("CC_BENCH_REPORTS", 100_000)).unwrap();
    let output = usize::try_from(env_or("CC_BENCH_OUTPUT_BYTES", 2048)).unwrap();
    let clients = env_or("CC_BENCH_CLIENTS", 3);
    let dir = TempDir::new("bench-pages");
    let filled = Instant::now();
    Store::open(&dir.path().join("listener.db"))
        .unwrap()
        .insert_reports_for_test("bench.test", reports, &"x".repeat(output))
        .unwrap();
    let db_mib = std::fs::metadata(dir.path().join("listener.db")).map_or(0, |m| m.len()) >> 20;
    println!(
        "stored {reports} reports of {output} output bytes: database {db_mib} MiB, in {:.1} s",
        filled.elapsed().as_secs_f64()
    );
    let listener = ListenerProcess::start(common::bin(), dir.path(), "");
    let pid = listener.child.id();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let before = proc_status_kib(pid, "VmRSS");
    let addr = listener.admin_addr;
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            std::thread::spawn(move || {
                let t = Instant::now();
                let (mut rows, mut pages, mut bytes) = (0usize, 0usize, 0usize);
                let mut next: Option<String> = None;
                loop {
                    let path = next.as_ref().map_or_else(
                        || "/api/v1/reports?limit=1000".to_owned(),
                        |c| format!("/api/v1/reports?limit=1000&before={c}"),
                    );
                    let r = cc_testkit::http::request(addr, "GET", &path, Some(TOKEN), None);
                    assert_eq!(r.status, 200, "{}", r.body);
                    bytes += r.body.len();
                    rows += r.json().as_array().unwrap().len();
                    pages += 1;
                    next = r.header("x-cc-next-before").map(ToOwned::to_owned);
                    if next.is_none() {
                        return (rows, pages, bytes, t.elapsed());
                    }
                }
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let all = started.elapsed();
    let peak = proc_status_kib(pid, "VmHWM");
    for (i, (rows, pages, bytes, took)) in results.iter().enumerate() {
        assert_eq!(*rows, reports as usize, "client {i} reached every report");
        println!(
            "client {i}: {rows} reports in {pages} pages, {} MiB, {:.1} s",
            bytes >> 20,
            took.as_secs_f64()
        );
    }
    println!(
        "listener RSS before {:.1} MiB, peak {:.1} MiB while {clients} clients paged through {reports} reports ({:.2}x); all done in {:.1} s",
        before as f64 / 1024.0,
        peak as f64 / 1024.0,
        peak as f64 / before.max(1) as f64,
        all.as_secs_f64()
    );
}
