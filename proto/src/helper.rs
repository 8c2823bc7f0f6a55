//! The agent↔helper link: a closed set of requests and responses.
//!
//! Unlike the agent↔listener link, nothing unknown is tolerated here: an
//! unknown request, an unknown field or a trailing byte is an error and the
//! helper refuses the request. The listener's own payloads travel inside as
//! the exact JSON text the listener sent (`execute_job`, `cron_refresh`), so
//! the helper parses and validates them itself rather than trusting the
//! agent's reading, and a future listener signature can be checked over the
//! exact bytes.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::wire::{self, CronEntry, CronRejection, ExecuteJob, ExecutionReport};

/// What a peer may ask of the helper. Nothing else exists. The agent's uid
/// may send every request but `run_scheduled`; root (the cron daemon, via
/// `cc-privhelper cron-run`) may send only `status` and `run_scheduled`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HelperRequest {
    /// Is system mode on, and what can this host enforce?
    Status,
    /// Run one job as root in the sandbox.
    Exec(ExecRequest),
    /// Replace the system cron file with these entries.
    WriteCron(WriteCronRequest),
    /// Run the system cron entry with this id now (from root only): the
    /// report is kept by the helper for the agent to take.
    RunScheduled(RunScheduledRequest),
    /// Hand over the reports of scheduled runs not yet acknowledged.
    TakeReports,
    /// The agent has these reports on disk: the helper may forget them.
    AckReports(AckReportsRequest),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunScheduledRequest {
    pub job_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckReportsRequest {
    pub report_ids: Vec<String>,
}

/// At most this many reports per `take_reports` answer (a frame holds
/// four 1 MiB-sized reports); the agent asks again until none are left.
pub const MAX_REPORTS_PER_TAKE: usize = 3;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// The listener's `execute_job` payload, as the exact JSON text received.
    pub execute_job: String,
    /// The message's `signed` extension (a [`crate::sign::Signed`] of an
    /// exec statement), as the exact JSON text received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteCronRequest {
    /// The listener's `cron_refresh` payload, as the exact JSON text received.
    pub cron_refresh: String,
    /// The message's `signed` extension (a cron list's statement), exact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed: Option<String>,
}

impl HelperRequest {
    pub fn operation(&self) -> &'static str {
        match self {
            HelperRequest::Status => "status",
            HelperRequest::Exec(_) => "exec",
            HelperRequest::WriteCron(_) => "write_cron",
            HelperRequest::RunScheduled(_) => "run_scheduled",
            HelperRequest::TakeReports => "take_reports",
            HelperRequest::AckReports(_) => "ack_reports",
        }
    }
}

impl ExecRequest {
    /// The embedded `execute_job`, decoded by the listener-link rules.
    pub fn job(&self) -> Result<ExecuteJob, serde_json::Error> {
        wire::decode_payload(&self.execute_job, &mut Vec::new())
    }
}

/// A `signed` extension's text, decoded strictly (it is what a root job
/// rests on: nothing unknown is tolerated).
pub fn signed(text: Option<&str>) -> Result<crate::sign::Signed, crate::sign::SignError> {
    let text = text.ok_or(crate::sign::SignError::Unsigned)?;
    decode_strict(text.as_bytes()).map_err(|e| crate::sign::SignError::Malformed(e.to_string()))
}

impl WriteCronRequest {
    pub fn entries(&self) -> Result<Vec<CronEntry>, serde_json::Error> {
        wire::decode_payload(&self.cron_refresh, &mut Vec::new())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HelperResponse {
    Status(HelperStatus),
    /// The job ran (or could not start); the report says how it went.
    ExecResult(ExecutionReport),
    CronWritten(CronWritten),
    /// Reports of scheduled runs (oldest first), for `take_reports`.
    Reports(Vec<ExecutionReport>),
    /// How many reports `ack_reports` removed.
    Acked(usize),
    Refused(Refusal),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelperStatus {
    pub version: String,
    pub system_mode: bool,
    /// The configured landlock mode: "required" or "best_effort".
    pub landlock: String,
    /// The landlock ABI this kernel offers and jobs are restricted at (0:
    /// none).
    pub landlock_abi: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronWritten {
    pub installed: Vec<String>,
    pub rejected: Vec<CronRejection>,
}

/// Why the helper said no, for the agent to pass on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub code: RefusalCode,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCode {
    /// The frame or its JSON was not a valid request.
    BadRequest,
    /// The embedded job or cron list failed validation.
    InvalidPayload,
    /// `system_mode` is off in the helper's own config.
    SystemModeDisabled,
    /// The program is not in `allowed_commands`.
    CommandNotAllowed,
    /// The sandbox could not be set up as configured.
    SandboxUnavailable,
    /// Something on the helper's side failed; the message says what.
    Internal,
    /// The work's signature was missing or did not hold: unsigned, bad
    /// signature, unknown key, wrong host, expired, not yet valid,
    /// replayed, rolled back, changed after signing (the message says which).
    SignatureRefused,
    /// This peer may not make this request (the agent asking to run a
    /// scheduled entry, root asking for anything but that).
    NotPermitted,
    /// The helper is serving as many requests of this peer class as it
    /// will at once; ask again later.
    Busy,
}

#[derive(Debug, Error)]
pub enum LinkError {
    #[error("frame is not UTF-8")]
    NotUtf8,
    #[error("malformed frame: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unknown field `{0}`")]
    UnknownField(String),
}

/// Decodes one frame body strictly: unknown fields are an error.
pub fn decode_strict<T: DeserializeOwned>(body: &[u8]) -> Result<T, LinkError> {
    let text = std::str::from_utf8(body).map_err(|_| LinkError::NotUtf8)?;
    let mut unknown = None;
    let mut de = serde_json::Deserializer::from_str(text);
    let value: T = serde_ignored::deserialize(&mut de, |path| {
        unknown.get_or_insert_with(|| path.to_string());
    })?;
    de.end()?;
    match unknown {
        Some(path) => Err(LinkError::UnknownField(path)),
        None => Ok(value),
    }
}

/// Encodes one frame body.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let reqs = [
            HelperRequest::Status,
            HelperRequest::Exec(ExecRequest {
                execute_job: r#"{"jobId":"j","command":"/bin/true","args":[]}"#.into(),
                signed: None,
            }),
            HelperRequest::Exec(ExecRequest {
                execute_job: "{}".into(),
                signed: Some(r#"{"statement":"","signature":"","key":""}"#.into()),
            }),
            HelperRequest::WriteCron(WriteCronRequest {
                cron_refresh: "[]".into(),
                signed: None,
            }),
            HelperRequest::RunScheduled(RunScheduledRequest {
                job_id: "daily".into(),
            }),
            HelperRequest::TakeReports,
            HelperRequest::AckReports(AckReportsRequest {
                report_ids: vec!["a".into(), "b".into()],
            }),
        ];
        for r in reqs {
            let body = encode(&r).unwrap();
            assert_eq!(decode_strict::<HelperRequest>(&body).unwrap(), r);
        }
    }

    /// `operation` (what the helper logs and refuses by) is the request's
    /// name on the wire.
    #[test]
    fn operations_are_the_wire_names() {
        let reqs = [
            HelperRequest::Status,
            HelperRequest::Exec(ExecRequest {
                execute_job: "{}".into(),
                signed: None,
            }),
            HelperRequest::WriteCron(WriteCronRequest {
                cron_refresh: "[]".into(),
                signed: None,
            }),
            HelperRequest::RunScheduled(RunScheduledRequest {
                job_id: "daily".into(),
            }),
            HelperRequest::TakeReports,
            HelperRequest::AckReports(AckReportsRequest { report_ids: vec![] }),
        ];
        for r in reqs {
            let name = match serde_json::to_value(&r).unwrap() {
                serde_json::Value::String(s) => s,
                serde_json::Value::Object(o) => o.keys().next().unwrap().clone(),
                other => panic!("{other}"),
            };
            assert_eq!(r.operation(), name);
        }
    }

    #[test]
    fn the_embedded_cron_list_is_decoded_entry_by_entry() {
        let req = WriteCronRequest {
            cron_refresh: r#"[{"id":"daily","schedule":"0 0 * * *","command":"/bin/true"},
                {"id":"hourly","schedule":"@hourly","command":"backup.sh --full"}]"#
                .into(),
            signed: None,
        };
        let entries = req.entries().unwrap();
        assert_eq!(
            entries,
            [
                CronEntry {
                    id: "daily".into(),
                    schedule: "0 0 * * *".into(),
                    command: "/bin/true".into(),
                    ..Default::default()
                },
                CronEntry {
                    id: "hourly".into(),
                    schedule: "@hourly".into(),
                    command: "backup.sh --full".into(),
                    ..Default::default()
                },
            ]
        );
        let bad = WriteCronRequest {
            cron_refresh: r#"{"id":"daily"}"#.into(),
            signed: None,
        };
        assert!(bad.entries().is_err());
    }

    /// The helper link's frame cap holds its largest messages: a
    /// `take_reports` answer of [`MAX_REPORTS_PER_TAKE`] reports each cut to
    /// the listener's message cap, and a `write_cron` carrying a cron list as
    /// large as the listener may send, even if every byte of it needs
    /// escaping again.
    #[test]
    fn the_frame_cap_holds_the_largest_messages() {
        use crate::frame::{MAX_FRAME_LEN, encode_frame};
        use crate::wire::MAX_MESSAGE_BYTES;
        assert_eq!(MAX_FRAME_LEN, 4 * 1024 * 1024);
        let mut report = ExecutionReport {
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
            report_id: Some("r".repeat(128)),
            waited_ms: None,
        };
        report.fit();
        let one = encode(&HelperResponse::ExecResult(report.clone())).unwrap();
        assert!(one.len() > MAX_MESSAGE_BYTES / 2, "{}", one.len());
        assert!(encode_frame(&one, MAX_FRAME_LEN).is_ok());
        let take = encode(&HelperResponse::Reports(vec![report; MAX_REPORTS_PER_TAKE])).unwrap();
        assert!(take.len() > 2 * MAX_MESSAGE_BYTES, "{}", take.len());
        assert!(encode_frame(&take, MAX_FRAME_LEN).is_ok());

        let cron = HelperRequest::WriteCron(WriteCronRequest {
            cron_refresh: "\"".repeat(MAX_MESSAGE_BYTES),
            signed: None,
        });
        assert!(encode_frame(&encode(&cron).unwrap(), MAX_FRAME_LEN).is_ok());
    }

    #[test]
    fn the_wire_form_is_plain() {
        assert_eq!(encode(&HelperRequest::Status).unwrap(), br#""status""#);
    }

    #[test]
    fn unknown_requests_and_fields_are_refused() {
        let cases: &[(&[u8], &str)] = &[
            (br#""shell""#, "malformed frame: unknown variant `shell`"),
            (
                br#"{"exec":{"execute_job":"{}","as_uid":0}}"#,
                "unknown field `?.as_uid`",
            ),
            (
                br#"{"exec":{}}"#,
                "malformed frame: missing field `execute_job`",
            ),
            (br#""status" x"#, "malformed frame: trailing characters"),
            (b"\xff", "frame is not UTF-8"),
        ];
        for (body, msg) in cases {
            let e = decode_strict::<HelperRequest>(body)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(msg), "{e} / {msg}");
        }
    }

    #[test]
    fn embedded_payload_is_kept_byte_for_byte() {
        let original =
            r#"{"jobId":"j1","command":"backup.sh","args":["--full"],"timeout":3600,"sig":"x"}"#;
        let req = HelperRequest::Exec(ExecRequest {
            execute_job: original.into(),
            signed: None,
        });
        let back: HelperRequest = decode_strict(&encode(&req).unwrap()).unwrap();
        let HelperRequest::Exec(exec) = back else {
            panic!()
        };
        assert_eq!(exec.execute_job, original);
        assert_eq!(exec.job().unwrap().job_id, "j1");
    }
}
