//! Several listeners on one PostgreSQL database: how a listener learns
//! that another one changed something it must act on.
//!
//! The store's trigger notifies, after each commit, `cc_jobs` with the
//! hostname of every job that became queued — or, when one statement
//! queued jobs for more than 64 hosts (a fan-out), once with no hostname:
//! then the listener reads the hosts with queued jobs from the table — and
//! `cc_events` once per statement that changed a job's state (see the PostgreSQL schema in
//! `store/migrations/postgres/`). One thread per listener holds a connection that `LISTEN`s
//! on both: a job for a host whose agent this listener holds is handed
//! over at once ([`Hub::nudge`](crate::hub::Hub::nudge); hosts it does not
//! hold are ignored), and event streams read the new events.
//!
//! Notifications are a doorbell, not a queue: PostgreSQL does not keep
//! them for a listener that was not listening. So whenever the
//! notification connection is (re)opened, the listener reconciles from the
//! tables — every host with queued jobs is nudged and every stream reads.
//! The sweep does the same at every sweep while this connection is down,
//! and every tenth sweep in any case: a lost notification delays a job by
//! at most ten sweeps (one while the connection is down); it never loses
//! it.

use std::sync::Arc;
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator as _;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::AppState;
use crate::metrics::Channel;
use crate::sql::pg_error;

/// Starts the notification thread; it ends when `shutdown` turns true.
/// `None` when no thread could be started: the sweep still hands every job
/// over, a sweep interval later.
pub fn spawn(
    url: String,
    state: Arc<AppState>,
    shutdown: watch::Receiver<bool>,
) -> Option<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("cc-doorbell".into())
        .spawn(move || run(&url, &state, &shutdown))
        .inspect_err(|e| {
            warn!("no notification thread ({e}): jobs from other listeners wait for the sweep");
        })
        .ok()
}

fn run(url: &str, state: &AppState, shutdown: &watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    while !*shutdown.borrow() {
        let listened = listen(url, state, shutdown);
        state.metrics.doorbell(false);
        match listened {
            Ok(()) => return,
            Err(e) => {
                warn!("notification connection: {e:#}; reconnecting in {backoff:?}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Listens until shutdown (`Ok`) or until the connection fails.
fn listen(url: &str, state: &AppState, shutdown: &watch::Receiver<bool>) -> anyhow::Result<()> {
    // The store's connections' settings, TLS included; an error carries
    // the server's words and the address tried.
    let mut client = crate::pgtls::connect(url)?;
    client
        .batch_execute("LISTEN cc_jobs; LISTEN cc_events")
        .map_err(pg_error)?;
    state.metrics.doorbell(true);
    info!("listening for other listeners' jobs and events");
    reconcile(state);
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        // Wakes at least twice a second to see the shutdown.
        let mut notes = client.notifications();
        let mut waiting = notes.timeout_iter(Duration::from_millis(500));
        while let Some(note) = waiting.next().map_err(pg_error)? {
            match note.channel() {
                "cc_jobs" => {
                    state.metrics.notification(Channel::Jobs);
                    match note.payload() {
                        // Jobs queued for many hosts at once (a fan-out):
                        // one notification, the hosts read from the table.
                        "" => reconcile(state),
                        host => {
                            state.hub.nudge(host);
                        }
                    }
                }
                "cc_events" => {
                    state.metrics.notification(Channel::Events);
                    state.db.poke();
                }
                _ => {}
            }
        }
        drop(waiting);
        drop(notes);
        anyhow::ensure!(!client.is_closed(), "the server closed the connection");
    }
}

/// What a missed notification would have said, read from the tables.
fn reconcile(state: &AppState) {
    match state.db.store().hosts_with_queued(crate::now_ms()) {
        Ok(hosts) => {
            for h in hosts {
                state.hub.nudge(&h);
            }
        }
        Err(e) => warn!("reconciling queued jobs: {e:#}"),
    }
    state.db.poke();
}
