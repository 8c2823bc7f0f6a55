//! Hostile input to the listener's WebSocket (`/agent`), scenario
//! `hostile_1_listener_websocket`: one table of inputs ([`inputs`]), each
//! with its documented outcome, played in order by one loop
//! ([`Peer::play`]); then a valid report holding every injection, the
//! limit of 16 invalid messages per connection, and a bystander agent that
//! never noticed.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};

use cc_e2e::listener::ListenerProcess;
use cc_e2e::rawws::{self, BINARY, TEXT};
use serde_json::json;

use super::{drop_reason, injections, trunc};
use crate::common::{Rig, T, alive, poll, rig};

/// One hostile input to `/agent`, with its documented outcome.
enum Input {
    /// The first frame of a connection: the listener closes with 1008.
    First(String, Vec<u8>),
    /// Bytes after a valid register that no library would send: the
    /// listener closes with this code.
    Lie(&'static str, Vec<u8>, u16),
    /// A message (opcode, bytes) after register: dropped and logged, and
    /// the connection goes on.
    AfterRegister(String, Vec<u8>, u8),
}

/// First frames that are not a valid register.
fn first_frames() -> Vec<Input> {
    let mut firsts = vec![
        Input::First("malformed JSON".into(), b"{\"type\":\"register\",".to_vec()),
        Input::First(
            "deep nesting (100,000 arrays)".into(),
            format!(
                "{{\"type\":\"register\",\"payload\":{}{}}}",
                "[".repeat(100_000),
                "]".repeat(100_000)
            )
            .into_bytes(),
        ),
        Input::First(
            "wrong types (tags a string, isRoot \"yes\")".into(),
            br#"{"type":"register","payload":{"hostname":"h.test","os":"linux","arch":"amd64","tags":"x","executionMode":"user","isRoot":"yes"}}"#.to_vec(),
        ),
        Input::First(
            "huge number as isRoot".into(),
            br#"{"type":"register","payload":{"hostname":"h.test","os":"linux","arch":"amd64","tags":[],"executionMode":"user","isRoot":1e999999}}"#.to_vec(),
        ),
        Input::First("a heartbeat before register".into(), br#"{"type":"heartbeat","payload":{}}"#.to_vec()),
    ];
    for s in injections() {
        let mut reg = cc_e2e::ws::register("x");
        reg["payload"]["hostname"] = json!(s);
        firsts.push(Input::First(
            format!("register with hostname {:?}", trunc(&s)),
            reg.to_string().into_bytes(),
        ));
    }
    // serde's error quotes the value it refused.
    let mut reg = cc_e2e::ws::register("x");
    reg["payload"]["executionMode"] = json!(cc_e2e::reliability::forged_line());
    firsts.push(Input::First(
        "register with executionMode holding a line break and a log line".into(),
        reg.to_string().into_bytes(),
    ));
    firsts
}

/// Frames no library would send.
fn lies() -> Vec<Input> {
    vec![
        Input::Lie(
            "text frame with invalid UTF-8",
            rawws::frame(TEXT, b"{\"type\":\"\xff\xfe\"}", true, None),
            1007,
        ),
        Input::Lie(
            "frame declaring 64 GiB (header only)",
            rawws::frame(TEXT, b"", true, Some(64 << 30)),
            1009,
        ),
        Input::Lie(
            "a 2 MiB text frame (cap 1 MiB)",
            rawws::frame(TEXT, &vec![b' '; 2 << 20], true, None),
            1009,
        ),
    ]
}

/// Messages after register that are each dropped.
fn after_register(hostile: &str) -> Vec<Input> {
    let mut bad = vec![
        Input::AfterRegister("malformed JSON".into(), b"{\"type\": [".to_vec(), TEXT),
        Input::AfterRegister(
            "deep nesting (100,000 objects)".into(),
            format!("{}{}", "{\"a\":".repeat(100_000), "}".repeat(100_000)).into_bytes(),
            TEXT,
        ),
        Input::AfterRegister(
            "report with exitCode 1e400".into(),
            br#"{"type":"execution_report","payload":{"jobId":"j","command":"x","exitCode":1e400,"stdout":"","stderr":"","startTime":"2024-01-01T00:00:00Z","durationMs":1,"executingUid":0,"executingUser":"x"}}"#.to_vec(),
            TEXT,
        ),
        Input::AfterRegister(
            "report with executingUid 18446744073709551616".into(),
            br#"{"type":"execution_report","payload":{"jobId":"j","command":"x","exitCode":0,"stdout":"","stderr":"","startTime":"2024-01-01T00:00:00Z","durationMs":1,"executingUid":18446744073709551616,"executingUser":"x"}}"#.to_vec(),
            TEXT,
        ),
        Input::AfterRegister(
            "report with wrong types (stdout a number)".into(),
            br#"{"type":"execution_report","payload":{"jobId":"j","command":"x","exitCode":0,"stdout":5,"stderr":"","startTime":"2024-01-01T00:00:00Z","durationMs":1,"executingUid":0,"executingUser":"x"}}"#.to_vec(),
            TEXT,
        ),
        Input::AfterRegister("binary frame".into(), b"\x00\x01\x02".to_vec(), BINARY),
        Input::AfterRegister("register again".into(), cc_e2e::ws::register(hostile).to_string().into_bytes(), TEXT),
        Input::AfterRegister(
            "a listener-to-agent type (execute_job)".into(),
            br#"{"type":"execute_job","payload":{"jobId":"x","command":"/bin/true"}}"#.to_vec(),
            TEXT,
        ),
    ];
    for s in injections() {
        let mut rep = cc_e2e::ws::report("x", None);
        rep["payload"]["jobId"] = json!(s);
        bad.push(Input::AfterRegister(
            format!("report with jobId {:?}", trunc(&s)),
            rep.to_string().into_bytes(),
            TEXT,
        ));
    }
    bad
}

/// The whole table, in the order it is played: first frames, lies, then
/// messages after register.
fn inputs(hostile: &str) -> Vec<Input> {
    let mut all = first_frames();
    all.extend(lies());
    all.extend(after_register(hostile));
    all
}

fn send(s: &mut TcpStream, op: u8, b: &[u8]) {
    let _ = s.write_all(&rawws::frame(op, b, true, None));
}

/// A hostile peer of the listener's `/agent`: a key bound to no host
/// (`spare`), and one bound to `hostile`, whose connection after register
/// is kept from one input to the next.
struct Peer<'a> {
    r: &'a Rig,
    addr: SocketAddr,
    spare: String,
    hostile: &'a str,
    hkey: String,
    /// Probes sent so far (their report ids are `probe-N`).
    probe: usize,
    /// The connection messages after register go to, and how many such
    /// messages have been sent so far (on it and the ones before it).
    conn: Option<(TcpStream, usize)>,
    /// Reports stored for `hostile` so far: only the probes'.
    probes_stored: usize,
}

impl<'a> Peer<'a> {
    fn new(r: &'a Rig, hostile: &'a str) -> Self {
        let spare = r.listener.add_key("rel-hostile-unbound");
        let hkey = r.listener.add_key(hostile);
        Peer {
            r,
            addr: r.listener.agent_addr,
            spare,
            hostile,
            hkey,
            probe: 0,
            conn: None,
            probes_stored: 0,
        }
    }

    /// A connection of `hostile`'s, registered.
    fn open(&self) -> TcpStream {
        let mut s = rawws::connect(self.addr, &self.hkey).unwrap();
        send(
            &mut s,
            TEXT,
            cc_e2e::ws::register(self.hostile).to_string().as_bytes(),
        );
        s
    }

    /// Sends a valid report on `s`: true if it is acknowledged (the
    /// connection goes on), false if the connection closes first.
    fn acked(&mut self, s: &mut TcpStream) -> bool {
        self.probe += 1;
        let rid = format!("probe-{}", self.probe);
        send(
            s,
            TEXT,
            cc_e2e::ws::report("rel-probe", Some(&rid))
                .to_string()
                .as_bytes(),
        );
        loop {
            match rawws::read_frame(s) {
                Some((TEXT, p)) if String::from_utf8_lossy(&p).contains(&rid) => return true,
                Some((rawws::CLOSE, _)) | None => return false,
                Some(_) => {}
            }
        }
    }

    /// The listener's drop lines for `hostile`.
    fn drop_lines(&self, l: &ListenerProcess) -> Vec<String> {
        let host_field = format!("hostname={} ", self.hostile);
        l.log()
            .lines()
            .filter(|x| x.contains("invalid message dropped: ") && x.contains(&host_field))
            .map(str::to_owned)
            .collect()
    }

    /// The job ids of the reports stored for `hostile`.
    fn stored_for_host(&self, l: &ListenerProcess) -> Vec<String> {
        l.get(&format!(
            "/api/v1/reports?hostname={}&limit=1000",
            self.hostile
        ))
        .json()
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| x["jobId"].as_str().unwrap_or("?").to_owned())
                .collect()
        })
        .unwrap_or_default()
    }

    /// Plays one input and records its row.
    fn play(&mut self, input: Input) {
        match input {
            Input::First(what, bytes) => {
                let mut s = rawws::connect(self.addr, &self.spare).unwrap();
                s.write_all(&rawws::frame(TEXT, &bytes, true, None))
                    .unwrap();
                let code = rawws::until_close(&mut s);
                self.r.rec.row(
                    "listener /agent",
                    &format!("first frame: {what}"),
                    "close 1008",
                    &format!("close {code:?}"),
                    code == Some(1008),
                );
            }
            Input::Lie(what, bytes, want) => {
                let mut s = rawws::connect(self.addr, &self.hkey).unwrap();
                s.write_all(&rawws::frame(
                    TEXT,
                    cc_e2e::ws::register(self.hostile).to_string().as_bytes(),
                    true,
                    None,
                ))
                .unwrap();
                let _ = s.write_all(&bytes);
                let code = rawws::until_close(&mut s);
                self.r.rec.row(
                    "listener /agent",
                    what,
                    &format!("close {want}"),
                    &format!("close {code:?}"),
                    code == Some(want),
                );
            }
            Input::AfterRegister(what, bytes, op) => self.dropped(&what, &bytes, op),
        }
    }

    /// After register: each bad message is dropped and the connection goes
    /// on (a valid report right after it is acknowledged). A fresh
    /// connection every 8 messages keeps under the 16-error limit.
    /// "Dropped and logged", from outside: the listener's log gains one
    /// drop line for this host per bad message (written before the probe
    /// that follows is read), and the host's stored reports are the
    /// probes' only (an invalid report that got stored would show here).
    fn dropped(&mut self, what: &str, bytes: &[u8], op: u8) {
        let l = &self.r.listener;
        let (mut s, sent) = match self.conn.take() {
            None => {
                self.probes_stored = self.stored_for_host(l).len();
                (self.open(), 0)
            }
            Some((_, sent)) if sent % 8 == 0 => (self.open(), sent),
            Some(c) => c,
        };
        let logged_before = self.drop_lines(l).len();
        send(&mut s, op, bytes);
        let ok = self.acked(&mut s);
        self.conn = Some((s, sent + 1));
        let logged = self.drop_lines(l);
        let new_lines = &logged[logged_before.min(logged.len())..];
        let stored = self.stored_for_host(l);
        // Only the probe's report is new, and every stored one is a probe.
        let nothing_stored =
            stored.len() == self.probes_stored + 1 && stored.iter().all(|j| j == "rel-probe");
        self.probes_stored = stored.len();
        let line = new_lines.first().map_or("none".into(), |l| drop_reason(l));
        self.r.rec.row(
            "listener /agent",
            &format!("after register: {what}"),
            "dropped and logged; the connection goes on",
            &if ok {
                format!(
                    "the next report acknowledged; {} drop line(s) logged ({line:?}); stored for it: {}",
                    new_lines.len(),
                    if nothing_stored { "nothing" } else { "a report" }
                )
            } else {
                "connection closed".into()
            },
            ok && new_lines.len() == 1 && nothing_stored,
        );
    }
}

/// Injection strings as data in a valid report, sent on the connection
/// the last messages went to: stored and returned byte for byte, never
/// interpreted.
fn injections_as_data(peer: &mut Peer<'_>) {
    let r = peer.r;
    let nasty = injections()[..10].join(" | ");
    // A command line holds no control character (the agent renders it from
    // a validated one; a report whose command does is refused).
    let nasty_command: String = injections()[..10]
        .iter()
        .filter(|s| !s.chars().any(char::is_control))
        .cloned()
        .collect::<Vec<_>>()
        .join(" | ");
    let mut rep = cc_e2e::ws::report("rel-nasty", Some("nasty-1"));
    rep["payload"]["stdout"] = json!(nasty);
    rep["payload"]["command"] = json!(nasty_command);
    let (s, _) = peer
        .conn
        .as_mut()
        .expect("the table has messages after register");
    send(s, TEXT, rep.to_string().as_bytes());
    let stored = poll(T, || {
        let rs = r
            .listener
            .get("/api/v1/reports?jobId=rel-nasty&limit=1")
            .json();
        rs.as_array().and_then(|a| a.first().cloned())
    });
    r.rec.row(
        "listener /agent",
        "a valid report whose stdout holds NUL, CR/LF, escapes, SQL, shell, HTML, format strings (its command the same but the control characters)",
        "stored as data; the API returns it byte for byte",
        &format!(
            "returned identical: {}",
            stored
                .as_ref()
                .is_some_and(|x| x["report"]["stdout"] == nasty.as_str())
        ),
        stored.is_some_and(|x| {
            x["report"]["stdout"] == nasty.as_str()
                && x["report"]["command"] == nasty_command.as_str()
        }),
    );
}

/// The 16th invalid message on one connection closes it.
fn error_limit(peer: &mut Peer<'_>) {
    let mut t = peer.open();
    for _ in 0..15 {
        send(&mut t, TEXT, b"not json");
    }
    let open_after_15 = peer.acked(&mut t);
    send(&mut t, TEXT, b"not json");
    let code = rawws::until_close(&mut t);
    peer.r.rec.row(
        "listener /agent",
        "16 invalid messages on one connection",
        "the first 15 are dropped; the 16th closes with 1008",
        &format!("open after 15: {open_after_15}; then close {code:?}"),
        open_after_15 && code == Some(1008),
    );
}

#[test]
fn hostile_input_to_the_listener_websocket() {
    let Some(mut r) = rig("hostile input", "hostile_1_listener_websocket", "") else {
        return;
    };
    // A real agent connected throughout: it must not notice.
    let good = "rel-bystander.test";
    let bystander = r.agent(good, "");
    r.rec.watch_log(r.listener.log_path());
    r.rec.watch_log(bystander.dir.join("agent.log"));
    let hostile = "rel-hostile.test";
    let mut peer = Peer::new(&r, hostile);
    for input in inputs(hostile) {
        peer.play(input);
    }
    injections_as_data(&mut peer);
    error_limit(&mut peer);
    // The hostile connection stays open while the rest is checked.
    let _hostile = peer.conn.take();
    drop(peer);
    // Everyone else unaffected.
    let up = alive(&mut r.listener.child);
    let id = r.post(
        good,
        &json!({"command": "/bin/echo", "args": ["still here"]}),
    );
    let done = r.settle(std::slice::from_ref(&id), T) == 1;
    let connects = bystander.log().matches("connected and registered").count();
    r.rec.row(
        "listener /agent",
        "after the whole corpus",
        "listener up; the bystander agent never disconnected and still runs jobs",
        &format!("listener up: {up}; bystander connected {connects} time(s); its job done: {done}"),
        up && done && connects == 1,
    );
}
