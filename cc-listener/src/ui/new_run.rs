//! "Run a job": the console's form for `POST /runs`. The form becomes the
//! API's JSON body and goes through the API's own handler
//! (`crate::api::post_run`), so the console checks nothing the API does
//! not; a target in system mode without signed statements is refused here
//! with a message, and signed statements need the root box ticked.
//!
//! Least privilege: the form says which hosts the operator's selector
//! reaches, a viewer gets no form, and what is posted goes through
//! `post_run`'s checks (a run reaching any host outside the selector is
//! refused whole, with the API's 403 and message); the system-mode hint
//! names only hosts the operator reaches.
//!
//! Invariant: the form acts only with the session's CSRF token.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Form, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;
use tracing::info;

use super::pages::scope_of;
use super::session::{Csrf, csrf_ok, csrf_refused};
use super::{error_page, internal, page};
use crate::AppState;
use crate::auth::Operator;

pub(super) async fn new_run_form(
    axum::Extension(csrf): axum::Extension<Csrf>,
    axum::Extension(op): axum::Extension<Operator>,
) -> Response {
    if !op.role.may_act() {
        return may_not_run(&csrf, &op);
    }
    new_run_page(&csrf, &op, None, &NewRunForm::default())
}

/// A viewer's answer: 403, no form.
fn may_not_run(csrf: &Csrf, op: &Operator) -> Response {
    error_page(
        StatusCode::FORBIDDEN,
        Some(csrf),
        &format!("{} has role {}: it may not run jobs", op.name, op.role),
    )
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct NewRunForm {
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

fn new_run_page(csrf: &Csrf, op: &Operator, error: Option<&str>, f: &NewRunForm) -> Response {
    page(
        "Run a job",
        Some(csrf),
        html! {
            h1 { "Run a job" }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            @if !op.hosts.is_all() {
                p.muted #reach { "You may run on the hosts your selector reaches: " code { (op.hosts) }
                    ". A run that reaches any other host is refused whole." }
            }
            form.card #new-run method="post" action="/ui/new" {
                input type="hidden" name="csrf" value=(csrf.0);
                label for="hosts" { "Hosts (space or comma separated)" }
                input #hosts type="text" name="hosts" value=(f.hosts);
                label for="tags" { "Tags (every one of them)" }
                input #tags type="text" name="tags" value=(f.tags);
                label for="command" { "Program (absolute path)" }
                // Not `required`: root work takes its command from the
                // signed statements and leaves this empty.
                input #command type="text" name="command" value=(f.command) placeholder="/usr/bin/uptime"
                    pattern="/.*" title="an absolute path, starting with /, like /usr/bin/uptime";
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

pub(super) async fn new_run(
    State(state): State<Arc<AppState>>,
    axum::Extension(csrf): axum::Extension<Csrf>,
    axum::Extension(op): axum::Extension<Operator>,
    Form(f): Form<NewRunForm>,
) -> Response {
    if !csrf_ok(&csrf, &f.csrf) {
        return csrf_refused();
    }
    if !op.role.may_act() {
        return may_not_run(&csrf, &op);
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
            return with_status(
                StatusCode::BAD_REQUEST,
                new_run_page(&csrf, &op, Some(&e), &f),
            );
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
        let system = match system_targets(&state, &op, &hosts, &tags).await {
            Ok(s) => s,
            Err(e) => return internal(&csrf, &e),
        };
        if !system.is_empty() {
            let msg = format!(
                "{} in system mode: root work needs statements an operator signed (paste them under \"Root work\")",
                system.join(", ")
            );
            return with_status(
                StatusCode::BAD_REQUEST,
                new_run_page(&csrf, &op, Some(&msg), &f),
            );
        }
        if let Err(e) = absolute_program(f.command.trim()) {
            return with_status(
                StatusCode::BAD_REQUEST,
                new_run_page(&csrf, &op, Some(&e), &f),
            );
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
                    &op,
                    Some("root work: tick the box to confirm you mean to run this as root"),
                    &f,
                ),
            );
        }
        let Ok(list) = serde_json::from_str::<serde_json::Value>(&f.signed) else {
            return with_status(
                StatusCode::BAD_REQUEST,
                new_run_page(&csrf, &op, Some("the signed statements are not JSON"), &f),
            );
        };
        body.insert("signed".into(), list);
    }
    let bytes = axum::body::Bytes::from(serde_json::Value::Object(body).to_string());
    let by = axum::Extension(op.clone());
    match crate::api::post_run(State(Arc::clone(&state)), by, Ok(bytes)).await {
        Ok((_, Json(accepted))) => {
            info!(run_id = %accepted.run_id, "console: run started");
            if let [only] = accepted.jobs.as_slice() {
                Redirect::to(&format!("/ui/jobs/{}", only.job_id)).into_response()
            } else {
                Redirect::to(&format!("/ui/runs/{}", accepted.run_id)).into_response()
            }
        }
        Err(e) => {
            let message = e.message().to_owned();
            // The API's own status: 400 for bad input, 403 for a run
            // reaching a host outside the selector.
            let status = axum::response::IntoResponse::into_response(e).status();
            with_status(status, new_run_page(&csrf, &op, Some(&message), &f))
        }
    }
}

/// The form's rule for its program field, as its label says: an absolute
/// path (the API also takes a bare name, looked up in the agent's `PATH`;
/// the console asks for the path so that what runs is what the form shows).
fn absolute_program(program: &str) -> Result<(), String> {
    if program.is_empty() {
        return Err(
            "Program: required; give the absolute path of the program to run, like /usr/bin/uptime"
                .into(),
        );
    }
    if !program.starts_with('/') {
        return Err(format!(
            "Program: {program:?} is not an absolute path; give its full path (`command -v {program}` on the host prints it)"
        ));
    }
    Ok(())
}

fn with_status(status: StatusCode, mut r: Response) -> Response {
    *r.status_mut() = status;
    r
}

/// Of the hosts named and those carrying every tag, the ones registered in
/// system mode — of those `op` reaches only: the others are refused by
/// `post_run`, and their mode is not this operator's to learn.
async fn system_targets(
    state: &AppState,
    op: &Operator,
    hosts: &[String],
    tags: &[String],
) -> anyhow::Result<Vec<String>> {
    let scope = scope_of(state, op).await?;
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
                // No let-chain: the MSRV (1.85) has none.
                let Ok(h) = canonical else { continue };
                if scope.contains(&h) && s.agent_mode(&h)?.as_deref() == Some("system") {
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
    fn the_program_must_be_an_absolute_path() {
        assert!(absolute_program("/bin/echo").is_ok());
        let e = absolute_program("echo").unwrap_err();
        assert!(
            e.starts_with("Program: \"echo\" is not an absolute path"),
            "{e}"
        );
        assert!(
            absolute_program("")
                .unwrap_err()
                .starts_with("Program: required")
        );
    }

    #[test]
    fn form_words_split_on_commas_and_space() {
        assert_eq!(
            words(" a.test, b.test\nc.test,,"),
            ["a.test", "b.test", "c.test"]
        );
    }
}
