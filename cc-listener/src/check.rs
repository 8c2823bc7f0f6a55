//! `cc-listener check`: what an operator runs on the listener's machine
//! when something does not work. It takes `serve`'s options and config,
//! and says, one line per check, `ok: …` or `FAIL: … — what to do` (the
//! detail of a message of several lines follows, indented); the exit code
//! is 0 only when every check is ok.
//!
//! It changes nothing: the database is read without being created or
//! migrated ([`Store::schema_version`]), and each address is bound and
//! released at once.

use cc_proto::checklist::Checklist;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use cc_listener::store::{DbLocation, Store};
use cc_listener::{Settings, read_token_file};

use crate::ServeArgs;

/// Runs every check; true when all are ok.
pub(crate) fn run(args: &ServeArgs) -> bool {
    let mut r = Checklist::new(std::io::stdout());
    let shown = args.config.as_ref().map_or_else(
        || "(none: defaults and flags)".to_owned(),
        |p| p.display().to_string(),
    );
    let (settings, token_file) = match crate::file_settings(args) {
        Ok(found) => {
            r.ok(&format!("config {shown}: valid"));
            found
        }
        Err(e) => {
            r.fail(
                &format!("config {shown}: {e:#}"),
                "fix it, then run cc-listener check again (the other checks need it)",
            );
            return false;
        }
    };
    token(&mut r, token_file.as_deref());
    database(&mut r, &settings.db);
    addresses(&mut r, &settings);
    tls(&mut r, &settings);
    if r.failed() > 0 {
        eprintln!("cc-listener check: {} check(s) failed", r.failed());
    }
    r.failed() == 0
}

fn token(r: &mut Checklist<std::io::Stdout>, file: Option<&Path>) {
    let Some(path) = file else {
        match std::env::var("CC_ADMIN_TOKEN") {
            Ok(t) if t.len() >= 16 => r.ok("operator token: from CC_ADMIN_TOKEN"),
            _ => r.fail(
                "no operator API token (admin_token_file is not set, nor CC_ADMIN_TOKEN)",
                "set admin_token_file in the config to a file holding 16 or more characters, mode 0600",
            ),
        }
        return;
    };
    let shown = path.display();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            r.fail(
                &format!("admin_token_file {shown} does not exist"),
                &format!(
                    "create it: head -c 24 /dev/urandom | base64 > {shown}; chmod 600 {shown}"
                ),
            );
            return;
        }
        Err(e) => {
            r.fail(
                &format!("admin_token_file {shown}: {e}"),
                "run the check as the listener's user, or fix the directory's permissions",
            );
            return;
        }
    };
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        r.fail(
            &format!("admin_token_file {shown} has mode {mode:04o}: group or others can read it"),
            &format!("chmod 600 {shown}"),
        );
        return;
    }
    match read_token_file(path) {
        Ok(_) => r.ok(&format!("admin_token_file {shown}: mode {mode:04o}")),
        Err(e) => r.fail(
            &format!("{e:#}"),
            "put a token of 16 or more characters on its first line",
        ),
    }
}

fn database(r: &mut Checklist<std::io::Stdout>, db: &DbLocation) {
    let advice = match db {
        DbLocation::Sqlite(_) => "check db in the config, and that this user may read the file",
        DbLocation::Postgres(_) => {
            "is PostgreSQL running, and does the URL name its host, port, user and database?"
        }
    };
    match Store::schema_version(db) {
        Ok(None) => match missing_dir(db) {
            Some(dir) => r.fail(
                &format!(
                    "database {db} does not exist, nor its directory {}",
                    dir.display()
                ),
                "create the directory, owned by the listener's user, or fix db in the config",
            ),
            None => r.ok(&format!(
                "database {db} does not exist yet: serve creates it on its first start"
            )),
        },
        Ok(Some(v)) if v.current == v.latest => r.ok(&format!(
            "database {db}: schema version {} (current)",
            v.current
        )),
        Ok(Some(v)) if v.current < v.latest => r.fail(
            &format!(
                "database {db}: schema version {}, this listener's is {}",
                v.current, v.latest
            ),
            "cc-listener serve migrates it when it starts (back the database up first)",
        ),
        Ok(Some(v)) => r.fail(
            &format!(
                "database {db}: schema version {} is newer than this listener knows ({})",
                v.current, v.latest
            ),
            "run the newer cc-listener that migrated it",
        ),
        Err(e) => r.fail(&format!("database {db}: {e:#}"), advice),
    }
}

/// The directory a SQLite file would be created in, when it is missing
/// (`serve` creates the file, not its directory).
fn missing_dir(db: &DbLocation) -> Option<&Path> {
    match db {
        DbLocation::Sqlite(path) => path
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && !d.exists()),
        DbLocation::Postgres(_) => None,
    }
}

fn addresses(r: &mut Checklist<std::io::Stdout>, s: &Settings) {
    for (name, addr) in [("listen", s.listen), ("admin_listen", s.admin_listen)] {
        bind(r, name, addr);
    }
}

/// Binds `addr` and releases it at once.
fn bind(r: &mut Checklist<std::io::Stdout>, name: &str, addr: SocketAddr) {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => r.ok(&format!("{name} {addr}: can be bound")),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => r.fail(
            &format!("{name} {addr}: address in use"),
            &format!("is a listener already running? Stop it, or set {name} to a free port"),
        ),
        Err(e) => r.fail(
            &format!("{name} {addr}: {e}"),
            &format!(
                "set {name} to an address of this machine (a port below 1024 needs CAP_NET_BIND_SERVICE)"
            ),
        ),
    }
}

fn tls(r: &mut Checklist<std::io::Stdout>, s: &Settings) {
    let Some(files) = &s.tls else {
        r.ok("TLS off: agents connect with ws:// (set tls_cert_file and tls_key_file for wss://)");
        return;
    };
    match cc_listener::load_tls(files) {
        Ok(_) => r.ok(&format!(
            "TLS: {} and {} form a usable pair",
            files.cert.display(),
            files.key.display()
        )),
        Err(e) => r.fail(
            &format!("TLS: {e:#}"),
            "set tls_cert_file to the PEM certificate chain and tls_key_file to its PEM private key",
        ),
    }
}
