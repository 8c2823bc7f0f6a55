//! Prometheus metrics, served at `GET /metrics` on the operator address
//! (bearer token, like the API): the OpenMetrics text format to a client
//! that asks for it (Prometheus does), else the Prometheus text format
//! (0.0.4), which older tools (`promtool check metrics`) read.
//!
//! Counters and histograms are kept here as things happen; gauges of
//! what is live (connected agents by mode, open jobs, queue depths, event
//! streams) are read at scrape time from the hub, the store and the writer,
//! so they cannot drift. Every label value is one of a fixed set of words
//! (the enums below): never a hostname, a job id or an error's text, so the
//! number of series is the same for ten agents or ten thousand.
//! `docs/listener.md` ("Metrics") lists every metric.

use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tracing::warn;

use crate::AppState;
use crate::store::JobStatus;

/// The content types [`scrape`] serves.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A label's closed set of values: an enum, its words, and every value
/// (each series exists from the start, at zero).
macro_rules! label_values {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $word:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vdoc])* $variant),+ }

        impl $name {
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $word),+ }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
                encoder.write_str(self.as_str())
            }
        }
    };
}

label_values! {
    /// Where a write to the store spends its time.
    WritePhase {
        /// Waiting in the writer's queue for its group to start.
        Queue => "queue",
        /// Waiting for this listener's writing connection.
        Connection => "connection",
        /// Its statements (on PostgreSQL, waits for other listeners' row
        /// locks included).
        Statements => "statements",
        /// The commit: the database's log written to disk.
        Commit => "commit",
    }
}

label_values! {
    /// An agent's `executionMode`.
    Mode { User => "user", System => "system" }
}

label_values! {
    /// How a job ended.
    Final { Done => "done", Lost => "lost", Expired => "expired" }
}

label_values! {
    /// What a stored report answers: a job, an entry of the host's cron
    /// list, or neither.
    ReportKind { Job => "job", Cron => "cron", Unmatched => "unmatched" }
}

label_values! {
    /// Why a report was not stored.
    ReportRefusal {
        /// The host's reports would take more than its byte quota.
        Quota => "quota",
        /// The host already has as many unmatched reports as it may keep.
        UnmatchedQuota => "unmatched_quota",
        /// The report failed validation (also counted as a refused message).
        Invalid => "invalid",
        /// Storing it failed (the agent sends it again).
        Error => "error",
    }
}

label_values! {
    /// Why a message from a registered agent was refused.
    WsRefusal {
        /// Not a JSON envelope with a type.
        Malformed => "malformed",
        /// A known type whose payload is missing or of the wrong shape.
        InvalidPayload => "invalid_payload",
        /// An `execution_report` that decoded but failed validation.
        InvalidReport => "invalid_report",
        /// A type agents do not send (a second `register`, `execute_job`...).
        UnexpectedType => "unexpected_type",
        Binary => "binary",
        /// Over the size limit: the connection is closed (1009).
        TooLarge => "too_large",
        /// A text frame that is not UTF-8: the connection is closed (1007).
        InvalidUtf8 => "invalid_utf8",
    }
}

label_values! {
    /// Why an agent connection was closed before it was served.
    ConnRefusal {
        /// Pushed out while silent to admit a newer connection when the
        /// budget of unregistered connections was full, or refused when
        /// every place was held by one that had spoken.
        Budget => "budget",
        /// Its source address already held its share of that budget.
        PerSource => "per_source",
        /// Its source spent its budget of connections that ended without
        /// a valid key.
        SourceFailing => "source_failing",
        /// No API key, or an unknown or revoked one.
        Auth => "auth",
        /// No valid `register` first, or none in time.
        Register => "register",
        /// The key belongs to another hostname, or the hostname to another key.
        KeyBinding => "key_binding",
        /// Registered, but the listener was at `max_connections`.
        MaxConnections => "max_connections",
        /// A valid key that registered too often (`registrations_per_key`).
        Reconnecting => "reconnecting",
    }
}

label_values! {
    /// Why the listener closed a connection to the operator address.
    OperatorClose {
        /// Accepted while `admin_max_connections` were open: closed at once.
        MaxConnections => "max_connections",
        /// No complete request head within `admin_header_timeout_ms`.
        HeaderTimeout => "header_timeout",
        /// Kept alive with nothing asked for `admin_idle_timeout_ms`.
        IdleTimeout => "idle_timeout",
    }
}

label_values! {
    /// A notification channel of the database shared by several listeners.
    Channel {
        /// A job became queued (the payload is its hostname).
        Jobs => "jobs",
        /// A transaction changed jobs' states: event streams read.
        Events => "events",
    }
}

label_values! {
    /// Why a scheduled run was missed (`schedules::Reason`).
    MissedReason {
        HostOffline => "host_offline",
        NoCronDaemon => "no_cron_daemon",
        None => "none",
    }
}

impl From<crate::schedules::Reason> for MissedReason {
    fn from(r: crate::schedules::Reason) -> Self {
        match r {
            crate::schedules::Reason::HostOffline => Self::HostOffline,
            crate::schedules::Reason::NoCronDaemon => Self::NoCronDaemon,
            crate::schedules::Reason::None => Self::None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct MissedLabel {
    pub reason: MissedReason,
}

/// The job states that are not final, as the `state` label of
/// `croncommander_jobs_open`.
const OPEN: [JobStatus; 3] = [JobStatus::Held, JobStatus::Queued, JobStatus::Sent];

impl EncodeLabelValue for JobStatus {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: WritePhase,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ModeLabel {
    pub mode: Mode,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct FinalLabel {
    pub state: Final,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OpenLabel {
    pub state: JobStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: ReportKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReportRefusalLabel {
    pub reason: ReportRefusal,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct WsRefusalLabel {
    pub reason: WsRefusal,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ConnRefusalLabel {
    pub reason: ConnRefusal,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OperatorCloseLabel {
    pub reason: OperatorClose,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ChannelLabel {
    pub channel: Channel,
}

/// Every metric of the listener, in one registry of its own (no global
/// state: a test can run several listeners in one process).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    agents_connected: Family<ModeLabel, Gauge>,
    agents_root_in_user_mode: Gauge,
    agents_without_cron_daemon: Gauge,
    jobs_finished: Family<FinalLabel, Counter>,
    jobs_open: Family<OpenLabel, Gauge>,
    job_duration: Histogram,
    reports_stored: Family<KindLabel, Counter>,
    reports_refused: Family<ReportRefusalLabel, Counter>,
    store_commit: Histogram,
    store_commit_group: Histogram,
    store_write_queue: Gauge,
    store_write_phase: Family<PhaseLabel, Histogram, fn() -> Histogram>,
    store_write_retries: Counter,
    db_lock_waiters: Gauge,
    agent_outbound_queued: Gauge,
    ws_refused: Family<WsRefusalLabel, Counter>,
    connections_refused: Family<ConnRefusalLabel, Counter>,
    operator_closed: Family<OperatorCloseLabel, Counter>,
    event_streams_open: Gauge,
    doorbell_connected: Gauge,
    doorbell_connections: Counter,
    doorbell_notifications: Family<ChannelLabel, Counter>,
    notifications_sent: Counter,
    notification_failures: Counter,
    notifications_given_up: Counter,
    notifications_dropped: Counter,
    notify_queue: Gauge,
    scheduled_missed: Family<MissedLabel, Counter>,
    scheduled_skipped: Counter,
    schedules_tracked: Gauge,
}

/// Registers fields of `$m` in `$r`, each under its name and help (and
/// unit, where one is given in brackets), in the order given: the
/// exposition's.
macro_rules! register {
    ($r:ident, $m:ident: $($field:ident $([$unit:ident])? $name:literal $help:literal)+) => {
        $( register!(@one $r, $m.$field, $name, $help $(, $unit)?); )+
    };
    (@one $r:ident, $metric:expr, $name:literal, $help:literal) => {
        $r.register($name, $help, $metric.clone())
    };
    (@one $r:ident, $metric:expr, $name:literal, $help:literal, $unit:ident) => {
        $r.register_with_unit($name, $help, Unit::$unit, $metric.clone())
    };
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let m = Self {
            registry: Registry::default(),
            agents_connected: Family::default(),
            agents_root_in_user_mode: Gauge::default(),
            agents_without_cron_daemon: Gauge::default(),
            jobs_finished: Family::default(),
            jobs_open: Family::default(),
            // 50 ms to 4 h: jobs range from a quick check to a backup.
            job_duration: Histogram::new([
                0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
                14400.0,
            ]),
            reports_stored: Family::default(),
            reports_refused: Family::default(),
            // 0.25 ms to about 4 s.
            store_commit: Histogram::new(exponential_buckets(0.00025, 2.0, 15)),
            // 1 to 512 (`store::MAX_GROUP`).
            store_commit_group: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            store_write_queue: Gauge::default(),
            store_write_phase: Family::new_with_constructor(phase_histogram),
            store_write_retries: Counter::default(),
            db_lock_waiters: Gauge::default(),
            agent_outbound_queued: Gauge::default(),
            ws_refused: Family::default(),
            connections_refused: Family::default(),
            operator_closed: Family::default(),
            event_streams_open: Gauge::default(),
            doorbell_connected: Gauge::default(),
            doorbell_connections: Counter::default(),
            doorbell_notifications: Family::default(),
            notifications_sent: Counter::default(),
            notification_failures: Counter::default(),
            notifications_given_up: Counter::default(),
            notifications_dropped: Counter::default(),
            notify_queue: Gauge::default(),
            scheduled_missed: Family::default(),
            scheduled_skipped: Counter::default(),
            schedules_tracked: Gauge::default(),
        };
        Self::register(&mut r, &m);
        Self::create_series(&m);
        Self { registry: r, ..m }
    }

    /// Every metric, in the order of the exposition.
    fn register(r: &mut Registry, m: &Self) {
        register! { r, m:
            agents_connected "croncommander_agents_connected"
                "Registered agents connected now, by executionMode"
            agents_root_in_user_mode "croncommander_agents_root_in_user_mode"
                "Connected agents that run as root in user mode (jobs run as root, unsigned)"
            agents_without_cron_daemon "croncommander_agents_without_cron_daemon"
                "Connected agents whose host runs no cron daemon (their cron entries do not fire)"
            jobs_finished "croncommander_jobs_finished"
                "Jobs that reached a final state: done (a report settled it), lost (no report in time), expired (never sent)"
            jobs_open "croncommander_jobs_open"
                "Jobs not yet in a final state, by state (held in a run's batch, queued, sent)"
            job_duration [Seconds] "croncommander_job_duration"
                "Run time of each job a report settled, as the agent reported it"
            reports_stored "croncommander_reports_stored"
                "Reports stored, by what they answer (duplicates not counted)"
            reports_refused "croncommander_reports_refused"
                "Reports not stored (the agent keeps them and sends them again), by reason"
            store_commit [Seconds] "croncommander_store_commit"
                "Time of each group commit of the store's writer (the transaction and its fsync)"
            store_commit_group "croncommander_store_commit_group_size"
                "Writes (reports, job hand-overs, registrations, connection ends) committed together in one group"
            store_write_queue "croncommander_store_write_queue"
                "Writes waiting for the store's writer now"
            store_write_phase [Seconds] "croncommander_store_write_phase"
                "Time of each write transaction by phase: queue (a grouped write waiting for its group), connection (waiting for this listener's writing connection), statements (round trips, and on PostgreSQL waits for other listeners' row locks), commit (the log written to disk)"
            store_write_retries "croncommander_store_write_retries"
                "PostgreSQL write transactions rolled back by the database because they met another (a deadlock) and run again"
            db_lock_waiters "croncommander_db_lock_waiters"
                "PostgreSQL: sessions of this database waiting for a lock now (sampled when the metrics are read); 0 on SQLite"
            agent_outbound_queued "croncommander_agent_outbound_queued"
                "Messages waiting in connected agents' outbound queues now, all agents together"
            ws_refused "croncommander_ws_messages_refused"
                "Messages from registered agents refused (dropped, or the connection closed), by reason"
            connections_refused "croncommander_connections_refused"
                "Agent connections closed before they were served, by reason"
            operator_closed "croncommander_operator_connections_closed"
                "Operator-address connections the listener closed for a limit, by reason"
            event_streams_open "croncommander_event_streams_open"
                "Operator event streams (GET /api/v1/events) open now"
            doorbell_connected "croncommander_doorbell_connected"
                "1 while this listener listens for the shared database's notifications (PostgreSQL), else 0"
            doorbell_connections "croncommander_doorbell_connections"
                "Notification connections opened to the shared database (each followed by a reconciliation from the tables)"
            doorbell_notifications "croncommander_doorbell_notifications"
                "Notifications received from the shared database, by channel"
            notifications_sent "croncommander_notifications_sent"
                "Webhook notifications ([[notify]]) delivered (answered 2xx) by this listener"
            notification_failures "croncommander_notification_failures"
                "Webhook deliveries that failed (no answer in time, a connection error, a non-2xx answer); each is retried with backoff"
            notifications_given_up "croncommander_notifications_given_up"
                "Webhook notifications dropped after notify_max_attempts failed deliveries (or whose sink is no longer configured)"
            notifications_dropped "croncommander_notifications_dropped"
                "Notifications not queued because the queue held notify_queue_max rows"
            notify_queue "croncommander_notify_queue"
                "Webhook notifications queued now (all sinks, all listeners of the database)"
            scheduled_missed "croncommander_scheduled_runs_missed"
                "Scheduled runs of cron entries with no report by their due time + jitter offset + grace, recorded by this listener, by the reason it could see"
            scheduled_skipped "croncommander_scheduled_runs_skipped"
                "Scheduled runs reported skipped (exit 75: the previous run still held the entry's lock)"
            schedules_tracked "croncommander_scheduled_entries_tracked"
                "Cron entries (host, entry) whose scheduled runs this listener tracks now"
        }
    }

    /// Every series from the start: a rate over a series that appears
    /// with its first event misses that event.
    fn create_series(m: &Self) {
        for &mode in Mode::ALL {
            let _ = m.agents_connected.get_or_create(&ModeLabel { mode });
        }
        for &phase in WritePhase::ALL {
            let _ = m.store_write_phase.get_or_create(&PhaseLabel { phase });
        }
        for &state in Final::ALL {
            let _ = m.jobs_finished.get_or_create(&FinalLabel { state });
        }
        for state in OPEN {
            let _ = m.jobs_open.get_or_create(&OpenLabel { state });
        }
        for &kind in ReportKind::ALL {
            let _ = m.reports_stored.get_or_create(&KindLabel { kind });
        }
        for &reason in ReportRefusal::ALL {
            let _ = m
                .reports_refused
                .get_or_create(&ReportRefusalLabel { reason });
        }
        for &reason in WsRefusal::ALL {
            let _ = m.ws_refused.get_or_create(&WsRefusalLabel { reason });
        }
        for &reason in ConnRefusal::ALL {
            let _ = m
                .connections_refused
                .get_or_create(&ConnRefusalLabel { reason });
        }
        for &reason in OperatorClose::ALL {
            let _ = m
                .operator_closed
                .get_or_create(&OperatorCloseLabel { reason });
        }
        for &reason in MissedReason::ALL {
            let _ = m.scheduled_missed.get_or_create(&MissedLabel { reason });
        }
        for &channel in Channel::ALL {
            let _ = m
                .doorbell_notifications
                .get_or_create(&ChannelLabel { channel });
        }
    }

    /// A scheduled run recorded missed.
    pub fn scheduled_missed(&self, reason: crate::schedules::Reason) {
        self.scheduled_missed
            .get_or_create(&MissedLabel {
                reason: reason.into(),
            })
            .inc();
    }

    /// A scheduled run reported skipped.
    pub fn scheduled_skipped(&self) {
        self.scheduled_skipped.inc();
    }

    /// Entries the missed-run tracker holds now.
    pub fn schedules_tracked(&self, n: usize) {
        self.schedules_tracked
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The notification connection opened (`true`) or lost (`false`).
    pub fn doorbell(&self, connected: bool) {
        if connected {
            self.doorbell_connections.inc();
        }
        self.doorbell_connected.set(i64::from(connected));
    }

    /// Whether the notification connection is open now.
    pub fn doorbell_up(&self) -> bool {
        self.doorbell_connected.get() == 1
    }

    pub fn notification(&self, channel: Channel) {
        self.doorbell_notifications
            .get_or_create(&ChannelLabel { channel })
            .inc();
    }

    /// A job settled by its first report, which says it ran `duration_ms`.
    pub fn notification_sent(&self) {
        self.notifications_sent.inc();
    }

    pub fn notification_failed(&self) {
        self.notification_failures.inc();
    }

    pub fn notification_given_up(&self) {
        self.notifications_given_up.inc();
    }

    pub fn notifications_dropped(&self, n: usize) {
        self.notifications_dropped.inc_by(n as u64);
    }

    pub fn job_done(&self, duration_ms: u64) {
        self.jobs_finished
            .get_or_create(&FinalLabel { state: Final::Done })
            .inc();
        self.job_duration.observe(duration_ms as f64 / 1000.0);
    }

    /// What one sweep marked lost and expired.
    pub fn jobs_swept(&self, lost: usize, expired: usize) {
        for (state, n) in [(Final::Lost, lost), (Final::Expired, expired)] {
            self.jobs_finished
                .get_or_create(&FinalLabel { state })
                .inc_by(n as u64);
        }
    }

    /// A new report stored, of `kind`.
    pub fn report_stored(&self, kind: cc_proto::wire::ReportKind) {
        use cc_proto::wire::ReportKind as Stored;
        let kind = match kind {
            Stored::Job => ReportKind::Job,
            Stored::Cron => ReportKind::Cron,
            Stored::Unmatched => ReportKind::Unmatched,
        };
        self.reports_stored.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn report_refused(&self, reason: ReportRefusal) {
        self.reports_refused
            .get_or_create(&ReportRefusalLabel { reason })
            .inc();
    }

    pub fn ws_refused(&self, reason: WsRefusal) {
        self.ws_refused
            .get_or_create(&WsRefusalLabel { reason })
            .inc();
    }

    pub fn connection_refused(&self, reason: ConnRefusal) {
        self.connections_refused
            .get_or_create(&ConnRefusalLabel { reason })
            .inc();
    }

    pub fn operator_connection_closed(&self, reason: OperatorClose) {
        self.operator_closed
            .get_or_create(&OperatorCloseLabel { reason })
            .inc();
    }

    /// One group commit of the store's writer: how long, how many writes.
    pub fn commit(&self, took: Duration, group: usize, waited: Duration) {
        self.store_commit.observe(took.as_secs_f64());
        self.store_commit_group.observe(group as f64);
        self.write_phase(WritePhase::Queue, waited);
    }

    /// A write transaction's `phase` took `took`.
    pub fn write_phase(&self, phase: WritePhase, took: Duration) {
        self.store_write_phase
            .get_or_create(&PhaseLabel { phase })
            .observe(took.as_secs_f64());
    }

    /// The store's timings ([`crate::store::Store::observe_writes`]).
    pub fn store_observer(self: &Arc<Self>) -> crate::store::WriteObserver {
        let m = Arc::clone(self);
        Arc::new(move |phase, took| match phase {
            crate::store::WritePhase::Connection => m.write_phase(WritePhase::Connection, took),
            crate::store::WritePhase::Statements => m.write_phase(WritePhase::Statements, took),
            crate::store::WritePhase::Commit => m.write_phase(WritePhase::Commit, took),
            crate::store::WritePhase::Retried => {
                m.store_write_retries.inc();
            }
        })
    }

    /// The registry in the OpenMetrics text format.
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// 50 µs to about 1.6 s.
fn phase_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

/// The OpenMetrics exposition `open` in the Prometheus text format: the
/// same samples; a counter's family is named as its samples (`_total`), and
/// there is no `# UNIT` or `# EOF`.
pub fn to_prometheus_text(open: &str) -> String {
    let counters: std::collections::HashSet<&str> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open.len() + 16 * counters.len());
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?.split_once(' ')?)));
        match meta {
            Some((p, (name, rest))) if counters.contains(name) => {
                let _ = writeln!(out, "{p}{name}_total {rest}");
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// `GET /metrics`: the gauges read now, then everything encoded, in the
/// format the client asked for.
pub(crate) async fn scrape(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let m = &state.metrics;
    let live = state.hub.census();
    for (mode, n) in [(Mode::User, live.user), (Mode::System, live.system)] {
        m.agents_connected.get_or_create(&ModeLabel { mode }).set(n);
    }
    m.agents_root_in_user_mode.set(live.root_in_user_mode);
    m.agents_without_cron_daemon.set(live.no_cron_daemon);
    m.agent_outbound_queued.set(live.outbound_queued);
    m.store_write_queue
        .set(i64::try_from(state.writer.queued()).unwrap_or(i64::MAX));
    m.event_streams_open
        .set(i64::try_from(crate::api::open_event_streams()).unwrap_or(i64::MAX));
    // A read that wakes no event stream.
    let open = state
        .db
        .read(|s| {
            OPEN.into_iter()
                .map(|st| Ok((st, s.count_jobs(st)?)))
                .collect()
        })
        .await;
    let open: Vec<(JobStatus, i64)> = match open {
        Ok(v) => v,
        Err(e) => {
            warn!("metrics: counting open jobs failed: {e:#}");
            return (StatusCode::INTERNAL_SERVER_ERROR, "counting jobs failed\n").into_response();
        }
    };
    for (state, n) in open {
        m.jobs_open.get_or_create(&OpenLabel { state }).set(n);
    }
    match state.db.read(|s| s.lock_waiters()).await {
        Ok(n) => {
            m.db_lock_waiters.set(n);
        }
        Err(e) => warn!("metrics: counting lock waits failed: {e:#}"),
    }
    if !state.settings.notify.is_empty() {
        match state.db.read(|s| s.notify_depths()).await {
            Ok(d) => {
                m.notify_queue.set(d.iter().map(|(_, n)| n).sum());
            }
            Err(e) => warn!("metrics: counting queued notifications failed: {e:#}"),
        }
    }
    let Ok(body) = m.encode() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n").into_response();
    };
    let open_metrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if open_metrics {
        ([(header::CONTENT_TYPE, OPENMETRICS)], body).into_response()
    } else {
        let text = to_prometheus_text(&body);
        ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], text).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `# TYPE name type` of every family, from the encoded registry.
    fn families(text: &str) -> Vec<(String, String)> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| {
                let (name, ty) = l.split_once(' ').unwrap();
                (name.to_owned(), ty.to_owned())
            })
            .collect()
    }

    /// Names follow Prometheus' conventions: one prefix, snake case,
    /// counters' samples end `_total`, times are in seconds and say so,
    /// no other unit of time anywhere.
    #[test]
    fn every_metric_name_follows_the_conventions() {
        let text = Metrics::new().encode().unwrap();
        let fams = families(&text);
        assert_eq!(fams.len(), 30, "{text}");
        for (name, ty) in &fams {
            assert!(name.starts_with("croncommander_"), "{name}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name}"
            );
            for bad in ["_ms", "milli", "micro", "_secs", "_total_"] {
                assert!(!name.contains(bad), "{name}");
            }
            let samples: Vec<&str> = text
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| l.split(['{', ' ']).next().unwrap())
                .filter(|s| {
                    s.strip_prefix(name.as_str()).is_some_and(|rest| {
                        ["", "_total", "_bucket", "_sum", "_count", "_created"].contains(&rest)
                    })
                })
                .collect();
            assert!(!samples.is_empty(), "{name} has no sample");
            match ty.as_str() {
                "counter" => {
                    assert!(
                        !name.ends_with("_total"),
                        "{name}: the family name has no _total"
                    );
                    assert!(
                        samples.iter().all(|s| s.ends_with("_total")),
                        "{name}: {samples:?}"
                    );
                }
                "gauge" => {
                    assert!(!name.ends_with("_total"), "{name}: a gauge is not a _total");
                    assert!(samples.iter().all(|s| s == name), "{name}: {samples:?}");
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        assert!(
                            samples.iter().any(|s| s.ends_with(suffix)),
                            "{name}{suffix}"
                        );
                    }
                }
                other => panic!("{name}: unexpected type {other}"),
            }
        }
        // Times are histograms in seconds, with their unit declared.
        for timed in [
            "croncommander_job_duration_seconds",
            "croncommander_store_commit_seconds",
        ] {
            assert!(
                fams.contains(&(timed.to_owned(), "histogram".to_owned())),
                "{timed}"
            );
            assert!(text.contains(&format!("# UNIT {timed} seconds")), "{timed}");
        }
        // Anything that measures a time is one of them.
        for (name, _) in &fams {
            if ["duration", "latency", "time", "commit"]
                .iter()
                .any(|w| name.contains(w))
                && !name.ends_with("_group_size")
            {
                assert!(name.ends_with("_seconds"), "{name}");
            }
        }
    }

    /// docs/listener.md's "Metrics" table lists every metric, with its
    /// type and every label value, and no metric that does not exist.
    #[test]
    fn the_documentation_lists_every_metric() {
        let doc = include_str!("../../docs/listener.md");
        let text = to_prometheus_text(&Metrics::new().encode().unwrap());
        let fams = families(&text);
        for (name, ty) in &fams {
            let row = doc
                .lines()
                .find(|l| l.starts_with(&format!("| `{name}` |")))
                .unwrap_or_else(|| panic!("{name} is not in docs/listener.md"));
            assert!(row.contains(&format!("| {ty} |")), "{name}: {row}");
            for line in text.lines().filter(|l| l.starts_with(&format!("{name}{{"))) {
                let labels = line.split_once('{').unwrap().1.split_once('}').unwrap().0;
                for pair in labels.split(',').filter(|p| !p.starts_with("le=")) {
                    let (k, v) = pair.split_once('=').unwrap();
                    assert!(row.contains(&format!("`{k}`")), "{name}: label {k}");
                    assert!(
                        row.contains(&format!("`{}`", v.trim_matches('"'))),
                        "{name}: {v}"
                    );
                }
            }
        }
        let documented = doc
            .lines()
            .filter(|l| l.starts_with("| `croncommander_"))
            .count();
        assert_eq!(documented, fams.len());
    }

    /// The Prometheus text format: the same samples, counters' families
    /// named `_total`, no OpenMetrics-only lines.
    #[test]
    fn the_prometheus_text_format_has_the_same_samples() {
        let m = Metrics::new();
        m.jobs_swept(2, 0);
        m.job_done(1500);
        let open = m.encode().unwrap();
        let text = to_prometheus_text(&open);
        let samples = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(samples(&open), samples(&text));
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE croncommander_jobs_finished_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP croncommander_jobs_finished_total Jobs that"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE croncommander_job_duration_seconds histogram\n"),
            "{text}"
        );
        assert!(text.contains("croncommander_jobs_finished_total{state=\"lost\"} 2\n"));
    }

    /// Every label value is one of the closed sets above: whatever
    /// happens, no hostname, id or message becomes a label value.
    #[test]
    fn label_values_are_words_of_closed_sets() {
        let m = Metrics::new();
        m.job_done(1500);
        m.jobs_swept(2, 3);
        m.report_stored(cc_proto::wire::ReportKind::Job);
        m.report_stored(cc_proto::wire::ReportKind::Unmatched);
        m.report_refused(ReportRefusal::Quota);
        m.ws_refused(WsRefusal::Binary);
        m.connection_refused(ConnRefusal::Auth);
        m.operator_connection_closed(OperatorClose::HeaderTimeout);
        m.commit(Duration::from_millis(3), 7, Duration::from_millis(1));
        m.doorbell(true);
        m.notification(Channel::Jobs);
        let text = m.encode().unwrap();
        let mut allowed: Vec<&str> = Vec::new();
        allowed.extend(Mode::ALL.iter().map(|v| v.as_str()));
        allowed.extend(Final::ALL.iter().map(|v| v.as_str()));
        allowed.extend(OPEN.iter().map(|v| v.as_str()));
        allowed.extend(ReportKind::ALL.iter().map(|v| v.as_str()));
        allowed.extend(ReportRefusal::ALL.iter().map(|v| v.as_str()));
        allowed.extend(WsRefusal::ALL.iter().map(|v| v.as_str()));
        allowed.extend(ConnRefusal::ALL.iter().map(|v| v.as_str()));
        allowed.extend(OperatorClose::ALL.iter().map(|v| v.as_str()));
        allowed.extend(Channel::ALL.iter().map(|v| v.as_str()));
        allowed.extend(MissedReason::ALL.iter().map(|v| v.as_str()));
        allowed.extend(WritePhase::ALL.iter().map(|v| v.as_str()));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((_, rest)) = line.split_once('{') else {
                continue;
            };
            let labels = rest.split_once('}').unwrap().0;
            for pair in labels.split(',') {
                let (k, v) = pair.split_once('=').unwrap();
                let v = v.trim_matches('"');
                if k == "le" {
                    assert!(v == "+Inf" || v.parse::<f64>().is_ok(), "{line}");
                } else {
                    assert!(
                        ["mode", "state", "kind", "reason", "channel", "phase"].contains(&k),
                        "{line}: label {k}"
                    );
                    assert!(allowed.contains(&v), "{line}: value {v}");
                }
            }
        }
        assert!(
            text.contains("croncommander_reports_stored_total{kind=\"unmatched\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("croncommander_jobs_finished_total{state=\"expired\"} 3"),
            "{text}"
        );
    }
}
