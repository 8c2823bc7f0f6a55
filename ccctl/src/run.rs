//! `ccctl run`: a command on hosts by name or tag, in batches, then
//! followed to its end and summarised (or `--system`, signed, as root).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use crate::agents::has_tags;
use crate::api::{Api, FileConfig};
use crate::cli::RunArgs;
use crate::signing::sign_for_hosts;
use crate::term::{self, outln};

/// The most characters of output a table row shows.
const OUTPUT_WIDTH: usize = 60;

/// A report's first line of output (stdout, else stderr) for a table: at
/// most 60 characters, and a `…` after them when the line was longer (its
/// control characters are escaped with the rest of the row, by `outln!`).
pub(crate) fn first_line(report: &Value) -> String {
    let line = report["stdout"]
        .as_str()
        .filter(|s| !s.trim().is_empty())
        .or(report["stderr"].as_str())
        .unwrap_or("")
        .lines()
        .next()
        .unwrap_or("");
    let mut shown: String = line.chars().take(OUTPUT_WIDTH).collect();
    if shown.len() < line.len() {
        shown.push('…');
    }
    shown
}

/// One line per host: exit code, duration, first line of output.
pub(crate) fn summarize(jobs: &[(String, String, Value)], json_out: bool) -> bool {
    let ok = jobs.iter().all(|(_, _, j)| j["report"]["exitCode"] == 0);
    if json_out {
        let v: Vec<Value> = jobs
            .iter()
            .map(|(h, id, j)| json!({"host": h, "jobId": id, "status": j["status"], "report": j["report"]}))
            .collect();
        let _ = term::json(&v);
        return ok;
    }
    outln!(
        "{:<28} {:<36} {:<8} {:>6} {:>9}  OUTPUT",
        "HOST",
        "JOB",
        "STATUS",
        "EXIT",
        "MS"
    );
    for (h, id, j) in jobs {
        let r = &j["report"];
        let first = first_line(r);
        outln!(
            "{:<28} {:<36} {:<8} {:>6} {:>9}  {}",
            h,
            id,
            j["status"].as_str().unwrap_or("?"),
            r["exitCode"].as_i64().map_or("-".into(), |c| c.to_string()),
            r["durationMs"]
                .as_u64()
                .map_or("-".into(), |d| d.to_string()),
            first
        );
        if let Some(w) = r["warning"].as_str() {
            outln!("{:<28} warning: {w}", "");
        }
    }
    ok
}

/// Root work: the statements sent as one signed run, then followed like
/// any run.
pub(crate) fn system_run(
    api: &Api,
    file: &FileConfig,
    args: &RunArgs,
    json_out: bool,
) -> Result<bool> {
    let statements = sign_for_hosts(Some(api), file, args)?;
    let mut body = json!({ "signed": statements });
    if let Some(b) = args.batch {
        body["batch"] = json!(b);
    }
    follow_run(api, &body, args, json_out)
}

/// Hostnames of the agents carrying every tag in `tags`.
pub(crate) fn hosts_with_tags(api: &Api, tags: &[String]) -> Result<Vec<String>> {
    let agents = api.get_all("/agents", "x-cc-next-after", "after")?;
    Ok(agents
        .iter()
        .filter(|a| has_tags(a, tags))
        .filter_map(|a| a["hostname"].as_str().map(str::to_owned))
        .collect())
}

/// The program and its arguments (after `--`). A "host" that is an
/// absolute path is a program given without `--`: say so, and show the
/// command line with it.
pub(crate) fn program_of(args: &RunArgs) -> Result<(&String, &[String])> {
    if let Some(i) = args.hosts.iter().position(|h| h.starts_with('/')) {
        let hosts = &args.hosts[..i];
        let mut fixed = vec!["ccctl run".to_owned()];
        fixed.extend(hosts.iter().cloned());
        fixed.extend(args.tags.iter().map(|t| format!("--tag {t}")));
        fixed.push("--".to_owned());
        fixed.extend(args.hosts[i..].iter().cloned());
        fixed.extend(args.command.iter().cloned());
        if hosts.is_empty() && args.tags.is_empty() {
            fixed.insert(1, "HOST".to_owned());
        }
        bail!(
            "`{}` was read as a host: the program and its arguments go after `--`: {}",
            args.hosts[i],
            fixed.join(" ")
        );
    }
    args.command
        .split_first()
        .context("no program given: ccctl run HOST… | --tag T… -- PROGRAM ARGS…")
}

/// One `POST /runs` for the hosts and tags given, then wait and print.
pub(crate) fn fan_out(api: &Api, args: &RunArgs, json_out: bool) -> Result<bool> {
    let (program, rest) = program_of(args)?;
    ensure!(
        !args.hosts.is_empty() || !args.tags.is_empty(),
        "give hosts, --tag, or both"
    );
    let mut body = json!({"hosts": args.hosts, "tags": args.tags, "command": program,
        "args": rest, "timeout": args.timeout});
    if let Some(b) = args.batch {
        body["batch"] = json!(b);
    }
    follow_run(api, &body, args, json_out)
}

/// Posts the run, then (unless `--no-wait`) follows it to the end on the
/// event stream and prints its table; Ctrl-C stops the waiting only.
pub(crate) fn follow_run(api: &Api, body: &Value, args: &RunArgs, json_out: bool) -> Result<bool> {
    let accepted = api.call("POST", "/runs", Some(body))?;
    let id = accepted["runId"]
        .as_str()
        .context("no runId in the answer")?
        .to_owned();
    if args.no_wait {
        outln!("run {id}");
        for j in accepted["jobs"].as_array().into_iter().flatten() {
            outln!(
                "{} {}",
                j["hostname"].as_str().unwrap_or("?"),
                j["jobId"].as_str().unwrap_or("?")
            );
        }
        return Ok(true);
    }
    // How to follow it later is said only if ccctl stops following before
    // the run ends (Ctrl-C, giving up, the listener gone).
    stop_waiting_on_ctrl_c(&id);
    wait_run(api, &id, args.timeout).map_err(|e| {
        anyhow::anyhow!("{e:#}; run {id} goes on: follow it later with `ccctl run watch {id}`")
    })?;
    run_table(api, &id, json_out)
}

/// Ctrl-C while waiting for a run: the jobs go on (nothing is sent to the
/// listener); say how to follow the run, and exit 130 as a shell expects.
pub(crate) fn stop_waiting_on_ctrl_c(id: &str) {
    let msg = format!(
        "ccctl: stopped waiting; run {id} goes on. Follow it with `ccctl run status {id}` or `ccctl run watch {id}`"
    );
    // The handler runs on its own thread, not in signal context. One run
    // is waited for per process, so a second install cannot happen.
    let _ = ctrlc::set_handler(move || {
        // A line of its own, after any progress line.
        term::err_line("");
        term::err_line(&msg);
        std::process::exit(130);
    });
}

/// Waits until every job of the run has ended (done, lost or expired),
/// reading the listener's live event stream for the run — from its first
/// event, so nothing that happened before is missed, and again from the
/// last event seen if the stream drops. On a terminal, a progress line on
/// stderr.
pub(crate) fn wait_run(api: &Api, id: &str, timeout: u64) -> Result<()> {
    use std::collections::HashMap;
    use std::io::{BufRead, IsTerminal};
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let limit = started + Duration::from_secs(timeout + 120);
    let run = api.call("GET", &format!("/runs/{id}"), None)?;
    let mut state: HashMap<String, (String, Option<i64>)> = run["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| {
            let status = h["status"].as_str().unwrap_or("").to_owned();
            Some((
                h["jobId"].as_str()?.to_owned(),
                (status, h["exitCode"].as_i64()),
            ))
        })
        .collect();
    let total = state.len();
    let ended = |s: &str| matches!(s, "done" | "lost" | "expired");
    // Over already (its events may have been pruned since).
    if state.values().all(|(st, _)| ended(st)) {
        return Ok(());
    }
    let mut last = 0i64;
    loop {
        // No timeout: the stream stays open while the run goes on.
        let req = api
            .request("GET", &format!("/events?run={id}"))
            .set("Last-Event-ID", &last.to_string());
        let resp = api.send(req, None)?;
        for line in std::io::BufReader::new(resp.into_reader()).lines() {
            let Ok(line) = line else { break };
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let Ok(e) = serde_json::from_str::<Value>(data.trim()) else {
                continue;
            };
            last = e["id"].as_i64().unwrap_or(last);
            if let (Some(job), Some(status)) = (e["jobId"].as_str(), e["status"].as_str()) {
                state.insert(job.to_owned(), (status.to_owned(), e["exitCode"].as_i64()));
            }
            let count = |s: &str| state.values().filter(|(st, _)| st == s).count();
            let failed = state
                .values()
                .filter(|(st, code)| st == "done" && *code != Some(0))
                .count();
            if tty {
                term::progress(&format!(
                    "{} done ({failed} failed), {} lost, {} expired of {total}; {:.1} s",
                    count("done"),
                    count("lost"),
                    count("expired"),
                    started.elapsed().as_secs_f64()
                ));
            }
            if state.values().all(|(st, _)| ended(st)) {
                if tty {
                    term::progress_done();
                }
                return Ok(());
            }
            if Instant::now() > limit {
                bail!("gave up waiting");
            }
        }
        // The stream ended (listener restart, network): resume from `last`.
        if Instant::now() > limit {
            bail!("gave up waiting");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The run's table (or JSON), from each job; true when every host succeeded.
pub(crate) fn run_table(api: &Api, id: &str, json_out: bool) -> Result<bool> {
    let r = api.call("GET", &format!("/runs/{id}"), None)?;
    let mut jobs = Vec::new();
    for h in r["hosts"].as_array().into_iter().flatten() {
        let job_id = h["jobId"].as_str().context("a host without jobId")?;
        let j = api.call("GET", &format!("/jobs/{job_id}"), None)?;
        jobs.push((
            h["hostname"].as_str().unwrap_or("?").to_owned(),
            job_id.to_owned(),
            j,
        ));
    }
    Ok(summarize(&jobs, json_out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_line_never_carries_a_control_character() {
        let r = json!({"stdout": "\u{1b}[31mred\u{1b}[0m\rover\nsecond", "stderr": ""});
        let line = term::clean(&first_line(&r)).into_owned();
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(line.starts_with("\\u{1b}[31mred"), "{line:?}");
        assert!(line.ends_with("\\rover"), "the first line only: {line:?}");
        let r = json!({"stdout": " \n", "stderr": "boom\n"});
        assert_eq!(first_line(&r), "boom");
        let long = json!({"stdout": "é".repeat(100)});
        assert_eq!(
            first_line(&long),
            format!("{}…", "é".repeat(60)),
            "cut and marked"
        );
        let fits = json!({"stdout": "é".repeat(60)});
        assert_eq!(first_line(&fits), "é".repeat(60), "not cut, not marked");
    }
}
