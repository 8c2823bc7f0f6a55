//! Hostile input to the root helper's socket, scenario
//! `hostile_4_helper_socket`: one table of requests ([`requests`]), each
//! with the refusal code it must get, played by one loop that also checks
//! the helper still answers; then a signed `write_cron` whose entries try
//! to change the cron file's structure, and a peer of another uid.

use cc_e2e::helper::HelperProcess;
use serde_json::{Value, json};

use super::trunc;
use crate::common::{Rig, rig};

/// `body` with the helper protocol's length prefix.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut f = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

/// Requests a peer may send, each with the code of the refusal it must
/// get.
fn requests() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let exec = |payload: &str| {
        json!({"exec": {"execute_job": payload}})
            .to_string()
            .into_bytes()
    };
    let cron = |payload: &str| {
        json!({"write_cron": {"cron_refresh": payload}})
            .to_string()
            .into_bytes()
    };
    let mut too_big = 0xFFFF_FFFFu32.to_be_bytes().to_vec();
    too_big.extend_from_slice(b"{}");
    let trailing = framed(br#""status" junk"#);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("unframed bytes", b"hello, helper".to_vec(), "bad_request"),
        ("frame declaring 4 GiB", too_big, "bad_request"),
        ("malformed JSON", framed(b"{\"exec\":"), "bad_request"),
        (
            "invalid UTF-8 body",
            framed(b"\"st\xffatus\""),
            "bad_request",
        ),
        (
            "deep nesting (100,000 arrays)",
            framed(format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).as_bytes()),
            "bad_request",
        ),
        (
            "unknown request",
            framed(br#"{"reboot":null}"#),
            "bad_request",
        ),
        (
            "unknown field",
            framed(br#"{"exec":{"execute_job":"{}","as_user":"root"}}"#),
            "bad_request",
        ),
        (
            "trailing bytes after the request in a frame",
            trailing,
            "bad_request",
        ),
        (
            "exec with NUL in the command",
            framed(&exec(r#"{"jobId":"j1","command":"/bin/true\u0000x"}"#)),
            "invalid_payload",
        ),
        (
            "exec with LF in an argument",
            framed(&exec(
                r#"{"jobId":"j2","command":"/bin/echo","args":["a\nb"]}"#,
            )),
            "invalid_payload",
        ),
        (
            "exec with timeout 1e400",
            framed(&exec(
                r#"{"jobId":"j3","command":"/bin/true","timeout":1e400}"#,
            )),
            "invalid_payload",
        ),
        (
            "exec with jobId ../../etc",
            framed(&exec(r#"{"jobId":"../../etc","command":"/bin/true"}"#)),
            "invalid_payload",
        ),
        (
            "exec payload not JSON",
            framed(&exec("rm -rf /")),
            "invalid_payload",
        ),
        (
            "exec with a jobId holding a line break and a log line",
            framed(&exec(&format!(
                r#"{{"jobId":{},"command":"/bin/true"}}"#,
                serde_json::to_string(&cc_e2e::reliability::forged_line()).unwrap()
            ))),
            "invalid_payload",
        ),
        (
            "a request name holding a line break and a log line",
            framed(
                serde_json::to_string(&cc_e2e::reliability::forged_line())
                    .unwrap()
                    .as_bytes(),
            ),
            "bad_request",
        ),
        (
            "write_cron without a signature (and a payload not a list)",
            framed(&cron(r#"{"id":"x"}"#)),
            "signature_refused",
        ),
    ];
    cases
}

#[test]
fn hostile_input_to_the_helper_socket() {
    let Some(r) = rig("hostile input", "hostile_4_helper_socket", "") else {
        return;
    };
    let hdir = r.dir.path().join("helper");
    let helper = HelperProcess::start(
        &hdir,
        &format!(
            "system_mode = true\n[sandbox]\nwrite_paths = [{:?}]\n",
            hdir.join("writable")
        ),
        r.user,
    );
    let cases = requests();
    r.rec.watch_log(hdir.join("helper.log"));
    let agent = Some(r.user);
    for (what, bytes, want) in cases {
        let resp = helper.send_as(agent, &bytes, true);
        let code = serde_json::from_str::<Value>(&resp)
            .ok()
            .and_then(|v| v["refused"]["code"].as_str().map(ToOwned::to_owned));
        let status = helper.send_as(agent, &framed(br#""status""#), true);
        let up = status.contains("status");
        r.rec.row(
            "helper socket",
            what,
            &format!("refused: {want}; the helper stays up"),
            &format!(
                "{}; status answered after: {up}",
                code.as_deref().map_or_else(
                    || format!("no answer {resp:?}"),
                    |c| format!("refused: {c}")
                )
            ),
            code.as_deref() == Some(want) && up,
        );
    }
    signed_cron_entries(&r, &helper);
    foreign_uid(&r, &helper);
}

/// Cron entries that try to change the file's structure.
fn signed_cron_entries(r: &Rig, helper: &HelperProcess) {
    let entries = json!([
        {"id": "ok-1", "schedule": "*/5 * * * *", "command": "/bin/echo fine"},
        {"id": "crlf", "schedule": "* * * * *", "command": "/bin/true\r\n* * * * * root /bin/sh -c evil"},
        {"id": "nul", "schedule": "* * * * *", "command": "/bin/true\u{0}x"},
        {"id": "pct", "schedule": "* * * * *", "command": "/bin/echo 100%"},
        {"id": "extra", "schedule": "* * * * * root", "command": "/bin/true"},
        {"id": "bad", "schedule": "61 * * * *", "command": "/bin/true"},
    ]);
    // Signed, as root work must be: what is checked is the entries.
    let resp = helper.write_cron(&entries).to_string();
    let file = std::fs::read_to_string(helper.cron_file()).unwrap_or_default();
    let lines: Vec<&str> = file
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .collect();
    // The fixed header's two variables, then only root cron-run lines.
    let intact = !file.contains("evil")
        && lines.iter().all(|l| {
            *l == "SHELL=/bin/sh"
                || *l == "PATH=/usr/sbin:/usr/bin:/sbin:/bin"
                || (l.split_whitespace().nth(5) == Some("root") && l.contains(" cron-run "))
        });
    r.rec.row(
        "helper socket",
        "write_cron, signed, with CR/LF, NUL, %, an extra field, a bad schedule and one valid entry",
        "invalid entries rejected by id; the file holds only fixed-wrapper lines as root",
        &format!(
            "response {}; {} line(s), structure intact: {intact}",
            trunc(&resp),
            lines.len()
        ),
        intact && resp.contains("crlf") && lines.iter().any(|l| l.ends_with(" ok-1")),
    );
}

/// A peer with another uid: disconnected before a byte is read.
fn foreign_uid(r: &Rig, helper: &HelperProcess) {
    // In the agent's group (so the socket's 0660 lets it connect), but
    // not the agent's uid: the SO_PEERCRED check is what refuses it.
    let resp = helper.send_as(Some((65534, r.user.1)), &framed(br#""status""#), true);
    r.rec.row(
        "helper socket",
        "a request from uid 65534 in the agent's group (not the agent user)",
        "disconnected without an answer; logged",
        &format!(
            "answer {resp:?}; logged: {}",
            helper.log().contains("65534")
        ),
        resp.is_empty() && helper.log().contains("65534"),
    );
}
