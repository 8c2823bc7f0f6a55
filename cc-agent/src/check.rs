//! `cc-agent check`: what a new operator runs on a host when something does
//! not work. Each line is `ok: …` or `FAIL: … — what to do`, on standard
//! output (the detail of a message of several lines follows its `FAIL`
//! line, indented); the exit code is 0 only when every check is ok.
//!
//! It changes nothing and registers nothing: the listener is reached with
//! TCP (and, for `wss://`, a TLS handshake verified as the agent verifies
//! it), and no key is sent; the helper socket is connected to and closed.

use cc_proto::checklist::Checklist;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

use cc_proto::wire::ExecutionMode;

use crate::config::Config;

/// How long a listener has to accept the TCP connection (and the TLS
/// handshake).
const REACH_TIMEOUT: Duration = Duration::from_secs(5);

/// The key file the packaged unit puts on standard input.
const UNIT_KEY_FILE: &str = "/etc/croncommander/agent.key";

/// Runs every check; true when all are ok.
pub(crate) fn run(config: &Path) -> bool {
    let mut r = Checklist::new(std::io::stdout());
    let cfg = match Config::load(config) {
        Ok(cfg) => {
            r.ok(&format!(
                "config {}: valid (hostname {}, {} listener URL(s), {} mode)",
                config.display(),
                cfg.hostname,
                cfg.listeners.len(),
                mode_name(cfg.execution_mode)
            ));
            cfg
        }
        Err(e) => {
            r.fail(
                &format!("config {}: {e:#}", config.display()),
                "fix it, then run cc-agent check again (the other checks need it)",
            );
            return false;
        }
    };
    key_file(&mut r, &cfg);
    listeners(&mut r, &cfg);
    cron_daemon(&mut r);
    system_mode(&mut r, &cfg);
    if r.failed() > 0 {
        eprintln!("cc-agent check: {} check(s) failed", r.failed());
    }
    r.failed() == 0
}

fn mode_name(mode: ExecutionMode) -> &'static str {
    match mode {
        ExecutionMode::User => "user",
        ExecutionMode::System => "system",
    }
}

/// A user's name, or the number when it has none.
fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name)
}

fn key_file(r: &mut Checklist<std::io::Stdout>, cfg: &Config) {
    if cfg.key_on_stdin() {
        r.ok(&format!(
            "api_key_file is \"-\": the key comes on standard input (the systemd unit: \
             StandardInput=file:{UNIT_KEY_FILE})"
        ));
        if Path::new(UNIT_KEY_FILE).exists() {
            // systemd opens it as root.
            private_file(r, Path::new(UNIT_KEY_FILE), "the unit's key file", Some(0));
        }
        return;
    }
    let me = nix::unistd::geteuid().as_raw();
    // The agent reads its key as itself; root, running the check for it,
    // is told whose the file is.
    let owner = (me != 0).then_some(me);
    if private_file(r, &cfg.api_key_file, "api_key_file", owner) {
        if let Err(e) = cfg.read_api_key() {
            r.fail(
                &format!("{e:#}"),
                "put the key `cc-listener keys add` printed in it, alone on one line",
            );
        }
    }
}

/// Checks that `path` exists, is owned by `owner` (when given) and that
/// neither group nor others may read it; true when all hold.
fn private_file(
    r: &mut Checklist<std::io::Stdout>,
    path: &Path,
    name: &str,
    owner: Option<u32>,
) -> bool {
    let shown = path.display();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            r.fail(
                &format!("{name} {shown} does not exist"),
                "create it with the key `cc-listener keys add` printed, then chmod 600 it",
            );
            return false;
        }
        Err(e) => {
            r.fail(
                &format!("{name} {shown}: {e}"),
                "run the check as the agent's user, or fix the directory's permissions",
            );
            return false;
        }
    };
    let mode = meta.mode() & 0o777;
    let mut ok = true;
    if let Some(want) = owner {
        if meta.uid() != want {
            let user = user_name(want);
            r.fail(
                &format!(
                    "{name} {shown} is owned by {}, not {user}",
                    user_name(meta.uid())
                ),
                &format!("chown {user} {shown}"),
            );
            ok = false;
        }
    }
    if mode & 0o077 != 0 {
        r.fail(
            &format!("{name} {shown} has mode {mode:04o}: group or others can read it"),
            &format!("chmod 600 {shown}"),
        );
        ok = false;
    }
    if ok {
        r.ok(&format!(
            "{name} {shown}: mode {mode:04o}, owner {}",
            user_name(meta.uid())
        ));
    }
    ok
}

fn listeners(r: &mut Checklist<std::io::Stdout>, cfg: &Config) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            r.fail(
                &format!("starting the async runtime: {e}"),
                "free some memory or threads and run the check again",
            );
            return;
        }
    };
    let tls = if cfg.listeners.iter().any(|l| l.tls) {
        match crate::link::tls_config(cfg) {
            Ok(tls) => Some(tls),
            Err(e) => {
                r.fail(
                    &format!("TLS trust: {e:#}"),
                    "set ca_file to the CA that signed the listener's certificate",
                );
                None
            }
        }
    } else {
        None
    };
    for l in &cfg.listeners {
        let tls = if l.tls { tls.as_ref() } else { None };
        match runtime.block_on(reach(&l.url, tls)) {
            Ok(what) => r.ok(&format!("listener {}: {what}", l.url)),
            Err((what, todo)) => r.fail(&format!("listener {}: {what}", l.url), &todo),
        }
    }
}

/// Connects to the listener at `url` (TLS-verified with `tls` for
/// `wss://`) and closes the connection; says what was reached, or what
/// failed and what to do.
async fn reach(
    url: &str,
    tls: Option<&std::sync::Arc<tokio_rustls::rustls::ClientConfig>>,
) -> Result<String, (String, String)> {
    use tokio_tungstenite::tungstenite::http::Uri;
    let wss = url.starts_with("wss://");
    let uri: Uri = url
        .parse()
        .map_err(|e| (format!("{e}"), "fix listener_url".to_owned()))?;
    let host = uri.host().unwrap_or("").trim_matches(['[', ']']).to_owned();
    let port = uri.port_u16().unwrap_or(if wss { 443 } else { 80 });
    let firewall = format!(
        "is cc-listener running there, listening on port {port}, and does every firewall between let it through?"
    );
    let tcp = tokio::time::timeout(
        REACH_TIMEOUT,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| {
        (
            format!(
                "no answer from {host}:{port} within {} s",
                REACH_TIMEOUT.as_secs()
            ),
            firewall.clone(),
        )
    })?
    .map_err(|e| (format!("connecting to {host}:{port}: {e}"), firewall))?;
    let addr = tcp
        .peer_addr()
        .map_or_else(|_| format!("{host}:{port}"), |a| a.to_string());
    if !wss {
        return Ok(format!("reachable at {addr} (TCP; no key sent)"));
    }
    let Some(tls) = tls else {
        return Err((
            format!("reachable at {addr}, but TLS cannot be checked"),
            "fix the TLS trust line above".to_owned(),
        ));
    };
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|e| (format!("{host:?}: {e}"), "fix listener_url".to_owned()))?;
    let handshake = tokio_rustls::TlsConnector::from(std::sync::Arc::clone(tls)).connect(name, tcp);
    match tokio::time::timeout(REACH_TIMEOUT, handshake).await {
        Ok(Ok(_)) => Ok(format!(
            "reachable at {addr}, TLS certificate verified for {host} (no key sent)"
        )),
        Ok(Err(e)) => Err((
            format!("TLS handshake with {addr}: {e}"),
            format!(
                "set ca_file to the CA that signed the listener's certificate, and check that the certificate names {host}"
            ),
        )),
        Err(_) => Err((
            format!(
                "no TLS answer from {addr} within {} s",
                REACH_TIMEOUT.as_secs()
            ),
            "is the listener configured with tls_cert_file and tls_key_file?".to_owned(),
        )),
    }
}

/// What the agent tells the listener of this host's cron daemon and
/// clock ([`crate::cronhost`]), said the same way here.
fn cron_daemon(r: &mut Checklist<std::io::Stdout>) {
    let host = crate::cronhost::observe();
    match host.daemon {
        Some(daemon) => r.ok(&format!("cron daemon running: {daemon}")),
        None => r.fail(
            &format!(
                "no cron daemon is running (no live pid in /run/crond.pid, no process named {})",
                crate::cronhost::CRON_NAMES.join(", ")
            ),
            "scheduled jobs will not run: start it (Debian: systemctl enable --now cron)",
        ),
    }
    match host.time_zone {
        Some(tz) => r.ok(&format!(
            "time zone {tz} (the listener shows next runs in it)"
        )),
        None => r.fail(
            "the time zone is unknown (/etc/localtime names no zone, /etc/timezone is missing)",
            "link /etc/localtime to a zone (Debian: dpkg-reconfigure tzdata)",
        ),
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("crontab"))
            .find(|p| p.is_file())
    });
    match on_path {
        Some(p) => r.ok(&format!("crontab on PATH: {}", p.display())),
        None => r.fail(
            "crontab is not on PATH",
            "install cron (Debian: apt install cron); user mode installs its schedule with crontab",
        ),
    }
}

fn system_mode(r: &mut Checklist<std::io::Stdout>, cfg: &Config) {
    if cfg.execution_mode != ExecutionMode::System {
        r.ok("system mode off");
        return;
    }
    let socket = &cfg.helper_socket;
    let shown = socket.display();
    let start = "start the helper (systemctl enable --now cc-privhelper.socket)";
    let meta = match std::fs::metadata(socket) {
        Ok(m) => m,
        Err(e) => {
            r.fail(&format!("helper socket {shown}: {e}"), start);
            return;
        }
    };
    if !meta.file_type().is_socket() {
        r.fail(
            &format!("helper socket {shown} is not a socket"),
            &format!("set helper_socket to where cc-privhelper listens, or {start}"),
        );
        return;
    }
    let facts = format!(
        "owner {}, group {}, mode {:04o}",
        user_name(meta.uid()),
        nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(meta.gid()))
            .ok()
            .flatten()
            .map_or_else(|| meta.gid().to_string(), |g| g.name),
        meta.mode() & 0o777
    );
    match std::os::unix::net::UnixStream::connect(socket) {
        Ok(_) => r.ok(&format!(
            "system mode: helper socket {shown} ({facts}) accepts a connection"
        )),
        Err(e) => r.fail(
            &format!("system mode: helper socket {shown} ({facts}): connecting: {e}"),
            &format!(
                "{start}; the agent's user must be in the socket's group and the mode must let the group write"
            ),
        ),
    }
}
