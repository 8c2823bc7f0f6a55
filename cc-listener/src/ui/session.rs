//! Console sessions: an operator's own token (or the admin token) is
//! exchanged at `/ui/login` for a session cookie (`HttpOnly`, `SameSite=Strict`, `Path=/ui`; `Secure`
//! with `ui_secure_cookie`); sessions live in memory (`Sessions`, at most
//! `MAX_SESSIONS`, each `SESSION_TTL` from login), each with its own CSRF
//! token. A session holds its [`Operator`]; every request in it asks
//! `auth::still_valid` first, so a revoked or expired operator's session
//! ends at its next request (and its live event stream within a second),
//! and is refused (403) a route its role may not use (`api::role_allows`,
//! the API's own table).
//!
//! Invariants: the token and CSRF tokens are compared in constant time; a
//! wrong login is logged at a bounded rate; a new login beyond the cap ends
//! the oldest session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Form, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use super::{error_page, page};
use crate::AppState;
use crate::auth::Operator;

const SESSION_COOKIE: &str = "cc_session";
/// Sessions last this long from login.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions held at once; a new login beyond it ends the oldest.
const MAX_SESSIONS: usize = 1024;

/// Logged-in operators: session id → its CSRF token and expiry.
#[derive(Debug, Default)]
pub struct Sessions(Mutex<HashMap<String, Session>>);

#[derive(Debug, Clone)]
struct Session {
    csrf: String,
    expires: Instant,
    operator: crate::auth::Operator,
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

    fn create(&self, operator: crate::auth::Operator) -> Option<(String, Session)> {
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
                operator,
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

/// The session a request belongs to: its CSRF token and its operator
/// (whom the page header names).
#[derive(Debug, Clone)]
pub(super) struct Csrf(pub(super) String, pub(super) Operator);

/// Pages need a live session (else the login page); a `POST` also needs
/// the session's CSRF token in its form, checked by the handler through
/// the [`Csrf`] this puts in the request.
pub(super) async fn require_session(
    State(state): State<Arc<AppState>>,
    template: Option<axum::extract::MatchedPath>,
    mut request: Request,
    next: Next,
) -> Response {
    let id = session_id(request.headers()).map(str::to_owned);
    let mut session = id.as_deref().and_then(|id| state.sessions.get(id));
    if let Some(s) = &session {
        if !crate::auth::still_valid(&state, &s.operator).await {
            info!(operator = %s.operator.name, "console: session ended: the operator was revoked or expired");
            if let Some(id) = &id {
                state.sessions.remove(id);
            }
            session = None;
        }
    }
    match session {
        Some(s) => {
            crate::api::audit::note_operator(&s.operator.name);
            let template = template.as_ref().map(axum::extract::MatchedPath::as_str);
            let allowed =
                crate::api::role_allows(request.method().as_str(), template, s.operator.role);
            if let Err(why) = allowed {
                let c = Csrf(s.csrf, s.operator);
                return error_page(StatusCode::FORBIDDEN, Some(&c), &why);
            }
            request
                .extensions_mut()
                .insert(Csrf(s.csrf, s.operator.clone()));
            request.extensions_mut().insert(s.operator);
            next.run(request).await
        }
        None if request.method() == axum::http::Method::GET => {
            Redirect::to("/ui/login").into_response()
        }
        None => (StatusCode::FORBIDDEN, "no session: log in again").into_response(),
    }
}

/// Whether `given` is the session's CSRF token (compared in constant time).
pub(super) fn csrf_ok(csrf: &Csrf, given: &str) -> bool {
    !given.is_empty() && bool::from(csrf.0.as_bytes().ct_eq(given.as_bytes()))
}

/// The answer to a `POST` without the session's CSRF token.
pub(super) fn csrf_refused() -> Response {
    warn!("console: a POST without the session's CSRF token refused");
    (
        StatusCode::FORBIDDEN,
        "refused: this form did not come from this console (CSRF token missing or wrong)",
    )
        .into_response()
}

pub(super) async fn login_form() -> Response {
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
pub(super) struct LoginForm {
    token: String,
}

pub(super) async fn login(
    State(state): State<Arc<AppState>>,
    Form(f): Form<LoginForm>,
) -> Response {
    let Some(operator) = crate::auth::resolve(&state, &f.token) else {
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
                p.error { "That is not the operator token, nor a live operator's (one may have expired or been revoked)." }
                p { a href="/ui/login" { "Try again" } }
            },
        );
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        return r;
    };
    crate::api::audit::note_operator(&operator.name);
    let (name, role) = (operator.name.clone(), operator.role);
    let Some((id, _)) = state.sessions.create(operator) else {
        warn!("console: no randomness for a session");
        return error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            None,
            "no session could be made",
        );
    };
    info!(operator = %name, role = %role, "console: an operator logged in");
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
pub(super) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub(super) async fn logout(
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
        let c = Csrf("token".into(), Operator::first_admin("admin"));
        assert!(csrf_ok(&c, "token"));
        for bad in ["", "tokem", "token2", "TOKEN"] {
            assert!(!csrf_ok(&c, bad), "{bad:?}");
        }
        let empty = Csrf(String::new(), Operator::first_admin("admin"));
        assert!(!csrf_ok(&empty, ""));
    }

    #[test]
    fn sessions_expire_and_are_bounded() {
        let s = Sessions::default();
        let (id, sess) = s
            .create(crate::auth::Operator::first_admin("admin"))
            .unwrap();
        assert_eq!(s.get(&id).unwrap().csrf, sess.csrf);
        s.remove(&id);
        assert!(s.get(&id).is_none());
        let first = s
            .create(crate::auth::Operator::first_admin("admin"))
            .unwrap()
            .0;
        for _ in 0..MAX_SESSIONS {
            s.create(crate::auth::Operator::first_admin("admin"));
        }
        assert!(s.get(&first).is_none(), "the oldest went");
        assert_eq!(s.lock().len(), MAX_SESSIONS);
    }
}
