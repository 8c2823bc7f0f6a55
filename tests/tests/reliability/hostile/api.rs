//! Hostile requests to the operator API, scenario `hostile_2_operator_api`:
//! one table of requests, each with the status it must get (and a JSON
//! error), played by one loop; then the listener and a bystander agent
//! unaffected.

use cc_e2e::http;
use cc_e2e::listener::TOKEN;
use serde_json::{Value, json};

use super::trunc;
use crate::common::{T, alive, rig};

#[test]
fn hostile_input_to_the_operator_api() {
    let Some(mut r) = rig("hostile input", "hostile_2_operator_api", "") else {
        return;
    };
    let good = "rel-api-bystander.test";
    let bystander = r.agent(good, "");
    r.rec.watch_log(r.listener.log_path());
    r.rec.watch_log(bystander.dir.join("agent.log"));
    let addr = r.listener.admin_addr;
    let jobs = format!("/api/v1/agents/{good}/jobs");
    let big = vec![b'x'; 2 << 20];
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    // (what, method, path, token, body, status wanted)
    type Case<'a> = (
        &'a str,
        &'a str,
        String,
        Option<&'a str>,
        Option<Vec<u8>>,
        u16,
    );
    let cases: Vec<Case> = vec![
        ("no token", "GET", "/api/v1/agents".into(), None, None, 401),
        ("wrong token", "GET", "/api/v1/agents".into(), Some("nope"), None, 401),
        ("token of the right length but wrong", "GET", "/api/v1/agents".into(), Some("test-admin-token-0123456780"), None, 401),
        ("malformed JSON", "POST", jobs.clone(), Some(TOKEN), Some(b"{\"command\":".to_vec()), 400),
        ("deep nesting (100,000 arrays)", "POST", jobs.clone(), Some(TOKEN), Some(deep.into_bytes()), 400),
        ("invalid UTF-8 body", "POST", jobs.clone(), Some(TOKEN), Some(b"{\"command\":\"/bin/\xff\"}".to_vec()), 400),
        ("command a number", "POST", jobs.clone(), Some(TOKEN), Some(br#"{"command":5}"#.to_vec()), 400),
        ("timeout a string", "POST", jobs.clone(), Some(TOKEN), Some(br#"{"command":"/bin/true","timeout":"x"}"#.to_vec()), 400),
        ("timeout 1e400", "POST", jobs.clone(), Some(TOKEN), Some(br#"{"command":"/bin/true","timeout":1e400}"#.to_vec()), 400),
        ("timeout 18446744073709551616", "POST", jobs.clone(), Some(TOKEN), Some(br#"{"command":"/bin/true","timeout":18446744073709551616}"#.to_vec()), 400),
        ("timeout -1", "POST", jobs.clone(), Some(TOKEN), Some(br#"{"command":"/bin/true","timeout":-1}"#.to_vec()), 400),
        ("unknown field (shell: true)", "POST", jobs.clone(), Some(TOKEN), Some(br#"{"command":"/bin/true","shell":true}"#.to_vec()), 400),
        ("command with NUL", "POST", jobs.clone(), Some(TOKEN), Some(br#"{"command":"/bin/true\u0000x"}"#.to_vec()), 400),
        ("argument with LF", "POST", jobs.clone(), Some(TOKEN), Some(br#"{"command":"/bin/echo","args":["a\nb"]}"#.to_vec()), 400),
        ("2 MiB body (cap 1 MiB)", "POST", jobs.clone(), Some(TOKEN), Some(big), 413),
        ("hostname with ../ (encoded)", "POST", "/api/v1/agents/..%2F..%2Fetc/jobs".into(), Some(TOKEN), Some(br#"{"command":"/bin/true"}"#.to_vec()), 400),
        ("hostname with NUL (encoded)", "POST", "/api/v1/agents/a%00b/jobs".into(), Some(TOKEN), Some(br#"{"command":"/bin/true"}"#.to_vec()), 400),
        ("SQL in a job id", "GET", "/api/v1/jobs/'%20OR%201=1--".into(), Some(TOKEN), None, 400),
        ("limit=abc", "GET", "/api/v1/reports?limit=abc".into(), Some(TOKEN), None, 400),
        ("limit=99999999999999999999", "GET", "/api/v1/reports?limit=99999999999999999999".into(), Some(TOKEN), None, 400),
        ("cron entry with CR/LF in the command", "PUT", format!("/api/v1/agents/{good}/cron"), Some(TOKEN), Some(br#"[{"id":"a","schedule":"* * * * *","command":"/bin/true\r\n* * * * * root /bin/sh"}]"#.to_vec()), 400),
        ("cron schedule with an extra field", "PUT", format!("/api/v1/agents/{good}/cron"), Some(TOKEN), Some(br#"[{"id":"a","schedule":"* * * * * root","command":"/bin/true"}]"#.to_vec()), 400),
        ("cron schedule out of range", "PUT", format!("/api/v1/agents/{good}/cron"), Some(TOKEN), Some(br#"[{"id":"a","schedule":"61 * * * *","command":"/bin/true"}]"#.to_vec()), 400),
        ("cron id with a path", "PUT", format!("/api/v1/agents/{good}/cron"), Some(TOKEN), Some(br#"[{"id":"../x","schedule":"* * * * *","command":"/bin/true"}]"#.to_vec()), 400),
        ("wrong method", "DELETE", "/api/v1/agents".into(), Some(TOKEN), None, 405),
    ];
    for (what, method, path, token, body, want) in cases {
        let resp = http::request(addr, method, &path, token, body.as_deref());
        let err = serde_json::from_str::<Value>(&resp.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(trunc))
            .unwrap_or_default();
        r.rec.row(
            "operator API",
            &format!("{method} {}: {what}", trunc(&path)),
            &format!("HTTP {want} with a JSON error"),
            &format!("HTTP {} {err:?}", resp.status),
            resp.status == want && (want == 405 || !err.is_empty()),
        );
    }
    let health = r.listener.get("/api/v1/healthz");
    let id = r.post(good, &json!({"command": "/bin/echo", "args": ["fine"]}));
    let done = r.settle(&[id], T) == 1;
    let connects = bystander.log().matches("connected and registered").count();
    r.rec.row(
        "operator API",
        "after the whole corpus",
        "listener up, healthz 200; the agent still runs jobs, never disconnected",
        &format!(
            "healthz {}; job done: {done}; agent connected {connects} time(s)",
            health.status
        ),
        health.status == 200 && done && connects == 1 && alive(&mut r.listener.child),
    );
}
