//! Pushing effective lists: to the hosts this listener holds whose list a
//! fleet change changed (`watch_loop`, which polls the set's generation, so
//! a change made through any listener sharing the database reaches the
//! hosts each holds), and to one host whose tags changed (`push_hosts`).
//! A registration sends the list itself (`Session::catch_up`, via
//! [`wanted_for`]).
//!
//! Cost: one read of the set and of the held hosts' rows per change (one
//! query for all of them), then one frame per host whose list changed.

use std::time::Duration;

use anyhow::Result;
use tokio::sync::watch;
use tracing::{info, warn};

use cc_proto::sign::Signed;
use cc_proto::wire::{CronEntry, Message};

use super::{FleetHost, FleetJob, wanted};
use crate::AppState;

/// How often the fleet set's generation is read: a change reaches the
/// hosts within this and the time to send.
pub const POLL: Duration = Duration::from_millis(200);

/// The frame that sends `list` (signed by `signed`, JSON).
pub fn refresh_text(list: &[CronEntry], signed: Option<&str>) -> Result<String> {
    let signed: Option<Signed> = signed.and_then(|t| serde_json::from_str(t).ok());
    Ok(Message::CronRefresh(list.to_vec()).to_json_signed(signed.as_ref())?)
}

/// What `hostname` should be sent now (its list and signature), or `None`
/// for a host with nothing to run and nothing stored.
pub fn wanted_for(
    store: &crate::store::Store,
    hostname: &str,
) -> Result<Option<(Vec<CronEntry>, Option<String>)>> {
    let set = store.fleet_set()?;
    let Some(h) = store.fleet_hosts(Some(&[hostname.to_owned()]))?.pop() else {
        return Ok(None);
    };
    let w = wanted(&h, &set.jobs());
    // A host that never had a list, with no fleet set ever applied, is
    // sent nothing (as before fleets); otherwise always its list, empty or
    // not, so entries removed while it was away go.
    let nothing = w.push.0.is_empty()
        && set.generation == 0
        && h.fleet_signed.is_none()
        && store.get_cron(hostname)?.is_none();
    Ok((!nothing).then_some(w.push))
}

/// The rows of the hosts this listener holds (one query when many).
fn held_rows(store: &crate::store::Store, held: &[String]) -> Result<Vec<FleetHost>> {
    if held.len() <= 16 {
        return store.fleet_hosts(Some(held));
    }
    let set: std::collections::HashSet<&str> = held.iter().map(String::as_str).collect();
    Ok(store
        .fleet_hosts(None)?
        .into_iter()
        .filter(|h| set.contains(h.hostname.as_str()))
        .collect())
}

/// Sends `hosts` (those of them this listener holds) their lists as they
/// stand: after a retag. Returns how many were sent.
pub async fn push_hosts(state: &AppState, hosts: Vec<String>) -> Result<usize> {
    let held: Vec<String> = hosts
        .into_iter()
        .filter(|h| state.hub.is_connected(h))
        .collect();
    if held.is_empty() {
        return Ok(0);
    }
    let sends = state
        .db
        .read(move |s| {
            let fleet = s.fleet_set()?.jobs();
            held_rows(s, &held)?
                .iter()
                .map(|h| {
                    let (list, signed) = wanted(h, &fleet).push;
                    Ok((h.hostname.clone(), refresh_text(&list, signed.as_deref())?))
                })
                .collect::<Result<Vec<_>>>()
        })
        .await?;
    Ok(send_all(state, sends))
}

fn send_all(state: &AppState, sends: Vec<(String, String)>) -> usize {
    let mut n = 0;
    for (host, text) in sends {
        if state.hub.send(&host, text) {
            n += 1;
        } else {
            warn!(hostname = %host, "could not queue the host's cron list (it sends it again on its next connection)");
        }
    }
    n
}

/// After a change of the fleet set from `old` (replaced at `old_ms`) to
/// `new`: the frames for the held hosts whose pushed list changed, or
/// that were given a signature since.
fn changed_sends(
    hosts: &[FleetHost],
    old: &[FleetJob],
    old_ms: i64,
    new: &[FleetJob],
) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for h in hosts {
        let after = wanted(h, new).push;
        let signed_since = h.fleet_signed_ms.is_some_and(|ms| ms > old_ms);
        if signed_since || wanted(h, old).push != after {
            out.push((
                h.hostname.clone(),
                refresh_text(&after.0, after.1.as_deref())?,
            ));
        }
    }
    Ok(out)
}

/// Polls the fleet set's generation; on a change, pushes each held host
/// whose list it changed. Ends on shutdown.
pub async fn watch_loop(state: std::sync::Arc<AppState>, mut shutdown: watch::Receiver<bool>) {
    let mut known: Option<(u64, i64, Vec<FleetJob>)> = None;
    // The last `cron_resend` sequence number acted on (None: not read yet).
    let mut resent: Option<i64> = None;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        resent = resend_requested(&state, resent).await;
        let generation = match state.db.read(|s| s.fleet_generation()).await {
            Ok(g) => g,
            Err(e) => {
                warn!("reading the fleet cron generation: {e:#}");
                continue;
            }
        };
        let Some((had, old_ms, old)) = &known else {
            // At start: hosts get their lists as they connect.
            match state.db.read(|s| s.fleet_set()).await {
                Ok(set) => known = Some((set.generation, set.updated_ms, set.jobs())),
                Err(e) => warn!("reading the fleet cron set: {e:#}"),
            }
            continue;
        };
        if *had == generation {
            continue;
        }
        let (old, old_ms) = (old.clone(), *old_ms);
        let held: Vec<String> = state.hub.keys().into_iter().map(|(h, _)| h).collect();
        let started = std::time::Instant::now();
        let result = state
            .db
            .read(move |s| {
                let set = s.fleet_set()?;
                let new = set.jobs();
                let rows = if held.is_empty() {
                    Vec::new()
                } else {
                    held_rows(s, &held)?
                };
                let sends = changed_sends(&rows, &old, old_ms, &new)?;
                Ok((set.generation, set.updated_ms, new, sends))
            })
            .await;
        match result {
            Ok((g, ms, new, sends)) => {
                let n = send_all(&state, sends);
                info!(
                    generation = g,
                    hosts = n,
                    took_ms = started.elapsed().as_millis() as u64,
                    "fleet cron set changed: lists pushed"
                );
                known = Some((g, ms, new));
            }
            Err(e) => warn!("pushing the fleet cron set: {e:#}"),
        }
    }
}

/// Sends their lists to the held hosts asked for since `after` (at start,
/// `None`: only notes where the requests stand); the new position.
async fn resend_requested(state: &AppState, after: Option<i64>) -> Option<i64> {
    let read = state
        .db
        .read(move |s| match after {
            Some(a) => s.resends_after(a),
            None => s.resends_after(0).map(|(_, last)| (Vec::new(), last)),
        })
        .await;
    match read {
        Ok((hosts, last)) => {
            if !hosts.is_empty() {
                if let Err(e) = push_hosts(state, hosts).await {
                    warn!("sending cron lists asked for again: {e:#}");
                }
            }
            Some(last)
        }
        Err(e) => {
            warn!("reading the cron lists asked for again: {e:#}");
            after
        }
    }
}
