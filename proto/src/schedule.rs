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
    #[error(
        "schedule {0:?} never fires: no month it names has a day it names (February has 29 days at most; April, June, September and November 30); with `*` for day-of-month or a day-of-week it would"
    )]
    NeverFires(String),
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
                if never_fires(&fields) {
                    return Err(ScheduleError::NeverFires(words.join(" ")));
                }
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

/// Whether no date matches: day-of-week is `*` (so cron takes
/// day-of-month alone) and no month named has a day named
/// (`0 0 31 2 *`, `0 0 30 2 *`, `0 0 31 4,6,9,11 *`). Cron accepts these
/// and never runs them; an operator would wait for a run that never comes.
fn never_fires(fields: &[Field; 5]) -> bool {
    let [_, _, dom, month, dow] = fields;
    if dom.is_star() || !dow.is_star() {
        return false;
    }
    // The most days each month has (February in a leap year).
    const DAYS_IN: [u8; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    !(1..=12u8).any(|m| {
        month.matches(m, 1) && (1..=DAYS_IN[usize::from(m - 1)]).any(|d| dom.matches(d, 1))
    })
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

impl Item {
    /// Whether `v` is one of the item's values; `min` is the field's first
    /// value (a `*/step` counts from it).
    fn matches(self, v: u8, min: u8) -> bool {
        match self {
            Item::Any { step } => step.is_none_or(|s| (v - min) % s == 0),
            Item::One(n) => v == n,
            Item::Range { lo, hi, step } => {
                (lo..=hi).contains(&v) && step.is_none_or(|s| (v - lo) % s == 0)
            }
        }
    }
}

impl Field {
    fn matches(&self, v: u8, min: u8) -> bool {
        self.0.iter().any(|i| i.matches(v, min))
    }

    /// Starts with `*` (so `*/2` too): cron then takes the other day field
    /// alone.
    fn is_star(&self) -> bool {
        matches!(self.0.first(), Some(Item::Any { .. }))
    }
}

impl Schedule {
    /// The first minute after `after` (to the minute, in the time zone of
    /// `after`'s clock, as cron reads the local time) at which the
    /// schedule fires; `None` for `@reboot`, or for a date that never comes
    /// within 5 years (a schedule that never fires is refused by
    /// [`Schedule::parse`]).
    pub fn next_after<Tz: chrono::TimeZone>(
        &self,
        after: chrono::DateTime<Tz>,
    ) -> Option<chrono::DateTime<Tz>> {
        use chrono::{Datelike, Duration, Timelike};
        let fields = match self {
            Schedule::Fields(f) => (**f).clone(),
            Schedule::Keyword(k) => {
                let text = match k {
                    Keyword::Reboot => return None,
                    Keyword::Yearly => "0 0 1 1 *",
                    Keyword::Monthly => "0 0 1 * *",
                    Keyword::Weekly => "0 0 * * 0",
                    Keyword::Daily => "0 0 * * *",
                    Keyword::Hourly => "0 * * * *",
                };
                match Schedule::parse(text) {
                    Ok(Schedule::Fields(f)) => *f,
                    _ => return None,
                }
            }
        };
        let [minute, hour, dom, month, dow] = &fields;
        let tz = after.timezone();
        let start = after.naive_local().with_second(0)?.with_nanosecond(0)? + Duration::minutes(1);
        let day_ok = |d: chrono::NaiveDate| {
            let (dm, dw) = (d.day() as u8, d.weekday().num_days_from_sunday() as u8);
            let by_dom = dom.matches(dm, 1);
            // Day-of-week 7 is Sunday too.
            let by_dow = dow.matches(dw, 0) || (dw == 0 && dow.matches(7, 0));
            month.matches(d.month() as u8, 1)
                && match (dom.is_star(), dow.is_star()) {
                    (true, true) => true,
                    (false, true) => by_dom,
                    (true, false) => by_dow,
                    (false, false) => by_dom || by_dow,
                }
        };
        let mut date = start.date();
        for day in 0..(5 * 366) {
            if day_ok(date) {
                let (h0, m0) = if day == 0 {
                    (start.hour() as u8, start.minute() as u8)
                } else {
                    (0, 0)
                };
                for h in h0..24 {
                    if !hour.matches(h, 0) {
                        continue;
                    }
                    let from = if h == h0 { m0 } else { 0 };
                    if let Some(m) = (from..60).find(|&m| minute.matches(m, 0)) {
                        let naive = date.and_hms_opt(u32::from(h), u32::from(m), 0)?;
                        // A local time skipped by a clock change: the next
                        // minute that exists.
                        if let Some(t) = tz.from_local_datetime(&naive).earliest() {
                            return Some(t);
                        }
                    }
                }
            }
            date = date.succ_opt()?;
        }
        None
    }
}

#[cfg(test)]
mod next_tests {
    use super::*;
    use chrono::Utc;

    fn next(schedule: &str, after: &str) -> Option<String> {
        let after = chrono::DateTime::parse_from_rfc3339(after)
            .unwrap()
            .with_timezone(&Utc);
        Schedule::parse(schedule)
            .unwrap()
            .next_after(after)
            .map(|t| t.format("%Y-%m-%d %H:%M %a").to_string())
    }

    #[test]
    fn next_runs_follow_cron_rules() {
        let at = "2026-11-30T17:45:30Z"; // a Monday
        assert_eq!(next("* * * * *", at).unwrap(), "2026-11-30 17:46 Mon");
        assert_eq!(next("*/15 * * * *", at).unwrap(), "2026-11-30 18:00 Mon");
        assert_eq!(next("50 17 * * *", at).unwrap(), "2026-11-30 17:50 Mon");
        assert_eq!(next("45 17 * * *", at).unwrap(), "2026-12-01 17:45 Tue");
        assert_eq!(next("0 3 * * *", at).unwrap(), "2026-12-01 03:00 Tue");
        assert_eq!(next("@hourly", at).unwrap(), "2026-11-30 18:00 Mon");
        assert_eq!(next("@daily", at).unwrap(), "2026-12-01 00:00 Tue");
        assert_eq!(next("@weekly", at).unwrap(), "2026-12-06 00:00 Sun");
        assert_eq!(next("@monthly", at).unwrap(), "2026-12-01 00:00 Tue");
        assert_eq!(next("@yearly", at).unwrap(), "2027-01-01 00:00 Fri");
        // Sunday as 7, and names.
        assert_eq!(next("0 9 * * 7", at).unwrap(), "2026-12-06 09:00 Sun");
        assert_eq!(next("0 9 * * sat", at).unwrap(), "2026-12-05 09:00 Sat");
        // Both day fields restricted: either matches (the 1st, or a Friday).
        assert_eq!(next("0 0 1 * 5", at).unwrap(), "2026-12-01 00:00 Tue");
        assert_eq!(next("0 0 15 * 3", at).unwrap(), "2026-12-02 00:00 Wed");
        // One restricted and the other `*/2`: only the restricted one.
        assert_eq!(next("0 0 15 * */2", at).unwrap(), "2026-12-15 00:00 Tue");
        // Ranges with steps, months.
        assert_eq!(
            next("10-50/20 2 * feb *", at).unwrap(),
            "2027-02-01 02:10 Mon"
        );
        assert_eq!(next("0 0 29 2 *", at).unwrap(), "2028-02-29 00:00 Tue");
        // `0 0 30 2 *` never comes: refused when parsed (see the grammar
        // table); with a day-of-week as well, that day is enough.
        assert_eq!(next("0 0 30 2 1", at).unwrap(), "2027-02-01 00:00 Mon");
        assert_eq!(next("@reboot", at), None);
        // Within the same minute: the next one, not this one.
        assert_eq!(
            next("46 17 * * *", "2026-11-30T17:46:00Z").unwrap(),
            "2026-12-01 17:46 Tue"
        );
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
