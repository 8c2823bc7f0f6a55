//! The agent's side of the helper socket: one request, one response.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use cc_proto::frame::{self, HEADER_LEN, MAX_FRAME_LEN};
use cc_proto::helper::{self, HelperRequest, HelperResponse};

pub(crate) fn call(socket: &Path, req: &HelperRequest) -> Result<HelperResponse> {
    let mut s = UnixStream::connect(socket)
        .with_context(|| format!("the root helper is not reachable at {}", socket.display()))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    // No read timeout: an exec answers when the job ends (its own timeout).
    let body = helper::encode(req)?;
    s.write_all(&frame::encode_frame(&body, MAX_FRAME_LEN)?)?;
    let mut header = [0u8; HEADER_LEN];
    s.read_exact(&mut header)
        .context("the root helper closed the connection without answering")?;
    let len = frame::parse_header(header, MAX_FRAME_LEN)?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok(helper::decode_strict(&body)?)
}
