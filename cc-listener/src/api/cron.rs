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
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
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

/// `GET /agents/{hostname}/cron?next=true`: each entry also says when it
/// next fires, in the host's time zone. Without it the answer is the bare
/// list, exactly as before (clients compare it to what they set).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CronParams {
    #[serde(default)]
    next: bool,
}

/// An entry and its next run (`?next=true`).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct EntryView {
    #[serde(flatten)]
    entry: CronEntry,
    /// RFC 3339 with the host zone's offset; `null`: never on its own
    /// (`@reboot`).
    next_run: Option<String>,
    /// The zone `nextRun` is in ([`crate::nextrun::HostZone::label`]).
    time_zone: String,
    /// Seconds this host's run waits after firing (entries with a jitter).
    #[serde(skip_serializing_if = "Option::is_none")]
    jitter_offset: Option<u64>,
}

pub(super) async fn get_cron(
    State(state): State<Arc<AppState>>,
    axum::Extension(op): axum::Extension<Operator>,
    Path(hostname): Path<String>,
    params: Result<Query<CronParams>, QueryRejection>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let Query(params) = params.map_err(|e| ApiError::invalid("next", e.body_text()))?;
    let host = hostname_param(&hostname)?.to_string();
    require_may_read(&state, &op, &host).await?;
    require_known(&state, &host).await?;
    let hq = host.clone();
    let (list, cron_host) = state
        .db
        .call(move |s| {
            let list = s
                .get_cron(&hq)?
                .map(|(entries, _)| entries)
                .unwrap_or_default();
            let cron_host = match params.next {
                true => s.agents_between(&hq, &hq)?.pop().and_then(|a| a.cron_host),
                false => None,
            };
            Ok((list, cron_host))
        })
        .await
        .map_err(ApiError::store)?;
    if !params.next {
        return Ok(Json(list).into_response());
    }
    let zone = crate::nextrun::HostZone::of_stored(cron_host.as_deref());
    let now = chrono::Utc::now();
    let views: Vec<EntryView> = list
        .into_iter()
        .map(|entry| {
            let next = crate::nextrun::next_run(&host, &entry, &zone, now);
            EntryView {
                next_run: next.as_ref().map(crate::nextrun::NextRun::rfc3339),
                time_zone: zone.label.clone(),
                jitter_offset: entry
                    .jitter
                    .map(|j| cc_proto::wire::jitter_offset(&host, &entry.id, j)),
                entry,
            }
        })
        .collect();
    Ok(Json(views).into_response())
}
