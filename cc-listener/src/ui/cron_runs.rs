//! `/ui/hosts/{host}/cron/{id}`: a cron entry's runs on one host, newest
//! first (the host page links each entry here). The same reports as
//! `GET /api/v1/agents/{host}/cron/{id}/runs`; a host outside the
//! operator's selector is "not found", as one that does not exist.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::html;

use cc_proto::wire::ReportKind;

use super::pages::scope_of;
use super::session::Csrf;
use super::{error_page, internal, page};
use crate::auth::Operator;
use crate::store::ReportQuery;
use crate::{AppState, rfc3339_ms};

/// Runs the page shows.
const RUNS_SHOWN: u32 = 50;

pub(super) async fn cron_runs(
    State(state): State<Arc<AppState>>,
    axum::Extension(csrf): axum::Extension<Csrf>,
    axum::Extension(op): axum::Extension<Operator>,
    Path((raw_host, raw_id)): Path<(String, String)>,
) -> Response {
    let (Ok(h), Ok(id)) = (
        cc_proto::Hostname::parse(&raw_host),
        cc_proto::JobId::parse(&raw_id),
    ) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            Some(&csrf),
            "not a hostname and entry id",
        );
    };
    let (host, id) = (h.to_string(), id.to_string());
    let scope = match scope_of(&state, &op).await {
        Ok(s) => s,
        Err(e) => return internal(&csrf, &e),
    };
    if !scope.contains(&host) {
        return error_page(
            StatusCode::NOT_FOUND,
            Some(&csrf),
            &format!("no agent {host} has registered"),
        );
    }
    let q = ReportQuery {
        hostname: Some(host.clone()),
        job_id: Some(id.clone()),
        limit: RUNS_SHOWN,
        before: None,
    };
    let loaded = state
        .db
        .call(move |s| {
            let page = s.report_page(&q)?;
            match (
                page.first(),
                page.get(..page.len().min(RUNS_SHOWN as usize))
                    .and_then(<[_]>::last),
            ) {
                (Some(&(high, _)), Some(&(low, _))) => s.reports_between(&q, high, low),
                _ => Ok(Vec::new()),
            }
        })
        .await;
    let rows = match loaded {
        Ok(rows) => rows,
        Err(e) => return internal(&csrf, &e),
    };
    let runs: Vec<(i64, serde_json::Value)> = rows
        .into_iter()
        .filter(|r| r.kind != ReportKind::Job)
        .filter_map(|r| Some((r.received_ms, serde_json::from_str(&r.payload).ok()?)))
        .collect();
    let text = |r: &serde_json::Value, k: &str| r[k].as_str().unwrap_or("").to_owned();
    page(
        &format!("{id} on {host}"),
        Some(&csrf),
        html! {
            h1 { "Cron entry " (id) " on " a href={ "/ui/hosts/" (host) } { (host) } }
            p.muted { "Its scheduled runs, newest first (at most " (RUNS_SHOWN) "). Exit 75: skipped, the previous run still waited or ran." }
            @if runs.is_empty() { p.muted #no-runs { "no run reported yet" } } @else {
                div.scroll { table #entry-runs {
                    thead { tr { th { "Received" } th { "Started" } th { "Exit" } th { "ms" } th { "Waited (jitter)" } th { "Output" } } }
                    tbody {
                        @for (received, r) in &runs {
                            tr {
                                td { (rfc3339_ms(*received)) }
                                td { (text(r, "startTime")) }
                                td.(if r["exitCode"] == 0 { "ok" } else { "bad" }) { (r["exitCode"]) }
                                td { (r["durationMs"]) }
                                td { (r["waitedMs"].as_u64().map_or("—".to_owned(), |ms| format!("{ms} ms"))) }
                                td { details { summary { "stdout / stderr" }
                                    pre { (text(r, "stdout")) }
                                    pre { (text(r, "stderr")) }
                                } }
                            }
                        }
                    }
                } }
            }
        },
    )
}
