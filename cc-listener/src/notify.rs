//! Notifications: `[[notify]]` webhooks told when a (host, entry) or a host
//! changes state.
//!
//! Two tasks, both reading and writing only the store, so a notification
//! survives a restart and, on PostgreSQL, is sent by one listener:
//! - the **consumer** ([`Store::notify_consume`](crate::store::Store::notify_consume))
//!   reads the event log (kind `cron` and `host`) from a cursor kept in
//!   the database, runs each (host, aspect, subject) through [`transition`]
//!   and queues one row per sink and change of state, in the transaction
//!   that advances the cursor;
//! - the **sender** claims due rows (a claim with an expiry, taken in a
//!   write transaction: one listener at a time), POSTs them with an
//!   HMAC-SHA256 signature (`X-CC-Signature: sha256=HEX`) and a stable
//!   idempotency key (`X-CC-Idempotency-Key`, the row's, the same on every
//!   retry and after a restart), deletes what was delivered (any 2xx) and
//!   backs off exponentially on failure, up to `max_attempts`.
//!
//! Invariants: a sink's secret and its URL's query string and user info
//! never reach a log line, an API answer or the database (rows name their
//! sink; the secret is read from `secret_file` when the listener starts).
//! A receiver that hangs costs one request slot for `timeout`; one that
//! fails for ever costs a row until `max_attempts`; the queue holds at most
//! `queue_max` rows (a notification that finds it full is dropped and
//! counted).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::AppState;
use crate::auth::Selector;

/// The events a sink may ask for; `recovered` is implied: a sink told that
/// something failed is told when it is ok again.
pub const EVENTS: [&str; 5] = [
    "run_failed",
    "run_missed",
    "host_offline",
    "root_in_user_mode",
    "cron_refused",
];

/// A `[[notify]]` block as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    pub name: String,
    pub url: String,
    pub events: Vec<String>,
    pub hosts: Option<String>,
    pub secret_file: PathBuf,
    pub format: Option<String>,
}

/// The body a sink is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `{"id","event","hostname",…}` (docs/fleet-schedules.md#notifications).
    Json,
    /// `{"text": "…"}`, what a Slack-compatible incoming webhook takes.
    Slack,
}

/// A validated sink.
pub struct Sink {
    pub name: String,
    url: hyper::Uri,
    pub events: Vec<&'static str>,
    pub hosts: Option<Selector>,
    key: ring::hmac::Key,
    pub format: Format,
}

impl std::fmt::Debug for Sink {
    /// Never the secret, never the URL's query or user info.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("name", &self.name)
            .field("url", &self.shown_url())
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

/// The longest secret file read, and the shortest secret taken.
const MAX_SECRET: u64 = 4096;
const MIN_SECRET: usize = 16;

impl Sink {
    /// Validates a block: its name a word, its URL http(s) with a host, its
    /// events known, its selector parsable, its secret file private.
    pub fn from_config(c: &SinkConfig) -> Result<Self> {
        cc_proto::JobId::parse(&c.name).map_err(|_| {
            anyhow::anyhow!(
                "[[notify]] name {:?}: a word of letters, digits, '.', '_' or '-' (at most 128)",
                c.name
            )
        })?;
        let name = &c.name;
        let url: hyper::Uri = c
            .url
            .parse()
            .map_err(|_| anyhow::anyhow!("[[notify]] {name}: url is not a URL"))?;
        match url.scheme_str() {
            Some("http" | "https") => {}
            _ => bail!("[[notify]] {name}: url must be http:// or https://"),
        }
        if url.host().is_none_or(str::is_empty) {
            bail!("[[notify]] {name}: url has no host");
        }
        anyhow::ensure!(
            !c.events.is_empty(),
            "[[notify]] {name}: events is empty (any of {})",
            EVENTS.join(", ")
        );
        let mut events = Vec::new();
        for e in &c.events {
            let Some(known) = EVENTS.iter().find(|k| **k == e.as_str()) else {
                bail!(
                    "[[notify]] {name}: unknown event {e:?} (any of {}; recovered is implied)",
                    EVENTS.join(", ")
                );
            };
            if !events.contains(known) {
                events.push(*known);
            }
        }
        let hosts = c
            .hosts
            .as_deref()
            .map(Selector::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!("[[notify]] {name}: hosts: {e}"))?;
        let format = match c.format.as_deref() {
            None | Some("json") => Format::Json,
            Some("slack") => Format::Slack,
            Some(other) => bail!("[[notify]] {name}: format {other:?} is not json or slack"),
        };
        let secret = read_secret(&c.secret_file)
            .with_context(|| format!("[[notify]] {name}: secret_file"))?;
        Ok(Self {
            name: name.clone(),
            url,
            events,
            hosts,
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
            format,
        })
    }

    /// The URL without its query and user info: what logs and the API show.
    pub fn shown_url(&self) -> String {
        let host = self.url.host().unwrap_or("");
        let port = self
            .url
            .port_u16()
            .map(|p| format!(":{p}"))
            .unwrap_or_default();
        format!(
            "{}://{host}{port}{}",
            self.url.scheme_str().unwrap_or("http"),
            self.url.path()
        )
    }

    /// Whether this sink asked for `event` (a bad state's name).
    pub fn wants(&self, event: &str) -> bool {
        self.events.contains(&event)
    }

    /// Whether this sink's selector reaches the host.
    pub fn reaches(&self, hostname: &str, bound_tags: &[String]) -> bool {
        self.hosts
            .as_ref()
            .is_none_or(|s| s.matches(hostname, bound_tags))
    }

    /// `sha256=HEX`: the HMAC-SHA256 of `body` under this sink's secret.
    pub fn signature(&self, body: &[u8]) -> String {
        format!(
            "sha256={}",
            hex::encode(ring::hmac::sign(&self.key, body).as_ref())
        )
    }
}

/// A secret file: owned by this user or root, no access for group or
/// others (like an SSH key), at most 4 KiB, at least 16 bytes once
/// trimmed.
pub fn read_secret(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read as _;
    use std::os::unix::fs::MetadataExt as _;
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let meta = file.metadata()?;
    anyhow::ensure!(meta.is_file(), "{} is not a file", path.display());
    // This process's effective uid, as the kernel shows it.
    let me = std::fs::metadata("/proc/self")
        .context("reading /proc/self")?
        .uid();
    anyhow::ensure!(
        meta.uid() == me || meta.uid() == 0,
        "{} is owned by uid {}, not by this user ({me}) or root",
        path.display(),
        meta.uid()
    );
    anyhow::ensure!(
        meta.mode() & 0o077 == 0,
        "{} is readable or writable by group or others (mode {:o}): chmod 600 it",
        path.display(),
        meta.mode() & 0o777
    );
    let mut text = Vec::new();
    file.take(MAX_SECRET + 1).read_to_end(&mut text)?;
    anyhow::ensure!(
        text.len() as u64 <= MAX_SECRET,
        "{} is longer than {MAX_SECRET} bytes",
        path.display()
    );
    let trimmed = text.trim_ascii().to_vec();
    anyhow::ensure!(
        trimmed.len() >= MIN_SECRET,
        "{}: the secret must be at least {MIN_SECRET} bytes",
        path.display()
    );
    Ok(trimmed)
}

/// How notifications are queued and sent.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Rows the queue holds at most; a notification that finds it full is
    /// dropped (`croncommander_notifications_dropped`).
    pub queue_max: u64,
    /// Attempts before a notification is given up.
    pub max_attempts: u32,
    /// The first retry's delay; each next one doubles, up to `retry_cap`.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// One request, connection to last byte of the response head.
    pub timeout: Duration,
    /// How long a host must stay offline before `host_offline` is sent (a
    /// reconnect within it sends nothing).
    pub offline_grace: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            queue_max: 10_000,
            max_attempts: 12,
            retry_base: Duration::from_secs(5),
            retry_cap: Duration::from_secs(900),
            timeout: Duration::from_secs(10),
            offline_grace: Duration::from_secs(60),
        }
    }
}

impl Tuning {
    /// The delay before attempt `attempts + 1`, after `attempts` failed.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempts.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.retry_base
            .checked_mul(factor)
            .unwrap_or(self.retry_cap)
            .min(self.retry_cap)
    }
}

/// What an event says about a state: the aspect, whether the subject is
/// the event's job id (a cron entry) or a fixed word, and the new state
/// (`ok`, or the name of the bad event).
pub fn classify(
    kind: &str,
    status: &str,
    exit_code: Option<i64>,
) -> Option<(&'static str, Option<&'static str>, &'static str)> {
    match (kind, status) {
        ("cron", "done") if exit_code == Some(0) => Some(("cron", None, "ok")),
        ("cron", "done") => Some(("cron", None, "run_failed")),
        ("cron", "missed") => Some(("cron", None, "run_missed")),
        ("host", "offline") => Some(("host", Some("connection"), "host_offline")),
        ("host", "online") => Some(("host", Some("connection"), "ok")),
        ("host", "root_in_user_mode") => Some(("host", Some("root"), "root_in_user_mode")),
        ("host", "root_cleared") => Some(("host", Some("root"), "ok")),
        ("host", "cron_refused") => Some(("host", Some("cron"), "cron_refused")),
        ("host", "cron_accepted") => Some(("host", Some("cron"), "ok")),
        _ => None,
    }
}

/// A change of state worth a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Into a bad state (from ok or another bad one): the event's name.
    Failing(&'static str),
    /// Back to ok from the bad state named.
    Recovered(&'static str),
}

/// The state machine of one (host, aspect, subject): a notification per
/// change, none while it stays (still failing: nothing; ok again:
/// recovered once). `old` is the stored state (`ok` when none).
pub fn transition(old: &str, new: &'static str) -> Option<Transition> {
    if old == new {
        return None;
    }
    if new != "ok" {
        return Some(Transition::Failing(new));
    }
    EVENTS
        .iter()
        .find(|e| **e == old)
        .map(|e| Transition::Recovered(e))
}

/// What one notification says, rendered into its body when queued.
#[derive(Debug, Clone)]
pub struct Notice<'a> {
    pub key: &'a str,
    pub sink: &'a str,
    /// `run_failed` … or `recovered` or `test`.
    pub event: &'a str,
    /// For `recovered`: the bad state left.
    pub recovered_from: Option<&'a str>,
    pub hostname: &'a str,
    /// The cron entry, for cron events.
    pub entry: Option<&'a str>,
    pub status: &'a str,
    pub exit_code: Option<i64>,
    pub detail: Option<&'a str>,
    pub at_ms: i64,
}

/// The body of `n` in `format`.
pub fn body(format: Format, n: &Notice<'_>) -> String {
    match format {
        Format::Json => serde_json::json!({
            "id": n.key,
            "sink": n.sink,
            "event": n.event,
            "recoveredFrom": n.recovered_from,
            "hostname": n.hostname,
            "entry": n.entry,
            "status": n.status,
            "exitCode": n.exit_code,
            "detail": n.detail,
            "at": crate::rfc3339_ms(n.at_ms),
        })
        .to_string(),
        Format::Slack => {
            let what = match (n.event, n.recovered_from) {
                ("recovered", Some(from)) => format!("recovered from {from}"),
                (e, _) => e.to_owned(),
            };
            let mut text = format!("CronCommander: {} {what}", n.hostname);
            if let Some(e) = n.entry {
                text.push_str(&format!(" (entry {e})"));
            }
            if let Some(c) = n.exit_code {
                text.push_str(&format!(", exit {c}"));
            }
            if let Some(d) = n.detail {
                text.push_str(&format!(": {d}"));
            }
            serde_json::json!({ "text": text }).to_string()
        }
    }
}

/// Events the consumer reads per transaction.
const CONSUME_BATCH: u32 = 500;
/// Rows the sender claims at once (and sends concurrently).
const SEND_BATCH: u32 = 16;

/// Starts the consumer and the sender (nothing without sinks).
pub fn spawn(
    state: &Arc<AppState>,
    shutdown: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    if state.settings.notify.is_empty() {
        return Vec::new();
    }
    vec![
        tokio::spawn(consume_loop(Arc::clone(state), shutdown.clone())),
        tokio::spawn(send_loop(Arc::clone(state), shutdown.clone())),
    ]
}

async fn consume_loop(state: Arc<AppState>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        loop {
            let sinks = state.settings.notify.clone();
            let tuning = state.settings.notify_tuning.clone();
            let now = crate::now_ms();
            match state
                .db
                .call(move |s| s.notify_consume(now, &sinks, &tuning, CONSUME_BATCH))
                .await
            {
                Ok(out) => {
                    if out.dropped > 0 {
                        state.metrics.notifications_dropped(out.dropped);
                        warn!(
                            dropped = out.dropped,
                            "notification queue full: notifications dropped"
                        );
                    }
                    if out.events < CONSUME_BATCH as usize {
                        break;
                    }
                }
                Err(e) => {
                    warn!("reading events for notifications failed: {e:#}");
                    break;
                }
            }
        }
    }
}

fn client() -> Result<
    hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        http_body_util::Full<bytes::Bytes>,
    >,
> {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(provider)
        .context("reading the system's CA certificates")?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(2)
            .build(https),
    )
}

async fn send_loop(state: Arc<AppState>, mut shutdown: watch::Receiver<bool>) {
    let client = match client() {
        Ok(c) => c,
        Err(e) => {
            warn!("notifications are not sent: {e:#}");
            return;
        }
    };
    let tuning = state.settings.notify_tuning.clone();
    // A claim outlives the requests it covers: another listener takes the
    // row only once this one cannot still be sending it.
    let claim_ms = i64::try_from(tuning.timeout.as_millis()).unwrap_or(60_000) + 5_000;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now = crate::now_ms();
        let claimed = match state
            .db
            .call(move |s| s.notify_claim(now, claim_ms, SEND_BATCH))
            .await
        {
            Ok(c) => c,
            Err(e) => {
                warn!("claiming notifications failed: {e:#}");
                continue;
            }
        };
        if claimed.is_empty() {
            continue;
        }
        let sends = claimed.into_iter().map(|row| {
            let client = client.clone();
            let state = Arc::clone(&state);
            let tuning = tuning.clone();
            async move {
                let sink = state.settings.notify.iter().find(|s| s.name == row.sink);
                let outcome = match sink {
                    Some(sink) => deliver(&client, sink, &row, tuning.timeout).await,
                    None => Err("no such sink in this listener's config".to_owned()),
                };
                settle(&state, &tuning, row, sink.is_some(), outcome).await;
            }
        });
        tokio::select! {
            _ = futures_util::future::join_all(sends) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// One POST: `Ok` on a 2xx, else why not (never the URL's query).
async fn deliver(
    client: &hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        http_body_util::Full<bytes::Bytes>,
    >,
    sink: &Sink,
    row: &crate::store::Claimed,
    timeout: Duration,
) -> Result<(), String> {
    let body = bytes::Bytes::from(row.body.clone());
    let req = hyper::Request::post(sink.url.clone())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, "croncommander-listener")
        .header("X-CC-Signature", sink.signature(&body))
        .header("X-CC-Idempotency-Key", &row.idem_key)
        .header("X-CC-Event", &row.event)
        .body(http_body_util::Full::new(body))
        .map_err(|e| format!("building the request: {e}"))?;
    match tokio::time::timeout(timeout, client.request(req)).await {
        Err(_) => Err(format!("no answer within {}s", timeout.as_secs())),
        // Only the status: the body is not read (dropped with the response).
        Ok(Err(e)) => Err(format!("request failed: {}", short_error(&e))),
        Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
        Ok(Ok(resp)) => Err(format!("answered {}", resp.status().as_u16())),
    }
}

/// A client error without the URL (hyper's message names no URL, but its
/// sources may; keep the first line of the chain's kind).
fn short_error(e: &hyper_util::client::legacy::Error) -> String {
    if e.is_connect() {
        "could not connect".into()
    } else {
        "connection error".into()
    }
}

async fn settle(
    state: &AppState,
    tuning: &Tuning,
    row: crate::store::Claimed,
    known_sink: bool,
    outcome: Result<(), String>,
) {
    let (id, claim) = (row.id, row.claim.clone());
    match outcome {
        Ok(()) => {
            state.metrics.notification_sent();
            info!(sink = %row.sink, event = %row.event, hostname = %row.hostname, key = %row.idem_key, "notification delivered");
            if let Err(e) = state.db.call(move |s| s.notify_done(id, &claim)).await {
                warn!("recording a delivered notification failed (it will be sent again): {e:#}");
            }
        }
        Err(why) => {
            state.metrics.notification_failed();
            let attempts = u32::try_from(row.attempts)
                .unwrap_or(u32::MAX)
                .saturating_add(1);
            if !known_sink || attempts >= tuning.max_attempts {
                state.metrics.notification_given_up();
                warn!(sink = %row.sink, event = %row.event, hostname = %row.hostname, key = %row.idem_key, attempts, "notification given up: {why}");
                if let Err(e) = state.db.call(move |s| s.notify_done(id, &claim)).await {
                    warn!("dropping a notification failed: {e:#}");
                }
                return;
            }
            let delay = tuning.backoff(attempts);
            warn!(sink = %row.sink, event = %row.event, attempts, retry_in_ms = delay.as_millis() as u64, "notification not delivered: {why}");
            let next = crate::now_ms() + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 4);
            if let Err(e) = state
                .db
                .call(move |s| s.notify_retry(id, &claim, next))
                .await
            {
                warn!("recording a failed notification failed: {e:#}");
            }
        }
    }
}

/// Queues a `test` notification for `sink` (`ccctl notify test NAME`).
pub async fn queue_test(state: &AppState, sink: &str, operator: &str) -> Result<String> {
    let Some(s) = state.settings.notify.iter().find(|s| s.name == sink) else {
        bail!("no sink {sink:?}");
    };
    let key = format!("test.{}", uuid::Uuid::new_v4());
    let now = crate::now_ms();
    let detail = format!("a test sent by {operator}");
    let text = body(
        s.format,
        &Notice {
            key: &key,
            sink,
            event: "test",
            recovered_from: None,
            hostname: "",
            entry: None,
            status: "test",
            exit_code: None,
            detail: Some(&detail),
            at_ms: now,
        },
    );
    let (sink, k) = (sink.to_owned(), key.clone());
    let max = state.settings.notify_tuning.queue_max;
    let queued = state
        .db
        .call(move |s| s.notify_enqueue_test(&sink, &text, &k, now, max))
        .await?;
    anyhow::ensure!(queued, "the notification queue is full");
    Ok(key)
}

/// The names of sinks, checked unique.
pub fn check_unique(sinks: &[Sink]) -> Result<()> {
    let mut seen = HashSet::new();
    for s in sinks {
        anyhow::ensure!(
            seen.insert(s.name.as_str()),
            "[[notify]] name {:?} is used twice",
            s.name
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_notification_per_change_of_state() {
        assert_eq!(transition("ok", "ok"), None);
        assert_eq!(
            transition("ok", "run_failed"),
            Some(Transition::Failing("run_failed"))
        );
        assert_eq!(transition("run_failed", "run_failed"), None);
        assert_eq!(
            transition("run_failed", "run_missed"),
            Some(Transition::Failing("run_missed"))
        );
        assert_eq!(
            transition("run_missed", "ok"),
            Some(Transition::Recovered("run_missed"))
        );
        // A state this listener does not know (written by a newer one) is
        // left without a recovery.
        assert_eq!(transition("something", "ok"), None);
    }

    #[test]
    fn events_map_to_states() {
        assert_eq!(
            classify("cron", "done", Some(0)),
            Some(("cron", None, "ok"))
        );
        assert_eq!(
            classify("cron", "done", Some(3)),
            Some(("cron", None, "run_failed"))
        );
        assert_eq!(
            classify("cron", "done", None),
            Some(("cron", None, "run_failed"))
        );
        assert_eq!(classify("cron", "skipped", Some(75)), None);
        assert_eq!(classify("job", "done", Some(1)), None);
        assert_eq!(
            classify("host", "offline", None),
            Some(("host", Some("connection"), "host_offline"))
        );
    }

    #[test]
    fn the_slack_body_is_one_text_line() {
        let n = Notice {
            key: "ev1.ops",
            sink: "ops",
            event: "recovered",
            recovered_from: Some("run_missed"),
            hostname: "web1",
            entry: Some("backup"),
            status: "done",
            exit_code: Some(0),
            detail: None,
            at_ms: 0,
        };
        let v: serde_json::Value = serde_json::from_str(&body(Format::Slack, &n)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"text": "CronCommander: web1 recovered from run_missed (entry backup), exit 0"})
        );
        let v: serde_json::Value = serde_json::from_str(&body(Format::Json, &n)).unwrap();
        assert_eq!(v["id"], "ev1.ops");
        assert_eq!(v["recoveredFrom"], "run_missed");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let t = Tuning {
            retry_base: Duration::from_secs(1),
            retry_cap: Duration::from_secs(10),
            ..Tuning::default()
        };
        let d: Vec<u64> = (1..=6).map(|a| t.backoff(a).as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 8, 10, 10]);
        assert_eq!(t.backoff(200).as_secs(), 10);
    }

    fn config(dir: &Path, url: &str) -> SinkConfig {
        let secret = dir.join("secret");
        std::fs::write(&secret, "0123456789abcdef-secret\n").unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        SinkConfig {
            name: "ops".into(),
            url: url.into(),
            events: vec!["run_failed".into()],
            hosts: None,
            secret_file: secret,
            format: None,
        }
    }

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!("cc-notify-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn every_refusal_of_a_sink_block() {
        let d = tmp();
        let ok = config(&d, "https://hooks.example/x?token=s3cret");
        let sink = Sink::from_config(&ok).unwrap();
        let shown = format!("{sink:?} {}", sink.shown_url());
        assert!(
            !shown.contains("s3cret") && !shown.contains("0123456789abcdef"),
            "{shown}"
        );
        let refused = |c: SinkConfig, why: &str| {
            let e = format!("{:#}", Sink::from_config(&c).unwrap_err());
            assert!(e.contains(why), "{e}");
            assert!(!e.contains("s3cret"), "{e}");
        };
        refused(config(&d, "ftp://h/x"), "http:// or https://");
        refused(config(&d, "/relative"), "http:// or https://");
        refused(config(&d, "not a url"), "not a URL");
        refused(
            SinkConfig {
                name: "a b".into(),
                ..ok.clone()
            },
            "name",
        );
        refused(
            SinkConfig {
                events: vec![],
                ..ok.clone()
            },
            "events is empty",
        );
        refused(
            SinkConfig {
                events: vec!["recovered".into()],
                ..ok.clone()
            },
            "unknown event",
        );
        refused(
            SinkConfig {
                hosts: Some("tag:".into()),
                ..ok.clone()
            },
            "hosts",
        );
        refused(
            SinkConfig {
                format: Some("xml".into()),
                ..ok.clone()
            },
            "format",
        );
        // The secret file: private, not too short, not missing.
        std::fs::set_permissions(
            &ok.secret_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
        refused(ok.clone(), "chmod 600");
        std::fs::write(&ok.secret_file, "short").unwrap();
        std::fs::set_permissions(
            &ok.secret_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        refused(ok.clone(), "at least 16");
        refused(
            SinkConfig {
                secret_file: d.join("none"),
                ..ok.clone()
            },
            "opening",
        );
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body() {
        let d = tmp();
        let sink = Sink::from_config(&config(&d, "http://127.0.0.1:1/")).unwrap();
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"0123456789abcdef-secret");
        let want = hex::encode(ring::hmac::sign(&key, b"{}").as_ref());
        assert_eq!(sink.signature(b"{}"), format!("sha256={want}"));
        let _ = std::fs::remove_dir_all(d);
    }
}
