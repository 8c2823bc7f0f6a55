//! The schedule grammar against a table of what Debian cron and cronie
//! accept (with the canonical form we render) and what they refuse (with the
//! exact message an operator sees).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

use cc_proto::Schedule;

/// (input, canonical rendering)
const VALID: &[(&str, &str)] = &[
    ("* * * * *", "* * * * *"),
    ("0 0 * * *", "0 0 * * *"),
    ("*/5 * * * *", "*/5 * * * *"),
    ("0 */2 * * *", "0 */2 * * *"),
    ("30 4 1,15 * *", "30 4 1,15 * *"),
    ("0 9-17 * * 1-5", "0 9-17 * * 1-5"),
    ("0 9-17/2 * * mon-fri", "0 9-17/2 * * 1-5"),
    ("0 0 1 jan *", "0 0 1 1 *"),
    ("0 0 * JAN-MAR *", "0 0 * 1-3 *"),
    ("0 0 * * sun", "0 0 * * 0"),
    ("0 0 * * 7", "0 0 * * 7"),
    ("0 0 * * 0-7", "0 0 * * 0-7"),
    ("5 4 * * SAT", "5 4 * * 6"),
    ("0 0 29 2 *", "0 0 29 2 *"),
    ("59 23 31 12 6", "59 23 31 12 6"),
    ("0,15,30,45 * * * *", "0,15,30,45 * * * *"),
    ("00 05 * * *", "0 5 * * *"),
    ("*/1 * * * *", "* * * * *"),
    ("5/10 * * * *", "5-59/10 * * * *"),
    ("0  0\t*   *  *", "0 0 * * *"),
    ("  0 0 * * *  ", "0 0 * * *"),
    ("@reboot", "@reboot"),
    ("@yearly", "@yearly"),
    ("@annually", "@yearly"),
    ("@monthly", "@monthly"),
    ("@weekly", "@weekly"),
    ("@daily", "@daily"),
    ("@midnight", "@daily"),
    ("@hourly", "@hourly"),
    (" @hourly ", "@hourly"),
    ("1-5,10-15/2,*/20 * * * *", "1-5,10-15/2,*/20 * * * *"),
    ("0 0 1-31/2 * *", "0 0 1-31/2 * *"),
    ("0 12 * * mon,wed,fri", "0 12 * * 1,3,5"),
    ("0 0 * dec,jan *", "0 0 * 12,1 *"),
    ("0 0 * * */2", "0 0 * * */2"),
    ("15 14 1 * *", "15 14 1 * *"),
    ("23 0-23/2 * * *", "23 0-23/2 * * *"),
    ("0 0,12 1 */2 *", "0 0,12 1 */2 *"),
    ("0 4 8-14 * *", "0 4 8-14 * *"),
    ("*/60 * * * *", "*/60 * * * *"),
    ("0 0 * * 5-7", "0 0 * * 5-7"),
    ("0 0 * * Fri-7", "0 0 * * 5-7"),
    ("0-59 0-23 1-31 1-12 0-7", "0-59 0-23 1-31 1-12 0-7"),
    ("0 0 * jul-dec/2 *", "0 0 * 7-12/2 *"),
    ("30 2 * * tue/2", "30 2 * * 2-7/2"),
    ("5-5 * * * *", "5-5 * * * *"),
    ("0 0 */31 * *", "0 0 */31 * *"),
    ("0 0 * */12 *", "0 0 * */12 *"),
    ("0 0 * * */8", "0 0 * * */8"),
    // A day-of-month no month named has, but a day-of-week too: that day.
    ("0 0 31 2 1", "0 0 31 2 1"),
    ("0 0 30,31 1-2 *", "0 0 30,31 1-2 *"),
];

/// (input, the message it must give)
const INVALID: &[(&str, &str)] = &[
    ("", "schedule is empty"),
    ("   ", "schedule is empty"),
    (
        "* * * *",
        "schedule has 4 fields; expected 5 (minute hour day-of-month month day-of-week) or an @keyword",
    ),
    (
        "* * * * * *",
        "schedule has 6 fields; expected 5 (minute hour day-of-month month day-of-week) or an @keyword",
    ),
    (
        "0 0 * * * /bin/true",
        "schedule has 6 fields; expected 5 (minute hour day-of-month month day-of-week) or an @keyword",
    ),
    (
        "60 * * * *",
        r#"minute field "60": 60 is out of range 0-59"#,
    ),
    ("* 24 * * *", r#"hour field "24": 24 is out of range 0-23"#),
    (
        "* * 0 * *",
        r#"day-of-month field "0": 0 is out of range 1-31"#,
    ),
    (
        "* * 32 * *",
        r#"day-of-month field "32": 32 is out of range 1-31"#,
    ),
    ("* * * 0 *", r#"month field "0": 0 is out of range 1-12"#),
    ("* * * 13 *", r#"month field "13": 13 is out of range 1-12"#),
    (
        "* * * * 8",
        r#"day-of-week field "8": 8 is out of range 0-7"#,
    ),
    ("-1 * * * *", r#"minute field "-1": empty value in a range"#),
    (
        "*/0 * * * *",
        r#"minute field "*/0": step must be at least 1"#,
    ),
    (
        "*/61 * * * *",
        r#"minute field "*/61": step 61 is larger than the field's 60 values"#,
    ),
    (
        "1-2-3 * * * *",
        r#"minute field "1-2-3": "1-2-3" has more than one '-'"#,
    ),
    (
        "1/2/3 * * * *",
        r#"minute field "1/2/3": "1/2/3" has more than one '/'"#,
    ),
    (
        "5-1 * * * *",
        r#"minute field "5-1": range 5-1 is reversed"#,
    ),
    (
        "* * * * sat-sun",
        r#"day-of-week field "sat-sun": range 6-0 is reversed"#,
    ),
    ("a * * * *", r#"minute field "a": "a" is not a number"#),
    (
        "* * * foo *",
        r#"month field "foo": "foo" is not a number or a month name"#,
    ),
    (
        "* * * * funday",
        r#"day-of-week field "funday": "funday" is not a number or a day name"#,
    ),
    ("* jan * * *", r#"hour field "jan": "jan" is not a number"#),
    (
        "* * * * january",
        r#"day-of-week field "january": "january" is not a number or a day name"#,
    ),
    ("1,,2 * * * *", r#"minute field "1,,2": empty list item"#),
    ("1, * * * *", r#"minute field "1,": empty list item"#),
    (
        "** * * * *",
        r#"minute field "**": unexpected text after '*' in "**""#,
    ),
    (
        "*-5 * * * *",
        r#"minute field "*-5": unexpected text after '*' in "*-5""#,
    ),
    (
        "*/a * * * *",
        r#"minute field "*/a": step "a" is not a number"#,
    ),
    (
        "*/ * * * *",
        r#"minute field "*/": step "" is not a number"#,
    ),
    ("1- * * * *", r#"minute field "1-": empty value in a range"#),
    ("? * * * *", r#"minute field "?": "?" is not a number"#),
    (
        "0 0 L * *",
        r#"day-of-month field "L": "L" is not a number"#,
    ),
    (
        "0 0 * * 5#3",
        r##"day-of-week field "5#3": "5#3" is not a number or a day name"##,
    ),
    (
        "@every 5m",
        r#"unknown schedule keyword "@every"; expected one of @reboot @yearly @annually @monthly @weekly @daily @midnight @hourly"#,
    ),
    (
        "@fortnightly",
        r#"unknown schedule keyword "@fortnightly"; expected one of @reboot @yearly @annually @monthly @weekly @daily @midnight @hourly"#,
    ),
    (
        "@DAILY",
        r#"unknown schedule keyword "@DAILY"; expected one of @reboot @yearly @annually @monthly @weekly @daily @midnight @hourly"#,
    ),
    (
        "@daily /bin/true",
        "schedule keyword @daily takes nothing after it",
    ),
    (
        "0 0 * * *\n* * * * * root /bin/sh",
        r"schedule contains a control character ('\n')",
    ),
    (
        "0 0 * * *\r",
        r"schedule contains a control character ('\r')",
    ),
    (
        "0\u{0}0 * * * *",
        r"schedule contains a control character ('\0')",
    ),
    (
        "0 0 % * *",
        r#"day-of-month field "%": "%" is not a number"#,
    ),
    (
        "99999999999 * * * *",
        r#"minute field "99999999999": 99999999999 is out of range 0-59"#,
    ),
    (
        "*/99999999999 * * * *",
        r#"minute field "*/99999999999": step 99999999999 is larger than the field's 60 values"#,
    ),
    (
        "0 0 * * 1-",
        r#"day-of-week field "1-": empty value in a range"#,
    ),
    ("0 0 * * ,1", r#"day-of-week field ",1": empty list item"#),
    ("+5 * * * *", r#"minute field "+5": "+5" is not a number"#),
    (
        "0x10 * * * *",
        r#"minute field "0x10": "0x10" is not a number"#,
    ),
    (
        "5.5 * * * *",
        r#"minute field "5.5": "5.5" is not a number"#,
    ),
    (
        "0 0 * * mon-",
        r#"day-of-week field "mon-": empty value in a range"#,
    ),
    (
        "0 0 * * 1/0",
        r#"day-of-week field "1/0": step must be at least 1"#,
    ),
    (
        "0 0 * * * root",
        "schedule has 6 fields; expected 5 (minute hour day-of-month month day-of-week) or an @keyword",
    ),
    (
        "daily",
        "schedule has 1 fields; expected 5 (minute hour day-of-month month day-of-week) or an @keyword",
    ),
    (
        "0 0 */32 * *",
        r#"day-of-month field "*/32": step 32 is larger than the field's 31 values"#,
    ),
    (
        "0 0 * */13 *",
        r#"month field "*/13": step 13 is larger than the field's 12 values"#,
    ),
    (
        "0 0 * * */9",
        r#"day-of-week field "*/9": step 9 is larger than the field's 8 values"#,
    ),
    (
        "0 0 31 2 *",
        r#"schedule "0 0 31 2 *" never fires: no month it names has a day it names (February has 29 days at most; April, June, September and November 30); with `*` for day-of-month or a day-of-week it would"#,
    ),
    (
        "0 0 30 2 *",
        r#"schedule "0 0 30 2 *" never fires: no month it names has a day it names (February has 29 days at most; April, June, September and November 30); with `*` for day-of-month or a day-of-week it would"#,
    ),
    (
        "0 0 31 4,6,9,11 *",
        r#"schedule "0 0 31 4,6,9,11 *" never fires: no month it names has a day it names (February has 29 days at most; April, June, September and November 30); with `*` for day-of-month or a day-of-week it would"#,
    ),
    (
        "0 0 30-31 feb */2",
        r#"schedule "0 0 30-31 feb */2" never fires: no month it names has a day it names (February has 29 days at most; April, June, September and November 30); with `*` for day-of-month or a day-of-week it would"#,
    ),
];

#[test]
fn valid_schedules_parse_and_render_canonically() {
    assert!(VALID.len() >= 40, "{} valid cases", VALID.len());
    for (input, canonical) in VALID {
        let parsed = Schedule::parse(input).unwrap_or_else(|e| panic!("{input:?} refused: {e}"));
        assert_eq!(parsed.to_string(), *canonical, "rendering of {input:?}");
        // The canonical form is a fixed point.
        let again = Schedule::parse(canonical).unwrap();
        assert_eq!(
            again.to_string(),
            *canonical,
            "canonical {canonical:?} is not stable"
        );
    }
}

#[test]
fn invalid_schedules_are_refused_with_their_message() {
    assert!(INVALID.len() >= 40, "{} invalid cases", INVALID.len());
    for (input, message) in INVALID {
        match Schedule::parse(input) {
            Ok(s) => panic!("{input:?} was accepted as {s}"),
            Err(e) => assert_eq!(e.to_string(), *message, "message for {input:?}"),
        }
    }
}

#[test]
fn overlong_schedules_are_refused() {
    let long = format!("{} * * * *", "1,".repeat(200));
    assert_eq!(
        Schedule::parse(&long).unwrap_err().to_string(),
        format!("schedule is {} bytes long; at most 256 allowed", long.len())
    );
}

/// 256 bytes is allowed, as written and once rendered; 257 is not.
#[test]
fn the_length_limit_is_exact() {
    // Written and rendered alike: 123 times "1," then "10", then " * * * *".
    let input = format!("{}10 * * * *", "1,".repeat(123));
    assert_eq!(input.len(), 256);
    assert_eq!(Schedule::parse(&input).unwrap().to_string(), input);
    let input = format!("{}10 * * * *", "1,".repeat(124));
    assert_eq!(
        Schedule::parse(&input).unwrap_err().to_string(),
        "schedule is 258 bytes long; at most 256 allowed"
    );
    let input = format!("{}1 * * * *", "1,".repeat(124));
    assert_eq!(
        Schedule::parse(&input).unwrap_err().to_string(),
        "schedule is 257 bytes long; at most 256 allowed"
    );

    // Shorter as written, exactly 256 once `5/15` renders as `5-59/15`.
    let input = format!("5/15,10{} * * * *", ",1".repeat(119));
    assert_eq!(input.len(), 253);
    let rendered = Schedule::parse(&input).unwrap().to_string();
    assert_eq!(rendered.len(), 256);
    assert!(rendered.starts_with("5-59/15,10,1,"), "{rendered}");
    // One byte more once rendered.
    let input = format!("5/15,10,10{} * * * *", ",1".repeat(118));
    assert_eq!(input.len(), 254);
    assert_eq!(
        Schedule::parse(&input).unwrap_err().to_string(),
        "schedule is 257 bytes long once written in canonical form; at most 256 allowed"
    );
}

/// Found by the schedule_parser fuzz target: `N/STEP` renders as
/// `N-MAX/STEP`, so a schedule just under the limit rendered past it and its
/// canonical form no longer parsed.
#[test]
fn regression_canonical_form_longer_than_the_limit_is_refused() {
    let input = format!("{} * * * *", vec!["5/15"; 45].join(","));
    assert!(input.len() <= 256);
    assert_eq!(
        Schedule::parse(&input).unwrap_err().to_string(),
        "schedule is 367 bytes long once written in canonical form; at most 256 allowed"
    );
}

#[test]
fn rendered_schedules_contain_only_safe_bytes() {
    for (input, _) in VALID {
        let out = Schedule::parse(input).unwrap().to_string();
        assert!(
            out.bytes()
                .all(|b| b.is_ascii_digit() || b"*,-/ @abcdefghijklmnopqrstuvwxyz".contains(&b)),
            "{out:?}"
        );
    }
}
