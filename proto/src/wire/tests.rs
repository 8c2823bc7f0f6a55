//! Tests of the wire messages: their JSON, bounds and validation.

use super::*;

#[test]
fn fit_leaves_a_cron_status_the_listener_accepts() {
    let mut st = CronStatus {
        installed: (0..1500).map(|i| format!("e{i}")).collect(),
        rejected: vec![CronRejection {
            id: "é".repeat(100),
            reason: format!("crontab said:\n{}", "x".repeat(5000)),
        }],
    };
    assert!(st.validate().is_err());
    st.fit();
    st.validate().unwrap();
    assert_eq!(st.installed.len(), MAX_CRON_ENTRIES);
    assert!(st.rejected[0].reason.starts_with("crontab said: x"));
}

#[test]
fn unknown_fields_are_noted_sixteen_at_most_and_short() {
    let long = "k".repeat(1000);
    let mut fields: Vec<String> = (0..1000).map(|i| format!("\"x{i}\": 1")).collect();
    fields.push(format!("\"{long}\": 1"));
    let text = format!(
        r#"{{"type":"heartbeat","payload":{{}},{}}}"#,
        fields.join(",")
    );
    let d = decode(&text).unwrap();
    assert_eq!(d.ignored_fields.len(), MAX_IGNORED_FIELDS + 1);
    assert_eq!(d.ignored_fields.last().map(String::as_str), Some("…"));
    let text = format!(r#"{{"type":"heartbeat","payload":{{"{long}": 1}}}}"#);
    let d = decode(&text).unwrap();
    assert_eq!(
        d.ignored_fields[0].chars().count(),
        65,
        "{:?}",
        d.ignored_fields
    );
}

#[test]
fn a_report_duration_and_command_are_bounded() {
    let mut r = ExecutionReport {
        job_id: "j".into(),
        command: "/bin/echo 'a b'".into(),
        exit_code: 0,
        stdout: String::new(),
        stderr: String::new(),
        start_time: "2024-03-20T10:00:00Z".into(),
        duration_ms: ExecutionReport::MAX_DURATION_MS,
        executing_uid: 0,
        executing_user: "root".into(),
        warning: None,
        report_id: None,
        waited_ms: None,
    };
    assert!(r.validate().is_ok());
    r.duration_ms = ExecutionReport::MAX_DURATION_MS + 1;
    assert!(r.validate().unwrap_err().to_string().contains("durationMs"));
    r.duration_ms = u64::MAX;
    assert!(r.validate().is_err(), "past i64, unreadable in the store");
    r.duration_ms = 1;
    r.command = r"/bin/echo \nforged".into();
    assert!(r.validate().is_ok(), "an escaped newline is text");
    r.command = "/bin/echo \u{1b}[2J".into();
    assert!(r.validate().unwrap_err().to_string().contains("command"));
}

#[test]
fn a_cron_status_is_bounded_like_a_cron_list() {
    let ok = |id: &str, reason: &str| CronStatus {
        installed: vec!["a".into()],
        rejected: vec![CronRejection {
            id: id.into(),
            reason: reason.into(),
        }],
    };
    assert!(
        ok("bad id!", "schedule: 61 is not a minute")
            .validate()
            .is_ok()
    );
    assert!(
        ok("b", &"r".repeat(CronStatus::MAX_REASON_BYTES))
            .validate()
            .is_ok()
    );
    assert!(
        ok("b", &"r".repeat(CronStatus::MAX_REASON_BYTES + 1))
            .validate()
            .is_err()
    );
    assert!(ok("b", "one\nINFO forged").validate().is_err());
    assert!(ok("b", "").validate().is_err());
    assert!(ok(&"i".repeat(129), "why").validate().is_err());
    assert!(ok("i\u{1b}[2J", "why").validate().is_err());
    let mut s = ok("b", "why");
    s.installed = vec!["not an id!".into()];
    assert!(s.validate().is_err());
    s.installed = vec!["x".into(); MAX_CRON_ENTRIES];
    assert!(s.validate().is_ok());
    s.installed.push("x".into());
    assert!(s.validate().is_err());
    let mut r = ok("b", "why");
    r.rejected = vec![
        CronRejection {
            id: "b".into(),
            reason: "why".into()
        };
        MAX_CRON_ENTRIES + 1
    ];
    assert!(r.validate().is_err());
}

fn known(text: &str) -> Message {
    match decode(text).unwrap().message {
        Incoming::Known(m) => m,
        other => panic!("{other:?}"),
    }
}

#[test]
fn escaped_output_is_shortened_to_fit_one_message() {
    let mut r = ExecutionReport {
        job_id: "a".into(),
        command: "x".into(),
        exit_code: 0,
        stdout: "\u{1}".repeat(262_144),
        stderr: "\u{2}".repeat(262_144),
        start_time: "2024-03-20T10:00:00Z".into(),
        duration_ms: 1,
        executing_uid: 1,
        executing_user: "u".into(),
        warning: None,
        waited_ms: None,
        report_id: None,
    };
    let small = ExecutionReport {
        stdout: "ok".into(),
        stderr: String::new(),
        ..r.clone()
    };
    let mut kept = small.clone();
    kept.fit();
    assert_eq!(kept, small, "a report that fits is left alone");
    r.fit();
    let len = Message::ExecutionReport(r.clone()).to_json().unwrap().len();
    assert!(len <= MAX_MESSAGE_BYTES - 4096, "{len}");
    assert!(len > MAX_MESSAGE_BYTES / 2, "cut more than needed: {len}");
    assert!(r.warning.unwrap().contains("1 MiB"));
}

#[test]
fn unknown_fields_are_reported_not_fatal() {
    let d = decode(
        r#"{"type":"heartbeat","payload":{"timestamp":"2024-03-20T10:00:00Z","load":1.5},"seq":7}"#,
    )
    .unwrap();
    assert_eq!(d.ignored_fields, ["seq", "payload.load"]);
    assert_eq!(
        d.raw_payload,
        Some(r#"{"timestamp":"2024-03-20T10:00:00Z","load":1.5}"#)
    );
    assert!(matches!(d.message, Incoming::Known(Message::Heartbeat(_))));
}

#[test]
fn unknown_types_are_reported_not_fatal() {
    let d = decode(r#"{"type":"telemetry","payload":{"x":1}}"#).unwrap();
    assert_eq!(d.message, Incoming::UnknownType("telemetry".into()));
}

#[test]
fn heartbeat_payload_may_be_empty_absent_null_or_a_string() {
    for text in [
        r#"{"type":"heartbeat"}"#,
        r#"{"type":"heartbeat","payload":null}"#,
        r#"{"type":"heartbeat","payload":{}}"#,
    ] {
        assert_eq!(
            known(text),
            Message::Heartbeat(Heartbeat::default()),
            "{text}"
        );
    }
    assert_eq!(
        known(r#"{"type":"heartbeat","payload":"2024-03-20T10:00:00Z"}"#),
        Message::Heartbeat(Heartbeat {
            timestamp: Some("2024-03-20T10:00:00Z".into()),
            cron_host: None,
        })
    );
}

#[test]
fn wrong_types_and_missing_fields_are_errors_that_say_what() {
    let e =
        decode(r#"{"type":"execute_job","payload":{"jobId":"a","command":"x","timeout":"10"}}"#)
            .unwrap_err()
            .to_string();
    assert!(
        e.starts_with("invalid execute_job payload: invalid type: string \"10\", expected u64"),
        "{e}"
    );
    let e = decode(r#"{"type":"execute_job","payload":{"command":"x"}}"#)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("invalid execute_job payload: missing field `jobId`"),
        "{e}"
    );
    let e = decode(r#"{"type":"register"}"#).unwrap_err().to_string();
    assert_eq!(e, "register has no payload");
    let e = decode(r#"{"payload":{}}"#).unwrap_err().to_string();
    assert!(
        e.starts_with("malformed message: missing field `type`"),
        "{e}"
    );
    let e = decode(r#"{"type":"heartbeat"} trailing"#)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("malformed message: trailing characters"),
        "{e}"
    );
}

#[test]
fn deep_nesting_never_overflows_the_stack() {
    let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    // Deep nesting where a struct is expected is a type error.
    assert!(
        decode(&format!(
            r#"{{"type":"register","payload":{}}}"#,
            nest(100_000)
        ))
        .is_err()
    );
    // Deep nesting in an unknown field is skipped without recursing.
    let text = format!(
        r#"{{"type":"heartbeat","payload":{{"x":{}}}}}"#,
        nest(100_000)
    );
    let d = decode(&text).unwrap();
    assert_eq!(d.ignored_fields, ["payload.x"]);
    // Deep nesting where we do build values hits the recursion limit.
    let e = decode(&format!(
        r#"{{"type":"cron_refresh","payload":[{}]}}"#,
        nest(100_000)
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("recursion limit exceeded") || e.contains("invalid type"),
        "{e}"
    );
    // An unknown type's payload is skipped without recursing.
    let text = format!(r#"{{"type":"x","payload":{}}}"#, nest(100_000));
    let d = decode(&text).unwrap();
    assert_eq!(d.message, Incoming::UnknownType("x".into()));
}

#[test]
fn oversized_messages_are_refused_before_parsing() {
    let big = format!(
        r#"{{"type":"heartbeat","payload":{{"x":"{}"}}}}"#,
        "a".repeat(MAX_MESSAGE_BYTES)
    );
    assert!(matches!(decode(&big), Err(DecodeError::TooLarge { .. })));
}

#[test]
fn execute_job_validation() {
    let job = ExecuteJob {
        job_id: "j1".into(),
        command: "backup.sh".into(),
        args: vec!["--full".into()],
        timeout: None,
    };
    let spec = job.validate().unwrap();
    assert_eq!(spec.timeout, Timeout::DEFAULT);
    assert_eq!(spec.command.to_shell_line(), "backup.sh --full");
    let bad = ExecuteJob {
        args: vec!["a\nb".into()],
        ..job.clone()
    };
    assert_eq!(
        bad.validate().unwrap_err().to_string(),
        "args contains a control character ('\\n') at byte 1"
    );
    let bad = ExecuteJob {
        timeout: Some(0),
        ..job
    };
    assert_eq!(
        bad.validate().unwrap_err().to_string(),
        "timeout: must be at least 1 second"
    );
}

#[test]
fn cron_entry_validation_names_the_problem() {
    let e = CronEntry {
        id: "job-1".into(),
        schedule: "61 * * * *".into(),
        command: "/bin/true".into(),
        ..Default::default()
    };
    assert_eq!(
        e.validate().unwrap_err().to_string(),
        "minute field \"61\": 61 is out of range 0-59"
    );
    let e = CronEntry {
        id: "job-1".into(),
        schedule: "@daily".into(),
        command: "/bin/echo 'a\nb'".into(),
        ..Default::default()
    };
    assert_eq!(
        e.validate().unwrap_err().to_string(),
        "command contains a control character ('\\n') at byte 12"
    );
}

fn report() -> ExecutionReport {
    ExecutionReport {
        job_id: "a".into(),
        command: "x".into(),
        exit_code: 0,
        stdout: String::new(),
        stderr: String::new(),
        start_time: "2024-03-20T10:00:00Z".into(),
        duration_ms: 1,
        executing_uid: 1,
        executing_user: "u".into(),
        waited_ms: None,
        warning: None,
        report_id: None,
    }
}

fn message_len(r: &ExecutionReport) -> usize {
    Message::ExecutionReport(r.clone()).to_json().unwrap().len()
}

/// A report exactly at the budget (the cap less 4 KiB) is left whole;
/// one byte over is cut to fit, and says so.
#[test]
fn fit_cuts_exactly_past_the_budget() {
    let budget = MAX_MESSAGE_BYTES - 4096;
    let base = message_len(&report());
    let at = ExecutionReport {
        stdout: "a".repeat(budget - base),
        ..report()
    };
    assert_eq!(message_len(&at), budget);
    let mut kept = at.clone();
    kept.fit();
    assert_eq!(kept, at);
    let mut over = ExecutionReport {
        stdout: "a".repeat(budget - base + 1),
        ..report()
    };
    over.fit();
    assert!(message_len(&over) <= budget);
    assert!(over.stdout.len() < budget / 2 + 1, "{}", over.stdout.len());
    assert!(over.warning.is_some());
}

/// Halving a stream steps back to a character boundary, never past the
/// half.
#[test]
fn fit_cuts_on_a_character_boundary_at_or_below_the_half() {
    // "a" then 600,000 two-byte characters: the half (600,000) falls
    // inside one, so 599,999 bytes are kept.
    let mut r = ExecutionReport {
        stdout: format!("a{}", "é".repeat(600_000)),
        ..report()
    };
    r.fit();
    assert_eq!(r.stdout.len(), 599_999);
    assert_eq!(r.stdout, format!("a{}", "é".repeat(299_999)));
}

/// The fast path (no encoding when the streams are small) must not let
/// through a report whose other fields escape large: a 4 KiB warning of
/// control characters grows sixfold.
#[test]
fn fit_sees_what_escaping_does_to_the_whole_report() {
    let budget = MAX_MESSAGE_BYTES - 4096;
    // Streams whose escaped size sits just under the budget: the fast
    // path does not apply, so the report is measured and cut.
    let mut r = ExecutionReport {
        stdout: "\u{1}".repeat((budget - 2048) / 6),
        warning: Some("\u{1}".repeat(4096)),
        ..report()
    };
    assert!(message_len(&r) > budget);
    r.fit();
    assert!(message_len(&r) <= budget, "{}", message_len(&r));
    // The command counts too: 200 KiB of quotes escape to 400 KiB.
    let mut r = ExecutionReport {
        command: "\"".repeat(204_800),
        stdout: "\u{1}".repeat(112_640),
        ..report()
    };
    assert!(message_len(&r) > budget);
    r.fit();
    assert!(message_len(&r) <= budget, "{}", message_len(&r));
    // A long command and small streams: left alone.
    let long = ExecutionReport {
        command: "c".repeat(100_000),
        stdout: "ok".into(),
        ..report()
    };
    let mut kept = long.clone();
    kept.fit();
    assert_eq!(kept, long);
}

#[test]
fn signed_messages_carry_the_extension_beside_the_payload() {
    let m = Message::ReportAck(ReportAck {
        report_id: "r1".into(),
    });
    assert_eq!(m.to_json_signed(None).unwrap(), m.to_json().unwrap());
    let signed = crate::sign::Signed {
        statement: "c3Q=".into(),
        signature: "c2ln".into(),
        key: "ed25519:a2V5".into(),
    };
    let text = m.to_json_signed(Some(&signed)).unwrap();
    let d = decode(&text).unwrap();
    assert_eq!(d.message, Incoming::Known(m));
    assert_eq!(
        serde_json::from_str::<crate::sign::Signed>(d.raw_signed.unwrap()).unwrap(),
        signed
    );
    assert!(d.ignored_fields.is_empty(), "{:?}", d.ignored_fields);
}

/// Every known type decodes as itself, `kind` names it, and it encodes
/// back to the same JSON.
#[test]
fn every_known_type_decodes_as_itself() {
    for text in [
        r#"{"type":"register","payload":{"hostname":"h","os":"linux","arch":"x86_64","tags":["prod"],"executionMode":"user","isRoot":false}}"#,
        r#"{"type":"heartbeat","payload":{"timestamp":"2024-03-20T10:00:00Z"}}"#,
        r#"{"type":"execute_job","payload":{"jobId":"j","command":"/bin/true","args":[]}}"#,
        r#"{"type":"cron_refresh","payload":[{"id":"d","schedule":"@daily","command":"/bin/true"}]}"#,
        r#"{"type":"report_ack","payload":{"reportId":"r1"}}"#,
        r#"{"type":"report_rejected","payload":{"reportId":"r1","reason":"quota"}}"#,
        r#"{"type":"cron_status","payload":{"installed":["d"],"rejected":[{"id":"e","reason":"why"}]}}"#,
    ] {
        let m = known(text);
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(m.kind(), v["type"], "{text}");
        let back: serde_json::Value = serde_json::from_str(&m.to_json().unwrap()).unwrap();
        assert_eq!(back, v, "{text}");
    }
}

/// A message of exactly the cap is read; one byte more is not.
#[test]
fn the_message_cap_is_exact() {
    let head = r#"{"type":"report_ack","payload":{"reportId":"r1"}}"#;
    let at = format!("{head}{}", " ".repeat(MAX_MESSAGE_BYTES - head.len()));
    assert_eq!(at.len(), MAX_MESSAGE_BYTES);
    assert!(matches!(known(&at), Message::ReportAck(_)));
    let over = format!("{at} ");
    assert_eq!(
        decode(&over).unwrap_err().to_string(),
        "message is 1048577 bytes; at most 1048576 allowed"
    );
}

#[test]
fn job_windows_are_1_to_10000_or_absent() {
    let r = |w: Option<u32>| Register {
        hostname: "h".into(),
        os: "linux".into(),
        arch: "x86_64".into(),
        tags: vec![],
        execution_mode: ExecutionMode::User,
        is_root: false,
        job_window: w,
        cron_host: None,
    };
    for ok in [None, Some(1), Some(10_000)] {
        assert_eq!(r(ok).validate().unwrap().job_window, ok);
    }
    for bad in [0, 10_001] {
        assert_eq!(
            r(Some(bad)).validate().unwrap_err().to_string(),
            "jobWindow: must be between 1 and 10000"
        );
    }
}

/// Every bound `ExecutionReport::validate` sets holds exactly at its
/// value and refuses one past it.
#[test]
fn report_validation_limits_are_exact() {
    let ok = ExecutionReport {
        job_id: "j".repeat(128),
        command: "c".repeat(CommandLine::MAX_PROGRAM_LEN + 2 * CommandLine::MAX_ARGS_BYTES),
        stdout: "o".repeat(MAX_STREAM_BYTES),
        stderr: "e".repeat(MAX_STREAM_BYTES),
        executing_user: "u".repeat(256),
        warning: Some("w".repeat(4096)),
        report_id: Some("r".repeat(128)),
        ..report()
    };
    assert_eq!(ok.command.len(), 266_240);
    let valid = ok.validate().unwrap();
    assert_eq!(valid.job_id.as_str(), ok.job_id);
    assert_eq!(
        valid.report_id.as_ref().map(JobId::as_str),
        ok.report_id.as_deref()
    );
    assert_eq!(valid.start_time.to_string(), "2024-03-20T10:00:00.000Z");
    let refused = |r: ExecutionReport| r.validate().unwrap_err().to_string();
    assert_eq!(
        refused(ExecutionReport {
            stdout: format!("{}o", ok.stdout),
            ..ok.clone()
        }),
        "stdout is 262145 bytes long; at most 262144 allowed"
    );
    assert_eq!(
        refused(ExecutionReport {
            stderr: format!("{}e", ok.stderr),
            ..ok.clone()
        }),
        "stderr is 262145 bytes long; at most 262144 allowed"
    );
    assert_eq!(
        refused(ExecutionReport {
            command: format!("{}c", ok.command),
            ..ok.clone()
        }),
        "command is 266241 bytes long; at most 266240 allowed"
    );
    assert_eq!(
        refused(ExecutionReport {
            executing_user: format!("{}u", ok.executing_user),
            ..ok.clone()
        }),
        "executingUser is 257 bytes long; at most 256 allowed"
    );
    assert_eq!(
        refused(ExecutionReport {
            warning: Some("w".repeat(4097)),
            ..ok.clone()
        }),
        "warning is 4097 bytes long; at most 4096 allowed"
    );
    // Too long is said first, whatever the warning holds.
    assert_eq!(
        refused(ExecutionReport {
            warning: Some(format!("\u{1b}{}", "w".repeat(4096))),
            ..ok.clone()
        }),
        "warning is 4097 bytes long; at most 4096 allowed"
    );
    assert_eq!(
        refused(ExecutionReport {
            report_id: Some("r".repeat(129)),
            ..ok.clone()
        }),
        "reportId: must be 1-128 characters of A-Z a-z 0-9 _ . -"
    );
    assert_eq!(
        refused(ExecutionReport {
            job_id: "../x".into(),
            ..ok.clone()
        }),
        "job id contains '/' at byte 2; allowed: A-Z a-z 0-9 _ . -"
    );
    assert!(
        refused(ExecutionReport {
            start_time: "yesterday".into(),
            ..ok
        })
        .contains("startTime")
    );
}

/// What the agent and the helper send passes the listener's check of
/// the warning: `fit` makes a warning with a control character (an
/// error quoted into it) one line, and cuts an over-long one — also
/// after adding its own note about shortened output.
#[test]
fn fit_leaves_a_warning_the_listener_accepts() {
    let mut r = ExecutionReport {
        warning: Some("no job cgroup (open: No such file\nor directory)\u{1b}".into()),
        ..report()
    };
    r.fit();
    assert_eq!(
        r.warning.as_deref(),
        Some("no job cgroup (open: No such file or directory) ")
    );
    r.validate().unwrap();
    let plain = "Running as root (UID 0). Ensure this is intentional.";
    let mut r = ExecutionReport {
        warning: Some(plain.into()),
        ..report()
    };
    r.fit();
    assert_eq!(
        r.warning.as_deref(),
        Some(plain),
        "a sentence is left alone"
    );
    // 4,095 bytes of warning, then a two-byte character, then the note
    // about shortened output (200,000 control characters escape to
    // 1.2 MB): cut to 4,095 bytes, on the boundary.
    let mut r = ExecutionReport {
        stdout: "\u{1}".repeat(200_000),
        warning: Some(format!("{}é", "w".repeat(4095))),
        ..report()
    };
    r.fit();
    assert_eq!(r.warning.as_deref(), Some("w".repeat(4095).as_str()));
    r.validate().unwrap();
}

/// Issue #25, finding 5: a warning that cleared the operator's screen,
/// wrote "ALL HOSTS OK" and retitled the window was stored and shown
/// raw — only its length was checked. Every control character (C0, DEL,
/// C1) is refused now, named and at its byte; a sentence, also in any
/// script and with punctuation, still passes.
#[test]
fn a_warning_with_a_control_character_is_refused() {
    let with = |w: &str| ExecutionReport {
        warning: Some(w.into()),
        ..report()
    };
    let attack = "\u{1b}[2J\u{1b}[H…ALL HOSTS OK…\u{1b}]0;pwned\u{7}";
    assert_eq!(
        with(attack).validate().unwrap_err().to_string(),
        "warning contains a control character ('\\u{1b}') at byte 0"
    );
    for (w, ch, at) in [
        ("ok\u{7}", '\u{7}', 2),
        ("line one\nline two", '\n', 8),
        ("a\rforged", '\r', 1),
        ("tab\there", '\t', 3),
        ("nul\0", '\0', 3),
        ("del\u{7f}", '\u{7f}', 3),
        ("c1 csi \u{9b}31m", '\u{9b}', 7),
        ("é\u{85}next line", '\u{85}', 2),
    ] {
        assert_eq!(
            with(w).validate(),
            Err(InvalidPayload::Text(TextError::Control {
                field: "warning",
                ch,
                at
            })),
            "{w:?}"
        );
    }
    for fine in [
        "Running as root (UID 0). Ensure this is intentional.",
        "timed out after 5 s: the job and everything it started were sent SIGTERM, then SIGKILL after 2 s",
        "stdout: 10 of 20 bytes dropped (first and last 128 KiB kept); über-long — 日本語",
        "",
    ] {
        with(fine).validate().unwrap();
    }
}

/// A `report_rejected` is checked like a report's own fields: the id
/// in the job-id charset (it names an outbox file), the reason one
/// line of at most 1,024 bytes (it goes to the agent's log).
#[test]
fn report_rejected_validation_limits_are_exact() {
    let ok = ReportRejected {
        report_id: "r".repeat(128),
        reason: "q".repeat(ReportRejected::MAX_REASON_BYTES),
    };
    ok.validate().unwrap();
    let refused = |r: ReportRejected| r.validate().unwrap_err().to_string();
    let id_error = "reportId: must be 1-128 characters of A-Z a-z 0-9 _ . -";
    for bad in [
        "r".repeat(129),
        String::new(),
        "../x".into(),
        "-r".into(),
        "a b".into(),
    ] {
        assert_eq!(
            refused(ReportRejected {
                report_id: bad.clone(),
                ..ok.clone()
            }),
            id_error,
            "{bad:?}"
        );
    }
    assert_eq!(
        refused(ReportRejected {
            reason: "q".repeat(1025),
            ..ok.clone()
        }),
        "reason is 1025 bytes long; at most 1024 allowed"
    );
    assert_eq!(
        refused(ReportRejected {
            reason: "quota\nFAKE LOG LINE".into(),
            ..ok.clone()
        }),
        "reason contains a control character ('\\n') at byte 5"
    );
    assert_eq!(
        refused(ReportRejected {
            reason: String::new(),
            ..ok
        }),
        "reason is empty"
    );
    // Decoding is strict about types, as for every message.
    let e = decode(r#"{"type":"report_rejected","payload":{"reportId":"r1"}}"#)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("invalid report_rejected payload: missing field `reason`"),
        "{e}"
    );
    let e = decode(r#"{"type":"report_rejected","payload":{"reportId":1,"reason":"x"}}"#)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("invalid report_rejected payload: invalid type"),
        "{e}"
    );
}

/// What the listener builds always passes what the agent checks.
#[test]
fn a_built_rejection_always_validates() {
    for reason in [
        String::new(),
        "quota".into(),
        "a\nb\rc\u{0}d\u{7f}e\u{85}".into(),
        "é".repeat(1000),
        "x".repeat(5000),
    ] {
        let r = ReportRejected::new("r1".into(), &reason);
        r.validate().unwrap_or_else(|e| panic!("{reason:?}: {e}"));
        assert!(r.reason.len() <= ReportRejected::MAX_REASON_BYTES);
    }
    assert_eq!(ReportRejected::new("r1".into(), "a\nb").reason, "a b");
    assert_eq!(ReportRejected::new("r1".into(), "").reason, "refused");
}

#[test]
fn report_kinds_are_stored_as_their_words() {
    for kind in ReportKind::ALL {
        assert_eq!(ReportKind::parse(kind.as_str()), Some(kind));
        assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
    }
    assert_eq!(ReportKind::parse("Job"), None);
    assert_eq!(ReportKind::parse("web1.example.com"), None);
}

#[test]
fn report_kinds_display_as_their_words() {
    for kind in ReportKind::ALL {
        assert_eq!(kind.to_string(), kind.as_str());
    }
    assert_eq!(ReportKind::Unmatched.to_string(), "unmatched");
}

#[test]
fn the_longest_duration_is_a_leap_year_of_milliseconds() {
    assert_eq!(ExecutionReport::MAX_DURATION_MS, 31_622_400_000);
}

/// `cronHost` (register and heartbeat): a daemon's process name and an
/// IANA zone name, each bounded; never a path, never a control character.
#[test]
fn a_cron_host_is_a_name_and_a_zone_never_a_path() {
    let c = |daemon: Option<&str>, tz: Option<&str>| CronHost {
        daemon: daemon.map(Into::into),
        time_zone: tz.map(Into::into),
    };
    for ok in [
        c(Some("cron"), Some("Europe/Berlin")),
        c(None, None),
        c(Some("crond"), Some("America/Argentina/Buenos_Aires")),
        c(Some(&"d".repeat(32)), Some("Etc/GMT+5")),
        c(None, Some(&"z".repeat(64))),
    ] {
        assert_eq!(ok.validate(), Ok(()), "{ok:?}");
    }
    for (bad, why) in [
        (c(Some(""), None), "cronHost.daemon is empty"),
        (
            c(Some(&"d".repeat(33)), None),
            "cronHost.daemon is 33 bytes long; at most 32 allowed",
        ),
        (
            c(Some("cron d"), None),
            "cronHost.daemon contains ' ' at byte 4; allowed: A-Z a-z 0-9 . _ -",
        ),
        (
            c(Some("cron\n"), None),
            "cronHost.daemon contains a control character ('\\n') at byte 4",
        ),
        (
            c(None, Some("/usr/share/zoneinfo/UTC")),
            "cronHost.timeZone: an IANA name such as Europe/Berlin, not a path",
        ),
        (
            c(None, Some("Europe/../../etc")),
            "cronHost.timeZone: an IANA name such as Europe/Berlin, not a path",
        ),
        (
            c(None, Some(".hidden")),
            "cronHost.timeZone: an IANA name such as Europe/Berlin, not a path",
        ),
        (
            c(None, Some("Europe/Berlin;x")),
            "cronHost.timeZone contains ';' at byte 13; allowed: A-Z a-z 0-9 . _ - / +",
        ),
        (
            c(None, Some(&"z".repeat(65))),
            "cronHost.timeZone is 65 bytes long; at most 64 allowed",
        ),
    ] {
        assert_eq!(bad.validate().unwrap_err().to_string(), why, "{bad:?}");
    }
}

/// A heartbeat and a registration carry `cronHost`; without it (a
/// spec-only agent) nothing is said, and an invalid one fails the
/// registration.
#[test]
fn cron_host_travels_in_register_and_heartbeat() {
    let hb = known(
        r#"{"type":"heartbeat","payload":{"timestamp":"2024-03-20T10:00:00Z","cronHost":{"daemon":null,"timeZone":"UTC"}}}"#,
    );
    let Message::Heartbeat(hb) = hb else {
        panic!("{hb:?}")
    };
    assert_eq!(
        hb.cron_host,
        Some(CronHost {
            daemon: None,
            time_zone: Some("UTC".into())
        })
    );
    let text = serde_json::to_string(&Message::Heartbeat(hb.clone())).unwrap();
    assert!(
        text.contains(r#""cronHost":{"daemon":null,"timeZone":"UTC"}"#),
        "{text}"
    );
    let Message::Heartbeat(plain) = known(r#"{"type":"heartbeat","payload":{}}"#) else {
        panic!()
    };
    assert_eq!(plain.cron_host, None);
    let reg = |cron: &str| {
        let Message::Register(r) = known(&format!(
            r#"{{"type":"register","payload":{{"hostname":"h","os":"linux","arch":"x86_64","tags":[],"executionMode":"user","isRoot":false{cron}}}}}"#
        )) else {
            panic!()
        };
        r.validate()
    };
    assert_eq!(reg("").unwrap().cron_host, None);
    let info = reg(r#","cronHost":{"daemon":"cron","timeZone":"Europe/Berlin"}"#).unwrap();
    assert_eq!(info.cron_host.unwrap().daemon.as_deref(), Some("cron"));
    assert!(reg(r#","cronHost":{"daemon":"c r o n"}"#).is_err());
}

/// Jitter is stable per (host, entry), inside `[0, jitter)`, spread over
/// it, and different for different hosts.
#[test]
fn jitter_offsets_are_stable_bounded_and_spread() {
    assert_eq!(jitter_offset("web-1", "backup", 0), 0);
    let a = jitter_offset("web-1", "backup", 600);
    assert_eq!(a, jitter_offset("web-1", "backup", 600));
    let offsets: Vec<u64> = (0..1000)
        .map(|i| jitter_offset(&format!("h{i}"), "backup", 600))
        .collect();
    assert!(offsets.iter().all(|&o| o < 600));
    // Every tenth of the window gets some hosts (expected 100 each).
    for tenth in 0..10 {
        let n = offsets.iter().filter(|&&o| o / 60 == tenth).count();
        assert!((50..150).contains(&n), "tenth {tenth}: {n}");
    }
    // The separator keeps ("ab","c") and ("a","bc") apart.
    let same = (0..50)
        .filter(|i| {
            jitter_offset(&format!("ab{i}"), "c", 1 << 40)
                == jitter_offset(&format!("ab{i}c"), "", 1 << 40)
        })
        .count();
    assert_eq!(same, 0);
}

#[test]
fn cron_entry_options_are_bounded_and_canonical() {
    let e = |timeout, jitter, grace| CronEntry {
        id: "x".into(),
        schedule: "*/5 * * * *".into(),
        command: "/bin/true".into(),
        timeout,
        jitter,
        grace,
    };
    let job = e(Some(60), Some(300), Some(120)).validate().unwrap();
    assert_eq!(
        (job.timeout.secs(), job.jitter, job.grace),
        (60, 300, Some(120))
    );
    assert_eq!(CronEntry::from(&job), e(Some(60), Some(300), Some(120)));
    // Unset options stay unset in the canonical form (a spec-only agent
    // sees the spec's three fields).
    let plain = CronEntry::from(&e(None, None, None).validate().unwrap());
    assert_eq!(plain, e(None, None, None));
    assert_eq!(
        serde_json::to_string(&plain).unwrap(),
        r#"{"id":"x","schedule":"*/5 * * * *","command":"/bin/true"}"#
    );
    assert!(e(Some(0), None, None).validate().is_err());
    assert!(e(None, Some(86_401), None).validate().is_err());
    assert!(e(None, None, Some(86_401)).validate().is_err());
    assert!(e(None, Some(86_400), Some(86_400)).validate().is_ok());
}
