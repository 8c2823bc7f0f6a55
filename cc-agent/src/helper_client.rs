//! The agent's side of the helper socket: one request, one response.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cc_proto::frame::{self, FrameDecoder, MAX_FRAME_LEN};
use cc_proto::helper::{self, HelperRequest, HelperResponse, RefusalCode};

/// How long a request is retried while the helper answers `busy`.
const BUSY_PATIENCE: Duration = Duration::from_secs(30);

pub(crate) fn call(socket: &Path, req: &HelperRequest) -> Result<HelperResponse> {
    let until = Instant::now() + BUSY_PATIENCE;
    let mut wait = Duration::from_millis(50);
    loop {
        match once(socket, req)? {
            HelperResponse::Refused(r) if r.code == RefusalCode::Busy && Instant::now() < until => {
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            answer => return Ok(answer),
        }
    }
}

fn once(socket: &Path, req: &HelperRequest) -> Result<HelperResponse> {
    let mut s = UnixStream::connect(socket)
        .with_context(|| format!("the root helper is not reachable at {}", socket.display()))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    // No read timeout: an exec answers when the job ends (its own timeout).
    let body = helper::encode(req)?;
    s.write_all(&frame::encode_frame(&body, MAX_FRAME_LEN)?)?;
    let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
    let mut buf = [0u8; 16 * 1024];
    loop {
        let want = decoder.wanted().clamp(1, buf.len());
        let n = s
            .read(&mut buf[..want])
            .context("reading the root helper's answer")?;
        if n == 0 {
            bail!("the root helper closed the connection without answering");
        }
        if let (_, Some(body)) = decoder.feed(&buf[..n])? {
            return Ok(helper::decode_strict(&body)?);
        }
    }
}
