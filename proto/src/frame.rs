//! Length-prefixed frames for the agent↔helper Unix socket, sans I/O.
//!
//! A frame is a 4-byte big-endian body length followed by the body. The
//! declared length is checked against the maximum *before* anything is
//! allocated for the body, so a peer cannot make the reader reserve memory
//! by lying about the length. The caller does the reading and feeds bytes
//! in; [`FrameDecoder::wanted`] says how many to read next so a blocking
//! reader never reads past one frame.

use thiserror::Error;

/// Largest body on the helper link: a report with two full streams (JSON
/// escaping can grow them) or a large cron list.
pub const MAX_FRAME_LEN: usize = 4 * 1024 * 1024;

pub const HEADER_LEN: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("frame declares {declared} bytes; at most {max} allowed")]
    TooLarge { declared: usize, max: usize },
    #[error("frame is empty")]
    Empty,
    #[error("frame decoder already failed")]
    Poisoned,
}

/// Prefixes `body` with its length.
pub fn encode_frame(body: &[u8], max: usize) -> Result<Vec<u8>, FrameError> {
    if body.is_empty() {
        return Err(FrameError::Empty);
    }
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&l| l as usize <= max)
        .ok_or(FrameError::TooLarge {
            declared: body.len(),
            max,
        })?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

/// Checks a header and returns the body length it declares.
pub fn parse_header(header: [u8; HEADER_LEN], max: usize) -> Result<usize, FrameError> {
    let declared = u32::from_be_bytes(header) as usize;
    if declared == 0 {
        return Err(FrameError::Empty);
    }
    if declared > max {
        return Err(FrameError::TooLarge { declared, max });
    }
    Ok(declared)
}

/// Incremental decoder: feed it bytes, get whole bodies out.
#[derive(Debug)]
pub struct FrameDecoder {
    max: usize,
    header: [u8; HEADER_LEN],
    header_len: usize,
    /// `Some` once a valid header was read; the body grows up to its length.
    body: Option<(usize, Vec<u8>)>,
    failed: bool,
}

impl FrameDecoder {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            header: [0; HEADER_LEN],
            header_len: 0,
            body: None,
            failed: false,
        }
    }

    /// Bytes needed to finish the current header or body.
    pub fn wanted(&self) -> usize {
        match &self.body {
            Some((len, body)) => len - body.len(),
            None => HEADER_LEN - self.header_len,
        }
    }

    /// Consumes bytes from `input` up to the end of at most one frame.
    /// Returns how many bytes were consumed and the body if it completed.
    /// After an error the decoder stays failed: close the connection.
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, Option<Vec<u8>>), FrameError> {
        if self.failed {
            return Err(FrameError::Poisoned);
        }
        let mut used = 0;
        if self.body.is_none() {
            let n = input.len().min(HEADER_LEN - self.header_len);
            self.header[self.header_len..self.header_len + n].copy_from_slice(&input[..n]);
            self.header_len += n;
            used += n;
            if self.header_len < HEADER_LEN {
                return Ok((used, None));
            }
            match parse_header(self.header, self.max) {
                // Checked against `max` above; only now is memory reserved.
                Ok(len) => self.body = Some((len, Vec::with_capacity(len))),
                Err(e) => {
                    self.failed = true;
                    return Err(e);
                }
            }
        }
        let Some((len, body)) = &mut self.body else {
            return Ok((used, None));
        };
        let n = (input.len() - used).min(*len - body.len());
        body.extend_from_slice(&input[used..used + n]);
        used += n;
        if body.len() < *len {
            return Ok((used, None));
        }
        let done = std::mem::take(body);
        self.body = None;
        self.header_len = 0;
        Ok((used, Some(done)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_in_odd_chunks() {
        let mut wire = encode_frame(b"hello", 100).unwrap();
        wire.extend(encode_frame(b"second frame", 100).unwrap());
        for chunk in 1..wire.len() {
            let mut dec = FrameDecoder::new(100);
            let mut frames = Vec::new();
            let mut rest: &[u8] = &wire;
            while !rest.is_empty() {
                let take = chunk.min(rest.len());
                let mut piece = &rest[..take];
                while !piece.is_empty() {
                    let (used, frame) = dec.feed(piece).unwrap();
                    // Progress on every call: a decoder that takes nothing
                    // would spin its reader for ever.
                    assert!(used > 0, "feed took nothing of {} bytes", piece.len());
                    piece = &piece[used..];
                    frames.extend(frame);
                }
                rest = &rest[take..];
            }
            assert_eq!(
                frames,
                [b"hello".to_vec(), b"second frame".to_vec()],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn refuses_oversized_and_empty_and_stays_failed() {
        let mut dec = FrameDecoder::new(16);
        assert_eq!(
            dec.feed(&17u32.to_be_bytes()),
            Err(FrameError::TooLarge {
                declared: 17,
                max: 16
            })
        );
        assert_eq!(dec.feed(b"x"), Err(FrameError::Poisoned));
        let mut dec = FrameDecoder::new(16);
        assert_eq!(dec.feed(&[0, 0, 0, 0]), Err(FrameError::Empty));
        assert_eq!(
            encode_frame(&[1; 17], 16),
            Err(FrameError::TooLarge {
                declared: 17,
                max: 16
            })
        );
    }

    #[test]
    fn wanted_never_asks_past_one_frame() {
        let mut dec = FrameDecoder::new(100);
        assert_eq!(dec.wanted(), 4);
        dec.feed(&[0, 0]).unwrap();
        assert_eq!(dec.wanted(), 2);
        dec.feed(&[0, 5]).unwrap();
        assert_eq!(dec.wanted(), 5);
        dec.feed(b"abc").unwrap();
        assert_eq!(dec.wanted(), 2);
        let (_, frame) = dec.feed(b"de").unwrap();
        assert_eq!(frame.as_deref(), Some(&b"abcde"[..]));
        assert_eq!(dec.wanted(), 4);
    }
}
