//! `GET /agents`: every agent the store knows, a page at a time (by
//! hostname, `X-CC-Next-After`), streamed piece by piece; each row joined
//! with what this listener's hub knows live (`agent_view`, which the
//! console's fleet and host pages use too). Only the hosts the operator's
//! selector reaches are listed; `scope_of`, `require_may_act` (403) and
//! `require_may_read` (404, as for an unknown host) are the checks every
//! handler that reads or acts on hosts makes.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::page::{MAX_PAGE_BYTES, PIECE_BYTES, join_json, json_response, paginate, stream_array};
use super::{ApiError, ApiResult, hostname_param};
use cc_proto::wire::CronHost;

use crate::auth::Operator;
use crate::store::{AgentRow, Scope};
use crate::{AppState, rfc3339_ms};

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
    /// What the agent last said of its cron daemon and time zone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cron_host: Option<CronHost>,
    /// Why the host's cron entries will not fire, when the agent said so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cron_warning: Option<String>,
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
pub(super) struct AgentParams {
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
    // The store has what the connection's holder last heard, written
    // before any listener's hub learns it: one source, whichever listener
    // holds the agent.
    let cron_host: Option<CronHost> = row
        .cron_host
        .as_deref()
        .and_then(|t| serde_json::from_str(t).ok());
    let cron_warning = cron_host
        .as_ref()
        .filter(|c| c.daemon.is_none())
        .map(|_| no_daemon_warning(row.cron_status.as_deref()));
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
        cron_host,
        cron_warning,
        hostname: row.hostname,
        os: row.os,
        arch: row.arch,
        tags: row.tags,
        execution_mode: row.execution_mode,
        is_root: row.is_root,
    }
}

/// The warning of a host whose agent says no cron daemon runs there,
/// counting the entries it has installed (`cron_status`, as stored).
fn no_daemon_warning(cron_status: Option<&str>) -> String {
    let installed = cron_status
        .and_then(|t| serde_json::from_str::<cc_proto::wire::CronStatus>(t).ok())
        .map_or(0, |s| s.installed.len());
    match installed {
        0 => "no cron daemon is running on this host: cron entries set for it will not fire; start it (Debian: systemctl enable --now cron)".to_owned(),
        n => format!("no cron daemon is running on this host: its {n} installed cron entries will not fire; start it (Debian: systemctl enable --now cron)"),
    }
}

/// The hosts `op` reaches: no query for `*`.
pub(crate) async fn scope_of(state: &AppState, op: &Operator) -> ApiResult<Scope> {
    if op.hosts.is_all() {
        return Ok(Scope::All);
    }
    let selector = op.hosts.clone();
    state
        .db
        .call(move |s| s.scope(&selector))
        .await
        .map_err(ApiError::store)
}

/// 403 unless `op`'s role may act and its selector reaches `host` (on
/// the host's bound tags): `what` says what it was refused.
pub(super) async fn require_may_act(
    state: &AppState,
    op: &Operator,
    host: &str,
    what: &str,
) -> ApiResult<()> {
    if !op.role.may_act() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("role {} may not {what}", op.role),
        ));
    }
    if op.hosts.is_all() || may_reach(state, op, host).await? {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        format!(
            "host {host:?} is outside your hosts selector ({}): you may not {what} there",
            op.hosts
        ),
    ))
}

/// 404, as for a host nobody registered, unless `op` may read `host`: a
/// host outside the selector does not show that it exists.
pub(super) async fn require_may_read(state: &AppState, op: &Operator, host: &str) -> ApiResult<()> {
    if op.hosts.is_all() || may_reach(state, op, host).await? {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no agent {host:?} has registered"),
    ))
}

/// Whether `op`'s selector reaches `host` on its bound tags.
async fn may_reach(state: &AppState, op: &Operator, host: &str) -> ApiResult<bool> {
    let h = host.to_owned();
    let tags = state
        .db
        .call(move |s| s.bound_tags(&h))
        .await
        .map_err(ApiError::store)?;
    Ok(op.may_read(host, &tags))
}

pub(super) async fn list_agents(
    State(state): State<Arc<AppState>>,
    axum::Extension(op): axum::Extension<Operator>,
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
    let scope = Arc::new(scope_of(&state, &op).await?);
    let rows = {
        let scope = Arc::clone(&scope);
        state
            .db
            .call(move |s| s.agent_page_in(&scope, after.as_deref(), limit))
            .await
            .map_err(ApiError::store)?
    };
    let (pieces, next) = paginate(&rows, limit as usize, MAX_PAGE_BYTES, PIECE_BYTES);
    let cursor = next
        .map(|h| HeaderValue::from_str(&h).map(|v| ("x-cc-next-after", v)))
        .transpose()
        .map_err(|e| ApiError::internal(anyhow::anyhow!("cursor: {e}")))?;
    let body = stream_array(pieces, move |first: String, last: String| {
        let (state, scope) = (Arc::clone(&state), Arc::clone(&scope));
        async move {
            let rows = state
                .db
                .call(move |s| s.agents_between(&first, &last))
                .await?;
            join_json(
                rows.into_iter()
                    .filter(|r| scope.contains(&r.hostname))
                    .map(|r| agent_view(&state, r)),
            )
        }
    });
    Ok(json_response(body, cursor))
}
