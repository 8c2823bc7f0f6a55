//! What the agent tells the listener about whether this host's schedule
//! can fire (`cronHost`, sent in `register` and every `heartbeat`): the
//! cron daemon running here, and the time zone it reads schedules in.
//!
//! The agent's unit hides other users' processes (`ProtectProc=invisible`),
//! so root's cron is not in the agent's `/proc`. The daemon's pid file is:
//! cron writes its pid to `/run/crond.pid` and holds it locked while it
//! runs. A pid named there whose process exists (`kill(pid, 0)` answers
//! "yours" or "not yours", never "no such process") is a running daemon; its
//! name is read from `/proc` where that is visible, and a visible process
//! of another name (the pid reused after a crash) is not cron. Without a
//! pid file, a process named like a cron daemon seen in `/proc` counts. The
//! probe never takes cron's lock: an unprivileged process that held it even
//! a moment could stop a cron starting at that moment.

use std::path::Path;

use cc_proto::wire::CronHost;
use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// Process names of the cron daemons we recognise.
pub(crate) const CRON_NAMES: &[&str] = &["cron", "crond", "cronie", "fcron", "dcron"];

/// Where cron daemons write their pid.
const PID_FILES: &[&str] = &["/run/crond.pid", "/var/run/crond.pid", "/run/cron.pid"];

/// This host's cron daemon and time zone, as the listener is told. A part
/// the listener would refuse (an odd zone name) is left out, not sent.
pub(crate) fn observe() -> CronHost {
    let mut c = CronHost {
        daemon: daemon(PID_FILES, Path::new("/proc")),
        time_zone: time_zone(Path::new("/etc")),
    };
    if c.validate().is_err() {
        c.time_zone = None;
    }
    if c.validate().is_err() {
        c.daemon = None;
    }
    c
}

/// The running cron daemon's name, from the first pid file naming a live
/// process; none if the pid files name only processes that are gone; else,
/// without a pid file, from `proc`'s visible processes.
pub(crate) fn daemon<P: AsRef<Path>>(pid_files: &[P], proc: &Path) -> Option<String> {
    let mut stale = false;
    for file in pid_files {
        let Some(pid) = std::fs::read_to_string(file)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
            .filter(|&p| p > 0)
        else {
            continue;
        };
        // Signal 0 checks only that the process exists (EPERM: it does,
        // and is not ours — root's cron).
        match kill(Pid::from_raw(pid), None) {
            Ok(()) | Err(Errno::EPERM) => {}
            Err(_) => {
                stale = true;
                continue;
            }
        }
        match std::fs::read_to_string(proc.join(pid.to_string()).join("comm")) {
            Ok(comm) if CRON_NAMES.contains(&comm.trim()) => return Some(comm.trim().to_owned()),
            // A visible process of another name: the pid was reused.
            Ok(_) => {
                stale = true;
                continue;
            }
            // Hidden from us: the pid file's daemon.
            Err(_) => return Some("cron".to_owned()),
        }
    }
    // The daemon that wrote its pid is gone (stopped, crashed): another
    // process named cron is not this host's (a container's, a test's).
    if stale {
        return None;
    }
    std::fs::read_dir(proc)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .find_map(|e| {
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            let comm = comm.trim();
            CRON_NAMES.contains(&comm).then(|| comm.to_owned())
        })
}

/// The IANA name of the zone `etc/localtime` links to (`…/zoneinfo/NAME`),
/// else `etc/timezone`'s line (Debian), else `UTC` when there is no
/// `localtime` at all (the C library's default); `None` when neither says.
pub(crate) fn time_zone(etc: &Path) -> Option<String> {
    let localtime = etc.join("localtime");
    if let Ok(target) = std::fs::read_link(&localtime) {
        let target = target.to_string_lossy().into_owned();
        if let Some((_, name)) = target.split_once("zoneinfo/") {
            return Some(name.to_owned());
        }
    }
    let named = std::fs::read_to_string(etc.join("timezone"))
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    if named.is_some() {
        return named;
    }
    (!localtime.exists()).then(|| "UTC".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory, removed when the guard goes.
    struct Scratch(std::path::PathBuf);

    impl std::ops::Deref for Scratch {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir(name: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("cc-cronhost-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }

    /// A fake `/proc` with one process `pid` named `comm`.
    fn proc_with(d: &Path, pid: u32, comm: &str) -> std::path::PathBuf {
        let proc = d.join("proc");
        std::fs::create_dir_all(proc.join(pid.to_string())).unwrap();
        std::fs::write(proc.join(pid.to_string()).join("comm"), format!("{comm}\n")).unwrap();
        proc
    }

    /// What the agent sends is what the parts find on this machine, and
    /// always something the listener accepts.
    #[test]
    fn observe_is_this_machines_daemon_and_zone_and_valid() {
        let c = observe();
        assert_eq!(c.daemon, daemon(PID_FILES, Path::new("/proc")));
        assert_eq!(c.time_zone, time_zone(Path::new("/etc")));
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn a_pid_file_naming_a_live_cron_is_a_daemon_and_a_dead_or_reused_pid_is_not() {
        let d = dir("pid");
        let me = std::process::id();
        let pid_file = d.join("crond.pid");
        std::fs::write(&pid_file, format!("{me}\n")).unwrap();
        // Alive and named cron.
        let proc = proc_with(&d, me, "cron");
        assert_eq!(daemon(&[&pid_file], &proc).as_deref(), Some("cron"));
        // Alive but another program's now (the pid reused).
        let reused_dir = dir("reused");
        let reused = proc_with(&reused_dir, me, "bash");
        assert_eq!(daemon(&[&pid_file], &reused), None);
        // Alive and hidden from us (ProtectProc=invisible): the daemon.
        let hidden = dir("hidden");
        let empty = hidden.join("proc");
        std::fs::create_dir_all(&empty).unwrap();
        assert_eq!(daemon(&[&pid_file], &empty).as_deref(), Some("cron"));
        // A pid no process has: stopped, even with a process named cron
        // in sight (another namespace's).
        std::fs::write(&pid_file, "4194304\n").unwrap();
        assert_eq!(daemon(&[&pid_file], &proc), None);
        let other_dir = dir("other-cron");
        let other_cron = proc_with(&other_dir, 4242, "cron");
        assert_eq!(daemon(&[&pid_file], &other_cron), None);
        // Garbage, zero, a missing file.
        for text in ["", "x", "0", "-1"] {
            std::fs::write(&pid_file, text).unwrap();
            assert_eq!(daemon(&[&pid_file], &empty), None, "{text:?}");
        }
        assert_eq!(daemon(&[d.join("absent")], &empty), None);
    }

    #[test]
    fn without_a_pid_file_a_visible_process_named_cron_counts() {
        let d = dir("scan");
        let proc = proc_with(&d, 77, "crond");
        assert_eq!(daemon(&[d.join("absent")], &proc).as_deref(), Some("crond"));
        let other_dir = dir("scan-other");
        let other = proc_with(&other_dir, 78, "cronjob");
        assert_eq!(daemon(&[d.join("absent")], &other), None);
    }

    #[test]
    fn the_zone_is_localtimes_link_else_timezone_else_utc_without_localtime() {
        let d = dir("tz");
        assert_eq!(time_zone(&d).as_deref(), Some("UTC"));
        std::fs::write(d.join("timezone"), "Europe/Paris\n").unwrap();
        assert_eq!(time_zone(&d).as_deref(), Some("Europe/Paris"));
        std::os::unix::fs::symlink("/usr/share/zoneinfo/America/New_York", d.join("localtime"))
            .unwrap();
        assert_eq!(time_zone(&d).as_deref(), Some("America/New_York"));
        let e = dir("tz-file");
        std::fs::write(e.join("localtime"), "TZif").unwrap();
        assert_eq!(time_zone(&e), None);
    }
}
