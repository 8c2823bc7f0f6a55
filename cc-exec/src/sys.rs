//! The one place this crate needs `unsafe`: two steps between `fork` and
//! `exec` that std has no safe API for.
#![allow(unsafe_code)]

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes the child, before `exec`:
/// - call `setsid(2)`: a new session and a new process group whose id is
///   the child's pid, so a timeout can signal the whole group and the job
///   has no controlling terminal of ours;
/// - mark every descriptor from 3 up close-on-exec (`close_range(2)` with
///   `CLOSE_RANGE_CLOEXEC`), so nothing the parent inherited or opened
///   without `O_CLOEXEC` reaches the job. Marking rather than closing keeps
///   std's own exec-error pipe working until `exec`, so "not found" is still
///   reported.
pub(crate) fn prepare_child(cmd: &mut Command) {
    // SAFETY: the closure runs in the child after fork, where only
    // async-signal-safe calls are allowed. setsid(2) and close_range(2) are
    // plain system calls; errors are built from integers. Nothing allocates,
    // locks, or touches state shared with other threads.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(|e| io::Error::from_raw_os_error(e as i32))?;
            if libc::close_range(
                3,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
