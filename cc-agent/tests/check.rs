//! `cc-agent check` against the real binary: every line `ok: …` or
//! `FAIL: … — what to do`, exit 0 only when all are ok, and nothing sent
//! to the listener that would register the host.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cc_testkit::TempDir;
use cc_testkit::listener::ListenerProcess;

fn agent() -> &'static str {
    env!("CARGO_BIN_EXE_cc-agent")
}

/// A host's files in `dir`: the key file (mode `key_mode`) and a config
/// for `url` with `extra` lines; returns the config's path.
fn host(dir: &Path, url: &str, key: &str, key_mode: u32, extra: &str) -> PathBuf {
    let key_file = dir.join("agent.key");
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(key_mode)).unwrap();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "listener_url = {url:?}\napi_key_file = {key_file:?}\nhostname = \"check-1\"\nstate_dir = {:?}\n{extra}",
            dir.join("state")
        ),
    )
    .unwrap();
    config
}

fn check(config: &Path) -> Output {
    Command::new(agent())
        .args(["check", "--config"])
        .arg(config)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every line is `ok: …`, `FAIL: … — …` or the indented detail of the
/// line before, and none is Rust debug text.
fn well_formed(out: &Output) {
    let text = stdout(out);
    for line in text.lines() {
        assert!(
            line.starts_with("ok: ")
                || (line.starts_with("FAIL: ") && line.contains(" — "))
                || line.starts_with("    "),
            "{line:?} in\n{text}"
        );
        assert!(!line.contains("Os {") && !line.contains("Some("), "{line}");
    }
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn a_working_host_is_all_ok_and_is_not_registered() {
    let dir = TempDir::new("agent-check-ok");
    let l = ListenerProcess::start(&cc_testkit::bin("cc-listener"), dir.path(), "");
    let key = l.add_key("check-1");
    let config = host(dir.path(), &l.ws_url(), &key, 0o600, "");
    cc_testkit::ensure_cron_daemon();
    let out = check(&config);
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    well_formed(&out);
    for line in [
        format!(
            "ok: config {}: valid (hostname check-1, 1 listener URL(s), user mode)",
            config.display()
        ),
        format!(
            "ok: api_key_file {}: mode 0600, owner root",
            dir.path().join("agent.key").display()
        ),
        format!(
            "ok: listener {}: reachable at {} (TCP; no key sent)",
            l.ws_url(),
            l.agent_addr
        ),
        "ok: system mode off".to_owned(),
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
    }
    assert!(
        text.lines().any(|l| l == "ok: cron daemon running: cron"),
        "{text}"
    );
    assert!(text.contains("ok: crontab on PATH: "), "{text}");
    assert!(text.contains("\nok: time zone "), "{text}");
    assert!(
        l.agent_entry("check-1").is_none(),
        "the check registered the host"
    );
}

#[test]
fn a_loose_key_file_says_the_chmod_that_fixes_it() {
    let dir = TempDir::new("agent-check-mode");
    let url = format!("ws://127.0.0.1:{}/agent", closed_port());
    let config = host(dir.path(), &url, "cck_0123abcd", 0o644, "");
    let out = check(&config);
    assert_eq!(out.status.code(), Some(1));
    well_formed(&out);
    let key = dir.path().join("agent.key");
    let want = format!(
        "FAIL: api_key_file {k} has mode 0644: group or others can read it — chmod 600 {k}",
        k = key.display()
    );
    let text = stdout(&out);
    assert!(text.lines().any(|l| l == want), "{want:?} not in\n{text}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cc-agent check: "), "{err}");
    assert!(err.contains(" check(s) failed"), "{err}");
}

#[test]
fn a_missing_key_file_says_how_to_make_one() {
    let dir = TempDir::new("agent-check-nokey");
    let url = format!("ws://127.0.0.1:{}/agent", closed_port());
    let config = host(dir.path(), &url, "cck_0123abcd", 0o600, "");
    let key = dir.path().join("agent.key");
    std::fs::remove_file(&key).unwrap();
    let out = check(&config);
    assert_eq!(out.status.code(), Some(1));
    let want = format!(
        "FAIL: api_key_file {} does not exist — create it with the key `cc-listener keys add` printed, then chmod 600 it",
        key.display()
    );
    let text = stdout(&out);
    assert!(text.lines().any(|l| l == want), "{want:?} not in\n{text}");
}

#[test]
fn an_unreachable_listener_names_the_address_and_the_error_once() {
    let dir = TempDir::new("agent-check-down");
    let port = closed_port();
    let url = format!("ws://127.0.0.1:{port}/agent");
    let config = host(dir.path(), &url, "cck_0123abcd", 0o600, "");
    let out = check(&config);
    assert_eq!(out.status.code(), Some(1));
    well_formed(&out);
    let want = format!(
        "FAIL: listener {url}: connecting to 127.0.0.1:{port}: Connection refused (os error 111) — \
         is cc-listener running there, listening on port {port}, and does every firewall between let it through?"
    );
    let text = stdout(&out);
    assert!(text.lines().any(|l| l == want), "{want:?} not in\n{text}");
    assert_eq!(text.matches("os error").count(), 1, "{text}");
}

#[test]
fn a_broken_config_shows_the_loaders_error_and_stops() {
    let dir = TempDir::new("agent-check-config");
    let config = host(
        dir.path(),
        "ws://127.0.0.1:1/agent",
        "k",
        0o600,
        "colour = 1\n",
    );
    let out = check(&config);
    assert_eq!(out.status.code(), Some(1));
    well_formed(&out);
    let text = stdout(&out);
    let first = text.lines().next().unwrap_or("");
    assert_eq!(
        first,
        format!(
            "FAIL: config {c}: parsing {c}: TOML parse error at line 5, column 1 — \
             fix it, then run cc-agent check again (the other checks need it)",
            c = config.display()
        )
    );
    // The loader's own detail follows, indented: the caret and the names.
    assert!(text.contains("\n    5 | colour = 1\n"), "{text}");
    assert!(
        text.contains("    unknown field `colour`, expected one of"),
        "{text}"
    );
    assert!(!text.contains("ok: "), "{text}");
}

/// `wss://`: the handshake is verified with `ca_file`; another CA fails
/// with what to do.
#[test]
fn tls_is_verified_with_the_configured_ca() {
    let dir = TempDir::new("agent-check-tls");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let extra = format!(
        "tls_cert_file = {:?}\ntls_key_file = {:?}\n",
        dir.path().join("cert.pem"),
        dir.path().join("key.pem")
    );
    let l = ListenerProcess::start(&cc_testkit::bin("cc-listener"), dir.path(), &extra);
    let url = format!("wss://localhost:{}/agent", l.agent_addr.port());
    let host_dir = dir.path().join("host");
    std::fs::create_dir(&host_dir).unwrap();
    let config = host(
        &host_dir,
        &url,
        "cck_0123abcd",
        0o600,
        &format!("ca_file = {:?}\n", dir.path().join("cert.pem")),
    );
    let text = stdout(&check(&config));
    assert!(
        text.lines().any(
            |line| line.starts_with(&format!("ok: listener {url}: reachable at "))
                && line.ends_with(", TLS certificate verified for localhost (no key sent)")
        ),
        "{text}"
    );
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(host_dir.join("other.pem"), other.cert.pem()).unwrap();
    let config = host(
        &host_dir,
        &url,
        "cck_0123abcd",
        0o600,
        &format!("ca_file = {:?}\n", host_dir.join("other.pem")),
    );
    let out = check(&config);
    assert_eq!(out.status.code(), Some(1));
    well_formed(&out);
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|line| line.starts_with(&format!("FAIL: listener {url}: TLS handshake with ")))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.ends_with(
            " — set ca_file to the CA that signed the listener's certificate, and check that the certificate names localhost"
        ),
        "{line}"
    );
}

/// System mode: the helper socket is named with its owner and mode, and
/// connected to; a missing one says how to start the helper.
#[test]
fn system_mode_checks_the_helper_socket() {
    let dir = TempDir::new("agent-check-sys");
    let socket = dir.path().join("helper.sock");
    let url = format!("ws://127.0.0.1:{}/agent", closed_port());
    let extra = format!("execution_mode = \"system\"\nhelper_socket = {socket:?}\n");
    let config = host(dir.path(), &url, "cck_0123abcd", 0o600, &extra);
    let text = stdout(&check(&config));
    let want = format!(
        "FAIL: helper socket {}: No such file or directory (os error 2) — start the helper (systemctl enable --now cc-privhelper.socket)",
        socket.display()
    );
    assert!(text.lines().any(|l| l == want), "{want:?} not in\n{text}");
    let _listening = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o660)).unwrap();
    let text = stdout(&check(&config));
    let want = format!(
        "ok: system mode: helper socket {} (owner root, group root, mode 0660) accepts a connection",
        socket.display()
    );
    assert!(text.lines().any(|l| l == want), "{want:?} not in\n{text}");
}

/// `api_key_file = "-"`: the key comes from systemd; the check says so
/// and does not wait for standard input.
#[test]
fn a_key_on_standard_input_is_explained() {
    let dir = TempDir::new("agent-check-stdin");
    let url = format!("ws://127.0.0.1:{}/agent", closed_port());
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!("listener_url = {url:?}\napi_key_file = \"-\"\nhostname = \"check-1\"\n"),
    )
    .unwrap();
    let text = stdout(&check(&config));
    assert!(
        text.lines().any(|l| l
            == "ok: api_key_file is \"-\": the key comes on standard input (the systemd unit: \
                StandardInput=file:/etc/croncommander/agent.key)"),
        "{text}"
    );
}

/// Run as the agent's user, a key file another user owns is named with
/// the `chown` that fixes it.
#[test]
fn a_key_file_of_another_owner_says_the_chown_that_fixes_it() {
    use std::os::unix::process::CommandExt;
    let Some((uid, gid)) = cc_testkit::agent::root_and_agent_user() else {
        return;
    };
    let dir = TempDir::new("agent-check-owner");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let url = format!("ws://127.0.0.1:{}/agent", closed_port());
    let config = host(dir.path(), &url, "cck_0123abcd", 0o600, "");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(cc_testkit::reachable(Path::new(agent())))
        .args(["check", "--config"])
        .arg(&config)
        .uid(uid)
        .gid(gid)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    well_formed(&out);
    let key = dir.path().join("agent.key");
    let want = format!(
        "FAIL: api_key_file {k} is owned by root, not {user} — chown {user} {k}",
        k = key.display(),
        user = cc_testkit::agent::AGENT_USER
    );
    let text = stdout(&out);
    assert!(text.lines().any(|l| l == want), "{want:?} not in\n{text}");
}

#[test]
fn the_help_lists_check() {
    let out = Command::new(agent()).arg("--help").output().unwrap();
    let text = stdout(&out);
    assert!(
        text.contains("  check     Check this host's setup and say what to fix\n"),
        "{text}"
    );
}
