//! Fleet schedules end to end (issue 26, "Done when"): a fleet file applied
//! with `ccctl cron apply` to 3 real tagged agents (`cc-agent` as
//! cc-agent-user, cc-agent-user2 and cc-agent-user3: one crontab each) and
//! 500 simulated ones reaches exactly the hosts its targets match — the
//! real agents' crontabs (`crontab -l -u USER`) show it, each simulated
//! agent is sent exactly its entries — within 1 s; a real agent
//! registering later with a matching tag has them in its crontab within
//! 1 s of connecting; `ccctl cron plan` of the unchanged file shows
//! nothing, and `ccctl cron status` shows no drift once the agents report
//! what they installed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cc_e2e::agent::{AgentProcess, root_and_agent_user};
use cc_e2e::listener::ListenerProcess;
use cc_e2e::sim::{self, Behaviour, Observer};
use cc_e2e::{TempDir, bin, require, wait_for};
use nix::unistd::User;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);
const SIMS: usize = 500;
/// The real agents' users: one crontab each.
const USERS: [&str; 3] = ["cc-agent-user2", "cc-agent-user3", "cc-agent-user"];

const FLEET: &str = "\
# issue 26's worked example
web-eu tag:web,tag:eu [jitter=30] 0 3 * * * /bin/echo web-eu
everyone * [timeout=60] @daily /bin/echo everyone
db-only tag:db 30 2 * * * /bin/echo db-only
";

/// The entries of the fleet file a host with `tags` matches, in order.
fn matching(tags: &[&str]) -> Vec<&'static str> {
    let mut ids = Vec::new();
    if tags.contains(&"web") && tags.contains(&"eu") {
        ids.push("web-eu");
    }
    ids.push("everyone");
    if tags.contains(&"db") {
        ids.push("db-only");
    }
    ids
}

fn sim_tags(i: usize) -> Vec<&'static str> {
    match i % 4 {
        0 => vec!["web", "eu"],
        1 => vec!["web"],
        2 => vec!["db", "eu"],
        _ => vec![],
    }
}

/// The last `cron_refresh` each simulated agent was sent: its ids, when.
#[derive(Default)]
struct Refreshes(Mutex<BTreeMap<String, (Vec<String>, Instant)>>);

impl Observer for Refreshes {
    fn message(&self, host: &str, m: &Value) {
        if m["type"] != "cron_refresh" {
            return;
        }
        let ids = m["payload"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        self.0
            .lock()
            .unwrap()
            .insert(host.to_owned(), (ids, Instant::now()));
    }
}

fn crontab(user: &str) -> String {
    let out = Command::new("crontab")
        .args(["-u", user, "-l"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn crontab_clear(user: &str) {
    let _ = Command::new("crontab").args(["-u", user, "-r"]).output();
}

/// The entry ids of the agent's managed lines in `tab` (`… cron-run
/// --config PATH ID`).
fn installed(tab: &str) -> BTreeSet<String> {
    tab.lines()
        .filter(|l| !l.starts_with('#') && l.contains(" cron-run "))
        .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
        .collect()
}

fn ids(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        for u in USERS {
            crontab_clear(u);
        }
    }
}

#[test]
fn a_fleet_file_reaches_exactly_the_matching_hosts() {
    if root_and_agent_user().is_none() {
        return;
    }
    let users: Vec<(u32, u32)> = USERS
        .iter()
        .filter_map(|u| User::from_name(u).ok().flatten())
        .map(|u| (u.uid.as_raw(), u.gid.as_raw()))
        .collect();
    if !require(
        "the users cc-agent-user2 and cc-agent-user3 (the test command creates them) and Debian's crontab",
        users.len() == 3 && Command::new("crontab").arg("-V").output().is_ok(),
    ) {
        return;
    }
    let _cleanup = Cleanup;
    for u in USERS {
        crontab_clear(u);
    }
    let dir = TempDir::new("fleet-schedules");
    let ldir = dir.path().join("listener");
    std::fs::create_dir_all(&ldir).unwrap();
    let reals = [
        ("real-web-eu.fleet.test", vec!["web", "eu"]),
        ("real-db.fleet.test", vec!["db"]),
        ("real-late.fleet.test", vec!["web", "eu"]),
    ];
    let sims: Vec<(String, Vec<&str>)> = (0..SIMS)
        .map(|i| (format!("sim-{i:03}.fleet.test"), sim_tags(i)))
        .collect();
    let keys = {
        let store = cc_listener::store::Store::open(&ldir.join("listener.db")).unwrap();
        let specs: Vec<(&str, Option<&str>)> = reals
            .iter()
            .map(|(h, _)| *h)
            .chain(sims.iter().map(|(h, _)| h.as_str()))
            .map(|h| (h, Some(h)))
            .collect();
        store.add_keys(&specs, 0).unwrap()
    };
    let listener = ListenerProcess::start(
        &bin("cc-listener"),
        &ldir,
        "max_connections = 1000\nmax_unauthenticated_per_source = 4096\nheartbeat_interval_secs = 10\nping_interval_secs = 10\n",
    );
    let (runtime, seen) = spawn_sims(&listener, &sims, &keys[reals.len()..]);
    let start_real = |i: usize| {
        let (host, tags) = &reals[i];
        let adir = dir.path().join(host);
        std::fs::create_dir_all(&adir).unwrap();
        AgentProcess::start(
            &bin("cc-agent"),
            &adir,
            &listener.ws_url(),
            &keys[i],
            host,
            &format!("tags = {}\n", json!(tags)),
            Some(users[i]),
        )
    };
    let mut agents = vec![start_real(0), start_real(1)];
    wait_for(T, "500 simulated and 2 real agents connected", || {
        (connected(&listener).len() == SIMS + 2).then_some(())
    });

    // Apply the fleet file with ccctl, as an operator does.
    let file = dir.path().join("fleet.cron");
    std::fs::write(&file, FLEET).unwrap();
    let f = file.to_str().unwrap();
    let applied_at = Instant::now();
    // Every known host: the late one's key is bound to its name already
    // (not yet to tags: those its first registration binds).
    let said = ccctl_out(&listener, dir.path(), &["cron", "apply", f, "--yes"]);
    assert!(
        said.contains(&format!("{} hosts changed", SIMS + 3)),
        "{said}"
    );

    assert_each_sim_sent_its_entries(&seen, &sims, applied_at);

    // The real agents' crontabs.
    for i in 0..2 {
        assert_crontab(USERS[i], &matching(&reals[i].1));
    }
    assert!(
        installed(&crontab(USERS[2])).is_empty(),
        "the late host's user has nothing yet"
    );

    // A real agent registering later with matching tags: its crontab has
    // its entries within 1 s of its connection.
    agents.push(start_real(2));
    let connected_at = wait_for(T, "the late agent connected", || {
        connected(&listener).contains(reals[2].0).then(Instant::now)
    });
    let want = ids(&matching(&reals[2].1));
    wait_for(T, "the late agent's crontab", || {
        (installed(&crontab(USERS[2])) == want).then_some(())
    });
    let took = connected_at.elapsed();
    eprintln!(
        "fleet_schedules: the late agent's crontab had its entries {took:?} after it was seen connected"
    );
    assert!(took < Duration::from_secs(1), "{took:?}");

    // The plan of the unchanged file shows nothing.
    assert_eq!(
        ccctl_out(&listener, dir.path(), &["cron", "plan", f]),
        "no changes\n"
    );

    assert_no_drift_on_the_real_hosts(&listener, dir.path(), reals[0].0, reals[2].0);

    runtime.shutdown_timeout(Duration::from_secs(1));
    for a in &mut agents {
        a.kill();
    }
}

/// Runs the simulated agents (tags [`sim_tags`]) on a runtime of their own;
/// what each was last sent.
fn spawn_sims(
    listener: &ListenerProcess,
    sims: &[(String, Vec<&'static str>)],
    keys: &[String],
) -> (tokio::runtime::Runtime, Arc<Refreshes>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let seen = Arc::new(Refreshes::default());
    let gate = Arc::new(tokio::sync::Semaphore::new(128));
    for ((host, tags), key) in sims.iter().zip(keys) {
        let how = Arc::new(Behaviour::suite(tags, Duration::from_secs(10)));
        let (url, key, host) = (listener.ws_url(), key.clone(), host.clone());
        let obs: Arc<dyn Observer + Send + Sync> = seen.clone();
        let gate = Arc::clone(&gate);
        runtime.spawn(async move { sim::run(url.into(), key, host, how, gate, obs).await });
    }
    (runtime, seen)
}

/// Every simulated agent was sent exactly the entries it matches, the
/// last of them within 1 s of `applied_at`.
fn assert_each_sim_sent_its_entries(
    seen: &Refreshes,
    sims: &[(String, Vec<&str>)],
    applied_at: Instant,
) {
    wait_for(T, "every simulated agent sent its list", || {
        (seen.0.lock().unwrap().len() == SIMS).then_some(())
    });
    let got = seen.0.lock().unwrap().clone();
    let mut last = applied_at;
    for (i, (host, tags)) in sims.iter().enumerate() {
        let (ids, at) = &got[host];
        assert_eq!(ids, &matching(tags), "sim {i} ({host}, tags {tags:?})");
        last = last.max(*at);
    }
    let took = last - applied_at;
    eprintln!(
        "fleet_schedules: {SIMS} simulated agents sent their lists {took:?} after apply began"
    );
    assert!(took < Duration::from_secs(1), "{took:?}");
}

/// `ccctl cron status`: no drift on the real hosts `a` and `b` once their
/// agents said what they installed; a simulated one never said (drift).
fn assert_no_drift_on_the_real_hosts(
    listener: &ListenerProcess,
    dir: &std::path::Path,
    a: &str,
    b: &str,
) {
    wait_for(T, "no drift on the real hosts", || {
        let out = listener.ccctl(dir, &["cron", "status", "--tag", "eu", "--output", "json"]);
        let rows: Value = serde_json::from_slice(&out.stdout).ok()?;
        let row = |h: &str| {
            rows.as_array()?
                .iter()
                .find(|r| r["hostname"] == h)
                .cloned()
        };
        let (ra, rb) = (row(a)?, row(b)?);
        (ra["drift"] == false && rb["drift"] == false && ra["installed"] == 2).then_some(())
    });
    let rows = listener
        .get("/api/v1/cron/status?host=sim-000.fleet.test")
        .json();
    assert_eq!(rows[0]["drift"], true, "{rows}");
    assert_eq!(rows[0]["wanted"], 2, "{rows}");
}

/// The hostnames `GET /agents` shows connected.
fn connected(l: &ListenerProcess) -> BTreeSet<String> {
    l.get("/api/v1/agents?limit=10000")
        .json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["connected"] == true)
        .map(|a| a["hostname"].as_str().unwrap().to_owned())
        .collect()
}

/// `user`'s crontab comes to hold exactly the managed entries `want`, and
/// no command.
fn assert_crontab(user: &str, want: &[&str]) {
    let want = ids(want);
    wait_for(T, "the real agent's crontab", || {
        (installed(&crontab(user)) == want).then_some(())
    });
    let tab = crontab(user);
    assert!(
        !tab.contains("/bin/echo"),
        "a command reached the crontab:\n{tab}"
    );
}

/// `ccctl ARGS`, which must succeed: its standard output.
fn ccctl_out(listener: &ListenerProcess, dir: &std::path::Path, args: &[&str]) -> String {
    let out = listener.ccctl(dir, args);
    assert!(
        out.status.success(),
        "ccctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
