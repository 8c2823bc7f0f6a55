//! `cc-listener` command line.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serde::Deserialize;

mod check;

use cc_listener::store::{DbLocation, FileLock, Store};
use cc_listener::{Settings, TlsFiles, now_ms, read_token_file};

const DEFAULT_DB: &str = "/var/lib/croncommander/listener.db";

#[derive(Debug, Parser)]
#[command(
    name = "cc-listener",
    version,
    about = "CronCommander listener: agents on /agent, operators on /api/v1 and the console on /ui/"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Accept agents and serve the operator API.
    Serve(ServeArgs),
    /// Check this listener's setup and say what to fix (same options as
    /// serve).
    ///
    /// Config, operator token, database and its schema, addresses, TLS:
    /// one line per check, `ok: …` or `FAIL: … — what to do`; exit 0 only
    /// when all are ok. Changes nothing.
    Check(ServeArgs),
    /// Manage agent API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manage named operators (their tokens, roles and host selectors).
    Operators {
        #[command(subcommand)]
        command: OperatorsCommand,
    },
    /// Copy a listener's database into an empty PostgreSQL database (to
    /// run several listeners on it). Stop the listener first: a source a
    /// listener serves is refused.
    Migrate {
        /// The database to copy: a SQLite file (PATH or sqlite:PATH) that
        /// exists, or a postgres:// URL no listener holds a lease on.
        #[arg(long)]
        from: PathBuf,
        /// The PostgreSQL database to copy into (postgres://…); it must
        /// hold no data yet.
        #[arg(long)]
        to: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// TOML config file; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Agent WebSocket address [default: 0.0.0.0:8081].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Operator API address [default: 127.0.0.1:8082].
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// The database: a SQLite file (PATH or sqlite:PATH) [default:
    /// /var/lib/croncommander/listener.db], or a PostgreSQL database that
    /// several listeners share (postgres://USER@HOST/DB; TLS with
    /// ?sslmode=verify-full&sslrootcert=CA.pem, see docs/listener.md).
    #[arg(long)]
    db: Option<PathBuf>,
    /// File holding the operator API bearer token (else CC_ADMIN_TOKEN).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Sign system-mode jobs and cron lists posted unsigned with this key
    /// (a `ccctl keygen` file). Weaker than operators signing: whoever
    /// holds this listener holds every host that trusts the key.
    #[arg(long)]
    signing_key_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key and print it (only it) on stdout.
    Add {
        name: String,
        /// Bind the key to this hostname now (else: the first it registers).
        #[arg(long)]
        hostname: Option<String>,
        /// The tags its host may have, comma-separated (else: those of its
        /// first registration); a later registration with others is refused.
        #[arg(long, value_delimiter = ',')]
        tags: Option<Vec<String>>,
        /// A SQLite file or a postgres:// URL, as serve's --db.
        #[arg(long, default_value = DEFAULT_DB)]
        db: PathBuf,
    },
    /// List keys (never their values).
    List {
        /// A SQLite file or a postgres:// URL, as serve's --db.
        #[arg(long, default_value = DEFAULT_DB)]
        db: PathBuf,
    },
    /// Revoke a key; agents using it are disconnected.
    Revoke {
        name: String,
        /// A SQLite file or a postgres:// URL, as serve's --db.
        #[arg(long, default_value = DEFAULT_DB)]
        db: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum OperatorsCommand {
    /// Create an operator and print its token (only it) on stdout; the
    /// store keeps its hash.
    Add {
        name: String,
        /// viewer (reads), operator (also runs jobs and sets cron lists),
        /// admin (also manages keys and operators).
        #[arg(long)]
        role: String,
        /// The hosts it reaches: *, host:NAME, tag:T, comma-joined (any of
        /// them) [default: *].
        #[arg(long)]
        hosts: Option<String>,
        /// Refuse its token after this many days.
        #[arg(long, value_name = "DAYS")]
        expires: Option<u64>,
        #[arg(long, default_value = DEFAULT_DB)]
        db: PathBuf,
    },
    /// List operators (never their tokens).
    List {
        #[arg(long, default_value = DEFAULT_DB)]
        db: PathBuf,
    },
    /// Revoke an operator: its API access, event streams and console
    /// sessions end within a second on every listener.
    Revoke {
        name: String,
        #[arg(long, default_value = DEFAULT_DB)]
        db: PathBuf,
    },
}

/// The config file; every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    db: Option<PathBuf>,
    admin_token_file: Option<PathBuf>,
    heartbeat_interval_secs: Option<u64>,
    ping_interval_secs: Option<u64>,
    job_queue_ttl_secs: Option<u64>,
    lost_grace_secs: Option<u64>,
    sweep_interval_ms: Option<u64>,
    max_connections: Option<usize>,
    max_unauthenticated: Option<usize>,
    max_unauthenticated_per_source: Option<usize>,
    max_unauthenticated_per_48: Option<usize>,
    unauthenticated_failures_per_sec: Option<f64>,
    auth_timeout_ms: Option<u64>,
    admin_header_timeout_ms: Option<u64>,
    admin_idle_timeout_ms: Option<u64>,
    admin_max_connections: Option<usize>,
    report_quota_bytes: Option<u64>,
    unmatched_report_quota: Option<u64>,
    report_rate_bytes_per_sec: Option<u64>,
    report_retention_days: Option<u64>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    signing_key_file: Option<PathBuf>,
    ui_secure_cookie: Option<bool>,
    listener_name: Option<String>,
    /// `[[notify]]` blocks: webhooks (docs/fleet-schedules.md#notifications).
    notify: Option<Vec<cc_listener::notify::SinkConfig>>,
    notify_queue_max: Option<u64>,
    notify_max_attempts: Option<u32>,
    notify_retry_base_ms: Option<u64>,
    notify_retry_cap_secs: Option<u64>,
    notify_timeout_secs: Option<u64>,
    notify_offline_grace_secs: Option<u64>,
}

fn load_file(path: &Path) -> Result<FileConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn settings(args: &ServeArgs) -> Result<(Settings, String)> {
    let (s, token_file) = file_settings(args)?;
    let token = admin_token(token_file)?;
    Ok((s, token))
}

/// The settings from the config file and flags, and the operator token's
/// file if one is named (read by [`admin_token`], or checked by `check`).
fn file_settings(args: &ServeArgs) -> Result<(Settings, Option<PathBuf>)> {
    let file = match &args.config {
        Some(p) => load_file(p)?,
        None => FileConfig::default(),
    };
    let db = args
        .db
        .clone()
        .or(file.db.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DB));
    let mut s = Settings::new(cc_listener::db_location(&db)?);
    if let Some(a) = args.listen.or(file.listen) {
        s.listen = a;
    }
    if let Some(a) = args.admin_listen.or(file.admin_listen) {
        s.admin_listen = a;
    }
    if let Some(path) = args
        .signing_key_file
        .clone()
        .or(file.signing_key_file.clone())
    {
        s.signing_key = Some(std::sync::Arc::new(signing_key(&path)?));
    }
    apply_intervals(&mut s, &file)?;
    if let Some(name) = file.listener_name.clone() {
        anyhow::ensure!(
            !name.is_empty() && name.len() <= 128 && !name.chars().any(char::is_control),
            "listener_name must be 1 to 128 characters, none of them a control character"
        );
        s.listener_name = Some(name);
    }
    if let Some(b) = file.ui_secure_cookie {
        s.ui_secure_cookie = b;
    }
    apply_limits(&mut s, &file)?;
    apply_notify(&mut s, &file)?;
    s.tls = match (file.tls_cert_file, file.tls_key_file) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        (None, None) => None,
        _ => bail!("tls_cert_file and tls_key_file go together"),
    };
    Ok((s, args.admin_token_file.clone().or(file.admin_token_file)))
}

/// The key this listener signs unsigned system-mode work with, from a
/// `ccctl keygen` file; logged, since hosts that trust it trust the
/// listener.
fn signing_key(path: &Path) -> Result<ring::signature::Ed25519KeyPair> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the signing key {}", path.display()))?;
    let key = cc_proto::sign::key_pair_from_pem(&text)
        .with_context(|| format!("the signing key {}", path.display()))?;
    tracing::warn!(
        key = %cc_proto::sign::public_id(&key),
        "this listener signs system-mode work posted unsigned: hosts that trust this key trust the listener"
    );
    Ok(key)
}

/// The config file's intervals: heartbeat, ping, queue time, lost grace,
/// sweep.
fn apply_intervals(s: &mut Settings, file: &FileConfig) -> Result<()> {
    let secs = |v: Option<u64>, name: &str| -> Result<Option<Duration>> {
        match v {
            Some(0) => bail!("{name} must be at least 1"),
            other => Ok(other.map(Duration::from_secs)),
        }
    };
    if let Some(d) = secs(file.heartbeat_interval_secs, "heartbeat_interval_secs")? {
        s.heartbeat_interval = d;
    }
    if let Some(d) = secs(file.ping_interval_secs, "ping_interval_secs")? {
        s.ping_interval = d;
    }
    if let Some(d) = secs(file.job_queue_ttl_secs, "job_queue_ttl_secs")? {
        s.job_queue_ttl = d;
    }
    if let Some(d) = file.lost_grace_secs {
        s.lost_grace = Duration::from_secs(d);
    }
    if let Some(ms) = file.sweep_interval_ms {
        s.sweep_interval = Duration::from_millis(ms.max(10));
    }
    Ok(())
}

/// The config file's limits: connections, the unregistered budget,
/// timeouts on the operator address, report quotas, rate and retention.
fn apply_limits(s: &mut Settings, file: &FileConfig) -> Result<()> {
    if let Some(n) = file.max_connections {
        s.max_connections = n.max(1);
    }
    if let Some(n) = file.max_unauthenticated {
        s.max_unauthenticated = n.max(1);
    }
    if let Some(n) = file.max_unauthenticated_per_source {
        s.max_unauthenticated_per_source = n.max(1);
    }
    if let Some(n) = file.max_unauthenticated_per_48 {
        s.max_unauthenticated_per_48 = n.max(1);
    }
    if let Some(r) = file.unauthenticated_failures_per_sec {
        anyhow::ensure!(
            r.is_finite() && (0.01..=1_000_000.0).contains(&r),
            "unauthenticated_failures_per_sec must be 0.01 to 1000000"
        );
        s.unauthenticated_failures_per_sec = r;
    }
    if let Some(ms) = file.auth_timeout_ms {
        anyhow::ensure!(
            (100..=60_000).contains(&ms),
            "auth_timeout_ms must be 100 to 60000"
        );
        s.auth_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = file.admin_header_timeout_ms {
        anyhow::ensure!(
            (100..=60_000).contains(&ms),
            "admin_header_timeout_ms must be 100 to 60000"
        );
        s.admin_header_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = file.admin_idle_timeout_ms {
        anyhow::ensure!(
            (100..=3_600_000).contains(&ms),
            "admin_idle_timeout_ms must be 100 to 3600000"
        );
        s.admin_idle_timeout = Duration::from_millis(ms);
    }
    if let Some(n) = file.admin_max_connections {
        s.admin_max_connections = n.max(1);
    }
    if let Some(n) = file.report_quota_bytes {
        s.report_limits.quota_bytes = n;
    }
    if let Some(n) = file.unmatched_report_quota {
        s.report_limits.unmatched = n;
    }
    if let Some(n) = file.report_rate_bytes_per_sec {
        anyhow::ensure!(
            n >= 1 << 20,
            "report_rate_bytes_per_sec must be at least 1048576 (one report of the largest size a second)"
        );
        s.report_rate_bytes = n;
    }
    if let Some(days) = file.report_retention_days {
        s.report_retention = (days > 0).then(|| Duration::from_secs(days * 24 * 3600));
    }
    Ok(())
}

/// The `[[notify]]` sinks (each secret file read and checked now) and the
/// queue's settings.
fn apply_notify(s: &mut Settings, file: &FileConfig) -> Result<()> {
    use cc_listener::notify::{Sink, check_unique};
    let sinks = file
        .notify
        .iter()
        .flatten()
        .map(Sink::from_config)
        .collect::<Result<Vec<_>>>()?;
    check_unique(&sinks)?;
    s.notify = sinks.into_iter().map(std::sync::Arc::new).collect();
    let t = &mut s.notify_tuning;
    if let Some(n) = file.notify_queue_max {
        anyhow::ensure!(
            (1..=10_000_000).contains(&n),
            "notify_queue_max must be 1 to 10000000"
        );
        t.queue_max = n;
    }
    if let Some(n) = file.notify_max_attempts {
        anyhow::ensure!(
            (1..=100).contains(&n),
            "notify_max_attempts must be 1 to 100"
        );
        t.max_attempts = n;
    }
    if let Some(ms) = file.notify_retry_base_ms {
        anyhow::ensure!(
            (10..=3_600_000).contains(&ms),
            "notify_retry_base_ms must be 10 to 3600000"
        );
        t.retry_base = Duration::from_millis(ms);
    }
    if let Some(secs) = file.notify_retry_cap_secs {
        anyhow::ensure!(
            (1..=86_400).contains(&secs),
            "notify_retry_cap_secs must be 1 to 86400"
        );
        t.retry_cap = Duration::from_secs(secs);
    }
    if let Some(secs) = file.notify_timeout_secs {
        anyhow::ensure!(
            (1..=300).contains(&secs),
            "notify_timeout_secs must be 1 to 300"
        );
        t.timeout = Duration::from_secs(secs);
    }
    if let Some(secs) = file.notify_offline_grace_secs {
        anyhow::ensure!(
            secs <= 86_400,
            "notify_offline_grace_secs must be 0 to 86400"
        );
        t.offline_grace = Duration::from_secs(secs);
    }
    Ok(())
}

/// The operator token: from its file, else `CC_ADMIN_TOKEN` (at least 16
/// characters); none is an error.
fn admin_token(path: Option<PathBuf>) -> Result<String> {
    let token = match path {
        Some(path) => read_token_file(&path)?,
        None => match std::env::var("CC_ADMIN_TOKEN") {
            Ok(t) if t.len() >= 16 => t,
            Ok(_) => bail!("CC_ADMIN_TOKEN must be at least 16 characters"),
            Err(_) => bail!(
                "no operator API token: pass --admin-token-file or set CC_ADMIN_TOKEN (the API refuses to start without one)"
            ),
        },
    };
    Ok(token)
}

fn serve(args: &ServeArgs) -> Result<()> {
    let (settings, token) = settings(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // Storage calls run on the blocking pool, and SQLite serialises
        // writers anyway: a few threads do the work, where tokio's default
        // of up to 512 would only add stacks and malloc arenas under a burst
        // of registrations.
        .max_blocking_threads(4)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let bound = cc_listener::bind(&settings).await?;
        // One line on stdout with the real addresses (ports may be 0), once
        // the store is open: a listener whose database fails prints only
        // the error. The operators' base URL is what `CC_URL` takes (ccctl
        // adds `/api/v1`).
        let scheme = if settings.tls.is_some() { "wss" } else { "ws" };
        let (agent, admin) = (bound.agent_addr, bound.admin_addr);
        let banner = move || {
            println!(
                "cc-listener: agents on {scheme}://{agent}/agent, operators on http://{admin}/ \
                 (CC_URL=http://{admin}, console http://{admin}/ui/)"
            );
        };
        cc_listener::serve(settings, token, bound, banner, shutdown_signal()).await
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

fn keys(command: &KeysCommand) -> Result<()> {
    match command {
        KeysCommand::Add {
            name,
            hostname,
            tags,
            db,
        } => {
            let (name, hostname) = cc_listener::key_spec(name, hostname.as_deref())
                .map_err(|(field, e)| anyhow::anyhow!("key {field}: {e}"))?;
            if let Some(t) = tags {
                cc_proto::Tag::parse_all(t).context("key tags")?;
            }
            let key = Store::open_at(&cc_listener::db_location(db)?)?.add_key_tagged(
                &name,
                hostname.as_deref(),
                tags.as_deref(),
                now_ms(),
            )?;
            println!("{key}");
        }
        KeysCommand::List { db } => {
            for k in Store::open_at(&cc_listener::db_location(db)?)?.list_keys()? {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    k.name,
                    k.hostname.as_deref().unwrap_or("-"),
                    cc_listener::rfc3339_ms(k.created_ms),
                    if k.revoked { "revoked" } else { "active" },
                    k.tags.map_or_else(|| "-".to_owned(), |t| t.join(","))
                );
            }
        }
        KeysCommand::Revoke { name, db } => {
            Store::open_at(&cc_listener::db_location(db)?)?.revoke_key(name, now_ms())?;
            eprintln!("revoked {name}");
        }
    }
    Ok(())
}

fn operators(command: &OperatorsCommand) -> Result<()> {
    use cc_listener::store::{AuditEntry, NewOperator};
    // What this command did goes into the audit log too, as done locally
    // by whoever could open the database (`-`: no operator token).
    let audit = |store: &Store, action: &str, target: &str, outcome: u16| {
        store.append_audit(&AuditEntry {
            at_ms: now_ms(),
            operator: "-".into(),
            source: "local".into(),
            action: format!("cc-listener operators {action}"),
            target: target.into(),
            ids: Vec::new(),
            outcome,
        })
    };
    match command {
        OperatorsCommand::Add {
            name,
            role,
            hosts,
            expires,
            db,
        } => {
            let (name, role, hosts) =
                cc_listener::auth::operator_spec(name, role, hosts.as_deref())
                    .map_err(|(field, e)| anyhow::anyhow!("operator {field}: {e}"))?;
            let now = now_ms();
            let expires_ms = expires
                .map(|d| cc_listener::auth::expires_ms(now, d))
                .transpose()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let store = Store::open_at(&cc_listener::db_location(db)?)?;
            let op = NewOperator {
                name: &name,
                role,
                hosts: &hosts,
                expires_ms,
            };
            let token = store.add_operator(&op, now)?;
            audit(&store, "add", &name, 201)?;
            println!("{token}");
        }
        OperatorsCommand::List { db } => {
            let now = now_ms();
            for o in Store::open_at(&cc_listener::db_location(db)?)?.list_operators()? {
                let state = match (o.revoked_ms, o.expires_ms) {
                    (Some(_), _) => "revoked",
                    (None, Some(e)) if e <= now => "expired",
                    _ => "active",
                };
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    o.name,
                    o.role,
                    o.hosts,
                    cc_listener::rfc3339_ms(o.created_ms),
                    o.expires_ms
                        .map_or_else(|| "-".to_owned(), cc_listener::rfc3339_ms),
                    state
                );
            }
        }
        OperatorsCommand::Revoke { name, db } => {
            let store = Store::open_at(&cc_listener::db_location(db)?)?;
            store.revoke_operator(name, now_ms())?;
            audit(&store, "revoke", name, 204)?;
            eprintln!("revoked {name}");
        }
    }
    Ok(())
}

fn migrate(from: &Path, to: &Path) -> Result<()> {
    let (from, to) = (
        cc_listener::db_location(from)?,
        cc_listener::db_location(to)?,
    );
    anyhow::ensure!(from != to, "--from and --to name the same database");
    // The source is judged before anything is opened: a refusal creates
    // nothing, on either side.
    let _copying = source_lock(&from)?;
    match Store::schema_version(&from)? {
        Some(v) if v.current > 0 => {}
        _ => bail!("--from {from}: not a listener's database (no schema in it)"),
    }
    let src = Store::open_at(&from)?;
    if let DbLocation::Postgres(_) = from {
        // Listeners on PostgreSQL hold no lock a copy could take; their
        // leases say who runs (or was SIGKILLed less than a lease ago).
        let live = src.live_listeners(now_ms())?;
        if let Some((name, until)) = live.first() {
            bail!(
                "--from {from}: {} listener(s) use it ({name} holds a lease until {}); \
                 stop them first (a stopped listener's lease runs out in {} s)",
                live.len(),
                cc_listener::rfc3339_ms(*until),
                cc_listener::store::LEASE_MS / 1000
            );
        }
    }
    let dst = Store::open_at(&to)?;
    let started = std::time::Instant::now();
    let copied = src.copy_into(&dst)?;
    for (table, n) in &copied {
        println!("{table}\t{n}");
    }
    eprintln!(
        "copied {from} into {to} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What `migrate` needs of a SQLite source before anything reads it: a
/// file that exists and that no listener serves (its lock, kept for the
/// copy, so none starts on it meanwhile). A PostgreSQL source is checked
/// once open (its leases, in `migrate`); a database that does not exist is
/// PostgreSQL's own error.
fn source_lock(from: &DbLocation) -> Result<Option<FileLock>> {
    let DbLocation::Sqlite(path) = from else {
        return Ok(None);
    };
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => bail!("--from {}: not a file", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "--from {}: no such file (nothing was copied or created; is the path right?)",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("--from {}", path.display())),
    }
    let lock = FileLock::try_exclusive(path)?.ok_or_else(|| {
        anyhow::anyhow!(
            "--from {}: a running cc-listener serves it; stop the listener first \
             (a copy of a database that changes under it would lose what it writes)",
            path.display()
        )
    })?;
    Ok(Some(lock))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CC_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(|| cc_proto::logline::OneLine(std::io::stderr()))
        // Colour only on a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match &cli.command {
        Command::Serve(args) => serve(args),
        Command::Check(args) => {
            return if check::run(args) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        Command::Keys { command } => keys(command),
        Command::Operators { command } => operators(command),
        Command::Migrate { from, to } => migrate(from, to),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cc-listener: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
