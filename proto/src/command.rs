//! The command a job runs: a program and its argv, never a shell line.
//!
//! `execute_job` carries `command` + `args` directly. A cron entry carries one
//! string, which is split with POSIX shell quoting rules (quotes and
//! backslashes only: no expansion, no variables, no globbing, no pipes) into
//! the same shape. The report's `command` is the reverse: every word
//! shell-quoted, so `split(quoted) == argv` and an operator can paste it back.

use crate::ids::{TextError, check_no_control, check_text};

/// A validated program and arguments.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CommandLine {
    program: String,
    args: Vec<String>,
}

impl CommandLine {
    /// Longest program name or path.
    pub const MAX_PROGRAM_LEN: usize = 4096;
    /// Most arguments a job may carry.
    pub const MAX_ARGS: usize = 1024;
    /// Total bytes of all arguments together.
    pub const MAX_ARGS_BYTES: usize = 128 * 1024;

    /// Validates a program and its arguments: no control character anywhere
    /// (CR, LF, NUL, TAB included), bounded lengths, a non-empty program.
    pub fn new(program: &str, args: &[String]) -> Result<Self, TextError> {
        check_text("command", program, Self::MAX_PROGRAM_LEN)?;
        if program.trim().is_empty() {
            return Err(TextError::Invalid {
                field: "command",
                reason: "is only white space",
            });
        }
        if args.len() > Self::MAX_ARGS {
            return Err(TextError::TooMany {
                field: "args",
                count: args.len(),
                max: Self::MAX_ARGS,
            });
        }
        let total: usize = args.iter().map(String::len).sum();
        if total > Self::MAX_ARGS_BYTES {
            return Err(TextError::TooLong {
                field: "args",
                len: total,
                max: Self::MAX_ARGS_BYTES,
            });
        }
        for arg in args {
            check_no_control("args", arg)?;
        }
        Ok(Self {
            program: program.to_owned(),
            args: args.to_vec(),
        })
    }

    /// Splits one command string (a cron entry's `command`) into words with
    /// POSIX quoting rules and validates the result like [`CommandLine::new`].
    pub fn parse_shell_words(line: &str) -> Result<Self, TextError> {
        check_text(
            "command",
            line,
            Self::MAX_PROGRAM_LEN + Self::MAX_ARGS_BYTES,
        )?;
        let words = shlex::split(line).ok_or(TextError::Invalid {
            field: "command",
            reason: "has an unterminated quote or a trailing backslash",
        })?;
        let Some((program, args)) = words.split_first() else {
            return Err(TextError::Invalid {
                field: "command",
                reason: "has no words",
            });
        };
        Self::new(program, args)
    }

    pub fn program(&self) -> &str {
        &self.program
    }

    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// The exact line executed, each word shell-quoted where needed
    /// (`backup.sh --full`, `echo 'a b'`).
    pub fn to_shell_line(&self) -> String {
        std::iter::once(self.program.as_str())
            .chain(self.args.iter().map(String::as_str))
            .map(quote_word)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A path that may stand unquoted on a cron line (the agent's and the
/// helper's own paths): absolute, made only of `A-Z a-z 0-9 / . _ - +`, so
/// no space, `%`, quote or control character can change the line.
pub fn plain_cron_path(path: &str) -> Result<&str, TextError> {
    if !path.starts_with('/') {
        return Err(TextError::Invalid {
            field: "path",
            reason: "must be absolute to stand on a cron line",
        });
    }
    match path
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || "/._-+".contains(c)))
    {
        Some((at, ch)) => Err(TextError::BadChar {
            field: "path",
            ch,
            at,
            allowed: "A-Z a-z 0-9 / . _ - + (to stand on a cron line)",
        }),
        None => Ok(path),
    }
}

/// Quotes one word for a POSIX shell: as is when it is made only of
/// characters no shell treats specially, otherwise in single quotes with
/// embedded `'` written as `'\''`.
pub fn quote_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:=@,+%".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cl(p: &str, a: &[&str]) -> CommandLine {
        let args: Vec<String> = a.iter().map(|s| (*s).to_owned()).collect();
        CommandLine::new(p, &args).unwrap()
    }

    #[test]
    fn only_plain_paths_go_on_a_cron_line() {
        assert!(plain_cron_path("/usr/bin/cc-agent").is_ok());
        for bad in ["/opt/my agent", "/x%y", "relative", "/a\nb", "/a;b", "/a'b"] {
            assert!(plain_cron_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn report_line_matches_the_spec_example() {
        assert_eq!(
            cl("backup.sh", &["--full"]).to_shell_line(),
            "backup.sh --full"
        );
    }

    #[test]
    fn words_with_specials_are_quoted_so_they_paste_back() {
        let c = cl("/bin/echo", &["a b", "it's", "", "$HOME", "x;y", "*"]);
        let line = c.to_shell_line();
        assert_eq!(line, r#"/bin/echo 'a b' 'it'\''s' '' '$HOME' 'x;y' '*'"#);
        let back = CommandLine::parse_shell_words(&line).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn cron_command_strings_split_without_a_shell() {
        let c = CommandLine::parse_shell_words("curl http://check.internal").unwrap();
        assert_eq!(c.program(), "curl");
        assert_eq!(c.args(), ["http://check.internal"]);
        let c = CommandLine::parse_shell_words(r#"/bin/sh -c "echo hi; exit 3""#).unwrap();
        assert_eq!(c.args(), ["-c", "echo hi; exit 3"]);
        // Nothing is expanded: these are literal words.
        let c = CommandLine::parse_shell_words("echo $HOME `id` *").unwrap();
        assert_eq!(c.args(), ["$HOME", "`id`", "*"]);
    }

    /// Each limit is accepted exactly at its value and refused one past it.
    #[test]
    fn limits_are_exact() {
        let program = "p".repeat(CommandLine::MAX_PROGRAM_LEN);
        assert!(CommandLine::new(&program, &[]).is_ok());
        assert_eq!(
            CommandLine::new(&format!("{program}p"), &[])
                .unwrap_err()
                .to_string(),
            "command is 4097 bytes long; at most 4096 allowed"
        );

        let many = vec!["a".to_owned(); CommandLine::MAX_ARGS];
        assert!(CommandLine::new("p", &many).is_ok());
        assert_eq!(
            CommandLine::new("p", &[many.as_slice(), &["a".to_owned()]].concat())
                .unwrap_err()
                .to_string(),
            "args has 1025 entries; at most 1024 allowed"
        );

        // 128 KiB of arguments in all, split over two words.
        assert_eq!(CommandLine::MAX_ARGS_BYTES, 131_072);
        let half = "a".repeat(CommandLine::MAX_ARGS_BYTES / 2);
        assert!(CommandLine::new("p", &[half.clone(), half.clone()]).is_ok());
        assert_eq!(
            CommandLine::new("p", &[half.clone(), format!("{half}a")])
                .unwrap_err()
                .to_string(),
            "args is 131073 bytes long; at most 131072 allowed"
        );

        // A cron line may be as long as the longest program and arguments
        // together (with the space between them), not one byte more.
        let line = format!("{program} {}", "a".repeat(CommandLine::MAX_ARGS_BYTES - 1));
        assert_eq!(line.len(), 135_168);
        let c = CommandLine::parse_shell_words(&line).unwrap();
        assert_eq!(c.program(), program);
        assert_eq!(
            CommandLine::parse_shell_words(&format!("{line}a"))
                .unwrap_err()
                .to_string(),
            "command is 135169 bytes long; at most 135168 allowed"
        );
    }

    #[test]
    fn bad_commands_are_refused_with_a_reason() {
        let cases: &[(&str, &str)] = &[
            ("", "command is empty"),
            ("   ", "command: has no words"),
            (
                "echo 'unterminated",
                "command: has an unterminated quote or a trailing backslash",
            ),
            (
                "echo hi\nrm -rf /",
                "command contains a control character ('\\n') at byte 7",
            ),
            (
                "echo\r",
                "command contains a control character ('\\r') at byte 4",
            ),
            (
                "a\0",
                "command contains a control character ('\\0') at byte 1",
            ),
        ];
        for (input, msg) in cases {
            assert_eq!(
                CommandLine::parse_shell_words(input)
                    .unwrap_err()
                    .to_string(),
                *msg,
                "{input:?}"
            );
        }
        assert_eq!(
            CommandLine::new("echo", &["a\nb".to_owned()])
                .unwrap_err()
                .to_string(),
            "args contains a control character ('\\n') at byte 1"
        );
        assert_eq!(
            CommandLine::new(" ", &[]).unwrap_err().to_string(),
            "command: is only white space"
        );
    }
}
