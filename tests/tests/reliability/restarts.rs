//! Issue "An agent restart loses no job": 1,000 jobs to one agent that is
//! restarted 5 times — by SIGTERM, by SIGKILL, by SIGKILL with its listener
//! SIGKILLed too — counted from what ran, not from what was reported.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use cc_e2e::agent::AgentProcess;
use serde_json::json;

use crate::common::{Rig, poll, rig, times_run};

/// The one agent of these scenarios.
const HOST: &str = "rel-restart.test";

#[test]
fn fault_agent_restarted_by_sigterm_during_1000_jobs() {
    let Some(mut r) = rig("fault", "fault_7_agent_sigterm_restarts", "") else {
        return;
    };
    restarts_during_1000_jobs(&mut r, Restart::Term);
}

#[test]
fn fault_agent_sigkilled_during_1000_jobs() {
    let Some(mut r) = rig("fault", "fault_8_agent_sigkills", "") else {
        return;
    };
    restarts_during_1000_jobs(&mut r, Restart::Kill);
}

#[test]
fn fault_agent_and_listener_sigkilled_during_1000_jobs() {
    let Some(mut r) = rig("fault", "fault_9_agent_and_listener_sigkills", "") else {
        return;
    };
    restarts_during_1000_jobs(&mut r, Restart::KillBoth);
}

/// How an agent restart is done in [`restarts_during_1000_jobs`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Restart {
    /// SIGTERM, what `systemctl restart cc-agent` sends: a graceful stop.
    Term,
    /// SIGKILL: the agent dies wherever it is.
    Kill,
    /// SIGKILL, and the listener SIGKILLed and restarted in between too.
    KillBoth,
}

/// Issue "An agent restart loses no job": 1,000 jobs to one agent
/// (`max_concurrent_jobs = 4`) that is restarted 5 times; each job appends
/// its number to a file, so runs are counted from what ran, not from what
/// was reported.
fn restarts_during_1000_jobs(r: &mut Rig, how: Restart) {
    let host = HOST;
    let ran = r.owned_dir("runs").join("ran");
    let mut agent = r.agent(host, "max_concurrent_jobs = 4\ndrain_timeout_secs = 20\n");
    let ids: Vec<String> = (0..1000)
        .map(|i| {
            let script = format!("sleep 0.0{}; echo {i} >> {}", i % 10, ran.display());
            r.post(
                host,
                &json!({"command": "/bin/sh", "args": ["-c", script], "timeout": 10}),
            )
        })
        .collect();
    let posted = Instant::now();
    let mut stops = Vec::new();
    let mut kills = 0;
    for k in 0..5 {
        // Wait for progress, so every restart lands among running jobs.
        let want = 120 * (k + 1);
        poll(Duration::from_secs(60), || {
            let n = std::fs::read_to_string(&ran).map_or(0, |t| t.lines().count());
            (n >= want).then_some(())
        });
        match how {
            Restart::Term => {
                let (code, took) = agent.terminate(Duration::from_secs(40));
                stops.push((code, took));
                agent.start_again();
            }
            Restart::Kill | Restart::KillBoth => {
                agent.restart();
                kills += 1;
                if how == Restart::KillBoth {
                    r.listener.kill_and_restart();
                }
            }
        }
        r.wait_connected(host, &agent);
    }
    let restarted = Restarts {
        stops,
        kills,
        took: posted.elapsed(),
    };
    record_restarts(r, &agent, &ids, &ran, how, &restarted);
}

/// What the 5 restarts were.
struct Restarts {
    /// Each SIGTERM stop's exit code and how long it took.
    stops: Vec<(Option<i32>, Duration)>,
    kills: usize,
    /// From the last job posted to the last restart.
    took: Duration,
}

/// Settles the 1,000 jobs, counts them (from the file, the stored reports
/// and the agent's markers) and records the row.
fn record_restarts(
    r: &Rig,
    agent: &AgentProcess,
    ids: &[String],
    ran: &Path,
    how: Restart,
    restarted: &Restarts,
) {
    let host = HOST;
    let (stops, kills) = (&restarted.stops, restarted.kills);
    // Lost jobs are lost only after their timeout and the grace.
    let done = r.settle(ids, Duration::from_secs(300));
    let status: HashMap<String, String> = ids
        .iter()
        .map(|i| {
            (
                i.clone(),
                r.job(i)["status"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let lost: Vec<&String> = ids.iter().filter(|i| status[*i] == "lost").collect();
    let other = ids.len() - done - lost.len();
    let times_run = times_run(ran);
    let twice_run = times_run.values().filter(|n| **n > 1).count();
    let per = r.reports_per_job(host);
    let stored_twice = ids
        .iter()
        .filter(|i| per.get(*i).is_some_and(|n| *n > 1))
        .count();
    // A job the listener calls lost had started: its marker is on disk.
    let lost_unstarted = lost
        .iter()
        .filter(|i| !agent.state().join("jobs").join(i.as_str()).exists())
        .count();
    let lost_ran = lost
        .iter()
        .filter(|i| {
            let n = ids.iter().position(|x| x == **i).unwrap_or(usize::MAX);
            times_run.contains_key(&n)
        })
        .count();
    let never_ran = (0..1000).filter(|i| !times_run.contains_key(i)).count();
    match how {
        Restart::Term => {
            let slow = stops
                .iter()
                .map(|(_, t)| t.as_secs_f64())
                .fold(0.0, f64::max);
            let clean = stops.iter().all(|(c, _)| *c == Some(0));
            r.rec.row(
                "agent",
                "1,000 `sh -c 'sleep 0.0N; echo I >> file'` jobs to one agent (max_concurrent_jobs = 4), the agent restarted 5 times by SIGTERM",
                "0 lost, 0 run twice (counted from the file), 0 stored twice; every job done; each stop graceful (exit 0, within the drain time)",
                &format!(
                    "{done}/1000 done, {} lost, {other} other; {twice_run} run twice, {never_ran} never ran; {stored_twice} stored twice; stops took at most {slow:.1} s, exit codes {:?}; 5 restarts in {:.1} s",
                    lost.len(),
                    stops.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
                    restarted.took.as_secs_f64()
                ),
                done == 1000 && lost.is_empty() && twice_run == 0 && stored_twice == 0 && never_ran == 0 && clean,
            );
        }
        Restart::Kill | Restart::KillBoth => {
            let what = if how == Restart::Kill {
                "the agent SIGKILLed and restarted 5 times"
            } else {
                "the agent SIGKILLed 5 times and the listener SIGKILLed and restarted after each"
            };
            r.rec.row(
                "agent",
                &format!("1,000 `sh -c 'sleep 0.0N; echo I >> file'` jobs to one agent (max_concurrent_jobs = 4), {what}"),
                "lost only jobs that had started (at most 4 per kill), each shown lost by the listener; 0 run twice (counted from the file); 0 stored twice; every other job done",
                &format!(
                    "{done}/1000 done, {} lost ({lost_unstarted} of them not started; {lost_ran} had run their command), {other} other; {twice_run} run twice; {stored_twice} stored twice; {kills} kills",
                    lost.len()
                ),
                lost.len() <= 4 * kills
                    && lost_unstarted == 0
                    && done + lost.len() == 1000
                    && twice_run == 0
                    && stored_twice == 0,
            );
        }
    }
}
