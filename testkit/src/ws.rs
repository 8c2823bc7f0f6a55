//! A test agent: a WebSocket client that speaks the protocol by hand.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connects with `key` (none: no header). Err carries the HTTP status of a
/// refused handshake.
pub async fn connect(url: &str, key: Option<&str>) -> Result<Ws, u16> {
    let mut req = url.into_client_request().unwrap();
    if let Some(k) = key {
        req.headers_mut()
            .insert("X-CC-API-KEY", HeaderValue::from_str(k).unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("connect failed: {e}"),
    }
}

/// [`connect`] with a key, any failure an error (a peer that closes
/// mid-handshake, a reset): for tests where that is an outcome.
pub async fn connect_checked(url: &str, key: &str) -> Result<Ws, String> {
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    req.headers_mut().insert(
        "X-CC-API-KEY",
        HeaderValue::from_str(key).map_err(|e| e.to_string())?,
    );
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}

pub fn register(hostname: &str) -> Value {
    json!({"type": "register", "payload": {
        "hostname": hostname, "os": "linux", "arch": "amd64", "tags": ["test"],
        "executionMode": "user", "isRoot": false
    }})
}

/// Connects and registers as `hostname`.
pub async fn agent(url: &str, key: &str, hostname: &str) -> Ws {
    let mut ws = connect(url, Some(key)).await.expect("handshake refused");
    send(&mut ws, &register(hostname)).await;
    ws
}

/// A new key for `name`, connected and registered as `name` ([`register`]),
/// seen connected by the listener, one heartbeat sent.
pub async fn registered(l: &crate::listener::ListenerProcess, name: &str) -> Ws {
    let key = l.add_key(name);
    let mut ws = registered_as(l, &key, &register(name)).await;
    send(&mut ws, &json!({"type": "heartbeat", "payload": {}})).await;
    ws
}

/// Connected with `key`, `register` sent (a whole `register` message:
/// [`register`], or the test's own with tags or a mode), and seen connected
/// by `l` under the hostname it names; nothing else sent. The key is the
/// caller's, so it can connect again with it.
pub async fn registered_as(
    l: &crate::listener::ListenerProcess,
    key: &str,
    register: &Value,
) -> Ws {
    let name = register["payload"]["hostname"]
        .as_str()
        .expect("a register message names its host");
    let mut ws = connect(&l.ws_url(), Some(key))
        .await
        .expect("handshake refused");
    send(&mut ws, register).await;
    // A visible registration means it is in.
    l.wait_connected(name, true);
    ws
}

/// The job id of an `execute_job` message (`payload.jobId`).
pub fn job_id(execute_job: &Value) -> cc_proto::ids::JobId {
    crate::listener::job_id(&execute_job["payload"]["jobId"])
}

/// Registers `host` (a new key) with `tags` and a `jobWindow` of 4, then,
/// in a task of its own, answers every job after `delay` with a report
/// whose exit code `exit` chooses from the `execute_job` message.
pub async fn answering_agent(
    l: &crate::listener::ListenerProcess,
    host: &str,
    tags: &[&str],
    delay: Duration,
    exit: impl Fn(&Value) -> i64 + Send + 'static,
) {
    answering_agent_in("user", l, host, tags, delay, exit).await;
}

/// [`answering_agent`], registered in `mode` (`"user"` or `"system"`).
pub async fn answering_agent_in(
    mode: &str,
    l: &crate::listener::ListenerProcess,
    host: &str,
    tags: &[&str],
    delay: Duration,
    exit: impl Fn(&Value) -> i64 + Send + 'static,
) {
    let key = l.add_key(host);
    let mut conn = connect(&l.ws_url(), Some(&key)).await.unwrap();
    send(
        &mut conn,
        &json!({"type": "register", "payload": {
            "hostname": host, "os": "linux", "arch": "amd64", "tags": tags,
            "executionMode": mode, "isRoot": false, "jobWindow": 4
        }}),
    )
    .await;
    let host = host.to_owned();
    tokio::spawn(async move {
        let mut n = 0;
        while let Some(m) = recv(&mut conn, Duration::from_secs(3600)).await {
            if m["type"] != "execute_job" {
                continue;
            }
            tokio::time::sleep(delay).await;
            n += 1;
            let id = m["payload"]["jobId"].as_str().unwrap().to_owned();
            let mut r = report(&id, Some(&format!("{host}-{n}")));
            r["payload"]["exitCode"] = json!(exit(&m));
            send(&mut conn, &r).await;
        }
    });
}

pub async fn send(ws: &mut Ws, v: &Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

pub async fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.to_owned().into()))
        .await
        .unwrap();
}

/// Next text message as JSON, within `limit`; pings are skipped. None on
/// close.
pub async fn recv(ws: &mut Ws, limit: Duration) -> Option<Value> {
    recv_raw(ws, limit)
        .await
        .map(|t| serde_json::from_str(&t).unwrap())
}

pub async fn recv_raw(ws: &mut Ws, limit: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("no message in time");
        match next {
            Some(Ok(Message::Text(t))) => return Some(t.to_string()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

/// Waits for the close frame and returns its code and reason.
pub async fn recv_close(ws: &mut Ws, limit: Duration) -> Option<(u16, String)> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await.ok()? {
            Some(Ok(Message::Close(Some(f)))) => {
                return Some((f.code.into(), f.reason.to_string()));
            }
            Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

/// Receives messages until one of `kind` arrives.
pub async fn recv_type(ws: &mut Ws, kind: &str, limit: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let msg = recv(ws, left)
            .await
            .unwrap_or_else(|| panic!("closed while waiting for {kind}"));
        if msg["type"] == kind {
            return msg;
        }
    }
}

/// A well-formed report for `job_id`.
pub fn report(job_id: &str, report_id: Option<&str>) -> Value {
    let mut payload = json!({
        "jobId": job_id, "command": "/bin/echo hi", "exitCode": 0,
        "stdout": "hi\n", "stderr": "", "startTime": "2024-03-20T10:00:00Z",
        "durationMs": 3, "executingUid": 1001, "executingUser": "cc-agent-user"
    });
    if let Some(r) = report_id {
        payload["reportId"] = json!(r);
    }
    json!({"type": "execution_report", "payload": payload})
}
