//! The sandbox a root job starts in, applied in the job's own process
//! between `fork` and `exec`: no second program, no second `exec`.
//!
//! Split in two so that the part after `fork` is a short list of plain
//! system calls:
//!
//! - [`prepare`], in the helper: everything that allocates, opens files or
//!   can fail with a message — the landlock ruleset is built here (a kernel
//!   object behind a descriptor: read and execute everywhere, write only
//!   beneath `write_paths` and `/dev/null`), `required` refuses the job here
//!   unless the kernel enforces all of it, and the capabilities to drop are
//!   worked out here;
//! - [`crate::sys::sandbox_child`], in the forked child (single-threaded,
//!   a new session, every descriptor ≥ 3 close-on-exec): in one visible
//!   sequence
//!   1. resource limits;
//!   2. `no_new_privs`;
//!   3. `landlock_restrict_self` with the prepared ruleset;
//!   4. the capability bounding set cut to `keep_capabilities`; ambient and
//!      inheritable sets cleared;
//!   5. `exec` (std).
//!
//! A failure at any step in the child ends it before `exec`: the spawn
//! fails, the report says exit code 126 and the job never started, so it
//! never runs half-sandboxed.

use std::collections::HashSet;
use std::os::fd::OwnedFd;
use std::str::FromStr;
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};
use caps::{CapSet, Capability};
use landlock::{
    ABI, Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetError, path_beneath_rules,
};
use nix::sys::resource::Resource;

use crate::config::{LandlockMode, Sandbox};

/// The ABI whose filesystem rights are asked for (v3: includes truncate).
const LANDLOCK_ABI: ABI = ABI::V3;

/// What the forked child applies, all of it worked out beforehand.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// Soft = hard.
    pub(crate) rlimits: [(Resource, u64); 3],
    /// The landlock ruleset; `None` only with `best_effort` on a kernel
    /// without landlock (the report's warning says so).
    pub(crate) ruleset: Option<OwnedFd>,
    /// Capability numbers to drop from the bounding set.
    pub(crate) drop_caps: Vec<u8>,
}

/// Prepares `s` for one job; the warning, if any, goes into the report.
pub(crate) fn prepare(s: &Sandbox) -> Result<(Prepared, Option<String>)> {
    let r = &s.rlimits;
    let (ruleset, warning) = landlock_ruleset(s)?;
    Ok((
        Prepared {
            rlimits: [
                (Resource::RLIMIT_NOFILE, r.nofile),
                (Resource::RLIMIT_NPROC, r.nproc),
                (Resource::RLIMIT_CORE, r.core),
            ],
            ruleset,
            drop_caps: capabilities_to_drop(&s.keep_capabilities)?,
        },
        warning,
    ))
}

fn build_ruleset(s: &Sandbox, level: CompatLevel) -> Result<Option<OwnedFd>, RulesetError> {
    let abi = LANDLOCK_ABI;
    let mut writable: Vec<&std::path::Path> = s.write_paths.iter().map(|p| p.as_path()).collect();
    writable.push(std::path::Path::new("/dev/null"));
    let created = Ruleset::default()
        .set_compatibility(level)
        .handle_access(AccessFs::from_all(abi))?
        .create()?
        .add_rules(path_beneath_rules(["/"], AccessFs::from_read(abi)))?
        .add_rules(path_beneath_rules(writable, AccessFs::from_all(abi)))?;
    Ok(created.into())
}

/// With `HardRequirement` the crate fails unless the kernel enforces every
/// requested right: that is `required`. `best_effort` falls back to what the
/// kernel has and says so.
fn landlock_ruleset(s: &Sandbox) -> Result<(Option<OwnedFd>, Option<String>)> {
    let full = build_ruleset(s, CompatLevel::HardRequirement);
    match (full, s.landlock) {
        (Ok(Some(fd)), _) => Ok((Some(fd), None)),
        (full, LandlockMode::Required) => {
            let why = match full {
                Err(e) => e.to_string(),
                Ok(_) => "no ruleset".to_owned(),
            };
            bail!(
                "landlock = \"required\" but this kernel cannot enforce the whole ruleset ({why}); \
                 set landlock = \"best_effort\" in the helper config to run anyway"
            )
        }
        (_, LandlockMode::BestEffort) => {
            let fd = build_ruleset(s, CompatLevel::BestEffort).context("landlock ruleset")?;
            let status = if fd.is_some() {
                "PartiallyEnforced"
            } else {
                "NotEnforced"
            };
            Ok((
                fd,
                Some(format!(
                    "landlock ruleset {status} on this kernel (best_effort): writes outside write_paths may not be blocked"
                )),
            ))
        }
    }
}

fn capabilities_to_drop(keep: &[String]) -> Result<Vec<u8>> {
    let keep: HashSet<Capability> = keep
        .iter()
        .map(|n| Capability::from_str(n).map_err(|_| anyhow::anyhow!("unknown capability {n}")))
        .collect::<Result<_>>()?;
    let mut drop: Vec<u8> = bounding()?.difference(&keep).map(|c| c.index()).collect();
    drop.sort_unstable();
    Ok(drop)
}

/// The helper's bounding set, read once (41 `prctl` calls): only what the
/// kernel has may be dropped, dropping an unknown capability fails. No
/// thread of the helper changes its own set, and every thread has the one
/// it started with, so this is every forked child's.
fn bounding() -> Result<&'static HashSet<Capability>> {
    static BOUNDING: OnceLock<HashSet<Capability>> = OnceLock::new();
    if let Some(b) = BOUNDING.get() {
        return Ok(b);
    }
    let read = caps::read(None, CapSet::Bounding)
        .map_err(|e| anyhow::anyhow!("reading the bounding set: {e}"))?;
    Ok(BOUNDING.get_or_init(|| read))
}
