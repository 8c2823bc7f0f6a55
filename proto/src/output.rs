//! The bounded output collector every executor shares.
//!
//! A job's stdout or stderr is fed in chunks as it is read, so the child
//! never blocks on a full pipe. The collector keeps the first half of its cap
//! and a ring of the most recent half, in fixed buffers allocated once; the
//! rest is counted and dropped. [`OutputCollector::finish`] turns what was
//! kept into valid UTF-8 (lossy) of at most `cap` bytes, cut on character
//! boundaries, with a marker saying how many bytes were left out between the
//! head and the tail. Errors tend to be at the end, so the tail is kept.

/// The report's cap per stream: 256 KiB.
pub const MAX_STREAM_BYTES: usize = 262_144;

/// Room kept for the marker line; it is never longer.
const MARKER_ROOM: usize = 64;

fn marker(dropped: u64) -> String {
    format!("\n[croncommander: {dropped} bytes dropped here]\n")
}

#[derive(Debug)]
pub struct OutputCollector {
    cap: usize,
    head: Vec<u8>,
    head_cap: usize,
    /// Ring of the newest bytes after the head, `tail_cap` long once full.
    tail: Vec<u8>,
    tail_cap: usize,
    /// Where the next byte goes in `tail` once it is full.
    tail_pos: usize,
    total: u64,
}

/// What a stream produced, ready for a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedOutput {
    /// Valid UTF-8, at most the collector's cap in bytes.
    pub text: String,
    /// Bytes the stream produced in all.
    pub total_bytes: u64,
    /// Bytes of the stream that `text` does not show.
    pub dropped_bytes: u64,
}

impl Default for OutputCollector {
    fn default() -> Self {
        Self::new(MAX_STREAM_BYTES)
    }
}

impl OutputCollector {
    /// A collector that keeps at most `cap` bytes (at least 2 × the marker's
    /// room; smaller caps are raised to that).
    pub fn new(cap: usize) -> Self {
        let cap = cap.max(4 * MARKER_ROOM);
        let head_cap = cap / 2;
        let tail_cap = cap - head_cap;
        Self {
            cap,
            head: Vec::with_capacity(head_cap),
            head_cap,
            tail: Vec::with_capacity(tail_cap),
            tail_cap,
            tail_pos: 0,
            total: 0,
        }
    }

    /// Takes the next chunk of the stream. Never allocates after `new`.
    pub fn push(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        if self.head.len() < self.head_cap {
            let n = data.len().min(self.head_cap - self.head.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        if data.is_empty() {
            return;
        }
        // Fill the ring up to its size, then overwrite the oldest bytes.
        if self.tail.len() < self.tail_cap {
            let n = data.len().min(self.tail_cap - self.tail.len());
            self.tail.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        if data.len() >= self.tail_cap {
            data = &data[data.len() - self.tail_cap..];
        }
        while !data.is_empty() {
            let n = data.len().min(self.tail_cap - self.tail_pos);
            self.tail[self.tail_pos..self.tail_pos + n].copy_from_slice(&data[..n]);
            self.tail_pos = (self.tail_pos + n) % self.tail_cap;
            data = &data[n..];
        }
    }

    /// Bytes seen so far.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    pub fn finish(self) -> CapturedOutput {
        let mut tail = self.tail;
        tail.rotate_left(self.tail_pos);
        let kept_raw = (self.head.len() + tail.len()) as u64;
        if kept_raw == self.total {
            // Nothing dropped yet; the whole stream fits unless lossy
            // decoding grows it (each invalid byte becomes 3 bytes).
            let mut all = self.head;
            all.extend_from_slice(&tail);
            let text = String::from_utf8_lossy(&all);
            if text.len() <= self.cap {
                return CapturedOutput {
                    text: text.into_owned(),
                    total_bytes: self.total,
                    dropped_bytes: 0,
                };
            }
            let half = all.len() / 2;
            return cut(self.cap, &all[..half], &all[half..], self.total);
        }
        cut(self.cap, &self.head, &tail, self.total)
    }
}

/// Builds `head … marker … tail` within `cap` bytes.
fn cut(cap: usize, head: &[u8], tail: &[u8], total: u64) -> CapturedOutput {
    let budget = cap - MARKER_ROOM;
    let (head_text, head_used) = lossy_prefix(head, budget / 2);
    let (tail_text, tail_used) = lossy_suffix(tail, budget - budget / 2);
    let dropped = total - (head_used + tail_used) as u64;
    let mut text = head_text;
    text.push_str(&marker(dropped));
    text.push_str(&tail_text);
    debug_assert!(text.len() <= cap);
    CapturedOutput {
        text,
        total_bytes: total,
        dropped_bytes: dropped,
    }
}

/// The longest prefix of `bytes` whose lossy decoding fits in `budget`
/// bytes, never splitting a character; returns the text and the raw bytes
/// it stands for.
fn lossy_prefix(bytes: &[u8], budget: usize) -> (String, usize) {
    let mut out = String::with_capacity(budget.min(bytes.len()));
    let mut used = 0;
    for chunk in bytes.utf8_chunks() {
        let valid = chunk.valid();
        if out.len() + valid.len() > budget {
            let mut end = budget - out.len();
            while !valid.is_char_boundary(end) {
                end -= 1;
            }
            out.push_str(&valid[..end]);
            used += end;
            return (out, used);
        }
        out.push_str(valid);
        used += valid.len();
        if !chunk.invalid().is_empty() {
            if out.len() + char::REPLACEMENT_CHARACTER.len_utf8() > budget {
                return (out, used);
            }
            out.push(char::REPLACEMENT_CHARACTER);
            used += chunk.invalid().len();
        }
    }
    (out, used)
}

/// The longest suffix of `bytes` whose lossy decoding fits in `budget`
/// bytes, starting on a character boundary.
fn lossy_suffix(bytes: &[u8], budget: usize) -> (String, usize) {
    let mut start = bytes.len().saturating_sub(budget);
    loop {
        // Do not start inside a multi-byte character: skip continuation
        // bytes (at most three).
        let mut s = start;
        while s < bytes.len() && s < start + 3 && (bytes[s] & 0b1100_0000) == 0b1000_0000 {
            s += 1;
        }
        let text = String::from_utf8_lossy(&bytes[s..]);
        if text.len() <= budget {
            return (text.into_owned(), bytes.len() - s);
        }
        // Invalid bytes grew the text; move on by at least the excess.
        start = (s + (text.len() - budget).max(1)).min(bytes.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(cap: usize, chunks: &[&[u8]]) -> CapturedOutput {
        let mut c = OutputCollector::new(cap);
        for ch in chunks {
            c.push(ch);
        }
        c.finish()
    }

    #[test]
    fn small_output_is_kept_whole() {
        let out = collect(1024, &[b"hello ", b"world\n"]);
        assert_eq!(out.text, "hello world\n");
        assert_eq!(out.dropped_bytes, 0);
        assert_eq!(out.total_bytes, 12);
    }

    #[test]
    fn exactly_the_cap_is_kept_whole() {
        let data = vec![b'x'; 1024];
        let out = collect(1024, &[&data]);
        assert_eq!(out.text.len(), 1024);
        assert_eq!(out.dropped_bytes, 0);
    }

    #[test]
    fn large_output_keeps_head_and_tail_and_counts_the_rest() {
        let mut c = OutputCollector::new(1024);
        c.push(b"FIRST-LINE\n");
        for _ in 0..10_000 {
            c.push(b"0123456789abcdef");
        }
        c.push(b"\nLAST-LINE: error here\n");
        let out = c.finish();
        assert!(out.text.len() <= 1024, "{}", out.text.len());
        assert!(out.text.starts_with("FIRST-LINE\n"));
        assert!(out.text.ends_with("LAST-LINE: error here\n"));
        assert_eq!(out.total_bytes, 11 + 160_000 + 23);
        let shown = out.text.len() - marker(out.dropped_bytes).len();
        assert_eq!(out.dropped_bytes, out.total_bytes - shown as u64);
        assert!(out.text.contains(&format!(
            "[croncommander: {} bytes dropped here]",
            out.dropped_bytes
        )));
    }

    #[test]
    fn cuts_never_split_a_character() {
        // 'é' is two bytes; with an odd budget a naive cut would split it.
        let data = "é".repeat(5000);
        for cap in [257, 300, 301, 1023, 1024] {
            let out = collect(cap, &[data.as_bytes()]);
            assert!(out.text.len() <= cap);
            assert!(!out.text.contains(char::REPLACEMENT_CHARACTER), "cap {cap}");
        }
    }

    #[test]
    fn invalid_utf8_that_grows_when_decoded_still_fits() {
        // 1000 bytes of 0xff are 3000 bytes once each becomes U+FFFD.
        let data = vec![0xffu8; 1000];
        let out = collect(1024, &[&data]);
        assert!(out.text.len() <= 1024, "{}", out.text.len());
        assert!(out.dropped_bytes > 0);
        let shown_chars = out.text.chars().filter(|&c| c == '\u{fffd}').count() as u64;
        assert_eq!(out.dropped_bytes, 1000 - shown_chars);
    }

    #[test]
    fn byte_by_byte_and_one_chunk_agree() {
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        let whole = collect(4096, &[&data]);
        let mut c = OutputCollector::new(4096);
        for b in &data {
            c.push(std::slice::from_ref(b));
        }
        assert_eq!(c.finish(), whole);
    }
}
