//! The containment every root job starts in, worked out once from the
//! config ([`Plan`]) and applied by the kernel in the job's own process
//! between `fork` and `exec` (`sys.rs`), in one visible sequence:
//!
//! 0. (in the helper's request thread) new PID, IPC and UTS namespaces for
//!    its child: the job is PID 1 there, and when it ends the kernel kills
//!    everything it started — no process of a job outlives it or its
//!    timeout; it sees no SysV object or message queue of the host's, and
//!    what it makes goes with it. It dies with the thread that started it
//!    (`PR_SET_PDEATHSIG`), so a helper killed mid-job leaves nothing
//!    running. The network stays the host's;
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
//! 7. a seccomp filter of the helper's own ([`job_filters`]), whatever the
//!    service manager did: no files by handle, no user namespaces, no
//!    set-id bits, no kernel surface a job has no business with;
//! 8. a session of its own, every descriptor close-on-exec, then `exec` of
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
use seccompiler::BpfProgram;

use crate::bpf::Refusal;
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
    /// The job's seccomp filters, compiled once ([`job_filters`]).
    pub(crate) seccomp: [BpfProgram; 1],
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
            seccomp: job_filters()?,
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

/// System calls refused outright (EPERM) to every root job: files by
/// handle (which reach any file through a write path's mount), the kernel
/// surface no job has business with (modules, kexec, BPF, perf, keyrings,
/// ptrace, mounts, swap, reboot) and joining other namespaces.
const REFUSED: &[i64] = &[
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_ptrace,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_fsopen,
    libc::SYS_fsmount,
    libc::SYS_fsconfig,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_setns,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
];

/// `fchmodat2(2)` (Linux 6.6), not yet in every libc.
const SYS_FCHMODAT2: i64 = 452;

/// Where each call that sets a mode takes it: (call, index of the mode
/// argument, index of the open flags when the mode only counts with
/// `O_CREAT` or `O_TMPFILE`).
fn mode_setting_calls() -> Vec<(i64, u8, Option<u8>)> {
    let mut calls = vec![
        (libc::SYS_fchmod, 1, None),
        (libc::SYS_fchmodat, 2, None),
        (SYS_FCHMODAT2, 2, None),
        (libc::SYS_openat, 3, Some(2)),
        (libc::SYS_mknodat, 2, None),
    ];
    #[cfg(target_arch = "x86_64")]
    calls.extend([
        (libc::SYS_chmod, 1, None),
        (libc::SYS_creat, 1, None),
        (libc::SYS_open, 2, Some(1)),
        (libc::SYS_mknod, 1, None),
    ]);
    calls
}

/// The filter every root job installs last before `exec` (one program,
/// [`crate::bpf`]):
///
/// - EPERM for [`REFUSED`]; for `unshare` and `clone` asking for a new user
///   namespace (its kernel surface is large, and a job has root already);
///   and for every call that would set a set-user-id or set-group-id bit
///   (`chmod` family, `open`/`openat`/`creat` creating a file, `mknod`):
///   write paths are `nosuid` only inside the job's mount namespace, so a
///   set-id file made there would run as root for anyone outside; on
///   x86_64, for every x32 call;
/// - ENOSYS for `clone3` and `openat2`, whose arguments sit in memory a
///   filter cannot read: the C library then falls back to `clone` and
///   `openat`, which the filter can.
pub(crate) fn job_filters() -> Result<[BpfProgram; 1]> {
    let refusal = |nr: i64, errno: i32, rules: Vec<Vec<(u8, u32)>>| Refusal { nr, errno, rules };
    let mut refused: Vec<Refusal> =
        REFUSED.iter().map(|&n| refusal(n, libc::EPERM, vec![])).collect();
    let newuser = libc::CLONE_NEWUSER as u32;
    for call in [libc::SYS_unshare, libc::SYS_clone] {
        refused.push(refusal(call, libc::EPERM, vec![vec![(0, newuser)]]));
    }
    let setid = [libc::S_ISUID, libc::S_ISGID];
    // O_TMPFILE carries O_DIRECTORY's bit; its own is the rest.
    let creating = [libc::O_CREAT as u32, (libc::O_TMPFILE & !libc::O_DIRECTORY) as u32];
    for (call, mode, flags) in mode_setting_calls() {
        let mut rules = Vec::new();
        for bit in setid {
            match flags {
                None => rules.push(vec![(mode, bit)]),
                Some(f) => rules.extend(creating.iter().map(|&c| vec![(f, c), (mode, bit)])),
            }
        }
        refused.push(refusal(call, libc::EPERM, rules));
    }
    for call in [libc::SYS_clone3, libc::SYS_openat2] {
        refused.push(refusal(call, libc::ENOSYS, vec![]));
    }
    let filter = crate::bpf::deny(&refused)
        .map_err(|e| anyhow::anyhow!("compiling the job's seccomp filter: {e}"))?;
    Ok([filter])
}

#[cfg(test)]
#[allow(unsafe_code)] // fork(2) and raw system calls, to try the filter in a child
mod tests {
    use super::*;
    use std::ffi::CString;

    /// A probe: its name, the errno it should give under the filters (0:
    /// it works), a system call and its arguments.
    struct Probe {
        name: &'static str,
        want: i32,
        call: libc::c_long,
        args: [libc::c_long; 5],
    }

    /// The probe's errno (0: the call worked). Makes no allocation: it
    /// runs in the forked child.
    fn run(p: &Probe) -> i32 {
        let [a, b, c, d, e] = p.args;
        // SAFETY: every pointer among the arguments is to a NUL-terminated
        // string the test keeps alive across the fork, or null where the
        // kernel then fails the call with an errno (which is all that is
        // read); no call here can touch this process's memory otherwise.
        let r = unsafe { libc::syscall(p.call, a, b, c, d, e) };
        if r < 0 { std::io::Error::last_os_error().raw_os_error().unwrap_or(-1) } else { 0 }
    }

    fn probes(file: &CString, new: &CString, plain: &CString, dir: &CString) -> Vec<Probe> {
        let at = libc::AT_FDCWD as libc::c_long;
        let ptr = |c: &CString| c.as_ptr() as libc::c_long;
        let flags = |f: libc::c_int| libc::c_long::from(f);
        let probe = |name, want, call, args| Probe { name, want, call, args };
        let (create, tmpfile) =
            (flags(libc::O_CREAT | libc::O_WRONLY), flags(libc::O_TMPFILE | libc::O_WRONLY));
        vec![
            probe("fchmodat 4755", libc::EPERM, libc::SYS_fchmodat, [at, ptr(file), 0o4755, 0, 0]),
            probe("fchmodat 2755", libc::EPERM, libc::SYS_fchmodat, [at, ptr(file), 0o2755, 0, 0]),
            probe("fchmodat 0755", 0, libc::SYS_fchmodat, [at, ptr(file), 0o755, 0, 0]),
            probe(
                "openat O_CREAT 4755",
                libc::EPERM,
                libc::SYS_openat,
                [at, ptr(new), create, 0o4755, 0],
            ),
            // Without O_CREAT the mode argument means nothing.
            probe(
                "openat O_RDONLY, stray mode bits",
                0,
                libc::SYS_openat,
                [at, ptr(file), flags(libc::O_RDONLY), 0o6000, 0],
            ),
            probe("openat O_CREAT 0644", 0, libc::SYS_openat, [at, ptr(plain), create, 0o644, 0]),
            probe(
                "openat O_TMPFILE 4755",
                libc::EPERM,
                libc::SYS_openat,
                [at, ptr(dir), tmpfile, 0o4755, 0],
            ),
            // O_DIRECTORY shares a bit with O_TMPFILE: not a creation.
            probe(
                "openat O_DIRECTORY, stray mode bits",
                0,
                libc::SYS_openat,
                [at, ptr(dir), flags(libc::O_DIRECTORY | libc::O_RDONLY), 0o6000, 0],
            ),
            probe(
                "unshare CLONE_NEWUSER",
                libc::EPERM,
                libc::SYS_unshare,
                [flags(libc::CLONE_NEWUSER), 0, 0, 0, 0],
            ),
            probe(
                "unshare CLONE_NEWUTS",
                0,
                libc::SYS_unshare,
                [flags(libc::CLONE_NEWUTS), 0, 0, 0, 0],
            ),
            probe("clone3", libc::ENOSYS, libc::SYS_clone3, [0; 5]),
            probe(
                "name_to_handle_at",
                libc::EPERM,
                libc::SYS_name_to_handle_at,
                [at, ptr(file), 0, 0, 0],
            ),
            probe("keyctl", libc::EPERM, libc::SYS_keyctl, [0; 5]),
            probe("openat2", libc::ENOSYS, libc::SYS_openat2, [0; 5]),
            // An x32 call number (getpid's): refused by the filter before
            // the kernel looks (without it, ENOSYS here: no x32 in this
            // kernel; EPERM tells the two apart).
            #[cfg(target_arch = "x86_64")]
            probe("x32 getpid", libc::EPERM, 0x4000_0000 | libc::SYS_getpid, [0; 5]),
        ]
    }

    #[test]
    fn the_job_filters_refuse_what_they_name_and_nothing_else() {
        if !nix::unistd::geteuid().is_root() {
            // The probes need root (unshare of a UTS namespace); the test
            // command runs the suite as root, and in CI a skip is a failure.
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "needs root");
            eprintln!("skipped: needs root");
            return;
        }
        let dir = std::env::temp_dir().join(format!("cc-seccomp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("f"), "x").unwrap();
        let filters = job_filters().unwrap();
        let name = |n: &str| CString::new(dir.join(n).as_os_str().as_encoded_bytes()).unwrap();
        let (file, new, plain) = (name("f"), name("new"), name("plain"));
        let here = CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
        let probes = probes(&file, &new, &plain, &here);
        let (r, w) = nix::unistd::pipe().unwrap();
        // SAFETY: the child only makes system calls and writes to a pipe
        // before _exit.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                drop(r);
                // No allocation from here on (another thread of the test
                // process may have held malloc's lock at the fork).
                let mut bytes = [0u8; 64];
                let installed = filters.iter().all(|f| seccompiler::apply_filter(f).is_ok());
                if installed {
                    for (i, p) in probes.iter().enumerate() {
                        bytes[i * 4..i * 4 + 4].copy_from_slice(&run(p).to_ne_bytes());
                    }
                    let _ = nix::unistd::write(&w, &bytes);
                }
                // SAFETY: _exit(2) ends the child without running the test
                // harness's atexit handlers or unwinding into it.
                unsafe { libc::_exit(0) };
            }
            nix::unistd::ForkResult::Parent { child } => {
                drop(w);
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut std::fs::File::from(r), &mut bytes).unwrap();
                let _ = nix::sys::wait::waitpid(child, None);
                let _ = std::fs::remove_dir_all(&dir);
                assert_eq!(bytes.len(), 64, "the child installed no filter");
                for (i, p) in probes.iter().enumerate() {
                    let got = i32::from_ne_bytes(bytes[i * 4..i * 4 + 4].try_into().unwrap());
                    assert_eq!(got, p.want, "{}: errno {got}, wanted {}", p.name, p.want);
                }
            }
        }
    }
}
/// What attaching the job's filter costs, beside the smallest filter:
/// `cargo test -p cc-privhelper --bin cc-privhelper measure_attach --
/// --ignored --nocapture` as root (a measurement, not a check).
#[cfg(test)]
#[allow(unsafe_code)] // fork(2), to attach each filter in a fresh child
mod attach_cost {
    use super::*;

    /// Nanoseconds the child took to attach `f`.
    fn attach_ns(f: &BpfProgram) -> u64 {
        let (r, w) = nix::unistd::pipe().unwrap();
        // SAFETY: the child only attaches a prepared filter, reads the
        // clock and writes to a pipe before _exit.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                drop(r);
                let t0 = std::time::Instant::now();
                let _ = seccompiler::apply_filter(f);
                let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
                let _ = nix::unistd::write(&w, &ns.to_ne_bytes());
                // SAFETY: ends the child without the harness's handlers.
                unsafe { libc::_exit(0) };
            }
            nix::unistd::ForkResult::Parent { child } => {
                drop(w);
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut std::fs::File::from(r), &mut bytes).unwrap();
                let _ = nix::sys::wait::waitpid(child, None);
                u64::from_ne_bytes(bytes[..8].try_into().unwrap())
            }
        }
    }

    #[test]
    #[ignore = "a measurement: run it by name, as root"]
    fn measure_attach() {
        let [job] = job_filters().unwrap();
        let one = crate::bpf::deny(&[Refusal {
            nr: libc::SYS_clone3,
            errno: libc::ENOSYS,
            rules: vec![],
        }])
        .unwrap();
        for _ in 0..3 {
            let median = |f: &BpfProgram| {
                let mut t: Vec<u64> = (0..200).map(|_| attach_ns(f)).collect();
                t.sort_unstable();
                t[100] / 1000
            };
            eprintln!(
                "median attach: the job's filter ({} instructions) {} µs, one call ({}) {} µs",
                job.len(),
                median(&job),
                one.len(),
                median(&one)
            );
        }
    }
}
