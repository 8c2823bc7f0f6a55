//! The helper's `unsafe`, in two places:
//! - taking over the listening socket systemd passes on fd 3 (socket
//!   activation), which std can only adopt from a raw descriptor;
//! - applying a job's sandbox between `fork` and `exec`
//!   ([`sandbox_child`]): `pre_exec` is `unsafe`, and landlock, the
//!   capability sets and `PR_CAPBSET_DROP` have no allocation-free safe
//!   wrappers.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{Result, ensure};

/// The socket systemd passed, if `LISTEN_PID` is us and `LISTEN_FDS` ≥ 1.
pub(crate) fn systemd_socket() -> Result<Option<UnixListener>> {
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let fds: u32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if !pid_ok || fds == 0 {
        return Ok(None);
    }
    ensure!(
        fds == 1,
        "systemd passed {fds} sockets; cc-privhelper takes exactly one"
    );
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

fn check(r: libc::c_long) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn errno(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Makes the child apply `p` after `fork`, before `exec`, in the order
/// `sandbox.rs` documents. Any error ends the child before `exec` (std
/// reports it to the parent as a failed spawn): the job never starts.
pub(crate) fn sandbox_child(cmd: &mut Command, p: crate::sandbox::Prepared) {
    let apply = move || -> io::Result<()> {
        for (resource, v) in p.rlimits {
            nix::sys::resource::setrlimit(resource, v, v).map_err(errno)?;
        }
        nix::sys::prctl::set_no_new_privs().map_err(errno)?;
        if let Some(ruleset) = &p.ruleset {
            // SAFETY: landlock_restrict_self(2) takes a descriptor and a
            // flags word; the descriptor is the prepared ruleset, open
            // (owned by this closure) for the whole call.
            check(unsafe {
                libc::syscall(
                    libc::SYS_landlock_restrict_self,
                    ruleset.as_raw_fd(),
                    0 as libc::c_uint,
                )
            })?;
        }
        for &cap in &p.drop_caps {
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
        let mut header = CapHeader {
            version: CAPABILITY_VERSION_3,
            pid: 0,
        };
        let mut data = [CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        // SAFETY: capget(2) with version 3 reads one header and writes two
        // data structs; both pointers are to live, writable locals of
        // exactly those C layouts.
        check(unsafe { libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) })?;
        for d in &mut data {
            d.inheritable = 0;
        }
        // SAFETY: capset(2) reads the same header and two data structs.
        check(unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) })?;
        Ok(())
    };
    // SAFETY: the closure runs in the child after fork, where only
    // async-signal-safe calls are allowed, and the helper is multi-threaded.
    // It makes plain system calls (setrlimit, prctl, landlock_restrict_self,
    // capget, capset) on data prepared in the parent and moved into the
    // closure; it does not allocate (errors are built from errno values),
    // lock, or touch state shared with other threads.
    unsafe {
        cmd.pre_exec(apply);
    }
}
