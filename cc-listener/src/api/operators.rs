//! Named operators through the API (admin only, [`super::ROUTES`]): the
//! same as `cc-listener operators`. A token is in the answer that creates
//! it only (the store keeps its hash); a revoked operator is dropped from
//! this listener's copy at once, and from every other listener's within
//! `auth::RELOAD`.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tracing::info;

use super::{ApiError, ApiResult, body_json};
use crate::store::NewOperator;
use crate::{AppState, now_ms, rfc3339_ms};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct OperatorRequest {
    name: String,
    role: String,
    hosts: Option<String>,
    expires_days: Option<u64>,
}

/// `POST /operators` `{"name", "role", "hosts"?, "expiresDays"?}` → 201
/// `{"name", "role", "hosts", "expires", "token"}`; 409 when the name was
/// ever used.
pub(super) async fn post_operator(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let req: OperatorRequest = body_json(body)?;
    let (name, role, hosts) =
        crate::auth::operator_spec(&req.name, &req.role, req.hosts.as_deref())
            .map_err(|(field, e)| ApiError::invalid(field, e))?;
    super::audit::note_target(&name);
    let now = now_ms();
    let expires_ms = req
        .expires_days
        .map(|d| crate::auth::expires_ms(now, d))
        .transpose()
        .map_err(|e| ApiError::invalid("expiresDays", e))?;
    let (n, h) = (name.clone(), hosts.clone());
    let token = state
        .db
        .call(move |s| {
            let op = NewOperator {
                name: &n,
                role,
                hosts: &h,
                expires_ms,
            };
            s.add_operator(&op, now)
        })
        .await
        .map_err(ApiError::store)?;
    // Usable here at once, not only after the next reload.
    let _ = crate::auth::reload(&state).await;
    info!(name = %name, role = %role, hosts = %hosts, "operator added through the API");
    let body = serde_json::json!({
        "name": name,
        "role": role.as_str(),
        "hosts": hosts.to_string(),
        "expires": expires_ms.map(rfc3339_ms),
        "token": token,
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `GET /operators`: every operator's name, role, hosts, creation and
/// expiry time and state, never its token.
pub(super) async fn list_operators(
    State(state): State<Arc<AppState>>,
) -> ApiResult<Json<serde_json::Value>> {
    let ops = state
        .db
        .call(|s| s.list_operators())
        .await
        .map_err(ApiError::store)?;
    let now = now_ms();
    let list: Vec<serde_json::Value> = ops
        .iter()
        .map(|o| {
            let st = match (o.revoked_ms, o.expires_ms) {
                (Some(_), _) => "revoked",
                (None, Some(e)) if e <= now => "expired",
                _ => "active",
            };
            serde_json::json!({
                "name": o.name,
                "role": o.role,
                "hosts": o.hosts,
                "created": rfc3339_ms(o.created_ms),
                "expires": o.expires_ms.map(rfc3339_ms),
                "state": st,
            })
        })
        .collect();
    Ok(Json(serde_json::Value::Array(list)))
}

/// `DELETE /operators/{name}` → 204; 404 when there is no such live
/// operator. The token-file admin is not in the table: change the file.
pub(super) async fn revoke_operator(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    if name == crate::auth::FIRST_ADMIN {
        return Err(ApiError::invalid(
            "name",
            "the first admin is the --admin-token-file token: replace the file to change it",
        ));
    }
    let n = name.clone();
    state
        .db
        .call(move |s| s.revoke_operator(&n, now_ms()))
        .await
        .map_err(ApiError::store)?;
    state.operators.forget(&name);
    info!(name = %name, "operator revoked through the API");
    Ok(StatusCode::NO_CONTENT)
}
