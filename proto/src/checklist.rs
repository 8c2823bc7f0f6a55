//! The lines of a `check` command (`cc-agent check`, `cc-listener check`):
//! `ok: WHAT`, or `FAIL: WHAT — WHAT TO DO`, with the rest of a message of
//! several lines (a TOML error and its caret) indented below, so the first
//! line still says what to do. Written to whatever the caller gives (its
//! standard output), as each check ends.

use std::io::Write;

/// The checks said so far, and how many failed.
#[derive(Debug)]
pub struct Checklist<W: Write> {
    out: W,
    failed: usize,
}

impl<W: Write> Checklist<W> {
    pub fn new(out: W) -> Self {
        Self { out, failed: 0 }
    }

    /// A check that passed.
    pub fn ok(&mut self, what: &str) {
        // A closed standard output has nobody left to tell.
        let _ = writeln!(self.out, "ok: {what}");
    }

    /// A check that failed, and what to do about it.
    pub fn fail(&mut self, what: &str, todo: &str) {
        self.failed += 1;
        let mut lines = what.lines();
        let _ = writeln!(self.out, "FAIL: {} — {todo}", lines.next().unwrap_or(""));
        for line in lines {
            let _ = writeln!(self.out, "    {line}");
        }
    }

    /// How many checks failed so far.
    pub fn failed(&self) -> usize {
        self.failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_say_ok_or_fail_with_what_to_do_and_count_failures() {
        let mut out = Vec::new();
        let mut c = Checklist::new(&mut out);
        c.ok("config valid");
        assert_eq!(c.failed(), 0);
        c.fail("config broken\n  |\n1 | x\n  | ^", "fix the line shown");
        c.fail("key file missing", "create it");
        assert_eq!(c.failed(), 2);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ok: config valid\nFAIL: config broken — fix the line shown\n      |\n    1 | x\n      | ^\nFAIL: key file missing — create it\n"
        );
    }

    #[test]
    fn an_empty_message_still_fails_with_what_to_do() {
        let mut out = Vec::new();
        let mut c = Checklist::new(&mut out);
        c.fail("", "say more");
        assert_eq!(c.failed(), 1);
        assert_eq!(String::from_utf8(out).unwrap(), "FAIL:  — say more\n");
    }
}
