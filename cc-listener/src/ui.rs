//! The web console under `/ui/` on the operator address.
//!
//! Server-rendered HTML (`maud`: every value is escaped unless marked
//! otherwise, and nothing here marks an agent's or a job's text so), one
//! plain script (`/ui/static/app.js`) for live updates over the event
//! stream, one style sheet; both are compiled into the binary.
//!
//! Security: the operator token is exchanged at `/ui/login` for a session
//! cookie (`HttpOnly`, `SameSite=Strict`, `Path=/ui`; `Secure` with
//! `ui_secure_cookie`, for a console served through a TLS proxy). Every
//! `POST` carries the session's CSRF token, compared in constant time.
//! Every answer carries a Content-Security-Policy that allows scripts,
//! styles and connections from this origin only (no inline script, no
//! `eval`), and refuses framing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use crate::store::{AgentRow, JobStatus};
use crate::{AppState, rfc3339_ms};

const SESSION_COOKIE: &str = "cc_session";
/// Sessions last this long from login.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions held at once; a new login beyond it ends the oldest.
const MAX_SESSIONS: usize = 1024;
/// Agents the fleet page lists (the API pages beyond).
const FLEET_LIMIT: u32 = 10_000;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");

/// Logged-in operators: session id → its CSRF token and expiry.
#[derive(Debug, Default)]
pub struct Sessions(Mutex<HashMap<String, Session>>);

#[derive(Debug, Clone)]
struct Session {
    csrf: String,
    expires: Instant,
}

/// 256 bits from the kernel, as hex; `None` if the kernel gives none.
fn random_hex() -> Option<String> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).ok()?;
    Some(hex::encode(raw))
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn create(&self) -> Option<(String, Session)> {
        let mut m = self.lock();
        let now = Instant::now();
        m.retain(|_, s| s.expires > now);
        let oldest = (m.len() >= MAX_SESSIONS)
            .then(|| {
                m.iter()
                    .min_by_key(|(_, s)| s.expires)
                    .map(|(k, _)| k.clone())
            })
            .flatten();
        if let Some(oldest) = oldest {
            m.remove(&oldest);
        }
        let (id, s) = (
            random_hex()?,
            Session {
                csrf: random_hex()?,
                expires: now + SESSION_TTL,
            },
        );
        m.insert(id.clone(), s.clone());
        Some((id, s))
    }

    fn get(&self, id: &str) -> Option<Session> {
        let m = self.lock();
        m.get(id).filter(|s| s.expires > Instant::now()).cloned()
    }

    fn remove(&self, id: &str) {
        self.lock().remove(id);
    }
}

fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v)
}

/// The session a request belongs to, from its cookie.
#[derive(Debug, Clone)]
struct Csrf(String);

pub fn router(state: Arc<AppState>) -> Router<Arc<AppState>> {
    let private = Router::new()
        .route("/ui/", get(fleet))
        .route("/ui/hosts/{host}", get(host))
        .route("/ui/runs", get(runs))
        .route("/ui/runs/{id}", get(run))
        .route("/ui/runs/{id}/json", get(crate::api::get_run))
        .route("/ui/jobs/{id}", get(job))
        .route("/ui/jobs/{id}/json", get(crate::api::get_job))
        .route("/ui/events", get(crate::api::events))
        .route("/ui/new", get(new_run_form).post(new_run))
        .route("/ui/logout", axum::routing::post(logout))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            require_session,
        ));
    Router::new()
        .merge(private)
        .route("/ui/login", get(login_form).post(login))
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/static/app.js", get(app_js))
        .route("/ui/static/app.css", get(app_css))
        .layer(middleware::from_fn(security_headers))
}

/// Headers on every console answer.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut resp = next.run(request).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// Pages need a live session (else the login page); a `POST` also needs
/// the session's CSRF token in its form, checked by the handler through
/// the [`Csrf`] this puts in the request.
async fn require_session(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let session = session_id(request.headers()).and_then(|id| state.sessions.get(id));
    match session {
        Some(s) => {
            request.extensions_mut().insert(Csrf(s.csrf));
            next.run(request).await
        }
        None if request.method() == axum::http::Method::GET => {
            Redirect::to("/ui/login").into_response()
        }
        None => (StatusCode::FORBIDDEN, "no session: log in again").into_response(),
    }
}

/// Whether `given` is the session's CSRF token (compared in constant time).
fn csrf_ok(csrf: &Csrf, given: &str) -> bool {
    !given.is_empty() && bool::from(csrf.0.as_bytes().ct_eq(given.as_bytes()))
}

/// The answer to a `POST` without the session's CSRF token.
fn csrf_refused() -> Response {
    warn!("console: a POST without the session's CSRF token refused");
    (
        StatusCode::FORBIDDEN,
        "refused: this form did not come from this console (CSRF token missing or wrong)",
    )
        .into_response()
}

async fn app_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
        .into_response()
}

async fn app_css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS).into_response()
}

fn page(title: &str, csrf: Option<&Csrf>, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · CronCommander" }
                link rel="stylesheet" href="/ui/static/app.css";
                script src="/ui/static/app.js" defer {}
            }
            body {
                header {
                    a.brand href="/ui/" { "CronCommander" }
                    @if let Some(c) = csrf {
                        nav {
                            a href="/ui/" { "Fleet" }
                            a href="/ui/runs" { "Runs" }
                            a href="/ui/new" { "Run a job" }
                            form.inline method="post" action="/ui/logout" {
                                input type="hidden" name="csrf" value=(c.0);
                                button type="submit" { "Log out" }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    };
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

fn error_page(status: StatusCode, csrf: Option<&Csrf>, message: &str) -> Response {
    let mut r = page(
        "Error",
        csrf,
        html! { h1 { "Error" } p.error { (message) } },
    );
    *r.status_mut() = status;
    r
}

// ---- login ----

async fn login_form() -> Response {
    page(
        "Log in",
        None,
        html! {
            h1 { "Log in" }
            form.card method="post" action="/ui/login" {
                label for="token" { "Operator token" }
                input #token type="password" name="token" autocomplete="current-password" required;
                button type="submit" { "Log in" }
            }
        },
    )
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(state): State<Arc<AppState>>, Form(f): Form<LoginForm>) -> Response {
    if !crate::api::token_matches(&state, &f.token) {
        // Anyone who reaches the operator address can try: bounded.
        static WRONG_LOGINS: cc_proto::logline::LogBudget =
            cc_proto::logline::LogBudget::new(std::time::Duration::from_secs(10), 5);
        if let Some(left_out) = WRONG_LOGINS.allow() {
            warn!(left_out, "console: a login with a wrong token refused");
        }
        let mut r = page(
            "Log in",
            None,
            html! {
                h1 { "Log in" }
                p.error { "That is not the operator token." }
                p { a href="/ui/login" { "Try again" } }
            },
        );
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        return r;
    }
    let Some((id, _)) = state.sessions.create() else {
        warn!("console: no randomness for a session");
        return error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            None,
            "no session could be made",
        );
    };
    info!("console: an operator logged in");
    let secure = if state.settings.ui_secure_cookie {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{SESSION_COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        SESSION_TTL.as_secs()
    );
    let mut r = Redirect::to("/ui/").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(state): State<Arc<AppState>>,
    axum::Extension(csrf): axum::Extension<Csrf>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    if !csrf_ok(&csrf, &f.csrf) {
        return csrf_refused();
    }
    if let Some(id) = session_id(&headers) {
        state.sessions.remove(id);
    }
    let mut r = Redirect::to("/ui/login").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("cc_session=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
}

// ---- fleet ----

#[derive(Deserialize)]
struct FleetQuery {
    tag: Option<String>,
    state: Option<String>,
}

fn internal(csrf: &Csrf, e: &anyhow::Error) -> Response {
    warn!("console: {e:#}");
    error_page(
        StatusCode::INTERNAL_SERVER_ERROR,
        Some(csrf),
        "internal error; see the listener log",
    )
}

async fn all_agents(state: &AppState) -> anyhow::Result<Vec<AgentRow>> {
    state
        .db
        .call(|s| {
            let page = s.agent_page(None, FLEET_LIMIT)?;
            let (Some(first), Some(last)) = (page.first(), page.last()) else {
                return Ok(Vec::new());
            };
            let mut rows = s.agents_between(&first.0, &last.0)?;
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

async fn fleet(
    State(state): State<Arc<AppState>>,
    axum::Extension(csrf): axum::Extension<Csrf>,
    Query(q): Query<FleetQuery>,
) -> Response {
    let rows = match all_agents(&state).await {
        Ok(r) => r,
        Err(e) => return internal(&csrf, &e),
    };
    let total = rows.len();
    let views: Vec<_> = rows
        .into_iter()
        .map(|r| {
            let cron = cron_summary(r.cron_status.as_deref());
            (crate::api::agent_view(&state, r), cron)
        })
        .collect();
    let warned = views.iter().filter(|(v, _)| v.warning.is_some()).count();
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
                            tr.warned[v.warning.is_some()] data-host=(v.hostname) {
                                td { a href={ "/ui/hosts/" (v.hostname) } { (v.hostname) } }
                                td { @if v.connected { span.ok { "online" } } @else { span.muted { "offline" } } }
                                td { (v.execution_mode) }
                                td { @if v.is_root { "root" } @else { "no" } }
                                td { (v.tags.join(", ")) }
                                td { (v.last_heartbeat.as_deref().unwrap_or("—")) }
                                td { (cron) }
                            }
                            @if let Some(w) = &v.warning {
                                tr.warning-row { td colspan="7" { span.badge { "SECURITY WARNING" } " " (w) } }
                            }
                        }
                    }
                }
            }
        },
    )
}

// ---- host ----

async fn host(
    State(state): State<Arc<AppState>>,
    axum::Extension(csrf): axum::Extension<Csrf>,
    Path(raw): Path<String>,
) -> Response {
    let Ok(h) = cc_proto::Hostname::parse(&raw) else {
        return error_page(StatusCode::BAD_REQUEST, Some(&csrf), "not a hostname");
    };
    let host = h.to_string();
    let hq = host.clone();
    let loaded = state
        .db
        .call(move |s| {
            let agent = s.agents_between(&hq, &hq)?.pop();
            let cron = s.get_cron(&hq)?.map(|(e, _)| e).unwrap_or_default();
            let mut last = Vec::with_capacity(cron.len());
            for e in &cron {
                last.push(s.last_report(&hq, &e.id)?);
            }
            let jobs = s.recent_jobs(Some(&hq), false, 50)?;
            Ok((agent, cron, last, jobs))
        })
        .await;
    let (agent, cron, last, jobs) = match loaded {
        Ok(x) => x,
        Err(e) => return internal(&csrf, &e),
    };
    let Some(agent) = agent else {
        return error_page(
            StatusCode::NOT_FOUND,
            Some(&csrf),
            &format!("no agent {host} has registered"),
        );
    };
    let v = crate::api::agent_view(&state, agent);
    page(
        &host,
        Some(&csrf),
        html! {
            h1 { (host) }
            @if let Some(w) = &v.warning {
                div.alert role="alert" { span.badge { "SECURITY WARNING" } " " (w) }
            }
            p.summary {
                @if v.connected { span.ok { "online" } } @else { span.muted { "offline" } }
                " · " (v.execution_mode) " mode · " (v.os) "/" (v.arch)
                " · tags: " (v.tags.join(", "))
            }
            h2 { "Cron entries" }
            @if cron.is_empty() { p.muted { "none" } } @else {
                div.scroll { table {
                    thead { tr { th { "Id" } th { "Schedule" } th { "Command" } th { "Last run" } th { "Exit" } th { "Next run (UTC)" } } }
                    tbody {
                        @for (e, l) in cron.iter().zip(&last) {
                            tr {
                                td { (e.id) }
                                td.mono { (e.schedule) }
                                td.mono { (e.command) }
                                td { (l.map_or("—".to_owned(), |(t, _)| rfc3339_ms(t))) }
                                td { (l.map_or("—".to_owned(), |(_, c)| c.to_string())) }
                                td { (next_run(&e.schedule)) }
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

/// When a schedule next fires, in UTC (the host's cron uses its own time
/// zone: the same when the host runs on UTC).
fn next_run(schedule: &str) -> String {
    cc_proto::schedule::Schedule::parse(schedule)
        .ok()
        .and_then(|s| s.next_after(chrono::Utc::now()))
        .map_or_else(
            || "—".to_owned(),
            |t| t.format("%Y-%m-%d %H:%M").to_string(),
        )
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

async fn runs(
    State(state): State<Arc<AppState>>,
    axum::Extension(csrf): axum::Extension<Csrf>,
) -> Response {
    let loaded = state
        .db
        .call(|s| {
            Ok((
                s.recent_runs(50)?,
                s.recent_jobs(None, true, 50)?,
                s.last_event_id()?,
            ))
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

async fn run(
    State(state): State<Arc<AppState>>,
    axum::Extension(csrf): axum::Extension<Csrf>,
    Path(id): Path<String>,
) -> Response {
    if cc_proto::JobId::parse(&id).is_err() {
        return error_page(StatusCode::BAD_REQUEST, Some(&csrf), "not a run id");
    }
    let rid = id.clone();
    let run = match state.db.call(move |s| s.get_run(&rid)).await {
        Ok(Some(r)) => r,
        Ok(None) => {
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

async fn job(
    State(state): State<Arc<AppState>>,
    axum::Extension(csrf): axum::Extension<Csrf>,
    Path(id): Path<String>,
) -> Response {
    if cc_proto::JobId::parse(&id).is_err() {
        return error_page(StatusCode::BAD_REQUEST, Some(&csrf), "not a job id");
    }
    let jid = id.clone();
    let job = match state.db.call(move |s| s.get_job(&jid)).await {
        Ok(Some(j)) => j,
        Ok(None) => return error_page(StatusCode::NOT_FOUND, Some(&csrf), "no such job"),
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

// ---- run a job ----

async fn new_run_form(axum::Extension(csrf): axum::Extension<Csrf>) -> Response {
    new_run_page(&csrf, None, &NewRunForm::default())
}

#[derive(Debug, Default, Deserialize)]
struct NewRunForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    hosts: String,
    #[serde(default)]
    tags: String,
    #[serde(default)]
    command: String,
    #[serde(default)]
    args: String,
    #[serde(default)]
    timeout: String,
    #[serde(default)]
    batch: String,
    /// Operator-signed statements (`ccctl sign`), for system-mode hosts.
    #[serde(default)]
    signed: String,
    #[serde(default)]
    confirm_root: Option<String>,
}

fn new_run_page(csrf: &Csrf, error: Option<&str>, f: &NewRunForm) -> Response {
    page(
        "Run a job",
        Some(csrf),
        html! {
            h1 { "Run a job" }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form.card #new-run method="post" action="/ui/new" {
                input type="hidden" name="csrf" value=(csrf.0);
                label for="hosts" { "Hosts (space or comma separated)" }
                input #hosts type="text" name="hosts" value=(f.hosts);
                label for="tags" { "Tags (every one of them)" }
                input #tags type="text" name="tags" value=(f.tags);
                label for="command" { "Program (absolute path)" }
                input #command type="text" name="command" value=(f.command) placeholder="/usr/bin/uptime";
                label for="args" { "Arguments (one per line)" }
                textarea #args name="args" rows="3" { (f.args) }
                label for="timeout" { "Timeout (seconds)" }
                input #timeout type="number" name="timeout" min="1" value=(f.timeout) placeholder="3600";
                label for="batch" { "Batch (at most this many at once)" }
                input #batch type="number" name="batch" min="1" value=(f.batch);
                details {
                    summary { "Root work (system-mode hosts)" }
                    p.muted { "Root jobs run only as an operator signed them: paste the statements "
                        code { "ccctl sign --key KEY HOST… -- PROGRAM ARGS…" } " printed (a JSON list). "
                        "The console does not sign." }
                    textarea #signed name="signed" rows="4" { (f.signed) }
                    label.check { input type="checkbox" name="confirm_root" value="yes"; " I mean to run this as root on these hosts" }
                }
                button type="submit" { "Run" }
            }
        },
    )
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

async fn new_run(
    State(state): State<Arc<AppState>>,
    axum::Extension(csrf): axum::Extension<Csrf>,
    Form(f): Form<NewRunForm>,
) -> Response {
    if !csrf_ok(&csrf, &f.csrf) {
        return csrf_refused();
    }
    let mut body = serde_json::Map::new();
    let number = |field: &str, text: &str| -> Result<Option<u64>, String> {
        let t = text.trim();
        if t.is_empty() {
            return Ok(None);
        }
        t.parse::<u64>()
            .map(Some)
            .map_err(|_| format!("{field} must be a whole number"))
    };
    let (timeout, batch) = match (number("timeout", &f.timeout), number("batch", &f.batch)) {
        (Ok(t), Ok(b)) => (t, b),
        (Err(e), _) | (_, Err(e)) => {
            return with_status(StatusCode::BAD_REQUEST, new_run_page(&csrf, Some(&e), &f));
        }
    };
    if let Some(b) = batch {
        body.insert("batch".into(), b.into());
    }
    if f.signed.trim().is_empty() {
        // A target in system mode needs signed statements: say so here
        // rather than queue work its helper will refuse.
        let hosts = words(&f.hosts);
        let tags = words(&f.tags);
        let system = match system_targets(&state, &hosts, &tags).await {
            Ok(s) => s,
            Err(e) => return internal(&csrf, &e),
        };
        if !system.is_empty() {
            let msg = format!(
                "{} in system mode: root work needs statements an operator signed (paste them under \"Root work\")",
                system.join(", ")
            );
            return with_status(StatusCode::BAD_REQUEST, new_run_page(&csrf, Some(&msg), &f));
        }
        body.insert("hosts".into(), hosts.into());
        body.insert("tags".into(), tags.into());
        body.insert("command".into(), f.command.trim().into());
        let args: Vec<String> = f
            .args
            .lines()
            .map(|l| l.trim_end_matches('\r').to_owned())
            .filter(|l| !l.is_empty())
            .collect();
        body.insert("args".into(), args.into());
        if let Some(t) = timeout {
            body.insert("timeout".into(), t.into());
        }
    } else {
        if f.confirm_root.as_deref() != Some("yes") {
            return with_status(
                StatusCode::BAD_REQUEST,
                new_run_page(
                    &csrf,
                    Some("root work: tick the box to confirm you mean to run this as root"),
                    &f,
                ),
            );
        }
        let Ok(list) = serde_json::from_str::<serde_json::Value>(&f.signed) else {
            return with_status(
                StatusCode::BAD_REQUEST,
                new_run_page(&csrf, Some("the signed statements are not JSON"), &f),
            );
        };
        body.insert("signed".into(), list);
    }
    let bytes = axum::body::Bytes::from(serde_json::Value::Object(body).to_string());
    match crate::api::post_run(State(Arc::clone(&state)), Ok(bytes)).await {
        Ok((_, Json(accepted))) => {
            info!(run_id = %accepted.run_id, "console: run started");
            if let [only] = accepted.jobs.as_slice() {
                Redirect::to(&format!("/ui/jobs/{}", only.job_id)).into_response()
            } else {
                Redirect::to(&format!("/ui/runs/{}", accepted.run_id)).into_response()
            }
        }
        Err(e) => with_status(
            StatusCode::BAD_REQUEST,
            new_run_page(&csrf, Some(e.message()), &f),
        ),
    }
}

fn with_status(status: StatusCode, mut r: Response) -> Response {
    *r.status_mut() = status;
    r
}

/// Of the hosts named and those carrying every tag, the ones registered in
/// system mode.
async fn system_targets(
    state: &AppState,
    hosts: &[String],
    tags: &[String],
) -> anyhow::Result<Vec<String>> {
    let (hosts, tags) = (hosts.to_vec(), tags.to_vec());
    state
        .db
        .call(move |s| {
            let mut all = hosts;
            if !tags.is_empty() {
                all.extend(s.hosts_with_tags(&tags)?);
            }
            all.sort();
            all.dedup();
            let mut system = Vec::new();
            for h in all {
                let canonical = cc_proto::Hostname::parse(&h).map(|h| h.to_string());
                if let Ok(h) = canonical
                    && s.agent_mode(&h)?.as_deref() == Some("system")
                {
                    system.push(h);
                }
            }
            Ok(system)
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; cc_session=abc; b=2"),
        );
        assert_eq!(session_id(&h), Some("abc"));
        h.insert(header::COOKIE, HeaderValue::from_static("cc_sessionx=1"));
        assert_eq!(session_id(&h), None);
    }

    #[test]
    fn csrf_is_refused_unless_it_matches() {
        let c = Csrf("token".into());
        assert!(csrf_ok(&c, "token"));
        for bad in ["", "tokem", "token2", "TOKEN"] {
            assert!(!csrf_ok(&c, bad), "{bad:?}");
        }
        let empty = Csrf(String::new());
        assert!(!csrf_ok(&empty, ""));
    }

    #[test]
    fn sessions_expire_and_are_bounded() {
        let s = Sessions::default();
        let (id, sess) = s.create().unwrap();
        assert_eq!(s.get(&id).unwrap().csrf, sess.csrf);
        s.remove(&id);
        assert!(s.get(&id).is_none());
        let first = s.create().unwrap().0;
        for _ in 0..MAX_SESSIONS {
            s.create();
        }
        assert!(s.get(&first).is_none(), "the oldest went");
        assert_eq!(s.lock().len(), MAX_SESSIONS);
    }

    #[test]
    fn form_words_split_on_commas_and_space() {
        assert_eq!(
            words(" a.test, b.test\nc.test,,"),
            ["a.test", "b.test", "c.test"]
        );
    }
}
