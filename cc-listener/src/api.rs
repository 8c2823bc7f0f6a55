//! The operator API under `/api/v1`: JSON in, JSON out, bearer-token auth.
//!
//! Errors are `{"error": MESSAGE, "field": NAME?}` with the status that fits:
//! 400 invalid input (naming the field), 401 missing or wrong token, 404
//! unknown agent or job, 413 body over 1 MiB, 405/404 for unknown routes.
//! `GET /api/v1/healthz` needs no token (for probes).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use cc_proto::Hostname;
use cc_proto::ids::TextError;
use cc_proto::sign::{self, CronStatement, ExecStatement, Signed};
use cc_proto::wire::{CronEntry, ExecuteJob, MAX_CRON_ENTRIES, Message};

/// `PUT /agents/{hostname}/cron`: a list, or an operator's signed one.
#[derive(Deserialize)]
#[serde(untagged)]
enum CronBody {
    List(Vec<CronEntry>),
    Signed { signed: Signed },
}

use crate::store::{
    AgentRow, EventFilter, EventRow, JobRow, JobStatus, NewJob, NewRun, ReportQuery, RunRow,
};
use crate::{AppState, now_ms, rfc3339_ms};

/// Largest request body.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
const MAX_REPORTS_LIMIT: u32 = 1000;

pub fn router(state: Arc<AppState>) -> Router {
    let authed = Router::new()
        .route("/agents", get(list_agents))
        .route("/agents/{hostname}/jobs", post(post_job))
        .route("/agents/{hostname}/cron", get(get_cron).put(put_cron))
        .route("/jobs/{job_id}", get(get_job))
        .route("/reports", get(list_reports))
        .route("/events", get(events))
        .route("/runs", post(post_run))
        .route("/runs/{run_id}", get(get_run))
        .route("/keys", get(list_keys).post(post_key))
        .route("/keys/{name}", delete(revoke_key))
        .route("/keys/{name}/tags", put(retag_key))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            require_token,
        ));
    Router::new()
        .nest("/api/v1", authed.route("/healthz", get(healthz)))
        .merge(crate::ui::router(Arc::clone(&state)))
        .route(
            "/metrics",
            get(crate::metrics::scrape).route_layer(middleware::from_fn_with_state(
                Arc::clone(&state),
                require_token,
            )),
        )
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<&'static str>,
}

impl ApiError {
    /// What went wrong, as the API would answer it.
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            field: None,
        }
    }

    fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            field: Some(field),
        }
    }

    /// A store failure answered by its kind: 409 conflict, 404 not found,
    /// 500 for a database this listener cannot read or that failed.
    fn store(e: anyhow::Error) -> Self {
        use crate::store::{ErrorKind, StoreError};
        match StoreError::classify(&e) {
            ErrorKind::Conflict => Self::new(StatusCode::CONFLICT, e.to_string()),
            ErrorKind::NotFound => Self::new(StatusCode::NOT_FOUND, e.to_string()),
            ErrorKind::Corrupt => {
                warn!("the database holds something unreadable: {e:#}");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the database holds something this listener cannot read; see the listener log",
                )
            }
            ErrorKind::Backend => Self::internal(e),
        }
    }

    fn internal(e: anyhow::Error) -> Self {
        warn!("internal error: {e:#}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; see the listener log",
        )
    }
}

impl From<TextError> for ApiError {
    fn from(e: TextError) -> Self {
        let field = match &e {
            TextError::Empty { field }
            | TextError::TooLong { field, .. }
            | TextError::Control { field, .. }
            | TextError::BadChar { field, .. }
            | TextError::BadStart { field, .. }
            | TextError::TooMany { field, .. }
            | TextError::Invalid { field, .. } => *field,
        };
        Self::invalid(field, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body<'a> {
            error: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            field: Option<&'static str>,
        }
        let mut resp = (
            self.status,
            Json(Body {
                error: &self.message,
                field: self.field,
            }),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

type ApiResult<T> = Result<T, ApiError>;

async fn require_token(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Compare digests in constant time: neither the token nor its length
    // leaks through timing.
    let ok = presented.is_some_and(|p| token_matches(&state, p));
    if !ok {
        return ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token")
            .into_response();
    }
    next.run(request).await
}

/// Whether `presented` is the operator token: digests compared in constant
/// time, so neither the token nor its length leaks through timing.
pub(crate) fn token_matches(state: &AppState, presented: &str) -> bool {
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(state.admin_token.as_bytes());
    bool::from(a.ct_eq(&b))
}

fn body_json<T: serde::de::DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> ApiResult<T> {
    let body = body.map_err(|r| {
        let status = r.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                format!("request body is over {MAX_BODY_BYTES} bytes"),
            )
        } else {
            ApiError::new(status, r.body_text())
        }
    })?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

fn hostname_param(raw: &str) -> ApiResult<Hostname> {
    Ok(Hostname::parse(raw)?)
}

/// 404 unless an agent with this hostname has registered (or a key is
/// bound to it).
async fn require_known(state: &AppState, host: &str) -> ApiResult<()> {
    let h = host.to_owned();
    let known = state
        .db
        .call(move |s| s.agent_known(&h))
        .await
        .map_err(ApiError::store)?;
    if known {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no agent {host:?} has registered"),
        ))
    }
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AgentView {
    pub(crate) hostname: String,
    pub(crate) os: String,
    pub(crate) arch: String,
    pub(crate) tags: Vec<String>,
    pub(crate) execution_mode: String,
    pub(crate) is_root: bool,
    pub(crate) connected: bool,
    /// The listener holding the agent's connection (several listeners
    /// sharing one database).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) listener: Option<String>,
    pub(crate) last_heartbeat: Option<String>,
    pub(crate) last_seen: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) warning: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cron_status: Option<Box<RawValue>>,
    /// Bytes the host's stored reports take (held to `report_quota_bytes`).
    pub(crate) report_bytes: i64,
    /// Reports refused since the listener started (quota), and the last
    /// reason.
    pub(crate) reports_refused: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) last_refusal: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentParams {
    limit: Option<u32>,
    /// The previous page's `X-CC-Next-After`.
    after: Option<String>,
}

/// Most agents one `GET /agents` page holds (also the default).
const MAX_AGENTS_LIMIT: u32 = 10_000;

pub(crate) fn agent_view(state: &AppState, row: AgentRow) -> AgentView {
    let l = state.hub.live(&row.hostname);
    let listener = row
        .listener
        .filter(|_| row.lease_ms.is_some_and(|ms| ms > crate::now_ms()));
    let held_elsewhere = listener.is_some();
    let last_seen = l
        .as_ref()
        .map_or(row.last_seen_ms, |l| l.last_seen_ms.max(row.last_seen_ms));
    let last_heartbeat = l.as_ref().map(|l| l.last_heartbeat_ms).filter(|&ms| ms > 0);
    let warning = (row.is_root && row.execution_mode == "user").then(|| {
        "agent runs as root (UID 0) in user mode: every job runs as root; run it as cc-agent-user".to_owned()
    });
    let (reports_refused, last_refusal) = state
        .refusals
        .get(&row.hostname)
        .map_or((0, None), |(n, why)| (n, Some(why)));
    AgentView {
        report_bytes: row.report_bytes,
        reports_refused,
        last_refusal,
        // Here, or held by a listener whose lease still runs.
        connected: l.is_some() || held_elsewhere,
        listener,
        last_heartbeat: last_heartbeat.map(rfc3339_ms),
        last_seen: rfc3339_ms(last_seen),
        warning,
        cron_status: row.cron_status.and_then(|t| RawValue::from_string(t).ok()),
        hostname: row.hostname,
        os: row.os,
        arch: row.arch,
        tags: row.tags,
        execution_mode: row.execution_mode,
        is_root: row.is_root,
    }
}

/// A JSON array streamed piece by piece: `fetch` gives each piece's
/// serialised items (an empty vector for an empty piece; an error ends the
/// body early, which the client sees as a broken response).
fn stream_array<K, F, Fut>(pieces: Vec<(K, K)>, fetch: F) -> axum::body::Body
where
    K: Send + 'static,
    F: Fn(K, K) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<Vec<u8>>> + Send,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    tokio::spawn(async move {
        if tx.send(Ok(Bytes::from_static(b"["))).await.is_err() {
            return;
        }
        let mut first = true;
        for (a, b) in pieces {
            let items = match fetch(a, b).await {
                Ok(items) => items,
                Err(e) => {
                    warn!("reading a page failed mid-way: {e:#}");
                    let _ = tx.send(Err(std::io::Error::other("reading failed"))).await;
                    return;
                }
            };
            if items.is_empty() {
                continue;
            }
            let mut buf = Vec::with_capacity(items.len() + 1);
            if !first {
                buf.push(b',');
            }
            first = false;
            buf.extend_from_slice(&items);
            // The client went away: stop reading.
            if tx.send(Ok(Bytes::from(buf))).await.is_err() {
                return;
            }
        }
        let _ = tx.send(Ok(Bytes::from_static(b"]"))).await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    axum::body::Body::from_stream(stream)
}

/// Items serialised and joined by commas.
fn join_json<T: Serialize>(items: impl IntoIterator<Item = T>) -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        serde_json::to_writer(&mut buf, &item)?;
    }
    Ok(buf)
}

fn json_response(body: axum::body::Body, cursor: Option<(&'static str, HeaderValue)>) -> Response {
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some((name, value)) = cursor {
        resp.headers_mut().insert(name, value);
    }
    resp
}

async fn list_agents(
    State(state): State<Arc<AppState>>,
    params: Result<Query<AgentParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(p) = params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let limit = p.limit.unwrap_or(MAX_AGENTS_LIMIT);
    if limit == 0 || limit > MAX_AGENTS_LIMIT {
        return Err(ApiError::invalid(
            "limit",
            format!("limit must be 1 to {MAX_AGENTS_LIMIT}"),
        ));
    }
    let after = p
        .after
        .as_deref()
        .map(hostname_param)
        .transpose()?
        .map(|h| h.to_string());
    let rows = state
        .db
        .call(move |s| s.agent_page(after.as_deref(), limit))
        .await
        .map_err(ApiError::store)?;
    let (pieces, next) = paginate(&rows, limit as usize, MAX_PAGE_BYTES, PIECE_BYTES);
    let cursor = next
        .map(|h| HeaderValue::from_str(&h).map(|v| ("x-cc-next-after", v)))
        .transpose()
        .map_err(|e| ApiError::internal(anyhow::anyhow!("cursor: {e}")))?;
    let body = stream_array(pieces, move |first: String, last: String| {
        let state = Arc::clone(&state);
        async move {
            let rows = state
                .db
                .call(move |s| s.agents_between(&first, &last))
                .await?;
            join_json(rows.into_iter().map(|r| agent_view(&state, r)))
        }
    });
    Ok(json_response(body, cursor))
}

/// A job: `command`, `args`, `timeout`; or, for a system-mode host, an
/// operator's `signed` statement, whose job id and argv it carries (any of
/// the other fields given must then say the same).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobRequest {
    command: Option<String>,
    args: Option<Vec<String>>,
    timeout: Option<u64>,
    signed: Option<Signed>,
}

/// A signed statement's text, checked as a relay can (the signature holds
/// for the key it names, the encoding is canonical, it is for this host);
/// whether the key is trusted is the host's to decide.
fn open_signed<T: Serialize + serde::de::DeserializeOwned>(
    signed: &Signed,
    label: &str,
    host: &str,
    statement_host: impl Fn(&T) -> &str,
) -> ApiResult<T> {
    let t: T = sign::open(signed, label).map_err(|e| ApiError::invalid("signed", e.to_string()))?;
    if !statement_host(&t).eq_ignore_ascii_case(host) {
        return Err(ApiError::invalid(
            "signed",
            format!(
                "the statement is for {:?}, not {host:?}",
                statement_host(&t)
            ),
        ));
    }
    Ok(t)
}

/// The execution mode `host` last registered with (`"user"`, `"system"`),
/// or `None` for a host not seen yet.
async fn agent_mode(state: &AppState, host: &str) -> ApiResult<Option<String>> {
    let h = host.to_owned();
    state
        .db
        .call(move |s| s.agent_mode(&h))
        .await
        .map_err(ApiError::store)
}

/// Root work (a signed job, run or cron list) for a host that registered
/// in user mode would run as the agent's own user, not root: refused,
/// naming the host and its mode, so an operator who asked for root never
/// silently gets something else. A host not seen yet is left to the
/// caller's own check.
async fn require_system_mode(state: &AppState, host: &str) -> ApiResult<()> {
    if agent_mode(state, host).await?.as_deref() == Some("user") {
        return Err(ApiError::invalid(
            "signed",
            format!(
                "{host} registered in user mode: root work there would run as the agent's own user, not root; turn on system mode on that host first (system-mode.md)"
            ),
        ));
    }
    Ok(())
}

/// This listener's signature for unsigned system-mode work, if it was
/// given a key and the host registered in system mode: `statement` gets
/// the window (`valid_secs` from now) and a fresh nonce.
async fn listener_signature<T: Serialize>(
    state: &AppState,
    host: &str,
    label: &str,
    valid_secs: i64,
    statement: impl FnOnce(String, String, String) -> T,
) -> ApiResult<Option<Signed>> {
    let Some(key) = state.settings.signing_key.clone() else {
        return Ok(None);
    };
    if agent_mode(state, host).await?.as_deref() != Some("system") {
        return Ok(None);
    }
    let (not_before, expires_at) = sign::window(cc_proto::Timestamp::now(), valid_secs);
    let statement = statement(not_before, expires_at, random_nonce()?);
    sign::sign(&statement, label, &key)
        .map(Some)
        .map_err(|e| ApiError::internal(e.into()))
}

fn random_nonce() -> ApiResult<String> {
    let mut r = [0u8; 16];
    getrandom::fill(&mut r)
        .map_err(|e| ApiError::internal(anyhow::anyhow!("no randomness: {e}")))?;
    Ok(sign::nonce(r))
}

/// A job's fields checked as the agent will check them: 400 naming what is
/// wrong.
fn job_spec(exec: &ExecuteJob) -> ApiResult<cc_proto::wire::JobSpec> {
    exec.validate().map_err(|e| match e {
        cc_proto::wire::InvalidPayload::Text(t) => ApiError::from(t),
        other => ApiError::new(StatusCode::BAD_REQUEST, other.to_string()),
    })
}

/// How long a queued job waits, in milliseconds.
fn queue_ttl_ms(state: &AppState) -> i64 {
    i64::try_from(state.settings.job_queue_ttl.as_millis()).unwrap_or(i64::MAX / 2)
}

/// This listener's signature (as stored JSON) on job `job_id` running
/// `spec` on `host`, when it signs and the host is in system mode.
async fn sign_job(
    state: &AppState,
    host: &str,
    job_id: &str,
    spec: &cc_proto::wire::JobSpec,
) -> ApiResult<Option<String>> {
    let valid_secs = queue_ttl_ms(state) / 1000;
    let signed = listener_signature(
        state,
        host,
        sign::EXEC_LABEL,
        valid_secs,
        |not_before, expires_at, nonce| ExecStatement {
            host: host.to_owned(),
            job_id: job_id.to_owned(),
            program: spec.command.program().to_owned(),
            args: spec.command.args().to_vec(),
            timeout: spec.timeout.secs(),
            not_before,
            expires_at,
            nonce,
        },
    )
    .await?;
    signed
        .map(|s| serde_json::to_string(&s))
        .transpose()
        .map_err(|e| ApiError::internal(e.into()))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JobAccepted {
    job_id: String,
    status: JobStatus,
}

async fn post_job(
    State(state): State<Arc<AppState>>,
    Path(hostname): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<JobAccepted>)> {
    let hostname = hostname_param(&hostname)?;
    let host = hostname.to_string();
    let req: JobRequest = body_json(body)?;
    let (exec, signed) = match req.signed {
        Some(signed) => {
            let st: ExecStatement =
                open_signed(&signed, sign::EXEC_LABEL, &host, |t: &ExecStatement| {
                    &t.host
                })?;
            let exec = st.job();
            let differs = req.command.is_some_and(|c| c != exec.command)
                || req.args.is_some_and(|a| a != exec.args)
                || req.timeout.is_some_and(|t| Some(t) != exec.timeout);
            if differs {
                return Err(ApiError::invalid(
                    "signed",
                    "command, args or timeout differ from the signed statement's",
                ));
            }
            require_system_mode(&state, &host).await?;
            (exec, Some(signed))
        }
        None => {
            let command = req
                .command
                .ok_or_else(|| ApiError::invalid("command", "command is required"))?;
            let exec = ExecuteJob {
                job_id: uuid::Uuid::new_v4().to_string(),
                command,
                args: req.args.unwrap_or_default(),
                timeout: req.timeout,
            };
            (exec, None)
        }
    };
    let spec = job_spec(&exec)?;
    let job_id = spec.id.to_string();
    require_known(&state, &host).await?;
    let now = now_ms();
    let signed = match signed {
        Some(s) => Some(serde_json::to_string(&s).map_err(|e| ApiError::internal(e.into()))?),
        None => sign_job(&state, &host, &job_id, &spec).await?,
    };
    let job = NewJob {
        job_id: job_id.clone(),
        hostname: host.clone(),
        command: spec.command.program().to_owned(),
        args: spec.command.args().to_vec(),
        timeout_secs: spec.timeout.secs(),
        created_ms: now,
        expires_ms: now + queue_ttl_ms(&state),
        signed,
    };
    // Queued first; the agent's connection takes it from the store as the
    // agent's window allows (`agents::Session::dispatch`). A job id used
    // before (a signed statement sent twice) is the store's conflict: 409.
    state
        .db
        .call(move |s| s.create_job(&job))
        .await
        .map_err(ApiError::store)?;
    state.hub.nudge(&host);
    let status = JobStatus::Queued;
    info!(hostname = %host, %job_id, %status, "job accepted");
    Ok((StatusCode::ACCEPTED, Json(JobAccepted { job_id, status })))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JobView {
    job_id: String,
    hostname: String,
    command: String,
    args: Vec<String>,
    timeout: u64,
    status: JobStatus,
    created_at: String,
    expires_at: String,
    sent_at: Option<String>,
    finished_at: Option<String>,
    report: Option<Box<RawValue>>,
}

fn job_view(row: JobRow) -> JobView {
    JobView {
        report: row.report.and_then(|t| RawValue::from_string(t).ok()),
        job_id: row.job_id,
        hostname: row.hostname,
        command: row.command,
        args: row.args,
        timeout: row.timeout_secs,
        status: row.status,
        created_at: rfc3339_ms(row.created_ms),
        expires_at: rfc3339_ms(row.expires_ms),
        sent_at: row.sent_ms.map(rfc3339_ms),
        finished_at: row.finished_ms.map(rfc3339_ms),
    }
}

pub(crate) async fn get_job(
    State(state): State<Arc<AppState>>,
    Path(job_id): Path<String>,
) -> ApiResult<Json<JobView>> {
    cc_proto::JobId::parse(&job_id)?;
    let id = job_id.clone();
    let row = state
        .db
        .call(move |s| s.get_job(&id))
        .await
        .map_err(ApiError::store)?;
    row.map(|r| Json(job_view(r)))
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no job {job_id:?}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportParams {
    hostname: Option<String>,
    #[serde(rename = "jobId")]
    job_id: Option<String>,
    limit: Option<u32>,
    /// The previous page's `X-CC-Next-Before`.
    before: Option<i64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReportView {
    hostname: String,
    job_id: String,
    kind: cc_proto::wire::ReportKind,
    received_at: String,
    report: Box<RawValue>,
}

/// A page of `GET /reports` holds at most this many bytes of reports (and
/// always at least one report); `X-CC-Next-Before` leads to the rest.
pub const MAX_PAGE_BYTES: u64 = 8 << 20;
/// A page is read from the store and sent in pieces of about this size, so
/// a request holds about two pieces in memory whatever the page's size.
const PIECE_BYTES: u64 = 1 << 20;

/// Cuts `rows` (id, size; newest first; up to `limit + 1`) into a page of
/// at most `limit` rows and `max_bytes` (at least one row), then into
/// pieces of about `piece` bytes. Returns the pieces as id ranges (high,
/// low) and the cursor for the next page if rows remain.
fn paginate<K: Clone>(
    rows: &[(K, u64)],
    limit: usize,
    max_bytes: u64,
    piece: u64,
) -> (Vec<(K, K)>, Option<K>) {
    let mut pieces: Vec<(K, K)> = Vec::new();
    let (mut page_bytes, mut piece_bytes) = (0u64, 0u64);
    let mut taken = 0usize;
    for (id, size) in rows.iter().take(limit) {
        let (id, size) = (id.clone(), *size);
        if taken > 0 && page_bytes.saturating_add(size) > max_bytes {
            break;
        }
        page_bytes = page_bytes.saturating_add(size);
        match pieces.last_mut() {
            Some(last) if piece_bytes.saturating_add(size) <= piece => {
                last.1 = id;
                piece_bytes += size;
            }
            _ => {
                pieces.push((id.clone(), id));
                piece_bytes = size;
            }
        }
        taken += 1;
    }
    let next = if rows.len() > taken {
        pieces.last().map(|p| p.1.clone())
    } else {
        None
    };
    (pieces, next)
}

async fn list_reports(
    State(state): State<Arc<AppState>>,
    params: Result<Query<ReportParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(p) = params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let hostname = p
        .hostname
        .as_deref()
        .map(hostname_param)
        .transpose()?
        .map(|h| h.to_string());
    if let Some(j) = &p.job_id {
        cc_proto::JobId::parse(j)?;
    }
    let limit = p.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_REPORTS_LIMIT {
        return Err(ApiError::invalid(
            "limit",
            format!("limit must be 1 to {MAX_REPORTS_LIMIT}"),
        ));
    }
    if p.before.is_some_and(|b| b < 1) {
        return Err(ApiError::invalid(
            "before",
            "before must be a positive report cursor",
        ));
    }
    let q = ReportQuery {
        hostname,
        job_id: p.job_id,
        limit,
        before: p.before,
    };
    let rows = {
        let q = q.clone();
        state
            .db
            .call(move |s| s.report_page(&q))
            .await
            .map_err(ApiError::store)?
    };
    let (pieces, next) = paginate(&rows, limit as usize, MAX_PAGE_BYTES, PIECE_BYTES);
    let body = stream_array(pieces, move |high: i64, low: i64| {
        let (state, q) = (Arc::clone(&state), q.clone());
        async move {
            let rows = state
                .db
                .call(move |s| s.reports_between(&q, high, low))
                .await?;
            join_json(rows.into_iter().filter_map(|r| {
                Some(ReportView {
                    report: RawValue::from_string(r.payload).ok()?,
                    hostname: r.hostname,
                    job_id: r.job_id,
                    kind: r.kind,
                    received_at: rfc3339_ms(r.received_ms),
                })
            }))
        }
    });
    Ok(json_response(
        body,
        next.map(|c| ("x-cc-next-before", HeaderValue::from(c))),
    ))
}

/// `POST /runs`: one job per matched host.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunRequest {
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    command: Option<String>,
    args: Option<Vec<String>>,
    timeout: Option<u64>,
    batch: Option<u32>,
    /// Root work an operator signed, one statement per host: the
    /// statements name the hosts, the job ids and the one command, so
    /// `hosts`, `tags`, `command`, `args` and `timeout` are not given.
    #[serde(default)]
    signed: Vec<Signed>,
}

/// Most hosts one run may reach.
const MAX_RUN_HOSTS: usize = 100_000;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RunJobView {
    pub(crate) hostname: String,
    pub(crate) job_id: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RunAccepted {
    pub(crate) run_id: String,
    pub(crate) jobs: Vec<RunJobView>,
}

pub(crate) async fn post_run(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<RunAccepted>)> {
    let req: RunRequest = body_json(body)?;
    if req.batch.is_some_and(|b| b == 0) {
        return Err(ApiError::invalid("batch", "batch must be at least 1"));
    }
    if !req.signed.is_empty() {
        return post_signed_run(&state, req).await;
    }
    if req.hosts.is_empty() && req.tags.is_empty() {
        return Err(ApiError::invalid("hosts", "give hosts, tags, or both"));
    }
    if req.hosts.len() > MAX_RUN_HOSTS {
        return Err(ApiError::invalid(
            "hosts",
            format!("at most {MAX_RUN_HOSTS} hosts"),
        ));
    }
    let mut hosts = req
        .hosts
        .iter()
        .map(|h| hostname_param(h).map(|h| h.to_string()))
        .collect::<ApiResult<Vec<String>>>()?;
    let tags: Vec<String> = cc_proto::Tag::parse_all(&req.tags)?
        .into_iter()
        .map(|t| t.to_string())
        .collect();
    let command = req
        .command
        .ok_or_else(|| ApiError::invalid("command", "command is required"))?;
    let spec = job_spec(&ExecuteJob {
        job_id: uuid::Uuid::new_v4().to_string(),
        command,
        args: req.args.unwrap_or_default(),
        timeout: req.timeout,
    })?;
    require_all_known(&state, &hosts).await?;
    if !tags.is_empty() {
        let t = tags.clone();
        let tagged = state
            .db
            .call(move |s| s.hosts_with_tags(&t))
            .await
            .map_err(ApiError::store)?;
        hosts.extend(tagged);
    }
    hosts.sort();
    hosts.dedup();
    if hosts.is_empty() {
        return Err(ApiError::invalid(
            "tags",
            format!("no host matches: no registered agent has every tag of {tags:?}"),
        ));
    }
    let now = now_ms();
    let queue_ttl_ms = queue_ttl_ms(&state);
    let run = NewRun {
        run_id: uuid::Uuid::new_v4().to_string(),
        command: spec.command.program().to_owned(),
        args: spec.command.args().to_vec(),
        timeout_secs: spec.timeout.secs(),
        batch: req.batch,
        selector: serde_json::json!({"hosts": req.hosts, "tags": tags}).to_string(),
        queue_ttl_ms,
        created_ms: now,
    };
    let mut jobs = Vec::with_capacity(hosts.len());
    for host in &hosts {
        let job_id = uuid::Uuid::new_v4().to_string();
        // System-mode hosts: signed here when this listener signs.
        let signed = sign_job(&state, host, &job_id, &spec).await?;
        jobs.push(NewJob {
            job_id,
            hostname: host.clone(),
            command: run.command.clone(),
            args: run.args.clone(),
            timeout_secs: run.timeout_secs,
            created_ms: now,
            expires_ms: now + queue_ttl_ms,
            signed,
        });
    }
    store_run(&state, run, jobs).await
}

/// 400 naming the first of `hosts` no agent has registered as.
async fn require_all_known(state: &AppState, hosts: &[String]) -> ApiResult<()> {
    for h in hosts {
        let host = h.clone();
        let known = state
            .db
            .call(move |s| s.agent_known(&host))
            .await
            .map_err(ApiError::store)?;
        if !known {
            return Err(ApiError::invalid(
                "hosts",
                format!("no agent {h:?} has registered"),
            ));
        }
    }
    Ok(())
}

/// A run of root work an operator signed: one statement per host, each
/// opened as a relay can (`open_signed`), all for the one command. The
/// statements' job ids are the jobs'; whether the key is trusted is each
/// host's helper's to decide.
async fn post_signed_run(
    state: &AppState,
    req: RunRequest,
) -> ApiResult<(StatusCode, Json<RunAccepted>)> {
    if !req.hosts.is_empty() || !req.tags.is_empty() {
        return Err(ApiError::invalid(
            "signed",
            "a signed run names its hosts in its statements: give no hosts or tags",
        ));
    }
    if req.command.is_some() || req.args.is_some() || req.timeout.is_some() {
        return Err(ApiError::invalid(
            "signed",
            "a signed run's command, args and timeout are its statements'",
        ));
    }
    if req.signed.len() > MAX_RUN_HOSTS {
        return Err(ApiError::invalid(
            "signed",
            format!("at most {MAX_RUN_HOSTS} statements"),
        ));
    }
    let now = now_ms();
    let queue_ttl_ms = queue_ttl_ms(state);
    let mut hosts = Vec::with_capacity(req.signed.len());
    let mut jobs: Vec<NewJob> = Vec::with_capacity(req.signed.len());
    for signed in &req.signed {
        let st: ExecStatement = sign::open(signed, sign::EXEC_LABEL)
            .map_err(|e| ApiError::invalid("signed", e.to_string()))?;
        let host = hostname_param(&st.host)?.to_string();
        let spec = job_spec(&st.job())?;
        if let Some(first) = jobs.first()
            && (first.command != spec.command.program()
                || first.args != spec.command.args()
                || first.timeout_secs != spec.timeout.secs())
        {
            return Err(ApiError::invalid(
                "signed",
                "every statement of a run must sign the same command, args and timeout",
            ));
        }
        if hosts.contains(&host) {
            return Err(ApiError::invalid(
                "signed",
                format!("two statements for {host:?}"),
            ));
        }
        hosts.push(host.clone());
        jobs.push(NewJob {
            job_id: spec.id.to_string(),
            hostname: host,
            command: spec.command.program().to_owned(),
            args: spec.command.args().to_vec(),
            timeout_secs: spec.timeout.secs(),
            created_ms: now,
            expires_ms: now + queue_ttl_ms,
            signed: Some(serde_json::to_string(signed).map_err(|e| ApiError::internal(e.into()))?),
        });
    }
    require_all_known(state, &hosts).await?;
    for host in &hosts {
        require_system_mode(state, host).await?;
    }
    // A job id used before: the store's conflict (409), in `store_run`.
    let first = &jobs[0];
    let run = NewRun {
        run_id: uuid::Uuid::new_v4().to_string(),
        command: first.command.clone(),
        args: first.args.clone(),
        timeout_secs: first.timeout_secs,
        batch: req.batch,
        selector: serde_json::json!({"hosts": hosts, "tags": [], "signed": true}).to_string(),
        queue_ttl_ms,
        created_ms: now,
    };
    store_run(state, run, jobs).await
}

/// Stores the run and its jobs in one transaction (with `batch`, all but
/// the first `batch` held), nudges the hosts that may start, answers 202.
async fn store_run(
    state: &AppState,
    run: NewRun,
    jobs: Vec<NewJob>,
) -> ApiResult<(StatusCode, Json<RunAccepted>)> {
    {
        let (run, jobs) = (run.clone(), jobs.clone());
        state
            .db
            .call(move |s| s.create_run(&run, &jobs))
            .await
            .map_err(ApiError::store)?;
    }
    for job in jobs
        .iter()
        .take(run.batch.map_or(usize::MAX, |b| b as usize))
    {
        state.hub.nudge(&job.hostname);
    }
    info!(run_id = %run.run_id, hosts = jobs.len(), batch = ?run.batch, "run accepted");
    Ok((
        StatusCode::ACCEPTED,
        Json(RunAccepted {
            run_id: run.run_id,
            jobs: jobs
                .into_iter()
                .map(|j| RunJobView {
                    hostname: j.hostname,
                    job_id: j.job_id,
                })
                .collect(),
        }),
    ))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RunHostView {
    hostname: String,
    job_id: String,
    status: JobStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_ms: Option<i64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RunView {
    run_id: String,
    command: String,
    args: Vec<String>,
    timeout: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    batch: Option<u32>,
    selector: serde_json::Value,
    created_at: String,
    /// Jobs per state (`held`, `queued`, `sent`, `done`, `lost`, `expired`).
    counts: std::collections::BTreeMap<JobStatus, usize>,
    /// Done jobs that exited 0, and those that did not.
    succeeded: usize,
    failed: usize,
    hosts: Vec<RunHostView>,
}

fn run_view(run: RunRow) -> RunView {
    let mut counts = std::collections::BTreeMap::new();
    let (mut succeeded, mut failed) = (0, 0);
    for j in &run.jobs {
        *counts.entry(j.status).or_insert(0) += 1;
        match j.exit_code {
            Some(0) => succeeded += 1,
            Some(_) => failed += 1,
            None => {}
        }
    }
    RunView {
        run_id: run.run_id,
        command: run.command,
        args: run.args,
        timeout: run.timeout_secs,
        batch: run.batch,
        selector: serde_json::from_str(&run.selector).unwrap_or_default(),
        created_at: rfc3339_ms(run.created_ms),
        counts,
        succeeded,
        failed,
        hosts: run
            .jobs
            .into_iter()
            .map(|j| RunHostView {
                hostname: j.hostname,
                job_id: j.job_id,
                status: j.status,
                exit_code: j.exit_code,
                duration_ms: j.duration_ms,
            })
            .collect(),
    }
}

pub(crate) async fn get_run(
    State(state): State<Arc<AppState>>,
    Path(run_id): Path<String>,
) -> ApiResult<Json<RunView>> {
    cc_proto::JobId::parse(&run_id)
        .map_err(|e| ApiError::invalid("runId", e.to_string().replacen("job id", "run id", 1)))?;
    let id = run_id.clone();
    let run = state
        .db
        .call(move |s| s.get_run(&id))
        .await
        .map_err(ApiError::store)?;
    run.map(|r| Json(run_view(r)))
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no run {run_id:?}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventParams {
    run: Option<String>,
    host: Option<String>,
    job: Option<String>,
    /// Where to resume, as `Last-Event-ID` (the header wins).
    since: Option<i64>,
}

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
    job_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    run_id: Option<String>,
    hostname: String,
    status: JobStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i64>,
}

/// `GET /events`: job state changes as Server-Sent Events, in commit
/// order, from `Last-Event-ID` (or `since`) on, filtered by run, host or
/// job. Each event's `id` is its place in the log: a client that reconnects
/// with the last id it saw misses nothing and sees nothing twice.
pub(crate) async fn events(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    params: Result<Query<EventParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    use axum::response::sse::{Event, KeepAlive, Sse};
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
    let watch = state.db.watch();
    let shutdown = state.shutdown.clone();
    struct Cursor {
        state: Arc<AppState>,
        filter: EventFilter,
        last: i64,
        buffer: std::collections::VecDeque<EventRow>,
        watch: tokio::sync::watch::Receiver<u64>,
        shutdown: tokio::sync::watch::Receiver<bool>,
        _permit: tokio::sync::SemaphorePermit<'static>,
    }
    let cursor = Cursor {
        state,
        filter,
        last,
        buffer: std::collections::VecDeque::new(),
        watch,
        shutdown,
        _permit: permit,
    };
    let stream = futures_util::stream::unfold(cursor, |mut c| async move {
        loop {
            if let Some(e) = c.buffer.pop_front() {
                c.last = e.id;
                let view = EventView {
                    id: e.id,
                    at: rfc3339_ms(e.at_ms),
                    job_id: e.job_id,
                    run_id: e.run_id,
                    hostname: e.hostname,
                    status: e.status,
                    exit_code: e.exit_code,
                };
                let event = Event::default()
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
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response())
}

async fn put_cron(
    State(state): State<Arc<AppState>>,
    Path(hostname): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Vec<CronEntry>>> {
    let hostname = hostname_param(&hostname)?;
    let host = hostname.to_string();
    // A list, or `{"signed": …}`: an operator's signed cron statement.
    let body: CronBody = body_json(body)?;
    let (entries, signed) = match body {
        CronBody::List(entries) => (entries, None),
        CronBody::Signed { signed } => {
            let st: CronStatement =
                open_signed(&signed, sign::CRON_LABEL, &host, |t: &CronStatement| {
                    &t.host
                })?;
            require_system_mode(&state, &host).await?;
            (st.entries, Some(signed))
        }
    };
    if entries.len() > MAX_CRON_ENTRIES {
        return Err(ApiError::invalid(
            "entries",
            format!("at most {MAX_CRON_ENTRIES} entries"),
        ));
    }
    let mut canonical = Vec::with_capacity(entries.len());
    let mut seen = std::collections::HashSet::new();
    for (i, entry) in entries.iter().enumerate() {
        let job = entry.validate().map_err(|e| {
            ApiError::invalid("entries", format!("entry {i} (id {:?}): {e}", entry.id))
        })?;
        if !seen.insert(job.id.clone()) {
            return Err(ApiError::invalid(
                "entries",
                format!("entry {i}: id {:?} appears twice", entry.id),
            ));
        }
        // Stored and pushed in canonical form: the schedule as our grammar
        // renders it, the command as the exact argv quoted.
        canonical.push(CronEntry {
            id: job.id.to_string(),
            schedule: job.schedule.to_string(),
            command: job.command.to_shell_line(),
        });
    }
    require_known(&state, &host).await?;
    let signed = match signed {
        Some(s) => Some(s),
        None => {
            let (label, valid) = (sign::CRON_LABEL, sign::MAX_VALIDITY_SECS);
            listener_signature(
                &state,
                &host,
                label,
                valid,
                |not_before, expires_at, nonce| CronStatement {
                    host: host.clone(),
                    generation: u64::try_from(now_ms()).unwrap_or(0),
                    entries: canonical.clone(),
                    not_before,
                    expires_at,
                    nonce,
                },
            )
            .await?
        }
    };
    {
        let (host, list) = (host.clone(), canonical.clone());
        let signed_text = signed
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| ApiError::internal(e.into()))?;
        state
            .db
            .call(move |s| s.set_cron(&host, &list, signed_text.as_deref(), now_ms()))
            .await
            .map_err(ApiError::store)?;
    }
    if let Ok(text) = Message::CronRefresh(canonical.clone()).to_json_signed(signed.as_ref()) {
        let pushed = state.hub.send(&host, text);
        info!(hostname = %host, entries = canonical.len(), pushed, "cron definitions stored");
    }
    Ok(Json(canonical))
}

async fn get_cron(
    State(state): State<Arc<AppState>>,
    Path(hostname): Path<String>,
) -> ApiResult<Json<Vec<CronEntry>>> {
    let host = hostname_param(&hostname)?.to_string();
    require_known(&state, &host).await?;
    let list = state
        .db
        .call(move |s| s.get_cron(&host))
        .await
        .map_err(ApiError::store)?;
    Ok(Json(list.map(|(entries, _)| entries).unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::paginate;

    /// Pages stop at the row limit or the byte budget, whichever comes
    /// first, but always hold one row; pieces stay within their size; the
    /// cursor is the last id sent, and only when rows remain.
    #[test]
    fn pages_are_cut_by_rows_and_by_bytes() {
        let rows: Vec<(i64, u64)> = (1..=6).rev().map(|id| (id, 10)).collect();
        // Rows first: 3 of 6, pieces of 20 bytes.
        assert_eq!(
            paginate(&rows, 3, 1000, 20),
            (vec![(6, 5), (4, 4)], Some(4))
        );
        // Bytes first: 30 bytes exactly fit 3 rows; 31 do not fit a 4th.
        assert_eq!(paginate(&rows, 6, 30, 100), (vec![(6, 4)], Some(4)));
        assert_eq!(paginate(&rows, 6, 39, 100), (vec![(6, 4)], Some(4)));
        assert_eq!(paginate(&rows, 6, 40, 100), (vec![(6, 3)], Some(3)));
        // Everything fits: no cursor. limit + 1 rows read means one more.
        assert_eq!(paginate(&rows, 6, 1000, 1000), (vec![(6, 1)], None));
        assert_eq!(paginate(&rows, 5, 1000, 1000), (vec![(6, 2)], Some(2)));
        // A row bigger than the budget still goes, alone.
        let big = [(9, 500), (8, 1)];
        assert_eq!(paginate(&big, 10, 100, 100), (vec![(9, 9)], Some(9)));
        // A piece exactly full, then a new one.
        assert_eq!(paginate(&rows, 6, 1000, 30), (vec![(6, 4), (3, 1)], None));
        assert_eq!(paginate::<i64>(&[], 10, 100, 100), (vec![], None));
        // Keys of any kind: hostnames, ascending.
        let hosts = [
            ("a".to_owned(), 10),
            ("b".to_owned(), 10),
            ("c".to_owned(), 10),
        ];
        assert_eq!(
            paginate(&hosts, 2, 1000, 1000),
            (vec![("a".to_owned(), "b".to_owned())], Some("b".to_owned()))
        );
    }
}

// ---- agent keys: `ccctl keys`, the same as `cc-listener keys` ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRequest {
    name: String,
    hostname: Option<String>,
    tags: Option<Vec<String>>,
}

/// Tags an operator gives a key, checked as an agent's are.
fn key_tags(tags: &[String]) -> ApiResult<Vec<String>> {
    cc_proto::Tag::parse_all(tags).map_err(|e| ApiError::invalid("tags", e.to_string()))?;
    Ok(crate::store::canonical_tags(tags))
}

/// `POST /keys` `{"name", "hostname"?, "tags"?}` → 201 `{"name",
/// "hostname", "tags", "key"}`: the key is in this answer only (the store
/// keeps its hash); 409 when the name, or the hostname's binding, is
/// taken. Without `tags`, the first registration's tags are the key's.
async fn post_key(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let req: KeyRequest = body_json(body)?;
    let (name, hostname) = crate::key_spec(&req.name, req.hostname.as_deref())
        .map_err(|(field, e)| ApiError::invalid(field, e))?;
    let tags = req.tags.as_deref().map(key_tags).transpose()?;
    let (n, h, t) = (name.clone(), hostname.clone(), tags.clone());
    let key = state
        .db
        .call(move |s| s.add_key_tagged(&n, h.as_deref(), t.as_deref(), now_ms()))
        .await
        .map_err(ApiError::store)?;
    info!(name = %name, hostname = hostname.as_deref().unwrap_or("-"), tags = ?tags, "agent key added through the API");
    let body = serde_json::json!({ "name": name, "hostname": hostname, "tags": tags, "key": key });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `GET /keys`: every key's name, bound hostname, creation time and state,
/// never its value.
async fn list_keys(State(state): State<Arc<AppState>>) -> ApiResult<Json<serde_json::Value>> {
    let keys = state
        .db
        .call(|s| s.list_keys())
        .await
        .map_err(ApiError::store)?;
    Ok(Json(serde_json::Value::Array(
        keys.into_iter()
            .map(|k| {
                serde_json::json!({
                    "name": k.name,
                    "hostname": k.hostname,
                    "tags": k.tags,
                    "created": rfc3339_ms(k.created_ms),
                    "revoked": k.revoked,
                })
            })
            .collect(),
    )))
}

/// `PUT /keys/{name}/tags` `["T", …]` → 200 `{"name", "tags"}`: the tags
/// the key's host may have, and is listed and selected by, from now on;
/// its agent's next registration must declare the same. 404 when no
/// active key has that name.
async fn retag_key(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let tags: Vec<String> = body_json(body)?;
    let tags = key_tags(&tags)?;
    let n = name.clone();
    let tags = state
        .db
        .call(move |s| s.retag_key(&n, &tags))
        .await
        .map_err(ApiError::store)?;
    info!(name = %name, tags = ?tags, "agent key retagged through the API");
    Ok(Json(serde_json::json!({ "name": name, "tags": tags })))
}

/// `DELETE /keys/{name}` → 204: the key is refused from now on and a live
/// connection made with it is closed at once; 404 when no active key has
/// that name.
async fn revoke_key(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let n = name.clone();
    // No active key of that name: the store's not-found, 404.
    state
        .db
        .call(move |s| s.revoke_key(&n, now_ms()))
        .await
        .map_err(ApiError::store)?;
    info!(name = %name, "agent key revoked through the API");
    crate::close_revoked(&state)
        .await
        .map_err(ApiError::store)?;
    Ok(StatusCode::NO_CONTENT)
}
