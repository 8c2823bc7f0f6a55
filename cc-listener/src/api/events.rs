//! `GET /events`: job state changes as Server-Sent Events, in commit
//! order, read from the store's `events` table (written by triggers in the
//! transaction that changes a job) and woken by the store's watch. At most
//! `MAX_EVENT_STREAMS` are open at once (503 beyond); each ends with the
//! listener's shutdown.
//!
//! Least privilege: a stream carries only events of hosts the operator's
//! selector reaches. Each event is one job on one host, so a run spanning
//! hosts shows its events for the reachable ones only (its other hosts'
//! events are dropped, their names never sent). Every
//! [`RECHECK`] the stream asks `auth::still_valid` again and ends when the
//! operator was revoked or expired, and reads the selector's scope again
//! (a host retagged in or out).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::agents::scope_of;
use super::{ApiError, ApiResult, hostname_param};
use crate::auth::Operator;
use crate::store::{EventFilter, EventRow, Scope};
use crate::{AppState, rfc3339_ms};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventParams {
    run: Option<String>,
    host: Option<String>,
    job: Option<String>,
    /// Where to resume, as `Last-Event-ID` (the header wins).
    since: Option<i64>,
}

/// How often an open stream asks whether its operator is still valid
/// (and reads its scope again): a revoked operator's stream ends within
/// this and one read.
const RECHECK: std::time::Duration = std::time::Duration::from_millis(400);

/// Event streams open at once; more are refused (503).
const MAX_EVENT_STREAMS: usize = 256;
static EVENT_STREAMS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_EVENT_STREAMS);

/// Event streams open now (for the metrics).
pub(crate) fn open_event_streams() -> usize {
    MAX_EVENT_STREAMS - EVENT_STREAMS.available_permits()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventView {
    id: i64,
    at: String,
    /// Left out for a job's event (what every event was before other
    /// kinds came).
    #[serde(skip_serializing_if = "is_job")]
    kind: String,
    job_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    run_id: Option<String>,
    hostname: String,
    status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

fn is_job(kind: &str) -> bool {
    kind == "job"
}

/// `GET /events`: job state changes as Server-Sent Events, in commit
/// order, from `Last-Event-ID` (or `since`) on, filtered by run, host or
/// job. Each event's `id` is its place in the log: a client that reconnects
/// with the last id it saw misses nothing and sees nothing twice.
pub(crate) async fn events(
    State(state): State<Arc<AppState>>,
    axum::Extension(op): axum::Extension<Operator>,
    headers: HeaderMap,
    params: Result<Query<EventParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    use axum::response::sse::{KeepAlive, Sse};
    let Query(p) = params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let last = match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|t| t.trim().parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .ok_or_else(|| {
                ApiError::invalid("Last-Event-ID", "Last-Event-ID must be an event id")
            })?,
        None => p.since.unwrap_or(0).max(0),
    };
    for (field, v) in [("run", &p.run), ("job", &p.job)] {
        if let Some(v) = v {
            cc_proto::JobId::parse(v).map_err(|e| {
                ApiError::invalid(field, e.to_string().replacen("job id", field, 1))
            })?;
        }
    }
    let filter = EventFilter {
        run_id: p.run,
        hostname: p
            .host
            .as_deref()
            .map(hostname_param)
            .transpose()?
            .map(|h| h.to_string()),
        job_id: p.job,
    };
    let permit = EVENT_STREAMS.try_acquire().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_EVENT_STREAMS} event streams are open already"),
        )
    })?;
    let scope = scope_of(&state, &op).await?;
    let watch = state.db.watch();
    let shutdown = state.shutdown.clone();
    let cursor = Cursor {
        state,
        op,
        scope,
        recheck_at: tokio::time::Instant::now() + RECHECK,
        filter,
        last,
        buffer: std::collections::VecDeque::new(),
        watch,
        shutdown,
        _permit: permit,
    };
    let stream = futures_util::stream::unfold(cursor, next_event);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response())
}

/// Where one open stream is: its operator and what it reaches, the last
/// event sent, the events read and not yet sent.
struct Cursor {
    state: Arc<AppState>,
    op: Operator,
    scope: Scope,
    recheck_at: tokio::time::Instant,
    filter: EventFilter,
    last: i64,
    buffer: std::collections::VecDeque<EventRow>,
    watch: tokio::sync::watch::Receiver<u64>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    _permit: tokio::sync::SemaphorePermit<'static>,
}

type SseEvent = Result<axum::response::sse::Event, std::io::Error>;

impl Cursor {
    /// Every [`RECHECK`]: whether the operator is still valid (`false`
    /// ends the stream), and its scope read again.
    async fn recheck(&mut self) -> bool {
        if tokio::time::Instant::now() < self.recheck_at {
            return true;
        }
        if !crate::auth::still_valid(&self.state, &self.op).await {
            return false;
        }
        match scope_of(&self.state, &self.op).await {
            Ok(s) => self.scope = s,
            Err(e) => {
                warn!("reading an operator's scope failed: {}", e.message());
                return false;
            }
        }
        self.recheck_at = tokio::time::Instant::now() + RECHECK;
        true
    }
}

/// The stream's next event for `c`'s operator, waiting for one; `None`
/// ends the stream (shutdown, a failed read, the operator no longer valid).
async fn next_event(mut c: Cursor) -> Option<(SseEvent, Cursor)> {
    loop {
        if !c.recheck().await {
            return None;
        }
        if let Some(e) = c.buffer.pop_front() {
            c.last = e.id;
            if !c.scope.contains(&e.hostname) {
                continue;
            }
            let view = EventView {
                id: e.id,
                at: rfc3339_ms(e.at_ms),
                kind: e.kind,
                job_id: e.job_id,
                run_id: e.run_id,
                hostname: e.hostname,
                status: e.status,
                exit_code: e.exit_code,
                detail: e.detail,
            };
            let event = axum::response::sse::Event::default()
                .id(view.id.to_string())
                .event("job")
                .json_data(&view)
                .map_err(|e| std::io::Error::other(e.to_string()));
            return Some((event, c));
        }
        // Marked seen before reading, so a change during the read wakes
        // the next wait.
        c.watch.borrow_and_update();
        let (after, f) = (c.last, c.filter.clone());
        match c.state.db.read(move |s| s.events(after, &f, 500)).await {
            Ok(rows) if !rows.is_empty() => {
                c.buffer.extend(rows);
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                warn!("reading events failed: {e:#}");
                return None;
            }
        }
        tokio::select! {
            r = c.watch.changed() => if r.is_err() { return None },
            _ = c.shutdown.changed() => return None,
            () = tokio::time::sleep_until(c.recheck_at) => {}
        }
    }
}
