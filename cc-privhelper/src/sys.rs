//! The helper's `unsafe`, in three places:
//! - taking over the listening socket systemd passes on fd 3 (socket
//!   activation), which std can only adopt from a raw descriptor;
//! - asking the kernel for its landlock ABI (no safe wrapper);
//! - starting a job ([`spawn_contained`]): `clone(2)` with `CLONE_VM |
//!   CLONE_VFORK | CLONE_NEWPID` on a stack of its own, as `posix_spawn`
//!   does — a fork of the multi-threaded helper would copy its page tables
//!   for a process that lives a few microseconds before `exec` — and, in
//!   that child, the containment sequence `sandbox.rs` documents: mounts,
//!   landlock and the capability sets have no allocation-free safe
//!   wrappers.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;

use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};

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

/// What one job's process needs beyond the [`Plan`]: the cgroup
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

/// A job's process, started: its pid (1 in its own PID namespace) and the
/// read ends of its stdout and stderr.
pub(crate) struct Spawned {
    pub(crate) pid: u32,
    pub(crate) stdout: OwnedFd,
    pub(crate) stderr: OwnedFd,
}

/// What the child reads and, sharing the parent's memory until `exec`
/// (the parent waits meanwhile), writes back: the containment step it
/// reached and, if that step failed, its errno.
struct Child<'a> {
    plan: &'a Plan,
    job: &'a JobFds,
    stdio: [RawFd; 3],
    step: Cell<&'static str>,
    errno: Cell<i32>,
}

/// A containment step that failed (the job did not start).
#[derive(Debug)]
pub(crate) struct NotStarted {
    pub(crate) step: &'static str,
    pub(crate) error: io::Error,
}

/// Child stack size: the containment steps are plain system calls (a debug
/// build needs more than a release build); a guard page below it.
const STACK: usize = 256 * 1024;

/// Starts the job: a new process in a new PID namespace, which applies the
/// containment and executes the checked program file. Returns once it has
/// executed it (`CLONE_VFORK`) or failed to.
pub(crate) fn spawn_contained(plan: &Plan, job: &JobFds) -> Result<Spawned, NotStarted> {
    let fail = |step, error| NotStarted { step, error };
    let (out_r, out_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| fail("pipes", errno(e)))?;
    let (err_r, err_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| fail("pipes", errno(e)))?;
    let null = std::fs::File::open("/dev/null").map_err(|e| fail("/dev/null", e))?;
    let stack = Stack::new().map_err(|e| fail("a stack", e))?;
    let child = Child {
        plan,
        job,
        stdio: [null.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()],
        step: Cell::new("clone"),
        errno: Cell::new(0),
    };
    // No signal handler may run on the child's stack while it shares our
    // memory; the child sets its own mask before exec.
    let mut before = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), Some(&mut before))
        .map_err(|e| fail("signals", errno(e)))?;
    let flags = libc::CLONE_VM
        | libc::CLONE_VFORK
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::SIGCHLD;
    // SAFETY: `contained` runs on `stack` (mapped, writable, STACK bytes
    // above a guard page, alive until after clone returns) in a child that
    // shares this memory; with CLONE_VFORK this thread does not resume
    // until the child has called execveat or exited, so `child` (on this
    // thread's stack) outlives every access the child makes to it.
    let pid =
        unsafe { libc::clone(contained, stack.top(), flags, (&raw const child).cast_mut().cast()) };
    let clone_error = io::Error::last_os_error();
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&before), None);
    drop((out_w, err_w, null, stack));
    if pid < 0 {
        return Err(fail("clone", clone_error));
    }
    if child.errno.get() != 0 {
        // It exited without running the job: reap it now.
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        return Err(fail(child.step.get(), io::Error::from_raw_os_error(child.errno.get())));
    }
    Ok(Spawned { pid: pid.unsigned_abs(), stdout: out_r, stderr: err_r })
}

/// The child's stack: anonymous memory with a guard page at its low end.
struct Stack(*mut libc::c_void);

impl Stack {
    fn new() -> io::Result<Self> {
        let page = 4096;
        // SAFETY: a new private anonymous mapping; no pointer is passed in.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                STACK + page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Self(base);
        // SAFETY: the first page of the mapping just made.
        check(libc::c_long::from(unsafe { libc::mprotect(base, page, libc::PROT_NONE) }))?;
        Ok(stack)
    }

    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of the mapping (the stack grows down).
        unsafe { self.0.cast::<u8>().add(STACK + 4096).cast() }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the whole mapping made in `new`, no longer used.
        unsafe { libc::munmap(self.0, STACK + 4096) };
    }
}

/// The child: applies the containment, then executes the program. On a
/// failure it records the step and errno and exits 126.
extern "C" fn contained(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Child` that `spawn_contained` passed, alive
    // until this process execs or exits (CLONE_VFORK).
    let child = unsafe { &*arg.cast::<Child<'_>>() };
    if let Err(e) = contain(child) {
        child.errno.set(e.raw_os_error().unwrap_or(libc::EIO).max(1));
    }
    // SAFETY: _exit(2) ends this process only (no CLONE_THREAD); it runs no
    // atexit handler, which would touch the parent's state.
    unsafe { libc::_exit(126) }
}

/// The sequence `sandbox.rs` documents, each step recorded before it runs.
/// Only system calls on data prepared before the clone: nothing here
/// allocates, locks, or touches state another thread may hold.
///
/// The order is security-relevant and the split into stages (one function
/// each, called in turn) keeps it exactly: tied to the helper first (a
/// helper killed mid-way leaves nothing), the cgroup before anything the
/// job could fork, the mounts while the process still has every
/// capability, `no_new_privs` before Landlock and the seccomp filter, and
/// the filter last before `exec`, so no step of ours runs under it.
fn contain(child: &Child<'_>) -> io::Result<()> {
    let (plan, job) = (child.plan, child.job);
    let step = |name| child.step.set(name);
    process(child, &step)?;
    mounts(plan, &step)?;
    privileges(plan, &step)?;
    exec_state(job, &step)?;
    step("seccomp");
    for filter in &plan.seccomp {
        // Installs a prepared program: no allocation. On failure errno
        // still says why.
        seccompiler::apply_filter(filter).map_err(|_| io::Error::last_os_error())?;
    }
    step("exec");
    // The checked file itself, not whatever its path names now; returns
    // only on failure.
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
    })
}

/// `sandbox.rs` step 0 (dying with the helper), stdio, `/`, the session of
/// step 8, and step 1 (the job's cgroup).
fn process(child: &Child<'_>, step: &dyn Fn(&'static str)) -> io::Result<()> {
    step("dying with the helper");
    // SAFETY: prctl(2) with integer arguments only. The parent thread is
    // held in clone (CLONE_VFORK) until this process execs, so it cannot
    // have died before this line.
    check(libc::c_long::from(unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0)
    }))?;
    step("stdio");
    for (to, &from) in child.stdio.iter().enumerate() {
        // SAFETY: dup2(2) on descriptors open in this process.
        if unsafe { libc::dup2(from, to as RawFd) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    step("chdir /");
    // SAFETY: chdir(2) with a static NUL-terminated path.
    check(libc::c_long::from(unsafe { libc::chdir(c"/".as_ptr()) }))?;
    step("a session of its own");
    cc_exec::child_session_and_cloexec()?;
    step("joining the job's cgroup");
    for &fd in &child.job.cgroup_procs {
        // SAFETY: writes one byte from a static string.
        if unsafe { libc::write(fd, c"0".as_ptr().cast(), 1) } != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Step 2: a private mount namespace, `/proc` and `/run`, the tree
/// read-only but for `write_paths`.
fn mounts(plan: &Plan, step: &dyn Fn(&'static str)) -> io::Result<()> {
    step("a mount namespace");
    // SAFETY: unshare(2) with one flag; this process shares no fs struct.
    check(libc::c_long::from(unsafe { libc::unshare(libc::CLONE_NEWNS) }))?;
    step("making mounts private");
    mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None)?;
    step("mounting /proc");
    let hidden = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount(Some(c"proc"), c"/proc", Some(c"proc"), hidden, None)?;
    step("mounting /run");
    match mount(Some(c"tmpfs"), c"/run", Some(c"tmpfs"), hidden, Some(c"mode=0755,size=16k")) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        other => other?,
    }
    step("binding write_paths");
    // By path: a descriptor opened before this namespace existed names a
    // mount of the helper's, which the kernel refuses as a bind source
    // (EINVAL). The config's check that every directory above a write
    // path is root's is what keeps anyone else from swapping it.
    for w in &plan.write_paths {
        mount(Some(w), w, None, libc::MS_BIND | libc::MS_REC, None)?;
    }
    step("making the tree read-only");
    set_mount_attr(c"/", MOUNT_ATTR_RDONLY, 0)?;
    step("write_paths writable (nosuid, nodev)");
    for w in &plan.write_paths {
        set_mount_attr(w, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, MOUNT_ATTR_RDONLY)?;
    }
    Ok(())
}

/// Steps 3–6: rlimits, `no_new_privs`, Landlock, the capability sets
/// (bounding cut, ambient and inheritable cleared).
fn privileges(plan: &Plan, step: &dyn Fn(&'static str)) -> io::Result<()> {
    step("rlimits");
    for (resource, v) in plan.rlimits {
        nix::sys::resource::setrlimit(resource, v, v).map_err(errno)?;
    }
    step("no_new_privs");
    nix::sys::prctl::set_no_new_privs().map_err(errno)?;
    step("landlock");
    if let Some(ruleset) = &plan.ruleset {
        // SAFETY: landlock_restrict_self(2) takes a descriptor and a flags
        // word; the descriptor is the prepared ruleset, open for the call.
        check(unsafe {
            libc::syscall(libc::SYS_landlock_restrict_self, ruleset.as_raw_fd(), 0 as libc::c_uint)
        })?;
    }
    step("dropping capabilities");
    for &cap in &plan.drop_caps {
        // SAFETY: prctl(2) with integer arguments only.
        check(libc::c_long::from(unsafe {
            libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0)
        }))?;
    }
    step("clearing ambient capabilities");
    // SAFETY: prctl(2) with integer arguments only.
    check(libc::c_long::from(unsafe {
        libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    }))?;
    // Inheritable set: read this process's sets, clear it, write back.
    step("clearing inheritable capabilities");
    let mut header = CapHeader { version: CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [CapData { effective: 0, permitted: 0, inheritable: 0 }; 2];
    // SAFETY: capget(2) with version 3 reads one header and writes two data
    // structs; both pointers are to live, writable locals of those layouts.
    check(unsafe { libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) })?;
    for d in &mut data {
        d.inheritable = 0;
    }
    // SAFETY: capset(2) reads the same header and two data structs.
    check(unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) })?;
    Ok(())
}

/// Before step 7: the script's descriptor kept for `exec`, and signals as
/// a freshly started program expects them.
fn exec_state(job: &JobFds, step: &dyn Fn(&'static str)) -> io::Result<()> {
    step("keeping the script open");
    if job.script {
        // SAFETY: fcntl(2) with integers: the interpreter opens the script
        // as /dev/fd/N, so N stays open.
        check(libc::c_long::from(unsafe { libc::fcntl(job.program, libc::F_SETFD, 0) }))?;
    }
    // Signals as a freshly started program expects them.
    step("signals");
    // SAFETY: signal(2) and sigprocmask(2) on integers and a local set.
    unsafe {
        if libc::signal(libc::SIGPIPE, libc::SIG_DFL) == libc::SIG_ERR {
            return Err(io::Error::last_os_error());
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut none);
        check(libc::c_long::from(libc::sigprocmask(
            libc::SIG_SETMASK,
            &raw const none,
            std::ptr::null_mut(),
        )))?;
    }
    Ok(())
}
