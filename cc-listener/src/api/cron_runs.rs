//! `GET /agents/{hostname}/cron/{id}/runs?limit=&before=`: the stored
//! reports of one cron entry on one host — its scheduled runs — newest
//! first, a page at a time (`X-CC-Next-Before`, as `GET /reports`). Each
//! item is a report as `GET /reports` lists it (`hostname`, `jobId`,
//! `kind`, `receivedAt`, `report`). An ad-hoc job that happens to share
//! the entry's id is not one of its runs and is left out. Least privilege
//! as `GET /agents/{hostname}/cron`: a host outside the operator's
//! selector is 404, as an unknown one.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderValue;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use cc_proto::wire::ReportKind;

use super::agents::require_may_read;
use super::page::{MAX_PAGE_BYTES, PIECE_BYTES, join_json, json_response, paginate, stream_array};
use super::{ApiError, ApiResult, hostname_param, require_known};
use crate::auth::Operator;
use crate::store::ReportQuery;
use crate::{AppState, rfc3339_ms};

/// Most runs one page holds; the default is 20.
const MAX_RUNS_LIMIT: u32 = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RunsParams {
    limit: Option<u32>,
    /// The previous page's `X-CC-Next-Before`.
    before: Option<i64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RunView {
    hostname: String,
    job_id: String,
    kind: ReportKind,
    received_at: String,
    report: Box<RawValue>,
}

pub(super) async fn cron_runs(
    State(state): State<Arc<AppState>>,
    axum::Extension(op): axum::Extension<Operator>,
    Path((hostname, id)): Path<(String, String)>,
    params: Result<Query<RunsParams>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(p) = params.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let host = hostname_param(&hostname)?.to_string();
    let id = cc_proto::JobId::parse(&id)?.to_string();
    let limit = p.limit.unwrap_or(20);
    if limit == 0 || limit > MAX_RUNS_LIMIT {
        return Err(ApiError::invalid(
            "limit",
            format!("limit must be 1 to {MAX_RUNS_LIMIT}"),
        ));
    }
    if p.before.is_some_and(|b| b < 1) {
        return Err(ApiError::invalid(
            "before",
            "before must be a positive report cursor",
        ));
    }
    require_may_read(&state, &op, &host).await?;
    require_known(&state, &host).await?;
    let q = ReportQuery {
        hostname: Some(host),
        job_id: Some(id),
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
            join_json(
                rows.into_iter()
                    .filter(|r| r.kind != ReportKind::Job)
                    .filter_map(|r| {
                        Some(RunView {
                            report: RawValue::from_string(r.payload).ok()?,
                            hostname: r.hostname,
                            job_id: r.job_id,
                            kind: r.kind,
                            received_at: rfc3339_ms(r.received_ms),
                        })
                    }),
            )
        }
    });
    Ok(json_response(
        body,
        next.map(|c| ("x-cc-next-before", HeaderValue::from(c))),
    ))
}
