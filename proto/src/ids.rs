//! Validated identifiers: job ids, hostnames, tags and timeouts.
//!
//! Each type is built once at the edge (`parse`) and taken by the rest of the
//! code, so nothing downstream re-checks a string that came from a peer.

use std::fmt;
use std::time::Duration;

use thiserror::Error;

/// Why a piece of text was refused. Every message names the field.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TextError {
    #[error("{field} is empty")]
    Empty { field: &'static str },
    #[error("{field} is {len} bytes long; at most {max} allowed")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field} contains a control character ({ch:?}) at byte {at}")]
    Control {
        field: &'static str,
        ch: char,
        at: usize,
    },
    #[error("{field} contains {ch:?} at byte {at}; allowed: {allowed}")]
    BadChar {
        field: &'static str,
        ch: char,
        at: usize,
        allowed: &'static str,
    },
    #[error("{field} may not start with {ch:?}")]
    BadStart { field: &'static str, ch: char },
    #[error("{field} has {count} entries; at most {max} allowed")]
    TooMany {
        field: &'static str,
        count: usize,
        max: usize,
    },
    #[error("{field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
}

/// Refuses empty text, text over `max` bytes and any control character
/// (CR, LF, NUL, TAB, DEL and the C1 range included).
pub(crate) fn check_text(field: &'static str, s: &str, max: usize) -> Result<(), TextError> {
    if s.is_empty() {
        return Err(TextError::Empty { field });
    }
    if s.len() > max {
        return Err(TextError::TooLong {
            field,
            len: s.len(),
            max,
        });
    }
    check_no_control(field, s)
}

pub(crate) fn check_no_control(field: &'static str, s: &str) -> Result<(), TextError> {
    match s.char_indices().find(|(_, c)| c.is_control()) {
        Some((at, ch)) => Err(TextError::Control { field, ch, at }),
        None => Ok(()),
    }
}

fn check_chars(
    field: &'static str,
    s: &str,
    allowed: &'static str,
    ok: impl Fn(char) -> bool,
) -> Result<(), TextError> {
    match s.char_indices().find(|&(_, c)| !ok(c)) {
        Some((at, ch)) => Err(TextError::BadChar {
            field,
            ch,
            at,
            allowed,
        }),
        None => Ok(()),
    }
}

/// Identifier of a job: an ad-hoc job's id or a cron entry's id.
///
/// It becomes a file name in state directories and an argument on a cron
/// line, so it is restricted to `[A-Za-z0-9_.-]`, may not start with `-` or
/// `.` (no option look-alikes, no `.`/`..`), and is at most 128 bytes. UUIDs
/// fit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(String);

impl JobId {
    pub const MAX_LEN: usize = 128;
    const FIELD: &'static str = "job id";

    pub fn parse(s: &str) -> Result<Self, TextError> {
        check_text(Self::FIELD, s, Self::MAX_LEN)?;
        check_chars(Self::FIELD, s, "A-Z a-z 0-9 _ . -", |c| {
            c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
        })?;
        if let Some(ch @ ('-' | '.')) = s.chars().next() {
            return Err(TextError::BadStart {
                field: Self::FIELD,
                ch,
            });
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A host's name as it registers: RFC 1123 labels (letters, digits, `-`,
/// and `_` which real fleets use), separated by dots, at most 253 bytes,
/// each label 1 to 63 bytes and not starting or ending with `-`.
///
/// Host names are case-insensitive (RFC 4343): the parsed value is the
/// canonical lowercase form, so `WEB1` and `web1` are one host everywhere
/// a `Hostname` is compared or stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hostname(String);

impl Hostname {
    pub const MAX_LEN: usize = 253;
    const FIELD: &'static str = "hostname";

    pub fn parse(s: &str) -> Result<Self, TextError> {
        check_text(Self::FIELD, s, Self::MAX_LEN)?;
        check_chars(Self::FIELD, s, "A-Z a-z 0-9 _ - and dots", |c| {
            c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
        })?;
        for label in s.split('.') {
            if label.is_empty() {
                return Err(TextError::Invalid {
                    field: Self::FIELD,
                    reason: "has an empty label (leading, trailing or doubled dot)",
                });
            }
            if label.len() > 63 {
                return Err(TextError::Invalid {
                    field: Self::FIELD,
                    reason: "has a label longer than 63 bytes",
                });
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(TextError::Invalid {
                    field: Self::FIELD,
                    reason: "has a label that starts or ends with '-'",
                });
            }
        }
        Ok(Self(s.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An operator-chosen label of an agent: `[A-Za-z0-9_.:=/-]`, 1 to 64 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    pub const MAX_LEN: usize = 64;
    /// How many tags one agent may carry.
    pub const MAX_COUNT: usize = 32;
    const FIELD: &'static str = "tag";

    pub fn parse(s: &str) -> Result<Self, TextError> {
        check_text(Self::FIELD, s, Self::MAX_LEN)?;
        check_chars(Self::FIELD, s, "A-Z a-z 0-9 _ . : = / -", |c| {
            c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '=' | '/' | '-')
        })?;
        Ok(Self(s.to_owned()))
    }

    pub fn parse_all<S: AsRef<str>>(tags: &[S]) -> Result<Vec<Self>, TextError> {
        if tags.len() > Self::MAX_COUNT {
            return Err(TextError::TooMany {
                field: "tags",
                count: tags.len(),
                max: Self::MAX_COUNT,
            });
        }
        tags.iter().map(|t| Self::parse(t.as_ref())).collect()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How long a job may run: 1 second to 7 days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timeout(u64);

impl Timeout {
    pub const MAX_SECS: u64 = 7 * 24 * 3600;
    /// Used when a request leaves the timeout out.
    pub const DEFAULT: Timeout = Timeout(3600);

    pub fn from_secs(secs: u64) -> Result<Self, TextError> {
        match secs {
            0 => Err(TextError::Invalid {
                field: "timeout",
                reason: "must be at least 1 second",
            }),
            s if s > Self::MAX_SECS => Err(TextError::Invalid {
                field: "timeout",
                reason: "must be at most 604800 seconds (7 days)",
            }),
            s => Ok(Self(s)),
        }
    }

    pub fn secs(self) -> u64 {
        self.0
    }

    pub fn duration(self) -> Duration {
        Duration::from_secs(self.0)
    }
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    )*};
}
display_as_str!(JobId, Hostname, Tag);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_accept_uuids_and_spec_examples() {
        for ok in [
            "uuid-123",
            "job-uuid-1",
            "uuid-1234-5678",
            "6f1c2c1e-9a51-4c57-8d2f-0a3b1f9e2c11",
            "nightly_backup.v2",
            "a",
        ] {
            assert!(JobId::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn job_ids_refuse_what_could_break_a_file_name_or_argv() {
        let cases: &[(&str, &str)] = &[
            ("", "job id is empty"),
            (
                "a\nb",
                "job id contains a control character ('\\n') at byte 1",
            ),
            (
                "a\rb",
                "job id contains a control character ('\\r') at byte 1",
            ),
            (
                "a\0b",
                "job id contains a control character ('\\0') at byte 1",
            ),
            (
                "a b",
                "job id contains ' ' at byte 1; allowed: A-Z a-z 0-9 _ . -",
            ),
            (
                "../etc",
                "job id contains '/' at byte 2; allowed: A-Z a-z 0-9 _ . -",
            ),
            ("-rf", "job id may not start with '-'"),
            ("..", "job id may not start with '.'"),
            (
                "a%b",
                "job id contains '%' at byte 1; allowed: A-Z a-z 0-9 _ . -",
            ),
        ];
        for (input, msg) in cases {
            assert_eq!(
                JobId::parse(input).unwrap_err().to_string(),
                *msg,
                "{input:?}"
            );
        }
        let long = "a".repeat(129);
        assert_eq!(
            JobId::parse(&long).unwrap_err().to_string(),
            "job id is 129 bytes long; at most 128 allowed"
        );
    }

    #[test]
    fn hostnames() {
        for ok in [
            "server-01",
            "db1.prod.example.com",
            "host_with_underscore",
            "a",
        ] {
            assert!(Hostname::parse(ok).is_ok(), "{ok}");
        }
        let cases: &[(&str, &str)] = &[
            ("", "hostname is empty"),
            (
                "a..b",
                "hostname: has an empty label (leading, trailing or doubled dot)",
            ),
            (
                ".a",
                "hostname: has an empty label (leading, trailing or doubled dot)",
            ),
            ("-a", "hostname: has a label that starts or ends with '-'"),
            (
                "a/b",
                "hostname contains '/' at byte 1; allowed: A-Z a-z 0-9 _ - and dots",
            ),
            (
                "a\u{7f}",
                "hostname contains a control character ('\\u{7f}') at byte 1",
            ),
        ];
        for (input, msg) in cases {
            assert_eq!(
                Hostname::parse(input).unwrap_err().to_string(),
                *msg,
                "{input:?}"
            );
        }
        assert!(Hostname::parse(&"a".repeat(64)).is_err());
        assert!(Hostname::parse(&"a".repeat(254)).is_err());
    }

    /// One host, one name: case variants parse to the same canonical form.
    #[test]
    fn hostnames_are_case_insensitive() {
        let canonical = Hostname::parse("web1.example.com").unwrap();
        for variant in ["WEB1.example.com", "Web1.Example.COM", "web1.EXAMPLE.com"] {
            let h = Hostname::parse(variant).unwrap();
            assert_eq!(h, canonical, "{variant}");
            assert_eq!(h.as_str(), "web1.example.com");
        }
        assert_ne!(Hostname::parse("web2").unwrap(), canonical);
    }

    #[test]
    fn tags() {
        assert!(Tag::parse_all(&["prod", "db", "role=web", "dc:eu/1"]).is_ok());
        assert_eq!(
            Tag::parse("a b").unwrap_err().to_string(),
            "tag contains ' ' at byte 1; allowed: A-Z a-z 0-9 _ . : = / -"
        );
        let many: Vec<String> = (0..33).map(|i| format!("t{i}")).collect();
        assert_eq!(
            Tag::parse_all(&many).unwrap_err().to_string(),
            "tags has 33 entries; at most 32 allowed"
        );
    }

    /// Every length limit sits exactly at its documented value: the limit
    /// itself is accepted, one more byte (or entry) is refused.
    #[test]
    fn every_length_limit_is_exact() {
        let id = "a".repeat(JobId::MAX_LEN);
        assert_eq!(JobId::MAX_LEN, 128);
        assert_eq!(JobId::parse(&id).unwrap().as_str(), id);
        assert!(JobId::parse(&format!("{id}a")).is_err());

        // 253 bytes: three 63-byte labels and a 61-byte one, dot-separated.
        let label = "a".repeat(63);
        let host = format!("{label}.{label}.{label}.{}", "b".repeat(61));
        assert_eq!(host.len(), Hostname::MAX_LEN);
        assert_eq!(Hostname::parse(&host).unwrap().as_str(), host);
        assert_eq!(
            Hostname::parse(&format!("{host}b"))
                .unwrap_err()
                .to_string(),
            "hostname is 254 bytes long; at most 253 allowed"
        );
        // A label of 63 bytes is fine, 64 is not.
        assert!(Hostname::parse(&format!("{label}.x")).is_ok());
        assert_eq!(
            Hostname::parse(&format!("{label}a.x"))
                .unwrap_err()
                .to_string(),
            "hostname: has a label longer than 63 bytes"
        );

        let tag = "t".repeat(Tag::MAX_LEN);
        assert_eq!(Tag::MAX_LEN, 64);
        assert_eq!(Tag::parse(&tag).unwrap().as_str(), tag);
        assert_eq!(
            Tag::parse(&format!("{tag}t")).unwrap_err().to_string(),
            "tag is 65 bytes long; at most 64 allowed"
        );
        let tags: Vec<String> = (0..Tag::MAX_COUNT).map(|i| format!("t{i}")).collect();
        assert_eq!(Tag::MAX_COUNT, 32);
        let parsed = Tag::parse_all(&tags).unwrap();
        let back: Vec<&str> = parsed.iter().map(Tag::as_str).collect();
        assert_eq!(back, tags);
    }

    /// What `as_str`, `Display` and `AsRef` give back is the parsed text.
    #[test]
    fn parsed_ids_give_back_their_text() {
        let id = JobId::parse("nightly_backup.v2").unwrap();
        assert_eq!(id.as_str(), "nightly_backup.v2");
        assert_eq!(id.to_string(), "nightly_backup.v2");
        assert_eq!(id.as_ref(), "nightly_backup.v2");
        let tag = Tag::parse("role=web").unwrap();
        assert_eq!(tag.as_str(), "role=web");
        assert_eq!(tag.as_ref(), "role=web");
    }

    #[test]
    fn timeouts() {
        assert_eq!(Timeout::from_secs(3600).unwrap().secs(), 3600);
        assert_eq!(
            Timeout::from_secs(0).unwrap_err().to_string(),
            "timeout: must be at least 1 second"
        );
        assert_eq!(Timeout::from_secs(1).unwrap().secs(), 1);
        // Seven days, as the spec and the message say.
        assert_eq!(Timeout::MAX_SECS, 604_800);
        assert_eq!(Timeout::from_secs(604_800).unwrap().secs(), 604_800);
        assert_eq!(
            Timeout::from_secs(604_801).unwrap_err().to_string(),
            "timeout: must be at most 604800 seconds (7 days)"
        );
        assert_eq!(
            Timeout::from_secs(90).unwrap().duration(),
            Duration::from_secs(90)
        );
        assert_eq!(Timeout::DEFAULT.duration(), Duration::from_secs(3600));
    }
}
