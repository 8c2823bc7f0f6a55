//! Arbitrary schedule text: parsing never panics; an accepted schedule
//! renders to safe bytes only, and its rendering is a fixed point.
#![no_main]

use cc_proto::Schedule;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(schedule) = Schedule::parse(text) else { return };
    let rendered = schedule.to_string();
    assert!(rendered.bytes().all(|b| b.is_ascii_digit()
        || b"*,-/ @abcdefghijklmnopqrstuvwxyz".contains(&b)));
    assert!(!rendered.contains('%') && !rendered.contains('\n'));
    let again = Schedule::parse(&rendered).unwrap();
    assert_eq!(again.to_string(), rendered);
});
