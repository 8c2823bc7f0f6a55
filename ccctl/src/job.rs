//! `ccctl job`: one job and its report.

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::api::Api;
use crate::term::{self, errln, outln};

/// A job as a person reads it: what ran where, how it ended, then its
/// output verbatim.
pub(crate) fn print_job(j: &Value) {
    let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    let args: Vec<String> = j["args"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| a.as_str().unwrap_or("").to_owned())
        .collect();
    outln!("job      {}", text(&j["jobId"]));
    outln!("host     {}", text(&j["hostname"]));
    outln!("command  {} {}", text(&j["command"]), args.join(" "));
    outln!("status   {}", text(&j["status"]));
    if let Some(by) = j["submitter"].as_str() {
        outln!("by       {by}");
    }
    let r = &j["report"];
    if r.is_object() {
        print_report(r);
    }
}

/// A report's outcome and its output verbatim: the lines `ccctl job`
/// prints under a job or a scheduled run (`waited` only for a run that
/// waited for its jitter).
fn print_report(r: &Value) {
    let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    outln!("exit     {}", r["exitCode"]);
    outln!(
        "ran as   {} (uid {})",
        text(&r["executingUser"]),
        r["executingUid"]
    );
    outln!("started  {}", text(&r["startTime"]));
    outln!("took     {} ms", r["durationMs"]);
    if let Some(ms) = r["waitedMs"].as_u64() {
        outln!("waited   {ms} ms (jitter)");
    }
    if let Some(w) = r["warning"].as_str() {
        outln!("warning  {w}");
    }
    for stream in ["stdout", "stderr"] {
        let out = r[stream].as_str().unwrap_or("");
        if !out.is_empty() {
            outln!("--- {stream} ---");
            term::verbatim(out);
        }
    }
}

/// `ccctl job ID`: its report's exit code decides ccctl's.
pub(crate) fn show(api: &Api, id: &str, json_out: bool) -> Result<bool> {
    let j = api.call("GET", &format!("/jobs/{id}"), None)?;
    if json_out {
        term::json(&j)?;
    } else {
        print_job(&j);
    }
    Ok(j["report"]["exitCode"] == 0)
}

/// `ccctl job ENTRY-ID --host H [--all]`: a cron entry's scheduled runs on
/// one host (`GET /agents/{H}/cron/{ID}/runs`). The latest run prints as a
/// job does and its exit code decides ccctl's; `--all` lists every stored
/// run, newest first.
pub(crate) fn show_entry(
    api: &Api,
    host: &str,
    id: &str,
    all: bool,
    json_out: bool,
) -> Result<bool> {
    let host = cc_proto::Hostname::parse(host).with_context(|| format!("--host {host:?}"))?;
    let id = cc_proto::JobId::parse(id).with_context(|| format!("entry id {id:?}"))?;
    let path = format!("/agents/{host}/cron/{id}/runs");
    if all {
        let runs = api.get_all(&format!("{path}?limit=1000"), "x-cc-next-before", "before")?;
        if json_out {
            term::json(&runs)?;
            return Ok(true);
        }
        if runs.is_empty() {
            errln!("ccctl: no run of cron entry {id} on {host} has been reported yet");
            return Ok(true);
        }
        outln!(
            "{:<24} {:<24} {:>5} {:>8} {:>8}  OUTPUT",
            "RECEIVED",
            "STARTED",
            "EXIT",
            "MS",
            "WAITED"
        );
        for r in &runs {
            let rep = &r["report"];
            let num = |v: &Value| v.as_i64().map_or("-".into(), |n| n.to_string());
            outln!(
                "{:<24} {:<24} {:>5} {:>8} {:>8}  {}",
                r["receivedAt"].as_str().unwrap_or("-"),
                rep["startTime"].as_str().unwrap_or("-"),
                num(&rep["exitCode"]),
                num(&rep["durationMs"]),
                num(&rep["waitedMs"]),
                crate::run::first_line(rep)
            );
        }
        return Ok(true);
    }
    let runs = api.call("GET", &format!("{path}?limit=1"), None)?;
    let Some(latest) = runs.as_array().and_then(|a| a.first()) else {
        bail!(
            "no run of cron entry {id} on {host} has been reported yet (`ccctl cron get {host}` lists its entries and their next runs)"
        );
    };
    let r = &latest["report"];
    if json_out {
        term::json(latest)?;
        return Ok(r["exitCode"] == 0);
    }
    let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    outln!("entry    {id} (scheduled)");
    outln!("host     {host}");
    outln!("command  {}", text(&r["command"]));
    outln!("received {}", text(&latest["receivedAt"]));
    print_report(r);
    Ok(r["exitCode"] == 0)
}
