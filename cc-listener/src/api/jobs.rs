//! `POST /agents/{hostname}/jobs` and `GET /jobs/{id}`: a job is checked
//! as the agent will check it (`job_spec`), queued in the store (never sent
//! from here: the host's own connection takes it, `agents::Session::dispatch`,
//! after `Hub::nudge`), and read back with its report.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tracing::info;

use cc_proto::sign::{self, ExecStatement, Signed};
use cc_proto::wire::ExecuteJob;

use super::agents::{require_may_act, require_may_read};
use super::signing::{open_signed, require_system_mode, sign_job};
use super::{ApiError, ApiResult, body_json, hostname_param, unknown_host};
use crate::auth::Operator;
use crate::store::{JobRow, JobStatus, NewJob};
use crate::{AppState, now_ms, rfc3339_ms};

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

/// A job's fields checked as the agent will check them: 400 naming what is
/// wrong.
pub(super) fn job_spec(exec: &ExecuteJob) -> ApiResult<cc_proto::wire::JobSpec> {
    exec.validate().map_err(|e| match e {
        cc_proto::wire::InvalidPayload::Text(t) => ApiError::from(t),
        other => ApiError::new(StatusCode::BAD_REQUEST, other.to_string()),
    })
}

/// How long a queued job waits, in milliseconds.
pub(super) fn queue_ttl_ms(state: &AppState) -> i64 {
    i64::try_from(state.settings.job_queue_ttl.as_millis()).unwrap_or(i64::MAX / 2)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct JobAccepted {
    job_id: String,
    status: JobStatus,
}

pub(super) async fn post_job(
    State(state): State<Arc<AppState>>,
    axum::Extension(op): axum::Extension<Operator>,
    Path(hostname): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<JobAccepted>)> {
    let hostname = hostname_param(&hostname)?;
    let host = hostname.to_string();
    require_may_act(&state, &op, &host, "run jobs").await?;
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
        submitter: Some(op.name),
    };
    // Queued first; the agent's connection takes it from the store as the
    // agent's window allows (`agents::Session::dispatch`). A job id used
    // before (a signed statement sent twice) is the store's conflict: 409.
    // A host no agent registered as, and no key names, is a 404, decided
    // by the same statement.
    let known = state
        .db
        .call(move |s| s.create_job_if_known(&job))
        .await
        .map_err(ApiError::store)?;
    if !known {
        return Err(unknown_host(&host));
    }
    state.hub.nudge(&host);
    super::audit::note_id(&job_id);
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
    /// The operator who submitted it (none before operators were named).
    submitter: Option<String>,
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
        submitter: row.submitter,
    }
}

/// `GET /jobs/{id}`: a job of a host outside the operator's selector is
/// 404, as one that does not exist.
pub(crate) async fn get_job(
    State(state): State<Arc<AppState>>,
    axum::Extension(op): axum::Extension<Operator>,
    Path(job_id): Path<String>,
) -> ApiResult<Json<JobView>> {
    cc_proto::JobId::parse(&job_id)?;
    let id = job_id.clone();
    let row = state
        .db
        .call(move |s| s.get_job(&id))
        .await
        .map_err(ApiError::store)?;
    let no_job = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no job {job_id:?}: is this a cron entry? use --host (ccctl job {job_id} --host HOST; GET /api/v1/agents/HOST/cron/{job_id}/runs)"
            ),
        )
    };
    let row = row.ok_or_else(no_job)?;
    require_may_read(&state, &op, &row.hostname)
        .await
        .map_err(|_| no_job())?;
    Ok(Json(job_view(row)))
}
