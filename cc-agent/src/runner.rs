//! Running a job as the agent's own user and turning it into a report.
//! Shared by `cc-agent run` (ad-hoc jobs) and `cc-agent cron-run`
//! (scheduled jobs), so both run exactly alike.

use std::path::PathBuf;

use cc_exec::{Launch, Limits};
use cc_proto::wire::{ExecutionMode, ExecutionReport};
use cc_proto::{CommandLine, JobId, Timeout};
use nix::unistd::{Uid, User};

/// The spec's warning for a root agent in user mode.
pub(crate) const ROOT_IN_USER_MODE: &str =
    "Running as root (UID 0) in user mode: every job runs as root. Run the agent as cc-agent-user.";

/// Who the agent really is, read once from the kernel and the user database.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub(crate) uid: u32,
    pub(crate) user: String,
    pub(crate) home: PathBuf,
    pub(crate) shell: String,
}

impl Identity {
    pub(crate) fn current() -> Self {
        let uid = Uid::effective();
        let entry = User::from_uid(uid).ok().flatten();
        Self {
            uid: uid.as_raw(),
            user: entry
                .as_ref()
                .map_or_else(|| uid.to_string(), |u| u.name.clone()),
            home: entry
                .as_ref()
                .map(|u| u.dir.clone())
                .filter(|d| d.is_dir())
                .unwrap_or_else(|| PathBuf::from("/")),
            shell: entry
                .as_ref()
                .map(|u| u.shell.to_string_lossy().into_owned())
                .unwrap_or_else(|| "/bin/sh".to_owned()),
        }
    }

    pub(crate) fn is_root(&self) -> bool {
        self.uid == 0
    }
}

/// A root job as the listener sent it: the `execute_job` payload and its
/// `signed` extension, exact texts for the helper to check itself.
#[derive(Debug, Clone)]
pub(crate) struct Forward {
    pub(crate) payload: String,
    pub(crate) signed: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Runner {
    pub(crate) identity: Identity,
    pub(crate) mode: ExecutionMode,
    /// System mode: where cc-privhelper listens.
    pub(crate) helper_socket: PathBuf,
    /// Set when running jobs must stop (the agent's drain time ran out).
    pub(crate) cancel: crate::jobs::Cancel,
}

impl Runner {
    pub(crate) fn new(mode: ExecutionMode, helper_socket: PathBuf) -> Self {
        Self {
            identity: Identity::current(),
            mode,
            helper_socket,
            cancel: crate::jobs::Cancel::default(),
        }
    }

    /// The whole environment a job gets.
    fn launch(&self) -> Launch {
        let id = &self.identity;
        Launch {
            env: vec![
                ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
                ("HOME".into(), id.home.to_string_lossy().into_owned()),
                ("USER".into(), id.user.clone()),
                ("LOGNAME".into(), id.user.clone()),
                ("SHELL".into(), id.shell.clone()),
                ("LANG".into(), "C.UTF-8".into()),
            ],
            cwd: id.home.clone(),
        }
    }

    fn warning(&self) -> Option<&'static str> {
        (self.identity.is_root() && self.mode == ExecutionMode::User).then_some(ROOT_IN_USER_MODE)
    }

    /// Runs a job to the end (blocking) and returns its report. In system
    /// mode the job goes to cc-privhelper with the listener's texts
    /// (`forward`) untouched; the agent never runs it itself.
    pub(crate) fn run(
        &self,
        id: &JobId,
        command: &CommandLine,
        timeout: Timeout,
        forward: Option<&Forward>,
    ) -> ExecutionReport {
        if self.mode == ExecutionMode::System {
            return self.run_as_root(id, command, forward);
        }
        let limits = Limits {
            cancel: Some(std::sync::Arc::clone(&self.cancel)),
            ..Limits::new(timeout.duration())
        };
        let finished = cc_exec::run(command, &self.launch(), limits);
        self.report(id, command, &finished)
    }

    fn run_as_root(
        &self,
        id: &JobId,
        command: &CommandLine,
        forward: Option<&Forward>,
    ) -> ExecutionReport {
        use cc_proto::helper::{ExecRequest, HelperRequest, HelperResponse};
        let Some(forward) = forward else {
            return self.refused(
                id,
                command,
                cc_exec::EXIT_NOT_EXECUTABLE,
                "system mode: a scheduled system job runs from /etc/cron.d, not through the agent",
            );
        };
        let req = HelperRequest::Exec(ExecRequest {
            execute_job: forward.payload.clone(),
            signed: forward.signed.clone(),
        });
        match crate::helper_client::call(&self.helper_socket, &req) {
            Ok(HelperResponse::ExecResult(report)) if report.job_id == id.as_str() => report,
            Ok(HelperResponse::ExecResult(_)) => self.refused(
                id,
                command,
                cc_exec::EXIT_NOT_EXECUTABLE,
                "the root helper answered for another job",
            ),
            Ok(HelperResponse::Refused(r)) => {
                let code = serde_json::to_value(r.code)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                self.refused(
                    id,
                    command,
                    cc_exec::EXIT_NOT_EXECUTABLE,
                    &format!("the root helper refused the job ({code}): {}", r.message),
                )
            }
            Ok(_) => self.refused(
                id,
                command,
                cc_exec::EXIT_NOT_EXECUTABLE,
                "the root helper gave an unexpected answer",
            ),
            Err(e) => self.refused(
                id,
                command,
                cc_exec::EXIT_NOT_EXECUTABLE,
                &format!("{e:#}: the job was not run"),
            ),
        }
    }

    /// A report for a job refused before it started.
    pub(crate) fn refused(
        &self,
        id: &JobId,
        command: &CommandLine,
        exit_code: i32,
        reason: &str,
    ) -> ExecutionReport {
        self.report(id, command, &cc_exec::refused(exit_code, reason))
    }

    fn report(&self, id: &JobId, command: &CommandLine, f: &cc_exec::Finished) -> ExecutionReport {
        f.report(
            id,
            command,
            self.identity.uid,
            &self.identity.user,
            self.warning(),
            None,
        )
    }
}
