//! WebSocket by hand, over a blocking `TcpStream`, for hostile-input tests:
//! frames a library would refuse to build (invalid UTF-8 in a text frame, a
//! declared length far over any cap), both as a client (to the listener)
//! and as a server (a hostile listener for the real agent).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;

/// A frame's bytes: FIN set, `opcode`, `payload`, masked when `mask` (a
/// client must mask), with `declared` as the length field when given (a lie
/// about the size).
pub fn frame(opcode: u8, payload: &[u8], mask: bool, declared: Option<u64>) -> Vec<u8> {
    let len = declared.unwrap_or(payload.len() as u64);
    let mut out = vec![0x80 | opcode];
    let m = if mask { 0x80 } else { 0 };
    if len < 126 {
        out.push(m | len as u8);
    } else if len <= u64::from(u16::MAX) {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    let key = [0x12, 0x34, 0x56, 0x78];
    if mask {
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// One received frame: opcode and (unmasked) payload. None on EOF/error.
pub fn read_frame(s: &mut impl Read) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).ok()?;
    let masked = h[1] & 0x80 != 0;
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).ok()?;
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).ok()?;
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    if len > 16 << 20 {
        return None;
    }
    let mut key = [0u8; 4];
    if masked {
        s.read_exact(&mut key).ok()?;
    }
    let mut payload = vec![0u8; usize::try_from(len).ok()?];
    s.read_exact(&mut payload).ok()?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    Some((h[0] & 0x0f, payload))
}

/// The close code in a close frame's payload.
pub fn close_code(payload: &[u8]) -> Option<u16> {
    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))
}

/// Client side: connects to `ws://addr/agent` with `key`; Err is the HTTP
/// status line of a refused upgrade.
pub fn connect(addr: SocketAddr, key: &str) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /agent HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         X-CC-API-KEY: {key}\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let head = read_head(&mut s)?;
    if head.starts_with("HTTP/1.1 101") {
        Ok(s)
    } else {
        Err(head.lines().next().unwrap_or("").to_owned())
    }
}

/// Reads an HTTP head byte by byte (so no frame bytes are consumed).
fn read_head(s: &mut TcpStream) -> Result<String, String> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            Ok(_) => return Err("connection closed during the handshake".into()),
            Err(e) => return Err(e.to_string()),
        }
        if head.len() > 16 * 1024 {
            return Err("handshake too long".into());
        }
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// Reads frames until a close (its code, 1005 when none) or EOF (None),
/// answering nothing.
pub fn until_close(s: &mut TcpStream) -> Option<u16> {
    while let Some((op, p)) = read_frame(s) {
        if op == CLOSE {
            return Some(close_code(&p).unwrap_or(1005));
        }
    }
    None
}

/// Server side: a hostile listener on loopback for the real agent.
#[derive(Debug)]
pub struct RawServer {
    listener: TcpListener,
}

impl RawServer {
    pub fn bind() -> Self {
        Self {
            listener: TcpListener::bind("127.0.0.1:0").unwrap(),
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/agent", self.listener.local_addr().unwrap())
    }

    /// Accepts the next connection, completes the upgrade and returns the
    /// stream with the agent's first text frame (its `register`).
    pub fn accept(&self, limit: Duration) -> (TcpStream, String) {
        self.listener.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + limit;
        let mut s = loop {
            match self.listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the agent did not connect within {limit:?}"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let head = read_head(&mut s).expect("the agent's upgrade request");
        let key = BufReader::new(head.as_bytes())
            .lines()
            .map_while(Result::ok)
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("sec-websocket-key")
                    .then(|| v.trim().to_owned())
            })
            .expect("Sec-WebSocket-Key");
        write!(
            s,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            derive_accept_key(key.as_bytes())
        )
        .unwrap();
        let register = next_text(&mut s).expect("the agent's register");
        (s, register)
    }
}

/// The next text frame from a (masked) client, skipping pings, pongs and
/// heartbeats; None when the connection ends.
pub fn next_text(s: &mut TcpStream) -> Option<String> {
    loop {
        let (op, p) = read_frame(s)?;
        match op {
            TEXT => {
                let t = String::from_utf8_lossy(&p).into_owned();
                if !t.contains(r#""type":"heartbeat""#) {
                    return Some(t);
                }
            }
            CLOSE => return None,
            _ => {}
        }
    }
}

/// The next text frame that is JSON and satisfies `want`, skipping the
/// rest; None when the connection ends first.
pub fn next_json(
    s: &mut TcpStream,
    want: impl Fn(&serde_json::Value) -> bool,
) -> Option<serde_json::Value> {
    loop {
        let t = next_text(s)?;
        if let Ok(v) = serde_json::from_str(&t) {
            if want(&v) {
                return Some(v);
            }
        }
    }
}
