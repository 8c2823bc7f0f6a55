//! The fleet cron set and what it does to hosts: `GET`/`PUT /fleet/cron`
//! (the whole set, replaced atomically), `POST /fleet/cron/plan` (per host:
//! added, changed, removed, awaiting signature) and `GET /cron/status`
//! (per host: the list wanted against what the agent last said it
//! installed, and whether they differ).
//!
//! Least privilege: a scoped operator plans and applies only a change
//! whose every affected host (a host whose effective list changes, or that
//! is given a signature) its selector reaches; otherwise 403 with how many
//! hosts are out of reach (never their names). A plan lists only hosts in
//! the caller's reach, and counts the others. Status lists only hosts in
//! reach.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tracing::info;

use cc_proto::sign::{self, CronStatement, Signed};
use cc_proto::wire::{CronEntry, CronHost, CronRejection, CronStatus};

use super::agents::scope_of;
use super::signing::{listener_signature, open_signed};
use super::{ApiError, ApiResult, body_json};
use crate::auth::Operator;
use crate::fleet::{self, Diff, FleetEntry, FleetHost, FleetJob};
use crate::store::Scope;
use crate::{AppState, now_ms};

#[derive(Serialize)]
pub(super) struct SetView {
    generation: u64,
    entries: Vec<FleetEntry>,
}

pub(super) async fn get_fleet(State(state): State<Arc<AppState>>) -> ApiResult<Json<SetView>> {
    let set = state
        .db
        .call(|s| s.fleet_set())
        .await
        .map_err(ApiError::store)?;
    Ok(Json(SetView {
        generation: set.generation,
        entries: set.entries,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PlanBody {
    entries: Vec<FleetEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ApplyBody {
    entries: Vec<FleetEntry>,
    /// The generation the plan was made against: 409 if another apply
    /// came first.
    #[serde(default)]
    generation: Option<u64>,
    /// Operators' signed statements over system-mode hosts' new lists.
    #[serde(default)]
    signed: HashMap<String, Signed>,
}

/// One host in a plan.
#[derive(Serialize, Clone)]
#[serde(rename_all = "camelCase")]
pub(super) struct HostPlan {
    hostname: String,
    #[serde(flatten)]
    diff: Diff,
    system: bool,
    awaiting_signature: bool,
    /// For a system-mode host: the list an operator signs.
    #[serde(skip_serializing_if = "Option::is_none")]
    entries: Option<Vec<CronEntry>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PlanView {
    /// The set's generation the plan was made against.
    generation: u64,
    /// Hosts in reach that change or await a signature.
    hosts: Vec<HostPlan>,
    /// Hosts this change affects that the caller's selector does not reach.
    outside_selector: usize,
}

/// A plan of `new` against the stored set, for every known host.
fn plan_all(hosts: &[FleetHost], old: &[FleetJob], new: &[FleetJob]) -> Vec<HostPlan> {
    let mut out = Vec::new();
    for h in hosts {
        let before = fleet::effective(h, old).0;
        let w = fleet::wanted(h, new);
        let diff = Diff::of(&before, &w.entries);
        let matched = !fleet::effective(h, new).0.is_empty();
        if diff.is_empty() && !(w.awaiting_signature && matched) {
            continue;
        }
        out.push(HostPlan {
            hostname: h.hostname.clone(),
            diff,
            system: h.is_system(),
            awaiting_signature: w.awaiting_signature,
            entries: h.is_system().then(|| w.entries.clone()),
        });
    }
    out
}

struct Planned {
    generation: u64,
    plan: Vec<HostPlan>,
    refusals: Vec<String>,
}

async fn make_plan(
    state: &AppState,
    entries: &[FleetEntry],
) -> ApiResult<(Vec<FleetJob>, Planned)> {
    let new = fleet::validate_set(entries).map_err(|e| ApiError::invalid("entries", e))?;
    let jobs = new.clone();
    let planned = state
        .db
        .call(move |s| {
            let set = s.fleet_set()?;
            let hosts = s.fleet_hosts(None)?;
            Ok(Planned {
                generation: set.generation,
                plan: plan_all(&hosts, &set.jobs(), &jobs),
                refusals: fleet::refusals(&hosts, &jobs),
            })
        })
        .await
        .map_err(ApiError::store)?;
    Ok((new, planned))
}

/// 403 unless `op` may act and reaches every one of `affected`.
async fn require_reach(
    state: &AppState,
    op: &Operator,
    affected: &[&str],
) -> ApiResult<(Scope, usize)> {
    if !op.role.may_act() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("role {} may not change the fleet cron set", op.role),
        ));
    }
    let scope = scope_of(state, op).await?;
    let outside = affected.iter().filter(|h| !scope.contains(h)).count();
    Ok((scope, outside))
}

fn refused(outside: usize, total: usize, op: &Operator) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        format!(
            "this change affects {total} hosts, {outside} of them outside your hosts selector ({}): an operator whose selector reaches them must apply it",
            op.hosts
        ),
    )
}

pub(super) async fn plan_fleet(
    State(state): State<Arc<AppState>>,
    axum::Extension(op): axum::Extension<Operator>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<PlanView>> {
    let body: PlanBody = body_json(body)?;
    let (_, planned) = make_plan(&state, &body.entries).await?;
    if !planned.refusals.is_empty() {
        return Err(ApiError::invalid("entries", planned.refusals.join("; ")));
    }
    let affected: Vec<&str> = planned.plan.iter().map(|h| h.hostname.as_str()).collect();
    let (scope, outside) = require_reach(&state, &op, &affected).await?;
    let hosts = planned
        .plan
        .iter()
        .filter(|h| scope.contains(&h.hostname))
        .cloned()
        .collect();
    Ok(Json(PlanView {
        generation: planned.generation,
        hosts,
        outside_selector: outside,
    }))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Applied {
    generation: u64,
    /// Hosts whose list changed.
    changed: usize,
    /// Signatures stored (operators' or this listener's).
    signed: usize,
    /// System-mode hosts still awaiting a signature.
    awaiting_signature: Vec<String>,
}

/// The operators' signatures given with an apply, as stored: each for a
/// system-mode host this set gives entries to, over exactly its new list.
fn checked_signatures(
    given: &HashMap<String, Signed>,
    by_host: &HashMap<&str, &HostPlan>,
) -> ApiResult<Vec<(String, String)>> {
    let mut signatures = Vec::new();
    for (host, signed) in given {
        let st: CronStatement =
            open_signed(signed, sign::CRON_LABEL, host, |t: &CronStatement| &t.host)?;
        let Some(p) = by_host.get(host.as_str()).filter(|p| p.system) else {
            return Err(ApiError::invalid(
                "signed",
                format!(
                    "{host}: not a system-mode host this fleet set gives entries to: nothing to sign"
                ),
            ));
        };
        if Some(&st.entries) != p.entries.as_ref() {
            return Err(ApiError::invalid(
                "signed",
                format!(
                    "{host}: the signed list is not the host's new list (plan again and sign what it shows)"
                ),
            ));
        }
        let text = serde_json::to_string(signed).map_err(|e| ApiError::internal(e.into()))?;
        signatures.push((host.clone(), text));
    }
    Ok(signatures)
}

pub(super) async fn put_fleet(
    State(state): State<Arc<AppState>>,
    axum::Extension(op): axum::Extension<Operator>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Applied>> {
    let body: ApplyBody = body_json(body)?;
    let (jobs, planned) = make_plan(&state, &body.entries).await?;
    if !planned.refusals.is_empty() {
        return Err(ApiError::invalid("entries", planned.refusals.join("; ")));
    }
    let by_host: HashMap<&str, &HostPlan> = planned
        .plan
        .iter()
        .map(|h| (h.hostname.as_str(), h))
        .collect();
    let mut affected: Vec<&str> = planned
        .plan
        .iter()
        .filter(|h| !h.diff.is_empty())
        .map(|h| h.hostname.as_str())
        .collect();
    for h in body.signed.keys() {
        if !affected.contains(&h.as_str()) {
            affected.push(h);
        }
    }
    let (_, outside) = require_reach(&state, &op, &affected).await?;
    if outside > 0 {
        return Err(refused(outside, affected.len(), &op));
    }
    let mut signatures = checked_signatures(&body.signed, &by_host)?;
    // This listener signs what no operator did, when it was given a key.
    let mut awaiting = Vec::new();
    for p in planned.plan.iter().filter(|p| p.awaiting_signature) {
        if body.signed.contains_key(&p.hostname) {
            continue;
        }
        let list = p.entries.clone().unwrap_or_default();
        let host = p.hostname.clone();
        let mine = listener_signature(
            &state,
            &host,
            sign::CRON_LABEL,
            sign::MAX_VALIDITY_SECS,
            |not_before, expires_at, nonce| CronStatement {
                host: host.clone(),
                generation: u64::try_from(now_ms()).unwrap_or(0),
                entries: list,
                not_before,
                expires_at,
                nonce,
            },
        )
        .await?;
        match mine {
            Some(s) => signatures.push((
                host,
                serde_json::to_string(&s).map_err(|e| ApiError::internal(e.into()))?,
            )),
            None => awaiting.push(host),
        }
    }
    let entries: Vec<FleetEntry> = jobs.iter().map(FleetJob::to_wire).collect();
    let signed = signatures.len();
    // Written only over the set the checks above were made against: a set
    // changed since (by another apply) is a conflict, not a change whose
    // reach nobody checked.
    if let Some(g) = body.generation.filter(|g| *g != planned.generation) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "the fleet set changed since the plan (generation {}, planned against {g}): plan again",
                planned.generation
            ),
        ));
    }
    let expect = Some(planned.generation);
    let generation = state
        .db
        .call(move |s| s.put_fleet_set(&entries, &signatures, expect, now_ms()))
        .await
        .map_err(ApiError::store)?;
    let changed = planned.plan.iter().filter(|h| !h.diff.is_empty()).count();
    info!(
        generation,
        entries = jobs.len(),
        changed,
        signed,
        awaiting = awaiting.len(),
        "fleet cron set applied"
    );
    Ok(Json(Applied {
        generation,
        changed,
        signed,
        awaiting_signature: awaiting,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StatusParams {
    host: Option<String>,
    tag: Option<String>,
}

/// One host's cron status.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct StatusRow {
    hostname: String,
    execution_mode: Option<String>,
    /// The fleet set's generation the wanted list is of.
    generation: u64,
    /// How many entries the listener wants the host to run, and which.
    wanted: usize,
    wanted_ids: Vec<String>,
    /// What the agent last said it installed (`None`: it never said).
    installed: Option<usize>,
    rejected: Vec<CronRejection>,
    /// Whether the agent's installed entries differ from the wanted ones.
    drift: bool,
    awaiting_signature: bool,
    /// Fleet entries left out: the host has its own entry of that id.
    shadowed: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cron_warning: Option<String>,
    /// Per entry id, its last scheduled run (filled by the missed-runs
    /// tracker when present: `{status, exitCode, at, detail}`).
    last_status: serde_json::Map<String, serde_json::Value>,
    /// Entry ids whose last expected run was missed.
    missed: Vec<String>,
}

fn status_row(h: &FleetHost, fleet: &[FleetJob], generation: u64) -> StatusRow {
    let w = fleet::wanted(h, fleet);
    let status: Option<CronStatus> = h
        .cron_status
        .as_deref()
        .and_then(|t| serde_json::from_str(t).ok());
    let wanted_ids: Vec<String> = w.entries.iter().map(|e| e.id.clone()).collect();
    let drift = match &status {
        None => !wanted_ids.is_empty(),
        Some(s) => {
            let mut a = s.installed.clone();
            let mut b = wanted_ids.clone();
            a.sort();
            b.sort();
            a != b || !s.rejected.is_empty()
        }
    };
    let cron_host: Option<CronHost> = h
        .cron_host
        .as_deref()
        .and_then(|t| serde_json::from_str(t).ok());
    let cron_warning = cron_host.filter(|c| c.daemon.is_none()).map(|_| {
        "no cron daemon is running on this host: its cron entries will not fire; start it (Debian: systemctl enable --now cron)".to_owned()
    });
    StatusRow {
        hostname: h.hostname.clone(),
        execution_mode: h.mode.clone(),
        generation,
        wanted: wanted_ids.len(),
        wanted_ids,
        installed: status.as_ref().map(|s| s.installed.len()),
        rejected: status.map(|s| s.rejected).unwrap_or_default(),
        drift,
        awaiting_signature: w.awaiting_signature,
        shadowed: w.shadowed,
        cron_warning,
        last_status: serde_json::Map::new(),
        missed: Vec::new(),
    }
}

/// What the console shows of a host's cron list beside its name.
#[derive(Debug, Clone, Default)]
pub(crate) struct CronHealth {
    pub wanted: usize,
    pub installed: Option<usize>,
    pub generation: u64,
    pub drift: bool,
    pub awaiting_signature: bool,
}

/// [`CronHealth`] of every host `only` names (all with `None`), read in
/// one pass as `GET /cron/status` reads it.
pub(crate) fn cron_health(
    s: &crate::store::Store,
    only: Option<&[String]>,
) -> anyhow::Result<HashMap<String, CronHealth>> {
    let set = s.fleet_set()?;
    let jobs = set.jobs();
    Ok(s.fleet_hosts(only)?
        .iter()
        .map(|h| {
            let r = status_row(h, &jobs, set.generation);
            let health = CronHealth {
                wanted: r.wanted,
                installed: r.installed,
                generation: r.generation,
                drift: r.drift,
                awaiting_signature: r.awaiting_signature,
            };
            (r.hostname, health)
        })
        .collect())
}

/// Fills `row`'s `lastStatus` (each wanted entry's last scheduled run) and
/// `missed` (the wanted entries whose last run was missed) from `last`.
fn with_last_runs(row: &mut StatusRow, last: Vec<crate::store::LastScheduled>) {
    for l in last {
        if !row.wanted_ids.contains(&l.entry_id) {
            continue;
        }
        if l.status == "missed" {
            row.missed.push(l.entry_id.clone());
        }
        row.last_status.insert(
            l.entry_id,
            serde_json::json!({
                "status": l.status,
                "exitCode": l.exit_code,
                "at": crate::rfc3339_ms(l.at_ms),
                "detail": l.detail,
                "missed24h": l.missed_24h,
            }),
        );
    }
}

pub(super) async fn cron_status(
    State(state): State<Arc<AppState>>,
    axum::Extension(op): axum::Extension<Operator>,
    params: Result<Query<StatusParams>, QueryRejection>,
) -> ApiResult<Json<Vec<StatusRow>>> {
    let Query(q) = params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    if let Some(h) = &q.host {
        cc_proto::Hostname::parse(h)?;
    }
    if let Some(t) = &q.tag {
        cc_proto::Tag::parse(t)?;
    }
    let scope = scope_of(&state, &op).await?;
    let rows = state
        .db
        .call(move |s| {
            let set = s.fleet_set()?;
            let jobs = set.jobs();
            let hosts = match &q.host {
                Some(h) => s.fleet_hosts(Some(&[h.to_ascii_lowercase()]))?,
                None => s.fleet_hosts(None)?,
            };
            let now = crate::now_ms();
            hosts
                .iter()
                .filter(|h| scope.contains(&h.hostname))
                .filter(|h| q.tag.as_ref().is_none_or(|t| h.bound_tags.contains(t)))
                .map(|h| {
                    let mut row = status_row(h, &jobs, set.generation);
                    with_last_runs(&mut row, s.last_scheduled(&h.hostname, now)?);
                    Ok(row)
                })
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .await
        .map_err(ApiError::store)?;
    Ok(Json(rows))
}
