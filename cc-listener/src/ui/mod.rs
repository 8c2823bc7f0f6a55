//! The web console under `/ui/` on the operator address.
//!
//! Server-rendered HTML (`maud`: every value is escaped unless marked
//! otherwise, and nothing here marks an agent's or a job's text so), one
//! plain script (`/ui/static/app.js`) for live updates over the event
//! stream, one style sheet; both are compiled into the binary.
//!
//! Security: an operator's token is exchanged at `/ui/login` for a session
//! cookie (`HttpOnly`, `SameSite=Strict`, `Path=/ui`; `Secure` with
//! `ui_secure_cookie`, for a console served through a TLS proxy). Every
//! `POST` carries the session's CSRF token, compared in constant time.
//! Every page's header names the operator logged in and its role.
//! Every answer carries a Content-Security-Policy that allows scripts,
//! styles and connections from this origin only (no inline script, no
//! `eval`), and refuses framing.
//!
//! This module holds the router, the headers every answer carries
//! (`security_headers`), the compiled-in script and style sheet, and the
//! page shell (`page`, `error_page`). `session`: logging in and out,
//! sessions in memory and their CSRF tokens (`require_session` guards every
//! page but the login). `pages`: the read-only pages (fleet, host, runs,
//! run, job). `new_run`: the form that starts a run through the API's own
//! handler (`crate::api::post_run`). The JSON and event routes are the
//! API's handlers behind the session instead of the token.
//!
//! Invariants: no page is served without a live session; no `POST` acts
//! without the session's CSRF token; no agent's or job's text is marked
//! pre-escaped.

mod cron_runs;
mod new_run;
mod pages;
mod session;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use maud::{DOCTYPE, Markup, html};
use tracing::warn;

use self::new_run::{new_run, new_run_form};
use self::pages::{fleet, host, job, run, runs};
pub use self::session::Sessions;
use self::session::{Csrf, login, login_form, logout, require_session};
use crate::AppState;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");

pub fn router(state: Arc<AppState>) -> Router<Arc<AppState>> {
    let private = Router::new()
        .route("/ui/", get(fleet))
        .route("/ui/hosts/{host}", get(host))
        .route("/ui/hosts/{host}/cron/{id}", get(cron_runs::cron_runs))
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
                        span.who { (c.1.name) " · " (c.1.role) }
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

fn internal(csrf: &Csrf, e: &anyhow::Error) -> Response {
    warn!("console: {e:#}");
    error_page(
        StatusCode::INTERNAL_SERVER_ERROR,
        Some(csrf),
        "internal error; see the listener log",
    )
}
