//! `PUT` and `GET /agents/{hostname}/cron`: a host's cron list, checked
//! entry by entry and stored in canonical form (the schedule as our
//! grammar renders it, the command as the exact argv quoted), then pushed
//! to the host's connection if this listener holds it (else on its next
//! connection, `Session::catch_up`). Setting needs a role that acts and a
//! selector reaching the host (403); reading a host outside the selector is
//! 404, as for an unknown host.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use serde::Deserialize;
use tracing::info;

use cc_proto::sign::{self, CronStatement, Signed};
use cc_proto::wire::{CronEntry, MAX_CRON_ENTRIES};

use super::agents::{require_may_act, require_may_read};
use super::signing::{listener_signature, open_signed, require_system_mode};
use super::{ApiError, ApiResult, body_json, hostname_param, require_known};
use crate::auth::Operator;
use crate::{AppState, now_ms};

/// `PUT /agents/{hostname}/cron`: a list, or an operator's signed one.
#[derive(Deserialize)]
#[serde(untagged)]
enum CronBody {
    List(Vec<CronEntry>),
    Signed { signed: Signed },
}

pub(super) async fn put_cron(
    State(state): State<Arc<AppState>>,
    axum::Extension(op): axum::Extension<Operator>,
    Path(hostname): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Vec<CronEntry>>> {
    let hostname = hostname_param(&hostname)?;
    let host = hostname.to_string();
    require_may_act(&state, &op, &host, "set cron lists").await?;
    // A list, or `{"signed": …}`: an operator's signed cron statement.
    let body: CronBody = body_json(body)?;
    let (entries, signed) = match body {
        CronBody::List(entries) => (entries, None),
        CronBody::Signed { signed } => {
            let st: CronStatement =
                open_signed(&signed, sign::CRON_LABEL, &host, |t: &CronStatement| {
                    &t.host
                })?;
            require_system_mode(&state, &host).await?;
            (st.entries, Some(signed))
        }
    };
    if entries.len() > MAX_CRON_ENTRIES {
        return Err(ApiError::invalid(
            "entries",
            format!("at most {MAX_CRON_ENTRIES} entries"),
        ));
    }
    let mut canonical = Vec::with_capacity(entries.len());
    let mut seen = std::collections::HashSet::new();
    for (i, entry) in entries.iter().enumerate() {
        let job = entry.validate().map_err(|e| {
            ApiError::invalid("entries", format!("entry {i} (id {:?}): {e}", entry.id))
        })?;
        if !seen.insert(job.id.clone()) {
            return Err(ApiError::invalid(
                "entries",
                format!("entry {i}: id {:?} appears twice", entry.id),
            ));
        }
        // Stored and pushed in canonical form: the schedule as our grammar
        // renders it, the command as the exact argv quoted.
        canonical.push(CronEntry::from(&job));
    }
    require_known(&state, &host).await?;
    let signed = match signed {
        Some(s) => Some(s),
        None => {
            let (label, valid) = (sign::CRON_LABEL, sign::MAX_VALIDITY_SECS);
            listener_signature(
                &state,
                &host,
                label,
                valid,
                |not_before, expires_at, nonce| CronStatement {
                    host: host.clone(),
                    generation: u64::try_from(now_ms()).unwrap_or(0),
                    entries: canonical.clone(),
                    not_before,
                    expires_at,
                    nonce,
                },
            )
            .await?
        }
    };
    {
        let (host, list) = (host.clone(), canonical.clone());
        let signed_text = signed
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| ApiError::internal(e.into()))?;
        state
            .db
            .call(move |s| s.set_cron(&host, &list, signed_text.as_deref(), now_ms()))
            .await
            .map_err(ApiError::store)?;
    }
    // The host's effective list (its own and matching fleet entries): sent
    // now if held here, else by whichever listener holds it.
    let pushed = crate::fleet::push::push_hosts(&state, vec![host.clone()])
        .await
        .map_err(ApiError::store)?;
    if pushed == 0 {
        let h = host.clone();
        state
            .db
            .call(move |s| s.request_resend(&h))
            .await
            .map_err(ApiError::store)?;
    }
    info!(hostname = %host, entries = canonical.len(), pushed, "cron definitions stored");
    Ok(Json(canonical))
}

pub(super) async fn get_cron(
    State(state): State<Arc<AppState>>,
    axum::Extension(op): axum::Extension<Operator>,
    Path(hostname): Path<String>,
) -> ApiResult<Json<Vec<CronEntry>>> {
    let host = hostname_param(&hostname)?.to_string();
    require_may_read(&state, &op, &host).await?;
    require_known(&state, &host).await?;
    let list = state
        .db
        .call(move |s| s.get_cron(&host))
        .await
        .map_err(ApiError::store)?;
    Ok(Json(list.map(|(entries, _)| entries).unwrap_or_default()))
}
