//! Root work and signatures, for jobs, runs and cron lists: an operator's
//! signed statement is opened as a relay can (`open_signed`: the signature
//! holds for the key it names, the encoding is canonical, it is for this
//! host; whether the key is trusted is the host's to decide); root work for
//! a host registered in user mode is refused (`require_system_mode`); and
//! work posted unsigned for a system-mode host is signed with this
//! listener's key when it was given one (`listener_signature`, `sign_job`).

use serde::Serialize;

use cc_proto::sign::{self, ExecStatement, Signed};

use super::jobs::queue_ttl_ms;
use super::{ApiError, ApiResult};
use crate::AppState;

/// A signed statement's text, checked as a relay can (the signature holds
/// for the key it names, the encoding is canonical, it is for this host);
/// whether the key is trusted is the host's to decide.
pub(super) fn open_signed<T: Serialize + serde::de::DeserializeOwned>(
    signed: &Signed,
    label: &str,
    host: &str,
    statement_host: impl Fn(&T) -> &str,
) -> ApiResult<T> {
    let t: T = sign::open(signed, label).map_err(|e| ApiError::invalid("signed", e.to_string()))?;
    if !statement_host(&t).eq_ignore_ascii_case(host) {
        return Err(ApiError::invalid(
            "signed",
            format!(
                "the statement is for {:?}, not {host:?}",
                statement_host(&t)
            ),
        ));
    }
    Ok(t)
}

/// The execution mode `host` last registered with (`"user"`, `"system"`),
/// or `None` for a host not seen yet.
pub(super) async fn agent_mode(state: &AppState, host: &str) -> ApiResult<Option<String>> {
    let h = host.to_owned();
    state
        .db
        .call(move |s| s.agent_mode(&h))
        .await
        .map_err(ApiError::store)
}

/// Root work (a signed job, run or cron list) for a host that registered
/// in user mode would run as the agent's own user, not root: refused,
/// naming the host and its mode, so an operator who asked for root never
/// silently gets something else. A host not seen yet is left to the
/// caller's own check.
pub(super) async fn require_system_mode(state: &AppState, host: &str) -> ApiResult<()> {
    if agent_mode(state, host).await?.as_deref() == Some("user") {
        return Err(ApiError::invalid(
            "signed",
            format!(
                "{host} registered in user mode: root work there would run as the agent's own user, not root; turn on system mode on that host first (system-mode.md)"
            ),
        ));
    }
    Ok(())
}

/// This listener's signature for unsigned system-mode work, if it was
/// given a key and the host registered in system mode: `statement` gets
/// the window (`valid_secs` from now) and a fresh nonce.
pub(super) async fn listener_signature<T: Serialize>(
    state: &AppState,
    host: &str,
    label: &str,
    valid_secs: i64,
    statement: impl FnOnce(String, String, String) -> T,
) -> ApiResult<Option<Signed>> {
    let Some(key) = state.settings.signing_key.clone() else {
        return Ok(None);
    };
    if agent_mode(state, host).await?.as_deref() != Some("system") {
        return Ok(None);
    }
    let (not_before, expires_at) = sign::window(cc_proto::Timestamp::now(), valid_secs);
    let statement = statement(not_before, expires_at, random_nonce()?);
    sign::sign(&statement, label, &key)
        .map(Some)
        .map_err(|e| ApiError::internal(e.into()))
}

fn random_nonce() -> ApiResult<String> {
    let mut r = [0u8; 16];
    getrandom::fill(&mut r)
        .map_err(|e| ApiError::internal(anyhow::anyhow!("no randomness: {e}")))?;
    Ok(sign::nonce(r))
}

/// This listener's signature (as stored JSON) on job `job_id` running
/// `spec` on `host`, when it signs and the host is in system mode.
pub(super) async fn sign_job(
    state: &AppState,
    host: &str,
    job_id: &str,
    spec: &cc_proto::wire::JobSpec,
) -> ApiResult<Option<String>> {
    let valid_secs = queue_ttl_ms(state) / 1000;
    let signed = listener_signature(
        state,
        host,
        sign::EXEC_LABEL,
        valid_secs,
        |not_before, expires_at, nonce| ExecStatement {
            host: host.to_owned(),
            job_id: job_id.to_owned(),
            program: spec.command.program().to_owned(),
            args: spec.command.args().to_vec(),
            timeout: spec.timeout.secs(),
            not_before,
            expires_at,
            nonce,
        },
    )
    .await?;
    signed
        .map(|s| serde_json::to_string(&s))
        .transpose()
        .map_err(|e| ApiError::internal(e.into()))
}
