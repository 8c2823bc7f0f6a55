//! The figures of one side of `fleet_multi`, printed.

use cc_testkit::stats::percentile;

use super::{Figures, ms};

pub(super) fn print(f: &Figures) {
    let agents = f.agents;
    println!(
        "fleet_multi [{}]: {agents} agents on {} listener(s), {} load process(es)",
        f.label, f.listeners, f.loads
    );
    println!(
        "  keys for {agents} hosts, one transaction   {:>9.1} s",
        f.keys_time.as_secs_f64()
    );
    println!(
        "  connect + register all agents           {:>9.1} s ({} connect retries)",
        f.connect_time.as_secs_f64(),
        f.connect_retries
    );
    println!(
        "  slowest GET /metrics while connecting      {:>6.1} s ({} failed or over 60 s)",
        f.slowest_scrape.as_secs_f64(),
        f.scrape_failures
    );
    for (k, ((start, idle), held)) in f.rss_start.iter().zip(&f.rss_idle).zip(&f.held).enumerate() {
        let per = idle.saturating_sub(*start) as f64 * 1024.0 / (*held).max(1) as f64;
        println!(
            "  listener {k}: {held:>6} agents, RSS {start:>7} -> {idle:>9} KiB: {per:>6.0} B ({:.1} KiB) per connection",
            per / 1024.0
        );
    }
    let start: u64 = f.rss_start.iter().sum();
    let idle: u64 = f.rss_idle.iter().sum();
    let per = idle.saturating_sub(start) as f64 * 1024.0 / agents as f64;
    println!(
        "  all listeners: RSS {start} -> {idle} KiB: {per:.0} B ({:.1} KiB) per connection",
        per / 1024.0
    );
    let l = &f.latencies;
    println!(
        "  job round trip ({} jobs{}) p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms (target <= 10 ms), max {:.2} ms; {:.0} jobs/s",
        f.jobs,
        if f.listeners > 1 {
            ", posted to another listener"
        } else {
            ""
        },
        ms(percentile(l, 0.50)),
        ms(percentile(l, 0.90)),
        ms(percentile(l, 0.99)),
        ms(*l.last().unwrap()),
        f.jobs as f64 / f.jobs_time.as_secs_f64()
    );
    println!(
        "  fan-out of /bin/true to {agents}: POST answered in {:.2} s; every report stored in {:.2} s ({:.0} reports/s); {} stored, {} acknowledged",
        f.fan_posted.as_secs_f64(),
        f.fan_time.as_secs_f64(),
        agents as f64 / f.fan_time.as_secs_f64(),
        f.fan_stored,
        f.fan_acked
    );
    let first = f
        .fan_first
        .map_or("none".into(), |d| format!("{:.0} ms", ms(d)));
    println!(
        "  first report of the fan-out acknowledged {first} after the POST's answer (<= 1000 ms)"
    );
    println!(
        "  registrations in the listeners' logs: {} for {agents} agents; closed as silent for three heartbeat intervals: {}",
        f.registered, f.silent
    );
    if !f.drops.is_empty() {
        println!(
            "  load processes noted {} failed connects or drops (first: {})",
            f.drops.len(),
            f.drops[0]
        );
    }
}

/// With `top` > 0: at a phase's `start`, forgets what pg_stat_statements
/// counted; at its end, prints the `top` statements by time spent.
pub(super) fn statements(cluster: &cc_testkit::pg::Cluster, top: u64, phase: &str, start: bool) {
    if top == 0 {
        return;
    }
    if start {
        cluster.psql("fleet", "CREATE EXTENSION IF NOT EXISTS pg_stat_statements");
        cluster.psql("fleet", "SELECT pg_stat_statements_reset()");
        return;
    }
    println!(
        "  {phase}: statements by time (ms total, ms planning, calls, rows, ms mean, text)\n{}",
        cluster.psql(
            "fleet",
            &format!(
                "SELECT round(total_exec_time::numeric, 0) || ' | ' \
                 || round(total_plan_time::numeric, 0) || ' | ' || calls || ' | ' || rows \
                 || ' | ' || round(mean_exec_time::numeric, 3) || ' | ' \
                 || left(regexp_replace(query, '\\s+', ' ', 'g'), 160) \
                 FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT {top}"
            )
        )
    );
}
