//! The launcher: `cc-privhelper launch SANDBOX_JSON PROGRAM [ARGS…]`.
//!
//! A fresh, single-threaded process (the helper re-executes itself), started
//! by `cc_exec::spawn_prepared` with a clean environment, stdin `/dev/null`,
//! a new session and every inherited descriptor ≥ 3 close-on-exec. It does
//! the irreversible steps in one visible sequence, then `exec`s the job:
//!
//! 1. resource limits;
//! 2. `no_new_privs`;
//! 3. the landlock ruleset: read and execute everywhere, write only beneath
//!    `write_paths` (and `/dev/null`); `required` refuses the job unless the
//!    kernel enforces all of it;
//! 4. the capability bounding set cut to `keep_capabilities`; ambient and
//!    inheritable sets cleared;
//! 5. `exec`.
//!
//! A failure at any step ends the launcher with exit code 126 and the
//! reason on stderr: the job never starts half-sandboxed.

use std::collections::HashSet;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use caps::{CapSet, Capability};
use landlock::{
    ABI, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    path_beneath_rules,
};
use nix::sys::resource::{Resource, setrlimit};

use crate::config::{LandlockMode, Sandbox};

/// Marks a line the launcher writes to the job's stderr for the helper to
/// turn into the report's `warning`.
pub(crate) const WARNING_PREFIX: &str = "croncommander-sandbox-warning: ";

/// The ABI whose filesystem rights are asked for (v3: includes truncate).
const LANDLOCK_ABI: ABI = ABI::V3;

pub(crate) fn launch(args: &[String]) -> ExitCode {
    let [sandbox, program, rest @ ..] = args else {
        eprintln!(
            "croncommander: launch: usage: cc-privhelper launch SANDBOX_JSON PROGRAM [ARGS...]"
        );
        return ExitCode::from(126);
    };
    let result = serde_json::from_str::<Sandbox>(sandbox)
        .context("sandbox description")
        .and_then(|s| apply(&s));
    if let Err(e) = result {
        eprintln!("croncommander: sandbox: {e:#}: the job was not started");
        return ExitCode::from(126);
    }
    // Only returns on failure.
    let e = Command::new(program).args(rest).exec();
    let code = if e.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    };
    eprintln!("croncommander: {program}: {e}");
    ExitCode::from(code)
}

fn apply(s: &Sandbox) -> Result<()> {
    let r = &s.rlimits;
    for (res, v) in [
        (Resource::RLIMIT_NOFILE, r.nofile),
        (Resource::RLIMIT_NPROC, r.nproc),
        (Resource::RLIMIT_CORE, r.core),
    ] {
        setrlimit(res, v, v).with_context(|| format!("setting {res:?} to {v}"))?;
    }
    nix::sys::prctl::set_no_new_privs().context("setting no_new_privs")?;
    landlock_rules(s)?;
    cut_capabilities(&s.keep_capabilities)?;
    Ok(())
}

fn landlock_rules(s: &Sandbox) -> Result<()> {
    let abi = LANDLOCK_ABI;
    let mut writable: Vec<&std::path::Path> = s.write_paths.iter().map(|p| p.as_path()).collect();
    writable.push(std::path::Path::new("/dev/null"));
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .create()?
        .add_rules(path_beneath_rules(["/"], AccessFs::from_read(abi)))?
        .add_rules(path_beneath_rules(writable, AccessFs::from_all(abi)))?
        .restrict_self()?;
    match (status.ruleset, s.landlock) {
        (RulesetStatus::FullyEnforced, _) => Ok(()),
        (other, LandlockMode::Required) => bail!(
            "landlock = \"required\" but this kernel enforces the ruleset only as {other:?}; \
             set landlock = \"best_effort\" in the helper config to run anyway"
        ),
        (other, LandlockMode::BestEffort) => {
            eprintln!(
                "{WARNING_PREFIX}landlock ruleset {other:?} on this kernel (best_effort): writes outside write_paths may not be blocked"
            );
            Ok(())
        }
    }
}

fn cut_capabilities(keep: &[String]) -> Result<()> {
    let keep: HashSet<Capability> = keep
        .iter()
        .map(|n| Capability::from_str(n).map_err(|_| anyhow::anyhow!("unknown capability {n}")))
        .collect::<Result<_>>()?;
    // Only what the kernel has: dropping an unknown capability fails.
    let bounding = caps::read(None, CapSet::Bounding)
        .map_err(|e| anyhow::anyhow!("reading the bounding set: {e}"))?;
    for cap in bounding.difference(&keep) {
        caps::drop(None, CapSet::Bounding, *cap)
            .map_err(|e| anyhow::anyhow!("dropping {cap} from the bounding set: {e}"))?;
    }
    caps::clear(None, CapSet::Ambient)
        .map_err(|e| anyhow::anyhow!("clearing ambient capabilities: {e}"))?;
    caps::clear(None, CapSet::Inheritable)
        .map_err(|e| anyhow::anyhow!("clearing inheritable capabilities: {e}"))?;
    Ok(())
}
