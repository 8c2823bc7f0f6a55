//! `GET /reports`: stored reports, newest first, filtered by host or job,
//! a page at a time (`X-CC-Next-Before`), each report as it was stored
//! (the validated structure, re-serialised). Only reports of hosts the
//! operator's selector reaches are listed (another host's: an empty list,
//! as for a host with none).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::agents::scope_of;
use super::page::{MAX_PAGE_BYTES, PIECE_BYTES, join_json, json_response, paginate, stream_array};
use super::{ApiError, ApiResult, hostname_param};
use crate::auth::Operator;
use crate::store::ReportQuery;
use crate::{AppState, rfc3339_ms};

const MAX_REPORTS_LIMIT: u32 = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReportParams {
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

pub(super) async fn list_reports(
    State(state): State<Arc<AppState>>,
    axum::Extension(op): axum::Extension<Operator>,
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
    let scope = Arc::new(scope_of(&state, &op).await?);
    let rows = {
        let (q, scope) = (q.clone(), Arc::clone(&scope));
        state
            .db
            .call(move |s| s.report_page_in(&scope, &q))
            .await
            .map_err(ApiError::store)?
    };
    let (pieces, next) = paginate(&rows, limit as usize, MAX_PAGE_BYTES, PIECE_BYTES);
    let body = stream_array(pieces, move |high: i64, low: i64| {
        let (state, q, scope) = (Arc::clone(&state), q.clone(), Arc::clone(&scope));
        async move {
            let rows = state
                .db
                .call(move |s| s.reports_between(&q, high, low))
                .await?;
            let rows = rows.into_iter().filter(|r| scope.contains(&r.hostname));
            join_json(rows.filter_map(|r| {
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
