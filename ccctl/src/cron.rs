//! `ccctl cron`: a host's cron list read and set, from a file of
//! `ID SCHEDULE COMMAND` lines (signed for root with `--system`).

use anyhow::{Context, Result, ensure};
use cc_proto::Timestamp;
use cc_proto::sign::{self, CronStatement};
use cc_proto::wire::CronEntry;
use serde_json::json;

use crate::api::{Api, FileConfig};
use crate::cli::{Cli, CronCommand};
use crate::signing::{key_path, load_key, nonce};
use crate::term::{errln, outln};

/// The first `n` whitespace-separated words of `line` and the rest of it,
/// verbatim (a command keeps its own spacing); `None` when nothing is left.
pub(crate) fn words_then_rest(line: &str, n: usize) -> Option<(Vec<&str>, &str)> {
    let mut rest = line.trim();
    let mut words = Vec::with_capacity(n);
    for _ in 0..n {
        let end = rest.find(char::is_whitespace)?;
        words.push(&rest[..end]);
        rest = rest[end..].trim_start();
    }
    (!rest.is_empty()).then_some((words, rest))
}

/// What in a command's words a shell would have acted on, if anything:
/// redirections, pipes, lists, substitutions, variables, globs. Commands
/// are not run by a shell, so these reach the program as arguments.
pub(crate) fn shell_syntax(program: &str, args: &[String]) -> Option<String> {
    let shell = program.rsplit('/').next().unwrap_or(program);
    if matches!(shell, "sh" | "bash" | "dash" | "zsh" | "ksh") {
        return None; // a shell already: its script may hold all of it
    }
    for word in std::iter::once(program).chain(args.iter().map(String::as_str)) {
        let operator = matches!(
            word,
            ">" | ">>" | "<" | "<<" | "|" | "||" | "&&" | "&" | ";" | "2>&1"
        ) || word.starts_with('>')
            || word.starts_with("2>")
            || word.starts_with('<')
            || word.ends_with(';');
        if operator {
            return Some(word.to_owned());
        }
        for hint in ["$(", "`", "${", "*", "~/"] {
            if word.contains(hint) {
                return Some(hint.to_owned());
            }
        }
        if word.starts_with('$') {
            return Some(word.to_owned());
        }
    }
    None
}

/// `ID SCHEDULE COMMAND` lines; the schedule is five fields or one `@`
/// word; blank lines and `#` comments are skipped (the listener stores the
/// entries, not the comments). Every entry is validated as the agent will
/// (`cc-proto`), and an error names its line. With the entries, a warning
/// for each line whose command looks written for a shell.
pub(crate) fn parse_cron_file(text: &str) -> Result<(Vec<CronEntry>, Vec<String>)> {
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields = if line
            .split_whitespace()
            .nth(1)
            .is_some_and(|w| w.starts_with('@'))
        {
            1
        } else {
            5
        };
        let (words, command) = words_then_rest(line, 1 + fields)
            .with_context(|| format!("line {}: expected ID SCHEDULE COMMAND: {line:?}", n + 1))?;
        let entry = CronEntry {
            id: words[0].to_owned(),
            schedule: words[1..].join(" "),
            command: command.to_owned(),
            ..CronEntry::default()
        };
        let job = entry
            .validate()
            .with_context(|| format!("line {}: {line:?}", n + 1))?;
        if let Some(what) = shell_syntax(job.command.program(), job.command.args()) {
            warnings.push(format!(
                "line {} ({}): `{}` looks written for a shell (`{what}`), but commands are not run by a shell: `{what}` reaches the program as an argument. For a shell, wrap it: /bin/sh -c {}",
                n + 1,
                entry.id,
                entry.command,
                cc_proto::command::quote_word(&entry.command)
            ));
        }
        out.push(entry);
    }
    Ok((out, warnings))
}

/// The cron file's text: `-` is standard input.
fn read_cron_file(path: &std::path::Path) -> Result<String> {
    use std::io::Read;
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the cron list from standard input")?;
        return Ok(text);
    }
    std::fs::read_to_string(path).map_err(|e| {
        anyhow::anyhow!(
            "reading the cron file {}: {} (`-` reads standard input)",
            path.display(),
            crate::api::io_reason(&e)
        )
    })
}

/// `ccctl cron get|set`.
pub(crate) fn command(cli: &Cli, file: &FileConfig, command: &CronCommand) -> Result<bool> {
    match command {
        CronCommand::Get { host } => {
            let list = Api::new(cli, file)?.call(
                "GET",
                &format!("/agents/{host}/cron?next=true"),
                None,
            )?;
            for e in list.as_array().into_iter().flatten() {
                outln!(
                    "{} {} {}",
                    e["id"].as_str().unwrap_or(""),
                    e["schedule"].as_str().unwrap_or(""),
                    e["command"].as_str().unwrap_or("")
                );
            }
            print_next_runs(&list);
            Ok(true)
        }
        CronCommand::Set {
            host,
            file: path,
            system,
            key,
        } => {
            let text = read_cron_file(path)?;
            let (entries, warnings) = parse_cron_file(&text)?;
            for w in &warnings {
                errln!("ccctl: warning: {w}");
            }
            let body = if *system {
                for e in &entries {
                    let program = e.validate()?.command.program().to_owned();
                    ensure!(
                        program.starts_with('/'),
                        "entry {}: {program}: root entries name their program by absolute path (the signature covers the path, not a name the host looks up in PATH)",
                        e.id
                    );
                }
                let k = load_key(&key_path(key.clone(), file)?)?;
                let (not_before, expires_at) =
                    sign::window(Timestamp::now(), sign::MAX_VALIDITY_SECS);
                let st = CronStatement {
                    host: cc_proto::Hostname::parse(host)
                        .with_context(|| format!("host {host:?}"))?
                        .to_string(),
                    generation: u64::try_from(Timestamp::now().unix_millis()).unwrap_or(0),
                    entries,
                    not_before,
                    expires_at,
                    nonce: nonce()?,
                };
                json!({"signed": sign::sign(&st, sign::CRON_LABEL, &k)?})
            } else {
                serde_json::to_value(&entries)?
            };
            let stored =
                Api::new(cli, file)?.call("PUT", &format!("/agents/{host}/cron"), Some(&body))?;
            outln!(
                "{} entries stored for {host}",
                stored.as_array().map_or(0, Vec::len)
            );
            Ok(true)
        }
    }
}

/// After `cron get`'s entries: when each fires next, in the host's time
/// zone, as `#` comments (so the output still reads back with `cron set`).
fn print_next_runs(list: &serde_json::Value) {
    let entries = list.as_array().map(Vec::as_slice).unwrap_or_default();
    let Some(zone) = entries.first().and_then(|e| e["timeZone"].as_str()) else {
        return;
    };
    outln!("# next runs, in the host's time zone: {zone}");
    for e in entries {
        let at = e["nextRun"]
            .as_str()
            .unwrap_or("never on its own (@reboot)");
        match e["jitterOffset"].as_u64() {
            Some(s) => outln!(
                "#   {} {at}, then waits {s} s (jitter)",
                e["id"].as_str().unwrap_or("")
            ),
            None => outln!("#   {} {at}", e["id"].as_str().unwrap_or("")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_files_parse_line_by_line_and_errors_name_the_line() {
        let ok = parse_cron_file(
            "# backups\nnightly 0 3 * * * /usr/local/sbin/backup --full\n\nhourly @hourly /bin/true\n",
        )
        .unwrap()
        .0;
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[0].schedule, "0 3 * * *");
        assert_eq!(ok[0].command, "/usr/local/sbin/backup --full");
        assert_eq!(ok[1].schedule, "@hourly");
        let e = parse_cron_file("a @daily /bin/true\nbad 61 * * * * /bin/true\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("line 2"), "{e}");
        let e = parse_cron_file("short 0 3 *\n").unwrap_err().to_string();
        assert!(e.starts_with("line 1"), "{e}");
        let e = parse_cron_file("# c\nfive 0 3 * * *\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("line 2: expected ID SCHEDULE COMMAND"), "{e}");
        // A command keeps its own spacing; the schedule is normalised.
        let ok = parse_cron_file("  s  0  3 * * *   /bin/echo 'a  b'  \n")
            .unwrap()
            .0;
        assert_eq!(ok[0].schedule, "0 3 * * *");
        assert_eq!(ok[0].command, "/bin/echo 'a  b'");
    }

    /// A line that looks written for a shell is stored as it is, with a
    /// warning naming the line and the way to get a shell.
    #[test]
    fn shell_syntax_is_warned_about_not_refused() {
        for (command, what) in [
            ("/bin/echo hi > /tmp/out", ">"),
            ("/bin/echo hi >/tmp/out", ">/tmp/out"),
            ("/bin/sort < in", "<"),
            ("/bin/ps aux | /bin/grep x", "|"),
            ("/bin/true && /bin/false", "&&"),
            ("/bin/true ; /bin/false", ";"),
            ("/bin/echo $(date)", "$("),
            ("/bin/echo `date`", "`"),
            ("/bin/echo $HOME", "$HOME"),
            ("/bin/rm /tmp/*.log", "*"),
            ("/usr/bin/backup 2>&1", "2>&1"),
        ] {
            let (entries, warnings) =
                parse_cron_file(&format!("# c\nj @daily {command}\n")).unwrap();
            assert_eq!(entries.len(), 1, "stored as it is: {command}");
            assert_eq!(warnings.len(), 1, "{command}: {warnings:?}");
            assert!(
                warnings[0].starts_with(&format!(
                    "line 2 (j): `{command}` looks written for a shell (`{what}`)"
                )),
                "{warnings:?}"
            );
            assert!(
                warnings[0].contains("wrap it: /bin/sh -c '"),
                "{warnings:?}"
            );
        }
        for quiet in [
            "/usr/bin/backup --full",
            "/bin/sh -c '/bin/echo hi > /tmp/out'",
            "/bin/echo a-b_c.d=e",
        ] {
            let (_, warnings) = parse_cron_file(&format!("j @daily {quiet}\n")).unwrap();
            assert!(warnings.is_empty(), "{quiet}: {warnings:?}");
        }
    }
}
