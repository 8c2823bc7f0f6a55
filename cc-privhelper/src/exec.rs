//! Running one job as root: resolve and check the program, then start the
//! launcher (`sandbox.rs`) through the shared executor, so capture and
//! timeout are exactly the agent's. The report's uid and user are what this
//! process runs as, never anything the agent said.

use std::path::{Path, PathBuf};
use std::process::Command;

use cc_exec::{Finished, Limits};
use cc_proto::helper::{Refusal, RefusalCode};
use cc_proto::wire::{ExecutionReport, JobSpec};
use cc_proto::{CommandLine, JobId};
use nix::unistd::{Uid, User};

use crate::config::Config;
use crate::sandbox::WARNING_PREFIX;

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
    let me = std::env::current_exe()
        .map_err(|e| refusal(RefusalCode::Internal, format!("finding the launcher: {e}")))?;
    let sandbox = serde_json::to_string(&cfg.sandbox)
        .map_err(|e| refusal(RefusalCode::Internal, e.to_string()))?;
    let mut cmd = Command::new(me);
    cmd.arg("launch")
        .arg(sandbox)
        .arg(&program)
        .args(job.command.args())
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
    let mut finished = match cc_exec::spawn_prepared(cmd, &job.command) {
        Ok(child) => cc_exec::supervise(child, Limits::new(job.timeout.duration())),
        Err(f) => *f,
    };
    take_sandbox_warning(&mut finished);
    Ok(stamp(&finished, &job.id, &job.command))
}

/// Moves the launcher's warning line (best-effort landlock) from stderr to
/// the report's warnings.
fn take_sandbox_warning(f: &mut Finished) {
    if let Some(rest) = f.stderr.text.strip_prefix(WARNING_PREFIX) {
        let (line, after) = rest.split_once('\n').unwrap_or((rest, ""));
        f.warnings.insert(0, format!("sandbox: {line}"));
        f.stderr.text = after.to_owned();
    }
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
