//! The real agent refuses a listener URL whose text hides where it
//! connects: `ws://127.0.0.1:x@elsewhere/agent` reads like loopback, but the
//! WebSocket client would connect to `elsewhere` and send the key in clear.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

use std::process::Command;

use cc_e2e::{TempDir, bin};

#[test]
fn a_url_with_userinfo_is_refused_naming_the_real_host() {
    let dir = TempDir::new("url-userinfo");
    std::fs::write(dir.path().join("key"), "cck_test-key\n").unwrap();
    for url in [
        "ws://127.0.0.1:x@elsewhere/agent",
        "ws://127.0.0.1:8081@elsewhere.example:8081/agent",
    ] {
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "listener_url = \"{url}\"\napi_key_file = {:?}\nhostname = \"h\"\nstate_dir = {:?}\n",
                dir.path().join("key"),
                dir.path().join("state")
            ),
        )
        .unwrap();
        let out = Command::new(bin("cc-agent"))
            .args(["run", "--config"])
            .arg(&config)
            .env_clear()
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{url}: the agent started");
        assert!(
            err.contains("connects to \"elsewhere") && err.contains("user name or password"),
            "{url}: {err}"
        );
    }
}
