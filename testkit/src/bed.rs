//! The systemd test bed: Debian 12 machines booted with a real systemd in
//! `systemd-nspawn`, each on its own network namespace, joined by a veth
//! pair, with the package the test command built installed by `dpkg -i` —
//! so the shipped units run as an operator runs them.
//!
//! - The root file system is made once per build directory with
//!   `mmdebstrap` (Debian's packages only, about 20 s) and kept as a tar
//!   file under `target/systemd-bed/`; each machine unpacks its own copy
//!   into a fresh directory, so nothing writable is shared with the host or
//!   between machines but what a test copies in.
//! - Machines are booted with `--register=no` (the host need not run
//!   systemd) and entered with `nsenter` on the container's PID 1.
//! - Container differences from a real host, each on purpose: the landlock
//!   system calls are allowed through nspawn's own seccomp filter
//!   (`--system-call-filter`; nspawn 252 does not know them); names are in
//!   `/etc/hosts` (no DNS); the cgroup v1 controllers are read-only inside
//!   (this machine binds `pids` and `memory` to cgroup v1), so a job's
//!   cgroup limits cannot be enforced in the bed (docs/testing.md).

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Debian packages in the bed's root file system, beyond `--variant=apt`:
/// an init, the bus `systemctl` talks to, Debian's cron, and what the
/// docs' commands use (`openssl` for the listener's certificate, `ip`,
/// `ps`).
pub const ROOTFS_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "cron",
    "iproute2",
    "procps",
    "openssl",
    "ca-certificates",
];

/// The system calls nspawn 252's own filter refuses that the helper needs.
const NSPAWN_SYSCALLS: &str = "landlock_create_ruleset landlock_add_rule landlock_restrict_self";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Whether this machine can run the bed: root, and the three tools.
pub fn available() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("root".into());
    }
    for tool in ["mmdebstrap", "systemd-nspawn", "ip", "nsenter"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Err(format!(
                "{tool} (Debian packages mmdebstrap, systemd-container, iproute2, util-linux)"
            ));
        }
    }
    Ok(())
}

/// The package the test command built (`target/debian/croncommander_*.deb`).
pub fn deb() -> Option<PathBuf> {
    let dir = workspace().join("target/debian");
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.extension().is_some_and(|e| e == "deb")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("croncommander_"))
        })
}

/// The same package as a newer version (`VERSION+bed1`), for an upgrade
/// over a running install: unpacked and built again with `dpkg-deb`.
pub fn newer_deb(deb: &Path) -> PathBuf {
    let dir = workspace().join("target/systemd-bed");
    std::fs::create_dir_all(&dir).unwrap();
    let tree = dir.join(format!("newer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tree);
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&tree));
    let control = tree.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control).unwrap();
    let text: String = text
        .lines()
        .map(|l| match l.strip_prefix("Version: ") {
            Some(v) => format!("Version: {v}+bed1\n"),
            None => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&control, text).unwrap();
    let out = dir.join(format!("newer-{}.deb", std::process::id()));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-b"])
        .arg(&tree)
        .arg(&out));
    let _ = std::fs::remove_dir_all(&tree);
    out
}

/// The bed's root file system as a tar file, made once per build
/// directory (concurrent tests wait on a lock and share it).
pub fn rootfs() -> PathBuf {
    let dir = workspace().join("target/systemd-bed");
    std::fs::create_dir_all(&dir).expect("creating target/systemd-bed");
    let tar = dir.join("rootfs.tar");
    let lock = File::create(dir.join("rootfs.lock")).expect("the rootfs lock");
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("locking the rootfs");
    // A root file system made from another package list is made again.
    let stamp = dir.join("rootfs.packages");
    let want = ROOTFS_PACKAGES.join(",");
    if tar.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == want) {
        return tar;
    }
    // mmdebstrap picks its output format by the name's extension.
    let tmp = dir.join("rootfs.tmp.tar");
    let started = Instant::now();
    let out = Command::new("mmdebstrap")
        .args(["--variant=apt", "--quiet"])
        .arg(format!("--include={want}"))
        .args(["bookworm"])
        .arg(&tmp)
        .stdin(Stdio::null())
        .output()
        .expect("running mmdebstrap");
    assert!(
        out.status.success(),
        "mmdebstrap failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&tmp, &tar).expect("keeping the root file system");
    std::fs::write(&stamp, &want).expect("the rootfs stamp");
    eprintln!(
        "bed: root file system made in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    tar
}

/// Two network namespaces joined by a veth pair: `a` holds `addr_a`,
/// `b` holds `addr_b`, on a private /24 that exists only between them.
#[derive(Debug)]
pub struct Link {
    pub ns_a: String,
    pub ns_b: String,
    pub addr_a: String,
    pub addr_b: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Link {
    /// `tag` keeps concurrent beds apart; `net` is the /24's third octet.
    pub fn new(tag: &str, net: u8) -> Self {
        let pid = std::process::id();
        let ns_a = format!("ccbed-{tag}-{pid}-a");
        let ns_b = format!("ccbed-{tag}-{pid}-b");
        let (va, vb) = (format!("ccv{pid}a"), format!("ccv{pid}b"));
        let addr_a = format!("10.231.{net}.1");
        let addr_b = format!("10.231.{net}.2");
        for ns in [&ns_a, &ns_b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&[
            "link", "add", &va, "netns", &ns_a, "type", "veth", "peer", "name", &vb, "netns", &ns_b,
        ]);
        for (ns, dev, addr) in [(&ns_a, &va, &addr_a), (&ns_b, &vb, &addr_b)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        Self {
            ns_a,
            ns_b,
            addr_a,
            addr_b,
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for ns in [&self.ns_a, &self.ns_b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// One booted machine.
#[derive(Debug)]
pub struct Machine {
    pub hostname: String,
    root: PathBuf,
    nspawn: Child,
    leader: i32,
}

/// What a command inside a machine printed, and how it ended.
#[derive(Debug)]
pub struct Ran {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    fn from(out: Output) -> Self {
        Self {
            status: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn ok(&self) -> bool {
        self.status == Some(0)
    }
}

impl Machine {
    /// Unpacks the root file system and boots it on the network namespace
    /// `netns` as `hostname`; returns once systemd says the system is up.
    pub fn boot(rootfs: &Path, hostname: &str, netns: &str, hosts: &[(&str, &str)]) -> Self {
        let root = std::env::temp_dir().join(format!(
            "ccbed-{}-{}",
            hostname.replace('.', "_"),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let out = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-xf")
            .arg(rootfs)
            .output()
            .unwrap();
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&root);
            panic!(
                "unpacking the root file system: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::fs::write(root.join("etc/hostname"), format!("{hostname}\n")).unwrap();
        let mut etc_hosts = format!("127.0.0.1 localhost\n127.0.1.1 {hostname}\n");
        for (addr, name) in hosts {
            etc_hosts.push_str(&format!("{addr} {name}\n"));
        }
        std::fs::write(root.join("etc/hosts"), etc_hosts).unwrap();
        let log = File::create(root.with_extension("console.log")).unwrap();
        let nspawn = Command::new("systemd-nspawn")
            .arg("--quiet")
            .arg("-D")
            .arg(&root)
            .args(["--boot", "--register=no", "--keep-unit"])
            .arg(format!("--machine={}", hostname.replace('.', "-")))
            .arg(format!("--hostname={hostname}"))
            .arg(format!("--network-namespace-path=/run/netns/{netns}"))
            .arg(format!("--system-call-filter={NSPAWN_SYSCALLS}"))
            .args([
                "--console=passive",
                "--resolv-conf=off",
                "--timezone=off",
                "--link-journal=no",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting systemd-nspawn");
        let mut m = Self {
            hostname: hostname.to_owned(),
            root,
            nspawn,
            leader: 0,
        };
        m.leader = m.find_leader();
        // systemctl answers once PID 1's socket exists; then it waits for
        // the boot to finish.
        let r = m.until(
            "test -S /run/systemd/private && systemctl is-system-running --wait",
            Duration::from_secs(60),
        );
        assert!(
            r.stdout.contains("running") || r.stdout.contains("degraded"),
            "{hostname} did not come up: {r:?}\nfailed units: {}",
            m.sh("systemctl --failed --no-pager").stdout
        );
        m
    }

    /// The container's PID 1: the child of systemd-nspawn that is systemd.
    fn find_leader(&mut self) -> i32 {
        let nspawn = self.nspawn.id();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.nspawn.try_wait().unwrap() {
                panic!(
                    "systemd-nspawn for {} ended ({status}): {}",
                    self.hostname,
                    std::fs::read_to_string(self.root.with_extension("console.log"))
                        .unwrap_or_default()
                );
            }
            let children =
                std::fs::read_to_string(format!("/proc/{nspawn}/task/{nspawn}/children"))
                    .unwrap_or_default();
            for pid in children.split_whitespace() {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm.trim() == "systemd" {
                    return pid.parse().unwrap();
                }
            }
            assert!(
                Instant::now() < deadline,
                "no systemd under systemd-nspawn for {}",
                self.hostname
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn enter(&self) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.leader.to_string())
            .args(["-m", "-u", "-i", "-n", "-p", "-C", "--"])
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8")
            .env("USER", "root")
            .env("SYSTEMD_PAGER", "")
            .current_dir("/");
        cmd
    }

    /// Runs a bash script inside, as root, with `-euo pipefail`.
    pub fn sh(&self, script: &str) -> Ran {
        Ran::from(
            self.enter()
                .args(["/bin/bash", "-euo", "pipefail", "-c", script])
                .stdin(Stdio::null())
                .output()
                .expect("running nsenter"),
        )
    }

    /// Like [`Machine::sh`], but the script must succeed: its stdout.
    pub fn ok(&self, script: &str) -> String {
        let r = self.sh(script);
        assert!(
            r.ok(),
            "on {}: `{script}` failed ({:?}):\n{}\n{}",
            self.hostname,
            r.status,
            r.stdout,
            r.stderr
        );
        r.stdout
    }

    /// Writes `bytes` to `path` inside (as root, through a shell inside,
    /// so no path is resolved on the host), with `mode`.
    pub fn write(&self, path: &str, bytes: &[u8], mode: u32) {
        let mut child = self
            .enter()
            .args([
                "/bin/sh",
                "-c",
                &format!("umask 077 && cat > '{path}' && chmod {mode:o} '{path}'"),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "writing {path} on {}: {}",
            self.hostname,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A file's bytes, read inside.
    pub fn read(&self, path: &str) -> Vec<u8> {
        let out = self.enter().args(["/bin/cat", path]).output().unwrap();
        assert!(
            out.status.success(),
            "reading {path} on {}: {}",
            self.hostname,
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Copies a file from the host into the machine.
    pub fn put(&self, from: &Path, to: &str, mode: u32) {
        self.write(to, &std::fs::read(from).unwrap(), mode);
    }

    /// Runs `script` until it succeeds or `timeout` passes: the last run.
    pub fn until(&self, script: &str, timeout: Duration) -> Ran {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.sh(script);
            if r.ok() || Instant::now() >= deadline {
                return r;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The journal of a unit, for a failed assertion's message.
    pub fn journal(&self, unit: &str) -> String {
        self.sh(&format!(
            "journalctl -u {unit} --no-pager -o short-monotonic | tail -n 60"
        ))
        .stdout
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        // nspawn turns SIGTERM into a clean poweroff of the container.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.nspawn.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.nspawn.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
        if std::env::var_os("CC_BED_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.root);
            let _ = std::fs::remove_file(self.root.with_extension("console.log"));
        }
    }
}

/// A fenced shell block of an operator guide that the bed runs: its role
/// (which machine) and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocBlock {
    pub role: Role,
    pub script: String,
    /// Files this block's last lines say to copy to the host
    /// (`# copy to the host: PATH…`).
    pub copy_to_host: Vec<String>,
    pub line: usize,
}

/// Where a guide's block runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `# On the build machine, from the repository root:` — not run by
    /// the bed: the test command builds the package before the suite.
    Build,
    /// `# On the listener's machine, as root:`
    Listener,
    /// `# On the host, as root:` (the agent's machine)
    Host,
    /// `# On the operator's machine:` — in the bed, the listener's machine
    /// (the operator address listens on its loopback).
    Operator,
}

/// The shell blocks of a guide, in order. Every ```` ```sh ```` block must
/// open with a role line; anything else (example output) goes in
/// ```` ```text ```` blocks. An error names the line of a block without one.
pub fn doc_blocks(markdown: &str) -> Result<Vec<DocBlock>, String> {
    let mut blocks = Vec::new();
    let mut lines = markdown.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        let fence = line.trim_start();
        if !fence.starts_with("```") {
            continue;
        }
        let info = fence.trim_start_matches('`').trim();
        let mut body = Vec::new();
        for (_, l) in lines.by_ref() {
            if l.trim_start().starts_with("```") {
                break;
            }
            body.push(l);
        }
        if info != "sh" {
            continue;
        }
        let first = body.first().map(|l| l.trim()).unwrap_or("");
        let role = match first {
            "# On the build machine, from the repository root:" => Role::Build,
            "# On the listener's machine, as root:" => Role::Listener,
            "# On the host, as root:" => Role::Host,
            "# On the operator's machine:" => Role::Operator,
            other => {
                return Err(format!(
                    "line {}: a sh block must open with its role (\"# On the listener's machine, as root:\", \"# On the host, as root:\" or \"# On the operator's machine:\"), not {other:?}",
                    n + 1
                ));
            }
        };
        let copy_to_host = body
            .iter()
            .filter_map(|l| l.trim().strip_prefix("# copy to the host:"))
            .flat_map(|rest| rest.split_whitespace().map(str::to_owned))
            .collect();
        blocks.push(DocBlock {
            role,
            script: body.join("\n") + "\n",
            copy_to_host,
            line: n + 1,
        });
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_need_a_role_and_carry_their_copies() {
        let md = "text\n```sh\n# On the listener's machine, as root:\necho a\n# copy to the host: /root/k /root/ca.pem\n```\n```text\nout\n```\n```sh\n# On the host, as root:\necho b\n```\n";
        let b = doc_blocks(md).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].role, Role::Listener);
        assert_eq!(b[0].copy_to_host, ["/root/k", "/root/ca.pem"]);
        assert_eq!(b[0].line, 2);
        assert_eq!(b[1].role, Role::Host);
        assert!(b[1].copy_to_host.is_empty());
        let err = doc_blocks("```sh\necho no role\n```\n").unwrap_err();
        assert!(err.starts_with("line 1:"), "{err}");
    }
}
