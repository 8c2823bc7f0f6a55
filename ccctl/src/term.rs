//! The print boundary: everything ccctl writes passes through here.
//!
//! Almost all of it is the listener's text, and much of that the agents'
//! (hostnames, tags, warnings, statuses, commands, cron entries, key names,
//! error bodies). A terminal obeys a control character instead of showing
//! it: a report's warning of `ESC[2J ESC[H …ALL HOSTS OK… ESC]0;pwned BEL`
//! cleared the operator's screen, wrote a line of its own and retitled the
//! window (issue #25, finding 5). So:
//!
//! - a line goes out with [`outln!`] (stdout) or [`errln!`] (stderr), and
//!   the whole formatted line passes [`clean`]: every field in it is
//!   escaped without each call site having to remember which came from
//!   where, and the line break ccctl adds is the only one;
//! - JSON goes out with [`json`], the same JSON to a program;
//! - the one raw write is [`verbatim`]: a report's stdout and stderr under
//!   `ccctl job`, which the operator asked for as the job wrote it.
//!
//! `print!`, `println!`, `eprint!` and `eprintln!` are refused by clippy in
//! this crate (`ccctl/clippy.toml`); only this module uses them.
#![allow(clippy::disallowed_macros)]

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::Serialize;

/// Whether `c` acts on a terminal instead of showing: C0 (ESC, BEL, CR,
/// LF, TAB, NUL…), DEL, C1 (U+0080–U+009F: some terminals take U+009B as
/// CSI and U+009D as OSC), and the bidirectional embeddings, overrides
/// and isolates (U+202A–U+202E, U+2066–U+2069), which reorder the text
/// after them so that a line reads other than it is.
pub(crate) fn acts_on_a_terminal(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with each character that [acts on a terminal] written as its
/// Rust escape (`\u{1b}`, `\n`, `\r`, `\t`, `\u{9b}`, `\u{202e}`), and
/// everything else — any script, emoji, punctuation — as it is. Cleaning
/// clean text changes nothing.
///
/// [acts on a terminal]: acts_on_a_terminal
pub(crate) fn clean(text: &str) -> Cow<'_, str> {
    if !text.chars().any(acts_on_a_terminal) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if acts_on_a_terminal(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A line on stdout, [cleaned](clean).
pub(crate) fn out_line(line: &str) {
    println!("{}", clean(line));
}

/// A line on stderr, [cleaned](clean).
pub(crate) fn err_line(line: &str) {
    eprintln!("{}", clean(line));
}

/// `println!` for ccctl: the formatted line goes out [cleaned](clean).
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::term::out_line(&format!($($arg)*))
    };
}

/// `eprintln!` for ccctl: the formatted line goes out [cleaned](clean).
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::term::err_line(&format!($($arg)*))
    };
}

pub(crate) use {errln, outln};

/// `value` as pretty JSON, as [`json`] writes it.
///
/// serde_json escapes C0, `"` and `\` inside strings, but leaves DEL, C1
/// and the bidi controls raw; those become `\uXXXX` here too (each is one
/// character of the Basic Multilingual Plane, so one escape). Outside
/// strings JSON has only ASCII, so the only raw control left is the line
/// break between values. A program reading it gets the same value.
pub(crate) fn json_text(value: &impl Serialize) -> serde_json::Result<String> {
    let text = serde_json::to_string_pretty(value)?;
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c != '\n' && acts_on_a_terminal(c) {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// `value` as pretty JSON on stdout ([`json_text`]).
pub(crate) fn json(value: &impl Serialize) -> serde_json::Result<()> {
    println!("{}", json_text(value)?);
    Ok(())
}

/// A job's output as it wrote it, ending with a line break: `ccctl job`
/// shows a report's stdout and stderr verbatim because the operator asked
/// for exactly that (colours, progress bars and all). The only raw write.
pub(crate) fn verbatim(output: &str) {
    print!("{output}");
    if !output.ends_with('\n') {
        println!();
    }
}

/// The progress line on a terminal's stderr: over the last one (CR),
/// [cleaned](clean).
pub(crate) fn progress(line: &str) {
    eprint!("\r{}   ", clean(line));
}

/// Ends the progress line.
pub(crate) fn progress_done() {
    eprintln!();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each kind of character that acts on a terminal is escaped, in the
    /// style of Rust's `escape_default`; text is left alone.
    #[test]
    fn control_characters_are_escaped_and_text_is_not() {
        for (raw, shown) in [
            (
                "\u{1b}[2J\u{1b}[H…ALL HOSTS OK…\u{1b}]0;pwned\u{7}",
                "\\u{1b}[2J\\u{1b}[H…ALL HOSTS OK…\\u{1b}]0;pwned\\u{7}",
            ),
            ("a\rb\nc\td\0e", "a\\rb\\nc\\td\\u{0}e"),
            ("del\u{7f}", "del\\u{7f}"),
            (
                "c1 \u{80} \u{85} \u{9b}31m \u{9d}0;x \u{9f}",
                "c1 \\u{80} \\u{85} \\u{9b}31m \\u{9d}0;x \\u{9f}",
            ),
            (
                "\u{202a}\u{202b}\u{202c}\u{202d}\u{202e}\u{2066}\u{2067}\u{2068}\u{2069}",
                "\\u{202a}\\u{202b}\\u{202c}\\u{202d}\\u{202e}\\u{2066}\\u{2067}\\u{2068}\\u{2069}",
            ),
        ] {
            assert_eq!(clean(raw), shown, "{raw:?}");
            assert!(!clean(raw).chars().any(acts_on_a_terminal));
            assert_eq!(clean(shown), shown, "cleaning clean text changes nothing");
        }
        for text in [
            "web1.example.com",
            "über-host — 日本語 ✓ 🚀 \"quoted\" \\backslash 'single'",
            "עברית ومرحبا",
            "\u{a0}\u{a9}\u{200d}\u{2028}",
            "",
        ] {
            assert!(matches!(clean(text), Cow::Borrowed(_)), "{text:?}");
        }
    }

    /// JSON for the terminal holds no raw control character but its line
    /// breaks, and reads back as the same value.
    #[test]
    fn json_for_the_terminal_is_the_same_json() {
        let v = serde_json::json!({
            "warning": "\u{1b}[2J\u{7}\r\n\t\u{7f}\u{85}\u{9b}31m\u{202e}\u{2066}",
            "text": "über 日本語 \"q\" \\",
            "list": [1, "\u{9d}0;x"]
        });
        let text = json_text(&v).unwrap();
        assert!(
            !text.chars().any(|c| c != '\n' && acts_on_a_terminal(c)),
            "{text:?}"
        );
        assert!(
            text.contains("\\u007f\\u0085\\u009b31m\\u202e\\u2066"),
            "{text}"
        );
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, v);
    }
}
