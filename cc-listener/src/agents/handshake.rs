//! The handshake: `greet` upgrades the connection to a WebSocket only for a
//! valid API key (checked in tungstenite's callback, before the upgrade:
//! missing, unknown or revoked → HTTP 401 and no WebSocket) and then waits
//! for a valid `register`; `bind` binds the key to the host on first use
//! (through the writer, grouped with other registrations) or refuses a key
//! or hostname that belongs to another, or tags that are not the key's, and
//! makes the `Session`.
//!
//! Invariants: the WebSocket limits are chosen on purpose (`ws_config`); a
//! refusal is told to the agent in a close frame and counted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tracing::{error, warn};

use cc_proto::logline::LogBudget;
use cc_proto::wire::{self, AgentInfo, Incoming, MAX_MESSAGE_BYTES, Message};

use super::close;
use super::session::Session;
use crate::metrics::ConnRefusal;
use crate::pending::Marker;
use crate::store::{BindWrite, Binding, KeyRecord};
use crate::{AppState, now_ms};

/// Handshakes without a valid key: anyone can make them, as fast as they
/// like, so they are logged 20 a second at most; `left_out` on a line says
/// how many went unlogged before it (the metric counts every one).
static BAD_KEYS: LogBudget = LogBudget::new(Duration::from_secs(1), 20);

/// Registrations refused for their binding (a key of another host, tags
/// not the bound ones, a hostname of another key): a misconfigured agent
/// retries for ever, each try a line, so they share a budget of 10 lines a
/// minute; the metric counts every one.
static BINDING_REFUSALS: LogBudget = LogBudget::new(Duration::from_secs(60), 10);

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
pub(super) async fn greet<S>(
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
pub(super) async fn bind<S>(
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
            if let Some(left_out) = BINDING_REFUSALS.allow() {
                warn!(%peer, key = %key.name, %hostname, %bound, left_out, "refused: key belongs to another hostname");
            }
            close(&mut ws, CloseCode::Policy, &other_host(&bound)).await;
            return Ok(None);
        }
        Binding::OtherTags(bound) => {
            state.metrics.connection_refused(ConnRefusal::KeyBinding);
            let sent: Vec<String> = info.tags.iter().map(ToString::to_string).collect();
            let why = tags_differ(&bound, &sent);
            if let Some(left_out) = BINDING_REFUSALS.allow() {
                warn!(%peer, key = %key.name, %hostname, bound = ?bound, sent = ?sent, left_out, "refused: {why}");
            }
            close(&mut ws, CloseCode::Policy, &why).await;
            return Ok(None);
        }
        Binding::HostnameTaken => {
            state.metrics.connection_refused(ConnRefusal::KeyBinding);
            if let Some(left_out) = BINDING_REFUSALS.allow() {
                warn!(%peer, key = %key.name, %hostname, left_out, "refused: hostname belongs to another key");
            }
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
        nudges: Arc::default(),
        protocol_errors: 0,
        rate_tokens: state.settings.report_rate_bytes as f64 * 4.0,
        rate_at: tokio::time::Instant::now(),
        busy_until: 0,
        cron_status: None,
        cron_status_at: None,
        cron_host: info.cron_host.clone(),
        cron_host_at: None,
    };
    Ok(Some((session, ws, key.id, info)))
}

/// The close reason for a key bound to another hostname: that hostname
/// (the agent holds the key, so it may know), cut to fit a close frame's
/// 123 bytes.
fn other_host(bound: &str) -> String {
    const HEAD: &str = "this key belongs to hostname ";
    let room = 123 - HEAD.len() - 2;
    if bound.len() <= room {
        return format!("{HEAD}\"{bound}\"");
    }
    // Hostnames are ASCII: any byte is a char boundary.
    format!("{HEAD}\"{}…", &bound[..room - "…".len()])
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_refusal_names_the_bound_host_within_a_close_frame() {
        assert_eq!(
            other_host("web1.example"),
            "this key belongs to hostname \"web1.example\""
        );
        let long = format!("{}.example", "a".repeat(240));
        let why = other_host(&long);
        assert!(
            why.len() <= 123 && why.ends_with('…'),
            "{} {why}",
            why.len()
        );
    }

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
}
