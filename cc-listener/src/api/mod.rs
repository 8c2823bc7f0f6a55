//! The operator API under `/api/v1`: JSON in, JSON out, bearer-token auth.
//!
//! Errors are `{"error": MESSAGE, "field": NAME?}` with the status that fits:
//! 400 invalid input (naming the field), 401 missing or wrong token, 404
//! unknown agent or job, 413 body over 1 MiB, 405/404 for unknown routes.
//! `GET /` redirects (303) to the console, `/ui/`.
//! `GET /api/v1/healthz` needs no token (for probes).
//!
//! This module holds what every resource shares: the [`router`], the
//! table of routes and the least role each needs ([`ROUTES`],
//! `role_allows`), the bearer-token middleware (`require_token`: the
//! token's operator, then its role against the table), [`ApiError`] (a store failure is answered from its kind,
//! `ApiError::store`: 409/404/500, never from message text) and the
//! extractors' checks (`body_json`, `hostname_param`, `require_known`).
//! One file per resource: `agents` (`GET /agents`), `jobs` (`POST
//! /agents/{hostname}/jobs`, `GET /jobs/{id}`), `cron`, `reports`, `runs`
//! (`POST /runs`, `GET /runs/{id}`), `events` (the SSE stream), `keys`,
//! `operators`, `audit` (the audit row of every write, login and refusal:
//! `audit::record`, layered on the whole router; and `GET /audit`);
//! `signing` (a relay's check of operators' statements, this listener's own
//! signature, the system-mode rule) and `page` (pages cut by rows and bytes,
//! streamed piece by piece) serve several of them.
//!
//! Invariants: every route but `healthz` is behind `require_token` (the
//! console reaches `get_run`, `get_job`, `events` and `post_run` behind its
//! session instead); every route is in [`ROUTES`], the one place its role
//! is decided; every request that is not a read, and every refusal, is an
//! audit row; no handler writes to storage but through a store call;
//! a body over [`MAX_BODY_BYTES`] is refused before it is parsed.

mod agents;
pub(crate) mod audit;
mod cron;
mod cron_runs;
mod events;
mod fleet;
mod jobs;
mod keys;
mod notify;
mod operators;
mod page;
mod reports;
mod runs;
mod signing;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
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
pub(crate) use self::fleet::{CronHealth, cron_health};
use self::fleet::{cron_status, get_fleet, plan_fleet, put_fleet};
pub(crate) use self::jobs::get_job;
use self::jobs::post_job;
use self::keys::{list_keys, post_key, retag_key, revoke_key};
use self::operators::{list_operators, post_operator, revoke_operator};
pub use self::page::MAX_PAGE_BYTES;
use self::reports::list_reports;
pub(crate) use self::runs::{get_run, post_run};

/// Largest request body.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

use crate::auth::Role;

/// Every route the operator address serves — method, route template, and
/// the least role that may call it (`None`: no token or session needed) —
/// the one place roles are decided. `require_token` and the console's
/// `require_session` refuse (403) a role below it, and a route missing
/// from this table for everyone; `tests::every_route_is_in_the_table`
/// calls each and fails when the router and the table differ.
///
/// Viewer: every read of hosts, jobs, runs, reports, events, cron lists and
/// the metrics (counts only: no hostname, id or message is a label).
/// Operator: also jobs, runs and cron lists. Admin: also agent keys,
/// operators and the audit log (it names every operator's actions on
/// every host: more than a scoped operator may read).
pub const ROUTES: &[(&str, &str, Option<Role>)] = &[
    ("GET", "/api/v1/healthz", None),
    ("GET", "/api/v1/agents", Some(Role::Viewer)),
    (
        "POST",
        "/api/v1/agents/{hostname}/jobs",
        Some(Role::Operator),
    ),
    ("GET", "/api/v1/agents/{hostname}/cron", Some(Role::Viewer)),
    (
        "PUT",
        "/api/v1/agents/{hostname}/cron",
        Some(Role::Operator),
    ),
    (
        "GET",
        "/api/v1/agents/{hostname}/cron/{id}/runs",
        Some(Role::Viewer),
    ),
    ("GET", "/api/v1/fleet/cron", Some(Role::Viewer)),
    ("PUT", "/api/v1/fleet/cron", Some(Role::Operator)),
    ("POST", "/api/v1/fleet/cron/plan", Some(Role::Operator)),
    ("GET", "/api/v1/cron/status", Some(Role::Viewer)),
    ("GET", "/api/v1/jobs/{job_id}", Some(Role::Viewer)),
    ("GET", "/api/v1/reports", Some(Role::Viewer)),
    ("GET", "/api/v1/events", Some(Role::Viewer)),
    ("POST", "/api/v1/runs", Some(Role::Operator)),
    ("GET", "/api/v1/runs/{run_id}", Some(Role::Viewer)),
    ("GET", "/api/v1/keys", Some(Role::Admin)),
    ("POST", "/api/v1/keys", Some(Role::Admin)),
    ("DELETE", "/api/v1/keys/{name}", Some(Role::Admin)),
    ("PUT", "/api/v1/keys/{name}/tags", Some(Role::Admin)),
    ("GET", "/api/v1/operators", Some(Role::Admin)),
    ("POST", "/api/v1/operators", Some(Role::Admin)),
    ("DELETE", "/api/v1/operators/{name}", Some(Role::Admin)),
    ("GET", "/api/v1/audit", Some(Role::Admin)),
    ("GET", "/api/v1/audit/verify", Some(Role::Admin)),
    ("GET", "/api/v1/notify", Some(Role::Admin)),
    ("POST", "/api/v1/notify/{name}/test", Some(Role::Admin)),
    ("GET", "/metrics", Some(Role::Viewer)),
    ("GET", "/", None),
    ("GET", "/ui", None),
    ("GET", "/ui/login", None),
    ("POST", "/ui/login", None),
    ("GET", "/ui/static/app.js", None),
    ("GET", "/ui/static/app.css", None),
    ("GET", "/ui/", Some(Role::Viewer)),
    ("GET", "/ui/hosts/{host}", Some(Role::Viewer)),
    ("GET", "/ui/hosts/{host}/cron/{id}", Some(Role::Viewer)),
    ("GET", "/ui/runs", Some(Role::Viewer)),
    ("GET", "/ui/runs/{id}", Some(Role::Viewer)),
    ("GET", "/ui/runs/{id}/json", Some(Role::Viewer)),
    ("GET", "/ui/jobs/{id}", Some(Role::Viewer)),
    ("GET", "/ui/jobs/{id}/json", Some(Role::Viewer)),
    ("GET", "/ui/events", Some(Role::Viewer)),
    ("GET", "/ui/new", Some(Role::Operator)),
    ("POST", "/ui/new", Some(Role::Operator)),
    ("POST", "/ui/logout", Some(Role::Viewer)),
];

/// Whether `role` may call `method` on the route `template`: `Err` with
/// the reason when not (a role too low, or a route not in [`ROUTES`]).
pub(crate) fn role_allows(method: &str, template: Option<&str>, role: Role) -> Result<(), String> {
    // HEAD is served by the GET handler.
    let method = if method == "HEAD" { "GET" } else { method };
    let need = template.and_then(|t| {
        ROUTES
            .iter()
            .find(|(m, p, _)| *m == method && *p == t)
            .map(|(.., r)| r)
    });
    match need {
        None => {
            warn!(method, route = ?template, "a route missing from api::ROUTES was refused");
            Err("this route is not in the listener's table of routes".into())
        }
        Some(None) => Ok(()),
        Some(Some(need)) if role >= *need => Ok(()),
        Some(Some(need)) => Err(format!(
            "your role ({role}) may not do this: it needs {need}"
        )),
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let authed = Router::new()
        .route("/agents", get(list_agents))
        .route("/agents/{hostname}/jobs", post(post_job))
        .route("/agents/{hostname}/cron", get(get_cron).put(put_cron))
        .route(
            "/agents/{hostname}/cron/{id}/runs",
            get(cron_runs::cron_runs),
        )
        .route("/fleet/cron", get(get_fleet).put(put_fleet))
        .route("/fleet/cron/plan", post(plan_fleet))
        .route("/cron/status", get(cron_status))
        .route("/jobs/{job_id}", get(get_job))
        .route("/reports", get(list_reports))
        .route("/events", get(events))
        .route("/runs", post(post_run))
        .route("/runs/{run_id}", get(get_run))
        .route("/keys", get(list_keys).post(post_key))
        .route("/keys/{name}", delete(revoke_key))
        .route("/keys/{name}/tags", put(retag_key))
        .route("/operators", get(list_operators).post(post_operator))
        .route("/operators/{name}", delete(revoke_operator))
        .route("/audit", get(audit::list_audit))
        .route("/audit/verify", get(audit::verify_audit))
        .route("/notify", get(notify::list_sinks))
        .route("/notify/{name}/test", post(notify::test_sink))
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
        // After routing: it sees each request's route template.
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            audit::record,
        ))
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
    template: Option<MatchedPath>,
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
    audit::note_operator(&operator.name);
    let template = template.as_ref().map(MatchedPath::as_str);
    if let Err(why) = role_allows(request.method().as_str(), template, operator.role) {
        return ApiError::new(StatusCode::FORBIDDEN, why).into_response();
    }
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
        Err(unknown_host(host))
    }
}

/// 404: no agent registered as `host`, and no key names it.
fn unknown_host(host: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no agent {host:?} has registered"),
    )
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The `(method, path)` of every `.route(PATH, METHODS…)` call in a
    /// router's source, with `prefix` on those between `from` and `to`.
    fn routes_in(source: &str, prefix: &str, from: &str, to: &str) -> BTreeSet<(String, String)> {
        let source = &source[..source.find("#[cfg(test)]").unwrap_or(source.len())];
        let (start, end) = (
            source.find(from).unwrap_or(0),
            source.find(to).unwrap_or(source.len()),
        );
        let mut found = BTreeSet::new();
        for (at, _) in source.match_indices(".route(") {
            let rest = &source[at + ".route(".len()..];
            let q = rest.find('"').unwrap();
            let path = &rest[q + 1..q + 1 + rest[q + 1..].find('"').unwrap()];
            // The call's arguments: up to the parenthesis that closes it.
            let mut depth = 1;
            let args: String = rest
                .chars()
                .take_while(|c| {
                    depth += match c {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    depth > 0
                })
                .collect();
            let path = if (start..end).contains(&at) {
                format!("{prefix}{path}")
            } else {
                path.to_owned()
            };
            let mut any = false;
            for m in ["get", "post", "put", "delete", "patch"] {
                let call = format!("{m}(");
                let hit = args.match_indices(&call).any(|(i, _)| {
                    i == 0 || !args[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_')
                });
                if hit {
                    found.insert((m.to_uppercase(), path.clone()));
                    any = true;
                }
            }
            assert!(any, "no method found in .route({path:?}, {args})");
        }
        found
    }

    /// A route added to a router without an entry in [`ROUTES`] (or an
    /// entry left behind) fails here: axum cannot list its routes, so the
    /// routers' sources are read instead.
    #[test]
    fn every_route_is_in_the_table() {
        let mut served = routes_in(
            include_str!("mod.rs"),
            "/api/v1",
            "let authed",
            ".merge(crate::ui::router",
        );
        served.extend(routes_in(include_str!("../ui/mod.rs"), "", "", ""));
        let table: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|(m, p, _)| ((*m).to_owned(), (*p).to_owned()))
            .collect();
        assert_eq!(served, table);
    }

    #[test]
    fn roles_are_checked_against_the_table_and_unknown_routes_refused() {
        assert!(role_allows("GET", Some("/api/v1/agents"), Role::Viewer).is_ok());
        assert!(role_allows("HEAD", Some("/api/v1/agents"), Role::Viewer).is_ok());
        let no = role_allows("POST", Some("/api/v1/runs"), Role::Viewer).unwrap_err();
        assert_eq!(no, "your role (viewer) may not do this: it needs operator");
        assert!(role_allows("POST", Some("/api/v1/runs"), Role::Operator).is_ok());
        assert!(role_allows("POST", Some("/api/v1/keys"), Role::Operator).is_err());
        assert!(role_allows("GET", Some("/api/v1/audit"), Role::Operator).is_err());
        assert!(role_allows("GET", Some("/api/v1/audit"), Role::Admin).is_ok());
        assert!(role_allows("POST", Some("/ui/new"), Role::Viewer).is_err());
        assert!(role_allows("GET", Some("/api/v1/new-thing"), Role::Admin).is_err());
        assert!(role_allows("GET", None, Role::Admin).is_err());
    }
}
