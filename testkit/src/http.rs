//! A minimal blocking HTTP/1.1 client for the operator API (one request per
//! connection), enough for tests and without a client stack to trust.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> Response {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n"));
    let typed = body.map(|b| ("application/json", b));
    exchange(addr, method, path, auth.as_deref().unwrap_or(""), typed)
}

/// One console request (a form body, a session cookie or none): the whole
/// answer, head and body, as the listener sent it.
pub fn console(
    addr: SocketAddr,
    method: &str,
    path: &str,
    form: &str,
    cookie: Option<&str>,
) -> String {
    let cookie = cookie.map(|c| format!("Cookie: {c}\r\n"));
    let mut stream = TcpStream::connect(addr).expect("connecting to the console");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        cookie.as_deref().unwrap_or(""),
        form.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(form.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    String::from_utf8_lossy(&raw).into_owned()
}

/// Logs in to the console with `token` (the login form): the session's
/// cookie, `name=value`.
pub fn console_login(addr: SocketAddr, token: &str) -> String {
    let answer = console(addr, "POST", "/ui/login", &format!("token={token}"), None);
    answer
        .lines()
        .find(|h| h.to_ascii_lowercase().starts_with("set-cookie:"))
        .and_then(|h| h.split_once(':'))
        .and_then(|(_, v)| v.trim().split(';').next())
        .unwrap_or_else(|| panic!("no session from /ui/login: {answer}"))
        .to_owned()
}

/// A console page as the operator holding `token` sees it: logged in,
/// then `path` fetched with the session's cookie.
pub fn console_page(addr: SocketAddr, token: &str, path: &str) -> Response {
    let cookie = console_login(addr, token);
    exchange(addr, "GET", path, &format!("Cookie: {cookie}\r\n"), None)
}

/// One request with `headers` (whole lines) and a body of a content type.
fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: Option<(&str, &[u8])>,
) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connecting to the API");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}");
    let body = body.map(|(ty, b)| {
        head.push_str(&format!(
            "Content-Type: {ty}\r\nContent-Length: {}\r\n",
            b.len()
        ));
        b
    });
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    if let Some(b) = body {
        // The server may answer (413) and close before reading it all.
        let _ = stream.write_all(b);
    }
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect::<Vec<_>>();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Response {
        status,
        headers,
        body,
    }
}

/// The body of a `Transfer-Encoding: chunked` answer, its chunks joined
/// (up to the last chunk, or the first that is cut short).
pub fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
