//! Simulated agents for load: WebSocket clients that register, heartbeat,
//! and answer every `execute_job` at once with a report (with a `reportId`,
//! so a resend is stored once), reconnecting if the connection ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::ws;

/// Counters shared by all simulated agents.
#[derive(Debug, Default)]
pub struct SimStats {
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

/// Runs one simulated agent for ever (until the runtime is dropped).
/// `gate` bounds handshakes in flight; its permit is released once
/// registered.
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
    let mut register = ws::register(&host);
    register["payload"]["tags"] = json!(tags);
    let mut first = true;
    loop {
        if !first {
            stats.reconnects.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        first = false;
        let permit = gate.acquire().await;
        let Ok(mut req) = url.as_str().into_client_request() else {
            return;
        };
        let Ok(k) = HeaderValue::from_str(&key) else {
            return;
        };
        req.headers_mut().insert("X-CC-API-KEY", k);
        let mut conn = match tokio_tungstenite::connect_async(req).await {
            Ok((c, _)) => c,
            Err(e) => {
                stats.note(format!("handshake: {e}"));
                continue;
            }
        };
        if conn
            .send(Message::Text(register.to_string().into()))
            .await
            .is_err()
        {
            continue;
        }
        drop(permit);
        let mut tick = tokio::time::interval(heartbeat);
        loop {
            tokio::select! {
                m = conn.next() => {
                    let m = match m {
                        Some(Ok(m)) => m,
                        Some(Err(e)) => { stats.note(format!("read: {e}")); break }
                        None => { stats.note("closed by the listener".into()); break }
                    };
                    let Message::Text(t) = m else { continue };
                    let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else { continue };
                    if v["type"] != "execute_job" {
                        continue;
                    }
                    let id = v["payload"]["jobId"].as_str().unwrap_or_default().to_owned();
                    let report = json!({"type": "execution_report", "payload": {
                        "jobId": id, "reportId": format!("sim-{id}"),
                        "command": "/bin/true", "exitCode": 0, "stdout": "", "stderr": "",
                        "startTime": "2026-01-01T00:00:00Z", "durationMs": 1,
                        "executingUid": 1000, "executingUser": "sim"
                    }});
                    if conn.send(Message::Text(report.to_string().into())).await.is_err() {
                        break;
                    }
                }
                _ = tick.tick() => {
                    let hb = json!({"type": "heartbeat", "payload": {}});
                    if conn.send(Message::Text(hb.to_string().into())).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
}
