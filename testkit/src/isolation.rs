//! A private mount namespace for a suite that runs Debian's real `cron`
//! daemon, the agent's real crontab and the helper's real
//! `/etc/cron.d/croncommander` without touching the machine's own.
//!
//! [`Isolation::enter`] moves the calling thread (the test's) into a new
//! mount namespace, makes every mount in it private (nothing propagates back
//! to the machine), and mounts empty tmpfs file systems over
//! `/etc/cron.d`, `/var/spool/cron/crontabs` (Debian's modes: 1730
//! root:crontab) and `/run` (so our `cron` has its own pid file beside the
//! machine's). Every process the test starts afterwards — listener, agents,
//! helper, `crontab`, and the `cron -f` started here — inherits that view;
//! the machine's cron daemon and files never see the test's entries.
//!
//! Needs root (CAP_SYS_ADMIN). Threads started by the test thread after
//! `enter` share its namespace; threads started before it do not, so call
//! it first.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::unistd::Group;

/// The namespace's own cron daemon; killed on drop (the namespace goes when
/// the test's processes do).
#[derive(Debug)]
pub struct Isolation {
    cron: Child,
}

impl Isolation {
    pub fn enter() -> Self {
        unshare(CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS): needs root");
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .expect("making / private in the test's namespace");
        let crontab_gid = Group::from_name("crontab")
            .ok()
            .flatten()
            .map_or(0, |g| g.gid.as_raw());
        for (dir, opts) in [
            ("/etc/cron.d", "mode=0755".to_owned()),
            (
                "/var/spool/cron/crontabs",
                format!("mode=1730,gid={crontab_gid}"),
            ),
            ("/run", "mode=0755".to_owned()),
        ] {
            std::fs::create_dir_all(dir).expect("creating a mount point");
            mount(
                Some("tmpfs"),
                dir,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(opts.as_str()),
            )
            .unwrap_or_else(|e| panic!("mounting a tmpfs on {dir}: {e}"));
        }
        let cron = Self::spawn_cron();
        // Cron notices a changed crontab by its directory's mtime, in whole
        // seconds: a file written in the second cron loaded its database
        // would never be seen. Let that second pass.
        std::thread::sleep(Duration::from_millis(1100));
        Self { cron }
    }

    /// `cron -f`, ready: its pid file exists and names it (it takes the
    /// lock first thing).
    fn spawn_cron() -> Child {
        let cron = Command::new("cron")
            .arg("-f")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting cron -f (Debian package cron)");
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid = cron.id().to_string();
        while !std::fs::read_to_string("/run/crond.pid").is_ok_and(|t| t.trim() == pid) {
            assert!(Instant::now() < deadline, "cron did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        cron
    }

    /// Stops the namespace's cron daemon, as `systemctl stop cron` would:
    /// its pid file stays, naming a process that is gone.
    pub fn stop_cron(&mut self) {
        let _ = self.cron.kill();
        let _ = self.cron.wait();
    }

    /// Starts the namespace's cron daemon again after [`Isolation::stop_cron`].
    pub fn start_cron(&mut self) {
        self.stop_cron();
        self.cron = Self::spawn_cron();
    }

    /// Whether this thread is in a mount namespace other than its parent
    /// process's (the test runner's), i.e. [`Isolation::enter`] took effect.
    pub fn is_private() -> bool {
        let mine = std::fs::read_link("/proc/thread-self/ns/mnt").ok();
        let parent = std::fs::read_link(format!(
            "/proc/{}/ns/mnt",
            std::os::unix::process::parent_id()
        ))
        .ok();
        mine.is_some() && parent.is_some() && mine != parent
    }
}

impl Drop for Isolation {
    fn drop(&mut self) {
        let _ = self.cron.kill();
        let _ = self.cron.wait();
    }
}
