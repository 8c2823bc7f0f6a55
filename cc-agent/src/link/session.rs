//! One connection's life: register, send the whole outbox, then one loop
//! that handles every frame from the listener, heartbeats and outbox
//! flushes — and, once the agent is asked to stop, the drain on the same
//! loop — then the goodbye.
//!
//! Invariants: a report leaves the outbox only on a `report_ack` or a
//! valid `report_rejected` for a report sent on *this* connection
//! ([`Sent`]); every frame, serving or draining, goes through
//! [`Session::on_frame`]; a draining agent takes no new job (`jobs.rs` is
//! closed) but still answers cron lists and takes acknowledgements.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tracing::{debug, info, warn};

use cc_proto::Timestamp;
use cc_proto::wire::{self, Heartbeat, Incoming, Message, Register, ReportRejected};

use super::Link;
use super::connect::{Ws, connect};
use crate::config::Listener;
use crate::handlers::{Agent, FROM_LISTENER};
use crate::outbox::{self, Outbox, Reserve};

/// How often the outbox is looked at for reports written by `cron-run`.
const OUTBOX_SCAN: Duration = Duration::from_secs(1);
/// How long a stopping agent waits for its last reports' acknowledgements.
const ACK_WAIT: Duration = Duration::from_secs(5);
/// After the drain time, how long stopped jobs get to end and be reported:
/// SIGTERM, the executor's grace, SIGKILL, and the report.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Reports sent on the current connection and not yet acknowledged.
pub(crate) type Sent = HashMap<String, outbox::Entry>;

/// How a session ended.
pub(super) enum Ended {
    Connection(String),
    /// The listener refused this agent (close code 1008), for this reason.
    Refused(String),
    /// The agent was asked to stop and has drained.
    Stopped,
}

/// Connects to `listener` and serves until the connection ends or the
/// agent has stopped. `delivered` is set once a frame other than a close
/// came from the listener (the reconnect policy's reset), even if the
/// session then fails.
pub(super) async fn run(
    link: &Link,
    listener: &Listener,
    delivered: &mut bool,
    done: &mut mpsc::Receiver<()>,
    stop: &mut watch::Receiver<bool>,
) -> Result<Ended> {
    let ws = tokio::select! {
        c = connect(listener, &link.key, link.tls.as_ref()) => c?,
        _ = stop.changed() => return Ok(Ended::Connection("stopping while connecting".into())),
    };
    let mut session = Session {
        agent: &link.agent,
        listener,
        ws,
        sent: HashMap::new(),
    };
    session.register().await?;
    session.serve(delivered, done, stop).await
}

/// A graceful stop's wait for the running jobs: the drain time, then the
/// jobs are stopped, then [`STOP_GRACE`] for their reports.
pub(super) struct Drain {
    deadline: Instant,
    cancelled: bool,
}

impl Drain {
    /// Stops taking jobs; those held but not started are let go (the
    /// listener still has them and sends them again to the next run).
    pub(super) fn start(agent: &Agent) -> Self {
        let dropped = agent.jobs.close();
        info!(
            running = agent.jobs.running(),
            not_started = dropped,
            drain_secs = agent.cfg.drain_timeout.as_secs(),
            "stopping: no new jobs; jobs not started are left to the listener"
        );
        Self {
            deadline: Instant::now() + agent.cfg.drain_timeout,
            cancelled: false,
        }
    }

    /// The deadline passed: the first time, the running jobs are stopped;
    /// the second, the drain gives up. Returns whether it gave up.
    fn expired(&mut self, agent: &Agent) -> bool {
        if self.cancelled {
            warn!(
                running = agent.jobs.running(),
                "jobs still running after the drain time and their grace: leaving them"
            );
            return true;
        }
        warn!(
            running = agent.jobs.running(),
            "drain time over: stopping the running jobs"
        );
        crate::jobs::cancel_all(&agent.runner.cancel);
        self.cancelled = true;
        self.deadline = Instant::now() + STOP_GRACE;
        false
    }

    /// Resolves when no job runs (true: the drain is over), or when the
    /// deadline has passed (true if the drain gave up).
    async fn step(&mut self, agent: &Agent) -> bool {
        tokio::select! {
            biased;
            () = agent.jobs.idle() => true,
            () = tokio::time::sleep_until(self.deadline.into()) => self.expired(agent),
        }
    }

    async fn step_if_any(drain: &mut Option<Drain>, agent: &Agent) -> bool {
        match drain {
            Some(d) => d.step(agent).await,
            None => std::future::pending().await,
        }
    }

    /// Waits, without a connection, until no job runs or the drain gives up.
    pub(super) async fn finish(mut self, agent: &Agent) {
        while !self.step(agent).await {}
    }
}

/// What a frame from the listener meant for the session.
enum Frame {
    /// Handled; the connection goes on.
    Handled,
    /// The connection is over, for this reason.
    Closed(String),
    /// The listener refused this agent (1008), for this reason.
    Refused(String),
}

struct Session<'a> {
    agent: &'a Agent,
    listener: &'a Listener,
    ws: Ws,
    /// Reports sent on this connection, by id: an ack deletes that file.
    sent: Sent,
}

impl Session<'_> {
    async fn send(&mut self, m: &Message) -> Result<()> {
        self.ws.send(WsMessage::Text(m.to_json()?.into())).await?;
        Ok(())
    }

    async fn register(&mut self) -> Result<()> {
        let cfg = &self.agent.cfg;
        let register = Register {
            hostname: cfg.hostname.to_string(),
            os: "linux".into(),
            arch: arch().into(),
            tags: cfg.tags.iter().map(ToString::to_string).collect(),
            execution_mode: cfg.execution_mode,
            is_root: self.agent.runner.identity.is_root(),
            job_window: Some(self.agent.jobs.window()),
            cron_host: Some(crate::cronhost::observe()),
        };
        self.send(&Message::Register(register)).await?;
        // A listener that took the registration answers this; one that
        // refused it closes first. Its answer marks the connection as
        // delivering, and only then is the agent registered (`on_frame`).
        self.ws
            .send(WsMessage::Ping(Vec::from(*b"cc").into()))
            .await?;
        debug!(hostname = %cfg.hostname, url = %self.listener.url, "registration sent");
        Ok(())
    }

    /// The session loop. Serving: frames, heartbeats, outbox flushes and
    /// scans, until the connection ends or the stop signal. Draining (after
    /// the signal): frames and flushes only, until no job runs or the drain
    /// gives up; then the goodbye.
    async fn serve(
        &mut self,
        delivered: &mut bool,
        done: &mut mpsc::Receiver<()>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Ended> {
        let agent = self.agent;
        self.flush().await?;
        let mut heartbeat = tokio::time::interval(agent.cfg.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut scan = tokio::time::interval(OUTBOX_SCAN);
        scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut drain: Option<Drain> = None;
        let lost = loop {
            let serving = drain.is_none();
            tokio::select! {
                frame = self.ws.next() => match (self.on_frame(frame, delivered).await, serving) {
                    (Ok(Frame::Handled), _) => {}
                    (Ok(Frame::Closed(why)), true) => return Ok(Ended::Connection(why)),
                    (Ok(Frame::Refused(why)), true) => return Ok(Ended::Refused(why)),
                    (Err(e), true) => return Err(e),
                    // The link is lost while draining: the drain goes on
                    // without it.
                    (_, false) => break true,
                },
                _ = heartbeat.tick(), if serving => {
                    let hb = Heartbeat {
                        timestamp: Some(Timestamp::now().to_string()),
                        cron_host: Some(crate::cronhost::observe()),
                    };
                    self.send(&Message::Heartbeat(hb)).await?;
                }
                Some(()) = done.recv() => match (self.flush().await, serving) {
                    (Ok(()), _) => {}
                    (Err(e), true) => return Err(e),
                    (Err(_), false) => break true,
                },
                _ = stop.changed(), if serving => drain = Some(Drain::start(agent)),
                _ = scan.tick(), if serving => self.scan().await?,
                over = Drain::step_if_any(&mut drain, agent), if !serving => {
                    if over {
                        break false;
                    }
                }
            }
        };
        if let (true, Some(d)) = (lost, drain) {
            d.finish(agent).await;
        }
        self.goodbye().await;
        Ok(Ended::Stopped)
    }

    /// The outbox scan: in system mode, the helper's reports of scheduled
    /// jobs are moved into the outbox first; then whatever `cron-run` or
    /// the helper put there is sent.
    async fn scan(&mut self) -> Result<()> {
        let agent = self.agent;
        if agent.cfg.execution_mode == wire::ExecutionMode::System {
            let (socket, outbox) = (agent.cfg.helper_socket.clone(), agent.outbox.clone());
            let moved = tokio::task::spawn_blocking(move || {
                crate::handlers::helper::collect_helper_reports(&socket, &outbox)
            });
            match moved.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => warn!("collecting the helper's reports failed: {e:#}"),
                Err(e) => warn!("collecting the helper's reports failed: {e}"),
            }
        }
        self.flush().await
    }

    /// Every frame from the listener, serving or draining.
    async fn on_frame(
        &mut self,
        frame: Option<Result<WsMessage, tungstenite::Error>>,
        delivered: &mut bool,
    ) -> Result<Frame> {
        let Some(frame) = frame else {
            return Ok(Frame::Closed("the listener closed the connection".into()));
        };
        let frame = frame?;
        if !matches!(frame, WsMessage::Close(_)) && !*delivered {
            // The listener's first answer after the registration: it took it.
            *delivered = true;
            let (hostname, url) = (&self.agent.cfg.hostname, &self.listener.url);
            info!(%hostname, %url, "connected and registered");
        }
        match frame {
            WsMessage::Text(text) => self.on_text(text.as_str()).await?,
            // 1008 before the listener took the registration: refused
            // (after it, a revoked key or a newer connection: an ending).
            WsMessage::Close(Some(f)) if f.code == CloseCode::Policy && !*delivered => {
                return Ok(Frame::Refused(f.reason.to_string()));
            }
            WsMessage::Close(frame) => {
                return Ok(Frame::Closed(match frame {
                    Some(f) => format!(
                        "closed by the listener ({}): {}",
                        u16::from(f.code),
                        f.reason
                    ),
                    None => "closed by the listener".into(),
                }));
            }
            WsMessage::Binary(_) => warn!("binary frame from the listener ignored"),
            _ => {}
        }
        Ok(Frame::Handled)
    }

    /// A text frame: one message from the listener, to its handler.
    async fn on_text(&mut self, text: &str) -> Result<()> {
        let agent = self.agent;
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
                crate::handlers::job::accept_job(agent, &job, raw, decoded.raw_signed).await;
            }
            Incoming::Known(Message::CronRefresh(entries)) => {
                let raw = decoded.raw_payload.unwrap_or("[]").to_owned();
                let signed = decoded.raw_signed.map(str::to_owned);
                let mut status =
                    crate::handlers::cron::apply_cron(agent, entries, raw, signed).await;
                // A status the listener refuses would leave it blind.
                status.fit();
                self.send(&Message::CronStatus(status)).await?;
            }
            Incoming::Known(Message::ReportAck(ack)) => {
                if let Some(entry) = self.sent.remove(&ack.report_id) {
                    match agent.outbox.remove(&entry) {
                        Ok(true) => debug!(report_id = %ack.report_id, "report acknowledged"),
                        Ok(false) => {}
                        Err(e) => warn!("could not remove an acknowledged report: {e:#}"),
                    }
                }
            }
            Incoming::Known(Message::ReportRejected(rejected)) => {
                on_rejected(&agent.outbox, &mut self.sent, &rejected);
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

    /// Sends every stored report not yet sent on this connection, in order.
    async fn flush(&mut self) -> Result<()> {
        let (agent, sent) = (self.agent, &mut self.sent);
        let entries = agent.outbox.list()?;
        for entry in &entries {
            if sent.contains_key(&entry.report_id) {
                continue;
            }
            let text = match agent.outbox.message(entry) {
                Ok(t) => t,
                // Removed by an ack meanwhile, or unreadable: skip it.
                Err(e) => {
                    debug!("outbox entry skipped: {e:#}");
                    continue;
                }
            };
            self.ws.send(WsMessage::Text(text.into())).await?;
            sent.insert(entry.report_id.clone(), entry.clone());
        }
        let drained = entries.is_empty();
        let dropped = agent
            .outbox
            .enforce_bound(entries, sent, outbox::MAX_REPORTS)?;
        if dropped > 0 {
            warn!(dropped, "outbox over its bound: oldest reports dropped");
        }
        // A reserve used on a full disk is made again once the outbox has
        // drained (and the file system has room: `ensure_reserve` checks).
        if drained && !agent.outbox.has_reserve() {
            let o = agent.outbox.clone();
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

    /// The end of a graceful stop on a live connection: every report sent and,
    /// for a few seconds at most, acknowledged; then close with 1001.
    async fn goodbye(&mut self) {
        let until = Instant::now() + ACK_WAIT;
        let mut ignored = false;
        while self.flush().await.is_ok() && !self.sent.is_empty() && Instant::now() < until {
            let Ok(frame) = tokio::time::timeout(Duration::from_millis(200), self.ws.next()).await
            else {
                continue;
            };
            match self.on_frame(frame, &mut ignored).await {
                Ok(Frame::Handled) => {}
                Ok(Frame::Closed(_) | Frame::Refused(_)) | Err(_) => break,
            }
        }
        if !self.sent.is_empty() {
            warn!(
                unacknowledged = self.sent.len(),
                "stopping with reports not yet acknowledged: they stay in the outbox"
            );
        }
        let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Away,
            reason: "agent shutting down".into(),
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(Some(frame))).await;
        info!("stopped");
    }
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

/// `arch` as the spec spells it.
pub(crate) fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[cfg(test)]
mod tests;
