//! The agent's link to the listener: connect, register, heartbeat, take
//! jobs and cron lists, send the outbox, reconnect until stopped.
//!
//! - `connect`: TCP, TLS for `wss://`, the WebSocket handshake — one
//!   stream type for both schemes.
//! - `reconnect`: the pure policy of which listener next and how long to
//!   wait.
//! - `session`: one connection — the loop that hands every frame to its
//!   handler (`crate::handlers`), flushes the outbox, and drains on a stop.
//!
//! Jobs outlive connections: they are validated on arrival and held by
//! `jobs.rs`, which starts at most `max_concurrent_jobs` at once, and each
//! report goes to the outbox before anything is sent. Every connection
//! starts by sending the whole outbox; a report leaves the outbox only on
//! `report_ack`, or on `report_rejected` (refused for good, with a warning).
//!
//! SIGTERM (or SIGINT) stops the agent gracefully: no new job is taken and
//! the ones held but not started are let go (the listener still has them
//! and sends them again to the next agent run); running jobs get
//! `drain_timeout_secs` to finish, then are stopped and reported as such;
//! the outbox is flushed and acknowledged; the connection closes with 1001.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::{mpsc, watch};
use tokio_rustls::rustls::ClientConfig;
use tracing::{debug, info, warn};

use cc_proto::wire;

use crate::config::Config;
use crate::handlers::Agent;
use crate::jobs::Jobs;
use crate::outbox::{self, Outbox, Reserve};
use crate::runner::Runner;

mod connect;
mod reconnect;
mod session;

pub(crate) use connect::tls_config;
use reconnect::{Next, Policy};
use session::{Drain, Ended};

/// What every connection needs: the agent, and how to reach a listener.
struct Link {
    agent: Agent,
    key: String,
    /// For `wss://` listeners, if any is configured.
    tls: Option<Arc<ClientConfig>>,
}

/// Runs until the process is stopped.
pub(crate) async fn run(cfg: Config) -> Result<()> {
    let (link, mut done_rx) = start(cfg)?;
    let mut stop = stop_signal()?;
    let listeners = &link.agent.cfg.listeners;
    let mut policy = Policy::new(listeners.len());
    let mut refusals = Refusals::default();
    loop {
        let started = Instant::now();
        let listener = &listeners[policy.listener()];
        let mut delivered = false;
        let mut quiet = false;
        match session::run(&link, listener, &mut delivered, &mut done_rx, &mut stop).await {
            Ok(Ended::Stopped) => return Ok(()),
            Ok(Ended::Connection(why)) => info!(url = %listener.url, "connection ended: {why}"),
            Ok(Ended::Refused(why)) => {
                quiet = !refusals.log(&why, link.agent.cfg.hostname.as_ref(), &listener.url);
            }
            Err(e) => warn!(url = %listener.url, "connection failed: {e:#}"),
        }
        if *stop.borrow() {
            Drain::start(&link.agent).finish(&link.agent).await;
            return Ok(());
        }
        let ended = reconnect::Ended {
            delivered,
            lasted: started.elapsed(),
        };
        let Next::After(delay) = policy.after(ended, reconnect::jitter()) else {
            continue;
        };
        if quiet {
            debug!(delay_ms = delay.as_millis() as u64, "reconnecting");
        } else {
            info!(delay_ms = delay.as_millis() as u64, "reconnecting");
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => {
                Drain::start(&link.agent).finish(&link.agent).await;
                return Ok(());
            }
        }
    }
}

/// How often the same refusal is logged again while the agent keeps
/// retrying: a host left refused for days does not fill its journal.
const REFUSAL_REPEAT: Duration = Duration::from_secs(600);

/// The last refusal logged and when: the same one again is logged at most
/// every [`REFUSAL_REPEAT`].
#[derive(Default)]
struct Refusals {
    last: Option<(String, Instant)>,
}

impl Refusals {
    /// Logs the listener's refusal with what to do, unless the same one was
    /// logged within [`REFUSAL_REPEAT`]. Returns whether it logged.
    fn log(&mut self, reason: &str, hostname: &str, url: &impl std::fmt::Display) -> bool {
        if let Some((last, at)) = &self.last {
            if last == reason && at.elapsed() < REFUSAL_REPEAT {
                debug!(%url, "refused again: {reason}");
                return false;
            }
        }
        self.last = Some((reason.to_owned(), Instant::now()));
        warn!(
            %url,
            "the listener refused this agent: {reason}; {}; retrying with backoff (the same refusal is logged again at most every {} minutes)",
            refusal_hint(reason, hostname),
            REFUSAL_REPEAT.as_secs() / 60
        );
        true
    }
}

/// What an operator does about a refusal the listener named.
fn refusal_hint(reason: &str, hostname: &str) -> String {
    if let Some(bound) = reason.strip_prefix("this key belongs to hostname ") {
        return format!(
            "this agent registers as \"{hostname}\": if this host is {bound}, set hostname = {bound} in the agent's config; \
             otherwise give it a key of its own (on the listener: cc-listener keys add {hostname}) and put that key in its key file"
        );
    }
    if reason == "this hostname belongs to another key" {
        return format!(
            "\"{hostname}\" registered before with another key: give this agent that key, or another hostname in its config"
        );
    }
    "fix what the listener names, in the agent's config or on the listener".into()
}

/// Everything before the first connection: the key, the outbox and its
/// reserve, the runner, TLS, the job dispatcher. Returns the link and the
/// receiver told when a report is in the outbox.
fn start(cfg: Config) -> Result<(Link, mpsc::Receiver<()>)> {
    // User-mode jobs run as this uid: non-dumpable, this process's memory,
    // environment and descriptors are not theirs to read (`/proc/PID/mem`,
    // `environ`, `fd/`) or to trace, and it leaves no core file. Set before
    // the key is read.
    nix::sys::prctl::set_dumpable(false).context("making the agent non-dumpable")?;
    let key = cfg.read_api_key()?;
    if !cfg.key_on_stdin() {
        warn!(
            api_key_file = %cfg.api_key_file.display(),
            "the API key is read from a file this agent's uid can read, so every user-mode job can read it too; \
             give it on standard input from a root-only file instead (api_key_file = \"-\", docs/agent.md)"
        );
    }
    let outbox = Outbox::open(&cfg.state_dir)?;
    match outbox.remove_stale_temps(outbox::STALE_TEMP) {
        Ok(0) => {}
        Ok(n) => info!(
            removed = n,
            "temp files of interrupted writes removed from the outbox"
        ),
        Err(e) => warn!("could not clear interrupted writes from the outbox: {e:#}"),
    }
    match outbox.ensure_reserve() {
        Ok(Reserve::Present) => {}
        Ok(Reserve::Made) => info!(bytes = outbox::RESERVE_BYTES, "outbox reserve made"),
        Ok(Reserve::NoRoom { free }) => warn!(
            free_bytes = free,
            "no outbox reserve: too little free space in the state directory; it is made once there is room and the outbox is empty"
        ),
        Err(e) => warn!("no outbox reserve: {e:#}"),
    }
    let runner = Arc::new(Runner::new(cfg.execution_mode, cfg.helper_socket.clone()));
    if runner.identity.is_root() && cfg.execution_mode == wire::ExecutionMode::User {
        warn!("{}", crate::runner::ROOT_IN_USER_MODE);
    }
    let tls = if cfg.listeners.iter().any(|l| l.tls) {
        Some(connect::tls_config(&cfg)?)
    } else {
        None
    };
    match crate::seen::prune(&cfg.state_dir) {
        Ok(0) => {}
        Ok(n) => info!(removed = n, "old job markers removed"),
        Err(e) => warn!("could not prune job markers: {e:#}"),
    }
    let (done_tx, done_rx) = mpsc::channel::<()>(1024);
    let jobs = Arc::new(Jobs::new(cfg.state_dir.clone(), cfg.max_concurrent_jobs));
    tokio::spawn(Arc::clone(&jobs).dispatch(Arc::clone(&runner), outbox.clone(), done_tx.clone()));
    let agent = Agent {
        cfg,
        outbox,
        runner,
        jobs,
        done: done_tx,
    };
    Ok((Link { agent, key, tls }, done_rx))
}

/// Flips to true on SIGTERM or SIGINT.
fn stop_signal() -> Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("watching SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("watching SIGINT")?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: stopping"),
            _ = int.recv() => info!("SIGINT: stopping"),
        }
        let _ = tx.send(true);
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_refusal_is_logged_once_a_new_one_again() {
        let mut r = Refusals::default();
        let bound = "this key belongs to hostname \"web1.example\"";
        assert!(r.log(bound, "web2.example", &"ws://l/agent"));
        assert!(!r.log(bound, "web2.example", &"ws://l/agent"));
        assert!(r.log("no register in time", "web2.example", &"ws://l/agent"));
    }

    #[test]
    fn a_key_bound_elsewhere_is_told_what_to_do() {
        let hint = refusal_hint(
            "this key belongs to hostname \"web1.example\"",
            "web2.example",
        );
        assert!(hint.contains("set hostname = \"web1.example\""), "{hint}");
        assert!(hint.contains("cc-listener keys add web2.example"), "{hint}");
    }
}
