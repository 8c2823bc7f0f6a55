//! Missed-run tracking at fleet size (issue #26): 100,000 simulated hosts
//! × 5 cron entries in the listener's tracker (`schedules::Tracker`), fed
//! as the listener's task feeds it — every host's list once (the resync),
//! then each second the reports that arrived in it and a tick — over a few
//! simulated minutes, on a simulated clock (so a minute takes only the CPU
//! it costs).
//!
//! Entries per host: `* * * * *` (a fifth of all entries fire every
//! minute), and four hourly entries at spread minutes, one of them with
//! `jitter=300` on every other host. 1 % of runs send no report (missed);
//! the others report after their jitter offset and a run of 0–5 s.
//!
//! Measured: the tracker's CPU per simulated minute (time inside its
//! calls: reports and ticks), the RSS it adds and bytes per entry, the
//! delay from each miss's deadline (due + offset + grace) to the tick
//! that returns it (ticks a second apart as in the listener, 537 ms out of
//! phase with the whole-second deadlines, plus that tick's own CPU)
//! p50/p99/max, and the time to
//! record each tick's misses in a SQLite store (`Store::record_missed`).
//!
//!     cargo bench -p cc-listener --bench schedules
//!
//! Knobs: `CC_BENCH_HOSTS` (100000), `CC_BENCH_MINUTES` (5).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a failed step should stop it

use std::time::{Duration, Instant};

use cc_listener::schedules::Tracker;
use cc_listener::store::Store;
use cc_proto::wire::{CronEntry, jitter_offset};
use cc_testkit::agent::proc_status_kib;
use cc_testkit::stats::percentile;
use cc_testkit::{TempDir, env_or};

const MIN: i64 = 60_000;

/// Where in each second the simulated ticks fall: deadlines are whole
/// seconds, and the listener's ticker is not in phase with them.
const PHASE: i64 = 537;

fn host_name(i: u32) -> String {
    format!("host-{i:06}.fleet.test")
}

/// Host `i`'s hourly entries' minutes.
fn minutes(i: u32) -> [u32; 4] {
    [1, 2, 3, 4].map(|k| (i.wrapping_mul(7) + k * 13) % 60)
}

fn entries(i: u32) -> Vec<CronEntry> {
    let mut v = vec![CronEntry {
        id: "every-minute".into(),
        schedule: "* * * * *".into(),
        command: "/usr/local/bin/heartbeat".into(),
        ..Default::default()
    }];
    for (k, m) in minutes(i).into_iter().enumerate() {
        v.push(CronEntry {
            id: format!("hourly-{k}"),
            schedule: format!("{m} * * * *"),
            command: "/usr/local/bin/job --hourly".into(),
            jitter: (k == 0 && i % 2 == 0).then_some(300),
            ..Default::default()
        });
    }
    v
}

/// A small deterministic mix (splitmix64).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn rss_kib() -> u64 {
    proc_status_kib(std::process::id(), "VmRSS")
}

fn main() {
    let hosts = u32::try_from(env_or("CC_BENCH_HOSTS", 100_000)).unwrap();
    let sim_minutes = env_or("CC_BENCH_MINUTES", 5) as i64;
    // Simulated start: a little after a minute boundary, mid-day.
    let t0: i64 = 1_796_637_600_000 + 30_000; // 2026-12-07T10:00:30Z
    let names: Vec<String> = (0..hosts).map(host_name).collect();
    let lists: Vec<Vec<CronEntry>> = (0..hosts).map(entries).collect();

    let rss_before = rss_kib();
    let mut tracker = Tracker::new();
    let load = Instant::now();
    for (name, list) in names.iter().zip(&lists) {
        tracker.set_host(name, Some("UTC"), list, t0);
    }
    let load_took = load.elapsed();
    let rss_after = rss_kib();
    let tracked = tracker.entries();
    let added = (rss_after.saturating_sub(rss_before)) * 1024;
    println!(
        "tracker: {hosts} hosts, {tracked} entries loaded in {:.2} s; RSS +{} MiB ({} bytes/entry, heap {} items)",
        load_took.as_secs_f64(),
        added >> 20,
        added / tracked.max(1) as u64,
        tracker.heap_len()
    );

    // Reports by the simulated second they arrive in: (host, entry, fire).
    let dir = TempDir::new("bench-schedules");
    let store = Store::open(&dir.path().join("listener.db")).unwrap();
    let mut in_tracker = Duration::ZERO;
    let mut in_store = Duration::ZERO;
    let mut delays: Vec<Duration> = Vec::new();
    let mut reports = 0u64;
    let mut expected_missed = 0u64;
    let mut missed_total = 0u64;
    let first_minute = t0.div_euclid(MIN) + 1;
    let end = (first_minute + sim_minutes) * MIN;
    let mut arrivals: std::collections::BTreeMap<i64, Vec<(u32, u8, i64)>> = Default::default();
    for minute in first_minute..first_minute + sim_minutes {
        let due = minute * MIN;
        let m = (minute % 60) as u32;
        for i in 0..hosts {
            let mut runs: Vec<u8> = vec![0];
            for (k, hm) in minutes(i).into_iter().enumerate() {
                if hm == m {
                    runs.push(k as u8 + 1);
                }
            }
            for e in runs {
                let r = mix(u64::from(i) << 32 | (minute as u64) << 3 | u64::from(e));
                if r % 100 == 0 {
                    expected_missed += 1;
                    continue;
                }
                let jitter = if e == 1 && i % 2 == 0 { 300 } else { 0 };
                let offset = jitter_offset(
                    &names[i as usize],
                    &lists[i as usize][e as usize].id,
                    jitter,
                );
                let arrive = due + offset as i64 * 1000 + (r >> 8) as i64 % 5000;
                arrivals
                    .entry(arrive.div_euclid(1000) * 1000 + 1000 + PHASE)
                    .or_default()
                    .push((i, e, due + 200));
            }
        }
    }
    let mut now = t0 + PHASE;
    while now < end + 12 * MIN {
        now += 1000;
        if let Some(batch) = arrivals.remove(&now) {
            let took = Instant::now();
            for (i, e, fire) in batch {
                let id = &lists[i as usize][e as usize].id;
                tracker.report(&names[i as usize], id, fire);
                reports += 1;
            }
            in_tracker += took.elapsed();
        }
        let took = Instant::now();
        let missed = tracker.tick(now);
        let tick_cpu = took.elapsed();
        in_tracker += tick_cpu;
        // Only runs due inside the simulated minutes count (later ones had
        // no reports simulated).
        let missed: Vec<_> = missed.into_iter().filter(|m| m.due_ms < end).collect();
        for m in &missed {
            delays.push(Duration::from_millis((now - m.deadline_ms) as u64) + tick_cpu);
        }
        missed_total += missed.len() as u64;
        if !missed.is_empty() {
            let took = Instant::now();
            store.record_missed(&missed, now).unwrap();
            in_store += took.elapsed();
        }
    }
    delays.sort();
    println!(
        "{sim_minutes} simulated minutes: {reports} reports fed, {missed_total} runs missed (expected {expected_missed})"
    );
    println!(
        "tracker CPU per minute: {:.1} ms (reports + ticks); recording misses in SQLite: {:.1} ms per minute",
        in_tracker.as_secs_f64() * 1000.0 / sim_minutes as f64,
        in_store.as_secs_f64() * 1000.0 / sim_minutes as f64
    );
    if !delays.is_empty() {
        println!(
            "delay from due + offset + grace to missed: p50 {} ms, p99 {} ms, max {} ms",
            percentile(&delays, 0.5).as_millis(),
            percentile(&delays, 0.99).as_millis(),
            delays.last().unwrap().as_millis()
        );
    }
    println!("RSS at the end: {} MiB", rss_kib() >> 10);
    assert_eq!(
        missed_total, expected_missed,
        "every dropped run, and only those"
    );
}
