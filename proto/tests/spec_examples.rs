//! Every JSON example in the two v1.3 spec files decodes, and re-encodes to
//! the same JSON value. The examples are read from the spec files themselves
//! (`../shared/spec` beside the repository, or `CC_SPEC_DIR`), so a change
//! to the spec shows up here.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

use std::path::PathBuf;

use cc_proto::wire::{self, CronEntry, ExecuteJob, ExecutionReport, Heartbeat, Incoming, Register};
use serde_json::Value;

fn spec_dir() -> PathBuf {
    std::env::var_os("CC_SPEC_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/spec"))
}

fn read_spec(name: &str) -> String {
    let path = spec_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (set CC_SPEC_DIR to the spec folder)",
            path.display()
        )
    })
}

/// Removes `// …` comments that stand outside JSON strings (the spec
/// annotates fields that way).
fn strip_comments(block: &str) -> String {
    let mut out = String::new();
    for line in block.lines() {
        let mut in_string = false;
        let mut escaped = false;
        let mut cut = line.len();
        let bytes = line.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            match b {
                _ if escaped => escaped = false,
                b'\\' if in_string => escaped = true,
                b'"' => in_string = !in_string,
                b'/' if !in_string && bytes.get(i + 1) == Some(&b'/') => {
                    cut = i;
                    break;
                }
                _ => {}
            }
        }
        out.push_str(&line[..cut]);
        out.push('\n');
    }
    out
}

/// (the message type named before the block, if any, and the block).
fn json_blocks(spec: &str) -> Vec<(Option<String>, Value)> {
    let mut blocks = Vec::new();
    let mut current_type = None;
    let mut lines = spec.lines();
    while let Some(line) = lines.next() {
        if let Some(rest) = line.strip_prefix("**Type:** `") {
            current_type = rest.split('`').next().map(str::to_owned);
        }
        if line.trim() == "```json" {
            let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            let text = strip_comments(&body.join("\n"));
            let value: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("spec block is not JSON once comments go: {e}\n{text}"));
            blocks.push((current_type.clone(), value));
        }
    }
    blocks
}

/// Decodes `payload` as message `kind` through the real decoder, and
/// re-encodes it.
fn round_trip(kind: &str, payload: &Value) -> Value {
    let envelope = serde_json::json!({ "type": kind, "payload": payload });
    let text = envelope.to_string();
    let decoded =
        wire::decode(&text).unwrap_or_else(|e| panic!("{kind} example does not decode: {e}"));
    assert!(
        decoded.ignored_fields.is_empty(),
        "{kind}: {:?}",
        decoded.ignored_fields
    );
    let Incoming::Known(message) = decoded.message else {
        panic!("{kind} decoded as an unknown type")
    };
    assert_eq!(message.kind(), kind);
    let back: Value = serde_json::from_str(&message.to_json().unwrap()).unwrap();
    assert_eq!(back["type"], kind);
    back["payload"].clone()
}

#[test]
fn agent_listener_examples_round_trip() {
    let blocks = json_blocks(&read_spec("agent-listener-v1.3.md"));
    let kinds: Vec<String> = blocks.iter().filter_map(|(k, _)| k.clone()).collect();
    assert_eq!(
        kinds,
        [
            "register",
            "heartbeat",
            "execute_job",
            "execution_report",
            "cron_refresh"
        ],
        "the spec's examples changed; cover the new ones"
    );
    for (kind, example) in &blocks {
        let kind = kind
            .as_deref()
            .expect("every example follows a **Type:** line");
        assert_eq!(
            &round_trip(kind, example),
            example,
            "{kind} did not round-trip"
        );
        // And each decodes into its typed payload directly.
        let text = example.to_string();
        let mut ignored = Vec::new();
        match kind {
            "register" => drop(wire::decode_payload::<Register>(&text, &mut ignored).unwrap()),
            "heartbeat" => drop(wire::decode_payload::<Heartbeat>(&text, &mut ignored).unwrap()),
            "execute_job" => {
                let job: ExecuteJob = wire::decode_payload(&text, &mut ignored).unwrap();
                let spec = job.validate().unwrap();
                assert_eq!(spec.command.to_shell_line(), "backup.sh --full");
            }
            "execution_report" => {
                let r: ExecutionReport = wire::decode_payload(&text, &mut ignored).unwrap();
                r.validate().unwrap();
                assert_eq!(r.executing_uid, 0);
            }
            "cron_refresh" => {
                let entries: Vec<CronEntry> = wire::decode_payload(&text, &mut ignored).unwrap();
                for e in &entries {
                    e.validate().unwrap();
                }
            }
            other => panic!("unexpected {other}"),
        }
        assert!(ignored.is_empty());
    }
}

#[test]
fn execution_report_examples_round_trip() {
    let blocks = json_blocks(&read_spec("execution-report-v1.3.md"));
    assert_eq!(
        blocks.len(),
        2,
        "the spec's examples changed; cover the new ones"
    );
    let required = &blocks[0].1;
    let optional = &blocks[1].1;
    assert_eq!(&round_trip("execution_report", required), required);
    // The optional fields are shown alone; they belong on a full report.
    let mut full = required.clone();
    for (k, v) in optional.as_object().unwrap() {
        full[k] = v.clone();
    }
    assert_eq!(round_trip("execution_report", &full), full);
    let report: ExecutionReport = serde_json::from_value(full).unwrap();
    report.validate().unwrap();
    assert_eq!(report.executing_user, "cc-agent-user");
    assert!(report.warning.unwrap().starts_with("Running as root"));
}
