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

/// `ID [OPTIONS] SCHEDULE COMMAND` lines; the schedule is five fields or
/// one `@` word; OPTIONS, when present, is one bracketed word
/// (`[timeout=60,jitter=300,grace=120]`, seconds; [`options_word`] prints
/// it back); blank lines and `#` comments are skipped (the listener stores
/// the entries, not the comments). Every entry is validated as the agent
/// will (`cc-proto`), and an error names its line. With the entries, a
/// warning for each line whose command looks written for a shell.
pub(crate) fn parse_cron_file(text: &str) -> Result<(Vec<CronEntry>, Vec<String>)> {
    let (lines, warnings) = parse_lines(text, 0, "ID [OPTIONS] SCHEDULE COMMAND")?;
    Ok((lines.into_iter().map(|(_, e)| e).collect(), warnings))
}

/// An entry with its leading words (its id, then a fleet file's target).
pub(crate) type Lead = (Vec<String>, CronEntry);

/// Lines of `lead` words (a fleet file's TARGET), then `ID`, an optional
/// `[OPTIONS]` word, a schedule and a command: each entry with its lead
/// words (the first is its id, then the `lead` ones).
pub(crate) fn parse_lines(
    text: &str,
    lead: usize,
    shape: &str,
) -> Result<(Vec<Lead>, Vec<String>)> {
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || format!("line {}: expected {shape}: {line:?}", n + 1);
        let mut words = line.split_whitespace();
        let mut skip = 1 + lead;
        let has_options = words.nth(skip).is_some_and(|w| w.starts_with('['));
        if has_options {
            skip += 1;
        }
        let fields = if line
            .split_whitespace()
            .nth(skip)
            .is_some_and(|w| w.starts_with('@'))
        {
            1
        } else {
            5
        };
        let (words, command) = words_then_rest(line, skip + fields).with_context(bad)?;
        let mut entry = CronEntry {
            id: words[0].to_owned(),
            schedule: words[skip..].join(" "),
            command: command.to_owned(),
            ..CronEntry::default()
        };
        if has_options {
            parse_options(words[skip - 1], &mut entry)
                .with_context(|| format!("line {}: {line:?}", n + 1))?;
        }
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
        let lead_words = words[..=lead].iter().map(|w| (*w).to_owned()).collect();
        out.push((lead_words, entry));
    }
    Ok((out, warnings))
}

/// `[timeout=60,jitter=300,grace=120]` (any of them, seconds) into `entry`.
pub(crate) fn parse_options(word: &str, entry: &mut CronEntry) -> Result<()> {
    let inner = word
        .strip_prefix('[')
        .and_then(|w| w.strip_suffix(']'))
        .with_context(|| format!("options {word:?}: expected [timeout=S,jitter=S,grace=S]"))?;
    for kv in inner.split(',') {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("option {kv:?}: expected NAME=SECONDS"))?;
        let secs: u64 = v
            .parse()
            .with_context(|| format!("option {k}: {v:?} is not a number of seconds"))?;
        let slot = match k {
            "timeout" => &mut entry.timeout,
            "jitter" => &mut entry.jitter,
            "grace" => &mut entry.grace,
            _ => anyhow::bail!("option {k:?}: the options are timeout, jitter and grace"),
        };
        ensure!(slot.is_none(), "option {k} given twice");
        *slot = Some(secs);
    }
    Ok(())
}

/// An entry's options as the word [`parse_options`] reads, or `None`
/// when it has none.
pub(crate) fn options_word(e: &serde_json::Value) -> Option<String> {
    let opts: Vec<String> = ["timeout", "jitter", "grace"]
        .iter()
        .filter_map(|k| e[*k].as_u64().map(|v| format!("{k}={v}")))
        .collect();
    (!opts.is_empty()).then(|| format!("[{}]", opts.join(",")))
}

/// The cron file's text: `-` is standard input.
pub(crate) fn read_cron_file(path: &std::path::Path) -> Result<String> {
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
                let opts = options_word(e).map(|o| format!("{o} ")).unwrap_or_default();
                outln!(
                    "{} {opts}{} {}",
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
        fleet => crate::fleet::command(cli, file, fleet),
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
        assert!(
            e.starts_with("line 2: expected ID [OPTIONS] SCHEDULE COMMAND"),
            "{e}"
        );
        // A command keeps its own spacing; the schedule is normalised.
        let ok = parse_cron_file("  s  0  3 * * *   /bin/echo 'a  b'  \n")
            .unwrap()
            .0;
        assert_eq!(ok[0].schedule, "0 3 * * *");
        assert_eq!(ok[0].command, "/bin/echo 'a  b'");
    }

    /// Options are one bracketed word after the id, printed back the
    /// same way by `cron get`.
    #[test]
    fn options_parse_and_print_back() {
        let (e, _) = parse_cron_file(
            "b [timeout=60,jitter=300] 0 3 * * * /usr/bin/backup\nc [grace=5] @hourly /bin/true\n",
        )
        .unwrap();
        assert_eq!(
            (e[0].timeout, e[0].jitter, e[0].grace),
            (Some(60), Some(300), None)
        );
        assert_eq!(e[0].schedule, "0 3 * * *");
        assert_eq!(e[1].grace, Some(5));
        assert_eq!(e[1].schedule, "@hourly");
        let v = serde_json::to_value(&e[0]).unwrap();
        assert_eq!(options_word(&v).as_deref(), Some("[timeout=60,jitter=300]"));
        assert_eq!(options_word(&serde_json::json!({"id": "x"})), None);
        for bad in [
            "b [timeout=x] @daily /bin/true",
            "b [nice=3] @daily /bin/true",
            "b [jitter=1,jitter=2] @daily /bin/true",
            "b [jitter=86401] @daily /bin/true",
            "b [timeout=60 @daily /bin/true",
        ] {
            assert!(parse_cron_file(bad).is_err(), "{bad}");
        }
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
