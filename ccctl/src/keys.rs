//! `ccctl keys`: the agents' API keys.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;

use crate::api::Api;
use crate::cli::KeysCommand;

use crate::term::{errln, outln};

/// `ccctl keys`: the listener's `keys` subcommand, through the API.
pub(crate) fn keys(api: &Api, command: &KeysCommand) -> Result<bool> {
    match command {
        KeysCommand::Add {
            name,
            hostname,
            tags,
        } => {
            let body = json!({"name": name, "hostname": hostname, "tags": tags});
            let k = api.call("POST", "/keys", Some(&body))?;
            outln!("{}", k["key"].as_str().context("no key in the answer")?);
            errln!(
                "key {name} added{}; it is shown only now",
                k["hostname"]
                    .as_str()
                    .map(|h| format!(" for {h}"))
                    .unwrap_or_default()
            );
        }
        KeysCommand::List => {
            outln!(
                "{:<24} {:<28} {:<25} {:<8} TAGS",
                "NAME",
                "HOSTNAME",
                "CREATED",
                "STATE"
            );
            for k in api
                .call("GET", "/keys", None)?
                .as_array()
                .into_iter()
                .flatten()
            {
                // `-`: not bound yet (the first registration's tags).
                let tags = k["tags"].as_array().map_or_else(
                    || "-".to_owned(),
                    |t| {
                        t.iter()
                            .filter_map(|t| t.as_str())
                            .collect::<Vec<_>>()
                            .join(",")
                    },
                );
                outln!(
                    "{:<24} {:<28} {:<25} {:<8} {}",
                    k["name"].as_str().unwrap_or("?"),
                    k["hostname"].as_str().unwrap_or("-"),
                    k["created"].as_str().unwrap_or("-"),
                    if k["revoked"] == true {
                        "revoked"
                    } else {
                        "active"
                    },
                    tags
                );
            }
        }
        KeysCommand::Retag { name, tags } => {
            cc_proto::JobId::parse(name).with_context(|| format!("key name {name:?}"))?;
            let tags: Vec<&str> = tags.split(',').filter(|t| !t.is_empty()).collect();
            let k = api.call("PUT", &format!("/keys/{name}/tags"), Some(&json!(tags)))?;
            errln!(
                "key {name}: tags {}; its agent must register with the same",
                k["tags"]
                    .as_array()
                    .map(|t| t
                        .iter()
                        .filter_map(|t| t.as_str())
                        .collect::<Vec<_>>()
                        .join(","))
                    .unwrap_or_default()
            );
        }
        KeysCommand::Revoke { name } => {
            cc_proto::JobId::parse(name).with_context(|| format!("key name {name:?}"))?;
            let req = api
                .request("DELETE", &format!("/keys/{name}"))
                .timeout(Duration::from_secs(30));
            api.send(req, None)?;
            errln!("revoked {name}; an agent connected with it was disconnected");
        }
    }
    Ok(true)
}
