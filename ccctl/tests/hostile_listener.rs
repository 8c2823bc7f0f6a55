//! `ccctl` against a hostile listener: a fake operator API on loopback whose
//! every text field carries terminal control sequences — a screen clear, a
//! forged "ALL HOSTS OK", a window-title change, CR/LF, a C1 CSI (U+009B),
//! a right-to-left override, DEL. Whatever ccctl prints from it, tables,
//! plain text, errors and JSON, must show them as text (issue #25,
//! finding 5). The one exception is a report's stdout and stderr under
//! `ccctl job`, which is verbatim because the operator asked for exactly
//! that.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{Value, json};

/// What the hostile listener appends to every text field.
const EVIL: &str = "\u{1b}[2J\u{1b}[H ALL HOSTS OK \u{1b}]0;pwned\u{7}\r\n\u{9b}31m\u{202e}\u{7f}";

/// How the start of [`EVIL`] must look once ccctl has escaped it.
const ESCAPED: &str =
    "\\u{1b}[2J\\u{1b}[H ALL HOSTS OK \\u{1b}]0;pwned\\u{7}\\r\\n\\u{9b}31m\\u{202e}\\u{7f}";

fn evil(field: &str) -> String {
    format!("{field}{EVIL}")
}

/// The fake listener's answer to `method path` (query cut off): status and
/// JSON body. Every string a person would read is hostile.
fn answer(method: &str, path: &str) -> (u16, String) {
    let report = json!({
        "exitCode": 3, "stdout": "plain output\n", "stderr": "",
        "startTime": evil("start"), "durationMs": evil("ms"),
        "executingUid": evil("uid"), "executingUser": evil("user"),
        "warning": evil("warning")
    });
    let job = json!({
        "jobId": evil("job"), "hostname": evil("host"), "command": evil("cmd"),
        "args": [evil("arg")], "status": evil("status"), "report": report
    });
    let body = match (method, path) {
        ("GET", "/api/v1/agents") => json!([{
            "hostname": evil("host"), "os": "linux", "arch": "amd64",
            "tags": [evil("tag")], "executionMode": evil("mode"), "isRoot": true,
            "connected": true, "lastHeartbeat": evil("beat"), "warning": evil("warning"),
            "cronStatus": {"installed": [], "rejected": []}
        }]),
        ("POST", "/api/v1/runs") => json!({
            "runId": evil("run"),
            "jobs": [{"hostname": evil("host"), "jobId": evil("job")}]
        }),
        ("GET", p) if p.starts_with("/api/v1/runs/") => json!({
            "runId": evil("run"),
            "hosts": [{"hostname": evil("host"), "jobId": "job-1", "status": "done", "exitCode": 3}]
        }),
        // A report whose output is shown verbatim on request: the exception.
        ("GET", "/api/v1/jobs/verbatim") => {
            let mut j = job;
            j["report"]["stdout"] = json!("\u{1b}[1mbold\u{1b}[0m\n");
            j
        }
        ("GET", p) if p.starts_with("/api/v1/jobs/") => job,
        ("GET", "/api/v1/reports") => json!([{
            "receivedAt": evil("received"), "hostname": evil("host"), "jobId": evil("job"),
            "kind": evil("kind"), "report": {"exitCode": 3, "executingUid": 0, "stdout": evil("out")}
        }]),
        ("GET", "/api/v1/agents/text-error/cron") => {
            return (502, evil("a text error body"));
        }
        ("GET", p) if p.starts_with("/api/v1/agents/") && p.ends_with("/cron") => {
            json!([{"id": evil("id"), "schedule": evil("sched"), "command": evil("cron-cmd")}])
        }
        ("GET", "/api/v1/keys") => json!([{
            "name": evil("name"), "hostname": evil("host"), "created": evil("created"), "revoked": false
        }]),
        ("POST", "/api/v1/keys") => json!({"key": evil("key"), "hostname": evil("host")}),
        ("DELETE", p) if p.starts_with("/api/v1/keys/") => {
            return (500, json!({"error": evil("error")}).to_string());
        }
        _ => return (404, json!({"error": "no such route"}).to_string()),
    };
    (200, body.to_string())
}

/// Serves [`answer`] on a loopback port, one connection at a time (ccctl
/// makes one request at a time), each closed after its answer. The thread
/// ends with the test process.
fn hostile_listener() -> SocketAddr {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in server.incoming() {
            let Ok(conn) = conn else { continue };
            // A client that stalls cannot hold the test: its read times out.
            let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = serve(conn);
        }
    });
    addr
}

fn serve(conn: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut words = line.split_whitespace();
    let method = words.next().unwrap_or("").to_owned();
    let target = words.next().unwrap_or("").to_owned();
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length.min(1 << 20)];
    reader.read_exact(&mut body)?;
    let path = target.split('?').next().unwrap_or("");
    let (status, body) = answer(&method, path);
    let mut w = conn;
    write!(
        w,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    w.flush()
}

fn ccctl(addr: SocketAddr, dir: &Path, args: &[&str]) -> Output {
    let token = dir.join("token");
    std::fs::write(&token, "t0ken").unwrap();
    Command::new(env!("CARGO_BIN_EXE_ccctl"))
        .arg("--url")
        .arg(format!("http://{addr}"))
        .arg("--token-file")
        .arg(&token)
        .args(args)
        .env_remove("HOME")
        .env_remove("CC_URL")
        .env_remove("CC_TOKEN_FILE")
        .output()
        .unwrap()
}

/// Characters that act on a terminal rather than show: C0 (but the line
/// ends ccctl writes), DEL, C1 and the bidi overrides and isolates.
fn acts_on_a_terminal(c: char) -> bool {
    (c.is_control() && c != '\n') || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// What in `bytes` would reach the terminal raw: the characters above, or
/// bytes that are not UTF-8 at all (a lone 0x9b is a C1 CSI to some
/// terminals).
fn raw(bytes: &[u8]) -> Vec<char> {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.chars().filter(|c| acts_on_a_terminal(*c)).collect(),
        Err(_) => vec!['\u{fffd}'],
    }
}

/// `raw` as a person reads it: how many, and which.
fn tally(found: &[char]) -> String {
    let mut kinds: Vec<char> = found.to_vec();
    kinds.sort_unstable();
    kinds.dedup();
    format!("{} raw {kinds:?}", found.len())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Whether `v` holds `want` as one of its strings (or as part of one).
fn holds(v: &Value, want: &str) -> bool {
    match v {
        Value::String(s) => s.contains(want),
        Value::Array(a) => a.iter().any(|x| holds(x, want)),
        Value::Object(o) => o.values().any(|x| holds(x, want)),
        _ => false,
    }
}

/// Every command that prints what the listener says, in text and in JSON:
/// no control character reaches stdout or stderr raw, and the hostile text
/// is there, escaped (text) or intact once parsed (JSON).
#[test]
fn a_hostile_listener_cannot_write_control_sequences_to_the_operators_terminal() {
    let addr = hostile_listener();
    let dir = std::env::temp_dir().join(format!("ccctl-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text_commands: &[&[&str]] = &[
        &["agents"],
        &["run", "web1", "--", "/bin/true"],
        &["run", "web1", "--no-wait", "--", "/bin/true"],
        &["run", "status", "run-1"],
        &["job", "job-1"],
        &["reports"],
        &["cron", "get", "web1"],
        &["keys", "list"],
        &["keys", "add", "k1"],
        // Errors: the listener's JSON `error`, and a body that is not JSON.
        &["keys", "revoke", "k1"],
        &["cron", "get", "text-error"],
    ];
    let json_commands: &[&[&str]] = &[
        &["run", "web1", "--output", "json", "--", "/bin/true"],
        &["job", "job-1", "--output", "json"],
        &["reports", "--output", "json"],
    ];
    let mut leaked = Vec::new();
    let mut unseen = Vec::new();
    for args in text_commands {
        let out = ccctl(addr, &dir, args);
        let (stdout, stderr) = (raw(&out.stdout), raw(&out.stderr));
        if !stdout.is_empty() || !stderr.is_empty() {
            leaked.push(format!(
                "ccctl {}: stdout {}, stderr {}",
                args.join(" "),
                tally(&stdout),
                tally(&stderr)
            ));
        }
        let all = text(&out.stdout) + &text(&out.stderr);
        if !all.contains(ESCAPED) {
            unseen.push(format!("ccctl {}: {all}", args.join(" ")));
        }
    }
    for args in json_commands {
        let out = ccctl(addr, &dir, args);
        let (stdout, stderr) = (raw(&out.stdout), raw(&out.stderr));
        if !stdout.is_empty() || !stderr.is_empty() {
            leaked.push(format!(
                "ccctl {}: stdout {}, stderr {}",
                args.join(" "),
                tally(&stdout),
                tally(&stderr)
            ));
        }
        // Escaped for the terminal, the same JSON for a program.
        let parsed: Option<Value> = serde_json::from_slice(&out.stdout).ok();
        if !parsed.is_some_and(|v| holds(&v, EVIL)) {
            unseen.push(format!("ccctl {}: {}", args.join(" "), text(&out.stdout)));
        }
    }
    let total = text_commands.len() + json_commands.len();
    assert!(
        leaked.is_empty(),
        "{} of {total} commands printed raw control characters:\n{}",
        leaked.len(),
        leaked.join("\n")
    );
    assert!(
        unseen.is_empty(),
        "{} of {total} commands did not show the hostile text escaped:\n{}",
        unseen.len(),
        unseen.join("\n\n")
    );

    // The exception: `ccctl job` prints a report's stdout verbatim, as
    // asked; everything above it is still escaped.
    let out = ccctl(addr, &dir, &["job", "verbatim"]);
    let shown = text(&out.stdout);
    let (head, output) = shown.split_once("--- stdout ---\n").expect(&shown);
    assert!(raw(head.as_bytes()).is_empty(), "{head:?}");
    assert!(head.contains(ESCAPED), "{head}");
    assert_eq!(output, "\u{1b}[1mbold\u{1b}[0m\n", "verbatim");
    let _ = std::fs::remove_dir_all(&dir);
}
