//! Running one job as root: resolve and check the program, prepare its
//! sandbox (`sandbox.rs`), then start it through the shared executor with
//! the sandbox applied between `fork` and `exec`, so capture and timeout are
//! exactly the agent's. The report's uid and user are what this
//! process runs as, never anything the agent said.

use std::path::{Path, PathBuf};
use std::process::Command;

use cc_exec::{Finished, Limits};
use cc_proto::helper::{Refusal, RefusalCode};
use cc_proto::wire::{ExecutionReport, JobSpec};
use cc_proto::{CommandLine, JobId};
use nix::unistd::{Uid, User};

use crate::config::Config;

const JOB_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub(crate) fn refusal(code: RefusalCode, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

/// Where `program` is, as `execvp` would find it with the job's PATH.
fn resolve(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = Path::new(program);
        return (p.is_absolute() && p.is_file()).then(|| p.to_owned());
    }
    JOB_PATH
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// Runs a validated job, or says why not.
pub(crate) fn run(cfg: &Config, job: &JobSpec) -> Result<ExecutionReport, Refusal> {
    let Some(found) = resolve(job.command.program()) else {
        // Not found is the job's outcome (127), not a refusal.
        let f = cc_exec::refused(
            cc_exec::EXIT_NOT_FOUND,
            &format!("{}: not found", job.command.program()),
        );
        return Ok(stamp(&f, &job.id, &job.command));
    };
    let program = std::fs::canonicalize(&found).unwrap_or(found);
    if let Some(allowed) = &cfg.allowed_commands {
        let ok = allowed
            .iter()
            .any(|a| std::fs::canonicalize(a).is_ok_and(|a| a == program));
        if !ok {
            return Err(refusal(
                RefusalCode::CommandNotAllowed,
                format!("{} is not in allowed_commands", program.display()),
            ));
        }
    }
    let (sandbox, warning) = match crate::sandbox::prepare(&cfg.sandbox) {
        Ok(p) => p,
        Err(e) => {
            let f = cc_exec::refused(
                cc_exec::EXIT_NOT_EXECUTABLE,
                &format!("sandbox: {e:#}: the job was not started"),
            );
            return Ok(stamp(&f, &job.id, &job.command));
        }
    };
    let mut cmd = Command::new(&program);
    cmd.args(job.command.args())
        .env_clear()
        .envs([
            ("PATH", JOB_PATH),
            ("HOME", "/root"),
            ("USER", "root"),
            ("LOGNAME", "root"),
            ("SHELL", "/bin/sh"),
            ("LANG", "C.UTF-8"),
        ])
        .current_dir("/");
    crate::sys::sandbox_child(&mut cmd, sandbox);
    let mut finished = match cc_exec::spawn_prepared(cmd, &job.command) {
        Ok(child) => cc_exec::supervise(child, Limits::new(job.timeout.duration())),
        Err(f) => {
            // The sandbox steps and exec both run in the child, and either
            // failing ends it before the job's program runs; std reports
            // only the errno, not which step it was.
            let why = f.stderr.text.trim_end();
            let why = why.strip_prefix("croncommander: ").unwrap_or(why);
            cc_exec::refused(
                f.exit_code,
                &format!(
                    "the job was not started: its sandbox could not be applied, or exec failed ({why})"
                ),
            )
        }
    };
    if let Some(w) = warning {
        finished.warnings.insert(0, format!("sandbox: {w}"));
    }
    Ok(stamp(&finished, &job.id, &job.command))
}

/// The report, stamped with the uid this process really has.
pub(crate) fn stamp(f: &Finished, id: &JobId, command: &CommandLine) -> ExecutionReport {
    let uid = Uid::effective();
    let user = User::from_uid(uid)
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name);
    f.report(id, command, uid.as_raw(), &user, None, None)
}
