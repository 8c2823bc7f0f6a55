//! `ccctl job`: one job and its report.

use anyhow::Result;
use serde_json::Value;

use crate::api::Api;
use crate::term::{self, outln};

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
        outln!("exit     {}", r["exitCode"]);
        outln!(
            "ran as   {} (uid {})",
            text(&r["executingUser"]),
            r["executingUid"]
        );
        outln!("started  {}", text(&r["startTime"]));
        outln!("took     {} ms", r["durationMs"]);
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
