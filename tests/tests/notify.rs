//! Notifications with a real agent: a real `cc-agent` as cc-agent-user is
//! killed — after the grace a `host_offline` webhook reaches a real HTTP
//! receiver, its HMAC verified, once — and started again: one `recovered`.
//! (Scheduled runs' `run_failed`/`run_missed` use the same queue from the
//! `cron` events; `cc_testkit::webhook::Receiver` is the receiver those
//! suites use.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

use std::time::Duration;

use cc_e2e::agent::{AgentProcess, root_and_agent_user};
use cc_e2e::listener::ListenerProcess;
use cc_e2e::webhook::Receiver;
use cc_e2e::{TempDir, bin};

const SECRET: &str = "e2e-webhook-secret-0123456789";

#[test]
fn a_real_agent_killed_is_one_host_offline_and_back_one_recovered() {
    let Some(user) = root_and_agent_user() else {
        return;
    };
    let rx = Receiver::start(SECRET.as_bytes());
    let dir = TempDir::new("notify-e2e");
    for d in ["listener", "agent"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    let secret = dir.path().join("listener/hook.secret");
    std::fs::write(&secret, SECRET).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let extra = format!(
        "notify_offline_grace_secs = 2\nnotify_retry_base_ms = 200\n\
         [[notify]]\nname = \"ops\"\nurl = \"{}\"\nevents = [\"host_offline\", \"root_in_user_mode\"]\n\
         hosts = \"tag:e2e\"\nsecret_file = {secret:?}\n",
        rx.url("")
    );
    let listener =
        ListenerProcess::start(&bin("cc-listener"), &dir.path().join("listener"), &extra);
    let host = "notify-e2e.test";
    let key = listener.add_key(host);
    let mut agent = AgentProcess::start(
        &bin("cc-agent"),
        &dir.path().join("agent"),
        &listener.ws_url(),
        &key,
        host,
        "",
        Some(user),
    );
    listener.wait_connected(host, true);
    // An agent restart within the grace: nothing.
    agent.restart();
    listener.wait_connected(host, true);
    std::thread::sleep(Duration::from_secs(4));
    assert!(rx.seen().is_empty(), "{:?}", rx.seen());

    agent.kill();
    let got = rx.wait_delivered(1, Duration::from_secs(15));
    assert_eq!(got[0].event["event"], "host_offline", "{:?}", got[0]);
    assert_eq!(got[0].event["hostname"], host);
    assert!(got[0].signed, "the HMAC does not verify");
    agent.start_again();
    let got = rx.wait_delivered(2, Duration::from_secs(15));
    assert_eq!(got[1].event["event"], "recovered");
    assert_eq!(got[1].event["recoveredFrom"], "host_offline");
    assert!(got[1].signed);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(rx.seen().len(), 2, "{:?}", rx.seen());
}
