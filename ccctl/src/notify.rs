//! `ccctl notify`: the listener's notification sinks (`[[notify]]`).

use anyhow::Result;

use crate::api::Api;
use crate::cli::NotifyCommand;
use crate::term::{errln, outln};

/// `ccctl notify [list]` and `ccctl notify test NAME`.
pub(crate) fn notify(api: &Api, command: Option<&NotifyCommand>) -> Result<bool> {
    match command {
        None | Some(NotifyCommand::List) => {
            let v = api.call("GET", "/notify", None)?;
            outln!(
                "{:<20} {:<8} {:<7} {:<20} {:<50} URL",
                "NAME",
                "FORMAT",
                "QUEUED",
                "HOSTS",
                "EVENTS"
            );
            for s in v["sinks"].as_array().into_iter().flatten() {
                let events = s["events"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e.as_str())
                    .collect::<Vec<_>>()
                    .join(",");
                outln!(
                    "{:<20} {:<8} {:<7} {:<20} {:<50} {}",
                    s["name"].as_str().unwrap_or("?"),
                    s["format"].as_str().unwrap_or("?"),
                    s["queued"].as_i64().unwrap_or(0),
                    s["hosts"].as_str().unwrap_or("*"),
                    events,
                    s["url"].as_str().unwrap_or("?")
                );
            }
            errln!("{} queued in all", v["queued"].as_i64().unwrap_or(0));
            Ok(true)
        }
        Some(NotifyCommand::Test { name }) => {
            let v = api.call("POST", &format!("/notify/{name}/test"), None)?;
            outln!(
                "test notification queued for {name} (idempotency key {})",
                v["idempotencyKey"].as_str().unwrap_or("?")
            );
            Ok(true)
        }
    }
}
