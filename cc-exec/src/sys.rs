//! The one place this crate needs `unsafe`: what happens between `fork` and
//! `exec`, which std has no safe API for.
//!
//! [`session_and_cloexec`] makes the child a session leader and marks every
//! descriptor from 3 up close-on-exec. [`prepare_reaped_child`] does that,
//! then turns the forked process into the job's *reaper*: a small
//! process that never execs, forks the job, and lives exactly as long as
//! anything the job started (see [`reap`]).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

fn cvt(r: libc::c_int) -> io::Result<()> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// In the child, before `exec`:
/// - `setsid(2)`: a new session and a new process group whose id is the
///   child's pid, so a timeout can signal the whole group and the job has
///   no controlling terminal of ours;
/// - every descriptor from 3 up close-on-exec (`close_range(2)` with
///   `CLOSE_RANGE_CLOEXEC`), so nothing the parent inherited or opened
///   without `O_CLOEXEC` reaches the job. Marking rather than closing keeps
///   std's own exec-error pipe working until `exec`, so "not found" is
///   still reported.
pub(crate) fn session_and_cloexec() -> io::Result<()> {
    // SAFETY: plain system calls with integer arguments.
    unsafe {
        cvt(libc::setsid())?;
        cvt(libc::close_range(
            3,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
        ))
    }
}

/// What the reaper writes on its status pipe: first the job's pid (4 bytes,
/// native order) as soon as it exists, then, when everything is gone, the
/// job's wait status and how many other processes it had to kill (4 + 4).
pub(crate) const STATUS_LEN: usize = 12;

/// Makes the forked child the job's reaper (user mode: no namespaces).
///
/// The reaper (`PR_SET_CHILD_SUBREAPER`, all signals blocked) forks the job,
/// which becomes the session leader and `exec`s; the reaper never does. Any
/// process the job leaves behind — even one that called `setsid` — is
/// reparented to the reaper rather than to init, so the reaper can find it
/// in `/proc/thread-self/children` and end it. The reaper:
/// - on SIGTERM/SIGINT/SIGHUP (the supervisor's timeout) sends SIGTERM to
///   the job's group and to every child, waits `grace`, then SIGKILLs all;
/// - when the job exits, SIGKILLs everything still there at once;
/// - exits only when it has no child left, after writing the job's status.
///
/// Everything it runs is a raw system call on data prepared here; it owns
/// `status` (the pipe's write end).
pub(crate) fn prepare_reaped_child(cmd: &mut Command, grace: Duration, status: OwnedFd) {
    let grace_ns = i64::try_from(grace.as_nanos()).unwrap_or(i64::MAX);
    let reaper = move || -> io::Result<()> {
        session_and_cloexec()?;
        let fd = status.as_raw_fd();
        // SAFETY: sigset_t is plain data that sigfillset fully initialises;
        // prctl and sigprocmask take integers and pointers to these locals.
        let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
        let mut before: libc::sigset_t = unsafe { std::mem::zeroed() };
        unsafe {
            cvt(libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0))?;
            cvt(libc::sigfillset(&raw mut all))?;
            cvt(libc::sigprocmask(
                libc::SIG_BLOCK,
                &raw const all,
                &raw mut before,
            ))?;
        }
        // A raw clone, not glibc's fork: fork runs atfork handlers that take
        // locks another thread of the parent may have held at fork time.
        // SAFETY: clone(2) with only the exit signal set behaves like fork;
        // no pointer is passed.
        let job = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) };
        if job == 0 {
            // The job: its own session, default signal mask, then std's exec.
            // SAFETY: as above, plain calls on a local.
            unsafe {
                cvt(libc::sigprocmask(
                    libc::SIG_SETMASK,
                    &raw const before,
                    std::ptr::null_mut(),
                ))?;
                cvt(libc::setsid())?;
            }
            return Ok(());
        }
        if job < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: reap makes raw system calls only and never returns.
        unsafe { reap(job as libc::pid_t, grace_ns, fd) }
    };
    // SAFETY: the closure runs in the child after fork (the parent is
    // multi-threaded): it and `reap` make only async-signal-safe system
    // calls on values prepared before the fork and on stack buffers; they
    // never allocate, lock, or touch state shared with other threads.
    unsafe {
        cmd.pre_exec(reaper);
    }
}

fn now_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, a local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    ts.tv_sec
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec)
}

/// Sends `sig` to every child of this (single-threaded) process.
///
/// # Safety
/// Raw system calls on a stack buffer only.
unsafe fn signal_children(sig: libc::c_int) {
    let path = c"/proc/thread-self/children";
    // SAFETY: a NUL-terminated literal and flags.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        // No /proc: the job's group is all that can be reached.
        return;
    }
    let mut buf = [0u8; 4096];
    let (mut pid, mut digits) = (0i32, false);
    loop {
        // SAFETY: reads into the local buffer, within its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        for &b in &buf[..n as usize] {
            if b.is_ascii_digit() {
                pid = pid.saturating_mul(10).saturating_add(i32::from(b - b'0'));
                digits = true;
            } else if digits {
                // SAFETY: integer arguments.
                unsafe { libc::kill(pid, sig) };
                (pid, digits) = (0, false);
            }
        }
    }
    if digits {
        // SAFETY: integer arguments.
        unsafe { libc::kill(pid, sig) };
    }
    // SAFETY: closes the descriptor opened above.
    unsafe { libc::close(fd) };
}

/// The reaper's life: see [`prepare_reaped_child`].
///
/// # Safety
/// Runs between fork and exec of a multi-threaded process: raw system calls
/// on locals only.
unsafe fn reap(job: libc::pid_t, grace_ns: i64, status_fd: libc::c_int) -> ! {
    // Nothing of the parent's but the status pipe: std's error pipe and the
    // output pipes belong to the job alone.
    // SAFETY: integer arguments.
    unsafe {
        libc::close_range(0, (status_fd - 1) as libc::c_uint, 0);
        libc::close_range((status_fd + 1) as libc::c_uint, libc::c_uint::MAX, 0);
    }
    let pid = job.to_ne_bytes();
    // SAFETY: writes 4 bytes from a local.
    unsafe { libc::write(status_fd, pid.as_ptr().cast(), pid.len()) };
    // SAFETY: a zeroed sigset is valid; sigaddset only writes into it.
    let mut wanted: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigemptyset(&raw mut wanted);
        for s in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&raw mut wanted, s);
        }
    }
    let (mut job_status, mut leftovers) = (None::<libc::c_int>, 0u32);
    let mut kill_at: Option<i64> = None;
    loop {
        // Once the job has ended, or the grace after a stop has run out,
        // everything left is killed.
        let killing = job_status.is_some() || kill_at.is_some_and(|t| now_ns() >= t);
        loop {
            let mut st: libc::c_int = 0;
            // SAFETY: writes one int, a local.
            let r = unsafe { libc::waitpid(-1, &raw mut st, libc::WNOHANG) };
            if r > 0 {
                if r == job {
                    job_status = Some(st);
                } else if killing {
                    leftovers += 1;
                }
                continue;
            }
            if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
                let mut out = [0u8; 8];
                out[..4].copy_from_slice(&job_status.unwrap_or(-1).to_ne_bytes());
                out[4..].copy_from_slice(&leftovers.to_ne_bytes());
                // SAFETY: writes 8 bytes from a local, then ends the process.
                unsafe {
                    libc::write(status_fd, out.as_ptr().cast(), out.len());
                    libc::_exit(0)
                }
            }
            break;
        }
        let killing = job_status.is_some() || kill_at.is_some_and(|t| now_ns() >= t);
        if killing {
            // SAFETY: raw system calls only; while the job lives its group
            // is reached through it (ESRCH once gone).
            unsafe {
                if job_status.is_none() {
                    libc::kill(-job, libc::SIGKILL);
                }
                signal_children(libc::SIGKILL);
            }
        }
        let wait_ns = if killing {
            10_000_000
        } else if let Some(t) = kill_at {
            (t - now_ns()).max(1_000_000)
        } else {
            3_600_000_000_000
        };
        let timeout = libc::timespec {
            tv_sec: wait_ns / 1_000_000_000,
            tv_nsec: wait_ns % 1_000_000_000,
        };
        // SAFETY: reads the local set and timeout; the info struct is not
        // asked for.
        let sig = unsafe {
            libc::sigtimedwait(&raw const wanted, std::ptr::null_mut(), &raw const timeout)
        };
        if matches!(sig, libc::SIGTERM | libc::SIGINT | libc::SIGHUP) && kill_at.is_none() {
            kill_at = Some(now_ns().saturating_add(grace_ns));
            // SAFETY: raw system calls only.
            unsafe {
                libc::kill(-job, libc::SIGTERM);
                signal_children(libc::SIGTERM);
            }
        }
    }
}

/// A descriptor that becomes readable when `pid` exits (`pidfd_open(2)`,
/// Linux 5.3), so the supervisor can sleep in `poll` until something
/// happens instead of waking up to ask.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: integer arguments; on success the kernel returns a new
    // descriptor that nothing else owns.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// `waitpid(pid, WNOHANG)`: the child's status once it has ended, which
/// reaps it.
pub(crate) fn try_wait(pid: u32) -> Option<std::process::ExitStatus> {
    use std::os::unix::process::ExitStatusExt;
    let pid = libc::pid_t::try_from(pid).ok()?;
    let mut status: libc::c_int = 0;
    // SAFETY: waitpid writes one int, a local.
    let r = unsafe { libc::waitpid(pid, &raw mut status, libc::WNOHANG) };
    (r == pid).then(|| std::process::ExitStatus::from_raw(status))
}
