//! `ccctl agents`: the fleet, by tag, online or not.

use anyhow::Result;
use serde_json::Value;

use crate::api::Api;
use crate::term::{errln, outln};

/// Whether the agent carries every tag in `tags`.
pub(crate) fn has_tags(agent: &Value, tags: &[String]) -> bool {
    tags.iter().all(|t| {
        agent["tags"]
            .as_array()
            .is_some_and(|have| have.iter().any(|h| h == t))
    })
}

/// `ccctl agents`: the table, with the count of agents that are root in
/// user mode above it, where it cannot be missed.
pub(crate) fn print_agents(api: &Api, tags: &[String], offline: bool) -> Result<bool> {
    let all = api.get_all("/agents", "x-cc-next-after", "after")?;
    let shown: Vec<&Value> = all
        .iter()
        .filter(|a| has_tags(a, tags) && !(offline && a["connected"] == true))
        .collect();
    if shown.is_empty() && !tags.is_empty() {
        // Still exit 0 (nothing failed), but a typo should not pass for
        // an empty fleet.
        errln!(
            "ccctl: no {}agent has tag {}; `ccctl agents` lists every agent's tags",
            if offline { "offline " } else { "" },
            tags.join(" and ")
        );
    }
    let warned = shown.iter().filter(|a| a["warning"].is_string()).count();
    if warned > 0 {
        outln!(
            "WARNING: {warned} agent(s) run as root (UID 0) in user mode: every job they run runs as root"
        );
    }
    let no_cron = shown
        .iter()
        .filter(|a| a["cronWarning"].is_string())
        .count();
    if no_cron > 0 {
        outln!("WARNING: {no_cron} agent(s) run no cron daemon: their cron entries will not fire");
    }
    outln!(
        "{:<28} {:<7} {:<7} {:<6} {:<25} {:<22} TAGS",
        "HOST",
        "ONLINE",
        "MODE",
        "ROOT",
        "LAST HEARTBEAT",
        "CRON"
    );
    for x in shown {
        let tags: Vec<&str> = x["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let cron = &x["cronStatus"];
        let mut cron = if cron.is_object() {
            let n = |k: &str| cron[k].as_array().map_or(0, Vec::len);
            format!("{} installed, {} refused", n("installed"), n("rejected"))
        } else {
            "-".to_owned()
        };
        if x["cronWarning"].is_string() {
            cron = format!("NO DAEMON, {cron}");
        }
        outln!(
            "{:<28} {:<7} {:<7} {:<6} {:<25} {:<22} {}",
            x["hostname"].as_str().unwrap_or("?"),
            if x["connected"] == true { "yes" } else { "no" },
            x["executionMode"].as_str().unwrap_or("?"),
            if x["isRoot"] == true { "yes" } else { "no" },
            x["lastHeartbeat"].as_str().unwrap_or("-"),
            cron,
            tags.join(",")
        );
        for w in [&x["warning"], &x["cronWarning"]] {
            if let Some(w) = w.as_str() {
                outln!("{:<28} WARNING: {w}", "");
            }
        }
    }
    Ok(true)
}
