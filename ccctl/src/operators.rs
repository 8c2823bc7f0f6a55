//! `ccctl operators` and `ccctl audit`: named operators and the audit log
//! (both admin only on the listener).

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::api::Api;
use crate::cli::OperatorsCommand;
use crate::term::{self, errln, outln};

/// `ccctl operators`: the listener's `operators` subcommand, through the
/// API.
pub(crate) fn operators(api: &Api, command: &OperatorsCommand) -> Result<bool> {
    match command {
        OperatorsCommand::Add {
            name,
            role,
            hosts,
            expires,
        } => {
            let body = json!({"name": name, "role": role, "hosts": hosts, "expiresDays": expires});
            let o = api.call("POST", "/operators", Some(&body))?;
            outln!("{}", o["token"].as_str().context("no token in the answer")?);
            errln!(
                "operator {name} added ({}, hosts {}{}); its token is shown only now",
                o["role"].as_str().unwrap_or("?"),
                o["hosts"].as_str().unwrap_or("?"),
                o["expires"]
                    .as_str()
                    .map(|e| format!(", expires {e}"))
                    .unwrap_or_default()
            );
        }
        OperatorsCommand::List => {
            outln!(
                "{:<24} {:<9} {:<24} {:<25} {:<25} STATE",
                "NAME",
                "ROLE",
                "HOSTS",
                "CREATED",
                "EXPIRES"
            );
            for o in api
                .call("GET", "/operators", None)?
                .as_array()
                .into_iter()
                .flatten()
            {
                outln!(
                    "{:<24} {:<9} {:<24} {:<25} {:<25} {}",
                    o["name"].as_str().unwrap_or("?"),
                    o["role"].as_str().unwrap_or("?"),
                    o["hosts"].as_str().unwrap_or("?"),
                    o["created"].as_str().unwrap_or("-"),
                    o["expires"].as_str().unwrap_or("-"),
                    o["state"].as_str().unwrap_or("?"),
                );
            }
        }
        OperatorsCommand::Revoke { name } => {
            cc_proto::JobId::parse(name).with_context(|| format!("operator name {name:?}"))?;
            let req = api
                .request("DELETE", &format!("/operators/{name}"))
                .timeout(Duration::from_secs(30));
            api.send(req, None)?;
            errln!("revoked {name}; its API access, event streams and console sessions end now");
        }
    }
    Ok(true)
}

/// `ccctl audit`: the newest rows, oldest first.
pub(crate) fn audit(
    api: &Api,
    since: Option<&str>,
    operator: Option<&str>,
    limit: u32,
    json_out: bool,
) -> Result<bool> {
    let mut query = vec![format!("limit={limit}")];
    if let Some(s) = since {
        let ms = crate::reports::since_ms(s, cc_proto::Timestamp::now().unix_millis())?;
        query.push(format!("since={ms}"));
    }
    if let Some(o) = operator {
        query.push(format!("operator={}", urlencode(o)));
    }
    let rows = api.call("GET", &format!("/audit?{}", query.join("&")), None)?;
    if json_out {
        term::json(&rows)?;
        return Ok(true);
    }
    outln!(
        "{:<6} {:<24} {:<16} {:<21} {:<4} {:<44} {:<20} IDS",
        "SEQ",
        "TIME",
        "OPERATOR",
        "SOURCE",
        "OUT",
        "ACTION",
        "TARGET"
    );
    for r in rows.as_array().into_iter().flatten() {
        let ids: Vec<&str> = r["ids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        outln!(
            "{:<6} {:<24} {:<16} {:<21} {:<4} {:<44} {:<20} {}",
            r["seq"],
            r["time"].as_str().unwrap_or("-"),
            r["operator"].as_str().unwrap_or("-"),
            r["source"].as_str().unwrap_or("-"),
            r["outcome"],
            r["action"].as_str().unwrap_or("-"),
            r["target"].as_str().unwrap_or("-"),
            ids.join(",")
        );
    }
    Ok(true)
}

/// `ccctl audit --verify`: exit 0 when the chain holds, 1 naming the first
/// bad row when it does not.
pub(crate) fn verify(api: &Api) -> Result<bool> {
    let v = api.call("GET", "/audit/verify", None)?;
    if v["ok"] == true {
        outln!(
            "ok: the audit log's {} rows chain from the anchor (row {}) to the head",
            v["rows"],
            v["anchorSeq"]
        );
        Ok(true)
    } else {
        outln!(
            "FAIL: audit row {}: {}",
            v["seq"],
            v["reason"].as_str().unwrap_or("?")
        );
        Ok(false)
    }
}

/// Percent-encodes everything but unreserved characters.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
