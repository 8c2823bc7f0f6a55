//! The `/agent` WebSocket endpoint.
//!
//! `serve_agent` owns one connection from its first byte and logs how it
//! ended; the stages it runs (`greet`, `bind`, `Session::run`) do the work
//! and use `?`. The API key is checked in the handshake callback, before
//! the upgrade: missing, unknown or revoked → HTTP 401 and no WebSocket.
//! Limits are chosen on purpose (`ws_config`).
//!
//! Policy for what an agent sends:
//! - malformed JSON, wrong types, invalid values, binary frames, or
//!   listener-to-agent message types: logged and dropped; after
//!   [`MAX_PROTOCOL_ERRORS`] of them the connection is closed with 1008;
//! - unknown message types and unknown fields: logged at debug and ignored
//!   (the protocol grows);
//! - a frame over [`MAX_MESSAGE_BYTES`](cc_proto::wire::MAX_MESSAGE_BYTES):
//!   the connection is closed (1009), since the stream cannot be
//!   resynchronised.
//!
//! A connection goes through three stages, one file each:
//! - `accept`: `accept_loop` admits each connection to the budget of
//!   unregistered ones (`crate::pending`: a total, caps per source and per
//!   IPv6 /48, a per-source budget of keyless failures; when full the
//!   oldest connection that has not sent a byte is closed — `first_bytes`
//!   peeks for it) and spawns one task per connection (`serve_agent`),
//!   which takes a `max_connections` permit once the agent has registered.
//! - `handshake`: `greet` does the handshake (API key checked in the
//!   tungstenite callback, before the upgrade; a valid key takes the
//!   connection out of the budget, a bad one is logged at a bounded rate)
//!   and the `register` (its tags checked against the key's,
//!   `Binding::OtherTags`); `bind` binds the key (a store write, which may
//!   wait: it must not count against the budget). Both are boxed because
//!   they are transient.
//! - `session`: `Session::run` serves the connection in one `select!` loop
//!   over the socket, its outbound queue, a ping ticker and the shutdown
//!   signal; reports are stored through the writer, and jobs are handed to
//!   the host only by its own session (`Session::dispatch`).
//!
//! Invariants: no connection is served before its key was checked and its
//! `register` was valid; set-up ends by `auth_timeout` or the connection is
//! closed; what a peer sends is logged at a bounded rate (`LogBudget`s),
//! counted by the metrics in full.

mod accept;
mod handshake;
mod session;

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

pub use self::accept::accept_loop;
pub use self::session::{MAX_PROTOCOL_ERRORS, job_message, job_text};

pub(super) async fn close<S>(ws: &mut WebSocketStream<S>, code: CloseCode, reason: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = timeout(Duration::from_secs(2), ws.close(Some(frame))).await;
}
