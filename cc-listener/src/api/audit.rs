//! The audit log: [`record`], the one middleware that writes a row for
//! every state-changing request (anything but `GET`/`HEAD`, API and
//! console, logins and failed logins included) and every 401 or 403
//! refusal; and `GET /audit`, `GET /audit/verify` (admin only, see
//! [`super::ROUTES`]: the log names every operator's actions on every
//! host, more than a scoped operator may read).
//!
//! A row holds the time, the operator (`-` when nobody was
//! authenticated), the peer's address, the action as method and route
//! template (`POST /api/v1/agents/{hostname}/jobs`, never the raw path),
//! the target (the path's first parameter, or what the handler names),
//! the ids the request made and the status answered. Never a token or a
//! body. Each row also goes to the log as one JSON line (target `audit`).
//!
//! How the middleware learns what only inner code knows (who the
//! operator is, which job or run was made): a task-local notebook,
//! [`note_operator`], [`note_id`], [`note_target`], opened around the
//! request. The auth middlewares and handlers run in the request's own
//! task, so a note needs no change of a handler's signature or answer —
//! and the console's run form, which calls the API's handler, is noted
//! for free.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, MatchedPath, Query, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use serde::Deserialize;
use tracing::{info, warn};

use super::{ApiError, ApiResult};
use crate::store::{AuditEntry, AuditRow, Verdict};
use crate::{AppState, now_ms, rfc3339_ms};

#[derive(Debug, Default)]
struct Notes {
    operator: Option<String>,
    target: Option<String>,
    ids: Vec<String>,
}

tokio::task_local! {
    static NOTES: RefCell<Notes>;
}

fn note(f: impl FnOnce(&mut Notes)) {
    // Outside a request (a unit test calling a handler): nothing to note.
    let _ = NOTES.try_with(|n| f(&mut n.borrow_mut()));
}

/// The request's operator, once authenticated.
pub(crate) fn note_operator(name: &str) {
    note(|n| n.operator = Some(name.to_owned()));
}

/// A job or run id the request made.
pub(crate) fn note_id(id: &str) {
    note(|n| n.ids.push(id.to_owned()));
}

/// What the request acted on, when its path does not name it (a key or
/// operator named in the body).
pub(crate) fn note_target(name: &str) {
    note(|n| n.target = Some(name.to_owned()));
}

/// Whether a request with this method and answer is a row.
pub(crate) fn audited(method: &Method, status: StatusCode) -> bool {
    let read = method == Method::GET || method == Method::HEAD;
    !read || status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN
}

/// The value of the first `{param}` of `template` in `path`, if it is
/// plain (letters, digits, `.`, `_`, `-`, `:`): a hostname, a name, an id.
fn target_of(template: &str, path: &str) -> Option<String> {
    let i = template.split('/').position(|s| s.starts_with('{'))?;
    let v = path.split('/').nth(i)?;
    let plain = !v.is_empty()
        && v.len() <= 253
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b));
    Some(if plain { v.to_owned() } else { "?".to_owned() })
}

/// Writes the row of every request [`audited`] says is one (see the
/// module comment), after its answer is made and before it is sent.
pub(crate) async fn record(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let Some(template) = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
    else {
        // No route (404): nothing was done, and the raw path is the
        // caller's text.
        return next.run(request).await;
    };
    let source = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "-".to_owned(), |c| c.0.to_string());
    let path_target = target_of(&template, request.uri().path());
    let (response, notes) = NOTES
        .scope(RefCell::new(Notes::default()), async move {
            let r = next.run(request).await;
            (r, NOTES.with(|n| n.take()))
        })
        .await;
    if !audited(&method, response.status()) {
        return response;
    }
    let entry = AuditEntry {
        at_ms: now_ms(),
        operator: notes.operator.unwrap_or_else(|| "-".into()),
        source,
        action: format!("{method} {template}"),
        target: notes.target.or(path_target).unwrap_or_else(|| "-".into()),
        ids: notes.ids,
        outcome: response.status().as_u16(),
    };
    let e = entry.clone();
    match state.db.call(move |s| s.append_audit(&e)).await {
        Ok(row) => log_row(&row),
        Err(err) => {
            warn!(
                "the audit row of {} could not be stored: {err:#}",
                entry.action
            );
            // The SIEM still gets it, without a place in the chain.
            log_row(&AuditRow {
                seq: 0,
                entry,
                prev_hash: String::new(),
                hash: String::new(),
            });
        }
    }
    response
}

fn log_row(row: &AuditRow) {
    match serde_json::to_string(row) {
        Ok(line) => info!(target: "audit", "{line}"),
        Err(e) => warn!("an audit row could not be written as JSON: {e}"),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
    since: Option<String>,
    operator: Option<String>,
    limit: Option<u32>,
}

/// Rows per answer at most.
const MAX_AUDIT_ROWS: u32 = 10_000;

/// `GET /audit?since=TIME&operator=NAME&limit=N` (default 100; `since` an
/// RFC 3339 time or Unix milliseconds): the newest matching rows, oldest
/// first.
pub(super) async fn list_audit(
    State(state): State<Arc<AppState>>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let since = q
        .since
        .as_deref()
        .map(|s| match s.parse::<i64>() {
            Ok(ms) => Ok(ms),
            Err(_) => chrono::DateTime::parse_from_rfc3339(s)
                .map(|t| t.timestamp_millis())
                .map_err(|e| {
                    ApiError::invalid(
                        "since",
                        format!("since: neither an RFC 3339 time nor Unix milliseconds: {e}"),
                    )
                }),
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_AUDIT_ROWS);
    let who = q.operator;
    let rows = state
        .db
        .call(move |s| s.list_audit(since, who.as_deref(), limit))
        .await
        .map_err(ApiError::store)?;
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "seq": r.seq,
                "time": rfc3339_ms(r.entry.at_ms),
                "operator": r.entry.operator,
                "source": r.entry.source,
                "action": r.entry.action,
                "target": r.entry.target,
                "ids": r.entry.ids,
                "outcome": r.entry.outcome,
                "prevHash": r.prev_hash,
                "hash": r.hash,
            })
        })
        .collect();
    Ok(Json(serde_json::Value::Array(rows)))
}

/// `GET /audit/verify`: `{"ok": true, "rows": N, "anchorSeq": S}`, or
/// `{"ok": false, "seq": N, "reason": …}` naming the first bad row.
pub(super) async fn verify_audit(
    State(state): State<Arc<AppState>>,
) -> ApiResult<Json<serde_json::Value>> {
    let verdict = state
        .db
        .call(|s| s.verify_audit())
        .await
        .map_err(ApiError::store)?;
    Ok(Json(match verdict {
        Verdict::Ok { rows, anchor_seq } => {
            serde_json::json!({"ok": true, "rows": rows, "anchorSeq": anchor_seq})
        }
        Verdict::Bad { seq, reason } => {
            warn!(seq, "audit log: verification failed: {reason}");
            serde_json::json!({"ok": false, "seq": seq, "reason": reason})
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_is_the_first_parameter_if_plain() {
        let t = "/api/v1/agents/{hostname}/jobs";
        assert_eq!(
            target_of(t, "/api/v1/agents/web-1/jobs").as_deref(),
            Some("web-1")
        );
        assert_eq!(
            target_of(t, "/api/v1/agents/a%0Ab/jobs").as_deref(),
            Some("?")
        );
        assert_eq!(target_of("/api/v1/runs", "/api/v1/runs"), None);
    }

    #[test]
    fn writes_logins_and_refusals_are_rows_reads_are_not() {
        assert!(audited(&Method::POST, StatusCode::ACCEPTED));
        assert!(audited(&Method::DELETE, StatusCode::NOT_FOUND));
        assert!(audited(&Method::GET, StatusCode::UNAUTHORIZED));
        assert!(audited(&Method::GET, StatusCode::FORBIDDEN));
        assert!(!audited(&Method::GET, StatusCode::OK));
        assert!(!audited(&Method::HEAD, StatusCode::NOT_FOUND));
    }
}
