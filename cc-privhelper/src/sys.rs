//! The helper's one `unsafe`: taking over the listening socket systemd
//! passes on fd 3 (socket activation), which std can only adopt from a raw
//! descriptor.
#![allow(unsafe_code)]

use std::os::fd::FromRawFd;
use std::os::unix::net::UnixListener;

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
