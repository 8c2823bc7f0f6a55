//! A webhook receiver on 127.0.0.1 for `[[notify]]` tests: a real HTTP/1.1
//! server (one request per connection, threads), that records each
//! request's idempotency key, body and whether its `X-CC-Signature` is the
//! HMAC-SHA256 of the body under the secret it was given, and answers as
//! told ([`Mode`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// What the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 200 at once.
    Ok,
    /// 200 after half a second (senders' claims overlap).
    Slow,
    /// 500 at once.
    Fail,
    /// Reads the request and never answers.
    Hang,
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `X-CC-Idempotency-Key`.
    pub key: String,
    /// The body, parsed (`Null` if it was not JSON).
    pub event: Value,
    /// `X-CC-Signature` is `sha256=` the body's HMAC under the secret.
    pub signed: bool,
    /// The status answered (0: none, [`Mode::Hang`]).
    pub answered: u16,
}

#[derive(Debug, Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    secret: Arc<Vec<u8>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    mode: Arc<Mutex<Mode>>,
}

/// The largest request read.
const MAX_REQUEST: usize = 1 << 20;

impl Receiver {
    /// Listens on a free port of 127.0.0.1, answering [`Mode::Ok`].
    pub fn start(secret: &[u8]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let r = Self {
            addr: listener.local_addr().unwrap(),
            secret: Arc::new(secret.to_vec()),
            seen: Arc::default(),
            mode: Arc::new(Mutex::new(Mode::Ok)),
        };
        let me = r.clone();
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let me = me.clone();
                std::thread::spawn(move || me.serve(tcp));
            }
        });
        r
    }

    /// The URL to put in a `[[notify]]` block (path `/hook`, `query`
    /// appended when not empty).
    pub fn url(&self, query: &str) -> String {
        if query.is_empty() {
            format!("http://{}/hook", self.addr)
        } else {
            format!("http://{}/hook?{query}", self.addr)
        }
    }

    fn serve(&self, tcp: TcpStream) {
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
        let mut reader = BufReader::new(match tcp.try_clone() {
            Ok(t) => t,
            Err(_) => return,
        });
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" || line == "\n" => break,
                Ok(_) => headers.push(line),
            }
            if headers.len() > 100 {
                return;
            }
        }
        let header = |name: &str| {
            headers.iter().find_map(|h| {
                let (k, v) = h.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
        };
        let len: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
            .min(MAX_REQUEST);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.secret);
        let want = format!(
            "sha256={}",
            ring::hmac::sign(&key, &body)
                .as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let mode = *self.mode.lock().unwrap();
        let answered = match mode {
            Mode::Ok | Mode::Slow => 200,
            Mode::Fail => 500,
            Mode::Hang => 0,
        };
        self.seen.lock().unwrap().push(Seen {
            key: header("x-cc-idempotency-key").unwrap_or_default(),
            event: serde_json::from_slice(&body).unwrap_or(Value::Null),
            signed: header("x-cc-signature").as_deref() == Some(want.as_str()),
            answered,
        });
        match mode {
            Mode::Hang => {
                // Hold the connection open, unanswered, for longer than any
                // test lasts.
                std::thread::sleep(Duration::from_secs(3600));
                return;
            }
            Mode::Slow => std::thread::sleep(Duration::from_millis(500)),
            Mode::Ok | Mode::Fail => {}
        }
        let reason = if answered == 200 {
            "OK"
        } else {
            "Internal Server Error"
        };
        let mut tcp = tcp;
        let _ = write!(
            tcp,
            "HTTP/1.1 {answered} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    }

    pub fn set(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }

    /// Every request so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Requests answered 200.
    pub fn delivered(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.answered == 200)
            .collect()
    }

    /// Waits until `n` requests were answered 200, and returns them.
    pub fn wait_delivered(&self, n: usize, limit: Duration) -> Vec<Seen> {
        let deadline = Instant::now() + limit;
        loop {
            let d = self.delivered();
            if d.len() >= n {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} notifications delivered: {:?}",
                d.len(),
                self.seen()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `n` requests arrived, whatever was answered.
    pub fn wait_seen(&self, n: usize, limit: Duration) -> Vec<Seen> {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.seen();
            if s.len() >= n {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} requests arrived: {s:?}",
                s.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
