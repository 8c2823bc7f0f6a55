//! Running one job as root: find the program and open it, check it against
//! `allowed_commands`, give the job a cgroup, then start it through the
//! shared executor with its containment applied between `fork` and `exec`
//! (`sandbox.rs`), executing the very file that was checked. Capture and
//! timeout are exactly the agent's. The report's uid and user are what this
//! process runs as, never anything the agent said.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use cc_exec::{Finished, Limits};
use cc_proto::helper::{Refusal, RefusalCode};
use cc_proto::wire::{ExecutionReport, JobSpec};
use cc_proto::{CommandLine, JobId};
use nix::unistd::{Uid, User};

use crate::config::{Config, check_root_owned_chain};
use crate::sandbox::Plan;

const JOB_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The whole environment of a root job.
const JOB_ENV: &[(&str, &str)] = &[
    ("PATH", JOB_PATH),
    ("HOME", "/root"),
    ("USER", "root"),
    ("LOGNAME", "root"),
    ("SHELL", "/bin/sh"),
    ("LANG", "C.UTF-8"),
];

pub(crate) fn refusal(code: RefusalCode, message: impl Into<String>) -> Refusal {
    Refusal { code, message: message.into() }
}

/// Why a root job's program must be an absolute path.
pub(crate) const ABSOLUTE_ONLY: &str = "a root job names its program by absolute path: the signature covers that path, not a name looked up in PATH";

/// The program's file: an absolute path to a file, or nothing. A bare
/// name is refused before this (the signature covers a path).
fn resolve(program: &str) -> Option<PathBuf> {
    let p = Path::new(program);
    (p.is_absolute() && p.is_file()).then(|| p.to_owned())
}

/// With `allowed_commands` set: the program's path must be exactly an
/// entry's (no symlink resolution), its arguments must fit that entry's
/// patterns, and the file and every directory above it must be root's and
/// closed to others, so nobody else can swap what the path names.
fn check_allowed(cfg: &Config, path: &Path, argv: &[String]) -> Result<(), Refusal> {
    let Some(allowed) = &cfg.allowed_commands else {
        return Ok(());
    };
    let entries: Vec<_> = allowed.iter().filter(|a| a.path == path).collect();
    if entries.is_empty() {
        return Err(refusal(
            RefusalCode::CommandNotAllowed,
            format!("{} is not in allowed_commands", path.display()),
        ));
    }
    if !entries.iter().any(|a| a.args_match(argv)) {
        return Err(refusal(
            RefusalCode::CommandNotAllowed,
            format!("{}: these arguments do not match allowed_commands", path.display()),
        ));
    }
    check_root_owned_chain(path, "allowed command").map_err(|e| {
        refusal(
            RefusalCode::CommandNotAllowed,
            format!("{e:#}: an allowed command must be a file only root can change"),
        )
    })
}

/// An allowed script's interpreter (`#!` line, read from the opened file)
/// is checked like the script: an absolute path whose file and every
/// directory above are root's, or whoever may replace it runs as root.
fn check_interpreter(file: &mut File, script: &Path) -> Result<(), Refusal> {
    let mut line = [0u8; 256];
    let n = file.read(&mut line).unwrap_or(0);
    let first = line[..n].split(|&b| b == b'\n').next().unwrap_or(&[]);
    let interpreter = std::str::from_utf8(first).ok().and_then(|l| l.split_whitespace().next());
    let not = |why: String| refusal(RefusalCode::CommandNotAllowed, why);
    let Some(interpreter) = interpreter.filter(|i| i.starts_with('/')) else {
        return Err(not(format!(
            "{}: its #! line names no absolute interpreter",
            script.display()
        )));
    };
    // `#!/bin/sh` goes through symlinks (merged /usr, the system's sh):
    // each link on the way must be root's, and the file it resolves to
    // must sit in a chain only root can change.
    let literal = Path::new(interpreter);
    let links_are_roots = literal.ancestors().all(|p| {
        std::fs::symlink_metadata(p).is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            m.uid() == 0 && (!m.is_dir() || m.mode() & 0o022 == 0 || m.mode() & 0o1000 != 0)
        })
    });
    let checked = std::fs::canonicalize(literal).map_err(anyhow::Error::from).and_then(|real| {
        anyhow::ensure!(
            links_are_roots,
            "a link or directory on the way to {interpreter} is not root's alone"
        );
        check_root_owned_chain(&real, "interpreter")
    });
    checked.map_err(|e| {
        not(format!(
            "{}: {e:#}: an allowed script's interpreter must be a file only root can change",
            script.display()
        ))
    })
}

/// What a finished job still holds, released after its answer is sent: its
/// cgroup (removed when dropped) and its mount namespace, kept alive by a
/// descriptor so that tearing it down — which waits for an RCU grace
/// period — happens then rather than between the job's exit and its
/// report.
#[derive(Debug, Default)]
pub(crate) struct Leftovers {
    _cgroup: Option<crate::cgroup::JobCgroup>,
    _namespace: Option<File>,
}

/// The job's outcome when it could not be started.
fn not_started(
    code: i32,
    why: &str,
    job: &JobSpec,
) -> Result<(ExecutionReport, Leftovers), Refusal> {
    Ok((stamp(&cc_exec::refused(code, why), &job.id, &job.command), Leftovers::default()))
}

/// Runs a validated job, or says why not.
pub(crate) fn run(
    cfg: &Config,
    plan: &Arc<Plan>,
    job: &JobSpec,
) -> Result<(ExecutionReport, Leftovers), Refusal> {
    let program = job.command.program();
    if !program.starts_with('/') {
        return Err(refusal(RefusalCode::InvalidPayload, format!("{program}: {ABSOLUTE_ONLY}")));
    }
    let Some(path) = resolve(program) else {
        // Not found is the job's outcome (127), not a refusal.
        return not_started(cc_exec::EXIT_NOT_FOUND, &format!("{program}: not found"), job);
    };
    check_allowed(cfg, &path, job.command.args())?;
    let cannot = |why: String| not_started(cc_exec::EXIT_NOT_EXECUTABLE, &why, job);
    if let Some(why) = &plan.refusal {
        return cannot(format!("the job was not started: {why}"));
    }
    // The file that was checked is the file that runs: opened once, then
    // executed through /proc/self/fd.
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) => return cannot(format!("{}: {e}", path.display())),
    };
    let meta = file.metadata().ok();
    let same_file = std::fs::symlink_metadata(&path)
        .ok()
        .zip(meta.as_ref())
        .is_some_and(|(l, m)| l.dev() == m.dev() && l.ino() == m.ino());
    if cfg.allowed_commands.is_some() && !same_file {
        return Err(refusal(
            RefusalCode::CommandNotAllowed,
            format!("{} changed while it was checked", path.display()),
        ));
    }
    if !meta.is_some_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0) {
        return cannot(format!("{}: permission denied (not an executable file)", path.display()));
    }
    let mut magic = [0u8; 2];
    let script = file.read_exact(&mut magic).is_ok() && &magic == b"#!";
    if script && cfg.allowed_commands.is_some() {
        check_interpreter(&mut file, &path)?;
    }
    let mut warnings: Vec<String> = plan.warning.iter().cloned().collect();
    let cgroup = match plan.cgroups.take() {
        Ok(c) => Some(c),
        Err(e) if cfg.sandbox.limits == crate::config::Enforce::Required => {
            return cannot(format!(
                "the job was not started: its cgroup could not be made ({e:#})"
            ));
        }
        Err(e) => {
            warnings.push(format!("no job cgroup ({e:#}): no process or memory limit"));
            None
        }
    };
    let argv = std::iter::once(program).chain(job.command.args().iter().map(String::as_str));
    let Some(exec) = crate::sys::ExecVectors::new(argv, JOB_ENV) else {
        return cannot("an argument holds a NUL byte".into());
    };
    let fds = crate::sys::JobFds {
        cgroup_procs: cgroup.iter().flat_map(|c| c.procs.iter().map(AsRawFd::as_raw_fd)).collect(),
        program: file.as_raw_fd(),
        script,
        exec,
    };
    let mut namespace = None;
    let mut finished = match crate::sys::spawn_contained(plan, &fds) {
        Ok(child) => {
            namespace = File::open(format!("/proc/{}/ns/mnt", child.pid)).ok();
            let started = cc_exec::Started::from_raw(child.pid, child.stdout, child.stderr);
            cc_exec::supervise(started, Limits::new(job.timeout.duration()))
        }
        // Every failure ends that process before the job's program runs.
        Err(e) => cc_exec::refused(
            cc_exec::EXIT_NOT_EXECUTABLE,
            &format!("the job was not started: {} failed: {}", e.step, e.error),
        ),
    };
    drop(file);
    if let Some(c) = &cgroup {
        let (forks, ooms) = c.limits_hit();
        if forks > 0 {
            warnings.push(format!(
                "process limit ({}) reached: {forks} forks refused",
                plan.max_processes
            ));
        }
        if ooms > 0 {
            warnings.push(format!(
                "memory limit ({} MiB) reached: {ooms} processes killed",
                plan.max_memory / (1024 * 1024)
            ));
        }
    }
    for w in warnings.into_iter().rev() {
        finished.warnings.insert(0, w);
    }
    let leftovers = Leftovers { _cgroup: cgroup, _namespace: namespace };
    Ok((stamp(&finished, &job.id, &job.command), leftovers))
}

/// The report, stamped with the uid this process really has.
pub(crate) fn stamp(f: &Finished, id: &JobId, command: &CommandLine) -> ExecutionReport {
    static USER: OnceLock<(u32, String)> = OnceLock::new();
    let (uid, user) = USER.get_or_init(|| {
        let uid = Uid::effective();
        let name = User::from_uid(uid).ok().flatten().map_or_else(|| uid.to_string(), |u| u.name);
        (uid.as_raw(), name)
    });
    f.report(id, command, *uid, user, None, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Allowed;

    #[test]
    fn programs_are_absolute_paths_to_files_never_names_looked_up() {
        assert_eq!(resolve("/usr/bin/env"), Some(PathBuf::from("/usr/bin/env")));
        assert_eq!(resolve("/no/such/cc-program"), None);
        // Neither a bare name nor a relative path is looked up.
        assert_eq!(resolve("env"), None);
        assert_eq!(resolve("usr/bin/env"), None);
        assert_eq!(resolve("/usr/bin"), None, "a directory is not a program");
    }

    #[test]
    fn allowed_commands_need_the_exact_path_matching_arguments_and_roots_file() {
        let v = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        let mut cfg = crate::config::tests::cfg(&[]);
        let env = Path::new("/usr/bin/env");
        assert!(check_allowed(&cfg, env, &v(&["anything"])).is_ok(), "no list: anything");
        cfg.allowed_commands = Some(vec![
            Allowed { path: "/usr/bin/id".into(), args: None },
            Allowed { path: env.into(), args: Some(v(&["-u", "HOME"])) },
        ]);
        assert_eq!(check_allowed(&cfg, env, &v(&["-u", "HOME"])), Ok(()));
        assert_eq!(check_allowed(&cfg, Path::new("/usr/bin/id"), &v(&["-u"])), Ok(()));
        let refused = |cfg: &Config, path: &Path, args: &[&str]| {
            let r = check_allowed(cfg, path, &v(args)).unwrap_err();
            assert_eq!(r.code, RefusalCode::CommandNotAllowed);
            r.message
        };
        assert_eq!(
            refused(&cfg, env, &["-u", "PATH"]),
            "/usr/bin/env: these arguments do not match allowed_commands"
        );
        assert_eq!(
            refused(&cfg, Path::new("/usr/bin/who"), &[]),
            "/usr/bin/who is not in allowed_commands"
        );
        // Listed, but in a directory anybody may write: refused.
        let d = std::env::temp_dir().join(format!("cc-allowed-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        let tool = d.join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        cfg.allowed_commands = Some(vec![Allowed { path: tool.clone(), args: None }]);
        let message = refused(&cfg, &tool, &[]);
        let _ = std::fs::remove_dir_all(&d);
        assert!(
            message.ends_with("an allowed command must be a file only root can change"),
            "{message}"
        );
    }

    #[test]
    fn refusals_carry_their_code_and_message() {
        let r = refusal(RefusalCode::Busy, "later");
        assert_eq!((r.code, r.message.as_str()), (RefusalCode::Busy, "later"));
    }
}
