//! An agent given several listeners (`listener_url = [A, B]`) and a link
//! that keeps breaking, with the real agent as `cc-agent-user`.
//!
//! - A listener that dies: the agent is served by the next one within one
//!   backoff, and jobs posted there run.
//! - A link cut every few seconds: each connection that carried something
//!   from the listener starts the backoff again, so the agent comes back
//!   within a second every time instead of backing off toward 60 s.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

use std::time::{Duration, Instant};

use cc_e2e::agent::{AgentProcess, root_and_agent_user};
use cc_e2e::listener::{ListenerProcess, add_key_to};
use cc_e2e::proxy::CuttingProxy;
use cc_e2e::{TempDir, bin};
use serde_json::json;

#[test]
fn when_its_listener_dies_the_agent_is_served_by_the_next_within_one_backoff() {
    let Some(agent_user) = root_and_agent_user() else {
        return;
    };
    let dir = TempDir::new("failover");
    let (a_dir, b_dir, agent_dir) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("agent"),
    );
    for d in [&a_dir, &b_dir, &agent_dir] {
        std::fs::create_dir_all(d).unwrap();
    }
    // Made before any listener runs, so a copy of the database gives the
    // second listener the same key (on SQLite they share nothing else).
    let key = add_key_to(&bin("cc-listener"), &a_dir.join("listener.db"), "fo.test");
    std::fs::copy(a_dir.join("listener.db"), b_dir.join("listener.db")).unwrap();
    let mut a = ListenerProcess::start(&bin("cc-listener"), &a_dir, "");
    let b = ListenerProcess::start(&bin("cc-listener"), &b_dir, "");
    let urls = format!("[{:?}, {:?}]", a.ws_url(), b.ws_url());
    let agent = AgentProcess::start(
        &bin("cc-agent"),
        &agent_dir,
        &urls,
        &key,
        "fo.test",
        "",
        Some(agent_user),
    );
    // The first listener first.
    a.wait_connected("fo.test", true);
    assert!(
        b.agent_entry("fo.test").is_none(),
        "the second listener is not tried while the first serves"
    );
    let t0 = Instant::now();
    a.kill();
    let seen = b.wait_for(Duration::from_secs(15), |b| {
        b.agent_entry("fo.test")
            .filter(|e| e["connected"] == true)
            .map(|_| t0.elapsed())
    });
    // One backoff after a connection that delivered: at most 1 s, plus
    // the connection attempts.
    assert!(
        seen < Duration::from_secs(3),
        "served by the second listener after {seen:?}\n{}",
        agent.log()
    );
    let id = b.post_job(
        "fo.test",
        &json!({"command": "/bin/echo", "args": ["through-b"]}),
    );
    let job = b.wait_for(Duration::from_secs(15), |b| {
        let j = b.get(&format!("/api/v1/jobs/{id}")).json();
        (j["status"] == "done").then_some(j)
    });
    assert_eq!(job["report"]["stdout"], "through-b\n");
    let log = agent.log();
    assert!(
        log.lines().any(|l| l.contains("connected and registered")
            && l.contains(&format!("url={}", b.ws_url()))),
        "{log}"
    );
}

#[test]
fn a_link_cut_every_few_seconds_does_not_push_the_backoff_up() {
    let Some(agent_user) = root_and_agent_user() else {
        return;
    };
    let dir = TempDir::new("backoff-reset");
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let l = ListenerProcess::start(&bin("cc-listener"), dir.path(), "");
    let key = l.add_key("cut.test");
    // A few seconds of handshake, register, pong and 1 s heartbeats each.
    let proxy = CuttingProxy::start(l.agent_addr, 700, 900, 0xc0ff_ee00);
    let agent = AgentProcess::start(
        &bin("cc-agent"),
        &agent_dir,
        &format!("ws://{}/agent", proxy.addr),
        &key,
        "cut.test",
        "",
        Some(agent_user),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while proxy.cuts() < 6 {
        assert!(
            Instant::now() < deadline,
            "{} cuts in 60 s\n{}",
            proxy.cuts(),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = agent.log();
    let delays: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("reconnecting"))
        .filter_map(|l| {
            l.split("delay_ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(delays.len() >= 5, "{delays:?}\n{log}");
    // backoff(0) is 0.5–1 s; without the reset the 3rd wait is 2–4 s, the
    // 5th 8–16 s.
    assert!(
        delays.iter().all(|&d| d <= 1000),
        "every wait the shortest: {delays:?}\n{log}"
    );
    proxy.set_cutting(false);
    l.wait_connected("cut.test", true);
}
