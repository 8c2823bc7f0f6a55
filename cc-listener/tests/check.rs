//! `cc-listener check` against the real binary: one `ok: …` or
//! `FAIL: … — what to do` line per check, exit 0 only when all are ok, and
//! nothing changed (no database created, no schema migrated).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cc_testkit::TempDir;
use cc_testkit::listener::ListenerProcess;

fn listener() -> &'static str {
    env!("CARGO_BIN_EXE_cc-listener")
}

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A listener's config in `dir`: its database, a token file of mode 0600
/// and two free loopback ports, with `extra` lines; returns its path.
fn config(dir: &Path, extra: &str) -> PathBuf {
    let token = dir.join("token");
    std::fs::write(&token, "check-token-0123456789\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let path = dir.join("listener.toml");
    std::fs::write(
        &path,
        format!(
            "db = {:?}\nadmin_token_file = {token:?}\nlisten = \"127.0.0.1:{}\"\nadmin_listen = \"127.0.0.1:{}\"\n{extra}",
            dir.join("listener.db"),
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    path
}

fn check(args: &[&str]) -> Output {
    Command::new(listener())
        .arg("check")
        .args(args)
        .env_remove("CC_ADMIN_TOKEN")
        .output()
        .unwrap()
}

fn check_config(config: &Path) -> Output {
    check(&["--config", config.to_str().unwrap()])
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every line is `ok: …`, `FAIL: … — …` or the indented detail of the
/// line before.
fn well_formed(out: &Output) {
    let text = stdout(out);
    for line in text.lines() {
        assert!(
            line.starts_with("ok: ")
                || (line.starts_with("FAIL: ") && line.contains(" — "))
                || line.starts_with("    "),
            "{line:?} in\n{text}"
        );
    }
}

fn has_line(out: &Output, want: &str) {
    let text = stdout(out);
    assert!(text.lines().any(|l| l == want), "{want:?} not in\n{text}");
}

/// Creates and migrates the SQLite database at `db` (as `keys list`
/// does), and returns its schema version: the latest.
fn migrated(db: &Path) -> i64 {
    let out = Command::new(listener())
        .args(["keys", "list", "--db"])
        .arg(db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    user_version(db)
}

fn user_version(db: &Path) -> i64 {
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

/// The names in `dir`, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_ready_listener_is_all_ok() {
    let dir = TempDir::new("l-check-ok");
    let config = config(dir.path(), "");
    let db = dir.path().join("listener.db");
    let latest = migrated(&db);
    let before = files(dir.path());
    let out = check_config(&config);
    assert!(out.status.success(), "{}", stdout(&out));
    assert_eq!(files(dir.path()), before, "the check left files behind");
    well_formed(&out);
    assert!(!stdout(&out).contains("FAIL"), "{}", stdout(&out));
    has_line(&out, &format!("ok: config {}: valid", config.display()));
    has_line(
        &out,
        &format!(
            "ok: admin_token_file {}: mode 0600",
            dir.path().join("token").display()
        ),
    );
    has_line(
        &out,
        &format!(
            "ok: database sqlite:{}: schema version {latest} (current)",
            db.display()
        ),
    );
    has_line(
        &out,
        "ok: TLS off: agents connect with ws:// (set tls_cert_file and tls_key_file for wss://)",
    );
    let text = stdout(&out);
    assert!(text.contains("ok: listen 127.0.0.1:"), "{text}");
    assert!(text.contains("ok: admin_listen 127.0.0.1:"), "{text}");
}

/// A database that does not exist is not created by the check.
#[test]
fn a_missing_database_is_not_created() {
    let dir = TempDir::new("l-check-nodb");
    let config = config(dir.path(), "");
    let db = dir.path().join("listener.db");
    let out = check_config(&config);
    assert!(out.status.success(), "{}", stdout(&out));
    has_line(
        &out,
        &format!(
            "ok: database sqlite:{} does not exist yet: serve creates it on its first start",
            db.display()
        ),
    );
    assert!(!db.exists(), "the check created the database");
    // Nor its directory: serve would not create that.
    let nowhere = dir.path().join("missing").join("listener.db");
    let out = check(&[
        "--config",
        config.to_str().unwrap(),
        "--db",
        nowhere.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    has_line(
        &out,
        &format!(
            "FAIL: database sqlite:{} does not exist, nor its directory {} — \
             create the directory, owned by the listener's user, or fix db in the config",
            nowhere.display(),
            dir.path().join("missing").display()
        ),
    );
}

/// The addresses of a listener already running are in use; its database
/// is read while it runs.
#[test]
fn a_running_listener_holds_the_addresses() {
    let dir = TempDir::new("l-check-busy");
    let at = |port| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let l = ListenerProcess::start_on(
        &cc_testkit::bin("cc-listener"),
        dir.path(),
        "",
        at(free_port()),
        at(free_port()),
    );
    // The store is open once the API answers.
    assert_eq!(l.get("/api/v1/agents").status, 200);
    let out = check_config(&dir.path().join("listener.toml"));
    assert_eq!(out.status.code(), Some(1));
    well_formed(&out);
    has_line(
        &out,
        &format!(
            "FAIL: listen {}: address in use — is a listener already running? Stop it, or set listen to a free port",
            l.agent_addr
        ),
    );
    has_line(
        &out,
        &format!(
            "FAIL: admin_listen {}: address in use — is a listener already running? Stop it, or set admin_listen to a free port",
            l.admin_addr
        ),
    );
    let text = stdout(&out);
    assert!(text.contains(" (current)\n"), "{text}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cc-listener check: "),
        "{out:?}"
    );
}

#[test]
fn a_missing_or_loose_token_file_says_what_to_do() {
    let dir = TempDir::new("l-check-token");
    let config = config(dir.path(), "");
    let token = dir.path().join("token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = check_config(&config);
    assert_eq!(out.status.code(), Some(1));
    well_formed(&out);
    has_line(
        &out,
        &format!(
            "FAIL: admin_token_file {t} has mode 0644: group or others can read it — chmod 600 {t}",
            t = token.display()
        ),
    );
    std::fs::remove_file(&token).unwrap();
    let out = check_config(&config);
    assert_eq!(out.status.code(), Some(1));
    has_line(
        &out,
        &format!(
            "FAIL: admin_token_file {t} does not exist — create it: head -c 24 /dev/urandom | base64 > {t}; chmod 600 {t}",
            t = token.display()
        ),
    );
    // No token at all: neither a file nor the environment.
    let out = check(&["--db", dir.path().join("x.db").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    has_line(
        &out,
        "FAIL: no operator API token (admin_token_file is not set, nor CC_ADMIN_TOKEN) — \
         set admin_token_file in the config to a file holding 16 or more characters, mode 0600",
    );
}

/// An older schema (made by lowering `PRAGMA user_version` of a migrated
/// file by one) is named with the version it has; the check does not
/// migrate it. A newer one says which listener to run.
#[test]
fn an_older_or_newer_schema_is_named_and_left_alone() {
    let dir = TempDir::new("l-check-schema");
    let config = config(dir.path(), "");
    // A name SQLite's URIs would read otherwise, to show it is read as is.
    let db = dir.path().join("old schema%#?.db");
    let latest = migrated(&db);
    let older = latest - 1;
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(&format!("PRAGMA user_version = {older}"))
        .unwrap();
    let out = check(&[
        "--config",
        config.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    well_formed(&out);
    has_line(
        &out,
        &format!(
            "FAIL: database sqlite:{}: schema version {older}, this listener's is {latest} — \
             cc-listener serve migrates it when it starts (back the database up first)",
            db.display()
        ),
    );
    assert_eq!(user_version(&db), older, "the check migrated the database");
    let newer = latest + 1;
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(&format!("PRAGMA user_version = {newer}"))
        .unwrap();
    let out = check(&[
        "--config",
        config.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    has_line(
        &out,
        &format!(
            "FAIL: database sqlite:{}: schema version {newer} is newer than this listener knows ({latest}) — \
             run the newer cc-listener that migrated it",
            db.display()
        ),
    );
}

#[test]
fn a_broken_config_or_tls_pair_is_shown_with_what_to_do() {
    let dir = TempDir::new("l-check-config");
    let config_path = config(dir.path(), "colour = 1\n");
    let out = check_config(&config_path);
    assert_eq!(out.status.code(), Some(1));
    well_formed(&out);
    let first = stdout(&out).lines().next().unwrap_or("").to_owned();
    assert!(
        first.starts_with(&format!("FAIL: config {}: parsing ", config_path.display()))
            && first.ends_with(
                " — fix it, then run cc-listener check again (the other checks need it)"
            ),
        "{first}"
    );
    assert!(
        stdout(&out).contains("    unknown field `colour`"),
        "{out:?}"
    );

    let cert_file = dir.path().join("cert.pem");
    let config_path = config(
        dir.path(),
        &format!("tls_cert_file = {cert_file:?}\ntls_key_file = {cert_file:?}\n"),
    );
    let out = check_config(&config_path);
    assert_eq!(out.status.code(), Some(1));
    well_formed(&out);
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("FAIL: TLS: reading {}", cert_file.display())))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.ends_with(
            " — set tls_cert_file to the PEM certificate chain and tls_key_file to its PEM private key"
        ),
        "{line}"
    );

    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let config_path = config(
        dir.path(),
        &format!(
            "tls_cert_file = {cert_file:?}\ntls_key_file = {:?}\n",
            dir.path().join("key.pem")
        ),
    );
    let out = check_config(&config_path);
    has_line(
        &out,
        &format!(
            "ok: TLS: {} and {} form a usable pair",
            cert_file.display(),
            dir.path().join("key.pem").display()
        ),
    );
}

/// PostgreSQL: a fresh database has schema version 0 until a listener
/// migrates it; then it is current. An unreachable server says what to
/// check.
#[test]
fn postgres_is_reached_and_its_schema_read() {
    let Some(cluster) = cc_testkit::pg::Cluster::start() else {
        return;
    };
    let dir = TempDir::new("l-check-pg");
    let config = config(dir.path(), "");
    let url = cluster.create_db("check");
    let out = check(&["--config", config.to_str().unwrap(), "--db", &url]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|l| l.starts_with("FAIL: database postgres: database \"check\""))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains(": schema version 0, this listener's is "),
        "{line}"
    );
    let migrate = Command::new(listener())
        .args(["keys", "list", "--db", &url])
        .output()
        .unwrap();
    assert!(migrate.status.success(), "{migrate:?}");
    let out = check(&["--config", config.to_str().unwrap(), "--db", &url]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains(" (current)\n"), "{}", stdout(&out));

    let down = format!("postgres://postgres@127.0.0.1:{}/check", free_port());
    let out = check(&["--config", config.to_str().unwrap(), "--db", &down]);
    assert_eq!(out.status.code(), Some(1));
    well_formed(&out);
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|l| l.starts_with("FAIL: database postgres: "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("connecting to PostgreSQL: "), "{line}");
    assert!(
        line.ends_with(
            " — is PostgreSQL running, and does the URL name its host, port, user and database?"
        ),
        "{line}"
    );
}

#[test]
fn the_help_lists_check() {
    let out = Command::new(listener()).arg("--help").output().unwrap();
    let text = stdout(&out);
    // The column is as wide as the longest subcommand (`operators`).
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")
                == "check Check this listener's setup and say what to fix (same options as serve)"),
        "{text}"
    );
}
