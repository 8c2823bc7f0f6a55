//! The Debian package: every file root-owned and nothing world-writable in
//! the archive; installed (as root; in CI on the machine itself), the user
//! and directories exist with their owners and modes, system mode is off,
//! nothing is enabled, and the installed units keep their exposure scores.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use cc_e2e::agent::is_root;
use cc_e2e::require;

fn deb() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debian");
    std::fs::read_dir(dir)
        .ok()?
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
}

fn out(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn the_package_installs_root_owned_files_and_enables_nothing() {
    let pkg = deb();
    if !require(
        "target/debian/croncommander_*.deb (the test command builds it with cargo deb)",
        pkg.is_some(),
    ) {
        return;
    }
    let pkg = pkg.unwrap();
    the_archive_is_root_owned(&pkg);

    if !require("root, to install the package on this machine", is_root()) {
        return;
    }
    out(Command::new("dpkg").arg("-i").arg(&pkg));
    installed_owners_and_modes();
    installed_paths_root_owned_and_nothing_enabled();
    installed_units_and_selinux_sources();
    out(Command::new("dpkg").args(["--purge", "croncommander"]));
}

/// The archive itself: every entry root-owned, none world-writable, the
/// configs' modes, and cron among its dependencies.
fn the_archive_is_root_owned(pkg: &Path) {
    let listing = out(Command::new("dpkg-deb").arg("-c").arg(pkg));
    for line in listing.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (mode, owner, path) = (f[0], f[1], f[5]);
        assert_eq!(owner, "0/0", "{path} is not root-owned in the package");
        assert_ne!(mode.as_bytes()[8], b'w', "{path} is world-writable: {mode}");
    }
    let mode_of = |p: &str| {
        listing
            .lines()
            .find(|l| l.ends_with(p))
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(mode_of("./etc/croncommander/helper.toml"), "-rw-------");
    assert_eq!(mode_of("./etc/croncommander/agent.toml"), "-rw-r-----");
    let control = out(Command::new("dpkg-deb").arg("-f").arg(pkg).arg("Depends"));
    assert!(control.contains("cron"), "{control}");
}

/// `path`'s owner, mode and (if given) group.
fn check(path: &str, uid: u32, group: Option<&str>, mode: u32) {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(m.uid(), uid, "{path} owner");
    assert_eq!(
        m.mode() & 0o7777,
        mode,
        "{path} mode {:o}",
        m.mode() & 0o7777
    );
    if let Some(g) = group {
        let gid = nix::unistd::Group::from_name(g)
            .unwrap()
            .unwrap()
            .gid
            .as_raw();
        assert_eq!(m.gid(), gid, "{path} group");
    }
}

/// Installed: the agent user, the directories and configs with their
/// owners and modes, system mode off.
fn installed_owners_and_modes() {
    let agent = nix::unistd::User::from_name("cc-agent-user")
        .unwrap()
        .expect("postinst creates cc-agent-user");
    assert!(agent.shell.ends_with("nologin"));
    check("/etc/croncommander", 0, Some("root"), 0o755);
    check(
        "/etc/croncommander/agent.toml",
        0,
        Some("cc-agent-user"),
        0o640,
    );
    check("/etc/croncommander/helper.toml", 0, Some("root"), 0o600);
    check("/etc/croncommander/listener.toml", 0, Some("root"), 0o644);
    check(
        "/var/lib/croncommander",
        agent.uid.as_raw(),
        Some("cc-agent-user"),
        0o700,
    );
    check("/var/lib/croncommander-helper", 0, Some("root"), 0o700);
    // The operator CLI, which signs root work, ships with the package.
    check("/usr/bin/ccctl", 0, Some("root"), 0o755);
    // No directory is shared between root and the agent (reports of
    // scheduled system jobs travel over the helper's socket).
    assert!(!std::path::Path::new("/var/spool/croncommander").exists());
    let helper = std::fs::read_to_string("/etc/croncommander/helper.toml").unwrap();
    assert!(helper.lines().any(|l| l.trim() == "system_mode = false"));
}

/// Every installed path root-owned (but for the agent's own state) and
/// never world-writable; nothing enabled.
fn installed_paths_root_owned_and_nothing_enabled() {
    // Every installed path: root-owned (but for the agent's own state) and
    // never world-writable.
    for path in out(Command::new("dpkg").args(["-L", "croncommander"])).lines() {
        let Ok(m) = std::fs::symlink_metadata(path) else {
            continue;
        };
        // Merged /usr: /lib is a symlink, whose mode is always 0777.
        if m.file_type().is_symlink() {
            continue;
        }
        assert_eq!(m.mode() & 0o002, 0, "{path} is world-writable");
        if path.starts_with("/etc/croncommander")
            || path.starts_with("/usr/bin/")
            || path.starts_with("/lib/systemd/")
        {
            assert_eq!(m.uid(), 0, "{path} is not root-owned");
        }
    }
    // Nothing enabled.
    for wants in [
        "/etc/systemd/system/multi-user.target.wants",
        "/etc/systemd/system/sockets.target.wants",
    ] {
        if let Ok(entries) = std::fs::read_dir(wants) {
            for e in entries {
                let name = e.unwrap().file_name().into_string().unwrap();
                assert!(
                    !name.starts_with("cc-"),
                    "{name} was enabled by the package"
                );
            }
        }
    }
}

/// The installed units keep their exposure scores; the SELinux sources
/// shipped are the ones the SELinux test checks.
fn installed_units_and_selinux_sources() {
    // The installed units keep their scores: the levels SECURITY.md states
    // (as tests/tests/units.rs holds the unit files to).
    for (unit, target) in [
        ("cc-agent.service", 1.1),
        ("cc-listener.service", 1.1),
        ("cc-privhelper.service", 3.3),
    ] {
        let text = out(Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(format!("/lib/systemd/system/{unit}")));
        let level: f64 = text
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .and_then(|l| l.split(':').nth(1)?.split_whitespace().next()?.parse().ok())
            .unwrap();
        assert!(level <= target, "installed {unit}: {level} > {target}");
    }
    // The SELinux sources shipped are the ones the SELinux test checks.
    for f in ["croncommander.te", "croncommander.fc", "croncommander.if"] {
        let shipped = std::fs::read(format!("/usr/share/selinux/croncommander/{f}")).unwrap();
        let source = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../selinux")
                .join(f),
        )
        .unwrap();
        assert_eq!(shipped, source, "{f} differs from selinux/{f}");
    }
}
