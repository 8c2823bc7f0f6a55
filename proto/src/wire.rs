//! The agent↔listener messages of `agent-listener-v1.3.md`, plus our
//! documented extensions (`docs/PROTOCOL.md`).
//!
//! Every message is `{"type": …, "payload": …}`. These structs are the edge:
//! JSON types are checked strictly (a string where a number belongs is an
//! error), strings are kept as sent, and `validate` methods turn them into
//! the types the rest of the code takes ([`JobSpec`], [`CronJob`],
//! [`AgentInfo`]).
//!
//! Decoding is forward compatible: unknown fields and unknown message types
//! are not errors; [`decode`] hands them back to the caller, which logs them.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use thiserror::Error;

use crate::command::CommandLine;
use crate::ids::{Hostname, JobId, Tag, TextError, Timeout, check_no_control, check_text};
use crate::output::MAX_STREAM_BYTES;
use crate::schedule::{Schedule, ScheduleError};
use crate::time::{Timestamp, TimestampError};

/// Largest agent↔listener message either side accepts: two full 256 KiB
/// streams with room for JSON escaping and the envelope.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Most entries one `cron_refresh` may carry.
pub const MAX_CRON_ENTRIES: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionMode {
    User,
    System,
}

/// `register` (agent → listener).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Register {
    pub hostname: String,
    pub os: String,
    pub arch: String,
    #[serde(default)]
    pub tags: Vec<String>,
    pub execution_mode: ExecutionMode,
    pub is_root: bool,
    /// Extension: how many jobs sent and not yet reported the agent will
    /// hold (running or about to run). A listener sends no more; absent
    /// (a spec-only agent), it sends every job at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_window: Option<u32>,
}

/// `heartbeat` (agent → listener): payload empty or `{timestamp}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
}

/// `execute_job` (listener → agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecuteJob {
    pub job_id: String,
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Seconds; [`Timeout::DEFAULT`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
}

/// `execution_report` (agent → listener), `execution-report-v1.3.md`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionReport {
    pub job_id: String,
    pub command: String,
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    pub start_time: String,
    pub duration_ms: u64,
    pub executing_uid: u32,
    pub executing_user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// Extension: unique per run, so a resent report is stored once and can
    /// be acknowledged. Optional: a spec-only agent leaves it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_id: Option<String>,
}

/// One entry of `cron_refresh` (listener → agent); the payload is a bare
/// array of these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronEntry {
    pub id: String,
    pub schedule: String,
    pub command: String,
}

/// Extension `report_ack` (listener → agent): the report with this id is
/// stored durably; the agent may drop it from its outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportAck {
    pub report_id: String,
}

/// Extension `report_rejected` (listener → agent): the report with this id
/// is refused for good — it would be refused again if sent again (the
/// host's report quota, or its quota of reports for no job, is full) — so
/// the agent drops it from its outbox. Never sent for a report the
/// listener failed to store: that one is left unacknowledged and comes
/// again. Check it with [`ReportRejected::validate`] before using it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportRejected {
    pub report_id: String,
    /// Why, for the agent's log: one line, at most
    /// [`ReportRejected::MAX_REASON_BYTES`].
    pub reason: String,
}

impl ReportRejected {
    /// Longest `reason` a receiver accepts.
    pub const MAX_REASON_BYTES: usize = 1024;

    /// A rejection whose reason is made to pass [`ReportRejected::validate`]:
    /// control characters become spaces and it is cut (on a character
    /// boundary) to [`ReportRejected::MAX_REASON_BYTES`].
    pub fn new(report_id: String, reason: &str) -> Self {
        let mut reason = one_line(reason, Self::MAX_REASON_BYTES);
        if reason.is_empty() {
            reason.push_str("refused");
        }
        Self { report_id, reason }
    }

    /// Checks what the agent relies on: a report id of the job-id charset
    /// (it names a file of the outbox) and a reason that is one bounded
    /// line, safe to log.
    pub fn validate(&self) -> Result<(), InvalidPayload> {
        JobId::parse(&self.report_id).map_err(|_| TextError::Invalid {
            field: "reportId",
            reason: "must be 1-128 characters of A-Z a-z 0-9 _ . -",
        })?;
        check_text("reason", &self.reason, Self::MAX_REASON_BYTES)?;
        Ok(())
    }
}

/// `text` as one line of at most `max` bytes: control characters become
/// spaces, and it is cut on a character boundary.
fn one_line(text: &str, max: usize) -> String {
    let mut line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut keep = line.len().min(max);
    while !line.is_char_boundary(keep) {
        keep -= 1;
    }
    line.truncate(keep);
    line
}

/// Extension `cron_status` (agent → listener): what the last
/// `cron_refresh` installed and which entries were refused, with why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronStatus {
    pub installed: Vec<String>,
    pub rejected: Vec<CronRejection>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronRejection {
    pub id: String,
    pub reason: String,
}

impl CronStatus {
    /// The longest reason a refused entry may carry.
    pub const MAX_REASON_BYTES: usize = 1024;

    /// Makes the status one the listener accepts whole: a refused entry's
    /// id and reason each one line within its bound (a reason quotes an
    /// error — `crontab`'s output, the helper's refusal — whose text is
    /// not ours to choose), and each list within [`MAX_CRON_ENTRIES`].
    pub fn fit(&mut self) {
        self.installed.truncate(MAX_CRON_ENTRIES);
        self.rejected.truncate(MAX_CRON_ENTRIES);
        for r in &mut self.rejected {
            r.id = one_line(&r.id, 128);
            r.reason = one_line(&r.reason, Self::MAX_REASON_BYTES);
        }
    }

    /// Bounded like a cron list: at most [`MAX_CRON_ENTRIES`] installed and
    /// as many refused; installed ids in the job-id grammar; a refused
    /// entry's id (which may be the refused thing itself) and its reason
    /// each one bounded line without control characters, so a status is
    /// safe to store, show and log.
    pub fn validate(&self) -> Result<(), InvalidPayload> {
        for (field, n) in [
            ("installed", self.installed.len()),
            ("rejected", self.rejected.len()),
        ] {
            if n > MAX_CRON_ENTRIES {
                return Err(TextError::Invalid {
                    field,
                    reason: "more than 1000 entries",
                }
                .into());
            }
        }
        for id in &self.installed {
            JobId::parse(id)?;
        }
        for r in &self.rejected {
            check_text("rejected id", &r.id, 128)?;
            check_text("reason", &r.reason, Self::MAX_REASON_BYTES)?;
        }
        Ok(())
    }
}

/// Every message we know, by its `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "payload", rename_all = "snake_case")]
pub enum Message {
    Register(Register),
    Heartbeat(Heartbeat),
    ExecuteJob(ExecuteJob),
    ExecutionReport(ExecutionReport),
    CronRefresh(Vec<CronEntry>),
    ReportAck(ReportAck),
    ReportRejected(ReportRejected),
    CronStatus(CronStatus),
}

impl Message {
    /// The message as sent on the wire.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }

    /// The message with the signature extension beside its payload:
    /// `{"type", "payload", "signed"}`. A spec-only peer ignores `signed`.
    pub fn to_json_signed(
        &self,
        signed: Option<&crate::sign::Signed>,
    ) -> Result<String, serde_json::Error> {
        let Some(signed) = signed else {
            return self.to_json();
        };
        let mut v = serde_json::to_value(self)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("signed".into(), serde_json::to_value(signed)?);
        }
        serde_json::to_string(&v)
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Message::Register(_) => "register",
            Message::Heartbeat(_) => "heartbeat",
            Message::ExecuteJob(_) => "execute_job",
            Message::ExecutionReport(_) => "execution_report",
            Message::CronRefresh(_) => "cron_refresh",
            Message::ReportAck(_) => "report_ack",
            Message::ReportRejected(_) => "report_rejected",
            Message::CronStatus(_) => "cron_status",
        }
    }
}

/// What [`decode`] made of a text frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded<'a> {
    pub message: Incoming,
    /// Fields we do not know, as paths (`payload.extra`), for the log.
    pub ignored_fields: Vec<String>,
    /// The payload exactly as it stood in the frame, for storing verbatim.
    pub raw_payload: Option<&'a str>,
    /// Extension: the envelope's `signed` field (a [`crate::sign::Signed`]
    /// of an `execute_job` or `cron_refresh` for a system-mode host),
    /// exactly as it stood in the frame.
    pub raw_signed: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Known(Message),
    /// A well-formed envelope with a `type` we do not know.
    UnknownType(String),
}

#[derive(Debug, Error)]
pub enum DecodeError {
    #[error("message is {len} bytes; at most {max} allowed")]
    TooLarge { len: usize, max: usize },
    #[error("malformed message: {0}")]
    Envelope(serde_json::Error),
    #[error("{kind} has no payload")]
    MissingPayload { kind: &'static str },
    #[error("invalid {kind} payload: {source}")]
    Payload {
        kind: &'static str,
        source: serde_json::Error,
    },
}

#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    #[serde(borrow, default)]
    signed: Option<&'a RawValue>,
}

/// Decodes one agent↔listener message.
pub fn decode(text: &str) -> Result<Decoded<'_>, DecodeError> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge {
            len: text.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    let mut ignored = Vec::new();
    let envelope: RawEnvelope<'_> = {
        let mut de = serde_json::Deserializer::from_str(text);
        let env = serde_ignored::deserialize(&mut de, |path| {
            note_ignored(&mut ignored, path.to_string())
        })
        .map_err(DecodeError::Envelope)?;
        de.end().map_err(DecodeError::Envelope)?;
        env
    };
    let payload = envelope.payload.map(RawValue::get);
    let message = match envelope.kind.as_str() {
        "register" => Message::Register(required("register", payload, &mut ignored)?),
        "heartbeat" => Message::Heartbeat(heartbeat(payload, &mut ignored)?),
        "execute_job" => Message::ExecuteJob(required("execute_job", payload, &mut ignored)?),
        "execution_report" => {
            Message::ExecutionReport(required("execution_report", payload, &mut ignored)?)
        }
        "cron_refresh" => Message::CronRefresh(required("cron_refresh", payload, &mut ignored)?),
        "report_ack" => Message::ReportAck(required("report_ack", payload, &mut ignored)?),
        "report_rejected" => {
            Message::ReportRejected(required("report_rejected", payload, &mut ignored)?)
        }
        "cron_status" => Message::CronStatus(required("cron_status", payload, &mut ignored)?),
        _ => {
            return Ok(Decoded {
                message: Incoming::UnknownType(envelope.kind.chars().take(64).collect()),
                ignored_fields: ignored,
                raw_payload: payload,
                raw_signed: envelope.signed.map(RawValue::get),
            });
        }
    };
    Ok(Decoded {
        message: Incoming::Known(message),
        ignored_fields: ignored,
        raw_payload: payload,
        raw_signed: envelope.signed.map(RawValue::get),
    })
}

fn required<T: DeserializeOwned>(
    kind: &'static str,
    payload: Option<&str>,
    ignored: &mut Vec<String>,
) -> Result<T, DecodeError> {
    let text = payload.ok_or(DecodeError::MissingPayload { kind })?;
    decode_payload(text, ignored).map_err(|source| DecodeError::Payload { kind, source })
}

fn heartbeat(payload: Option<&str>, ignored: &mut Vec<String>) -> Result<Heartbeat, DecodeError> {
    let Some(text) = payload else {
        return Ok(Heartbeat::default());
    };
    // "Empty or Timestamp": also accept a bare timestamp string.
    if text.trim_start().starts_with('"') {
        let timestamp: String =
            serde_json::from_str(text).map_err(|source| DecodeError::Payload {
                kind: "heartbeat",
                source,
            })?;
        return Ok(Heartbeat {
            timestamp: Some(timestamp),
        });
    }
    decode_payload(text, ignored).map_err(|source| DecodeError::Payload {
        kind: "heartbeat",
        source,
    })
}

/// Decodes one payload, adding the paths of fields it did not know to
/// `ignored` (prefixed `payload.`).
pub fn decode_payload<T: DeserializeOwned>(
    text: &str,
    ignored: &mut Vec<String>,
) -> Result<T, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = serde_ignored::deserialize(&mut de, |path| {
        note_ignored(ignored, format!("payload.{path}"));
    })?;
    de.end()?;
    Ok(value)
}

/// Unknown fields kept for the log; further ones are one `…`.
pub const MAX_IGNORED_FIELDS: usize = 16;

/// Notes an unknown field's path, at most [`MAX_IGNORED_FIELDS`] of them,
/// each cut to 64 characters: a 1 MiB frame of unknown keys would
/// otherwise be 170,000 strings (review of issue #25).
fn note_ignored(ignored: &mut Vec<String>, mut path: String) {
    if ignored.len() > MAX_IGNORED_FIELDS {
        return;
    }
    if ignored.len() == MAX_IGNORED_FIELDS {
        ignored.push("…".to_owned());
        return;
    }
    if let Some((cut, _)) = path.char_indices().nth(64) {
        path.truncate(cut);
        path.push('…');
    }
    ignored.push(path);
}

/// Why a payload that decoded is still not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvalidPayload {
    #[error(transparent)]
    Text(#[from] TextError),
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error(transparent)]
    Timestamp(#[from] TimestampError),
}

/// A validated `execute_job`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSpec {
    pub id: JobId,
    pub command: CommandLine,
    pub timeout: Timeout,
}

impl ExecuteJob {
    pub fn validate(&self) -> Result<JobSpec, InvalidPayload> {
        Ok(JobSpec {
            id: JobId::parse(&self.job_id)?,
            command: CommandLine::new(&self.command, &self.args)?,
            timeout: match self.timeout {
                Some(secs) => Timeout::from_secs(secs)?,
                None => Timeout::DEFAULT,
            },
        })
    }
}

impl From<&JobSpec> for ExecuteJob {
    fn from(job: &JobSpec) -> Self {
        ExecuteJob {
            job_id: job.id.to_string(),
            command: job.command.program().to_owned(),
            args: job.command.args().to_vec(),
            timeout: Some(job.timeout.secs()),
        }
    }
}

/// A validated cron entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronJob {
    pub id: JobId,
    pub schedule: Schedule,
    pub command: CommandLine,
}

impl CronEntry {
    pub fn validate(&self) -> Result<CronJob, InvalidPayload> {
        Ok(CronJob {
            id: JobId::parse(&self.id)?,
            schedule: Schedule::parse(&self.schedule)?,
            command: CommandLine::parse_shell_words(&self.command)?,
        })
    }
}

/// A validated `register`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInfo {
    pub hostname: Hostname,
    pub os: String,
    pub arch: String,
    pub tags: Vec<Tag>,
    pub execution_mode: ExecutionMode,
    pub is_root: bool,
    /// 1..=[`MAX_JOB_WINDOW`], or `None` for a spec-only agent.
    pub job_window: Option<u32>,
}

/// The largest `jobWindow` an agent may ask for.
pub const MAX_JOB_WINDOW: u32 = 10_000;

impl Register {
    pub fn validate(&self) -> Result<AgentInfo, InvalidPayload> {
        check_text("os", &self.os, 32)?;
        check_text("arch", &self.arch, 32)?;
        Ok(AgentInfo {
            hostname: Hostname::parse(&self.hostname)?,
            os: self.os.clone(),
            arch: self.arch.clone(),
            tags: Tag::parse_all(&self.tags)?,
            execution_mode: self.execution_mode,
            is_root: self.is_root,
            job_window: match self.job_window {
                Some(w) if !(1..=MAX_JOB_WINDOW).contains(&w) => {
                    return Err(TextError::Invalid {
                        field: "jobWindow",
                        reason: "must be between 1 and 10000",
                    }
                    .into());
                }
                w => w,
            },
        })
    }
}

impl ExecutionReport {
    /// Longest `warning` a receiver accepts.
    pub const MAX_WARNING_BYTES: usize = 4096;

    /// Longest `durationMs` a receiver accepts: a year (a job's timeout is
    /// at most 7 days).
    pub const MAX_DURATION_MS: u64 = 366 * 24 * 3600 * 1000;

    /// Makes the report one the listener accepts whole, whatever the job
    /// printed or a warning quotes: the message within the listener's cap
    /// (minus 4 KiB of room) and the warning one line within
    /// [`ExecutionReport::MAX_WARNING_BYTES`]. A report the listener refuses
    /// is never acknowledged, so it would stay in the agent's outbox.
    pub fn fit(&mut self) {
        self.fit_streams();
        // Our warnings are sentences, but some quote an error (a cgroup's,
        // the kernel's) whose text is not ours to choose.
        if let Some(w) = &mut self.warning {
            if w.len() > Self::MAX_WARNING_BYTES || w.chars().any(char::is_control) {
                *w = one_line(w, Self::MAX_WARNING_BYTES);
            }
        }
    }

    /// JSON escaping can grow a 256 KiB stream of control characters
    /// sixfold: halves the larger stream (on a character boundary) until
    /// the message fits, and says so in the warning.
    fn fit_streams(&mut self) {
        let budget = MAX_MESSAGE_BYTES - 4096;
        // JSON escaping grows a byte to at most six: a report this small
        // fits whatever it holds, without encoding it to find out.
        let fields = self.stdout.len() + self.stderr.len() + self.command.len();
        if fields.saturating_mul(6) + 64 * 1024 < budget {
            return;
        }
        let size = |r: &ExecutionReport| {
            Message::ExecutionReport(r.clone())
                .to_json()
                .map_or(usize::MAX, |t| t.len())
        };
        let mut cut = false;
        while size(self) > budget {
            let field = if self.stdout.len() >= self.stderr.len() {
                &mut self.stdout
            } else {
                &mut self.stderr
            };
            if field.is_empty() {
                break;
            }
            let mut keep = field.len() / 2;
            while !field.is_char_boundary(keep) {
                keep -= 1;
            }
            field.truncate(keep);
            cut = true;
        }
        if cut {
            let note = "output shortened further to fit the 1 MiB message limit (JSON escaping)";
            self.warning = Some(match self.warning.take() {
                Some(w) => format!("{w}; {note}"),
                None => note.to_owned(),
            });
        }
    }

    /// Checks what a receiver relies on: a valid job id, a real timestamp,
    /// streams within the cap, a short user name, a short warning without
    /// control characters, a short report id.
    pub fn validate(&self) -> Result<(), InvalidPayload> {
        JobId::parse(&self.job_id)?;
        Timestamp::parse("startTime", &self.start_time)?;
        for (field, text) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            if text.len() > MAX_STREAM_BYTES {
                return Err(TextError::TooLong {
                    field,
                    len: text.len(),
                    max: MAX_STREAM_BYTES,
                }
                .into());
            }
        }
        if self.command.len() > CommandLine::MAX_PROGRAM_LEN + 2 * CommandLine::MAX_ARGS_BYTES {
            return Err(TextError::TooLong {
                field: "command",
                len: self.command.len(),
                max: CommandLine::MAX_PROGRAM_LEN + 2 * CommandLine::MAX_ARGS_BYTES,
            }
            .into());
        }
        // The command line the agent rendered from a validated one.
        check_no_control("command", &self.command)?;
        // Stored as a signed 64-bit number and summed in queries: a value
        // past it made every page of jobs unreadable (review of #25).
        if self.duration_ms > Self::MAX_DURATION_MS {
            return Err(TextError::Invalid {
                field: "durationMs",
                reason: "more than a year",
            }
            .into());
        }
        check_text("executingUser", &self.executing_user, 256)?;
        if let Some(w) = &self.warning {
            if w.len() > Self::MAX_WARNING_BYTES {
                return Err(TextError::TooLong {
                    field: "warning",
                    len: w.len(),
                    max: Self::MAX_WARNING_BYTES,
                }
                .into());
            }
            // The spec's warning is a sentence for a person ("Running as
            // root (UID 0). Ensure this is intentional."), shown in tables
            // and logs: a control character in it can only be an attempt
            // on a terminal (issue #25, finding 5) or a forged log line.
            check_no_control("warning", w)?;
        }
        if let Some(id) = &self.report_id {
            JobId::parse(id).map_err(|_| TextError::Invalid {
                field: "reportId",
                reason: "must be 1-128 characters of A-Z a-z 0-9 _ . -",
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
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
                timestamp: Some("2024-03-20T10:00:00Z".into())
            })
        );
    }

    #[test]
    fn wrong_types_and_missing_fields_are_errors_that_say_what() {
        let e = decode(
            r#"{"type":"execute_job","payload":{"jobId":"a","command":"x","timeout":"10"}}"#,
        )
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
        };
        assert_eq!(
            e.validate().unwrap_err().to_string(),
            "minute field \"61\": 61 is out of range 0-59"
        );
        let e = CronEntry {
            id: "job-1".into(),
            schedule: "@daily".into(),
            command: "/bin/echo 'a\nb'".into(),
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
        ok.validate().unwrap();
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
}
