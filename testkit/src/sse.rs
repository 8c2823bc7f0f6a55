//! A client of the listener's live event stream (`GET /api/v1/events`,
//! Server-Sent Events) for the suites: opened with or without a token and a
//! `Last-Event-ID`, read event by event until a condition or a deadline.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::listener::ListenerProcess;

/// An open event stream.
#[derive(Debug)]
pub struct Stream {
    reader: BufReader<TcpStream>,
    pub status: u16,
    pub content_type: String,
}

impl Stream {
    pub fn open(l: &ListenerProcess, query: &str, last: Option<i64>, token: Option<&str>) -> Self {
        let mut s = TcpStream::connect(l.admin_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut head = format!("GET /api/v1/events{query} HTTP/1.1\r\nHost: x\r\n");
        if let Some(t) = token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if let Some(id) = last {
            head.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).unwrap();
        let mut reader = BufReader::new(s);
        let mut status = 0;
        let mut content_type = String::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) if Instant::now() < deadline => continue,
                Err(e) => panic!("no answer: {e}"),
            }
            let line = line.trim_end();
            if status == 0 {
                status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
            } else if line.is_empty() {
                break;
            } else if let Some((_, v)) = line
                .split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            {
                v.trim().clone_into(&mut content_type);
            }
        }
        Self {
            reader,
            status,
            content_type,
        }
    }

    /// Events (their JSON data) until `stop` says so or `limit` passes.
    /// The body is chunked: chunk-size lines are skipped as noise (they
    /// never start with a field name).
    pub fn until(&mut self, limit: Duration, mut stop: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        let mut got = Vec::new();
        let mut id: Option<i64> = None;
        while Instant::now() < deadline && !stop(&got) {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) => continue,
            }
            let line = line.trim_end();
            if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.parse().unwrap());
            } else if let Some(data) = line.strip_prefix("data: ") {
                let v: Value = serde_json::from_str(data).unwrap();
                assert_eq!(
                    Some(v["id"].as_i64().unwrap()),
                    id,
                    "the SSE id is the event's"
                );
                got.push(v);
            }
        }
        got
    }
}
