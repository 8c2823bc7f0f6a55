//! Notification sinks (`[[notify]]`): `GET /notify` lists them and the
//! queue, `POST /notify/{name}/test` queues a test through the same queue
//! (`ccctl notify test NAME`). Admin only: a sink's events name every host
//! it reaches. Never a secret, never a URL's query or user info.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tracing::info;

use super::{ApiError, ApiResult};
use crate::AppState;
use crate::auth::Operator;

/// `GET /notify` → `{"sinks": [{"name","url","events","hosts","format",
/// "queued"}], "queued"}`.
pub(super) async fn list_sinks(State(state): State<Arc<AppState>>) -> ApiResult<Response> {
    let depths = state
        .db
        .call(|s| s.notify_depths())
        .await
        .map_err(ApiError::store)?;
    let queued = |name: &str| {
        depths
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, d)| *d)
    };
    let sinks: Vec<_> = state
        .settings
        .notify
        .iter()
        .map(|s| {
            serde_json::json!({
                "name": s.name,
                "url": s.shown_url(),
                "events": s.events,
                "hosts": s.hosts.as_ref().map_or_else(|| "*".to_owned(), ToString::to_string),
                "format": match s.format {
                    crate::notify::Format::Json => "json",
                    crate::notify::Format::Slack => "slack",
                },
                "queued": queued(&s.name),
            })
        })
        .collect();
    let total: i64 = depths.iter().map(|(_, d)| d).sum();
    Ok(Json(serde_json::json!({ "sinks": sinks, "queued": total })).into_response())
}

/// `POST /notify/{name}/test` → 202 `{"sink", "idempotencyKey"}`; 404 for
/// a sink this listener does not have; 503 when the queue is full.
pub(super) async fn test_sink(
    State(state): State<Arc<AppState>>,
    axum::Extension(op): axum::Extension<Operator>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    if !state.settings.notify.iter().any(|s| s.name == name) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no such notification sink ([[notify]] name) in this listener's config",
        ));
    }
    super::audit::note_target(&name);
    let key = crate::notify::queue_test(&state, &name, &op.name)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")))?;
    info!(sink = %name, operator = %op.name, key = %key, "test notification queued");
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "sink": name, "idempotencyKey": key })),
    )
        .into_response())
}
