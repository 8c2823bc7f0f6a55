//! The agent's link to the listener: connect, register, heartbeat, take
//! jobs and cron lists, send the outbox, reconnect until stopped.
//!
//! Jobs outlive connections: they are validated on arrival and held by
//! `jobs.rs`, which starts at most `max_concurrent_jobs` at once, and each
//! report goes to the outbox before anything is sent. Every connection
//! starts by sending the whole outbox; a report leaves the outbox only on
//! `report_ack`, or on `report_rejected` (refused for good, with a warning).
//!
//! SIGTERM (or SIGINT) stops the agent gracefully: no new job is taken and
//! the ones held but not started are let go (the listener still has them
//! and sends them again to the next agent run); running jobs get
//! `drain_timeout_secs` to finish, then are stopped and reported as such;
//! the outbox is flushed and acknowledged; the connection closes with 1001.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::{debug, error, info, warn};

use cc_proto::wire::{
    self, CronEntry, ExecuteJob, Heartbeat, Incoming, MAX_MESSAGE_BYTES, Message, Register,
    ReportRejected,
};
use cc_proto::{CommandLine, JobId, Timestamp};

use crate::config::Config;
use crate::jobs::{Job, Jobs, Offer};
use crate::outbox::{self, Outbox, Reserve};
use crate::runner::Runner;

/// Messages from the listener dropped or ignored, logged 100 in 10 s at
/// most: a hostile listener can send them as fast as it likes.
static FROM_LISTENER: cc_proto::logline::LogBudget =
    cc_proto::logline::LogBudget::new(Duration::from_secs(10), 100);

const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(60);
/// A connection that lasted this long resets the backoff.
const STABLE: Duration = Duration::from_secs(30);
/// How often the outbox is looked at for reports written by `cron-run`.
const OUTBOX_SCAN: Duration = Duration::from_secs(1);
/// How long a stopping agent waits for its last reports' acknowledgements.
const ACK_WAIT: Duration = Duration::from_secs(5);

/// Reports sent on the current connection and not yet acknowledged.
type Sent = HashMap<String, outbox::Entry>;

struct Ctx {
    cfg: Config,
    key: String,
    outbox: Outbox,
    runner: Arc<Runner>,
    tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
    jobs: Arc<Jobs>,
    /// Told when a report is in the outbox.
    done: mpsc::Sender<()>,
    /// The current connection has carried a frame from the listener (after
    /// `register`, the agent pings; a listener that accepted it answers):
    /// the backoff starts again.
    delivered: std::sync::atomic::AtomicBool,
}

/// How a session ended.
enum Ended {
    Connection(String),
    /// The agent was asked to stop and has drained.
    Stopped,
}

/// Runs until the process is stopped.
pub(crate) async fn run(cfg: Config) -> Result<()> {
    // User-mode jobs run as this uid: non-dumpable, this process's memory,
    // environment and descriptors are not theirs to read (`/proc/PID/mem`,
    // `environ`, `fd/`) or to trace, and it leaves no core file. Set before
    // the key is read.
    nix::sys::prctl::set_dumpable(false).context("making the agent non-dumpable")?;
    let key = cfg.read_api_key()?;
    if !cfg.key_on_stdin() {
        warn!(
            api_key_file = %cfg.api_key_file.display(),
            "the API key is read from a file this agent's uid can read, so every user-mode job can read it too; \
             give it on standard input from a root-only file instead (api_key_file = \"-\", docs/agent.md)"
        );
    }
    let outbox = Outbox::open(&cfg.state_dir)?;
    match outbox.remove_stale_temps(outbox::STALE_TEMP) {
        Ok(0) => {}
        Ok(n) => info!(
            removed = n,
            "temp files of interrupted writes removed from the outbox"
        ),
        Err(e) => warn!("could not clear interrupted writes from the outbox: {e:#}"),
    }
    match outbox.ensure_reserve() {
        Ok(Reserve::Present) => {}
        Ok(Reserve::Made) => info!(bytes = outbox::RESERVE_BYTES, "outbox reserve made"),
        Ok(Reserve::NoRoom { free }) => warn!(
            free_bytes = free,
            "no outbox reserve: too little free space in the state directory; it is made once there is room and the outbox is empty"
        ),
        Err(e) => warn!("no outbox reserve: {e:#}"),
    }
    let runner = Arc::new(Runner::new(cfg.execution_mode, cfg.helper_socket.clone()));
    if runner.identity.is_root() && cfg.execution_mode == wire::ExecutionMode::User {
        warn!("{}", crate::runner::ROOT_IN_USER_MODE);
    }
    let tls = if cfg.listeners.iter().any(|l| l.tls) {
        Some(tls_config(&cfg)?)
    } else {
        None
    };
    match crate::seen::prune(&cfg.state_dir) {
        Ok(0) => {}
        Ok(n) => info!(removed = n, "old job markers removed"),
        Err(e) => warn!("could not prune job markers: {e:#}"),
    }
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1024);
    let jobs = Arc::new(Jobs::new(cfg.state_dir.clone(), cfg.max_concurrent_jobs));
    tokio::spawn(Arc::clone(&jobs).dispatch(Arc::clone(&runner), outbox.clone(), done_tx.clone()));
    let mut stop = stop_signal()?;
    let ctx = Ctx {
        cfg,
        key,
        outbox,
        runner,
        tls,
        jobs,
        done: done_tx,
        delivered: std::sync::atomic::AtomicBool::new(false),
    };
    // The listeners are tried in order; after a round of failures, a
    // backoff. A connection that carried something from its listener (or
    // lasted `STABLE`) starts again from the first, after the shortest wait.
    let mut attempt: u32 = 0;
    let mut next = 0usize;
    loop {
        let started = Instant::now();
        let listener = &ctx.cfg.listeners[next];
        ctx.delivered
            .store(false, std::sync::atomic::Ordering::Relaxed);
        match session(&ctx, listener, &mut done_rx, &mut stop).await {
            Ok(Ended::Stopped) => return Ok(()),
            Ok(Ended::Connection(why)) => info!(url = %listener.url, "connection ended: {why}"),
            Err(e) => warn!(url = %listener.url, "connection failed: {e:#}"),
        }
        if *stop.borrow() {
            drain::<TcpStream>(&ctx, None, &mut done_rx).await;
            return Ok(());
        }
        let delivered = ctx.delivered.load(std::sync::atomic::Ordering::Relaxed);
        if delivered || started.elapsed() >= STABLE {
            attempt = 0;
            next = 0;
        } else {
            next += 1;
            if next < ctx.cfg.listeners.len() {
                // The next listener at once: a round waits only at its end.
                continue;
            }
            next = 0;
        }
        let delay = backoff(attempt);
        attempt = attempt.saturating_add(1);
        info!(delay_ms = delay.as_millis() as u64, "reconnecting");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => {
                drain::<TcpStream>(&ctx, None, &mut done_rx).await;
                return Ok(());
            }
        }
    }
}

/// Flips to true on SIGTERM or SIGINT.
fn stop_signal() -> Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("watching SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("watching SIGINT")?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: stopping"),
            _ = int.recv() => info!("SIGINT: stopping"),
        }
        let _ = tx.send(true);
    });
    Ok(rx)
}

/// Stops taking jobs and lets the running ones finish within the drain
/// time (then stops them), their reports stored; while connected, keeps
/// flushing the outbox and reading acknowledgements.
async fn drain<S>(
    ctx: &Ctx,
    mut link: Option<(&mut WebSocketStream<S>, &mut Sent)>,
    done: &mut mpsc::Receiver<()>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let dropped = ctx.jobs.close();
    info!(
        running = ctx.jobs.running(),
        not_started = dropped,
        drain_secs = ctx.cfg.drain_timeout.as_secs(),
        "stopping: no new jobs; jobs not started are left to the listener"
    );
    let mut deadline = Instant::now() + ctx.cfg.drain_timeout;
    let mut cancelled = false;
    while ctx.jobs.running() > 0 {
        if Instant::now() >= deadline {
            if cancelled {
                warn!(
                    running = ctx.jobs.running(),
                    "jobs still running after the drain time and their grace: leaving them"
                );
                break;
            }
            warn!(
                running = ctx.jobs.running(),
                "drain time over: stopping the running jobs"
            );
            crate::jobs::cancel_all(&ctx.runner.cancel);
            cancelled = true;
            // SIGTERM, the executor's grace, SIGKILL, and the report.
            deadline = Instant::now() + Duration::from_secs(10);
        }
        match &mut link {
            Some((ws, sent)) => {
                tokio::select! {
                    frame = ws.next() => match frame {
                        Some(Ok(WsMessage::Text(text))) => {
                            if on_text(ctx, ws, text.as_str(), sent).await.is_err() {
                                link = None;
                            }
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => link = None,
                    },
                    Some(()) = done.recv() => {
                        if flush_outbox(ctx, ws, sent).await.is_err() {
                            link = None;
                        }
                    }
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Capped exponential backoff with full jitter in the upper half.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let exp = BACKOFF_FIRST
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_CAP);
    let mut r = [0u8; 4];
    let jitter = if getrandom::fill(&mut r).is_ok() {
        u32::from_le_bytes(r)
    } else {
        0
    };
    let half = exp / 2;
    half + Duration::from_millis(u64::from(jitter) % (half.as_millis().max(1) as u64 + 1))
}

fn tls_config(cfg: &Config) -> Result<Arc<tokio_rustls::rustls::ClientConfig>> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca_file {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .with_context(|| format!("reading ca_file {}", path.display()))?
            {
                roots.add(cert.with_context(|| format!("parsing ca_file {}", path.display()))?)?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        bail!("no trusted certificates for wss:// (install ca-certificates or set ca_file)");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
}

async fn session(
    ctx: &Ctx,
    listener: &crate::config::Listener,
    done: &mut mpsc::Receiver<()>,
    stop: &mut watch::Receiver<bool>,
) -> Result<Ended> {
    let mut req = listener.url.as_str().into_client_request()?;
    req.headers_mut().insert(
        "X-CC-API-KEY",
        HeaderValue::from_str(&ctx.key).context("the API key is not a valid header value")?,
    );
    match ctx.tls.as_ref().filter(|_| listener.tls) {
        None => {
            let connect = tokio::time::timeout(
                CONNECT_TIMEOUT,
                tokio_tungstenite::connect_async_with_config(req, Some(ws_config()), true),
            );
            let (ws, _) = tokio::select! {
                c = connect => c.context("connecting timed out")?.map_err(describe)?,
                _ = stop.changed() => return Ok(Ended::Connection("stopping while connecting".into())),
            };
            serve(ctx, listener, ws, done, stop).await
        }
        Some(tls) => {
            let host = req
                .uri()
                .host()
                .context("listener_url has no host")?
                .trim_matches(['[', ']'])
                .to_owned();
            let port = req.uri().port_u16().unwrap_or(443);
            let connect = async {
                let tcp = TcpStream::connect((host.as_str(), port)).await?;
                let _ = tcp.set_nodelay(true);
                let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.clone())?;
                let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
                    .connect(name, tcp)
                    .await?;
                let (ws, _) =
                    tokio_tungstenite::client_async_with_config(req, stream, Some(ws_config()))
                        .await
                        .map_err(describe)?;
                anyhow::Ok(ws)
            };
            let ws = tokio::select! {
                c = tokio::time::timeout(CONNECT_TIMEOUT, connect) => c.context("connecting timed out")??,
                _ = stop.changed() => return Ok(Ended::Connection("stopping while connecting".into())),
            };
            serve(ctx, listener, ws, done, stop).await
        }
    }
}

/// Says what a refused handshake means, without echoing our request.
fn describe(e: tokio_tungstenite::tungstenite::Error) -> anyhow::Error {
    match e {
        tokio_tungstenite::tungstenite::Error::Http(resp) if resp.status().as_u16() == 401 => {
            anyhow!("the listener refused the API key (401)")
        }
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            anyhow!("the listener answered HTTP {}", resp.status())
        }
        other => anyhow!(other),
    }
}

async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    m: &Message,
) -> Result<()> {
    ws.send(WsMessage::Text(m.to_json()?.into())).await?;
    Ok(())
}

async fn serve<S>(
    ctx: &Ctx,
    listener: &crate::config::Listener,
    mut ws: WebSocketStream<S>,
    done: &mut mpsc::Receiver<()>,
    stop: &mut watch::Receiver<bool>,
) -> Result<Ended>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let cfg = &ctx.cfg;
    let register = Register {
        hostname: cfg.hostname.to_string(),
        os: "linux".into(),
        arch: arch().into(),
        tags: cfg.tags.iter().map(ToString::to_string).collect(),
        execution_mode: cfg.execution_mode,
        is_root: ctx.runner.identity.is_root(),
        job_window: Some(ctx.jobs.window()),
    };
    send(&mut ws, &Message::Register(register)).await?;
    // A listener that took the registration answers this; one that refused
    // it closes first. Its answer marks the connection as delivering.
    ws.send(WsMessage::Ping(Vec::from(*b"cc").into())).await?;
    info!(hostname = %cfg.hostname, url = %listener.url, "connected and registered");

    // Reports sent on this connection, by id: an ack deletes that file.
    let mut sent: Sent = HashMap::new();
    flush_outbox(ctx, &mut ws, &mut sent).await?;
    let mut heartbeat = tokio::time::interval(cfg.heartbeat_interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut scan = tokio::time::interval(OUTBOX_SCAN);
    scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            frame = ws.next() => {
                let Some(frame) = frame else { return Ok(Ended::Connection("the listener closed the connection".into())) };
                let frame = frame?;
                if !matches!(frame, WsMessage::Close(_)) {
                    ctx.delivered.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                match frame {
                    WsMessage::Text(text) => on_text(ctx, &mut ws, text.as_str(), &mut sent).await?,
                    WsMessage::Close(frame) => {
                        return Ok(Ended::Connection(match frame {
                            Some(f) => format!("closed by the listener ({}): {}", u16::from(f.code), f.reason),
                            None => "closed by the listener".into(),
                        }));
                    }
                    WsMessage::Binary(_) => warn!("binary frame from the listener ignored"),
                    _ => {}
                }
            }
            _ = heartbeat.tick() => {
                let hb = Heartbeat { timestamp: Some(Timestamp::now().to_string()) };
                send(&mut ws, &Message::Heartbeat(hb)).await?;
            }
            Some(()) = done.recv() => flush_outbox(ctx, &mut ws, &mut sent).await?,
            _ = stop.changed() => {
                drain(ctx, Some((&mut ws, &mut sent)), done).await;
                goodbye(ctx, &mut ws, &mut sent).await;
                return Ok(Ended::Stopped);
            }
            _ = scan.tick() => {
                if ctx.cfg.execution_mode == wire::ExecutionMode::System {
                    let (socket, outbox) = (ctx.cfg.helper_socket.clone(), ctx.outbox.clone());
                    match tokio::task::spawn_blocking(move || collect_helper_reports(&socket, &outbox)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => warn!("collecting the helper's reports failed: {e:#}"),
                        Err(e) => warn!("collecting the helper's reports failed: {e}"),
                    }
                }
                flush_outbox(ctx, &mut ws, &mut sent).await?
            }
        }
    }
}

async fn on_text<S>(
    ctx: &Ctx,
    ws: &mut WebSocketStream<S>,
    text: &str,
    sent: &mut Sent,
) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let decoded = match wire::decode(text) {
        Ok(d) => d,
        Err(e) => {
            if let Some(left_out) = FROM_LISTENER.allow() {
                warn!(left_out, "invalid message from the listener dropped: {e}");
            }
            return Ok(());
        }
    };
    if !decoded.ignored_fields.is_empty() {
        debug!(fields = ?decoded.ignored_fields, "unknown fields ignored");
    }
    match decoded.message {
        Incoming::Known(Message::ExecuteJob(job)) => {
            let raw = decoded.raw_payload.unwrap_or_default();
            accept_job(ctx, &job, raw, decoded.raw_signed).await;
        }
        Incoming::Known(Message::CronRefresh(entries)) => {
            let raw = decoded.raw_payload.unwrap_or("[]").to_owned();
            let signed = decoded.raw_signed.map(str::to_owned);
            let mut status = apply_cron(ctx, entries, raw, signed).await;
            // A status the listener refuses would leave it blind.
            status.fit();
            send(ws, &Message::CronStatus(status)).await?;
        }
        Incoming::Known(Message::ReportAck(ack)) => {
            if let Some(entry) = sent.remove(&ack.report_id) {
                match ctx.outbox.remove(&entry) {
                    Ok(true) => debug!(report_id = %ack.report_id, "report acknowledged"),
                    Ok(false) => {}
                    Err(e) => warn!("could not remove an acknowledged report: {e:#}"),
                }
            }
        }
        Incoming::Known(Message::ReportRejected(rejected)) => {
            on_rejected(&ctx.outbox, sent, &rejected);
        }
        Incoming::Known(other) => {
            if let Some(left_out) = FROM_LISTENER.allow() {
                warn!(
                    kind = other.kind(),
                    left_out, "unexpected message from the listener ignored"
                );
            }
        }
        Incoming::UnknownType(kind) => debug!(%kind, "unknown message type ignored"),
    }
    Ok(())
}

/// `report_rejected`: the listener refused a report for good (sent again,
/// it would be refused again). If this connection sent it, it leaves the
/// outbox now, with a warning that says why. As with `report_ack`, only a
/// report sent on this connection can go; an invalid rejection is dropped
/// like any invalid message.
fn on_rejected(outbox: &Outbox, sent: &mut Sent, rejected: &ReportRejected) {
    if let Err(e) = rejected.validate() {
        warn!("invalid report_rejected from the listener dropped: {e}");
        return;
    }
    let Some(entry) = sent.remove(&rejected.report_id) else {
        debug!(report_id = %rejected.report_id, "report_rejected for a report not sent on this connection ignored");
        return;
    };
    let job_id = outbox.job_id(&entry).unwrap_or_default();
    match outbox.remove(&entry) {
        Ok(_) => warn!(
            report_id = %rejected.report_id,
            %job_id,
            reason = %rejected.reason,
            "the listener rejected a report for good: deleted from the outbox, not sent again"
        ),
        Err(e) => warn!(
            report_id = %rejected.report_id,
            "could not remove a rejected report: {e:#}"
        ),
    }
}

async fn apply_cron(
    ctx: &Ctx,
    entries: Vec<CronEntry>,
    raw: String,
    signed: Option<String>,
) -> wire::CronStatus {
    if ctx.cfg.execution_mode == wire::ExecutionMode::System {
        return system_cron(ctx, &entries, raw, signed).await;
    }
    let state = ctx.cfg.state_dir.clone();
    let config = ctx.cfg.path.clone();
    let exe = std::env::current_exe().unwrap_or_default();
    let all: Vec<String> = entries
        .iter()
        .map(|e| e.id.chars().take(128).collect())
        .collect();
    let result =
        tokio::task::spawn_blocking(move || crate::cron::apply(&state, &exe, &config, &entries))
            .await;
    match result {
        Ok(Ok(status)) => {
            info!(
                installed = status.installed.len(),
                rejected = status.rejected.len(),
                "cron entries applied"
            );
            for r in &status.rejected {
                warn!(id = %r.id, reason = %r.reason, "cron entry refused");
            }
            status
        }
        Ok(Err(e)) => {
            error!("could not install cron entries: {e:#}");
            let reason = format!("{e:#}");
            wire::CronStatus {
                installed: Vec::new(),
                rejected: all
                    .into_iter()
                    .map(|id| wire::CronRejection {
                        id,
                        reason: reason.clone(),
                    })
                    .collect(),
            }
        }
        Err(e) => {
            error!("cron task failed: {e}");
            wire::CronStatus::default()
        }
    }
}

/// System mode: the listener's `cron_refresh` text goes to cc-privhelper,
/// which writes `/etc/cron.d/croncommander`.
async fn system_cron(
    ctx: &Ctx,
    entries: &[CronEntry],
    raw: String,
    signed: Option<String>,
) -> wire::CronStatus {
    use cc_proto::helper::{HelperRequest, HelperResponse, WriteCronRequest};
    let socket = ctx.cfg.helper_socket.clone();
    let req = HelperRequest::WriteCron(WriteCronRequest {
        cron_refresh: raw,
        signed,
    });
    let answer =
        tokio::task::spawn_blocking(move || crate::helper_client::call(&socket, &req)).await;
    let reason = match answer {
        Ok(Ok(HelperResponse::CronWritten(w))) => {
            info!(
                installed = w.installed.len(),
                rejected = w.rejected.len(),
                "system cron entries written by the helper"
            );
            return wire::CronStatus {
                installed: w.installed,
                rejected: w.rejected,
            };
        }
        Ok(Ok(HelperResponse::Refused(r))) => format!("the root helper refused: {}", r.message),
        Ok(Ok(_)) => "the root helper gave an unexpected answer".to_owned(),
        Ok(Err(e)) => format!("{e:#}"),
        Err(e) => format!("helper task failed: {e}"),
    };
    warn!("system cron entries not installed: {reason}");
    wire::CronStatus {
        installed: Vec::new(),
        rejected: entries
            .iter()
            .map(|e| wire::CronRejection {
                id: e.id.chars().take(128).collect(),
                reason: reason.clone(),
            })
            .collect(),
    }
}

/// Takes the reports of scheduled system jobs the helper keeps, stores
/// each in the outbox, then tells the helper it may forget them: a report
/// is on the agent's disk before root lets go of it.
fn collect_helper_reports(socket: &std::path::Path, outbox: &Outbox) -> Result<usize> {
    use cc_proto::helper::{AckReportsRequest, HelperRequest, HelperResponse};
    let mut moved = 0;
    loop {
        let reports = match crate::helper_client::call(socket, &HelperRequest::TakeReports)? {
            HelperResponse::Reports(r) => r,
            HelperResponse::Refused(r) => {
                bail!("the root helper refused take_reports: {}", r.message)
            }
            _ => bail!("the root helper gave an unexpected answer to take_reports"),
        };
        if reports.is_empty() {
            return Ok(moved);
        }
        let mut ids = Vec::new();
        for report in reports {
            let Some(id) = report.report_id.clone() else {
                continue;
            };
            match report.validate() {
                Ok(_) => {
                    outbox.put(report)?;
                    moved += 1;
                }
                Err(e) => {
                    warn!(report_id = %id, "invalid report from the root helper dropped: {e}")
                }
            }
            ids.push(id);
        }
        if ids.is_empty() {
            return Ok(moved);
        }
        crate::helper_client::call(
            socket,
            &HelperRequest::AckReports(AckReportsRequest { report_ids: ids }),
        )?;
    }
}

/// Sends every stored report not yet sent on this connection, in order.
async fn flush_outbox<S>(ctx: &Ctx, ws: &mut WebSocketStream<S>, sent: &mut Sent) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let entries = ctx.outbox.list()?;
    for entry in &entries {
        if sent.contains_key(&entry.report_id) {
            continue;
        }
        let text = match ctx.outbox.message(entry) {
            Ok(t) => t,
            // Removed by an ack meanwhile, or unreadable: skip it.
            Err(e) => {
                debug!("outbox entry skipped: {e:#}");
                continue;
            }
        };
        ws.send(WsMessage::Text(text.into())).await?;
        sent.insert(entry.report_id.clone(), entry.clone());
    }
    let drained = entries.is_empty();
    let dropped = ctx
        .outbox
        .enforce_bound(entries, sent, outbox::MAX_REPORTS)?;
    if dropped > 0 {
        warn!(dropped, "outbox over its bound: oldest reports dropped");
    }
    // A reserve used on a full disk is made again once the outbox has
    // drained (and the file system has room: `ensure_reserve` checks).
    if drained && !ctx.outbox.has_reserve() {
        let o = ctx.outbox.clone();
        match tokio::task::spawn_blocking(move || o.ensure_reserve()).await {
            Ok(Ok(Reserve::Made)) => {
                info!(bytes = outbox::RESERVE_BYTES, "outbox reserve made again")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => debug!("outbox reserve not made: {e:#}"),
            Err(e) => debug!("outbox reserve task failed: {e}"),
        }
    }
    Ok(())
}

/// Longest wait between two attempts to store a report the disk refused.
const STORE_RETRY_MAX: Duration = Duration::from_secs(10);

/// Puts a finished job's report in the outbox. While the state directory
/// refuses it (full, read-only, out of inodes) the report waits here in
/// memory and the write is tried again, 1 s then doubling up to
/// [`STORE_RETRY_MAX`], each failure logged with its reason: a report is
/// never sent before it is on disk, and never given up because the disk was
/// full for a while. A failed attempt leaves nothing behind (the atomic
/// write removes its temp file).
pub(crate) async fn store(
    outbox: Outbox,
    mut report: wire::ExecutionReport,
    done: mpsc::Sender<()>,
) {
    let job_id = report.job_id.clone();
    // One id for every attempt, so the report is the same one throughout.
    report
        .report_id
        .get_or_insert_with(|| uuid::Uuid::new_v4().to_string());
    let mut wait = Duration::from_secs(1);
    let mut failures = 0u32;
    loop {
        let (o, r) = (outbox.clone(), report.clone());
        match tokio::task::spawn_blocking(move || o.put(r)).await {
            Ok(Ok(_)) => {
                if failures > 0 {
                    info!(%job_id, failures, "report stored after the state directory refused it");
                } else {
                    info!(%job_id, "job finished; report stored");
                }
                let _ = done.try_send(());
                return;
            }
            Ok(Err(e)) => {
                failures += 1;
                error!(
                    %job_id,
                    retry_in_secs = wait.as_secs(),
                    "could not store the report, it waits in memory: {e:#}"
                );
            }
            Err(e) => {
                error!(%job_id, "report task failed: {e}");
                return;
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(STORE_RETRY_MAX);
    }
}

/// Validates an arriving job and hands it to `jobs.rs`; an invalid one
/// gets a report at once when it has a usable id (it never runs, so no
/// marker), and is dropped with a log line when it has none.
async fn accept_job(ctx: &Ctx, job: &ExecuteJob, raw: &str, signed: Option<&str>) {
    let spec = match job.validate() {
        Ok(spec) => spec,
        Err(e) => {
            let Ok(id) = JobId::parse(&job.job_id) else {
                if let Some(left_out) = FROM_LISTENER.allow() {
                    warn!(left_out, "execute_job with an invalid job id dropped: {e}");
                }
                return;
            };
            if let Some(left_out) = FROM_LISTENER.allow() {
                warn!(%id, left_out, "invalid execute_job refused: {e}");
            }
            let Ok(placeholder) = CommandLine::new("-", &[]) else {
                return;
            };
            let mut report = ctx.runner.refused(
                &id,
                &placeholder,
                cc_exec::EXIT_NOT_EXECUTABLE,
                &format!("invalid job: {e}"),
            );
            // Show what was asked, with control characters made visible.
            report.command = std::iter::once(job.command.as_str())
                .chain(job.args.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join(" ")
                .chars()
                .take(4096)
                .flat_map(char::escape_debug)
                .collect();
            tokio::spawn(store(ctx.outbox.clone(), report, ctx.done.clone()));
            return;
        }
    };
    let id = spec.id.clone();
    // System mode forwards the listener's exact text to the helper.
    let forward =
        (ctx.cfg.execution_mode == wire::ExecutionMode::System).then(|| crate::runner::Forward {
            payload: raw.to_owned(),
            signed: signed.map(str::to_owned),
        });
    match ctx.jobs.offer(Job { spec, forward }) {
        Offer::Queued => info!(job_id = %id, "job received"),
        Offer::Duplicate => debug!(job_id = %id, "job already held: this delivery is ignored"),
        Offer::AlreadyStarted => {
            info!(job_id = %id, "job started before: this delivery is ignored")
        }
        Offer::Full => {
            warn!(job_id = %id, "job queue full: job dropped, not started; the listener sends it again after a reconnect")
        }
        Offer::Closed => info!(job_id = %id, "stopping: job not taken; the listener keeps it"),
    }
}

/// The end of a graceful stop on a live connection: every report sent and,
/// for a few seconds at most, acknowledged; then close with 1001.
async fn goodbye<S>(ctx: &Ctx, ws: &mut WebSocketStream<S>, sent: &mut Sent)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let until = Instant::now() + ACK_WAIT;
    while flush_outbox(ctx, ws, sent).await.is_ok() && !sent.is_empty() && Instant::now() < until {
        match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
            Ok(Some(Ok(WsMessage::Text(text)))) => {
                if on_text(ctx, ws, text.as_str(), sent).await.is_err() {
                    break;
                }
            }
            Ok(Some(Ok(_))) | Err(_) => {}
            Ok(Some(Err(_)) | None) => break,
        }
    }
    if !sent.is_empty() {
        warn!(
            unacknowledged = sent.len(),
            "stopping with reports not yet acknowledged: they stay in the outbox"
        );
    }
    let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Away,
        reason: "agent shutting down".into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(Some(frame))).await;
    info!("stopped");
}

/// `arch` as the spec spells it.
pub(crate) fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        for attempt in 0..30 {
            let d = backoff(attempt);
            let exp = BACKOFF_FIRST
                .saturating_mul(1u32 << attempt.min(16))
                .min(BACKOFF_CAP);
            assert!(d >= exp / 2 && d <= exp, "attempt {attempt}: {d:?}");
        }
        assert!(backoff(30) <= BACKOFF_CAP);
    }

    use crate::outbox::tests::report;

    /// A `report_rejected` deletes the one report it names, and only if
    /// this connection sent it; one with an invalid id or a reason that
    /// would forge log lines deletes nothing (a hostile listener could
    /// ack the report anyway, but not write into the agent's log).
    #[test]
    fn a_rejection_deletes_only_the_valid_named_report_this_connection_sent() {
        let dir = std::env::temp_dir().join(format!("cc-reject-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let ob = Outbox::open(&dir).unwrap();
        let a = ob.put(report("a")).unwrap();
        let b = ob.put(report("b")).unwrap();
        let unsent = ob.put(report("c")).unwrap();
        let mut sent: Sent = ob
            .list()
            .unwrap()
            .into_iter()
            .filter(|e| e.report_id != unsent)
            .map(|e| (e.report_id.clone(), e))
            .collect();
        let ids = |ob: &Outbox| -> Vec<String> {
            ob.list()
                .unwrap()
                .into_iter()
                .map(|e| e.report_id)
                .collect()
        };
        let rejected = |id: &str, reason: &str| ReportRejected {
            report_id: id.into(),
            reason: reason.into(),
        };
        for bad in [
            rejected(&a, "quota\n2026-01-01T00:00:00Z  INFO forged line"),
            rejected(&a, &"q".repeat(1025)),
            rejected(&a, ""),
            rejected("../a", "quota"),
            rejected(&unsent, "quota"),
            rejected("never-sent", "quota"),
        ] {
            on_rejected(&ob, &mut sent, &bad);
        }
        assert_eq!(ids(&ob), [a.clone(), b.clone(), unsent.clone()]);
        assert_eq!(sent.len(), 2);
        on_rejected(&ob, &mut sent, &rejected(&a, "report quota reached"));
        assert_eq!(ids(&ob), [b.clone(), unsent.clone()]);
        assert!(!sent.contains_key(&a));
        // Twice is harmless.
        on_rejected(&ob, &mut sent, &rejected(&a, "report quota reached"));
        assert_eq!(ids(&ob), [b, unsent]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
