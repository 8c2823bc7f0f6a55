//! The containment every root job starts in, worked out once from the
//! config ([`Plan`]) and applied by the kernel in the job's own process
//! between `fork` and `exec` (`sys.rs`), in one visible sequence:
//!
//! 0. (in the helper's request thread) a new PID namespace for its child:
//!    the job is PID 1 there, and when it ends the kernel kills everything
//!    it started — no process of a job outlives it or its timeout;
//! 1. the job's cgroup (process count, memory; `cgroup.rs`);
//! 2. a new mount namespace, private, with `/proc` of the job's PID
//!    namespace (it sees only its own processes), an empty `/run` (no
//!    root-only sockets of systemd, D-Bus or container runtimes), and the
//!    whole tree read-only except `write_paths` (`nosuid`, `nodev`): chmod,
//!    chown, xattrs and times outside them fail with `EROFS`, which landlock
//!    alone does not govern;
//! 3. resource limits (open files, no core file);
//! 4. `no_new_privs`;
//! 5. landlock at the highest ABI the kernel offers: write, create and
//!    remove only beneath `write_paths`; TCP bind only to `tcp_bind_ports`,
//!    connect only to `tcp_connect_ports` when set (ABI 4); no signals to,
//!    and no abstract-socket connections with, processes outside the job
//!    (ABI 6); pathname-socket connections only beneath `write_paths`
//!    (ABI 9);
//! 6. the capability bounding set cut to `keep_capabilities`; ambient and
//!    inheritable sets cleared;
//! 7. a session of its own, every descriptor close-on-exec, then `exec` of
//!    the program file the helper opened and checked.
//!
//! A failure at any step ends that process before `exec`: the report says
//! exit code 126 and the job never started, so it never runs half-contained.
//! `landlock = "required"` (the default) refuses every job on a kernel below
//! ABI 6; `limits = "required"` refuses them without job cgroups.

use std::collections::HashSet;
use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::str::FromStr;

use anyhow::{Context, Result};
use caps::{CapSet, Capability};
use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, NetPort, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetError, Scope, path_beneath_rules,
};
use nix::sys::resource::Resource;

use crate::cgroup::Cgroups;
use crate::config::{Enforce, Sandbox};

/// The ABI whose rules a job's containment relies on: write access (with
/// truncate and device ioctls), network rules, and signal and
/// abstract-socket scoping. `landlock = "required"` refuses jobs below it.
const BASELINE: ABI = ABI::V6;
/// The newest rights asked for where the kernel has them.
const NEWEST: ABI = ABI::V10;

/// Everything the job's forked process applies, prepared once.
#[derive(Debug)]
pub(crate) struct Plan {
    /// The landlock ruleset (a kernel object: every job restricts itself
    /// with the same one); `None` only with `best_effort` and no landlock.
    pub(crate) ruleset: Option<OwnedFd>,
    /// The landlock ABI of this kernel (0: none).
    pub(crate) landlock_abi: u32,
    /// Capability numbers to drop from the bounding set.
    pub(crate) drop_caps: Vec<u8>,
    /// Soft = hard.
    pub(crate) rlimits: [(Resource, u64); 2],
    pub(crate) write_paths: Vec<CString>,
    pub(crate) cgroups: Cgroups,
    pub(crate) max_processes: u64,
    pub(crate) max_memory: u64,
    /// Why a job cannot run (`required` and the kernel cannot enforce).
    pub(crate) refusal: Option<String>,
    /// What `best_effort` could not enforce, for every report.
    pub(crate) warning: Option<String>,
}

impl Plan {
    pub(crate) fn new(s: &Sandbox) -> Result<Self> {
        let abi = crate::sys::landlock_abi();
        let mut refusal = Vec::new();
        let mut warning = Vec::new();
        let ruleset = match (build_ruleset(s, s.landlock), s.landlock) {
            (Ok(Some(fd)), _) if abi >= BASELINE as u32 => Some(fd),
            (Ok(fd), Enforce::BestEffort) => {
                warning.push(format!(
                    "landlock ABI {abi} (ABI {} wanted): only what it offers is enforced",
                    BASELINE as u32
                ));
                fd
            }
            (Err(e), Enforce::BestEffort) => {
                warning.push(format!("no landlock ruleset ({e}): only the read-only mounts keep writes to write_paths"));
                None
            }
            (r, Enforce::Required) => {
                let why = r.err().map_or_else(String::new, |e| format!(": {e}"));
                refusal.push(format!(
                    "landlock = \"required\" needs ABI {} (Linux 6.12); this kernel offers ABI {abi}{why}",
                    BASELINE as u32
                ));
                None
            }
        };
        let cgroups = Cgroups::detect(s.max_processes, s.max_memory_bytes);
        match cgroups.take() {
            Ok(_probe) => cgroups.replenish(),
            Err(e) => {
                let why = format!(
                    "no job cgroup ({e:#}): the process and memory limits are not enforced"
                );
                match s.limits {
                    Enforce::Required => refusal.push(format!("limits = \"required\" but {why}")),
                    Enforce::BestEffort => warning.push(why),
                }
            }
        }
        let join = |v: Vec<String>| (!v.is_empty()).then(|| v.join("; "));
        Ok(Self {
            ruleset,
            landlock_abi: abi,
            drop_caps: capabilities_to_drop(&s.keep_capabilities)?,
            rlimits: [
                (Resource::RLIMIT_NOFILE, s.rlimits.nofile),
                (Resource::RLIMIT_CORE, s.rlimits.core),
            ],
            write_paths: s
                .write_paths
                .iter()
                .map(|p| CString::new(p.as_os_str().as_bytes()))
                .collect::<Result<_, _>>()
                .context("a write path holds a NUL byte")?,
            cgroups,
            max_processes: s.max_processes,
            max_memory: s.max_memory_bytes,
            refusal: join(refusal),
            warning: join(warning),
        })
    }
}

/// Read and execute everywhere; everything beneath `write_paths`; TCP as
/// configured; scoped signals and abstract sockets. With `required` the
/// baseline must be handled whole; rights newer than it are added where
/// the kernel has them (a rule's right the kernel lacks only narrows it).
fn build_ruleset(s: &Sandbox, mode: Enforce) -> Result<Option<OwnedFd>, RulesetError> {
    let level = match mode {
        Enforce::Required => CompatLevel::HardRequirement,
        Enforce::BestEffort => CompatLevel::BestEffort,
    };
    let mut ruleset = Ruleset::default()
        .set_compatibility(level)
        .handle_access(AccessFs::from_all(BASELINE))?
        .handle_access(AccessNet::BindTcp)?
        .scope(Scope::from_all(BASELINE))?;
    if s.tcp_connect_ports.is_some() {
        ruleset = ruleset.handle_access(AccessNet::ConnectTcp)?;
    }
    let mut created = ruleset
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(NEWEST))?
        .create()?
        .set_compatibility(CompatLevel::BestEffort)
        .add_rules(path_beneath_rules(["/"], AccessFs::from_read(NEWEST)))?
        .add_rules(path_beneath_rules(&s.write_paths, AccessFs::from_all(NEWEST)))?
        .add_rules(path_beneath_rules(["/dev/null"], AccessFs::from_file(NEWEST)))?;
    for &port in &s.tcp_bind_ports {
        created = created.add_rule(NetPort::new(port, AccessNet::BindTcp))?;
    }
    for &port in s.tcp_connect_ports.iter().flatten() {
        created = created.add_rule(NetPort::new(port, AccessNet::ConnectTcp))?;
    }
    Ok(created.into())
}

fn capabilities_to_drop(keep: &[String]) -> Result<Vec<u8>> {
    let keep: HashSet<Capability> = keep
        .iter()
        .map(|n| Capability::from_str(n).map_err(|_| anyhow::anyhow!("unknown capability {n}")))
        .collect::<Result<_>>()?;
    // Only what the kernel has may be dropped: dropping an unknown
    // capability fails.
    let bounding = caps::read(None, CapSet::Bounding)
        .map_err(|e| anyhow::anyhow!("reading the bounding set: {e}"))?;
    let mut drop: Vec<u8> = bounding.difference(&keep).map(|c| c.index()).collect();
    drop.sort_unstable();
    Ok(drop)
}
