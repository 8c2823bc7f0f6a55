//! The helper's `unsafe`, in three places:
//! - taking over the listening socket systemd passes on fd 3 (socket
//!   activation), which std can only adopt from a raw descriptor;
//! - two questions to the kernel with no safe wrapper: the landlock ABI,
//!   and a new PID namespace for the request thread's next child;
//! - applying a job's containment between `fork` and `exec`
//!   ([`contain_child`], the sequence `sandbox.rs` documents): `pre_exec`
//!   is `unsafe`, and mounts, landlock and the capability sets have no
//!   allocation-free safe wrappers.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Arc;

use anyhow::{Result, ensure};

use crate::sandbox::Plan;

/// The socket systemd passed, if `LISTEN_PID` is us and `LISTEN_FDS` ≥ 1.
pub(crate) fn systemd_socket() -> Result<Option<UnixListener>> {
    let pid_ok = std::env::var("LISTEN_PID").ok().and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let fds: u32 = std::env::var("LISTEN_FDS").ok().and_then(|n| n.parse().ok()).unwrap_or(0);
    if !pid_ok || fds == 0 {
        return Ok(None);
    }
    ensure!(fds == 1, "systemd passed {fds} sockets; cc-privhelper takes exactly one");
    // SAFETY: with LISTEN_PID equal to our pid and LISTEN_FDS = 1, systemd's
    // socket-activation protocol guarantees fd 3 is an open listening socket
    // handed to this process, and nothing else in this process owns it: it
    // is adopted exactly once, here, at start-up.
    let listener = unsafe { UnixListener::from_raw_fd(3) };
    // Children must not see these. SAFETY: called at start-up from `serve`
    // before the helper spawns any thread, so nothing reads or writes the
    // environment concurrently.
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
    }
    Ok(Some(listener))
}

/// The landlock ABI version of this kernel, 0 without landlock.
pub(crate) fn landlock_abi() -> u32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: landlock_create_ruleset(2) with a null attribute pointer, size
    // 0 and the VERSION flag only returns a number.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    u32::try_from(v).unwrap_or(0)
}

/// The next child this thread forks starts a new PID namespace (and is PID
/// 1 in it); the thread itself stays where it is. Each request has a thread
/// of its own that starts at most one job.
pub(crate) fn pid_namespace_for_next_child() -> io::Result<()> {
    // SAFETY: unshare(2) with one flag; CLONE_NEWPID does not imply
    // CLONE_THREAD, so a thread of a multi-threaded process may call it.
    check(libc::c_long::from(unsafe { libc::unshare(libc::CLONE_NEWPID) }))
}

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `struct mount_attr` for mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const AT_RECURSIVE: libc::c_uint = 0x8000;

fn check(r: libc::c_long) -> io::Result<()> {
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

fn errno(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// mount(2) with C strings (null for "none").
fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    let p = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: every pointer is null or a NUL-terminated string that lives
    // across the call.
    check(libc::c_long::from(unsafe {
        libc::mount(p(source), target.as_ptr(), p(fstype), flags, p(data).cast())
    }))
}

/// mount_setattr(2) on `path` and every mount beneath it.
fn set_mount_attr(path: &CStr, set: u64, clear: u64) -> io::Result<()> {
    let attr = MountAttr { attr_set: set, attr_clr: clear, propagation: 0, userns_fd: 0 };
    // SAFETY: a NUL-terminated path and a pointer to a local struct of the
    // size passed.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            AT_RECURSIVE,
            &raw const attr,
            std::mem::size_of::<MountAttr>(),
        )
    })
}

/// The argument and environment vectors for `execveat(2)`, built before
/// the fork: NUL-terminated strings and the null-terminated pointer arrays
/// into them.
#[derive(Debug)]
pub(crate) struct ExecVectors {
    _strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

// SAFETY: the pointers point into `_strings`, which the struct owns and
// never changes after construction; nothing writes through them, so the
// struct may move to and be read from any thread (the forked child).
unsafe impl Send for ExecVectors {}
// SAFETY: as above: shared access only reads immutable data.
unsafe impl Sync for ExecVectors {}

impl ExecVectors {
    /// `argv` and `KEY=VALUE` pairs; `None` if a string holds a NUL byte.
    pub(crate) fn new<'a>(
        argv: impl IntoIterator<Item = &'a str>,
        env: &[(&str, &str)],
    ) -> Option<Self> {
        let args: Vec<CString> =
            argv.into_iter().map(|a| CString::new(a).ok()).collect::<Option<_>>()?;
        let n = args.len();
        let mut strings = args;
        for (k, v) in env {
            strings.push(CString::new(format!("{k}={v}")).ok()?);
        }
        let mut ptrs: Vec<*const libc::c_char> = strings.iter().map(|c| c.as_ptr()).collect();
        let envp: Vec<*const libc::c_char> =
            ptrs.split_off(n).into_iter().chain([std::ptr::null()]).collect();
        ptrs.push(std::ptr::null());
        Some(Self { _strings: strings, argv: ptrs, envp })
    }
}

/// What one job's forked process needs beyond the [`Plan`]: the cgroup
/// `cgroup.procs` descriptors, the program file that was checked (kept
/// open across `exec` only for a script, whose interpreter reads it as
/// `/dev/fd/N`), and what to execute it with.
#[derive(Debug)]
pub(crate) struct JobFds {
    pub(crate) cgroup_procs: Vec<RawFd>,
    pub(crate) program: RawFd,
    pub(crate) script: bool,
    pub(crate) exec: ExecVectors,
}

/// Makes the child apply `plan` after `fork`, before `exec`, in the order
/// `sandbox.rs` documents. Any error ends the child before `exec` (std
/// reports it to the parent as a failed spawn): the job never starts.
pub(crate) fn contain_child(cmd: &mut Command, plan: Arc<Plan>, job: JobFds) {
    let apply = move || -> io::Result<()> {
        // The whole of `job` moves in (its vectors are Send only together).
        let job = &job;
        cc_exec::child_session_and_cloexec()?;
        for &fd in &job.cgroup_procs {
            // SAFETY: writes one byte from a static string.
            if unsafe { libc::write(fd, c"0".as_ptr().cast(), 1) } != 1 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: unshare(2) with one flag; the child is single-threaded.
        check(libc::c_long::from(unsafe { libc::unshare(libc::CLONE_NEWNS) }))?;
        mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None)?;
        mount(
            Some(c"proc"),
            c"/proc",
            Some(c"proc"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        )?;
        match mount(
            Some(c"tmpfs"),
            c"/run",
            Some(c"tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            Some(c"mode=0755,size=16k"),
        ) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            other => other?,
        }
        for w in &plan.write_paths {
            mount(Some(w), w, None, libc::MS_BIND | libc::MS_REC, None)?;
        }
        set_mount_attr(c"/", MOUNT_ATTR_RDONLY, 0)?;
        for w in &plan.write_paths {
            set_mount_attr(w, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, MOUNT_ATTR_RDONLY)?;
        }
        for (resource, v) in plan.rlimits {
            nix::sys::resource::setrlimit(resource, v, v).map_err(errno)?;
        }
        nix::sys::prctl::set_no_new_privs().map_err(errno)?;
        if let Some(ruleset) = &plan.ruleset {
            // SAFETY: landlock_restrict_self(2) takes a descriptor and a
            // flags word; the descriptor is the prepared ruleset, open for
            // the whole call.
            check(unsafe {
                libc::syscall(
                    libc::SYS_landlock_restrict_self,
                    ruleset.as_raw_fd(),
                    0 as libc::c_uint,
                )
            })?;
        }
        for &cap in &plan.drop_caps {
            // SAFETY: prctl(2) with integer arguments only.
            check(libc::c_long::from(unsafe {
                libc::prctl(
                    libc::PR_CAPBSET_DROP,
                    libc::c_ulong::from(cap),
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                )
            }))?;
        }
        // SAFETY: prctl(2) with integer arguments only.
        check(libc::c_long::from(unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        }))?;
        // Inheritable set: read this thread's sets, clear it, write back.
        let mut header = CapHeader { version: CAPABILITY_VERSION_3, pid: 0 };
        let mut data = [CapData { effective: 0, permitted: 0, inheritable: 0 }; 2];
        // SAFETY: capget(2) with version 3 reads one header and writes two
        // data structs; both pointers are to live, writable locals of
        // exactly those C layouts.
        check(unsafe { libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) })?;
        for d in &mut data {
            d.inheritable = 0;
        }
        // SAFETY: capset(2) reads the same header and two data structs.
        check(unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) })?;
        if job.script {
            // SAFETY: fcntl(2) with integer arguments: the interpreter
            // opens the script as /dev/fd/N, so N stays open.
            check(libc::c_long::from(unsafe { libc::fcntl(job.program, libc::F_SETFD, 0) }))?;
        }
        // The checked file itself, not whatever its path names now. On
        // success this does not return; on failure std reports the errno.
        // SAFETY: execveat(2) with the program descriptor, an empty path
        // (AT_EMPTY_PATH), and null-terminated arrays of pointers to
        // NUL-terminated strings, all owned by `job.exec` for the call.
        check(unsafe {
            libc::syscall(
                libc::SYS_execveat,
                job.program,
                c"".as_ptr(),
                job.exec.argv.as_ptr(),
                job.exec.envp.as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        })?;
        Ok(())
    };
    // SAFETY: the closure runs in the child after fork, where only
    // async-signal-safe calls are allowed, and the helper is multi-threaded.
    // It makes plain system calls (write, unshare, mount, mount_setattr,
    // setrlimit, prctl, landlock_restrict_self, capget, capset, fcntl,
    // execveat) on
    // data prepared in the parent and moved into the closure or static
    // strings; it does not allocate (errors are built from errno values),
    // lock, or touch state shared with other threads.
    unsafe {
        cmd.pre_exec(apply);
    }
}
