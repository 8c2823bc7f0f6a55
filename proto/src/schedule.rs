//! The cron schedule grammar: what Debian cron and cronie accept, parsed into
//! a structure and rendered back in one canonical form.
//!
//! Nothing of the original text reaches a cron file: the file gets
//! [`Schedule::to_string`], made only of digits, `*`, `,`, `-`, `/`, single
//! spaces and the `@` keywords below.
//!
//! Accepted: five fields (minute hour day-of-month month day-of-week)
//! separated by spaces or tabs; each a comma list of `*`, `*/STEP`, `N`,
//! `N-M`, `N-M/STEP` or `N/STEP` (cronie's form, rendered `N-MAX/STEP`);
//! month names `jan`..`dec` and day names `sun`..`sat` (any case) wherever a
//! number may stand in those two fields; day-of-week 0-7 with 0 and 7 both
//! Sunday; and the keywords `@reboot @yearly @annually @monthly @weekly
//! @daily @midnight @hourly`.
//!
//! Canonical form: names become numbers, `*/1` becomes `*`, `N/STEP` becomes
//! `N-MAX/STEP`, `@annually` becomes `@yearly` and `@midnight` `@daily`
//! (keywords are lower case only, as cron matches them),
//! leading zeros go, and fields are separated by one space. The order of
//! list items and whether a field starts with `*` are kept, because cron
//! gives `*` in day-of-month or day-of-week a meaning of its own.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// Why a schedule was refused. The message names the field and the value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ScheduleError {
    #[error("schedule is empty")]
    Empty,
    #[error("schedule is {0} bytes long; at most 256 allowed")]
    TooLong(usize),
    #[error("schedule is {0} bytes long once written in canonical form; at most 256 allowed")]
    RenderedTooLong(usize),
    #[error("schedule contains a control character ({0:?})")]
    Control(char),
    #[error(
        "schedule has {0} fields; expected 5 (minute hour day-of-month month day-of-week) or an @keyword"
    )]
    FieldCount(usize),
    #[error(
        "unknown schedule keyword {0:?}; expected one of @reboot @yearly @annually @monthly @weekly @daily @midnight @hourly"
    )]
    UnknownKeyword(String),
    #[error("schedule keyword {0} takes nothing after it")]
    KeywordExtra(String),
    #[error("{field} field {text:?}: {problem}")]
    Field {
        field: &'static str,
        text: String,
        problem: String,
    },
}

/// A validated cron schedule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Schedule {
    Keyword(Keyword),
    Fields(Box<[Field; 5]>),
}

/// The `@` schedules, by their canonical names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Keyword {
    Reboot,
    Yearly,
    Monthly,
    Weekly,
    Daily,
    Hourly,
}

/// One of the five time fields: a non-empty list of items.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Field(Vec<Item>);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Item {
    /// `*` or `*/step`.
    Any { step: Option<u8> },
    /// `n`.
    One(u8),
    /// `lo-hi` or `lo-hi/step`.
    Range { lo: u8, hi: u8, step: Option<u8> },
}

struct Kind {
    name: &'static str,
    min: u8,
    max: u8,
    names: &'static [&'static str],
    names_word: &'static str,
}

const MONTHS: &[&str] = &[
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

const KINDS: [Kind; 5] = [
    Kind {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
        names_word: "",
    },
    Kind {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
        names_word: "",
    },
    Kind {
        name: "day-of-month",
        min: 1,
        max: 31,
        names: &[],
        names_word: "",
    },
    Kind {
        name: "month",
        min: 1,
        max: 12,
        names: MONTHS,
        names_word: " or a month name",
    },
    Kind {
        name: "day-of-week",
        min: 0,
        max: 7,
        names: DAYS,
        names_word: " or a day name",
    },
];

impl Schedule {
    pub const MAX_LEN: usize = 256;

    pub fn parse(text: &str) -> Result<Self, ScheduleError> {
        if text.len() > Self::MAX_LEN {
            return Err(ScheduleError::TooLong(text.len()));
        }
        // Tabs separate fields; every other control character is refused.
        if let Some(c) = text.chars().find(|&c| c.is_control() && c != '\t') {
            return Err(ScheduleError::Control(c));
        }
        let words: Vec<&str> = text.split([' ', '\t']).filter(|w| !w.is_empty()).collect();
        match words.as_slice() {
            [] => Err(ScheduleError::Empty),
            [word] if word.starts_with('@') => parse_keyword(word).map(Schedule::Keyword),
            [word, ..] if word.starts_with('@') => {
                parse_keyword(word)?;
                Err(ScheduleError::KeywordExtra((*word).to_owned()))
            }
            [m, h, dom, mon, dow] => {
                let fields = [
                    parse_field(&KINDS[0], m)?,
                    parse_field(&KINDS[1], h)?,
                    parse_field(&KINDS[2], dom)?,
                    parse_field(&KINDS[3], mon)?,
                    parse_field(&KINDS[4], dow)?,
                ];
                let schedule = Schedule::Fields(Box::new(fields));
                // `N/STEP` grows to `N-MAX/STEP`: the canonical form must
                // stay within the limit too, or it would not parse back.
                let rendered = schedule.to_string().len();
                if rendered > Self::MAX_LEN {
                    return Err(ScheduleError::RenderedTooLong(rendered));
                }
                Ok(schedule)
            }
            _ => Err(ScheduleError::FieldCount(words.len())),
        }
    }
}

impl FromStr for Schedule {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn parse_keyword(word: &str) -> Result<Keyword, ScheduleError> {
    // Like cron, keywords are matched case-sensitively.
    Ok(match word {
        "@reboot" => Keyword::Reboot,
        "@yearly" | "@annually" => Keyword::Yearly,
        "@monthly" => Keyword::Monthly,
        "@weekly" => Keyword::Weekly,
        "@daily" | "@midnight" => Keyword::Daily,
        "@hourly" => Keyword::Hourly,
        _ => return Err(ScheduleError::UnknownKeyword(word.to_owned())),
    })
}

fn parse_field(kind: &Kind, text: &str) -> Result<Field, ScheduleError> {
    let fail = |problem: String| ScheduleError::Field {
        field: kind.name,
        text: text.to_owned(),
        problem,
    };
    let items = text
        .split(',')
        .map(|item| parse_item(kind, item).map_err(&fail))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Field(items))
}

fn parse_item(kind: &Kind, item: &str) -> Result<Item, String> {
    if item.is_empty() {
        return Err("empty list item".to_owned());
    }
    let (base, step) = match item.split_once('/') {
        Some((_, s)) if s.contains('/') => return Err(format!("{item:?} has more than one '/'")),
        Some((b, s)) => (b, Some(parse_step(kind, s)?)),
        None => (item, None),
    };
    if base == "*" {
        // `*/1` is `*`.
        return Ok(Item::Any {
            step: step.filter(|&s| s != 1),
        });
    }
    if base.starts_with('*') {
        return Err(format!("unexpected text after '*' in {item:?}"));
    }
    match base.split_once('-') {
        Some((_, hi)) if hi.contains('-') => Err(format!("{item:?} has more than one '-'")),
        Some((lo, hi)) => {
            let lo = parse_value(kind, lo)?;
            let hi = parse_value(kind, hi)?;
            if lo > hi {
                return Err(format!("range {lo}-{hi} is reversed"));
            }
            Ok(Item::Range { lo, hi, step })
        }
        None => {
            let n = parse_value(kind, base)?;
            Ok(match step {
                // cronie's `N/STEP`: from N to the end of the field.
                Some(step) => Item::Range {
                    lo: n,
                    hi: kind.max,
                    step: Some(step),
                },
                None => Item::One(n),
            })
        }
    }
}

fn parse_value(kind: &Kind, text: &str) -> Result<u8, String> {
    if text.is_empty() {
        return Err("empty value in a range".to_owned());
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return match text.parse::<u32>() {
            Ok(n) if (u32::from(kind.min)..=u32::from(kind.max)).contains(&n) => {
                // In range, so it fits in a u8.
                Ok(n as u8)
            }
            _ => Err(format!("{text} is out of range {}-{}", kind.min, kind.max)),
        };
    }
    let lower = text.to_ascii_lowercase();
    if let Some(i) = kind.names.iter().position(|&n| n == lower) {
        // Months count from 1, days from 0 (Sunday).
        return Ok(i as u8 + kind.min);
    }
    Err(format!("{text:?} is not a number{}", kind.names_word))
}

fn parse_step(kind: &Kind, text: &str) -> Result<u8, String> {
    let span = u32::from(kind.max - kind.min) + 1;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("step {text:?} is not a number"));
    }
    match text.parse::<u32>() {
        Ok(0) => Err("step must be at least 1".to_owned()),
        // At most `span`, so it fits in a u8.
        Ok(n) if n <= span => Ok(n as u8),
        _ => Err(format!(
            "step {text} is larger than the field's {span} values"
        )),
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Keyword(k) => f.write_str(match k {
                Keyword::Reboot => "@reboot",
                Keyword::Yearly => "@yearly",
                Keyword::Monthly => "@monthly",
                Keyword::Weekly => "@weekly",
                Keyword::Daily => "@daily",
                Keyword::Hourly => "@hourly",
            }),
            Schedule::Fields(fields) => {
                for (i, field) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" ")?;
                    }
                    write!(f, "{field}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, item) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match item {
                Item::Any { step: None } => f.write_str("*")?,
                Item::Any { step: Some(s) } => write!(f, "*/{s}")?,
                Item::One(n) => write!(f, "{n}")?,
                Item::Range { lo, hi, step: None } => write!(f, "{lo}-{hi}")?,
                Item::Range {
                    lo,
                    hi,
                    step: Some(s),
                } => write!(f, "{lo}-{hi}/{s}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_parses_to_itself() {
        for s in [
            "0 0 * * *",
            "*/5 1-5/2 1,15 1-12 0-7",
            "@reboot",
            "5-59/10 * * * *",
        ] {
            let once = Schedule::parse(s).unwrap().to_string();
            assert_eq!(Schedule::parse(&once).unwrap().to_string(), once);
        }
    }
}
