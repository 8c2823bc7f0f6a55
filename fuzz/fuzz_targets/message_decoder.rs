//! Arbitrary text from a WebSocket peer: decoding never panics, a message
//! that decodes re-encodes and decodes to the same message, and validation
//! of each payload never panics.
#![no_main]

use cc_proto::wire::{Incoming, Message, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(decoded) = decode(text) else { return };
    let Incoming::Known(message) = decoded.message else { return };
    let json = message.to_json().unwrap();
    let again = decode(&json).unwrap();
    assert!(again.ignored_fields.is_empty());
    assert_eq!(again.message, Incoming::Known(message.clone()));
    match &message {
        Message::Register(r) => drop(r.validate()),
        Message::ExecuteJob(j) => {
            if let Ok(spec) = j.validate() {
                // The report's command line splits back into the same argv.
                let line = spec.command.to_shell_line();
                let back = cc_proto::CommandLine::parse_shell_words(&line).unwrap();
                assert_eq!(back, spec.command);
            }
        }
        Message::ExecutionReport(r) => drop(r.validate()),
        Message::CronRefresh(entries) => {
            for e in entries {
                let _ = e.validate();
            }
        }
        Message::ReportRejected(r) => drop(r.validate()),
        Message::Heartbeat(_) | Message::ReportAck(_) | Message::CronStatus(_) => {}
    }
});
