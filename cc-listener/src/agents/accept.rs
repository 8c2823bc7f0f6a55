//! Admission: `accept_loop` takes each TCP connection, admits it to the
//! budget of unregistered connections (`crate::pending`) or refuses it at
//! once, and spawns its task; `first_bytes` waits for the connection's
//! first byte (a silent connection is the first pushed out when the budget
//! is full); `serve_agent` then runs the handshake and, once the agent has
//! registered, takes a `max_connections` permit for its session.
//!
//! Invariants: a connection holds its place in the budget until its key and
//! `register` are valid, and no longer (the store's binding, which may
//! wait, is not counted against it); a key that registers too often is
//! refused (`registrations_per_key`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tracing::{debug, info, warn};

use cc_proto::logline::LogBudget;

use super::close;
use super::handshake::{bind, greet};
use crate::AppState;
use crate::metrics::ConnRefusal;
use crate::pending::{Admitted, Limits, Pending, Refused};

/// Keys refused for registering too often, logged 20 a second at most.
static TOO_FAST: LogBudget = LogBudget::new(Duration::from_secs(1), 20);

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
