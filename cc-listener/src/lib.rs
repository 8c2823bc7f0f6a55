//! `cc-listener`: accepts agents on `/agent`, orchestrates jobs and cron
//! definitions, stores every report, and serves the operator API.
//!
//! - [`agents`]: the WebSocket endpoint, one task per connection.
//! - [`hub`]: live connections by hostname.
//! - [`api`]: the operator HTTP API.
//! - [`auth`]: named operators, their roles and host selectors.
//! - `admin`: serves it (and the console) within the operator address's
//!   limits: header and idle timeouts, a connection cap.
//! - [`ui`]: the web console (`/ui/`) on the operator address.
//! - [`store`]: SQLite; the only module that touches storage.
//! - [`metrics`]: Prometheus metrics (`GET /metrics`).
#![forbid(unsafe_code)]

mod admin;
pub mod agents;
pub mod api;
pub mod auth;
pub mod doorbell;
pub mod fleet;
pub mod hub;
pub mod metrics;
pub mod nextrun;
pub mod notify;
pub mod pending;
pub mod pgtls;
pub mod schedules;
pub mod sql;
pub mod store;
pub mod ui;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::hub::Hub;
use crate::store::{Db, Store};

/// Everything `serve` needs, resolved from flags, config file and defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub db: store::DbLocation,
    /// How often agents are expected to heartbeat; three intervals of
    /// silence and the agent is dropped as offline.
    pub heartbeat_interval: Duration,
    /// WebSocket ping period (finds dead TCP).
    pub ping_interval: Duration,
    /// From the first byte to a valid `register` (TLS, the WebSocket
    /// handshake with the key check, and `register`): longer and the
    /// connection is closed.
    pub auth_timeout: Duration,
    /// Connections that have not presented a valid key yet, in all; when
    /// full, the oldest that has not sent a byte is closed to admit a new
    /// one ([`pending`]).
    pub max_unauthenticated: usize,
    /// Unregistered connections from one source address (an IPv6 /64);
    /// further ones from it are closed at once. Also a source's burst of
    /// failed connections.
    pub max_unauthenticated_per_source: usize,
    /// Unregistered connections from one IPv6 /48.
    pub max_unauthenticated_per_48: usize,
    /// Connections a second that may end without a valid key, per source
    /// (a /48: four times that), sustained; a source over it is refused.
    pub unauthenticated_failures_per_sec: f64,
    /// What one host's reports may take in the store.
    pub report_limits: store::ReportLimits,
    /// Report bytes per second one connection may have stored; faster
    /// senders are paced (their next message is read later).
    pub report_rate_bytes: u64,
    /// Reports older than this are deleted (their bytes return to their
    /// host's quota); `None` keeps them for ever.
    pub report_retention: Option<Duration>,
    /// How long a job for an offline agent waits before it expires.
    pub job_queue_ttl: Duration,
    /// A sent job with no report after `timeout + lost_grace` is lost.
    pub lost_grace: Duration,
    /// How often lost/expired jobs are swept and queued jobs retried.
    pub sweep_interval: Duration,
    /// Registered agents at once; an agent over it is closed (1013).
    pub max_connections: usize,
    /// The operator address: from a connection's accept, or from the first
    /// byte of a later request on it, to the end of that request's head;
    /// longer and the connection is closed unanswered.
    pub admin_header_timeout: Duration,
    /// The operator address: a kept-alive connection with no request in
    /// flight (and no byte of the next one) is closed after this long.
    pub admin_idle_timeout: Duration,
    /// Connections to the operator address at once; one over it is closed
    /// as soon as it is accepted.
    pub admin_max_connections: usize,
    pub tls: Option<TlsFiles>,
    /// Signs system-mode work posted unsigned, on the operator API's
    /// behalf (`--signing-key-file`): convenient and weaker — whoever owns
    /// this listener owns every host that trusts this key.
    pub signing_key: Option<Arc<ring::signature::Ed25519KeyPair>>,
    /// The console's session cookie carries `Secure`: set it when the
    /// operator address is reached through a TLS proxy.
    pub ui_secure_cookie: bool,
    /// This listener's name among several sharing one database (which
    /// listener holds which agent); by default `MACHINE:PORT`, the
    /// machine's hostname and the agent port it is bound to.
    pub listener_name: Option<String>,
    /// `[[notify]]` sinks (webhooks), and how their queue is run.
    pub notify: Vec<Arc<notify::Sink>>,
    pub notify_tuning: notify::Tuning,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Settings {
    pub fn new(db: impl Into<store::DbLocation>) -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8081)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 8082)),
            db: db.into(),
            heartbeat_interval: Duration::from_secs(60),
            ping_interval: Duration::from_secs(30),
            auth_timeout: Duration::from_secs(3),
            max_unauthenticated: 2048,
            max_unauthenticated_per_source: 128,
            max_unauthenticated_per_48: 512,
            unauthenticated_failures_per_sec: 4.0,
            report_limits: store::ReportLimits::default(),
            report_rate_bytes: 4 << 20,
            report_retention: Some(Duration::from_secs(30 * 24 * 3600)),
            job_queue_ttl: Duration::from_secs(3600),
            lost_grace: Duration::from_secs(60),
            sweep_interval: Duration::from_secs(1),
            max_connections: 20_000,
            admin_header_timeout: Duration::from_secs(10),
            admin_idle_timeout: Duration::from_secs(60),
            admin_max_connections: 512,
            tls: None,
            signing_key: None,
            ui_secure_cookie: false,
            listener_name: None,
            notify: Vec::new(),
            notify_tuning: notify::Tuning::default(),
        }
    }
}

#[derive(Debug)]
pub struct AppState {
    pub db: Db,
    pub hub: Hub,
    pub settings: Settings,
    pub admin_token: String,
    pub shutdown: watch::Receiver<bool>,
    /// Reports refused per host since the listener started.
    pub refusals: Refusals,
    /// Group commit for reports and job hand-overs.
    pub writer: store::Writer,
    /// The web console's logged-in operators.
    pub sessions: ui::Sessions,
    pub metrics: Arc<metrics::Metrics>,
    /// The live named operators, by token hash (`auth::resolve`).
    pub operators: auth::Operators,
    /// Feeds the missed-run tracker (`schedules::task`).
    pub schedules: schedules::task::Schedules,
}

/// Reports refused per host (quota, unmatched): what `GET /agents` shows.
/// In memory: a refused report is sent again, so counting it on disk
/// would make every refusal a write.
#[derive(Debug, Default)]
pub struct Refusals(std::sync::Mutex<std::collections::HashMap<String, (u64, String)>>);

impl Refusals {
    pub fn record(&self, host: &str, why: &str) {
        let mut m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let e = m.entry(host.to_owned()).or_default();
        e.0 += 1;
        why.clone_into(&mut e.1);
    }

    /// (count, last reason) for `host`.
    pub fn get(&self, host: &str) -> Option<(u64, String)> {
        let m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.get(host).cloned()
    }
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| cc_proto::Timestamp::from_datetime(t).to_string())
        .unwrap_or_default()
}

/// The TLS acceptor of `tls_cert_file` and `tls_key_file` (also what
/// `cc-listener check` tries).
pub fn load_tls(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let certs = CertificateDer::pem_file_iter(&files.cert)
        .with_context(|| format!("reading {}", files.cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", files.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading a private key from {}", files.key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("certificate and key do not form a usable pair")?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Bound sockets, ready to serve: binding is separate so the caller can print
/// the real addresses (port 0 in tests) before serving.
#[derive(Debug)]
pub struct Bound {
    agent: TcpListener,
    admin: TcpListener,
    pub agent_addr: SocketAddr,
    pub admin_addr: SocketAddr,
}

pub async fn bind(settings: &Settings) -> Result<Bound> {
    let agent = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding the agent listener on {}", settings.listen))?;
    let admin = TcpListener::bind(settings.admin_listen)
        .await
        .with_context(|| format!("binding the operator API on {}", settings.admin_listen))?;
    Ok(Bound {
        agent_addr: agent.local_addr()?,
        admin_addr: admin.local_addr()?,
        agent,
        admin,
    })
}

/// Serves agents and the operator API until `stop` resolves, then closes
/// every agent connection (1001) and returns. `ready` runs once the store
/// is open and every task started (the addresses' banner: never printed
/// by a listener whose database failed).
pub async fn serve(
    settings: Settings,
    admin_token: String,
    bound: Bound,
    ready: impl FnOnce(),
    stop: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let name = settings.listener_name.clone().unwrap_or_else(|| {
        let machine = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "listener".into());
        format!("{machine}:{}", bound.agent_addr.port())
    });
    // PostgreSQL's client blocks: opened (and at the end dropped) off the
    // runtime's threads.
    let at = settings.db.clone();
    let held = name.clone();
    let store = tokio::task::spawn_blocking(move || Store::open_at(&at)?.held_as(&held))
        .await
        .context("opening the store")??;
    let tls = settings.tls.as_ref().map(load_tls).transpose()?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let db = Db::new(store);
    let metrics = Arc::new(metrics::Metrics::new());
    db.store().observe_writes(metrics.store_observer());
    let m = Arc::clone(&metrics);
    let writer = store::Writer::spawn(db.clone(), move |took, n, waited| {
        m.commit(took, n, waited);
    });
    let (schedules, schedule_feed) = schedules::task::Schedules::channel();
    let state = Arc::new(AppState {
        schedules,
        db,
        writer,
        metrics,
        hub: Hub::default(),
        settings: settings.clone(),
        admin_token,
        shutdown: shutdown_rx.clone(),
        refusals: Refusals::default(),
        sessions: ui::Sessions::default(),
        operators: auth::Operators::default(),
    });
    auth::reload(&state)
        .await
        .context("reading the operators")?;
    let operators = tokio::spawn(auth::reload_loop(Arc::clone(&state), shutdown_rx.clone()));

    let agents = tokio::spawn(agents::accept_loop(
        bound.agent,
        Arc::clone(&state),
        tls,
        shutdown_rx.clone(),
    ));
    let background = spawn_background(&state, schedule_feed, &shutdown_rx);
    // Other listeners on the same PostgreSQL database queue jobs and write
    // events this one must act on.
    let doorbell = match &settings.db {
        store::DbLocation::Postgres(url) => {
            doorbell::spawn(url.clone(), Arc::clone(&state), shutdown_rx.clone())
        }
        store::DbLocation::Sqlite(_) => None,
    };
    let api = tokio::spawn(admin::serve(
        bound.admin,
        api::router(Arc::clone(&state)),
        admin::Limits::of(&settings),
        Arc::clone(&state.metrics),
        shutdown_rx.clone(),
    ));
    info!(
        agents = %bound.agent_addr,
        admin = %bound.admin_addr,
        tls = settings.tls.is_some(),
        db = %settings.db,
        listener = %name,
        "listening"
    );
    ready();
    // Under systemd (Type=notify), started means serving: `systemctl start`
    // returns once both addresses answer, and a listener that cannot open
    // its store or bind is a failed start, not a started unit that exits.
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        warn!("could not tell systemd the listener is ready: {e}");
    }

    stop.await;
    info!("shutting down");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    // Every task watches this: connections close with 1001.
    let _ = shutdown_tx.send(true);
    let _ = agents.await;
    for t in background {
        let _ = t.await;
    }
    let _ = operators.await;
    if let Some(d) = doorbell {
        let _ = tokio::task::spawn_blocking(move || d.join()).await;
    }
    if let Err(e) = api.await {
        warn!("operator API task failed: {e}");
    }
    // Give connection tasks a moment to send their close frames.
    for _ in 0..50 {
        if state.hub.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = tokio::task::spawn_blocking(move || drop(state)).await;
    Ok(())
}

/// The listener's background tasks, each ending with `shutdown`: the
/// sweeper, the notifier, the fleet cron push and the missed-runs tracker.
fn spawn_background(
    state: &Arc<AppState>,
    schedule_feed: tokio::sync::mpsc::Receiver<schedules::task::Feed>,
    shutdown: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = vec![tokio::spawn(sweep_loop(
        Arc::clone(state),
        shutdown.clone(),
    ))];
    tasks.extend(notify::spawn(state, shutdown));
    // Fleet cron changes (through any listener) pushed to the hosts held here.
    tasks.push(tokio::spawn(fleet::push::watch_loop(
        Arc::clone(state),
        shutdown.clone(),
    )));
    tasks.push(tokio::spawn(schedules::task::run(
        Arc::clone(state),
        schedule_feed,
        shutdown.clone(),
    )));
    tasks
}

/// How often the sweep deletes what is past the retention, at most.
const PRUNE_EVERY_MS: i64 = 60_000;

/// Most batches of each kind one prune deletes: as many as a sweep a
/// second used to.
const PRUNE_BATCHES: usize = 60;

/// Every how many sweeps the sweep nudges every connected host with
/// queued jobs even when nothing called for it.
const NUDGE_PASS_EVERY: u64 = 10;

/// Marks overdue jobs lost and stale queued jobs expired, has connected
/// agents take their queued jobs, and drops connections whose key was
/// revoked.
async fn sweep_loop(state: Arc<AppState>, mut shutdown: watch::Receiver<bool>) {
    // Listeners started together would sweep together, every interval: a
    // burst of every listener's statements at once on the shared
    // database. Each starts at its own point in the interval instead.
    let every = state.settings.sweep_interval;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + phase(every), every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let grace = i64::try_from(state.settings.lost_grace.as_millis()).unwrap_or(i64::MAX / 2);
    let mut renewed = now_ms();
    let (mut sweeps, mut pruned) = (0u64, i64::MIN);
    let postgres = state.db.store().dialect() == store::Dialect::Postgres;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        sweeps += 1;
        // A third of the lease: two renewals may fail before it runs out.
        if now_ms() - renewed >= store::LEASE_MS / 3 {
            renewed = now_ms();
            if let Err(e) = state.db.call(|s| s.renew_lease(now_ms())).await {
                warn!("renewing this listener's lease failed: {e:#}");
            }
        }
        let swept = match state.db.call(move |s| s.sweep(now_ms(), grace)).await {
            Ok((0, 0)) => false,
            Ok((lost, expired)) => {
                state.metrics.jobs_swept(lost, expired);
                info!(lost, expired, "jobs swept");
                true
            }
            Err(e) => {
                warn!("sweep failed: {e:#}");
                false
            }
        };
        // Retention is counted in days: once a minute is enough, and each
        // prune reads every ended job.
        if let Some(keep) = state
            .settings
            .report_retention
            .filter(|_| now_ms().saturating_sub(pruned) >= PRUNE_EVERY_MS)
        {
            pruned = now_ms();
            let before = now_ms() - i64::try_from(keep.as_millis()).unwrap_or(i64::MAX / 2);
            prune(&state, before).await;
        }
        // Queued jobs of connected hosts: with room in a window a lost job
        // freed or in a batch a lost or expired job freed (this sweep found
        // some), or whose nudge was lost — on PostgreSQL while the
        // notification connection was down (then every sweep), or by a
        // fault nobody foresaw (every `NUDGE_PASS_EVERY`th sweep). Not every
        // sweep: it reads every queued job, and a fan-out queues one per
        // host.
        let due =
            swept || sweeps % NUDGE_PASS_EVERY == 0 || (postgres && !state.metrics.doorbell_up());
        if due {
            match state.db.call(|s| s.hosts_with_queued(now_ms())).await {
                Ok(hosts) => {
                    for h in hosts {
                        state.hub.nudge(&h);
                    }
                }
                Err(e) => warn!("reading queued jobs failed: {e:#}"),
            }
        }
        if let Err(e) = close_revoked(&state).await {
            warn!("reading revoked keys failed: {e:#}");
        }
    }
}

/// A random point in `every`, the first sweep's delay (none without
/// randomness: the sweep then starts at once, as it did before).
fn phase(every: Duration) -> Duration {
    let mut r = [0u8; 4];
    match getrandom::fill(&mut r) {
        Ok(()) => every.mul_f64(f64::from(u32::from_le_bytes(r)) / (f64::from(u32::MAX) + 1.0)),
        Err(_) => Duration::ZERO,
    }
}

/// Deletes what ended before `before_ms`: reports, events, jobs, audit
/// rows, each in batches (a transaction each) while a batch comes back
/// full, up to [`PRUNE_BATCHES`] of them a pass.
async fn prune(state: &AppState, before_ms: i64) {
    type Prune = fn(&store::Store, i64, u32) -> Result<usize>;
    let kinds: [(&str, u32, Prune); 4] = [
        ("reports", 1000, store::Store::prune_reports),
        ("events", 5000, store::Store::prune_events),
        ("jobs", 1000, store::Store::prune_jobs),
        // The chain's anchor moves to the last row deleted.
        ("audit rows", 5000, store::Store::prune_audit),
    ];
    for (what, batch, run) in kinds {
        let mut deleted = 0;
        for _ in 0..PRUNE_BATCHES {
            match state.db.call(move |s| run(s, before_ms, batch)).await {
                Ok(n) => {
                    deleted += n;
                    if n < batch as usize {
                        break;
                    }
                }
                Err(e) => {
                    warn!("deleting old {what} failed: {e:#}");
                    break;
                }
            }
        }
        if deleted > 0 {
            info!(deleted, "{what} past the retention deleted");
        }
    }
}

/// Closes every live connection whose key has been revoked (by `keys
/// revoke` in another process, found by the sweep, or by the API at once).
pub(crate) async fn close_revoked(state: &AppState) -> Result<()> {
    let revoked = state.db.call(|s| s.revoked_key_ids()).await?;
    if revoked.is_empty() {
        return Ok(());
    }
    for (host, key) in state.hub.keys() {
        if revoked.contains(&key) {
            warn!(hostname = %host, "API key revoked: disconnecting");
            state.hub.close(&host, "API key revoked");
        }
    }
    Ok(())
}

/// What `--db` (and the config's `db`) names: a SQLite file, given as a
/// path or as `sqlite:PATH`, or a PostgreSQL database, given as a
/// `postgres://` (or `postgresql://`) URL that several listeners share.
pub fn db_location(raw: &Path) -> Result<store::DbLocation> {
    let text = raw.to_string_lossy();
    if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        let url = text.into_owned();
        // Read now, so a typo in it (TLS settings included) stops the
        // start with the setting named.
        pgtls::Target::parse(&url)
            .map_err(|e| anyhow::anyhow!("--db {:?}: {e:#}", redact_url(&url)))?;
        return Ok(store::DbLocation::Postgres(url));
    }
    let path = match text.strip_prefix("sqlite:") {
        Some(rest) => PathBuf::from(rest.strip_prefix("//").unwrap_or(rest)),
        None => raw.to_owned(),
    };
    anyhow::ensure!(
        !path.as_os_str().is_empty(),
        "--db is empty: give a SQLite file (a path or sqlite:PATH) or a postgres:// URL"
    );
    Ok(store::DbLocation::Sqlite(path))
}

/// A database URL without its password, for messages.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// Why a key's name or hostname was refused: the field, and the message.
pub type KeySpecError = (&'static str, String);

/// A new key's name (a job-id-like word) and the hostname it is bound to,
/// canonical (lowercase) like every hostname. `keys add` and
/// `POST /api/v1/keys` take the same.
pub fn key_spec(
    name: &str,
    hostname: Option<&str>,
) -> std::result::Result<(String, Option<String>), KeySpecError> {
    cc_proto::JobId::parse(name)
        .map_err(|e| ("name", e.to_string().replacen("job id", "name", 1)))?;
    let hostname = hostname
        .map(cc_proto::Hostname::parse)
        .transpose()
        .map_err(|e| ("hostname", e.to_string()))?
        .map(|h| h.to_string());
    Ok((name.to_owned(), hostname))
}

/// Reads the admin token from a file (first line, trimmed).
pub fn read_token_file(path: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    anyhow::ensure!(
        token.len() >= 16,
        "{}: the admin token must be at least 16 characters",
        path.display()
    );
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each listener's first sweep comes at its own point in the
    /// interval: within it, and not the same point every time.
    #[test]
    fn sweeps_start_at_a_random_point_in_the_interval() {
        let every = Duration::from_secs(1);
        let phases: Vec<Duration> = (0..64).map(|_| phase(every)).collect();
        assert!(phases.iter().all(|p| *p < every), "{phases:?}");
        let spread = *phases.iter().max().unwrap() - *phases.iter().min().unwrap();
        assert!(spread > every / 4, "64 phases within {spread:?}");
    }

    #[test]
    fn db_takes_a_path_sqlite_or_postgres_and_never_shows_the_password() {
        use store::DbLocation::{Postgres, Sqlite};
        let sqlite = |p: &str| Sqlite(PathBuf::from(p));
        assert_eq!(
            db_location(Path::new("/var/lib/cc.db")).unwrap(),
            sqlite("/var/lib/cc.db")
        );
        assert_eq!(
            db_location(Path::new("sqlite:/tmp/x.db")).unwrap(),
            sqlite("/tmp/x.db")
        );
        assert_eq!(
            db_location(Path::new("sqlite:///tmp/x.db")).unwrap(),
            sqlite("/tmp/x.db")
        );
        assert_eq!(
            db_location(Path::new("sqlite:rel.db")).unwrap(),
            sqlite("rel.db")
        );
        for empty in ["", "sqlite:"] {
            assert!(
                db_location(Path::new(empty))
                    .unwrap_err()
                    .to_string()
                    .contains("empty")
            );
        }
        let url = "postgres://cc:s3cret@db.example/cc";
        let at = db_location(Path::new(url)).unwrap();
        assert_eq!(at, Postgres(url.into()));
        let shown = at.to_string();
        assert!(
            !shown.contains("s3cret") && shown.contains("db.example"),
            "{shown}"
        );
        assert_eq!(
            db_location(Path::new("postgresql://h/cc")).unwrap(),
            Postgres("postgresql://h/cc".into())
        );
        let e = db_location(Path::new("postgres://cc:s3cret@db.example:notaport/cc"))
            .unwrap_err()
            .to_string();
        assert!(!e.contains("s3cret") && e.contains("db.example"), "{e}");
        // TLS settings, as libpq spells them, are taken; a mode that needs
        // a CA without one is refused with the setting named.
        let tls = "postgres://cc:s3cret@db.example/cc?sslmode=require";
        assert_eq!(db_location(Path::new(tls)).unwrap(), Postgres(tls.into()));
        let e = db_location(Path::new(
            "postgres://cc:s3cret@db.example/cc?sslmode=verify-full",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("sslrootcert") && !e.contains("s3cret"), "{e}");
    }
}
