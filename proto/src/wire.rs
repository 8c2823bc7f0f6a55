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
    /// Extension: whether the host's schedule can fire ([`CronHost`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron_host: Option<CronHost>,
}

/// `heartbeat` (agent → listener): payload empty or `{timestamp}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    /// Extension: [`CronHost`] as of this heartbeat (a cron daemon may
    /// stop or start between two).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron_host: Option<CronHost>,
}

/// Extension `cronHost` (in `register` and every `heartbeat`): what decides
/// whether entries installed on the host will fire, and when.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CronHost {
    /// The cron daemon running on the host, by its process name (`cron`,
    /// `crond`); `null`: none is running, so no entry fires.
    #[serde(default)]
    pub daemon: Option<String>,
    /// The host's time zone, an IANA name (`Europe/Berlin`), in which its
    /// cron daemon reads schedules; `null`: the agent could not tell.
    #[serde(default)]
    pub time_zone: Option<String>,
}

impl CronHost {
    /// A daemon's name: 1 to 32 of `A-Z a-z 0-9 . _ -`. A time zone: 1 to
    /// 64 of those and `/ +`, not starting with `/` or `.`, without `..`
    /// (an IANA name, never a path).
    pub fn validate(&self) -> Result<(), InvalidPayload> {
        let word = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if let Some(d) = &self.daemon {
            check_text("cronHost.daemon", d, 32)?;
            if let Some((at, ch)) = d.char_indices().find(|&(_, c)| !word(c)) {
                return Err(TextError::BadChar {
                    field: "cronHost.daemon",
                    ch,
                    at,
                    allowed: "A-Z a-z 0-9 . _ -",
                }
                .into());
            }
        }
        if let Some(tz) = &self.time_zone {
            check_text("cronHost.timeZone", tz, 64)?;
            if let Some((at, ch)) = tz
                .char_indices()
                .find(|&(_, c)| !(word(c) || matches!(c, '/' | '+')))
            {
                return Err(TextError::BadChar {
                    field: "cronHost.timeZone",
                    ch,
                    at,
                    allowed: "A-Z a-z 0-9 . _ - / +",
                }
                .into());
            }
            if tz.starts_with(['/', '.']) || tz.contains("..") {
                return Err(TextError::Invalid {
                    field: "cronHost.timeZone",
                    reason: "an IANA name such as Europe/Berlin, not a path",
                }
                .into());
            }
        }
        Ok(())
    }
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
    /// Extension: how long a scheduled run waited for its jitter
    /// ([`jitter_offset`]) before it started; left out for other runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waited_ms: Option<u64>,
}

/// One entry of `cron_refresh` (listener → agent); the payload is a bare
/// array of these.
///
/// Extensions (each optional, left out when unset, so a spec-only peer
/// sees the spec's three fields): `timeout` (seconds, as `execute_job`'s;
/// default [`Timeout::DEFAULT`]), `jitter` (seconds: each host's run waits
/// a stable offset in `[0, jitter)`, [`jitter_offset`]) and `grace`
/// (seconds a run may be late before the listener records it missed; the
/// listener's alone, an agent ignores it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronEntry {
    pub id: String,
    pub schedule: String,
    pub command: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace: Option<u64>,
}

/// Longest `jitter` and `grace` a cron entry may ask for: a day.
pub const MAX_CRON_DELAY_SECS: u64 = 24 * 3600;

/// How long the run of entry `entry_id` on `hostname` waits, with
/// `jitter` seconds of jitter: stable (the same every run, on every
/// listener and agent) and spread evenly over `[0, jitter)`, so the hosts
/// of a fleet entry do not all start in the same second. 0 when `jitter`
/// is 0.
pub fn jitter_offset(hostname: &str, entry_id: &str, jitter: u64) -> u64 {
    if jitter == 0 {
        return 0;
    }
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in ["cc-jitter-v1", hostname, entry_id] {
        ctx.update(part.as_bytes());
        ctx.update(&[0]);
    }
    let digest = ctx.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(first) % jitter
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
            cron_host: None,
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
    pub timeout: Timeout,
    /// Seconds, at most [`MAX_CRON_DELAY_SECS`]; 0: none.
    pub jitter: u64,
    /// Seconds, at most [`MAX_CRON_DELAY_SECS`]; `None`: the listener's
    /// default.
    pub grace: Option<u64>,
}

impl CronEntry {
    pub fn validate(&self) -> Result<CronJob, InvalidPayload> {
        let delay = |field: &'static str, v: Option<u64>| match v {
            Some(s) if s > MAX_CRON_DELAY_SECS => Err(TextError::Invalid {
                field,
                reason: "must be at most 86400 seconds (a day)",
            }),
            v => Ok(v),
        };
        Ok(CronJob {
            id: JobId::parse(&self.id)?,
            schedule: Schedule::parse(&self.schedule)?,
            command: CommandLine::parse_shell_words(&self.command)?,
            timeout: match self.timeout {
                Some(secs) => Timeout::from_secs(secs)?,
                None => Timeout::DEFAULT,
            },
            jitter: delay("jitter", self.jitter)?.unwrap_or(0),
            grace: delay("grace", self.grace)?,
        })
    }
}

impl From<&CronJob> for CronEntry {
    /// The canonical form: the schedule as our grammar renders it, the
    /// command as the exact argv quoted, options only when set.
    fn from(job: &CronJob) -> Self {
        CronEntry {
            id: job.id.to_string(),
            schedule: job.schedule.to_string(),
            command: job.command.to_shell_line(),
            timeout: (job.timeout != Timeout::DEFAULT).then(|| job.timeout.secs()),
            jitter: (job.jitter != 0).then_some(job.jitter),
            grace: job.grace,
        }
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
    /// What the agent said of its cron daemon and clock at registration
    /// (`None`: an agent that does not say).
    pub cron_host: Option<CronHost>,
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
            cron_host: match &self.cron_host {
                Some(c) => {
                    c.validate()?;
                    Some(c.clone())
                }
                None => None,
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
    /// control characters, a short report id — and returns the parsed
    /// values the receiver keys its store with ([`ValidReport`]).
    pub fn validate(&self) -> Result<ValidReport, InvalidPayload> {
        let job_id = JobId::parse(&self.job_id)?;
        let start_time = Timestamp::parse("startTime", &self.start_time)?;
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
        let report_id = match &self.report_id {
            Some(id) => Some(JobId::parse(id).map_err(|_| TextError::Invalid {
                field: "reportId",
                reason: "must be 1-128 characters of A-Z a-z 0-9 _ . -",
            })?),
            None => None,
        };
        Ok(ValidReport {
            job_id,
            start_time,
            report_id,
        })
    }
}

/// What [`ExecutionReport::validate`] parsed out of a report: the values
/// a receiver keys its store with, so that nothing downstream takes them
/// as raw strings again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidReport {
    /// The job (or cron entry) the report answers.
    pub job_id: JobId,
    pub start_time: Timestamp,
    /// The report's own id, in the job-id grammar (extension).
    pub report_id: Option<JobId>,
}

/// What a stored report answers, as the listener decides it on storing:
/// an ad-hoc job of the host, an entry of the host's cron list, or
/// neither. Stored (and shown) as its lowercase word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportKind {
    Job,
    Cron,
    Unmatched,
}

impl ReportKind {
    pub const ALL: [Self; 3] = [Self::Job, Self::Cron, Self::Unmatched];

    /// The word stored in the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Job => "job",
            Self::Cron => "cron",
            Self::Unmatched => "unmatched",
        }
    }

    /// The kind `text` names, if any.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

impl std::fmt::Display for ReportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests;
