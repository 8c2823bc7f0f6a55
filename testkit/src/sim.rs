//! Simulated agents for load: WebSocket clients that register, heartbeat,
//! and answer every `execute_job` at once with a report. One loop serves
//! the suites' load (reconnecting for ever: [`agent`], [`tagged`]) and the
//! benchmarks' measurements ([`run`]); a [`Behaviour`] says what differs
//! between them (the report, the heartbeat's phase, the socket's buffers,
//! what happens after a failure) and an [`Observer`] hears what happened.
//!
//! Invariants: a `gate` permit is held from before the handshake until
//! `register` is sent (or the attempt failed), so the gate bounds
//! handshakes in flight; nothing is sent before `register`; a report is
//! sent for every `execute_job`, at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::ws;

/// What follows a failed handshake or an ended connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconnect {
    /// Nothing: the agent ends.
    Never,
    /// Another attempt after this pause, for ever.
    After(Duration),
    /// As the real agent: a failed handshake is retried after 500 ms ×
    /// the attempt, and the agent gives up after 5 in a row; an ended
    /// connection is retried after a capped exponential backoff (1 s to
    /// 32 s), jittered in its upper half (`cc-agent`'s reconnect policy).
    LikeTheAgent,
}

/// What a simulated agent does; see [`Behaviour::suite`] and
/// [`Behaviour::bench`] for the two in use.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// The tags of its `register`.
    pub tags: Vec<String>,
    pub heartbeat: Duration,
    /// The first heartbeat after an offset within the interval that the
    /// hostname picks (spreading a fleet's heartbeats), else at once.
    pub spread_heartbeats: bool,
    /// The WebSocket read buffer (None: tungstenite's default).
    pub read_buffer: Option<usize>,
    /// `TCP_NODELAY` on the connection.
    pub nodelay: bool,
    /// How long a handshake may take (None: no limit of its own).
    pub handshake_timeout: Option<Duration>,
    /// The `execution_report` message for a job id.
    pub report: fn(&str) -> Value,
    /// Reports not acknowledged yet are sent again on the next connection,
    /// as the real agent's outbox does.
    pub resend_unacked: bool,
    pub reconnect: Reconnect,
}

impl Behaviour {
    /// The suites' agent: registers with `tags`, heartbeats every
    /// `heartbeat` from the start, reports as [`suite_report`], and
    /// reconnects 500 ms after any failure, for ever.
    pub fn suite(tags: &[&str], heartbeat: Duration) -> Self {
        Self {
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            heartbeat,
            spread_heartbeats: false,
            read_buffer: None,
            nodelay: false,
            handshake_timeout: None,
            report: suite_report,
            resend_unacked: false,
            reconnect: Reconnect::After(Duration::from_millis(500)),
        }
    }

    /// The benchmarks' agent: tag `bench`, heartbeats spread over the
    /// interval, a 4 KiB read buffer (thousands of connections in one
    /// process), `TCP_NODELAY`, reports as [`bench_report`] (the
    /// `reportId` is the job id, so an acknowledgement names its job), and
    /// no reconnect.
    pub fn bench(heartbeat: Duration) -> Self {
        Self {
            tags: vec!["bench".to_owned()],
            heartbeat,
            spread_heartbeats: true,
            read_buffer: Some(4096),
            nodelay: true,
            handshake_timeout: None,
            report: bench_report,
            resend_unacked: false,
            reconnect: Reconnect::Never,
        }
    }
}

/// The suites' report of a job: `/bin/true` as user `sim`, its `reportId`
/// `sim-<job id>` (so a resend is stored once).
pub fn suite_report(job_id: &str) -> Value {
    json!({"type": "execution_report", "payload": {
        "jobId": job_id, "reportId": format!("sim-{job_id}"),
        "command": "/bin/true", "exitCode": 0, "stdout": "", "stderr": "",
        "startTime": "2026-01-01T00:00:00Z", "durationMs": 1,
        "executingUid": 1000, "executingUser": "sim"
    }})
}

/// The benchmarks' report of a `/bin/true` job: its `reportId` is the job id.
pub fn bench_report(job_id: &str) -> Value {
    json!({"type": "execution_report", "payload": {
        "jobId": job_id, "command": "/bin/true", "exitCode": 0, "stdout": "", "stderr": "",
        "startTime": "2024-03-20T10:00:00Z", "durationMs": 1, "executingUid": 1001,
        "executingUser": "cc-agent-user", "reportId": job_id}})
}

/// What a simulated agent tells: each method is called from its task.
pub trait Observer: Send + Sync {
    /// A connection is up and `register` sent; `first`: the agent's first.
    fn connected(&self, _host: &str, _first: bool) {}
    /// A handshake (or the `register` after it) failed.
    fn connect_failed(&self, _host: &str, _why: &str) {}
    /// The agent stops after failed handshakes; `ever_connected`: it had
    /// been connected before.
    fn gave_up(&self, _host: &str, _ever_connected: bool) {}
    /// A registered connection ended.
    fn ended(&self, _host: &str, _why: &str) {}
    /// An `execute_job` for `job_id` arrived (its report is sent next).
    fn job(&self, _host: &str, _job_id: &str) {}
    /// A `report_ack` for `report_id` arrived.
    fn acked(&self, _report_id: &str) {}
    /// Any other message arrived (a `cron_refresh`, say), parsed.
    fn message(&self, _host: &str, _message: &Value) {}
}

/// An observer that hears nothing.
#[derive(Debug, Default)]
pub struct Deaf;

impl Observer for Deaf {}

/// Counters shared by the suites' simulated agents.
#[derive(Debug, Default)]
pub struct SimStats {
    /// Attempts after an agent's first: after a failed handshake or an
    /// ended connection.
    pub reconnects: AtomicUsize,
    /// The first few reasons a connection failed or ended.
    pub errors: std::sync::Mutex<Vec<String>>,
}

impl SimStats {
    fn note(&self, why: String) {
        if let Ok(mut e) = self.errors.lock() {
            if e.len() < 5 {
                e.push(why);
            }
        }
    }
}

impl Observer for SimStats {
    fn connect_failed(&self, _host: &str, why: &str) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
        self.note(format!("handshake: {why}"));
    }

    fn ended(&self, _host: &str, why: &str) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
        self.note(why.to_owned());
    }
}

/// Runs one simulated agent of the suites for ever (until the runtime is
/// dropped). `gate` bounds handshakes in flight.
pub async fn agent(
    url: String,
    key: String,
    host: String,
    heartbeat: Duration,
    stats: Arc<SimStats>,
    gate: Arc<Semaphore>,
) {
    tagged(url, key, host, &["test"], heartbeat, stats, gate).await;
}

/// [`agent`], registering with `tags`.
pub async fn tagged(
    url: String,
    key: String,
    host: String,
    tags: &[&str],
    heartbeat: Duration,
    stats: Arc<SimStats>,
    gate: Arc<Semaphore>,
) {
    let how = Arc::new(Behaviour::suite(tags, heartbeat));
    run(url.into(), key, host, how, gate, stats).await;
}

/// Runs one simulated agent as `how` says, connecting to `url` with `key`
/// as `host`, until its [`Reconnect`] policy ends it (or the runtime is
/// dropped). `gate` bounds handshakes in flight.
pub async fn run(
    url: Arc<str>,
    key: String,
    host: String,
    how: Arc<Behaviour>,
    gate: Arc<Semaphore>,
    obs: Arc<dyn Observer + Send + Sync>,
) {
    let mut register = ws::register(&host);
    register["payload"]["tags"] = json!(how.tags);
    let register = register.to_string();
    let seed: u64 = host
        .bytes()
        .fold(0, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let offset = if how.spread_heartbeats {
        Duration::from_millis(seed % how.heartbeat.as_millis().max(1) as u64)
    } else {
        Duration::ZERO
    };
    let (mut connected_before, mut attempt, mut dropped) = (false, 0u32, 0u32);
    // Reports not acknowledged yet (report id, message), with `resend_unacked`.
    let mut pending: Vec<(String, String)> = Vec::new();
    loop {
        let permit = gate.acquire().await;
        let conn = connect(&url, &key, &register, &how).await;
        drop(permit);
        let mut conn = match conn {
            Ok(c) => c,
            Err(why) => {
                obs.connect_failed(&host, &why);
                attempt += 1;
                let pause = match how.reconnect {
                    Reconnect::Never => None,
                    Reconnect::After(d) => Some(d),
                    Reconnect::LikeTheAgent if attempt >= 5 => None,
                    Reconnect::LikeTheAgent => {
                        Some(Duration::from_millis(500 * u64::from(attempt)))
                    }
                };
                let Some(pause) = pause else {
                    obs.gave_up(&host, connected_before);
                    return;
                };
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        obs.connected(&host, !connected_before);
        (connected_before, attempt) = (true, 0);
        let why = session(&mut conn, &host, &how, offset, &mut pending, &*obs).await;
        obs.ended(&host, &why);
        let pause = match how.reconnect {
            Reconnect::Never => return,
            Reconnect::After(d) => d,
            Reconnect::LikeTheAgent => {
                let pause = backoff(seed, dropped);
                dropped += 1;
                pause
            }
        };
        tokio::time::sleep(pause).await;
    }
}

/// The pause before reconnecting after the agent's connection ended for
/// the `dropped`th time before (0: the first drop): 1 s doubling to 32 s,
/// jittered in its upper half by the host's `seed`.
fn backoff(seed: u64, dropped: u32) -> Duration {
    let exp = Duration::from_secs(1 << dropped.min(5));
    let jitter = seed.wrapping_mul(u64::from(dropped + 1) * 2_654_435_761) % 1000;
    exp / 2 + exp / 2 * jitter as u32 / 1000
}

/// A handshake with `key` (within `how.handshake_timeout`), then
/// `register` sent.
async fn connect(url: &str, key: &str, register: &str, how: &Behaviour) -> Result<ws::Ws, String> {
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    let k = HeaderValue::from_str(key).map_err(|e| e.to_string())?;
    req.headers_mut().insert("X-CC-API-KEY", k);
    let config = how
        .read_buffer
        .map(|n| WebSocketConfig::default().read_buffer_size(n));
    let handshake = tokio_tungstenite::connect_async_with_config(req, config, how.nodelay);
    let done = match how.handshake_timeout {
        Some(limit) => tokio::time::timeout(limit, handshake)
            .await
            .map_err(|_| format!("handshake timed out after {} s", limit.as_secs()))?,
        None => handshake.await,
    };
    let (mut conn, _) = done.map_err(|e| e.to_string())?;
    conn.send(Message::Text(register.to_owned().into()))
        .await
        .map_err(|e| format!("register: {e}"))?;
    Ok(conn)
}

/// One registered connection: `pending` sent again, then heartbeats every
/// `how.heartbeat` (the first after `offset`) and a report for each job,
/// until the connection ends: why it ended.
async fn session(
    conn: &mut ws::Ws,
    host: &str,
    how: &Behaviour,
    offset: Duration,
    pending: &mut Vec<(String, String)>,
    obs: &(dyn Observer + Send + Sync),
) -> String {
    for (_, report) in pending.iter() {
        if let Err(e) = conn.send(Message::Text(report.clone().into())).await {
            return e.to_string();
        }
    }
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + offset, how.heartbeat);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let hb = r#"{"type":"heartbeat","payload":{}}"#;
                if let Err(e) = conn.send(Message::Text(hb.into())).await {
                    return e.to_string();
                }
            }
            m = conn.next() => {
                let text = match m {
                    None => return "closed by the listener".to_owned(),
                    Some(Err(e)) => return format!("read: {e}"),
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(f))) => return format!("close {f:?}"),
                    Some(Ok(_)) => continue,
                };
                let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else { continue };
                match v["type"].as_str() {
                    Some("execute_job") => {
                        let job_id = v["payload"]["jobId"].as_str().unwrap_or_default();
                        obs.job(host, job_id);
                        let report = (how.report)(job_id);
                        let id = report["payload"]["reportId"].as_str().unwrap_or_default().to_owned();
                        let text = report.to_string();
                        if how.resend_unacked && !pending.iter().any(|(p, _)| *p == id) {
                            pending.push((id, text.clone()));
                        }
                        if let Err(e) = conn.send(Message::Text(text.into())).await {
                            return e.to_string();
                        }
                    }
                    Some("report_ack") => {
                        let id = v["payload"]["reportId"].as_str().unwrap_or_default();
                        obs.acked(id);
                        pending.retain(|(p, _)| p != id);
                    }
                    _ => obs.message(host, &v),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_32_s_and_stays_in_the_upper_half() {
        for seed in [0, 1, 7, 31, u64::MAX] {
            for dropped in 0..10u32 {
                let exp = Duration::from_secs(1 << dropped.min(5));
                let pause = backoff(seed, dropped);
                assert!(
                    pause >= exp / 2 && pause <= exp,
                    "{seed} {dropped}: {pause:?}"
                );
            }
        }
        assert_eq!(backoff(0, 0), Duration::from_millis(500));
        assert!(backoff(1, 9) <= Duration::from_secs(32));
    }
}
