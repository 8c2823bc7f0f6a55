//! The console's read-only pages: the fleet (every agent, filtered by tag
//! or state, root-in-user-mode agents flagged first), a host (its cron
//! entries with their last and next runs, its recent jobs), the runs, a run
//! (failures first) and a job (its report). Each reads the store once and
//! renders with `maud`; live updates come from `app.js` over the event
//! stream.
//!
//! Each shows only what the logged-in operator's selector reaches: the
//! fleet lists those hosts; a host, a job or a run outside it is "not
//! found", as one that does not exist (a run is shown only when every one
//! of its hosts is reachable, as `GET /runs/{id}`).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;

use super::session::Csrf;
use super::{error_page, internal, page};
use crate::auth::Operator;
use crate::store::{AgentRow, JobStatus, Scope};
use crate::{AppState, rfc3339_ms};

/// Agents the fleet page lists (the API pages beyond).
const FLEET_LIMIT: u32 = 10_000;

#[derive(Deserialize)]
pub(super) struct FleetQuery {
    tag: Option<String>,
    state: Option<String>,
}

/// The hosts `op` reaches: no query for `*`.
pub(super) async fn scope_of(state: &AppState, op: &Operator) -> anyhow::Result<Scope> {
    if op.hosts.is_all() {
        return Ok(Scope::All);
    }
    let selector = op.hosts.clone();
    state.db.call(move |s| s.scope(&selector)).await
}

async fn all_agents(state: &AppState, scope: Scope) -> anyhow::Result<Vec<AgentRow>> {
    state
        .db
        .call(move |s| {
            let page = s.agent_page_in(&scope, None, FLEET_LIMIT)?;
            let (Some(first), Some(last)) = (page.first(), page.last()) else {
                return Ok(Vec::new());
            };
            let mut rows = s.agents_between(&first.0, &last.0)?;
            rows.retain(|r| scope.contains(&r.hostname));
            rows.truncate(FLEET_LIMIT as usize);
            Ok(rows)
        })
        .await
}

fn cron_summary(status: Option<&str>) -> String {
    let Some(v) = status.and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok()) else {
        return "—".to_owned();
    };
    let n = |k: &str| v[k].as_array().map_or(0, Vec::len);
    format!("{} installed, {} refused", n("installed"), n("rejected"))
}

/// A host's cron cell on the fleet page: what its agent said it
/// installed, whether that is what the listener wants (drift), and its
/// runs missed in the last 24 hours.
struct CronCell {
    summary: String,
    health: crate::api::CronHealth,
    missed: u64,
}

impl CronCell {
    fn render(&self) -> Markup {
        html! {
            (self.summary)
            @if self.health.drift { " · " span.bad { "drift: wants " (self.health.wanted) } }
            @if self.health.awaiting_signature { " · " span.bad { "awaiting signature" } }
            @if self.missed > 0 { " · " span.bad { (self.missed) " missed (24 h)" } }
        }
    }
}

pub(super) async fn fleet(
    State(state): State<Arc<AppState>>,
    axum::Extension(csrf): axum::Extension<Csrf>,
    axum::Extension(op): axum::Extension<Operator>,
    Query(q): Query<FleetQuery>,
) -> Response {
    let scope = match scope_of(&state, &op).await {
        Ok(s) => s,
        Err(e) => return internal(&csrf, &e),
    };
    let rows = match all_agents(&state, scope).await {
        Ok(r) => r,
        Err(e) => return internal(&csrf, &e),
    };
    let health = state
        .db
        .call(|s| {
            let day_ago = crate::now_ms() - 24 * 3600 * 1000;
            Ok((
                crate::api::cron_health(s, None)?,
                s.misses_by_host(day_ago)?,
            ))
        })
        .await;
    let (health, misses) = match health {
        Ok(h) => h,
        Err(e) => return internal(&csrf, &e),
    };
    let total = rows.len();
    let views: Vec<_> = rows
        .into_iter()
        .map(|r| {
            let cron = CronCell {
                summary: cron_summary(r.cron_status.as_deref()),
                health: health.get(&r.hostname).cloned().unwrap_or_default(),
                missed: misses.get(&r.hostname).copied().unwrap_or(0),
            };
            (crate::api::agent_view(&state, r), cron)
        })
        .collect();
    let missing = views.iter().filter(|(_, c)| c.missed > 0).count();
    let warned = views.iter().filter(|(v, _)| v.warning.is_some()).count();
    let no_cron = views
        .iter()
        .filter(|(v, _)| v.cron_warning.is_some())
        .count();
    let tag = q.tag.filter(|t| !t.is_empty());
    let want_state = q.state.filter(|s| s == "online" || s == "offline");
    let shown: Vec<_> = views
        .iter()
        .filter(|(v, _)| tag.as_ref().is_none_or(|t| v.tags.contains(t)))
        .filter(|(v, _)| match want_state.as_deref() {
            Some("online") => v.connected,
            Some("offline") => !v.connected,
            _ => true,
        })
        .collect();
    let online = views.iter().filter(|(v, _)| v.connected).count();
    page(
        "Fleet",
        Some(&csrf),
        html! {
            h1 { "Fleet" }
            @if warned > 0 {
                div.alert role="alert" #root-warning {
                    strong { (warned) " agent" @if warned != 1 { "s" } " run as root (UID 0) in user mode" }
                    " — every job they run runs as root. Run the agent as cc-agent-user."
                }
            }
            @if no_cron > 0 {
                div.alert role="alert" #cron-warning {
                    strong { (no_cron) " agent" @if no_cron != 1 { "s" } " run no cron daemon" }
                    " — their cron entries will not fire."
                }
            }
            @if missing > 0 {
                div.alert role="alert" #missed-warning {
                    strong { (missing) " host" @if missing != 1 { "s" } " missed scheduled runs" }
                    " in the last 24 hours (rows in red; each host's page says which and why)."
                }
            }
            p.summary { (total) " agents, " (online) " online." }
            form.filters method="get" action="/ui/" {
                label for="tag" { "Tag" }
                input #tag type="text" name="tag" value=(tag.as_deref().unwrap_or(""));
                label for="state" { "State" }
                select #state name="state" {
                    option value="" { "any" }
                    option value="online" selected[want_state.as_deref() == Some("online")] { "online" }
                    option value="offline" selected[want_state.as_deref() == Some("offline")] { "offline" }
                }
                button type="submit" { "Filter" }
            }
            div.scroll {
                table #fleet {
                    thead { tr { th { "Host" } th { "Online" } th { "Mode" } th { "Root" } th { "Tags" } th { "Last heartbeat" } th { "Cron" } } }
                    tbody {
                        @for (v, cron) in &shown {
                            tr.warned[v.warning.is_some()] .missed[cron.missed > 0] data-host=(v.hostname) {
                                td { a href={ "/ui/hosts/" (v.hostname) } { (v.hostname) } }
                                td { @if v.connected { span.ok { "online" } } @else { span.muted { "offline" } } }
                                td { (v.execution_mode) }
                                td { @if v.is_root { "root" } @else { "no" } }
                                td { (v.tags.join(", ")) }
                                td { (v.last_heartbeat.as_deref().unwrap_or("—")) }
                                td data-field="cron" { @if v.cron_warning.is_some() { span.badge { "NO CRON DAEMON" } " " } (cron.render()) }
                            }
                            @if let Some(w) = &v.warning {
                                tr.warning-row { td colspan="7" { div.warning-text { span.badge { "SECURITY WARNING" } " " (w) } } }
                            }
                            @if let Some(w) = &v.cron_warning {
                                tr.warning-row { td colspan="7" { div.warning-text { span.badge { "NO CRON DAEMON" } " " (w) } } }
                            }
                        }
                    }
                }
            }
        },
    )
}

// ---- host ----

pub(super) async fn host(
    State(state): State<Arc<AppState>>,
    axum::Extension(csrf): axum::Extension<Csrf>,
    axum::Extension(op): axum::Extension<Operator>,
    Path(raw): Path<String>,
) -> Response {
    let Ok(h) = cc_proto::Hostname::parse(&raw) else {
        return error_page(StatusCode::BAD_REQUEST, Some(&csrf), "not a hostname");
    };
    let host = h.to_string();
    let scope = match scope_of(&state, &op).await {
        Ok(s) => s,
        Err(e) => return internal(&csrf, &e),
    };
    // Outside the selector: as if it never registered.
    let not_found = || {
        error_page(
            StatusCode::NOT_FOUND,
            Some(&csrf),
            &format!("no agent {host} has registered"),
        )
    };
    if !scope.contains(&host) {
        return not_found();
    }
    let hq = host.clone();
    let loaded = state
        .db
        .call(move |s| {
            let agent = s.agents_between(&hq, &hq)?.pop();
            // What the listener wants the host to run: its own entries and
            // the fleet's that match it.
            let cron = s.effective_cron(&hq)?;
            let mut runs = s.last_scheduled(&hq, crate::now_ms())?;
            let last = cron
                .iter()
                .map(|e| {
                    let i = runs.iter().position(|l| l.entry_id == e.id);
                    i.map(|i| runs.swap_remove(i))
                })
                .collect::<Vec<_>>();
            let health = crate::api::cron_health(s, Some(std::slice::from_ref(&hq)))?;
            let jobs = s.recent_jobs(Some(&hq), false, 50)?;
            Ok((agent, cron, last, health.into_values().next(), jobs))
        })
        .await;
    let (agent, cron, last, health, jobs) = match loaded {
        Ok(x) => x,
        Err(e) => return internal(&csrf, &e),
    };
    let Some(agent) = agent else {
        return not_found();
    };
    let zone = crate::nextrun::HostZone::of_stored(agent.cron_host.as_deref());
    let v = crate::api::agent_view(&state, agent);
    page(
        &host,
        Some(&csrf),
        html! {
            h1 { (host) }
            @if let Some(w) = &v.warning {
                div.alert role="alert" { span.badge { "SECURITY WARNING" } " " (w) }
            }
            @if let Some(w) = &v.cron_warning {
                div.alert role="alert" #cron-warning { span.badge { "NO CRON DAEMON" } " " (w) }
            }
            p.summary {
                @if v.connected { span.ok { "online" } } @else { span.muted { "offline" } }
                " · " (v.execution_mode) " mode · " (v.os) "/" (v.arch)
                " · tags: " (v.tags.join(", "))
                @if let Some(c) = &v.cron_host {
                    " · cron daemon: " (c.daemon.as_deref().unwrap_or("none"))
                    " · time zone: " (c.time_zone.as_deref().unwrap_or("unknown"))
                }
            }
            h2 { "Cron entries" }
            @if let Some(h) = &health {
                p.summary #cron-drift {
                    "wanted: " (h.wanted) " (fleet generation " (h.generation) ") · the agent installed: "
                    (h.installed.map_or("—".to_owned(), |n| n.to_string()))
                    @if h.drift { " · " span.bad { "drift" } } @else { " · in step" }
                    @if h.awaiting_signature { " · " span.bad { "awaiting signature" } }
                }
            }
            @if cron.is_empty() { p.muted { "none" } } @else {
                div.scroll { table #cron {
                    thead { tr { th { "Id" } th { "Schedule" } th { "Command" } th { "Last run" } th { "Result" } th { "Next run (" (zone.label) ")" } } }
                    tbody {
                        @for (e, l) in cron.iter().zip(&last) {
                            @let bad = l.as_ref().is_some_and(|l| l.status == "missed" || l.status == "failed");
                            tr.missed[bad] data-entry=(e.id) {
                                td { a href={ "/ui/hosts/" (host) "/cron/" (e.id) } title="its runs" { (e.id) } }
                                td.mono { (e.schedule) }
                                td.mono { (e.command) }
                                td { (l.as_ref().map_or("—".to_owned(), |l| rfc3339_ms(l.at_ms))) }
                                td data-field="result" { (l.as_ref().map_or("—".to_owned(), last_result)) }
                                td { (next_run(&host, e, &zone)) }
                            }
                        }
                    }
                } }
            }
            h2 { "Recent jobs" }
            (jobs_table(&jobs))
        },
    )
}

/// A scheduled run's outcome in words: "done, exit 0", "failed, exit 2",
/// "skipped", "missed: no cron daemon"; and how many were missed in 24 h.
fn last_result(l: &crate::store::LastScheduled) -> String {
    let mut out = match (l.status, l.exit_code, &l.detail) {
        ("missed", _, Some(why)) => format!("missed: {why}"),
        (status, Some(code), _) => format!("{status}, exit {code}"),
        (status, ..) => status.to_owned(),
    };
    if l.missed_24h > 0 {
        out.push_str(&format!(" ({} missed in 24 h)", l.missed_24h));
    }
    out
}

/// When an entry next fires on `host`, in the host's time zone (the one
/// its cron daemon reads schedules in), with its jitter wait.
fn next_run(host: &str, e: &cc_proto::wire::CronEntry, zone: &crate::nextrun::HostZone) -> String {
    crate::nextrun::next_run(host, e, zone, chrono::Utc::now())
        .map_or_else(|| "—".to_owned(), |n| n.display())
}

fn status_class(status: JobStatus, exit: Option<i64>) -> &'static str {
    match (status, exit) {
        (JobStatus::Done, Some(0)) => "ok",
        (JobStatus::Done, _) | (JobStatus::Lost | JobStatus::Expired, _) => "bad",
        _ => "muted",
    }
}

fn jobs_table(jobs: &[crate::store::JobSummary]) -> Markup {
    html! {
        @if jobs.is_empty() { p.muted { "none" } } @else {
            div.scroll { table {
                thead { tr { th { "Job" } th { "Host" } th { "Command" } th { "State" } th { "Exit" } th { "ms" } th { "Created" } } }
                tbody {
                    @for j in jobs {
                        tr data-job=(j.job_id) {
                            td { a href={ "/ui/jobs/" (j.job_id) } { (short(&j.job_id)) } }
                            td { (j.hostname) }
                            td.mono { (j.command) " " (j.args.join(" ")) }
                            td.(status_class(j.status, j.exit_code)) data-field="status" { (j.status) }
                            td data-field="exit" { (j.exit_code.map_or("—".to_owned(), |c| c.to_string())) }
                            td { (j.duration_ms.map_or("—".to_owned(), |c| c.to_string())) }
                            td { (rfc3339_ms(j.created_ms)) }
                        }
                    }
                }
            } }
        }
    }
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

// ---- runs ----

pub(super) async fn runs(
    State(state): State<Arc<AppState>>,
    axum::Extension(csrf): axum::Extension<Csrf>,
    axum::Extension(op): axum::Extension<Operator>,
) -> Response {
    let scope = match scope_of(&state, &op).await {
        Ok(s) => s,
        Err(e) => return internal(&csrf, &e),
    };
    let loaded = state
        .db
        .call(move |s| {
            let mut runs = s.recent_runs(50)?;
            let mut singles = s.recent_jobs(None, true, 50)?;
            if !scope.is_all() {
                // Of the latest 50 of each, those this operator reaches.
                let mut shown = Vec::with_capacity(runs.len());
                for r in runs {
                    if s.run_hosts(&r.run_id)?.iter().all(|h| scope.contains(h)) {
                        shown.push(r);
                    }
                }
                runs = shown;
                singles.retain(|j| scope.contains(&j.hostname));
            }
            Ok((runs, singles, s.last_event_id()?))
        })
        .await;
    let (runs, singles, since) = match loaded {
        Ok(x) => x,
        Err(e) => return internal(&csrf, &e),
    };
    page(
        "Runs",
        Some(&csrf),
        html! {
            div #runs-page data-since=(since) {}
            h1 { "Runs" }
            p { a.button href="/ui/new" { "Run a job" } }
            h2 { "Fan-out runs" }
            @if runs.is_empty() { p.muted { "none yet" } } @else {
                div.scroll { table #runs {
                    thead { tr { th { "Run" } th { "Command" } th { "Jobs by state" } th { "Failed" } th { "Created" } } }
                    tbody {
                        @for r in &runs {
                            tr data-run=(r.run_id) {
                                td { a href={ "/ui/runs/" (r.run_id) } { (short(&r.run_id)) } }
                                td.mono { (r.command) " " (r.args.join(" ")) }
                                td data-field="counts" {
                                    @for (st, n) in &r.counts { span.count { (st) " " (n) } " " }
                                }
                                td.bad[r.failed > 0] data-field="failed" { (r.failed) }
                                td { (rfc3339_ms(r.created_ms)) }
                            }
                        }
                    }
                } }
            }
            h2 { "Single jobs" }
            (jobs_table(&singles))
        },
    )
}

pub(super) async fn run(
    State(state): State<Arc<AppState>>,
    axum::Extension(csrf): axum::Extension<Csrf>,
    axum::Extension(op): axum::Extension<Operator>,
    Path(id): Path<String>,
) -> Response {
    if cc_proto::JobId::parse(&id).is_err() {
        return error_page(StatusCode::BAD_REQUEST, Some(&csrf), "not a run id");
    }
    let scope = match scope_of(&state, &op).await {
        Ok(s) => s,
        Err(e) => return internal(&csrf, &e),
    };
    let rid = id.clone();
    let run = match state.db.call(move |s| s.get_run(&rid)).await {
        Ok(Some(r)) if r.jobs.iter().all(|j| scope.contains(&j.hostname)) => r,
        Ok(_) => {
            return error_page(StatusCode::NOT_FOUND, Some(&csrf), "no such run");
        }
        Err(e) => return internal(&csrf, &e),
    };
    let mut hosts = run.jobs.clone();
    // Failures first: failed, lost, expired; then running; then succeeded.
    hosts.sort_by_key(|j| {
        let rank = match (j.status, j.exit_code) {
            (JobStatus::Done, Some(0)) => 2,
            (JobStatus::Done | JobStatus::Lost | JobStatus::Expired, _) => 0,
            _ => 1,
        };
        (rank, j.hostname.clone())
    });
    let mut counts: Vec<(JobStatus, usize)> = Vec::new();
    for st in JobStatus::ALL {
        let n = run.jobs.iter().filter(|j| j.status == st).count();
        if n > 0 {
            counts.push((st, n));
        }
    }
    page(
        "Run",
        Some(&csrf),
        html! {
            h1 { "Run " (short(&run.run_id)) }
            p.mono { (run.command) " " (run.args.join(" ")) }
            p.summary #run-counts data-run=(run.run_id) {
                @for (st, n) in &counts { span.count { (st) " " (n) } " " }
            }
            div.scroll { table #run-hosts data-run=(run.run_id) {
                thead { tr { th { "Host" } th { "Job" } th { "State" } th { "Exit" } th { "ms" } } }
                tbody {
                    @for j in &hosts {
                        tr data-job=(j.job_id) {
                            td { (j.hostname) }
                            td { a href={ "/ui/jobs/" (j.job_id) } { (short(&j.job_id)) } }
                            td.(status_class(j.status, j.exit_code)) data-field="status" { (j.status) }
                            td data-field="exit" { (j.exit_code.map_or("—".to_owned(), |c| c.to_string())) }
                            td { (j.duration_ms.map_or("—".to_owned(), |c| c.to_string())) }
                        }
                    }
                }
            } }
        },
    )
}

// ---- job ----

pub(super) async fn job(
    State(state): State<Arc<AppState>>,
    axum::Extension(csrf): axum::Extension<Csrf>,
    axum::Extension(op): axum::Extension<Operator>,
    Path(id): Path<String>,
) -> Response {
    if cc_proto::JobId::parse(&id).is_err() {
        return error_page(StatusCode::BAD_REQUEST, Some(&csrf), "not a job id");
    }
    let scope = match scope_of(&state, &op).await {
        Ok(s) => s,
        Err(e) => return internal(&csrf, &e),
    };
    let jid = id.clone();
    let job = match state.db.call(move |s| s.get_job(&jid)).await {
        Ok(Some(j)) if scope.contains(&j.hostname) => j,
        Ok(_) => return error_page(StatusCode::NOT_FOUND, Some(&csrf), "no such job"),
        Err(e) => return internal(&csrf, &e),
    };
    let report: Option<serde_json::Value> = job
        .report
        .as_deref()
        .and_then(|t| serde_json::from_str(t).ok());
    let text = |r: &serde_json::Value, k: &str| r[k].as_str().unwrap_or("").to_owned();
    page(
        "Job",
        Some(&csrf),
        html! {
            h1 { "Job " (short(&job.job_id)) }
            dl.facts #job data-job=(job.job_id) data-status=(job.status) {
                dt { "Host" } dd { a href={ "/ui/hosts/" (job.hostname) } { (job.hostname) } }
                dt { "Command" } dd.mono { (job.command) " " (job.args.join(" ")) }
                dt { "Timeout" } dd { (job.timeout_secs) " s" }
                dt { "State" } dd #state.(status_class(job.status, report.as_ref().and_then(|r| r["exitCode"].as_i64()))) { (job.status) }
                dt { "Exit code" } dd #exit { (report.as_ref().map_or("—".to_owned(), |r| r["exitCode"].to_string())) }
                dt { "Ran as" } dd #user {
                    @if let Some(r) = &report {
                        @if r["executingUid"] == 0 { strong.bad { "root" } " (uid 0)" }
                        @else { (text(r, "executingUser")) " (uid " (r["executingUid"]) ")" }
                    } @else { "—" }
                }
                dt { "Started" } dd #started { (report.as_ref().map_or("—".to_owned(), |r| text(r, "startTime"))) }
                dt { "Duration" } dd #duration { (report.as_ref().map_or("—".to_owned(), |r| format!("{} ms", r["durationMs"]))) }
                dt { "Warning" } dd #warning { (report.as_ref().and_then(|r| r["warning"].as_str()).unwrap_or("—")) }
            }
            ol #changes.muted {}
            p.muted { "Output is kept up to 256 KiB per stream; beyond it the first and last 128 KiB are kept and the warning says how many bytes were dropped." }
            h2 { "stdout" }
            pre #stdout { (report.as_ref().map_or(String::new(), |r| text(r, "stdout"))) }
            h2 { "stderr" }
            pre #stderr { (report.as_ref().map_or(String::new(), |r| text(r, "stderr"))) }
        },
    )
}
