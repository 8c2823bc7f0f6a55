//! A hostile listener to the agent, scenario `hostile_3_listener_to_agent`:
//! a raw WebSocket server the real agent connects to plays one table of
//! frames ([`inputs`]), each with its documented outcome ([`Outcome`]), in
//! order, a valid job after most of them to prove the agent still works.

use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;

use cc_e2e::rawws::{self, BINARY, TEXT};
use serde_json::{Value, json};

use super::{drop_reason, trunc};
use crate::common::{Rig, T, alive, rig};

const TARGET: &str = "agent (from a hostile listener)";

/// What the agent must do with a frame.
enum Outcome {
    /// Dropped and logged; the connection goes on, and no job started
    /// and no report came for it.
    Dropped,
    /// What the row says it does (ignored, refused…); the connection goes
    /// on.
    GoesOn(&'static str),
    /// An `execute_job` the agent refuses to run, with a report (exit
    /// 126) saying the job is invalid.
    RefusedWithReport,
    /// A `cron_refresh` whose invalid entries are refused by id, the valid
    /// one installed, the crontab's structure intact.
    CronRefused,
    /// The agent ends that connection (protocol error) and reconnects.
    Reconnects,
}

fn job(payload: &str) -> String {
    format!(r#"{{"type":"execute_job","payload":{payload}}}"#)
}

/// A frame as the listener sends it (unmasked).
fn frame(op: u8, b: &[u8]) -> Vec<u8> {
    rawws::frame(op, b, false, None)
}

/// Frames whose JSON says too much or the wrong thing.
fn messages() -> Vec<(&'static str, Vec<u8>, Outcome)> {
    let forged = serde_json::to_string(&cc_e2e::reliability::forged_line()).unwrap();
    let text = |s: String| frame(TEXT, s.as_bytes());
    vec![
        (
            "jobId holding a line break and a log line",
            text(job(&format!(
                r#"{{"jobId":{forged},"command":"/bin/true"}}"#
            ))),
            Outcome::Dropped,
        ),
        (
            "cron_refresh with an id holding a line break and a log line",
            text(format!(
                r#"{{"type":"cron_refresh","payload":[{{"id":{forged},"schedule":"* * * * *","command":"/bin/true"}}]}}"#
            )),
            Outcome::GoesOn("refused and reported (cron_status)"),
        ),
        (
            "malformed JSON",
            frame(TEXT, b"{\"type\":\"execute_job\","),
            Outcome::Dropped,
        ),
        (
            "deep nesting (100,000 arrays)",
            text(format!(
                "{{\"type\":\"execute_job\",\"payload\":{}{}}}",
                "[".repeat(100_000),
                "]".repeat(100_000)
            )),
            Outcome::Dropped,
        ),
        (
            "timeout 1e400",
            text(job(
                r#"{"jobId":"h-1","command":"/bin/true","timeout":1e400}"#,
            )),
            Outcome::Dropped,
        ),
        (
            "timeout 18446744073709551616",
            text(job(
                r#"{"jobId":"h-2","command":"/bin/true","timeout":18446744073709551616}"#,
            )),
            Outcome::Dropped,
        ),
        (
            "args a string",
            text(job(r#"{"jobId":"h-3","command":"/bin/true","args":"x"}"#)),
            Outcome::Dropped,
        ),
        (
            "jobId ../../etc/passwd",
            text(job(r#"{"jobId":"../../etc/passwd","command":"/bin/true"}"#)),
            Outcome::Dropped,
        ),
        (
            "unknown message type",
            frame(TEXT, br#"{"type":"rm_rf","payload":{}}"#),
            Outcome::GoesOn("ignored"),
        ),
        (
            "binary frame",
            frame(BINARY, b"\x00\xff"),
            Outcome::GoesOn("ignored"),
        ),
        (
            "an agent-to-listener type (register)",
            text(cc_e2e::ws::register("x").to_string()),
            Outcome::GoesOn("ignored and logged"),
        ),
    ]
}

/// The whole table, in the order it is played.
fn inputs() -> Vec<(&'static str, Vec<u8>, Outcome)> {
    let mut all = messages();
    // A job whose command has a newline: refused with a report saying why.
    all.push((
        "execute_job with LF in the command",
        frame(
            TEXT,
            job(r#"{"jobId":"h-nl","command":"/bin/echo\nrm -rf /","timeout":30}"#).as_bytes(),
        ),
        Outcome::RefusedWithReport,
    ));
    // Cron entries that try to change the crontab's structure.
    let hostile_cron = json!({"type": "cron_refresh", "payload": [
        {"id": "ok-1", "schedule": "*/5 * * * *", "command": "/bin/echo fine"},
        {"id": "crlf", "schedule": "* * * * *", "command": "/bin/true\r\n* * * * * /bin/sh -c evil"},
        {"id": "nul", "schedule": "* * * * *", "command": "/bin/true\u{0}x"},
        {"id": "pct", "schedule": "* * * * *", "command": "/bin/echo 100%"},
        {"id": "extra", "schedule": "* * * * * *", "command": "/bin/true"},
        {"id": "bad", "schedule": "61 * * * *", "command": "/bin/true"},
        {"id": "../path", "schedule": "* * * * *", "command": "/bin/true"},
    ]});
    all.push((
        "cron_refresh with CR/LF, NUL, %, an extra field, a bad schedule, a path as id, and one valid entry",
        frame(TEXT, hostile_cron.to_string().as_bytes()),
        Outcome::CronRefused,
    ));
    // Frames that end the connection: the agent drops it and reconnects.
    for (what, bytes) in [
        (
            "text frame with invalid UTF-8",
            rawws::frame(TEXT, b"{\"type\":\"\xff\"}", false, None),
        ),
        (
            "frame declaring 64 GiB (header only)",
            rawws::frame(TEXT, b"", false, Some(64 << 30)),
        ),
        (
            "a 2 MiB text frame (cap 1 MiB)",
            rawws::frame(TEXT, &vec![b' '; 2 << 20], false, None),
        ),
    ] {
        all.push((what, bytes, Outcome::Reconnects));
    }
    all
}

/// The hostile listener: the agent's current connection to it, and what
/// the agent did so far.
struct Hostile<'a> {
    r: &'a Rig,
    server: rawws::RawServer,
    s: TcpStream,
    /// Probes sent so far (job ids `probe-N`).
    n: usize,
    /// The job ids of reports that came before a probe's and were not
    /// its own, since the last row that checked there were none.
    others: Vec<String>,
    agent_log: PathBuf,
    /// The agent's at-most-once markers, `state/jobs/<id>` (`seen.rs`).
    markers: PathBuf,
}

impl Hostile<'_> {
    fn push(&mut self, bytes: &[u8]) {
        let _ = self.s.write_all(bytes);
    }

    /// A valid job after a hostile frame: its report proves the agent
    /// still works. None: the connection ended first. The job ids of the
    /// other reports that came before it are kept for the rows that check
    /// no report was made for the hostile frame.
    fn probe(&mut self) -> Option<Value> {
        self.n += 1;
        let n = self.n;
        let id = format!("probe-{n}");
        let job = json!({"type": "execute_job", "payload": {"jobId": id, "command": "/bin/echo", "args": [n.to_string()], "timeout": 30}});
        self.push(&frame(TEXT, job.to_string().as_bytes()));
        let others = std::cell::RefCell::new(std::mem::take(&mut self.others));
        let reply = rawws::next_json(&mut self.s, |v| {
            let report = v["type"] == "execution_report";
            let mine = v["payload"]["jobId"] == id.as_str();
            if report && !mine {
                others
                    .borrow_mut()
                    .push(v["payload"]["jobId"].as_str().unwrap_or("?").to_owned());
            }
            report && mine
        });
        self.others = others.into_inner();
        reply
    }

    /// The agent's drop lines so far.
    fn drop_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.agent_log)
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.contains("invalid message from the listener dropped: ")
                    || l.contains("execute_job with an invalid job id dropped: ")
            })
            .map(str::to_owned)
            .collect()
    }

    /// Jobs the agent started that are not probes.
    fn started_not_probes(&self) -> Vec<String> {
        std::fs::read_dir(&self.markers)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with("probe-"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Plays one input and records its row.
    fn play(&mut self, what: &str, bytes: &[u8], outcome: Outcome) {
        match outcome {
            Outcome::Dropped => self.dropped(what, bytes),
            Outcome::GoesOn(expected) => {
                self.push(bytes);
                let ok = self.probe().is_some();
                self.r.rec.row(
                    TARGET,
                    what,
                    &format!("{expected}; the connection goes on"),
                    if ok {
                        "next job ran"
                    } else {
                        "connection ended"
                    },
                    ok,
                );
            }
            Outcome::RefusedWithReport => self.refused(what, bytes),
            Outcome::CronRefused => self.cron_refused(what, bytes),
            Outcome::Reconnects => self.reconnects(what, bytes),
        }
    }

    /// "Dropped and logged", from outside: the agent's log gains one drop
    /// line per such frame (written before the probe after it is read), no
    /// report but the probe's comes back, and the agent started no job but
    /// the probes.
    fn dropped(&mut self, what: &str, bytes: &[u8]) {
        let logged_before = self.drop_lines().len();
        self.push(bytes);
        let ok = self.probe().is_some();
        let logged = self.drop_lines();
        let new_lines = &logged[logged_before.min(logged.len())..];
        let line = new_lines.first().map_or("none".into(), |l| drop_reason(l));
        let reports: Vec<String> = self.others.drain(..).collect();
        let started = self.started_not_probes();
        self.r.rec.row(
            TARGET,
            what,
            "dropped and logged; the connection goes on",
            &if ok {
                format!(
                    "next job ran; {} drop line(s) logged ({line:?}); other reports {reports:?}; other jobs started {started:?}",
                    new_lines.len()
                )
            } else {
                "connection ended".into()
            },
            ok && new_lines.len() == 1 && reports.is_empty() && started.is_empty(),
        );
    }

    /// The job `h-nl` is not run: its report says why.
    fn refused(&mut self, what: &str, bytes: &[u8]) {
        self.push(bytes);
        let refused = rawws::next_json(&mut self.s, |v| v["payload"]["jobId"] == "h-nl");
        self.r.rec.row(
            TARGET,
            what,
            "not run: a report with exit 126 saying the job is invalid",
            &refused.as_ref().map_or("no report".into(), |v| {
                format!(
                    "exitCode {} stderr {:?}",
                    v["payload"]["exitCode"],
                    trunc(v["payload"]["stderr"].as_str().unwrap_or(""))
                )
            }),
            refused.is_some_and(|v| {
                v["payload"]["exitCode"] == 126
                    && v["payload"]["stderr"]
                        .as_str()
                        .is_some_and(|e| e.contains("invalid job"))
            }),
        );
    }

    /// The agent user's crontab after a hostile `cron_refresh`.
    fn cron_refused(&mut self, what: &str, bytes: &[u8]) {
        self.push(bytes);
        let status =
            rawws::next_json(&mut self.s, |v| v["type"] == "cron_status").unwrap_or_default();
        let crontab = String::from_utf8_lossy(
            &Command::new("crontab")
                .args(["-l", "-u", "cc-agent-user"])
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned();
        let lines: Vec<&str> = crontab
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .collect();
        let rejected: Vec<String> = status["payload"]["rejected"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| x["id"].as_str().unwrap_or("?").to_owned())
                    .collect()
            })
            .unwrap_or_default();
        let structure_ok = lines
            .iter()
            .all(|l| l.split_whitespace().count() >= 7 && l.contains("cron-run"))
            && !crontab.contains("evil");
        self.r.rec.row(
            TARGET,
            what,
            "the invalid entries are refused by id in cron_status; valid ones install; every crontab line is a managed cron-run line",
            &format!(
                "installed {}; rejected {rejected:?}; {} crontab line(s), structure intact: {structure_ok}",
                status["payload"]["installed"], lines.len()
            ),
            structure_ok && rejected.len() >= 5 && lines.iter().any(|l| l.ends_with(" ok-1")),
        );
    }

    /// The agent drops the connection, comes back and runs jobs again.
    fn reconnects(&mut self, what: &str, bytes: &[u8]) {
        self.push(bytes);
        let _ = rawws::until_close(&mut self.s);
        let (s2, reg) = self.server.accept(T);
        let ended = std::mem::replace(&mut self.s, s2);
        let back = serde_json::from_str::<Value>(&reg).is_ok_and(|v| v["type"] == "register");
        let ok = back && self.probe().is_some();
        drop(ended);
        self.r.rec.row(
            TARGET,
            what,
            "the agent ends that connection (protocol error) and reconnects; jobs run again",
            &format!("reconnected and registered: {back}; next job ran: {ok}"),
            ok,
        );
    }
}

#[test]
fn hostile_listener_to_the_agent() {
    let Some(r) = rig("hostile input", "hostile_3_listener_to_agent", "") else {
        return;
    };
    let server = rawws::RawServer::bind();
    let host = "rel-victim.test";
    let mut agent = r.agent_via(host, Some(&server.url()), "");
    let (s, reg) = server.accept(T);
    let registered = serde_json::from_str::<Value>(&reg).is_ok_and(|v| v["type"] == "register");
    assert!(registered, "{reg}");
    let agent_log = agent.dir.join("agent.log");
    r.rec.watch_log(agent_log.clone());
    let mut hostile = Hostile {
        r: &r,
        server,
        s,
        n: 0,
        others: Vec::new(),
        agent_log,
        markers: agent.state().join("jobs"),
    };
    for (what, bytes, outcome) in inputs() {
        hostile.play(what, &bytes, outcome);
    }
    let up = alive(&mut agent.child);
    r.rec.row(
        TARGET,
        "after the whole corpus",
        "the agent process is up",
        &format!("up: {up}"),
        up,
    );
}
