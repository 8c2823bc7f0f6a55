//! Live agent connections, by hostname.
//!
//! Each connection task owns its socket; the hub holds only a bounded
//! channel to it, so the API and other tasks can ask it to send a message or
//! close. A second connection for the same hostname replaces the first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use cc_proto::wire::{AgentInfo, CronHost, ExecutionMode};

use crate::store::Nudges;

/// What a connection task is asked to do.
#[derive(Debug)]
pub enum Outbound {
    /// Send this text frame.
    Text(String),
    /// Hand the host whatever queued jobs its window allows (a job was
    /// posted, or one of its jobs was lost: `agents::Session::dispatch`).
    Dispatch,
    /// Close with a policy reason (the connection was replaced, its key
    /// revoked, or the listener is shutting down).
    Close(&'static str),
}

/// Capacity of each connection's outbound queue. Jobs never travel
/// through it (the connection takes them from the store), so a full queue
/// loses nothing: a dispatch already waits in it.
pub const OUTBOUND_QUEUE: usize = 32;

#[derive(Debug)]
pub struct Live {
    pub conn_id: u64,
    pub key_id: i64,
    pub info: AgentInfo,
    pub connected_ms: i64,
    /// Last time anything arrived from the agent (ms since the epoch).
    pub last_seen_ms: Arc<AtomicI64>,
    /// Last heartbeat message (ms since the epoch), 0 before the first.
    pub last_heartbeat_ms: Arc<AtomicI64>,
    /// Its nudges: a nudge a hand-over already answered is dropped by the
    /// connection ([`Nudges`]).
    nudges: Arc<Nudges>,
    tx: mpsc::Sender<Outbound>,
}

#[derive(Debug, Default)]
pub struct Hub {
    agents: Mutex<HashMap<String, Live>>,
    next_conn: AtomicU64,
}

/// Live agents counted by what they registered as ([`Hub::census`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Census {
    pub user: i64,
    pub system: i64,
    /// User mode, running as root (every job runs as root, unsigned).
    pub root_in_user_mode: i64,
    /// Messages waiting in the connections' outbound queues, in all.
    pub outbound_queued: i64,
    /// Agents that said no cron daemon runs on their host (their entries
    /// do not fire).
    pub no_cron_daemon: i64,
}

/// A snapshot of one live agent, for the API.
#[derive(Debug, Clone)]
pub struct LiveView {
    pub info: AgentInfo,
    pub connected_ms: i64,
    pub last_seen_ms: i64,
    pub last_heartbeat_ms: i64,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        // The map stays consistent under panic (single inserts/removes).
        self.agents.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a connection; an older one for the same host is told to
    /// close and is returned for logging.
    #[allow(clippy::too_many_arguments)]
    pub fn insert(
        &self,
        conn_id: u64,
        key_id: i64,
        info: AgentInfo,
        now_ms: i64,
        last_seen_ms: Arc<AtomicI64>,
        last_heartbeat_ms: Arc<AtomicI64>,
        nudges: Arc<Nudges>,
        tx: mpsc::Sender<Outbound>,
    ) -> Option<u64> {
        let hostname = info.hostname.to_string();
        let live = Live {
            conn_id,
            key_id,
            info,
            connected_ms: now_ms,
            last_seen_ms,
            last_heartbeat_ms,
            nudges,
            tx,
        };
        let old = self.lock().insert(hostname, live)?;
        let _ = old.tx.try_send(Outbound::Close(
            "replaced by a newer connection for this hostname",
        ));
        Some(old.conn_id)
    }

    /// Removes the entry only if it is still this connection's.
    pub fn remove(&self, hostname: &str, conn_id: u64) {
        let mut map = self.lock();
        if map.get(hostname).is_some_and(|l| l.conn_id == conn_id) {
            map.remove(hostname);
        }
    }

    /// Whether connection `conn_id` is still the host's (no newer one
    /// replaced it).
    pub fn holds(&self, hostname: &str, conn_id: u64) -> bool {
        self.lock()
            .get(hostname)
            .is_some_and(|l| l.conn_id == conn_id)
    }

    /// Queues a text frame for a host; false if it is not connected or its
    /// queue is full.
    pub fn send(&self, hostname: &str, text: String) -> bool {
        match self.lock().get(hostname) {
            Some(live) => live.tx.try_send(Outbound::Text(text)).is_ok(),
            None => false,
        }
    }

    /// Asks a host's connection to take its queued jobs; false if it is
    /// not connected.
    pub fn nudge(&self, hostname: &str) -> bool {
        match self.lock().get(hostname) {
            Some(live) => {
                // Counted before the dispatch is queued: the hand-over it
                // leads to reads the queue after this count.
                live.nudges.give();
                let _ = live.tx.try_send(Outbound::Dispatch);
                true
            }
            None => false,
        }
    }

    /// What connection `conn_id`'s agent now says of its cron daemon and
    /// clock (a heartbeat's `cronHost`).
    pub fn set_cron_host(&self, hostname: &str, conn_id: u64, c: &CronHost) {
        if let Some(l) = self.lock().get_mut(hostname) {
            if l.conn_id == conn_id {
                l.info.cron_host = Some(c.clone());
            }
        }
    }

    pub fn is_connected(&self, hostname: &str) -> bool {
        self.lock().contains_key(hostname)
    }

    /// The live connection of `hostname`, if any.
    pub fn live(&self, hostname: &str) -> Option<LiveView> {
        self.lock().get(hostname).map(|l| LiveView {
            info: l.info.clone(),
            connected_ms: l.connected_ms,
            last_seen_ms: l.last_seen_ms.load(Ordering::Relaxed),
            last_heartbeat_ms: l.last_heartbeat_ms.load(Ordering::Relaxed),
        })
    }

    /// (hostname, key id) of every live connection.
    pub fn keys(&self) -> Vec<(String, i64)> {
        self.lock()
            .iter()
            .map(|(h, l)| (h.clone(), l.key_id))
            .collect()
    }

    pub fn close(&self, hostname: &str, reason: &'static str) {
        if let Some(l) = self.lock().get(hostname) {
            let _ = l.tx.try_send(Outbound::Close(reason));
        }
    }

    /// Live agents by mode, and their outbound queues, for the metrics.
    pub fn census(&self) -> Census {
        let mut c = Census::default();
        for l in self.lock().values() {
            match l.info.execution_mode {
                ExecutionMode::User => c.user += 1,
                ExecutionMode::System => c.system += 1,
            }
            if l.info.is_root && l.info.execution_mode == ExecutionMode::User {
                c.root_in_user_mode += 1;
            }
            c.outbound_queued += (l.tx.max_capacity() - l.tx.capacity()) as i64;
            if l.info
                .cron_host
                .as_ref()
                .is_some_and(|h| h.daemon.is_none())
            {
                c.no_cron_daemon += 1;
            }
        }
        c
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
