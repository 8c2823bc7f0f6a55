//! One event, one log line: whatever a peer put in a logged value, it
//! cannot start a line of our logs.
//!
//! `tracing`'s formatter escapes ESC and C1 in values but not a line feed,
//! so a hostname, an id or a decode error (serde's message quotes the
//! value) holding `"\n2026-… INFO …"` forged a whole line in the listener's
//! and the agent's logs. [`OneLine`] wraps the writer each event is written
//! to (the formatter writes one event in one call): every line break and
//! carriage return inside it is written as `\n` / `\r`, and only the
//! event's final line feed stays; an event past 4 KiB is cut. It opens
//! nothing; it changes bytes on their way to a writer the caller owns.

use std::borrow::Cow;
use std::io::{self, Write};
use std::time::Instant;

/// The longest event written whole; the rest of a longer one is cut and
/// counted. A peer's value reaches a log inside an error (serde's quotes
/// the value it refused): without this, one invalid message of 1 MiB made
/// a log line of 1 MiB.
pub const MAX_EVENT_BYTES: usize = 4096;

/// `event` with every `\n` but a final one, and every `\r`, `\x0b` and
/// `\x0c`, written as a two- or four-character escape, and cut after
/// [`MAX_EVENT_BYTES`] (on a character boundary) with a note of how much.
pub fn one_line(event: &[u8]) -> Cow<'_, [u8]> {
    let (body, end) = match event.split_last() {
        Some((b'\n', body)) => (body, true),
        _ => (event, false),
    };
    let long = body.len() > MAX_EVENT_BYTES;
    if !long
        && !body
            .iter()
            .any(|b| matches!(b, b'\n' | b'\r' | 0x0b | 0x0c))
    {
        return Cow::Borrowed(event);
    }
    let mut keep = body.len().min(MAX_EVENT_BYTES);
    // Not inside a UTF-8 sequence: back to its first byte.
    while keep < body.len() && keep > 0 && body[keep] & 0xc0 == 0x80 {
        keep -= 1;
    }
    let (body, cut) = body.split_at(keep);
    let mut out = Vec::with_capacity(body.len() + 64);
    for &b in body {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            0x0b => out.extend_from_slice(b"\\x0b"),
            0x0c => out.extend_from_slice(b"\\x0c"),
            _ => out.push(b),
        }
    }
    if !cut.is_empty() {
        out.extend_from_slice(format!(" … ({} bytes cut)", cut.len()).as_bytes());
    }
    if end {
        out.push(b'\n');
    }
    Cow::Owned(out)
}

/// A writer that passes each write through [`one_line`]: give the log
/// formatter `|| OneLine(std::io::stderr())`.
#[derive(Debug)]
pub struct OneLine<W>(pub W);

impl<W: Write> Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // All or nothing: a partial write would split an event, and the
        // rest would be judged as an event of its own.
        self.0.write_all(&one_line(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// A warning that a peer can trigger at will is logged at most
/// `per_window` times per window; the first line after a quiet spell says
/// how many were left out.
#[derive(Debug)]
pub struct LogBudget {
    window: std::time::Duration,
    per_window: u32,
    state: std::sync::Mutex<(Option<Instant>, u32, u64)>,
}

impl LogBudget {
    pub const fn new(window: std::time::Duration, per_window: u32) -> Self {
        Self {
            window,
            per_window,
            state: std::sync::Mutex::new((None, 0, 0)),
        }
    }

    /// `Some(n)`: log this one, and say `n` were left out before it.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut g = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (start, logged, suppressed) = &mut *g;
        if start.is_none_or(|s| now.duration_since(s) >= self.window) {
            *start = Some(now);
            *logged = 0;
        }
        if *logged < self.per_window {
            *logged += 1;
            Some(std::mem::take(suppressed))
        } else {
            *suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_value_cannot_start_a_line() {
        let forged = b"INFO hostname=\"a\n2026-12-07T00:00:00Z  INFO forged\r\x0b\x0c\"\n";
        let got = one_line(forged);
        assert_eq!(
            &*got,
            b"INFO hostname=\"a\\n2026-12-07T00:00:00Z  INFO forged\\r\\x0b\\x0c\"\n".as_slice()
        );
        assert_eq!(got.iter().filter(|&&b| b == b'\n').count(), 1);
    }

    #[test]
    fn a_clean_event_is_passed_as_it_is() {
        let clean = b"INFO connected and registered \x1b[2m(colour stays)\x1b[0m\n";
        assert!(matches!(one_line(clean), Cow::Borrowed(_)));
        assert_eq!(&*one_line(b""), b"".as_slice());
        // Without a final line feed nothing is added.
        assert_eq!(&*one_line(b"a\nb"), b"a\\nb".as_slice());
        assert_eq!(&*one_line(b"\n"), b"\n".as_slice());
        assert_eq!(&*one_line(b"\n\n"), b"\\n\n".as_slice());
    }

    #[test]
    fn a_long_event_is_cut_on_a_character_and_says_how_much() {
        let mut event = "é".repeat(3000).into_bytes(); // 6,000 bytes
        event.push(b'\n');
        let got = one_line(&event);
        let text = std::str::from_utf8(&got).expect("still UTF-8");
        assert!(text.ends_with(" … (1904 bytes cut)\n"), "{text}");
        assert_eq!(text.matches('é').count(), MAX_EVENT_BYTES / 2);
        let exact = [b'a'; MAX_EVENT_BYTES];
        assert!(matches!(one_line(&exact), Cow::Borrowed(_)));
        let odd = "x".to_owned() + &"é".repeat(3000);
        let got = one_line(odd.as_bytes());
        let text = std::str::from_utf8(&got).expect("cut between characters");
        let kept = text.split(" … (").next().unwrap();
        assert_eq!(
            kept.len(),
            MAX_EVENT_BYTES - 1,
            "back to the character's start"
        );
        // Not UTF-8 at all (a writer we do not control): no panic, a cut.
        let junk = [0x80u8; 5000];
        assert!(one_line(&junk).ends_with(b" (5000 bytes cut)"));
    }

    #[test]
    fn flushing_reaches_the_inner_writer() {
        let mut w = OneLine(std::io::BufWriter::new(Vec::new()));
        w.write_all(b"event\n").unwrap();
        assert!(w.0.get_ref().is_empty(), "buffered");
        w.flush().unwrap();
        assert_eq!(w.0.get_ref().as_slice(), b"event\n");
    }

    #[test]
    fn a_budget_spent_now_allows_nothing_more_now() {
        let b = LogBudget::new(std::time::Duration::from_secs(3600), 2);
        assert_eq!(b.allow(), Some(0));
        assert_eq!(b.allow(), Some(0));
        assert_eq!(b.allow(), None);
    }

    #[test]
    fn a_log_budget_says_what_it_left_out() {
        let b = LogBudget::new(std::time::Duration::from_secs(1), 2);
        let t0 = Instant::now();
        assert_eq!(b.allow_at(t0), Some(0));
        assert_eq!(b.allow_at(t0), Some(0));
        assert_eq!(b.allow_at(t0), None);
        assert_eq!(b.allow_at(t0), None);
        assert_eq!(b.allow_at(t0 + std::time::Duration::from_secs(1)), Some(2));
        assert_eq!(b.allow_at(t0 + std::time::Duration::from_secs(1)), Some(0));
    }

    #[test]
    fn the_writer_writes_the_whole_event_once() {
        let mut w = OneLine(Vec::new());
        assert_eq!(w.write(b"x\ny\n").unwrap(), 4);
        w.flush().unwrap();
        assert_eq!(w.0, b"x\\ny\n");
    }
}
