//! `cron_refresh`: the listener's scheduled entries installed where the
//! execution mode says — this user's crontab (user mode, `cron.rs`), or
//! `/etc/cron.d/croncommander` through cc-privhelper (system mode, which
//! gets the listener's exact text to check the signature on it). Either
//! way the answer is a `cron_status` naming every entry installed or
//! refused, with the reason.

use cc_proto::wire::{self, CronEntry};
use tracing::{error, info, warn};

use super::Agent;

/// Installs `entries` (`raw` is the listener's text, `signed` its
/// signature, both for the helper) and says what became of each.
pub(crate) async fn apply_cron(
    agent: &Agent,
    entries: Vec<CronEntry>,
    raw: String,
    signed: Option<String>,
) -> wire::CronStatus {
    if agent.cfg.execution_mode == wire::ExecutionMode::System {
        return system_cron(agent, &entries, raw, signed).await;
    }
    let state = agent.cfg.state_dir.clone();
    let config = agent.cfg.path.clone();
    let exe = std::env::current_exe().unwrap_or_default();
    let all: Vec<String> = entries
        .iter()
        .map(|e| e.id.chars().take(128).collect())
        .collect();
    let result =
        tokio::task::spawn_blocking(move || crate::cron::apply(&state, &exe, &config, &entries))
            .await;
    match result {
        Ok(Ok(status)) => {
            info!(
                installed = status.installed.len(),
                rejected = status.rejected.len(),
                "cron entries applied"
            );
            for r in &status.rejected {
                warn!(id = %r.id, reason = %r.reason, "cron entry refused");
            }
            status
        }
        Ok(Err(e)) => {
            error!("could not install cron entries: {e:#}");
            let reason = format!("{e:#}");
            wire::CronStatus {
                installed: Vec::new(),
                rejected: all
                    .into_iter()
                    .map(|id| wire::CronRejection {
                        id,
                        reason: reason.clone(),
                    })
                    .collect(),
            }
        }
        Err(e) => {
            error!("cron task failed: {e}");
            wire::CronStatus::default()
        }
    }
}

/// System mode: the listener's `cron_refresh` text goes to cc-privhelper,
/// which writes `/etc/cron.d/croncommander`.
async fn system_cron(
    agent: &Agent,
    entries: &[CronEntry],
    raw: String,
    signed: Option<String>,
) -> wire::CronStatus {
    use cc_proto::helper::{HelperRequest, HelperResponse, WriteCronRequest};
    let socket = agent.cfg.helper_socket.clone();
    let req = HelperRequest::WriteCron(WriteCronRequest {
        cron_refresh: raw,
        signed,
    });
    let answer =
        tokio::task::spawn_blocking(move || crate::helper_client::call(&socket, &req)).await;
    let reason = match answer {
        Ok(Ok(HelperResponse::CronWritten(w))) => {
            info!(
                installed = w.installed.len(),
                rejected = w.rejected.len(),
                "system cron entries written by the helper"
            );
            return wire::CronStatus {
                installed: w.installed,
                rejected: w.rejected,
            };
        }
        Ok(Ok(HelperResponse::Refused(r))) => format!("the root helper refused: {}", r.message),
        Ok(Ok(_)) => "the root helper gave an unexpected answer".to_owned(),
        Ok(Err(e)) => format!("{e:#}"),
        Err(e) => format!("helper task failed: {e}"),
    };
    warn!("system cron entries not installed: {reason}");
    wire::CronStatus {
        installed: Vec::new(),
        rejected: entries
            .iter()
            .map(|e| wire::CronRejection {
                id: e.id.chars().take(128).collect(),
                reason: reason.clone(),
            })
            .collect(),
    }
}
