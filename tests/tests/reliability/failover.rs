//! Issue "Beyond one server": several listeners on one PostgreSQL
//! database while one of them is SIGKILLed or the database restarts (and,
//! for comparison, the one listener on SQLite killed the same way). Each job
//! appends its number to a file: runs are counted from what ran.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cc_e2e::agent::AgentProcess;
use cc_e2e::listener::{FAST_REAL_AGENTS, ListenerProcess};
use cc_e2e::pg::Cluster;
use cc_e2e::{bin, wait_for};
use serde_json::json;

use crate::common::{Rig, T, poll, reports_per_job, rig, times_run};

#[test]
fn fault_listener_killed_among_three_on_postgres() {
    let Some(r) = rig("fault", "fault_10_listener_killed_of_three_postgres", "") else {
        return;
    };
    listener_killed_during_2000_jobs(&r, true);
}

#[test]
fn fault_listener_killed_alone_on_sqlite_2000_jobs() {
    let Some(r) = rig("fault", "fault_11_listener_killed_alone_sqlite", "") else {
        return;
    };
    listener_killed_during_2000_jobs(&r, false);
}

/// The 2,000-job scenarios' fleet. Fields drop in order: the agents
/// before the listeners they talk to.
struct Fleet {
    agents: Vec<AgentProcess>,
    ls: Vec<ListenerProcess>,
    /// 3 listeners on one PostgreSQL database, or 1 on SQLite.
    shared: bool,
    hosts: Vec<String>,
    /// The file every job appends its number to.
    ran: PathBuf,
    /// The listener that is never killed answers every question.
    judge: usize,
    /// The agents that list the victim (listener 0) first.
    on_victim: Vec<usize>,
    victim_port: String,
}

/// The listeners: 3 on one PostgreSQL database (`shared`), or 1 on
/// SQLite. None: no PostgreSQL here (a skip outside CI).
fn listeners(r: &Rig, shared: bool) -> Option<(Option<Cluster>, Vec<ListenerProcess>)> {
    let mut ls: Vec<ListenerProcess> = Vec::new();
    if !shared {
        let d = r.dir.path().join("listener-solo");
        std::fs::create_dir_all(&d).unwrap();
        ls.push(ListenerProcess::start(
            &bin("cc-listener"),
            &d,
            FAST_REAL_AGENTS,
        ));
        return Some((None, ls));
    }
    let c = Cluster::start()?;
    let url = c.create_db("cc");
    for i in 0..3 {
        let d = r.dir.path().join(format!("listener-{i}"));
        std::fs::create_dir_all(&d).unwrap();
        ls.push(ListenerProcess::start_shared(
            &bin("cc-listener"),
            &d,
            &url,
            FAST_REAL_AGENTS,
        ));
    }
    Some((Some(c), ls))
}

impl Fleet {
    /// 6 agents, each listing every listener (in a different order),
    /// connected; those that list the victim first held by it.
    fn start(r: &Rig, ls: Vec<ListenerProcess>, shared: bool) -> Self {
        let n = ls.len();
        let ran = r.owned_dir("ha-runs").join("ran");
        let hosts: Vec<String> = (0..6).map(|i| format!("rel-ha-{i}.test")).collect();
        let mut agents = Vec::new();
        for (i, host) in hosts.iter().enumerate() {
            let key = ls[0].add_key(host);
            let urls: Vec<String> = (0..n)
                .map(|k| format!("{:?}", ls[(i + k) % n].ws_url()))
                .collect();
            let adir = r.dir.path().join(host);
            std::fs::create_dir_all(&adir).unwrap();
            agents.push(AgentProcess::start(
                &bin("cc-agent"),
                &adir,
                &format!("[{}]", urls.join(", ")),
                &key,
                host,
                "max_concurrent_jobs = 4\n",
                Some(r.user),
            ));
        }
        let fleet = Fleet {
            agents,
            shared,
            hosts,
            ran,
            judge: n - 1,
            on_victim: (0..6).filter(|&i| i % n == 0).collect(),
            victim_port: ls[0].agent_addr.port().to_string(),
            ls,
        };
        wait_for(T, "all 6 agents connected", || {
            (fleet.connected() == 6).then_some(())
        });
        // Agents that list the victim first are connected to it.
        for &i in &fleet.on_victim {
            let held =
                fleet.ls[fleet.judge].agent_entry(&fleet.hosts[i]).unwrap()["listener"].clone();
            assert!(
                !shared
                    || held
                        .as_str()
                        .is_some_and(|l| l.ends_with(&fleet.victim_port)),
                "{} is held by {held}, not the victim",
                fleet.hosts[i]
            );
        }
        fleet
    }

    /// How many of the fleet's agents the judge sees connected.
    fn connected(&self) -> usize {
        let l = &self.ls[self.judge];
        l.get("/api/v1/agents").json().as_array().map_or(0, |a| {
            a.iter()
                .filter(|x| self.hosts.iter().any(|h| x["hostname"] == h.as_str()))
                .filter(|x| x["connected"] == true)
                .count()
        })
    }

    /// Waits until every agent that prefers the victim is held by it
    /// (`on_it`) or by another listener.
    fn wait_victims_held(&self, what: &str, on_it: bool) {
        wait_for(T, what, || {
            self.on_victim
                .iter()
                .all(|&k| {
                    self.ls[self.judge]
                        .agent_entry(&self.hosts[k])
                        .is_some_and(|a| {
                            a["listener"]
                                .as_str()
                                .is_some_and(|l| l.ends_with(&self.victim_port) == on_it)
                        })
                })
                .then_some(())
        });
    }

    /// What happens before job `i` is posted. Returns whether the victim
    /// is down (Some: changed), and how long its agents went unserved
    /// after a kill.
    fn before_job(&mut self, i: usize, kills: &mut usize) -> (Option<bool>, Option<Duration>) {
        match (i, self.shared) {
            (600 | 1300, true) => {
                self.ls[0].kill();
                let killed = Instant::now();
                *kills += 1;
                // How long the victim's agents go unserved.
                self.wait_victims_held("the victim's agents held elsewhere", false);
                (Some(true), Some(killed.elapsed()))
            }
            (900 | 1600, true) => {
                self.ls[0].kill_and_restart();
                (Some(false), None)
            }
            // The agents that prefer the victim come back to it (a rolling
            // restart of those agents, SIGTERM), so the second kill finds
            // them there with jobs in flight.
            (1000, true) => {
                for &k in &self.on_victim {
                    self.agents[k].terminate(Duration::from_secs(40));
                    self.agents[k].start_again();
                }
                self.wait_victims_held("the victim's agents back on it", true);
                (None, None)
            }
            (600 | 1300, false) => {
                self.ls[0].kill_and_restart();
                *kills += 1;
                (None, None)
            }
            _ => (None, None),
        }
    }
}

/// What the 2,000 jobs' posting did.
struct Posted {
    ids: Vec<String>,
    kills: usize,
    failovers: Vec<Duration>,
    took: Duration,
}

/// Posts the 2,000 jobs, killing the victim on the way.
fn post_2000_jobs(fleet: &mut Fleet) -> Posted {
    let started = Instant::now();
    let mut ids = Vec::new();
    let mut down = false;
    let mut kills = 0;
    let mut failovers: Vec<Duration> = Vec::new();
    for i in 0..2000usize {
        let (now_down, failover) = fleet.before_job(i, &mut kills);
        down = now_down.unwrap_or(down);
        failovers.extend(failover);
        let poster = if fleet.shared { 1 + i % 2 } else { 0 };
        assert!(!(down && poster == 0));
        let script = format!("echo {i} >> {}", fleet.ran.display());
        let body = json!({"command": "/bin/sh", "args": ["-c", script], "timeout": 30});
        ids.push(
            fleet.ls[poster]
                .post_job(&fleet.hosts[i % 6], &body)
                .to_string(),
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    Posted {
        ids,
        kills,
        failovers,
        took: started.elapsed(),
    }
}

/// Issue "Beyond one server": 2,000 jobs to 6 agents while one listener
/// is SIGKILLed twice. With `shared`, 3 listeners on one PostgreSQL
/// database: each agent lists all three (in a different order, so two
/// prefer the victim), jobs are posted through the two others' API, and
/// the victim stays down 3 s each time. Without, the one listener on
/// SQLite is killed and restarted at once (jobs are posted to it). Each job
/// appends its number to a file: runs are counted from what ran.
fn listener_killed_during_2000_jobs(r: &Rig, shared: bool) {
    let Some((cluster, ls)) = listeners(r, shared) else {
        return;
    };
    let mut fleet = Fleet::start(r, ls, shared);
    let posted = post_2000_jobs(&mut fleet);
    record_2000_jobs(r, &fleet, &posted);
    drop(fleet);
    drop(cluster);
}

/// Settles the 2,000 jobs, counts them and records the row.
fn record_2000_jobs(r: &Rig, fleet: &Fleet, posted: &Posted) {
    let (ls, hosts, ids, judge) = (&fleet.ls, &fleet.hosts, &posted.ids, fleet.judge);
    let on_victim = &fleet.on_victim;
    // Settled: done, lost or expired (lost only after timeout + grace).
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut status: HashMap<String, String> = HashMap::new();
    for id in ids {
        loop {
            let st = ls[judge].get(&format!("/api/v1/jobs/{id}")).json()["status"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            if matches!(st.as_str(), "done" | "lost" | "expired") || Instant::now() > deadline {
                status.insert(id.clone(), st);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let done = status.values().filter(|s| *s == "done").count();
    let per: HashMap<String, usize> = hosts
        .iter()
        .flat_map(|h| reports_per_job(&ls[judge], h))
        .collect();
    let missing = ids.iter().filter(|i| !per.contains_key(*i)).count();
    let stored_twice = ids
        .iter()
        .filter(|i| per.get(*i).is_some_and(|k| *k > 1))
        .count();
    let times_run = times_run(&fleet.ran);
    let run_twice = times_run.values().filter(|k| **k > 1).count();
    let never_ran = (0..2000).filter(|i| !times_run.contains_key(i)).count();
    let all_back = poll(T, || (fleet.connected() == 6).then_some(())).is_some();
    let reconnects: Vec<usize> = fleet
        .agents
        .iter()
        .map(|a| a.log().matches("connected and registered").count())
        .collect();
    // Shared: the first connection, after each kill, after the agent
    // restart; one listener: the first and after each kill.
    let moved_all = on_victim
        .iter()
        .all(|&i| reconnects[i] >= if fleet.shared { 4 } else { 3 });
    let (target, setup) = if fleet.shared {
        (
            "3 listeners on one PostgreSQL",
            "2,000 `sh -c 'echo I >> file'` jobs to 6 agents (each listing all 3 listeners, in 3 orders), posted through the API of listeners 2 and 3 while listener 1 is SIGKILLed twice (down 3 s each time)",
        )
    } else {
        (
            "1 listener on SQLite",
            "2,000 `sh -c 'echo I >> file'` jobs to 6 agents while the listener is SIGKILLed and restarted twice",
        )
    };
    r.rec.row(
        target,
        setup,
        "every job done; 0 reports lost, 0 stored twice, 0 jobs run twice (counted from the file); every agent reconnected",
        &format!(
            "{done}/2000 done, {missing} reports missing, {stored_twice} stored twice, {run_twice} run twice, {never_ran} never ran; {} kills{}; agents on the victim {on_victim:?} reconnected {:?} times; all 6 connected at the end: {all_back}; posting took {:.1} s",
            posted.kills,
            failover_times(&posted.failovers),
            on_victim.iter().map(|&i| reconnects[i]).collect::<Vec<_>>(),
            posted.took.as_secs_f64()
        ),
        done == 2000
            && missing == 0
            && stored_twice == 0
            && run_twice == 0
            && never_ran == 0
            && all_back
            && moved_all
            && !on_victim.is_empty(),
    );
}

/// How long the victim's agents went unserved after each kill, for the
/// row (empty: no failover measured).
fn failover_times(failovers: &[Duration]) -> String {
    if failovers.is_empty() {
        String::new()
    } else {
        format!(
            ", the victim's agents served by another listener {} s after each kill",
            failovers
                .iter()
                .map(|d| format!("{:.1}", d.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(" and ")
        )
    }
}

/// Issue "Beyond one server": the shared database restarted twice while
/// jobs run — stopped cleanly (`pg_ctl stop -m fast`) and as a crash
/// (`-m immediate`), away 2 s each time — under 2 listeners and 4 agents. Writes fail while it is
/// down; nothing acknowledged may be lost and nothing may run twice.
#[test]
fn fault_database_restarted_under_two_listeners() {
    let Some(r) = rig("fault", "fault_12_database_restarted", "") else {
        return;
    };
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let url = cluster.create_db("cc");
    let ls: Vec<ListenerProcess> = (0..2)
        .map(|i| {
            let d = r.dir.path().join(format!("listener-{i}"));
            std::fs::create_dir_all(&d).unwrap();
            ListenerProcess::start_shared(&bin("cc-listener"), &d, &url, FAST_REAL_AGENTS)
        })
        .collect();
    let ran = r.owned_dir("db-runs").join("ran");
    let hosts: Vec<String> = (0..4).map(|i| format!("rel-db-{i}.test")).collect();
    let agents: Vec<AgentProcess> = hosts
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let key = ls[0].add_key(host);
            let adir = r.dir.path().join(host);
            std::fs::create_dir_all(&adir).unwrap();
            let urls = format!("[{:?}, {:?}]", ls[i % 2].ws_url(), ls[(i + 1) % 2].ws_url());
            AgentProcess::start(
                &bin("cc-agent"),
                &adir,
                &urls,
                &key,
                host,
                "max_concurrent_jobs = 4\n",
                Some(r.user),
            )
        })
        .collect();
    wait_for(T, "4 agents connected", || {
        (connected_to(&ls[1]) == 4).then_some(())
    });
    let (ids, restarts) = jobs_through_two_restarts(&cluster, &ls, &hosts, &ran);
    record_database_restarts(&r, &ls, &agents, &hosts, &ran, &ids, &restarts);
    drop(agents);
    drop(ls);
}

/// How many agents `l` sees connected.
fn connected_to(l: &ListenerProcess) -> usize {
    l.get("/api/v1/agents")
        .json()
        .as_array()
        .map_or(0, |a| a.iter().filter(|x| x["connected"] == true).count())
}

/// 300 jobs, then the database restarted while they run and report
/// (`fast`), then 300 more and a crash (`immediate`). Returns the job ids
/// and how long each restart took.
fn jobs_through_two_restarts(
    cluster: &Cluster,
    ls: &[ListenerProcess],
    hosts: &[String],
    ran: &Path,
) -> (Vec<String>, Vec<Duration>) {
    let mut ids = Vec::new();
    let mut restarts = Vec::new();
    for (phase, mode) in ["fast", "immediate"].into_iter().enumerate() {
        for i in 0..300 {
            let n = phase * 300 + i;
            let script = format!("sleep 0.{}; echo {n} >> {}", n % 10, ran.display());
            let body = json!({"command": "/bin/sh", "args": ["-c", script], "timeout": 30});
            ids.push(ls[n % 2].post_job(&hosts[n % 4], &body).to_string());
        }
        // While those run and report.
        std::thread::sleep(Duration::from_millis(400));
        let t = Instant::now();
        cluster.restart(mode, Duration::from_secs(2));
        restarts.push(t.elapsed());
        wait_for(T, "the listeners answer again", || {
            (ls.iter().all(|l| l.get("/api/v1/agents").status == 200)).then_some(())
        });
    }
    (ids, restarts)
}

/// How many of `ids` listener `l` calls done, once each is settled (done,
/// lost or expired) or `limit` has passed.
fn done_within(l: &ListenerProcess, ids: &[String], limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    let mut done = 0;
    for id in ids {
        loop {
            let resp = l.get(&format!("/api/v1/jobs/{id}"));
            let st = if resp.status == 200 {
                resp.json()["status"].as_str().unwrap_or("").to_owned()
            } else {
                String::new()
            };
            if st == "done" {
                done += 1;
                break;
            }
            if st == "lost" || st == "expired" || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    done
}

/// Counts what the database restarts did and records the row.
fn record_database_restarts(
    r: &Rig,
    ls: &[ListenerProcess],
    agents: &[AgentProcess],
    hosts: &[String],
    ran: &Path,
    ids: &[String],
    restarts: &[Duration],
) {
    let done = done_within(&ls[1], ids, Duration::from_secs(180));
    let per: HashMap<String, usize> = hosts
        .iter()
        .flat_map(|h| reports_per_job(&ls[1], h))
        .collect();
    let missing = ids.iter().filter(|i| !per.contains_key(*i)).count();
    let stored_twice = ids
        .iter()
        .filter(|i| per.get(*i).is_some_and(|k| *k > 1))
        .count();
    let times_run = times_run(ran);
    let run_twice = times_run.values().filter(|k| **k > 1).count();
    let back = poll(T, || (connected_to(&ls[1]) == 4).then_some(())).is_some();
    // The outage was felt: errors the listeners logged, connections the
    // agents made again.
    let logged = ls
        .iter()
        .map(|l| l.log().matches(" ERROR ").count() + l.log().matches(" WARN ").count())
        .sum::<usize>();
    let reconnects = agents
        .iter()
        .map(|a| a.log().matches("connected and registered").count() - 1)
        .sum::<usize>();
    r.rec.row(
        "2 listeners on one PostgreSQL",
        "600 `sh -c 'sleep 0.N; echo I >> file'` jobs to 4 agents; the database stopped for 2 s while they run and started again, once stopped cleanly (`pg_ctl stop -m fast`) and once as a crash (`-m immediate`)",
        "every job done; 0 reports lost, 0 stored twice, 0 run twice; the listeners serve again without a restart of their own; every agent connected",
        &format!(
            "{done}/600 done, {missing} reports missing, {stored_twice} stored twice, {run_twice} run twice; the database was away {:.1} s and {:.1} s; {logged} errors and warnings logged by the listeners, {reconnects} reconnections of the agents; all 4 connected at the end: {back}",
            restarts[0].as_secs_f64(),
            restarts[1].as_secs_f64()
        ),
        done == 600 && missing == 0 && stored_twice == 0 && run_twice == 0 && back && logged > 0,
    );
}
