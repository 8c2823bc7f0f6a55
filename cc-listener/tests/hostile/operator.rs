//! The operator address under hostile clients: clients that trickle a
//! request head, hold connections open or idle, or leave a head half sent
//! at shutdown; an event stream outlives the idle timeout. Part of the
//! `hostile` suite (`hostile.rs`), which this file's tests share a binary
//! with.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cc_e2e::TempDir;
use cc_e2e::listener::{ListenerProcess, TOKEN};
use cc_e2e::sse::Stream;
use cc_e2e::ws;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::{T, bin};

/// One answer read from a kept-alive connection (its body by
/// `Content-Length`): the head.
async fn answer(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, v)| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                return head;
            }
        }
        let n = tokio::time::timeout(T, s.read(&mut chunk))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(
            n > 0,
            "closed before the answer: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads `s` until the listener closes it (end of stream or reset) or
/// `deadline` passes: what came, and whether it was closed.
async fn until_closed(s: &mut TcpStream, deadline: tokio::time::Instant) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return (got, false),
            Ok(Ok(0) | Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

fn in_(limit: Duration) -> tokio::time::Instant {
    tokio::time::Instant::now() + limit
}

/// A sample of `GET /metrics`, by its series (`name{labels}`).
fn metric(l: &ListenerProcess, series: &str) -> f64 {
    let text = l.get("/metrics").body;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

const CLOSED: &str = "croncommander_operator_connections_closed_total";
const HEALTHZ: &[u8] = b"GET /api/v1/healthz HTTP/1.1\r\nHost: x\r\n\r\n";

/// Finding 7 of #25: fifty clients that sent one header line every few
/// seconds held the operator address as long as they liked, each a
/// descriptor the agents' connections share. A head now has
/// `admin_header_timeout_ms` from the accept, however it trickles; an
/// honest operator is answered meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn trickling_operator_clients_are_closed_by_the_header_timeout() {
    const N: usize = 50;
    let dir = TempDir::new("h-trickle");
    let l = ListenerProcess::start(bin(), dir.path(), "admin_header_timeout_ms = 1000\n");
    let addr = l.admin_addr;
    let limit = Duration::from_secs(10);
    let started = Arc::new(tokio::sync::Barrier::new(N + 1));
    let clients: Vec<_> = (0..N)
        .map(|i| {
            let started = Arc::clone(&started);
            tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                let opened = Instant::now();
                s.write_all(b"GET /api/v1/healthz HTTP/1.1\r\nHost: x\r\n")
                    .await
                    .unwrap();
                started.wait().await;
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                let mut chunk = [0u8; 1024];
                let mut line = 0u64;
                loop {
                    line += 1;
                    tokio::select! {
                        r = s.read(&mut chunk) => match r {
                            Ok(0) | Err(_) => return Ok(opened.elapsed()),
                            Ok(n) => return Err(format!("client {i} was answered: {:?}", String::from_utf8_lossy(&chunk[..n]))),
                        },
                        _ = tick.tick() => {
                            if opened.elapsed() > limit {
                                return Err(format!("client {i} still connected after {limit:?}"));
                            }
                            if s.write_all(format!("X-Trickle-{line}: {i}\r\n").as_bytes()).await.is_err() {
                                return Ok(opened.elapsed());
                            }
                        }
                    }
                }
            })
        })
        .collect();
    started.wait().await;
    // An operator while the fifty trickle.
    let honest = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let r = cc_e2e::http::request(addr, "GET", "/api/v1/agents", Some(TOKEN), None);
        (r.status, t.elapsed())
    })
    .await
    .unwrap();
    let mut closed = Vec::new();
    let mut open = Vec::new();
    for c in clients {
        match c.await.unwrap() {
            Ok(after) => closed.push(after),
            Err(e) => open.push(e),
        }
    }
    closed.sort();
    eprintln!(
        "figures: {} of {N} trickling clients closed (first after {:?}, last after {:?}), {} not: {:?}; \
         an operator's GET /agents meanwhile: {} in {:?}",
        closed.len(),
        closed.first(),
        closed.last(),
        open.len(),
        open.first(),
        honest.0,
        honest.1
    );
    assert_eq!(honest.0, 200);
    assert!(
        honest.1 < Duration::from_secs(3),
        "an operator waited {:?}",
        honest.1
    );
    assert!(open.is_empty(), "{} of {N}: {open:?}", open.len());
    assert!(
        closed[0] >= Duration::from_millis(900),
        "closed after {:?}, before the header timeout (1 s)",
        closed[0]
    );
    assert_eq!(
        metric(&l, &format!("{CLOSED}{{reason=\"header_timeout\"}}")),
        N as f64
    );
    let lines = l
        .log()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("admin_header_timeout"))
        .count();
    assert!(
        (1..=2).contains(&lines),
        "{lines} warnings for {N} closes: the log is rate-limited"
    );
}

/// The operator address holds at most `admin_max_connections`: eight
/// served connections kept alive, a ninth is closed at once, unanswered.
/// Kept-alive connections that say nothing for `admin_idle_timeout_ms`
/// are closed, which lets the next one in; a client that keeps asking
/// keeps its connection.
#[tokio::test(flavor = "multi_thread")]
async fn the_operator_address_caps_connections_and_closes_idle_ones() {
    let dir = TempDir::new("h-cap");
    let idle = Duration::from_secs(3);
    let l = ListenerProcess::start(
        bin(),
        dir.path(),
        "admin_max_connections = 8\nadmin_idle_timeout_ms = 3000\n",
    );
    let addr = l.admin_addr;
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(HEALTHZ).await.unwrap();
        let head = answer(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        held.push((s, Instant::now()));
    }
    // The ninth.
    let mut ninth = TcpStream::connect(addr).await.unwrap();
    let _ = ninth.write_all(HEALTHZ).await;
    let (ninth_got, ninth_closed) = until_closed(&mut ninth, in_(Duration::from_secs(5))).await;
    // The eight were still open when the ninth was closed.
    let mut open_then = 0;
    for (s, _) in &held {
        let mut b = [0u8; 1];
        if matches!(s.try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock) {
            open_then += 1;
        }
    }
    // Then silence: each is closed after the idle timeout.
    let mut closed_after = Vec::new();
    let deadline = in_(Duration::from_secs(15));
    for (s, served) in &mut held {
        if until_closed(s, deadline).await.1 {
            closed_after.push(served.elapsed());
        }
    }
    closed_after.sort();
    eprintln!(
        "figures: the ninth connection: {} after {} bytes of answer; {open_then} of 8 held open then; \
         {} of 8 closed when idle (first after {:?}, last after {:?})",
        if ninth_closed {
            "closed"
        } else {
            "still open 5 s later"
        },
        ninth_got.len(),
        closed_after.len(),
        closed_after.first(),
        closed_after.last()
    );
    assert!(
        ninth_closed && ninth_got.is_empty(),
        "the ninth connection is closed at once, unanswered: {:?}",
        String::from_utf8_lossy(&ninth_got)
    );
    assert_eq!(open_then, 8, "the eight were still held");
    assert_eq!(closed_after.len(), 8, "every idle connection is closed");
    assert!(
        closed_after[0] >= idle - Duration::from_secs(1),
        "closed after {:?}, before the idle timeout ({idle:?})",
        closed_after[0]
    );
    // Room again: an operator is served, and one who keeps asking on a
    // kept-alive connection keeps it past the idle timeout.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let kept = Instant::now();
    while kept.elapsed() < idle + Duration::from_secs(1) {
        s.write_all(HEALTHZ).await.unwrap();
        let head = answer(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        metric(&l, &format!("{CLOSED}{{reason=\"max_connections\"}}")),
        1.0
    );
    assert_eq!(
        metric(&l, &format!("{CLOSED}{{reason=\"idle_timeout\"}}")),
        8.0
    );
}

/// An event stream is a response in flight, not an idle connection: it
/// outlives the idle timeout and still delivers.
#[tokio::test(flavor = "multi_thread")]
async fn an_event_stream_outlives_the_idle_timeout() {
    let dir = TempDir::new("h-sse");
    let l = ListenerProcess::start(
        bin(),
        dir.path(),
        "admin_idle_timeout_ms = 300\nadmin_header_timeout_ms = 300\n",
    );
    let _agent = ws::registered(&l, "sse.test").await;
    let mut stream = Stream::open(&l, "", None, Some(TOKEN));
    assert_eq!(stream.status, 200);
    // A connection opened after the stream and left idle: once it is
    // closed, the stream has been quiet for longer than the timeout (its
    // keep-alive comment comes every 15 s).
    let mut quiet = TcpStream::connect(l.admin_addr).await.unwrap();
    quiet.write_all(HEALTHZ).await.unwrap();
    answer(&mut quiet).await;
    assert!(
        until_closed(&mut quiet, in_(T)).await.1,
        "an idle connection is closed"
    );
    let r = l.post(
        "/api/v1/agents/sse.test/jobs",
        &json!({"command": "/bin/true"}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let job = r.json()["jobId"].as_str().unwrap().to_owned();
    let got = stream.until(T, |e| e.iter().any(|e| e["jobId"] == job));
    assert!(
        got.iter().any(|e| e["jobId"] == job),
        "the stream still delivers: {got:?}"
    );
}

/// A client halfway through a request head does not hold up shutdown
/// (under `axum::serve` it did, for as long as it stayed): it is closed at
/// once, while an event stream ends and the listener exits 0.
#[tokio::test(flavor = "multi_thread")]
async fn a_half_sent_head_does_not_hold_up_shutdown() {
    let dir = TempDir::new("h-stop");
    // The default header timeout (10 s): not what closes it here.
    let mut l = ListenerProcess::start(bin(), dir.path(), "");
    let mut half = TcpStream::connect(l.admin_addr).await.unwrap();
    half.write_all(b"GET /api/v1/healthz HTTP/1.1\r\nX-Half: 1\r\n")
        .await
        .unwrap();
    let stream = Stream::open(&l, "", None, Some(TOKEN));
    assert_eq!(stream.status, 200);
    // Connections are accepted in order: the half head's is before this.
    assert!(l.get("/api/v1/healthz").status == 200);
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let status = l.terminate();
        (status, l)
    })
    .await
    .unwrap()
    .0;
    let took = started.elapsed();
    eprintln!("figures: exited {status:?} {took:?} after SIGTERM");
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(
        took < Duration::from_secs(8),
        "shutdown took {took:?} with a half-sent head open"
    );
    assert!(until_closed(&mut half, in_(T)).await.1);
    drop(stream);
}
