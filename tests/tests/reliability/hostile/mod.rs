//! Hostile input to every edge a peer can reach: the listener's
//! WebSocket ([`websocket`]), the operator API ([`api`]), the agent from a
//! hostile listener ([`agent`]) and the root helper's socket ([`helper`]).
//! Each is a table of inputs, each with its documented outcome, played by
//! one loop that records a row per input; then the checks that need more
//! than one input (a valid report holding every injection, the error
//! limit, the crontab's structure) and that everyone else was unaffected.
//! Every row also checks that no watched log gained a forged line
//! ([`Record::watch_log`](cc_e2e::reliability::Record::watch_log)).

mod agent;
mod api;
mod helper;
mod websocket;

/// Strings that have broken other programs, for every field.
pub(crate) fn injections() -> Vec<String> {
    vec![
        "a\u{0}b".into(),
        "line\nbreak".into(),
        "cr\rhere".into(),
        "\u{1b}[31mred\u{1b}[0m".into(),
        "../../etc/passwd".into(),
        "'; DROP TABLE reports;--".into(),
        "$(reboot)`id`".into(),
        "<script>alert(1)</script>".into(),
        "%s%n%x".into(),
        "\u{202e}evil".into(),
        "x".repeat(70_000),
        cc_e2e::reliability::forged_line(),
    ]
}

/// The reason a log line gives after "…dropped: ", without the fields
/// that follow it (` hostname=…`), shortened for the table.
pub(crate) fn drop_reason(line: &str) -> String {
    let reason = line.split_once("dropped: ").map_or(line, |(_, r)| r);
    let reason = reason.split(" hostname=").next().unwrap_or(reason);
    trunc(reason)
}

/// `s` as it goes in a table cell: long strings cut to their first 60
/// characters and their length.
pub(crate) fn trunc(s: &str) -> String {
    if s.chars().count() > 80 {
        let head: String = s.chars().take(60).collect();
        format!("{head}… ({} bytes)", s.len())
    } else {
        s.to_owned()
    }
}
