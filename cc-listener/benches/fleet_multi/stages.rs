//! Where a sequential job's round trip went: each job's times from just
//! before its POST to the POST's answer, to its agent getting the job, and
//! to the agent's `report_ack`.

use cc_testkit::stats::percentile;
use std::time::Duration;

/// One job's times, in µs from just before its POST.
pub(crate) struct Stages {
    /// Just before the POST, wall-clock µs since the epoch (to find the
    /// job in the servers' logs).
    pub(crate) t0: u64,
    /// The POST answered (the job and its audit row committed).
    pub(crate) answered: u64,
    /// The agent got the job (`execute_job` arrived); 0 if it was not seen.
    pub(crate) got: u64,
    /// The agent got the `report_ack` (the report committed).
    pub(crate) acked: u64,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// p50/p90/p99 of each stage, then the slowest jobs one by one.
pub(crate) fn print(label: &str, stages: &mut [Stages]) {
    if stages.is_empty() {
        return;
    }
    let line = |what: &str, f: &dyn Fn(&Stages) -> u64| {
        let mut v: Vec<Duration> = stages.iter().map(|s| Duration::from_micros(f(s))).collect();
        v.sort();
        let p = |q| percentile(&v, q).as_secs_f64() * 1000.0;
        eprintln!(
            "  FIGURE {label} stage {what}: p50 {:.2} p90 {:.2} p99 {:.2} ms",
            p(0.5),
            p(0.9),
            p(0.99)
        );
    };
    line("POST answered", &|s| s.answered);
    line("agent got the job", &|s| s.got);
    line("report acknowledged after the job arrived", &|s| {
        s.acked.saturating_sub(s.got)
    });
    stages.sort_by_key(|s| std::cmp::Reverse(s.acked));
    for s in stages.iter().take(12) {
        eprintln!(
            "  slow job at {}.{:06}: {:.2} ms: POST answered {:.2}, agent got it {:.2}, report acknowledged {:.2} after",
            s.t0 / 1_000_000,
            s.t0 % 1_000_000,
            ms(s.acked),
            ms(s.answered),
            ms(s.got),
            ms(s.acked.saturating_sub(s.got))
        );
    }
}
