//! The `/agent` WebSocket endpoint.
//!
//! `accept_connection` owns one TCP connection and logs how it ended;
//! `handle_connection` does the work and uses `?`. The API key is checked in
//! the handshake callback, before the upgrade: missing, unknown or revoked →
//! HTTP 401 and no WebSocket. Limits are chosen on purpose (`ws_config`).
//!
//! Policy for what an agent sends:
//! - malformed JSON, wrong types, invalid values, binary frames, or
//!   listener-to-agent message types: logged and dropped; after
//!   [`MAX_PROTOCOL_ERRORS`] of them the connection is closed with 1008;
//! - unknown message types and unknown fields: logged at debug and ignored
//!   (the protocol grows);
//! - a frame over [`MAX_MESSAGE_BYTES`]: the connection is closed (1009),
//!   since the stream cannot be resynchronised.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use futures_util::{SinkExt, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::{MissedTickBehavior, interval, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tracing::{debug, error, info, warn};

use cc_proto::wire::{
    self, AgentInfo, DecodeError, ExecuteJob, ExecutionReport, Incoming, MAX_MESSAGE_BYTES,
    Message, ReportAck, ReportRejected,
};

use crate::hub::{OUTBOUND_QUEUE, Outbound};
use crate::metrics::{ConnRefusal, ReportRefusal, WsRefusal};
use crate::pending::{Admitted, Limits, Marker, Pending, Refused};
use crate::store::{
    BindWrite, Binding, JobRow, KeyRecord, Refusal, RegisterWrite, ReportOutcome, ReportWrite,
    Stored, TakeWrite, TouchWrite,
};
use crate::{AppState, now_ms};
use cc_proto::logline::LogBudget;

/// Handshakes without a valid key: anyone can make them, as fast as they
/// like, so they are logged 20 a second at most; `left_out` on a line says
/// how many went unlogged before it (the metric counts every one).
static BAD_KEYS: LogBudget = LogBudget::new(Duration::from_secs(1), 20);

/// Reports refused for a quota, logged 20 a second at most (all hosts).
static REFUSED_REPORTS: LogBudget = LogBudget::new(Duration::from_secs(1), 20);

/// Keys refused for registering too often, logged 20 a second at most.
static TOO_FAST: LogBudget = LogBudget::new(Duration::from_secs(1), 20);

/// Invalid messages from agents, logged 100 in 10 s at most (all hosts;
/// the metric counts each).
static INVALID_MESSAGES: LogBudget = LogBudget::new(Duration::from_secs(10), 100);

/// Invalid messages tolerated on one connection before it is closed.
pub const MAX_PROTOCOL_ERRORS: u32 = 16;

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        // Allocated up front for every connection: keep idle agents cheap.
        .read_buffer_size(4 * 1024)
        // Write each message as it is sent; nothing waits in a buffer.
        .write_buffer_size(0)
        // Back-pressure: a peer that does not read stops us at 2 MiB.
        .max_write_buffer_size(2 * MAX_MESSAGE_BYTES)
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
}

/// Accepts agents until `shutdown` flips. Who gets a place before
/// registering is [`crate::pending`]'s to say.
pub async fn accept_loop(
    listener: TcpListener,
    state: Arc<AppState>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    let registered = Arc::new(Semaphore::new(state.settings.max_connections));
    let pending = Pending::new(Limits {
        max: state.settings.max_unauthenticated,
        per_source: state.settings.max_unauthenticated_per_source,
        per_48: state.settings.max_unauthenticated_per_48,
        failures_per_sec: state.settings.unauthenticated_failures_per_sec,
    });
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let admitted = match pending.admit(peer.ip()) {
                        Ok(a) => a,
                        Err(why) => {
                            let (reason, what) = match why {
                                Refused::SourceFull => (ConnRefusal::PerSource, "its source holds its share of unregistered connections"),
                                Refused::SourceFailing => (ConnRefusal::SourceFailing, "its source spent its budget of failed connections"),
                                Refused::Full => (ConnRefusal::Budget, "every unregistered place is held by a connection that spoke"),
                            };
                            state.metrics.connection_refused(reason);
                            debug!(%peer, "refused: {what}");
                            continue;
                        }
                    };
                    let _ = tcp.set_nodelay(true);
                    let state = Arc::clone(&state);
                    let registered = Arc::clone(&registered);
                    let deadline = tokio::time::Instant::now() + state.settings.auth_timeout;
                    // Two task types, so a plaintext connection is not sized
                    // for a TLS stream.
                    match tls.clone() {
                        None => {
                            tokio::spawn(async move {
                                let mut admitted = admitted;
                                if first_bytes(&tcp, &mut admitted, deadline, &state, peer).await {
                                    serve_agent(tcp, peer, &state, admitted, deadline, &registered).await;
                                }
                            });
                        }
                        Some(acceptor) => {
                            tokio::spawn(async move {
                                let mut admitted = admitted;
                                if !first_bytes(&tcp, &mut admitted, deadline, &state, peer).await {
                                    return;
                                }
                                let handshake = tokio::time::timeout_at(deadline, Box::pin(acceptor.accept(tcp)));
                                let tls = tokio::select! {
                                    r = handshake => r,
                                    _ = &mut admitted.evicted => {
                                        state.metrics.connection_refused(ConnRefusal::Budget);
                                        debug!(%peer, "closed during TLS: pushed out of the unregistered budget");
                                        return;
                                    }
                                };
                                match tls {
                                    Ok(Ok(stream)) => serve_agent(stream, peer, &state, admitted, deadline, &registered).await,
                                    Ok(Err(e)) => info!(%peer, "TLS handshake failed: {e}"),
                                    Err(_) => info!(%peer, "TLS handshake timed out"),
                                }
                            });
                        }
                    }
                }
                Err(e) => {
                    // Out of descriptors and the like: back off, keep serving.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// Waits for the connection's first bytes, by `deadline`: until then it
/// is silent, the first to be pushed out when the budget is full. False:
/// it was pushed out, timed out or failed first.
async fn first_bytes(
    tcp: &tokio::net::TcpStream,
    admitted: &mut Admitted,
    deadline: tokio::time::Instant,
    state: &AppState,
    peer: SocketAddr,
) -> bool {
    // `peek`, not `readable`: readiness may be reported before any byte
    // (tokio allows false positives), and a silent socket must stay silent.
    let mut byte = [0u8; 1];
    let r = tokio::select! {
        r = tokio::time::timeout_at(deadline, tcp.peek(&mut byte)) => r,
        _ = &mut admitted.evicted => {
            state.metrics.connection_refused(ConnRefusal::Budget);
            debug!(%peer, "closed while silent: pushed out of the unregistered budget");
            return false;
        }
    };
    match r {
        Ok(Ok(0)) => {
            debug!(%peer, "closed before its first byte");
            false
        }
        Ok(Ok(_)) => {
            admitted.spoke();
            true
        }
        Ok(Err(e)) => {
            debug!(%peer, "connection failed before its first byte: {e}");
            false
        }
        Err(_) => {
            debug!(%peer, "no byte within the time to register; closing");
            false
        }
    }
}

/// One agent connection from the first byte to the end, and how it ended.
///
/// Set-up (handshake, register, key binding) must end by `deadline` and
/// ends early if the connection is evicted; it runs boxed: it is transient
/// and its state machine is large, so it must not size the future every
/// idle connection keeps for its whole life (see BENCHMARKS.md).
async fn serve_agent<S>(
    stream: S,
    peer: SocketAddr,
    state: &AppState,
    mut admitted: Admitted,
    deadline: tokio::time::Instant,
    registered: &Arc<Semaphore>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let greeted = tokio::select! {
        r = Box::pin(greet(stream, peer, state, deadline, admitted.marker())) => r,
        _ = &mut admitted.evicted => {
            state.metrics.connection_refused(ConnRefusal::Budget);
            debug!(%peer, "closed: pushed out of the unregistered budget");
            return;
        }
    };
    // A valid key and a valid `register`: out of the unregistered budget,
    // however long the store then takes to bind the key (in a storm of
    // registrations on a shared database, longer than the time to
    // register: the budget would close the oldest, which reconnect and
    // crowd out the rest).
    let too_fast = greeted
        .as_ref()
        .is_ok_and(|(_, key, _)| !admitted.registration_allowed(key.id));
    drop(admitted);
    let result = match greeted {
        Ok((mut ws, key, info)) if too_fast => {
            state.metrics.connection_refused(ConnRefusal::Reconnecting);
            if let Some(left_out) = TOO_FAST.allow() {
                warn!(%peer, key = %key.name, hostname = %info.hostname, left_out, "refused: this key registers too often");
            }
            close(
                &mut ws,
                CloseCode::Again,
                "this key registers too often; try again later",
            )
            .await;
            Ok(())
        }
        Ok((mut ws, key, info)) => {
            if let Ok(permit) = Arc::clone(registered).try_acquire_owned() {
                let r = match Box::pin(bind(ws, key, info, peer, state)).await {
                    Ok(Some((session, ws, key_id, info))) => {
                        session.run(ws, key_id, info, peer).await
                    }
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                };
                drop(permit);
                r
            } else {
                state
                    .metrics
                    .connection_refused(ConnRefusal::MaxConnections);
                warn!(%peer, hostname = %info.hostname, max = state.settings.max_connections, "max_connections reached; closing");
                close(
                    &mut ws,
                    CloseCode::Again,
                    "the listener is at max_connections",
                )
                .await;
                Ok(())
            }
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => debug!(%peer, "agent connection closed"),
        Err(e) => info!(%peer, "agent connection ended: {e:#}"),
    }
}

fn refuse(status: StatusCode, why: &str) -> ErrorResponse {
    let mut resp = ErrorResponse::new(Some(format!("{why}\n")));
    *resp.status_mut() = status;
    resp
}

/// A registered agent, ready to serve.
type Ready<'a, S> = (Session<'a>, WebSocketStream<S>, i64, AgentInfo);

/// An agent with a valid key that sent a valid `register`.
type Greeted<S> = (WebSocketStream<S>, KeyRecord, AgentInfo);

/// Handshake with the key check, then `register`, by `deadline`.
async fn greet<S>(
    stream: S,
    peer: SocketAddr,
    state: &AppState,
    deadline: tokio::time::Instant,
    marker: Marker,
) -> Result<Greeted<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut key: Option<KeyRecord> = None;
    let store = state.db.store();
    // The signature is tungstenite's `Callback`; its error type is not ours.
    #[allow(clippy::result_large_err)]
    let check = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != "/agent" {
            return Err(refuse(StatusCode::NOT_FOUND, "agents connect to /agent"));
        }
        let presented = req
            .headers()
            .get("x-cc-api-key")
            .and_then(|v| v.to_str().ok());
        let Some(presented) = presented else {
            state.metrics.connection_refused(ConnRefusal::Auth);
            if let Some(left_out) = BAD_KEYS.allow() {
                warn!(%peer, left_out, "refused: no X-CC-API-KEY");
            }
            return Err(refuse(StatusCode::UNAUTHORIZED, "missing X-CC-API-KEY"));
        };
        // A blocking call inside the handshake's callback: PostgreSQL's
        // client must not block a runtime thread, so this worker steps out
        // of the runtime for it (SQLite on a single-threaded runtime, as in
        // some tests, is called directly).
        let lookup = || store.authenticate(presented);
        let found = match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::CurrentThread => lookup(),
            _ => tokio::task::block_in_place(lookup),
        };
        match found {
            Ok(Some(record)) => {
                marker.keyed();
                key = Some(record);
                Ok(resp)
            }
            Ok(None) => {
                state.metrics.connection_refused(ConnRefusal::Auth);
                if let Some(left_out) = BAD_KEYS.allow() {
                    warn!(%peer, left_out, "refused: unknown or revoked API key");
                }
                Err(refuse(
                    StatusCode::UNAUTHORIZED,
                    "unknown or revoked X-CC-API-KEY",
                ))
            }
            Err(e) => {
                error!(%peer, "key lookup failed: {e:#}");
                Err(refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "key store unavailable",
                ))
            }
        }
    };
    let handshake =
        tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(ws_config()));
    let mut ws = tokio::time::timeout_at(deadline, handshake)
        .await
        .context("WebSocket handshake timed out")?
        .context("WebSocket handshake failed")?;
    let key = key.context("handshake accepted without a key")?;

    let info = match tokio::time::timeout_at(deadline, wait_for_register(&mut ws)).await {
        Ok(Ok(info)) => info,
        Ok(Err(e)) => {
            state.metrics.connection_refused(ConnRefusal::Register);
            close(
                &mut ws,
                CloseCode::Policy,
                "the first message must be a valid register",
            )
            .await;
            return Err(e.context(format!("key {:?}: bad registration", key.name)));
        }
        Err(_) => {
            state.metrics.connection_refused(ConnRefusal::Register);
            close(&mut ws, CloseCode::Policy, "no register in time").await;
            return Err(anyhow!(
                "key {:?}: no register within the time limit",
                key.name
            ));
        }
    };
    Ok((ws, key, info))
}

/// Binds the key to the host on first use, or refuses a key or hostname
/// that belongs to another. `Ok(None)`: the agent was refused and told why.
async fn bind<S>(
    mut ws: WebSocketStream<S>,
    key: KeyRecord,
    info: AgentInfo,
    peer: SocketAddr,
    state: &AppState,
) -> Result<Option<Ready<'_, S>>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let hostname = info.hostname.clone();

    // Committed with other registrations: a reconnect storm costs a
    // commit per group, not per agent.
    let binding = state
        .writer
        .bind(BindWrite {
            key_id: key.id,
            hostname: hostname.clone(),
            tags: info.tags.iter().map(ToString::to_string).collect(),
        })
        .await?;
    match binding {
        Binding::Ok => {}
        Binding::OtherHost(bound) => {
            state.metrics.connection_refused(ConnRefusal::KeyBinding);
            warn!(%peer, key = %key.name, %hostname, %bound, "refused: key belongs to another hostname");
            close(
                &mut ws,
                CloseCode::Policy,
                "this key belongs to another hostname",
            )
            .await;
            return Ok(None);
        }
        Binding::OtherTags(bound) => {
            state.metrics.connection_refused(ConnRefusal::KeyBinding);
            let sent: Vec<String> = info.tags.iter().map(ToString::to_string).collect();
            let why = tags_differ(&bound, &sent);
            warn!(%peer, key = %key.name, %hostname, bound = ?bound, sent = ?sent, "refused: {why}");
            close(&mut ws, CloseCode::Policy, &why).await;
            return Ok(None);
        }
        Binding::HostnameTaken => {
            state.metrics.connection_refused(ConnRefusal::KeyBinding);
            warn!(%peer, key = %key.name, %hostname, "refused: hostname belongs to another key");
            close(
                &mut ws,
                CloseCode::Policy,
                "this hostname belongs to another key",
            )
            .await;
            return Ok(None);
        }
    }

    let session = Session {
        state,
        window: info.job_window,
        hostname,
        conn_id: state.hub.next_conn_id(),
        last_seen: Arc::new(AtomicI64::new(now_ms())),
        last_heartbeat: Arc::new(AtomicI64::new(0)),
        protocol_errors: 0,
        rate_tokens: state.settings.report_rate_bytes as f64 * 4.0,
        rate_at: tokio::time::Instant::now(),
        busy_until: 0,
        cron_status: None,
        cron_status_at: None,
    };
    Ok(Some((session, ws, key.id, info)))
}

/// The close reason for a registration whose tags are not its key's:
/// what it added (`+`) and left out (`-`), within a close frame's 123
/// bytes.
fn tags_differ(bound: &[String], sent: &[String]) -> String {
    let sent = crate::store::canonical_tags(sent);
    let mut why = String::from("tags are not this key's (ccctl keys retag):");
    let added = sent.iter().filter(|t| !bound.contains(t)).map(|t| ('+', t));
    let missing = bound.iter().filter(|t| !sent.contains(t)).map(|t| ('-', t));
    for (sign, tag) in added.chain(missing) {
        if why.len() + 2 + tag.len() > 119 {
            why.push_str(" ...");
            break;
        }
        why.push(' ');
        why.push(sign);
        why.push_str(tag);
    }
    why
}

/// Reads until the first data frame, which must be `register`.
async fn wait_for_register<S>(ws: &mut WebSocketStream<S>) -> Result<AgentInfo>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let frame = ws.next().await.context("closed before register")??;
        let text = match frame {
            WsMessage::Text(t) => t,
            WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => continue,
            WsMessage::Binary(_) => return Err(anyhow!("binary frame before register")),
            WsMessage::Close(_) => return Err(anyhow!("closed before register")),
        };
        let decoded = wire::decode(text.as_str())?;
        return match decoded.message {
            Incoming::Known(Message::Register(r)) => Ok(r.validate()?),
            Incoming::Known(other) => Err(anyhow!("{} before register", other.kind())),
            Incoming::UnknownType(t) => Err(anyhow!("unknown type {t:?} before register")),
        };
    }
}

async fn close<S>(ws: &mut WebSocketStream<S>, code: CloseCode, reason: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = timeout(Duration::from_secs(2), ws.close(Some(frame))).await;
}

struct Session<'a> {
    state: &'a AppState,
    hostname: cc_proto::Hostname,
    /// The agent's `jobWindow`; `None` for a spec-only agent.
    window: Option<u32>,
    conn_id: u64,
    last_seen: Arc<AtomicI64>,
    last_heartbeat: Arc<AtomicI64>,
    protocol_errors: u32,
    /// Report bytes this connection may still send before it is paced
    /// (negative: owed), as of `rate_at`.
    rate_tokens: f64,
    rate_at: tokio::time::Instant,
    /// When this task last came back to reading after waiting long on the
    /// store (ms since the epoch): the silence of an agent is counted from
    /// then at the earliest, since what it sent meanwhile sat unread.
    busy_until: i64,
    /// The last `cron_status` stored from this connection: the same again
    /// is not written again.
    cron_status: Option<cc_proto::wire::CronStatus>,
    /// When it was stored: a changed one is stored a second later at the
    /// soonest.
    cron_status_at: Option<tokio::time::Instant>,
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

    async fn run<S>(
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
            tx,
        ) {
            info!(hostname = %self.hostname, old_conn = old, "a newer connection replaces the old one");
        }
        if info.is_root && info.execution_mode == wire::ExecutionMode::User {
            warn!(hostname = %self.hostname, "agent runs as root in user mode");
        }
        info!(hostname = %self.hostname, %peer, mode = ?info.execution_mode, is_root = info.is_root, "agent registered");

        let result = self.serve(&mut ws, &mut rx).await;
        // Grouped with other writes: when a listener stops, all its
        // connections end at once. Recorded before the connection leaves
        // the hub, which a stopping listener waits to see empty.
        let touch = TouchWrite {
            hostname: self.hostname.clone(),
            last_seen_ms: self.last_seen.load(Ordering::Relaxed),
            conn: self.conn_id,
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
                    if now_ms() - heard > silence_limit {
                        Flow::Close(CloseCode::Away, "silent for three heartbeat intervals")
                    } else {
                        ws.send(WsMessage::Ping(Default::default())).await?;
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
        if let Some((entries, signed)) = self
            .state
            .db
            .call(move |s| s.get_cron(host.as_str()))
            .await?
        {
            let signed = signed.and_then(|t| serde_json::from_str(&t).ok());
            send_text(
                ws,
                Message::CronRefresh(entries).to_json_signed(signed.as_ref())?,
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
            Message::Heartbeat(_) => {
                self.last_heartbeat.store(now_ms(), Ordering::Relaxed);
                Ok(Flow::Continue)
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
                    .call(move |s| s.set_cron_status(&host, &stored))
                    .await?;
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
                if outcome == Stored::New {
                    // A slot of the window may be free now.
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
            };
            let jobs = self.state.writer.take(op).await?;
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

    #[test]
    fn a_tag_refusal_names_the_difference_within_a_close_frame() {
        let v = |t: &[&str]| t.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            tags_differ(&v(&["a", "b"]), &v(&["c", "b"])),
            "tags are not this key's (ccctl keys retag): +c -a"
        );
        let many: Vec<String> = (0..40).map(|i| format!("tag-number-{i}")).collect();
        let why = tags_differ(&[], &many);
        assert!(
            why.len() <= 123 && why.ends_with(" ..."),
            "{} {why}",
            why.len()
        );
    }

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
