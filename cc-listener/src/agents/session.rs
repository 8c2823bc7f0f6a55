//! A registered agent's connection: `Session::run` records the
//! registration, joins the hub, and serves the connection in one `select!`
//! loop over the socket, its outbound queue, a ping ticker and the
//! shutdown signal (`serve`); on (re)connect it sends the cron list, the
//! jobs sent and never reported, then queued jobs (`catch_up`).
//!
//! Policy for what an agent sends: see the module above (`crate::agents`).
//! Reports are validated, paced (`report_rate_bytes`), deduplicated by
//! `reportId` or a derived key, and committed through the writer with
//! other reports; the agent gets `report_ack`, or `report_rejected` for a
//! report refused for good. A job is handed to the host only here
//! (`dispatch`), within the agent's `jobWindow`.
//!
//! Invariants: the connection leaves the hub only after its last contact
//! was recorded; a storage error on a report closes the connection (the
//! agent sends its outbox again on the next); an agent silent for three
//! heartbeat intervals (counted from when this task last waited long on the
//! store, at the earliest) is closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use futures_util::{SinkExt, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::{MissedTickBehavior, interval};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tracing::{debug, error, info, warn};

use cc_proto::logline::LogBudget;
use cc_proto::wire::{
    self, AgentInfo, DecodeError, ExecuteJob, ExecutionReport, Incoming, Message, ReportAck,
    ReportRejected,
};

use super::close;
use crate::hub::{OUTBOUND_QUEUE, Outbound};
use crate::metrics::{ReportRefusal, WsRefusal};
use crate::store::{
    JobRow, Refusal, RegisterWrite, ReportOutcome, ReportWrite, Stored, TakeWrite, TouchWrite,
};
use crate::{AppState, now_ms};

/// Reports refused for a quota, logged 20 a second at most (all hosts).
static REFUSED_REPORTS: LogBudget = LogBudget::new(Duration::from_secs(1), 20);

/// Invalid messages from agents, logged 100 in 10 s at most (all hosts;
/// the metric counts each).
static INVALID_MESSAGES: LogBudget = LogBudget::new(Duration::from_secs(10), 100);

/// Invalid messages tolerated on one connection before it is closed.
pub const MAX_PROTOCOL_ERRORS: u32 = 16;

pub(super) struct Session<'a> {
    pub(super) state: &'a AppState,
    pub(super) hostname: cc_proto::Hostname,
    /// The agent's `jobWindow`; `None` for a spec-only agent.
    pub(super) window: Option<u32>,
    pub(super) conn_id: u64,
    pub(super) last_seen: Arc<AtomicI64>,
    pub(super) last_heartbeat: Arc<AtomicI64>,
    /// Its nudges (shared with the hub): a dispatch every nudge of which a
    /// committed hand-over already answered takes nothing.
    pub(super) nudges: Arc<crate::store::Nudges>,
    pub(super) protocol_errors: u32,
    /// Report bytes this connection may still send before it is paced
    /// (negative: owed), as of `rate_at`.
    pub(super) rate_tokens: f64,
    pub(super) rate_at: tokio::time::Instant,
    /// When this task last came back to reading after waiting long on the
    /// store (ms since the epoch): the silence of an agent is counted from
    /// then at the earliest, since what it sent meanwhile sat unread.
    pub(super) busy_until: i64,
    /// The last `cron_status` stored from this connection: the same again
    /// is not written again.
    pub(super) cron_status: Option<cc_proto::wire::CronStatus>,
    /// When it was stored: a changed one is stored a second later at the
    /// soonest.
    pub(super) cron_status_at: Option<tokio::time::Instant>,
    /// The agent's `cronHost` as last stored (at registration, then from
    /// heartbeats): the same again is not written again.
    pub(super) cron_host: Option<cc_proto::wire::CronHost>,
    /// When a changed one was stored: the next a second later at the
    /// soonest.
    pub(super) cron_host_at: Option<tokio::time::Instant>,
}

enum Flow {
    Continue,
    Close(CloseCode, &'static str),
}

/// Handling one message or hand-over longer than this is the listener
/// being slow (its store), not the agent being silent.
const BUSY_MS: i64 = 1_000;

impl Session<'_> {
    /// Work that began at `started` is done: if it took long, the agent's
    /// silence is counted from now.
    fn note_busy(&mut self, started: i64) {
        let now = now_ms();
        if now - started > BUSY_MS {
            self.busy_until = now;
        }
    }

    /// A heartbeat's `cronHost`: validated, stored when it changed (once a
    /// second at most), and said in the log when the daemon stopped or
    /// came back.
    async fn on_cron_host(&mut self, c: cc_proto::wire::CronHost) -> Result<Flow> {
        if let Err(e) = c.validate() {
            return Ok(self.protocol_error(WsRefusal::InvalidPayload, &format!("heartbeat: {e}")));
        }
        if self.cron_host.as_ref() == Some(&c) {
            return Ok(Flow::Continue);
        }
        let was_running = self.cron_host.as_ref().map(|o| o.daemon.is_some());
        match (was_running, c.daemon.is_some()) {
            (Some(true), false) => {
                warn!(hostname = %self.hostname, "the host's cron daemon stopped: its cron entries will not fire");
            }
            (Some(false), true) => {
                info!(hostname = %self.hostname, "the host's cron daemon runs again");
            }
            _ => {}
        }
        if let Some(at) = self.cron_host_at {
            tokio::time::sleep_until(at + Duration::from_secs(1)).await;
        }
        self.cron_host_at = Some(tokio::time::Instant::now());
        let host = self.hostname.clone();
        let stored = c.clone();
        self.state
            .db
            .call(move |s| s.set_cron_host(&host, &stored))
            .await?;
        self.state
            .hub
            .set_cron_host(self.hostname.as_str(), self.conn_id, &c);
        self.state.schedules.host_changed(self.hostname.as_str());
        self.cron_host = Some(c);
        Ok(Flow::Continue)
    }

    pub(super) async fn run<S>(
        mut self,
        mut ws: WebSocketStream<S>,
        key_id: i64,
        info: AgentInfo,
        peer: SocketAddr,
    ) -> Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let state = self.state;
        let (tx, mut rx) = mpsc::channel(OUTBOUND_QUEUE);
        state
            .writer
            .register(RegisterWrite {
                info: info.clone(),
                conn: self.conn_id,
            })
            .await?;
        if let Some(old) = state.hub.insert(
            self.conn_id,
            key_id,
            info.clone(),
            now_ms(),
            Arc::clone(&self.last_seen),
            Arc::clone(&self.last_heartbeat),
            Arc::clone(&self.nudges),
            tx,
        ) {
            info!(hostname = %self.hostname, old_conn = old, "a newer connection replaces the old one");
        }
        if info.is_root && info.execution_mode == wire::ExecutionMode::User {
            warn!(hostname = %self.hostname, "agent runs as root in user mode");
        }
        info!(hostname = %self.hostname, %peer, mode = ?info.execution_mode, is_root = info.is_root, "agent registered");
        // Its list, its zone and who holds it: the missed-run tracker
        // reads them again.
        state.schedules.host_changed(self.hostname.as_str());

        let result = self.serve(&mut ws, &mut rx).await;
        // Grouped with other writes: when a listener stops, all its
        // connections end at once. Recorded before the connection leaves
        // the hub, which a stopping listener waits to see empty.
        let touch = TouchWrite {
            hostname: self.hostname.clone(),
            last_seen_ms: self.last_seen.load(Ordering::Relaxed),
            conn: self.conn_id,
            // Offline (a kind `host` event): no newer connection replaced
            // this one, and this listener is not stopping (its agents move
            // to another).
            offline: state.hub.holds(self.hostname.as_str(), self.conn_id)
                && !*state.shutdown.borrow(),
        };
        if let Err(e) = state.writer.touch(touch).await {
            warn!(hostname = %self.hostname, "could not record last contact: {e:#}");
        }
        state.hub.remove(self.hostname.as_str(), self.conn_id);
        result
    }

    async fn serve<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        rx: &mut mpsc::Receiver<Outbound>,
    ) -> Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let state = self.state;
        // Boxed: it runs once, and must not size the long-lived future.
        Box::pin(self.catch_up(ws)).await?;

        let mut ticker = interval(state.settings.ping_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut shutdown = state.shutdown.clone();
        let silence_limit =
            i64::try_from(state.settings.heartbeat_interval.as_millis() * 3).unwrap_or(i64::MAX);
        // Nine tenths of the interval: a connection heard only by the
        // pong of the last ping is still pinged at every tick.
        let ping_after =
            i64::try_from(state.settings.ping_interval.as_millis() * 9 / 10).unwrap_or(i64::MAX);
        loop {
            let flow = tokio::select! {
                incoming = ws.next() => {
                    let Some(frame) = incoming else { return Ok(()) };
                    let frame = match frame {
                        Ok(f) => f,
                        Err(tungstenite::Error::Capacity(e)) => {
                            state.metrics.ws_refused(WsRefusal::TooLarge);
                            close(ws, CloseCode::Size, "message too large").await;
                            return Err(anyhow!("closed: {e}"));
                        }
                        // RFC 6455 §8.1: a text frame that is not UTF-8
                        // fails the connection with 1007.
                        Err(tungstenite::Error::Utf8(e)) => {
                            state.metrics.ws_refused(WsRefusal::InvalidUtf8);
                            close(ws, CloseCode::Invalid, "text frame is not valid UTF-8").await;
                            return Err(anyhow!("closed: invalid UTF-8 in a text frame: {e}"));
                        }
                        Err(e) => return Err(e.into()),
                    };
                    self.last_seen.store(now_ms(), Ordering::Relaxed);
                    match frame {
                        // Boxed for the same reason: allocated per message.
                        WsMessage::Text(text) => {
                            let started = now_ms();
                            let flow = Box::pin(self.on_text(ws, text.as_str())).await?;
                            self.note_busy(started);
                            flow
                        }
                        WsMessage::Binary(_) => self.protocol_error(WsRefusal::Binary, "binary frame"),
                        WsMessage::Close(_) => return Ok(()),
                        WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => Flow::Continue,
                    }
                }
                out = rx.recv() => match out {
                    Some(Outbound::Text(text)) => {
                        ws.send(WsMessage::Text(text.into())).await?;
                        Flow::Continue
                    }
                    Some(Outbound::Dispatch) if self.nudges.answered() => Flow::Continue,
                    Some(Outbound::Dispatch) => {
                        let started = now_ms();
                        self.dispatch(ws).await?;
                        self.note_busy(started);
                        Flow::Continue
                    }
                    Some(Outbound::Close(reason)) => Flow::Close(CloseCode::Policy, reason),
                    None => Flow::Close(CloseCode::Away, "listener shutting down"),
                },
                _ = ticker.tick() => {
                    let heard = self.last_seen.load(Ordering::Relaxed).max(self.busy_until);
                    let quiet = now_ms() - heard;
                    if quiet > silence_limit {
                        Flow::Close(CloseCode::Away, "silent for three heartbeat intervals")
                    } else if quiet >= ping_after {
                        // Only a connection quiet for nine tenths of an
                        // interval is pinged: an agent's heartbeats
                        // already show it alive, and 100,000 pongs a
                        // minute are load.
                        ws.send(WsMessage::Ping(Default::default())).await?;
                        Flow::Continue
                    } else {
                        Flow::Continue
                    }
                }
                _ = shutdown.changed() => Flow::Close(CloseCode::Away, "listener shutting down"),
            };
            if let Flow::Close(code, reason) = flow {
                info!(hostname = %self.hostname, "closing: {reason}");
                close(ws, code, reason).await;
                return Ok(());
            }
        }
    }

    /// What the agent should have on (re)connect: its cron list, the jobs
    /// it was sent and never reported, then queued jobs as its window
    /// allows.
    async fn catch_up<S>(&self, ws: &mut WebSocketStream<S>) -> Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let host = self.hostname.clone();
        // Its effective list: own entries and matching fleet entries
        // (for a system-mode host, only as far as a signature covers).
        if let Some((entries, signed)) = self
            .state
            .db
            .call(move |s| crate::fleet::push::wanted_for(s, host.as_str()))
            .await?
        {
            send_text(
                ws,
                crate::fleet::push::refresh_text(&entries, signed.as_deref())?,
            )
            .await?;
        }
        // Sent before but never reported (the connection, or the listener,
        // went away): sent again; the agent runs a job id at most once.
        let host = self.hostname.clone();
        let conn = self.conn_id;
        let unreported = self
            .state
            .db
            .call(move |s| s.resend_unreported(&host, conn, now_ms()))
            .await?;
        for job in &unreported {
            send_text(ws, job_text(job)?).await?;
            info!(hostname = %self.hostname, job_id = %job.job_id, "unreported job sent again");
        }
        self.dispatch(ws).await
    }

    /// Holds this connection to `report_rate_bytes` a second (a burst of
    /// four seconds' worth): a faster sender waits before its next message
    /// is read, and TCP pushes back on it.
    async fn pace(&mut self, bytes: usize) {
        let rate = self.state.settings.report_rate_bytes.max(1) as f64;
        let burst = rate * 4.0;
        let now = tokio::time::Instant::now();
        let refill = now.duration_since(self.rate_at).as_secs_f64() * rate;
        self.rate_at = now;
        self.rate_tokens = (self.rate_tokens + refill).min(burst) - bytes as f64;
        if self.rate_tokens < 0.0 {
            let wait = Duration::from_secs_f64(-self.rate_tokens / rate);
            debug!(hostname = %self.hostname, wait_ms = wait.as_millis(), "report rate: pacing");
            tokio::time::sleep(wait).await;
        }
    }

    fn protocol_error(&mut self, reason: WsRefusal, what: &str) -> Flow {
        self.state.metrics.ws_refused(reason);
        self.protocol_errors += 1;
        // 16 close a connection, but reconnecting is free: bounded.
        if let Some(left_out) = INVALID_MESSAGES.allow() {
            warn!(hostname = %self.hostname, errors = self.protocol_errors, left_out, "invalid message dropped: {what}");
        }
        if self.protocol_errors >= MAX_PROTOCOL_ERRORS {
            Flow::Close(CloseCode::Policy, "too many invalid messages")
        } else {
            Flow::Continue
        }
    }

    async fn on_text<S>(&mut self, ws: &mut WebSocketStream<S>, text: &str) -> Result<Flow>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let decoded = match wire::decode(text) {
            Ok(d) => d,
            Err(DecodeError::TooLarge { .. }) => {
                self.state.metrics.ws_refused(WsRefusal::TooLarge);
                return Ok(Flow::Close(CloseCode::Size, "message too large"));
            }
            Err(e @ DecodeError::Envelope(_)) => {
                return Ok(self.protocol_error(WsRefusal::Malformed, &e.to_string()));
            }
            Err(e) => return Ok(self.protocol_error(WsRefusal::InvalidPayload, &e.to_string())),
        };
        if !decoded.ignored_fields.is_empty() {
            debug!(hostname = %self.hostname, fields = ?decoded.ignored_fields, "unknown fields ignored");
        }
        let message = match decoded.message {
            Incoming::Known(m) => m,
            Incoming::UnknownType(kind) => {
                debug!(hostname = %self.hostname, %kind, "unknown message type ignored");
                return Ok(Flow::Continue);
            }
        };
        match message {
            Message::Heartbeat(hb) => {
                self.last_heartbeat.store(now_ms(), Ordering::Relaxed);
                match hb.cron_host {
                    Some(c) => self.on_cron_host(c).await,
                    None => Ok(Flow::Continue),
                }
            }
            Message::ExecutionReport(report) => self.on_report(ws, report).await,
            Message::CronStatus(status) => {
                // Validated like a cron list, paced like a report, logged as
                // counts (no peer text reaches the log), stored only when
                // it changed.
                if let Err(e) = status.validate() {
                    return Ok(self
                        .protocol_error(WsRefusal::InvalidPayload, &format!("cron_status: {e}")));
                }
                let bytes = serde_json::to_vec(&status).map_or(0, |b| b.len());
                self.pace(bytes).await;
                if self.cron_status.as_ref() == Some(&status) {
                    return Ok(Flow::Continue);
                }
                if !status.rejected.is_empty() {
                    warn!(hostname = %self.hostname, installed = status.installed.len(), rejected = status.rejected.len(), "agent refused cron entries (GET /agents shows which, and why)");
                }
                // Each write is its own fsync'd transaction: one a second
                // per connection; a faster sender waits to be read.
                if let Some(at) = self.cron_status_at {
                    tokio::time::sleep_until(at + Duration::from_secs(1)).await;
                }
                self.cron_status_at = Some(tokio::time::Instant::now());
                let host = self.hostname.clone();
                let stored = status.clone();
                self.state
                    .db
                    .call(move |s| {
                        s.set_cron_status(&host, &stored)?;
                        s.note_cron_status(host.as_str(), &stored, now_ms())
                    })
                    .await?;
                // The agent applied a list: the tracker reads it again.
                self.state.schedules.host_changed(self.hostname.as_str());
                self.cron_status = Some(status);
                Ok(Flow::Continue)
            }
            Message::Register(_) => Ok(self.protocol_error(
                WsRefusal::UnexpectedType,
                "register on a registered connection",
            )),
            other => Ok(self.protocol_error(
                WsRefusal::UnexpectedType,
                &format!("{} is not sent by agents", other.kind()),
            )),
        }
    }

    async fn on_report<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        report: ExecutionReport,
    ) -> Result<Flow>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let valid = match report.validate() {
            Ok(valid) => valid,
            Err(e) => {
                self.state.metrics.report_refused(ReportRefusal::Invalid);
                return Ok(self
                    .protocol_error(WsRefusal::InvalidReport, &format!("execution_report: {e}")));
            }
        };
        // Stored as the validated structure, re-serialised: the spec's
        // fields and our documented extensions, nothing the peer added.
        let payload = serde_json::to_string(&report).context("serialising a report")?;
        self.pace(payload.len()).await;
        let dedupe_key = match &report.report_id {
            Some(id) => format!("id:{id}"),
            None => derived_report_key(&report),
        };
        let op = ReportWrite {
            hostname: self.hostname.clone(),
            job_id: valid.job_id,
            dedupe_key,
            payload,
            limits: self.state.settings.report_limits,
        };
        // Committed with whatever other reports arrive meanwhile.
        let stored = match self.state.writer.report(op).await {
            Ok(ReportOutcome {
                stored,
                released,
                new,
            }) => {
                if let Some((kind, settled)) = new {
                    self.state.metrics.report_stored(kind);
                    if kind == wire::ReportKind::Cron {
                        // When cron started the run: before its jitter wait.
                        let waited = i64::try_from(report.waited_ms.unwrap_or(0)).unwrap_or(0);
                        let fire_ms = valid.start_time.unix_millis().saturating_sub(waited);
                        self.state.schedules.reported(
                            self.hostname.as_str(),
                            &report.job_id,
                            fire_ms,
                        );
                        if report.exit_code == crate::schedules::EXIT_SKIPPED {
                            self.state.metrics.scheduled_skipped();
                        }
                    }
                    if settled {
                        self.state.metrics.job_done(report.duration_ms);
                    }
                }
                // Held jobs of a batched run this report made room for.
                for host in released {
                    self.state.hub.nudge(&host);
                }
                Ok(stored)
            }
            Err(e) => Err(e),
        };
        match stored {
            // Refused for good (sent again, it would be refused again): an
            // agent that gave the report an id is told so, and drops it
            // from its outbox. A spec-only agent (no id) is told nothing
            // and sends it again on its next connection, as before.
            Ok(Stored::Refused(why)) => {
                // One per report a full host sends: bounded, the metric
                // and `GET /agents` count them all.
                if let Some(left_out) = REFUSED_REPORTS.allow() {
                    warn!(hostname = %self.hostname, job_id = %report.job_id, left_out, "report refused: {why}");
                }
                self.state.metrics.report_refused(match why {
                    Refusal::Quota { .. } => ReportRefusal::Quota,
                    Refusal::Unmatched { .. } => ReportRefusal::UnmatchedQuota,
                });
                let reason = why.to_string();
                self.state.refusals.record(self.hostname.as_str(), &reason);
                if let Some(report_id) = report.report_id {
                    let rejected = ReportRejected::new(report_id, &reason);
                    send(ws, &Message::ReportRejected(rejected)).await?;
                }
            }
            Ok(outcome) => {
                if outcome == Stored::Duplicate {
                    debug!(hostname = %self.hostname, job_id = %report.job_id, "duplicate report");
                } else {
                    info!(hostname = %self.hostname, job_id = %report.job_id, exit_code = report.exit_code, "report stored");
                }
                if let Some(report_id) = report.report_id {
                    send(ws, &Message::ReportAck(ReportAck { report_id })).await?;
                }
                // A slot of the window may be free now: taken if the
                // last hand-over filled the window or a job came since.
                if outcome == Stored::New && self.nudges.room_wanted() {
                    self.dispatch(ws).await?;
                }
            }
            // A storage error may pass: neither acknowledged nor
            // rejected, so the agent keeps it — and sends it again only on
            // its next connection (a report it sent is not sent twice on
            // one). So the connection is closed: the agent reconnects with
            // backoff and sends its outbox again (seen: with the database
            // away 2 s, 32 of 600 reports waited for ever on connections
            // that stayed up).
            Err(e) => {
                self.state.metrics.report_refused(ReportRefusal::Error);
                error!(hostname = %self.hostname, job_id = %report.job_id, "storing report failed: {e:#}");
                return Ok(Flow::Close(
                    CloseCode::Error,
                    "the listener could not store a report: send it again",
                ));
            }
        }
        Ok(Flow::Continue)
    }

    /// Hands the agent the queued jobs its window allows, oldest first
    /// (`Store::take_for_host` marks them sent in the same transaction);
    /// whatever cannot be written goes back in the queue.
    async fn dispatch<S>(&self, ws: &mut WebSocketStream<S>) -> Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        loop {
            let op = TakeWrite {
                hostname: self.hostname.clone(),
                window: self.window,
                conn: self.conn_id,
                nudges: Some(Arc::clone(&self.nudges)),
            };
            let jobs = self.state.writer.take(op).await?;
            self.nudges.committed();
            let full_batch = jobs.len() as i64 == crate::store::TAKE_BATCH;
            for (i, job) in jobs.iter().enumerate() {
                if let Err(e) = async { send_text(ws, job_text(job)?).await }.await {
                    let unsent: Vec<String> = jobs[i..].iter().map(|j| j.job_id.clone()).collect();
                    let _ = self
                        .state
                        .db
                        .call(move |s| unsent.iter().try_for_each(|id| s.requeue(id)))
                        .await;
                    return Err(e);
                }
                debug!(hostname = %self.hostname, job_id = %job.job_id, "job sent");
            }
            if !full_batch {
                return Ok(());
            }
        }
    }
}

/// The `execute_job` message for a stored job, its signature beside it.
pub fn job_text(job: &JobRow) -> Result<String> {
    let signed: Option<cc_proto::sign::Signed> = job
        .signed
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .context("stored signature is corrupt")?;
    Ok(Message::ExecuteJob(job_message(job)).to_json_signed(signed.as_ref())?)
}

async fn send_text<S>(ws: &mut WebSocketStream<S>, text: String) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ws.send(WsMessage::Text(text.into())).await?;
    Ok(())
}

/// The `execute_job` for a stored job.
pub fn job_message(job: &JobRow) -> ExecuteJob {
    ExecuteJob {
        job_id: job.job_id.clone(),
        command: job.command.clone(),
        args: job.args.clone(),
        timeout: Some(job.timeout_secs),
    }
}

/// Dedupe key for a report without `reportId` (a spec-only agent): the same
/// run resent has the same job, start time and command line.
fn derived_report_key(r: &ExecutionReport) -> String {
    let mut h = Sha256::new();
    for part in [&r.job_id, &r.start_time, &r.command] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    format!("derived:{}", hex::encode(&h.finalize()[..16]))
}

async fn send<S>(ws: &mut WebSocketStream<S>, message: &Message) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let text = message.to_json()?;
    ws.send(WsMessage::Text(text.into())).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> ExecutionReport {
        ExecutionReport {
            job_id: "cron-1".into(),
            command: "x".into(),
            exit_code: 0,
            stdout: String::new(),
            stderr: String::new(),
            start_time: "2024-03-20T10:00:00Z".into(),
            duration_ms: 1,
            executing_uid: 1,
            executing_user: "u".into(),
            warning: None,
            report_id: None,
            waited_ms: None,
        }
    }

    /// The key stored reports were deduplicated with: changing how it is
    /// computed would let every stored report's resend in as new. The
    /// value is SHA-256 of "cron-1\0" "2024-03-20T10:00:00Z\0" "x\0",
    /// first 16 bytes, computed apart:
    /// `printf 'cron-1\0002024-03-20T10:00:00Z\000x\000' | sha256sum`.
    #[test]
    fn a_derived_key_is_pinned() {
        assert_eq!(
            derived_report_key(&report()),
            "derived:0485fa239492498a96830fab2e690f91"
        );
    }

    #[test]
    fn derived_keys_separate_runs_and_match_resends() {
        let r = report();
        let key = derived_report_key(&r);
        // Another run: another job, start time or command line.
        let other_runs = [
            ExecutionReport {
                job_id: "cron-2".into(),
                ..report()
            },
            ExecutionReport {
                start_time: "2024-03-20T10:01:00Z".into(),
                ..report()
            },
            ExecutionReport {
                command: "y".into(),
                ..report()
            },
            // The parts are kept apart: moving a byte across a boundary
            // is another run.
            ExecutionReport {
                job_id: "cron-12024-03-20T10:00:00Z".into(),
                start_time: String::new(),
                ..report()
            },
        ];
        for other in &other_runs {
            assert_ne!(derived_report_key(other), key, "{other:?}");
        }
        // The same run sent again: what the run produced does not enter the key.
        let resend = ExecutionReport {
            exit_code: 1,
            stdout: "out".into(),
            stderr: "err".into(),
            duration_ms: 2,
            warning: Some("w".into()),
            ..report()
        };
        assert_eq!(derived_report_key(&resend), key);
    }

    /// What a refusal says reaches the agent whole: it passes the agent's
    /// checks as it is, neither cut nor changed, at its longest.
    #[test]
    fn every_refusal_is_a_valid_rejection_as_it_is() {
        for why in [
            Refusal::Quota {
                used: u64::MAX,
                size: u64::MAX,
                quota: u64::MAX,
            },
            Refusal::Unmatched { quota: u64::MAX },
        ] {
            let r = ReportRejected::new("r1".into(), &why.to_string());
            r.validate().unwrap();
            assert_eq!(r.reason, why.to_string());
        }
    }
}
