//! The load process of `fleet_multi`: simulated agents, reporting on
//! stdout. The bench re-executes itself with `CC_FLEET_ROLE=load`, and
//! each such process connects its share of agents to one listener.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::now_us;

/// This process's soft limit on open files (`/proc/self/limits`).
fn open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------
// The load process: simulated agents, reporting on stdout.
//
// Lines it prints:
//   `ack JOB_ID MICROS`        a `report_ack` arrived (wall clock)
//   `done OK FAILED RETRIES`   every agent's first connection was attempted
//   `drop HOST REASON`         a registered agent's connection ended (it
//                              reconnects; the first 20 are printed)
//   `fail HOST ERROR`          a connect attempt failed (first 20 printed)
// It ends when its stdin closes (the bench ended or died).

struct LoadCounters {
    retries: AtomicU64,
    drops: AtomicU64,
    failed: AtomicU64,
    printed: AtomicU64,
}

async fn connect_once(
    url: &str,
    key: &str,
    host: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    String,
> {
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    req.headers_mut()
        .insert("X-CC-API-KEY", HeaderValue::from_str(key).unwrap());
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(30),
        tokio_tungstenite::connect_async_with_config(req, Some(config), true),
    )
    .await
    .map_err(|_| "handshake timed out after 30 s".to_owned())?
    .map_err(|e| e.to_string())?;
    let register = json!({"type": "register", "payload": {"hostname": host, "os": "linux", "arch": "amd64",
        "tags": ["bench"], "executionMode": "user", "isRoot": false}});
    ws.send(Message::Text(register.to_string().into()))
        .await
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

/// The `execution_report` of a `/bin/true` job; its `reportId` is the job id.
fn report_text(job_id: &str) -> String {
    json!({"type": "execution_report", "payload": {
        "jobId": job_id, "command": "/bin/true", "exitCode": 0, "stdout": "", "stderr": "",
        "startTime": "2024-03-20T10:00:00Z", "durationMs": 1, "executingUid": 1001,
        "executingUser": "cc-agent-user", "reportId": job_id}})
    .to_string()
}

#[allow(clippy::too_many_arguments)]
async fn simulated_agent(
    url: Arc<str>,
    key: String,
    host: String,
    heartbeat: Duration,
    out: std_mpsc::Sender<String>,
    gate: Arc<Semaphore>,
    counters: Arc<LoadCounters>,
    first: tokio::sync::oneshot::Sender<bool>,
) {
    let mut first = Some(first);
    let mut attempt: u32 = 0;
    let mut dropped: u32 = 0;
    // Reports not acknowledged yet: sent again on the next connection, as
    // the real agent's outbox does.
    let mut pending: Vec<String> = Vec::new();
    // Spread heartbeats over the interval.
    let seed: u64 = host
        .bytes()
        .fold(0, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let offset = Duration::from_millis(seed % heartbeat.as_millis().max(1) as u64);
    loop {
        let permit = gate.acquire().await.unwrap();
        let ws = connect_once(&url, &key, &host).await;
        drop(permit);
        let mut ws = match ws {
            Ok(ws) => {
                if let Some(f) = first.take() {
                    let _ = f.send(true);
                }
                attempt = 0;
                ws
            }
            Err(e) => {
                attempt += 1;
                counters.retries.fetch_add(1, Ordering::Relaxed);
                if counters.printed.fetch_add(1, Ordering::Relaxed) < 20 {
                    let _ = out.send(format!("fail {host} {e}"));
                }
                if attempt >= 5 {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    if let Some(f) = first.take() {
                        let _ = f.send(false);
                    }
                    return;
                }
                // Backoff, as a real agent does.
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                continue;
            }
        };
        let mut resent = Ok(());
        for job_id in &pending {
            resent = ws
                .send(Message::Text(report_text(job_id).into()))
                .await
                .map_err(|e| e.to_string());
            if resent.is_err() {
                break;
            }
        }
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + offset, heartbeat);
        let reason = loop {
            if let Err(e) = resent {
                break e;
            }
            tokio::select! {
                _ = ticker.tick() => {
                    if let Err(e) = ws.send(Message::Text(r#"{"type":"heartbeat","payload":{}}"#.into())).await {
                        break e.to_string();
                    }
                }
                msg = ws.next() => {
                    let msg = match msg {
                        None => break "closed".to_owned(),
                        Some(Err(e)) => break e.to_string(),
                        Some(Ok(m)) => m,
                    };
                    let text = match msg {
                        Message::Text(t) => t,
                        Message::Close(f) => break format!("close {f:?}"),
                        _ => continue,
                    };
                    let v: Value = serde_json::from_str(text.as_str()).unwrap();
                    match v["type"].as_str() {
                        Some("execute_job") => {
                            let job_id = v["payload"]["jobId"].as_str().unwrap().to_owned();
                            let report = report_text(&job_id);
                            if !pending.contains(&job_id) {
                                pending.push(job_id);
                            }
                            if let Err(e) = ws.send(Message::Text(report.into())).await {
                                break e.to_string();
                            }
                        }
                        Some("report_ack") => {
                            let at = now_us();
                            let id = v["payload"]["reportId"].as_str().unwrap_or_default();
                            pending.retain(|p| p != id);
                            let _ = out.send(format!("ack {id} {at}"));
                        }
                        _ => {}
                    }
                }
            }
        };
        counters.drops.fetch_add(1, Ordering::Relaxed);
        if counters.printed.fetch_add(1, Ordering::Relaxed) < 20 {
            let _ = out.send(format!("drop {host} {reason}"));
        }
        // Capped exponential backoff, jittered in its upper half, as the
        // real agent reconnects (`cc-agent/src/conn.rs`).
        let exp = Duration::from_secs(1 << dropped.min(5));
        dropped += 1;
        let jitter = seed.wrapping_mul(u64::from(dropped) * 2_654_435_761) % 1000;
        tokio::time::sleep(exp / 2 + exp / 2 * jitter as u32 / 1000).await;
    }
}

pub(crate) fn load_main() {
    let var = |n: &str| std::env::var(n).unwrap_or_else(|_| panic!("{n} is not set"));
    let url: Arc<str> = var("CC_FLEET_URL").into();
    let keys_file = PathBuf::from(var("CC_FLEET_KEYS"));
    let from: usize = var("CC_FLEET_FROM").parse().unwrap();
    let to: usize = var("CC_FLEET_TO").parse().unwrap();
    let heartbeat = Duration::from_millis(var("CC_FLEET_HEARTBEAT_MS").parse().unwrap());
    let gate = Arc::new(Semaphore::new(
        var("CC_FLEET_GATE").parse::<usize>().unwrap().max(1),
    ));
    let limit = open_files_limit();
    assert!(
        (to - from) as u64 + 64 <= limit,
        "{} agents need more descriptors than this process may open ({limit})",
        to - from
    );
    let keys: Vec<(String, String)> = std::fs::read_to_string(&keys_file)
        .unwrap()
        .lines()
        .skip(from)
        .take(to - from)
        .map(|l| {
            let (h, k) = l.split_once(' ').unwrap();
            (h.to_owned(), k.to_owned())
        })
        .collect();

    // One thread writes stdout: lines leave at once, in batches when many.
    let (out_tx, out_rx) = std_mpsc::channel::<String>();
    std::thread::spawn(move || {
        let stdout = std::io::stdout();
        let mut w = std::io::BufWriter::new(stdout.lock());
        while let Ok(line) = out_rx.recv() {
            let _ = writeln!(w, "{line}");
            while let Ok(more) = out_rx.try_recv() {
                let _ = writeln!(w, "{more}");
            }
            if w.flush().is_err() {
                std::process::exit(0);
            }
        }
    });
    // The bench closes stdin (or dies): end.
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        std::process::exit(0);
    });

    let counters = Arc::new(LoadCounters {
        retries: AtomicU64::new(0),
        drops: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        printed: AtomicU64::new(0),
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut firsts = Vec::with_capacity(keys.len());
        for (host, key) in keys {
            let (tx, rx) = tokio::sync::oneshot::channel();
            firsts.push(rx);
            tokio::spawn(simulated_agent(
                Arc::clone(&url),
                key,
                host,
                heartbeat,
                out_tx.clone(),
                Arc::clone(&gate),
                Arc::clone(&counters),
                tx,
            ));
        }
        let mut ok = 0;
        for rx in firsts {
            if rx.await.unwrap_or(false) {
                ok += 1;
            }
        }
        let _ = out_tx.send(format!(
            "done {ok} {} {}",
            counters.failed.load(Ordering::Relaxed),
            counters.retries.load(Ordering::Relaxed)
        ));
        std::future::pending::<()>().await;
    });
}
