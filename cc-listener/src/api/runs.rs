//! `POST /runs` and `GET /runs/{id}`: one job per matched host (named,
//! or carrying every tag), or one per operator-signed statement, stored
//! with the run in one transaction (`store_run`); with `batch`, all but the
//! first `batch` are held, and the transaction that settles a job releases
//! the next.
//!
//! Least privilege: a run reaches only hosts the operator may act on. The
//! hosts it would reach (named, by tag, or in signed statements) are
//! computed first; if any is outside the operator's selector the whole run
//! is refused (403, naming how many), nothing queued, never narrowed. A
//! run is read (`GET /runs/{id}`) only by an operator whose selector
//! reaches every one of its hosts; for anyone else it is 404, as one that
//! does not exist (its selector and counts would tell of the others).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tracing::info;

use cc_proto::sign::{self, ExecStatement, Signed};
use cc_proto::wire::ExecuteJob;

use super::agents::scope_of;
use super::jobs::{job_spec, queue_ttl_ms};
use super::signing::{require_system_mode, sign_job};
use super::{ApiError, ApiResult, body_json, hostname_param};
use crate::auth::Operator;
use crate::store::{JobStatus, NewJob, NewRun, RunRow};
use crate::{AppState, now_ms, rfc3339_ms};

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
    axum::Extension(op): axum::Extension<Operator>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<RunAccepted>)> {
    let req: RunRequest = body_json(body)?;
    if req.batch.is_some_and(|b| b == 0) {
        return Err(ApiError::invalid("batch", "batch must be at least 1"));
    }
    if !req.signed.is_empty() {
        return post_signed_run(&state, &op, req).await;
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
    let named = hosts.clone();
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
    require_may_act_on_all(&state, &op, &hosts).await?;
    require_all_known(&state, &named).await?;
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
        submitter: Some(op.name.clone()),
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
            submitter: None,
        });
    }
    store_run(&state, run, jobs).await
}

/// 403 unless `op` may run jobs on every one of `hosts`: refused whole,
/// naming how many are outside its selector.
async fn require_may_act_on_all(
    state: &AppState,
    op: &Operator,
    hosts: &[String],
) -> ApiResult<()> {
    if !op.role.may_act() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("role {} may not run jobs", op.role),
        ));
    }
    if op.hosts.is_all() {
        return Ok(());
    }
    let scope = scope_of(state, op).await?;
    let outside = hosts.iter().filter(|h| !scope.contains(h)).count();
    if outside == 0 {
        return Ok(());
    }
    let total = hosts.len();
    let noun = if total == 1 { "host" } else { "hosts" };
    let verb = if outside == 1 { "is" } else { "are" };
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        format!(
            "{outside} of the {total} {noun} this run reaches {verb} outside your hosts selector ({}); nothing was queued",
            op.hosts
        ),
    ))
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
    op: &Operator,
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
        // No let-chain: the MSRV (1.85) has none.
        let differs = jobs.first().is_some_and(|first| {
            first.command != spec.command.program()
                || first.args != spec.command.args()
                || first.timeout_secs != spec.timeout.secs()
        });
        if differs {
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
            submitter: None,
        });
    }
    require_may_act_on_all(state, op, &hosts).await?;
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
        submitter: Some(op.name.clone()),
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
    super::audit::note_id(&run.run_id);
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
    /// The operator who submitted it.
    submitter: Option<String>,
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
        submitter: run.submitter,
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
    axum::Extension(op): axum::Extension<Operator>,
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
    let no_run = || ApiError::new(StatusCode::NOT_FOUND, format!("no run {run_id:?}"));
    let run = run.ok_or_else(no_run)?;
    let scope = scope_of(&state, &op).await?;
    if !run.jobs.iter().all(|j| scope.contains(&j.hostname)) {
        return Err(no_run());
    }
    Ok(Json(run_view(run)))
}
