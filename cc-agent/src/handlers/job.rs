//! `execute_job`: an arriving job validated and handed to `jobs.rs`, and
//! its report stored in the outbox before anything is sent (retried while
//! the disk refuses it, never given up).

use std::time::Duration;

use cc_proto::wire::{self, ExecuteJob};
use cc_proto::{CommandLine, JobId};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use super::{Agent, FROM_LISTENER};
use crate::jobs::{Job, Offer};
use crate::outbox::Outbox;

/// Longest wait between two attempts to store a report the disk refused.
const STORE_RETRY_MAX: Duration = Duration::from_secs(10);

/// Puts a finished job's report in the outbox. While the state directory
/// refuses it (full, read-only, out of inodes) the report waits here in
/// memory and the write is tried again, 1 s then doubling up to
/// [`STORE_RETRY_MAX`], each failure logged with its reason: a report is
/// never sent before it is on disk, and never given up because the disk was
/// full for a while. A failed attempt leaves nothing behind (the atomic
/// write removes its temp file).
pub(crate) async fn store(
    outbox: Outbox,
    mut report: wire::ExecutionReport,
    done: mpsc::Sender<()>,
) {
    let job_id = report.job_id.clone();
    // One id for every attempt, so the report is the same one throughout.
    report
        .report_id
        .get_or_insert_with(|| uuid::Uuid::new_v4().to_string());
    let mut wait = Duration::from_secs(1);
    let mut failures = 0u32;
    loop {
        let (o, r) = (outbox.clone(), report.clone());
        match tokio::task::spawn_blocking(move || o.put(r)).await {
            Ok(Ok(_)) => {
                if failures > 0 {
                    info!(%job_id, failures, "report stored after the state directory refused it");
                } else {
                    info!(%job_id, "job finished; report stored");
                }
                let _ = done.try_send(());
                return;
            }
            Ok(Err(e)) => {
                failures += 1;
                error!(
                    %job_id,
                    retry_in_secs = wait.as_secs(),
                    "could not store the report, it waits in memory: {e:#}"
                );
            }
            Err(e) => {
                error!(%job_id, "report task failed: {e}");
                return;
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(STORE_RETRY_MAX);
    }
}

/// Validates an arriving job and hands it to `jobs.rs`; an invalid one
/// gets a report at once when it has a usable id (it never runs, so no
/// marker), and is dropped with a log line when it has none.
pub(crate) async fn accept_job(agent: &Agent, job: &ExecuteJob, raw: &str, signed: Option<&str>) {
    let spec = match job.validate() {
        Ok(spec) => spec,
        Err(e) => {
            let Ok(id) = JobId::parse(&job.job_id) else {
                if let Some(left_out) = FROM_LISTENER.allow() {
                    warn!(left_out, "execute_job with an invalid job id dropped: {e}");
                }
                return;
            };
            if let Some(left_out) = FROM_LISTENER.allow() {
                warn!(%id, left_out, "invalid execute_job refused: {e}");
            }
            let Ok(placeholder) = CommandLine::new("-", &[]) else {
                return;
            };
            let mut report = agent.runner.refused(
                &id,
                &placeholder,
                cc_exec::EXIT_NOT_EXECUTABLE,
                &format!("invalid job: {e}"),
            );
            // Show what was asked, with control characters made visible.
            report.command = std::iter::once(job.command.as_str())
                .chain(job.args.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join(" ")
                .chars()
                .take(4096)
                .flat_map(char::escape_debug)
                .collect();
            tokio::spawn(store(agent.outbox.clone(), report, agent.done.clone()));
            return;
        }
    };
    let id = spec.id.clone();
    // System mode forwards the listener's exact text to the helper.
    let forward =
        (agent.cfg.execution_mode == wire::ExecutionMode::System).then(|| crate::runner::Forward {
            payload: raw.to_owned(),
            signed: signed.map(str::to_owned),
        });
    match agent.jobs.offer(Job { spec, forward }) {
        Offer::Queued => info!(job_id = %id, "job received"),
        Offer::Duplicate => debug!(job_id = %id, "job already held: this delivery is ignored"),
        Offer::AlreadyStarted => {
            info!(job_id = %id, "job started before: this delivery is ignored")
        }
        Offer::Full => {
            warn!(job_id = %id, "job queue full: job dropped, not started; the listener sends it again after a reconnect")
        }
        Offer::Closed => info!(job_id = %id, "stopping: job not taken; the listener keeps it"),
    }
}
