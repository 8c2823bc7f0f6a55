//! Is anything going to run? A real agent as cc-agent-user tells the
//! listener whether its host's cron daemon (Debian's real `cron`) runs and
//! which time zone the host keeps; the listener says so in `GET /agents`,
//! `ccctl agents` and its metrics, within a heartbeat of cron stopping or
//! starting. The daemon is the test's own, in a private mount namespace
//! (its own `/run/crond.pid`), so stopping it stops nobody else's.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

use std::time::Duration;

use cc_e2e::agent::{AgentProcess, root_and_agent_user};
use cc_e2e::isolation::Isolation;
use cc_e2e::listener::ListenerProcess;
use cc_e2e::{TempDir, bin};
use serde_json::Value;

/// A heartbeat a second: a change shows within this.
const WITHIN: Duration = Duration::from_secs(5);

/// The zone this machine keeps, as `/etc/localtime` names it.
fn local_zone() -> String {
    let target = std::fs::read_link("/etc/localtime").expect("/etc/localtime is a link here");
    let target = target.to_string_lossy().into_owned();
    target
        .split_once("zoneinfo/")
        .map(|(_, z)| z.to_owned())
        .expect("/etc/localtime links into zoneinfo")
}

fn ccctl_agents(listener: &ListenerProcess, dir: &std::path::Path) -> String {
    let out = listener.ccctl(dir, &["agents"]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn without_daemon(listener: &ListenerProcess) -> String {
    listener
        .get("/metrics")
        .body
        .lines()
        .find(|l| l.starts_with("croncommander_agents_without_cron_daemon "))
        .unwrap_or("")
        .to_owned()
}

#[test]
fn the_listener_knows_within_a_heartbeat_when_a_hosts_cron_stops_and_starts() {
    let Some(user) = root_and_agent_user() else {
        return;
    };
    let mut iso = Isolation::enter();
    assert!(Isolation::is_private());
    let dir = TempDir::new("cron-host");
    for d in ["listener", "agent"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    let listener = ListenerProcess::start(&bin("cc-listener"), &dir.path().join("listener"), "");
    let host = "cron-host.test";
    let key = listener.add_key(host);
    // The harness's agents heartbeat every second.
    let _agent = AgentProcess::start(
        &bin("cc-agent"),
        &dir.path().join("agent"),
        &listener.ws_url(),
        &key,
        host,
        "",
        Some(user),
    );
    let zone = local_zone();
    let daemon_is = |want: Value| {
        let deadline = std::time::Instant::now() + WITHIN;
        loop {
            let a = listener.agent_entry(host);
            if let Some(a) = a
                .as_ref()
                .filter(|a| a["connected"] == true && a["cronHost"]["daemon"] == want)
            {
                return a.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "cronHost.daemon not {want} within {WITHIN:?}: {a:?}\n{}",
                listener.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    listener.wait_connected(host, true);

    // Running: named, the zone said, nothing to warn about.
    let a = daemon_is(Value::from("cron"));
    assert_eq!(a["cronHost"]["timeZone"], zone.as_str(), "{a}");
    assert!(a["cronWarning"].is_null(), "{a}");
    assert_eq!(
        without_daemon(&listener),
        "croncommander_agents_without_cron_daemon 0"
    );

    // Stopped, as `systemctl stop cron` leaves it: the pid file names a
    // process that is gone.
    iso.stop_cron();
    let a = daemon_is(Value::Null);
    let warning = a["cronWarning"].as_str().unwrap_or_default().to_owned();
    assert!(
        warning.starts_with("no cron daemon is running on this host"),
        "{a}"
    );
    assert_eq!(
        without_daemon(&listener),
        "croncommander_agents_without_cron_daemon 1"
    );
    let table = ccctl_agents(&listener, dir.path());
    assert!(
        table.contains("WARNING: 1 agent(s) run no cron daemon") && table.contains("NO DAEMON"),
        "{table}"
    );
    assert!(table.contains(&warning), "{table}");
    let fleet =
        cc_e2e::http::console_page(listener.admin_addr, cc_e2e::listener::TOKEN, "/ui/").body;
    assert!(
        fleet.contains("1 agent run no cron daemon") && fleet.contains("NO CRON DAEMON"),
        "{fleet}"
    );
    let page = cc_e2e::http::console_page(
        listener.admin_addr,
        cc_e2e::listener::TOKEN,
        &format!("/ui/hosts/{host}"),
    )
    .body;
    assert!(page.contains("cron daemon: none"), "{page}");
    assert!(
        listener
            .log()
            .contains("the host's cron daemon stopped: its cron entries will not fire"),
        "{}",
        listener.log()
    );

    // Started again.
    iso.start_cron();
    let a = daemon_is(Value::from("cron"));
    assert!(a["cronWarning"].is_null(), "{a}");
    assert_eq!(
        without_daemon(&listener),
        "croncommander_agents_without_cron_daemon 0"
    );
    assert!(!ccctl_agents(&listener, dir.path()).contains("NO DAEMON"));
    let page = cc_e2e::http::console_page(
        listener.admin_addr,
        cc_e2e::listener::TOKEN,
        &format!("/ui/hosts/{host}"),
    )
    .body;
    assert!(
        page.contains(&format!("cron daemon: cron · time zone: {zone}"))
            && !page.contains("NO CRON DAEMON"),
        "{page}"
    );
    assert!(listener.log().contains("the host's cron daemon runs again"));
}
