//! `ccctl cron plan|apply|status`: the fleet cron set from a file of
//! `ID TARGET [OPTIONS] SCHEDULE COMMAND` lines, what it changes per host,
//! and per host whether the agent has what the listener wants.

use std::io::{BufRead, IsTerminal};

use anyhow::{Context, Result, bail, ensure};
use cc_proto::Timestamp;
use cc_proto::sign::{self, CronStatement};
use cc_proto::wire::CronEntry;
use serde_json::{Value, json};

use crate::api::{Api, FileConfig};
use crate::cli::{Cli, CronCommand};
use crate::cron::{parse_lines, read_cron_file};
use crate::signing::{key_path, load_key, nonce};
use crate::term::{errln, outln};

/// A fleet file's entries as the API takes them: `{target, id, …}`. The
/// target is checked by the listener (and named with the entry there).
pub(crate) fn parse_fleet_file(text: &str) -> Result<(Vec<Value>, Vec<String>)> {
    let (lines, warnings) = parse_lines(text, 1, "ID TARGET [OPTIONS] SCHEDULE COMMAND")?;
    let mut out = Vec::with_capacity(lines.len());
    for (lead, entry) in lines {
        let target = &lead[1];
        ensure!(
            target == "*" || target.starts_with("host:") || target.starts_with("tag:"),
            "entry {}: target {target:?}: each term is *, host:NAME or tag:T, joined by commas",
            entry.id
        );
        let mut v = serde_json::to_value(&entry)?;
        v["target"] = json!(target);
        out.push(v);
    }
    Ok((out, warnings))
}

fn read_fleet(path: &std::path::Path) -> Result<Vec<Value>> {
    let (entries, warnings) = parse_fleet_file(&read_cron_file(path)?)?;
    for w in &warnings {
        errln!("ccctl: warning: {w}");
    }
    Ok(entries)
}

fn ids(v: &Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i.as_str().map(str::to_owned))
        .collect()
}

/// One line per host of a plan: `HOST: +added ~changed -removed`.
fn print_plan(plan: &Value) -> usize {
    let hosts = plan["hosts"].as_array().cloned().unwrap_or_default();
    for h in &hosts {
        let mut parts = Vec::new();
        for (key, mark) in [("added", "+"), ("changed", "~"), ("removed", "-")] {
            parts.extend(ids(h, key).into_iter().map(|i| format!("{mark}{i}")));
        }
        if h["awaitingSignature"] == true {
            parts.push("(root list awaiting signature: apply --system --key K)".into());
        }
        outln!(
            "{}: {}",
            h["hostname"].as_str().unwrap_or(""),
            parts.join(" ")
        );
    }
    let outside = plan["outsideSelector"].as_u64().unwrap_or(0);
    if hosts.is_empty() && outside == 0 {
        outln!("no changes");
    } else if outside > 0 {
        outln!("{outside} more hosts outside your hosts selector change: you may not apply this");
    }
    hosts.len()
}

/// `ccctl cron plan|apply|status`.
pub(crate) fn command(cli: &Cli, file: &FileConfig, command: &CronCommand) -> Result<bool> {
    match command {
        CronCommand::Plan { file: path, output } => {
            let entries = read_fleet(path)?;
            let plan = Api::new(cli, file)?.call(
                "POST",
                "/fleet/cron/plan",
                Some(&json!({ "entries": entries })),
            )?;
            if output == "json" {
                crate::term::json(&plan)?;
            } else {
                print_plan(&plan);
            }
            Ok(true)
        }
        CronCommand::Apply {
            file: path,
            yes,
            system,
            key,
        } => apply(cli, file, path, *yes, *system, key.as_ref()),
        CronCommand::Status {
            host,
            tag,
            failing,
            missed,
            output,
        } => status(
            cli,
            file,
            host.as_ref(),
            tag.as_ref(),
            (*failing, *missed),
            output,
        ),
        CronCommand::Get { .. } | CronCommand::Set { .. } => bail!("not a fleet command"),
    }
}

/// `ccctl cron apply`: the plan, a question (unless `yes`), signatures
/// (with `system`), then the set replaced.
fn apply(
    cli: &Cli,
    file: &FileConfig,
    path: &std::path::Path,
    yes: bool,
    system: bool,
    key: Option<&std::path::PathBuf>,
) -> Result<bool> {
    let entries = read_fleet(path)?;
    let api = Api::new(cli, file)?;
    let plan = api.call(
        "POST",
        "/fleet/cron/plan",
        Some(&json!({ "entries": entries })),
    )?;
    let changing = print_plan(&plan);
    if plan["outsideSelector"].as_u64().unwrap_or(0) > 0 {
        return Ok(false);
    }
    let stored = api.call("GET", "/fleet/cron", None)?;
    if changing == 0 && stored["entries"] == json!(entries) {
        return Ok(true);
    }
    if !yes && !confirm()? {
        errln!("ccctl: nothing applied");
        return Ok(false);
    }
    let mut signed = serde_json::Map::new();
    if system {
        let k = load_key(&key_path(key.cloned(), file)?)?;
        for h in plan["hosts"].as_array().into_iter().flatten() {
            let (Some(host), Some(list)) = (h["hostname"].as_str(), h.get("entries")) else {
                continue;
            };
            let list: Vec<CronEntry> =
                serde_json::from_value(list.clone()).context("the plan's list for a host")?;
            for e in &list {
                let program = e.validate()?.command.program().to_owned();
                ensure!(
                    program.starts_with('/'),
                    "{host}: entry {}: {program}: root entries name their program by absolute path (the signature covers the path, not a name the host looks up in PATH)",
                    e.id
                );
            }
            let (not_before, expires_at) = sign::window(Timestamp::now(), sign::MAX_VALIDITY_SECS);
            let st = CronStatement {
                host: host.to_owned(),
                generation: u64::try_from(Timestamp::now().unix_millis()).unwrap_or(0),
                entries: list,
                not_before,
                expires_at,
                nonce: nonce()?,
            };
            signed.insert(
                host.to_owned(),
                serde_json::to_value(sign::sign(&st, sign::CRON_LABEL, &k)?)?,
            );
        }
    }
    let applied = api.call(
        "PUT",
        "/fleet/cron",
        Some(&json!({
            "entries": entries,
            "generation": plan["generation"],
            "signed": signed,
        })),
    )?;
    outln!(
        "applied: generation {}, {} hosts changed, {} lists signed",
        applied["generation"],
        applied["changed"],
        applied["signed"]
    );
    let awaiting = ids(&applied, "awaitingSignature");
    if !awaiting.is_empty() {
        outln!(
            "awaiting signature (they keep their last signed list): {}",
            awaiting.join(", ")
        );
    }
    Ok(true)
}

/// `ccctl cron status`: a row per host, filtered.
fn status(
    cli: &Cli,
    file: &FileConfig,
    host: Option<&String>,
    tag: Option<&String>,
    (failing, missed): (bool, bool),
    output: &str,
) -> Result<bool> {
    let mut q = Vec::new();
    if let Some(h) = host {
        q.push(format!("host={h}"));
    }
    if let Some(t) = tag {
        q.push(format!("tag={t}"));
    }
    let path = if q.is_empty() {
        "/cron/status".to_owned()
    } else {
        format!("/cron/status?{}", q.join("&"))
    };
    let rows = Api::new(cli, file)?.call("GET", &path, None)?;
    let shown: Vec<&Value> = rows
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| !failing || is_failing(r))
        .filter(|r| !missed || !ids(r, "missed").is_empty())
        .collect();
    if output == "json" {
        crate::term::json(&shown)?;
        return Ok(true);
    }
    outln!("HOST  MODE  WANTED  INSTALLED  DRIFT  NOTES");
    for r in &shown {
        outln!(
            "{}  {}  {}  {}  {}  {}",
            r["hostname"].as_str().unwrap_or(""),
            r["executionMode"].as_str().unwrap_or("-"),
            r["wanted"],
            r["installed"]
                .as_u64()
                .map_or("-".to_owned(), |n| n.to_string()),
            if r["drift"] == true { "yes" } else { "no" },
            notes(r)
        );
    }
    Ok(true)
}

/// A host whose last scheduled run of some entry failed (`lastStatus`:
/// per entry `{status, exitCode}`; status "done" with a non-zero exit).
fn is_failing(r: &Value) -> bool {
    r["lastStatus"].as_object().is_some_and(|m| {
        m.values().any(|s| {
            s["status"] == "failed"
                || (s["status"] == "done" && s["exitCode"].as_i64().is_some_and(|c| c != 0))
        })
    })
}

fn notes(r: &Value) -> String {
    let mut n = Vec::new();
    if r["awaitingSignature"] == true {
        n.push("awaiting signature".to_owned());
    }
    for rej in r["rejected"].as_array().into_iter().flatten() {
        n.push(format!(
            "refused {}: {}",
            rej["id"].as_str().unwrap_or(""),
            rej["reason"].as_str().unwrap_or("")
        ));
    }
    let shadowed = ids(r, "shadowed");
    if !shadowed.is_empty() {
        n.push(format!("own entry replaces fleet {}", shadowed.join(",")));
    }
    let missed = ids(r, "missed");
    if !missed.is_empty() {
        n.push(format!("missed {}", missed.join(",")));
    }
    if let Some(w) = r["cronWarning"].as_str() {
        n.push(w.to_owned());
    }
    n.join("; ")
}

/// Asks on the terminal; refuses without one (use --yes).
fn confirm() -> Result<bool> {
    let stdin = std::io::stdin();
    ensure!(
        stdin.is_terminal(),
        "not asking without a terminal: run with --yes to apply"
    );
    errln!("apply this? [y/N]");
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_files_carry_a_target_and_options() {
        let (e, _) = parse_fleet_file(
            "# fleet\nbackup tag:db,tag:eu [jitter=300] 0 3 * * * /usr/bin/backup\nping * @hourly /bin/true\n",
        )
        .unwrap();
        assert_eq!(e[0]["target"], "tag:db,tag:eu");
        assert_eq!(e[0]["jitter"], 300);
        assert_eq!(e[0]["schedule"], "0 3 * * *");
        assert_eq!(e[1]["target"], "*");
        assert_eq!(e[1]["schedule"], "@hourly");
        let err = parse_fleet_file("x web @hourly /bin/true\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("target \"web\""), "{err}");
        let err = parse_fleet_file("x * \n").unwrap_err().to_string();
        assert!(err.starts_with("line 1: expected ID TARGET"), "{err}");
    }
}
