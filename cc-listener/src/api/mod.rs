//! The operator API under `/api/v1`: JSON in, JSON out, bearer-token auth.
//!
//! Errors are `{"error": MESSAGE, "field": NAME?}` with the status that fits:
//! 400 invalid input (naming the field), 401 missing or wrong token, 404
//! unknown agent or job, 413 body over 1 MiB, 405/404 for unknown routes.
//! `GET /` redirects (303) to the console, `/ui/`.
//! `GET /api/v1/healthz` needs no token (for probes).
//!
//! This module holds what every resource shares: the [`router`], the
//! bearer-token middleware (`require_token`, digests compared in constant
//! time), [`ApiError`] (a store failure is answered from its kind,
//! `ApiError::store`: 409/404/500, never from message text) and the
//! extractors' checks (`body_json`, `hostname_param`, `require_known`).
//! One file per resource: `agents` (`GET /agents`), `jobs` (`POST
//! /agents/{hostname}/jobs`, `GET /jobs/{id}`), `cron`, `reports`, `runs`
//! (`POST /runs`, `GET /runs/{id}`), `events` (the SSE stream), `keys`;
//! `signing` (a relay's check of operators' statements, this listener's own
//! signature, the system-mode rule) and `page` (pages cut by rows and bytes,
//! streamed piece by piece) serve several of them.
//!
//! Invariants: every route but `healthz` is behind `require_token` (the
//! console reaches `get_run`, `get_job`, `events` and `post_run` behind its
//! session instead); no handler writes to storage but through a store call;
//! a body over [`MAX_BODY_BYTES`] is refused before it is parsed.

mod agents;
mod cron;
mod events;
mod jobs;
mod keys;
mod page;
mod reports;
mod runs;
mod signing;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::warn;

use cc_proto::Hostname;
use cc_proto::ids::TextError;

use crate::AppState;

pub(crate) use self::agents::agent_view;
use self::agents::list_agents;
use self::cron::{get_cron, put_cron};
pub(crate) use self::events::{events, open_event_streams};
pub(crate) use self::jobs::get_job;
use self::jobs::post_job;
use self::keys::{list_keys, post_key, retag_key, revoke_key};
pub use self::page::MAX_PAGE_BYTES;
use self::reports::list_reports;
pub(crate) use self::runs::{get_run, post_run};

/// Largest request body.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

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
        // A browser pointed at the operator address finds the console.
        .route("/", get(|| async { Redirect::to("/ui/") }))
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
    let Some(operator) = presented.and_then(|p| crate::auth::resolve(&state, p)) else {
        return ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token")
            .into_response();
    };
    let mut request = request;
    request.extensions_mut().insert(operator);
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
