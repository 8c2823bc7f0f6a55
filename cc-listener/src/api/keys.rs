//! Agent keys: `ccctl keys`, the same as `cc-listener keys`. A key's value
//! is in the answer that creates it only (the store keeps its hash); a
//! revoked key's live connection is closed at once (`close_revoked`).

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
use crate::{AppState, now_ms, rfc3339_ms};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRequest {
    name: String,
    hostname: Option<String>,
    tags: Option<Vec<String>>,
}

/// Tags an operator gives a key, checked as an agent's are.
fn key_tags(tags: &[String]) -> ApiResult<Vec<String>> {
    cc_proto::Tag::parse_all(tags).map_err(|e| ApiError::invalid("tags", e.to_string()))?;
    Ok(crate::store::canonical_tags(tags))
}

/// `POST /keys` `{"name", "hostname"?, "tags"?}` → 201 `{"name",
/// "hostname", "tags", "key"}`: the key is in this answer only (the store
/// keeps its hash); 409 when the name, or the hostname's binding, is
/// taken. Without `tags`, the first registration's tags are the key's.
pub(super) async fn post_key(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let req: KeyRequest = body_json(body)?;
    let (name, hostname) = crate::key_spec(&req.name, req.hostname.as_deref())
        .map_err(|(field, e)| ApiError::invalid(field, e))?;
    super::audit::note_target(&name);
    let tags = req.tags.as_deref().map(key_tags).transpose()?;
    let (n, h, t) = (name.clone(), hostname.clone(), tags.clone());
    let key = state
        .db
        .call(move |s| s.add_key_tagged(&n, h.as_deref(), t.as_deref(), now_ms()))
        .await
        .map_err(ApiError::store)?;
    info!(name = %name, hostname = hostname.as_deref().unwrap_or("-"), tags = ?tags, "agent key added through the API");
    let body = serde_json::json!({ "name": name, "hostname": hostname, "tags": tags, "key": key });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `GET /keys`: every key's name, bound hostname, creation time and state,
/// never its value.
pub(super) async fn list_keys(
    State(state): State<Arc<AppState>>,
) -> ApiResult<Json<serde_json::Value>> {
    let keys = state
        .db
        .call(|s| s.list_keys())
        .await
        .map_err(ApiError::store)?;
    Ok(Json(serde_json::Value::Array(
        keys.into_iter()
            .map(|k| {
                serde_json::json!({
                    "name": k.name,
                    "hostname": k.hostname,
                    "tags": k.tags,
                    "created": rfc3339_ms(k.created_ms),
                    "revoked": k.revoked,
                })
            })
            .collect(),
    )))
}

/// `PUT /keys/{name}/tags` `["T", …]` → 200 `{"name", "tags"}`: the tags
/// the key's host may have, and is listed and selected by, from now on;
/// its agent's next registration must declare the same. 404 when no
/// active key has that name.
pub(super) async fn retag_key(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let tags: Vec<String> = body_json(body)?;
    let tags = key_tags(&tags)?;
    let n = name.clone();
    let tags = state
        .db
        .call(move |s| s.retag_key(&n, &tags))
        .await
        .map_err(ApiError::store)?;
    info!(name = %name, tags = ?tags, "agent key retagged through the API");
    // Its fleet entries follow its tags: the host's list is sent again by
    // whichever listener holds it (`fleet::push::watch_loop`).
    let n = name.clone();
    let resend = state
        .db
        .call(move |s| match s.key_hostname(&n)? {
            Some(host) => s.request_resend(&host),
            None => Ok(()),
        })
        .await;
    if let Err(e) = resend {
        tracing::warn!("asking for the cron list to be sent after a retag: {e:#}");
    }
    Ok(Json(serde_json::json!({ "name": name, "tags": tags })))
}

/// `DELETE /keys/{name}` → 204: the key is refused from now on and a live
/// connection made with it is closed at once; 404 when no active key has
/// that name.
pub(super) async fn revoke_key(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let n = name.clone();
    // No active key of that name: the store's not-found, 404.
    state
        .db
        .call(move |s| s.revoke_key(&n, now_ms()))
        .await
        .map_err(ApiError::store)?;
    info!(name = %name, "agent key revoked through the API");
    crate::close_revoked(&state)
        .await
        .map_err(ApiError::store)?;
    Ok(StatusCode::NO_CONTENT)
}
