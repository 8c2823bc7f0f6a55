//! The helper's own configuration, the only thing it trusts. Refused unless
//! it and every directory above it are owned by root and not writable by
//! group or others.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result, bail, ensure};
use cc_proto::sign::PublicKey;
use serde::Deserialize;

pub(crate) const DEFAULT_CONFIG: &str = "/etc/croncommander/helper.toml";

/// Capabilities a root job keeps unless the config says otherwise: it may
/// read and write files whatever their mode, signal its own processes,
/// change its uid or gid (to drop privileges), bind low ports and write the
/// audit log. Nothing that changes an owner or a mode (CHOWN, FOWNER,
/// FSETID), nothing that administers the system. Not DAC_READ_SEARCH: it
/// opens files by handle (`open_by_handle_at`) and links descriptors
/// (`linkat(AT_EMPTY_PATH)`), which reach any file through a write path's
/// mount, past the read-only tree and landlock; DAC_OVERRIDE already reads
/// and searches whatever a job may read.
const DEFAULT_KEEP: &str = "CAP_DAC_OVERRIDE CAP_KILL CAP_SETGID CAP_SETUID \
                            CAP_NET_BIND_SERVICE CAP_AUDIT_WRITE";

/// Never kept, whatever the config says: each would let a job undo its
/// containment (mounts, namespaces, ptrace, devices, capabilities, MAC,
/// modules, raw I/O, BPF, files by handle) or change what a file is (owner,
/// mode, flags).
const NEVER_KEEP: &str = "CAP_SYS_ADMIN CAP_SYS_MODULE CAP_SYS_RAWIO CAP_SYS_BOOT CAP_SYS_PTRACE \
    CAP_SYS_CHROOT CAP_MKNOD CAP_SETPCAP CAP_SETFCAP CAP_MAC_ADMIN CAP_MAC_OVERRIDE CAP_BPF \
    CAP_PERFMON CAP_LINUX_IMMUTABLE CAP_CHOWN CAP_FOWNER CAP_FSETID CAP_DAC_READ_SEARCH";

/// Trees a job may never write, nor any directory that holds one: the
/// system's programs and libraries, what starts services and grants
/// privileges, and the helper's own files (added at load).
const PROTECTED_TREES: &str = "/usr /boot /bin /sbin /lib /lib64 /etc/systemd /lib/systemd \
    /etc/sudoers /etc/sudoers.d /etc/cron.d /etc/crontab /etc/pam.d /etc/security /etc/ssh \
    /etc/polkit-1 /etc/ld.so.preload /etc/ld.so.conf.d /etc/passwd /etc/shadow /etc/group \
    /etc/gshadow /etc/croncommander /var/spool/cron /proc /sys /dev /run";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    socket: Option<PathBuf>,
    agent_user: Option<String>,
    #[serde(default)]
    system_mode: bool,
    cron_file: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    allowed_commands: Option<Vec<AllowedFile>>,
    /// `ed25519:BASE64 name` lines.
    #[serde(default)]
    trusted_keys: Vec<String>,
    hostname: Option<String>,
    #[serde(default)]
    sandbox: SandboxFile,
    #[serde(default)]
    rlimits: Rlimits,
}

/// An `allowed_commands` entry: a path, or a path with argument patterns.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum AllowedFile {
    Path(PathBuf),
    WithArgs { path: PathBuf, args: Vec<String> },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SandboxFile {
    keep_capabilities: Option<Vec<String>>,
    #[serde(default)]
    write_paths: Vec<PathBuf>,
    landlock: Option<Enforce>,
    limits: Option<Enforce>,
    max_processes: Option<u64>,
    max_memory_mib: Option<u64>,
    #[serde(default)]
    tcp_bind_ports: Vec<u16>,
    tcp_connect_ports: Option<Vec<u16>>,
}

/// What happens when the kernel cannot enforce part of the containment:
/// `required` runs nothing; `best_effort` runs and says in the report what
/// was not enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Enforce {
    Required,
    BestEffort,
}

impl Enforce {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Enforce::Required => "required",
            Enforce::BestEffort => "best_effort",
        }
    }
}

/// Resource limits set on every job (soft = hard). The process count and
/// memory are cgroup limits ([`Sandbox`]): `RLIMIT_NPROC` binds no root
/// process.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Rlimits {
    pub(crate) nofile: u64,
    /// Core dump size: 0, so a root job leaves no memory image behind.
    pub(crate) core: u64,
}

impl Default for Rlimits {
    fn default() -> Self {
        Self { nofile: 1024, core: 0 }
    }
}

/// One allowed program: an exact absolute path and, optionally, one
/// pattern per argument (`*` any run of characters, `?` one; the count
/// must match).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Allowed {
    pub(crate) path: PathBuf,
    pub(crate) args: Option<Vec<String>>,
}

/// The containment every root job starts in: derived from the config only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sandbox {
    pub(crate) keep_capabilities: Vec<String>,
    /// Canonical directories (checked at load).
    pub(crate) write_paths: Vec<PathBuf>,
    pub(crate) landlock: Enforce,
    pub(crate) limits: Enforce,
    pub(crate) max_processes: u64,
    pub(crate) max_memory_bytes: u64,
    pub(crate) tcp_bind_ports: Vec<u16>,
    /// `None`: any port.
    pub(crate) tcp_connect_ports: Option<Vec<u16>>,
    pub(crate) rlimits: Rlimits,
}

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) socket: PathBuf,
    pub(crate) agent_user: String,
    pub(crate) system_mode: bool,
    pub(crate) cron_file: PathBuf,
    pub(crate) state_dir: PathBuf,
    pub(crate) allowed_commands: Option<Vec<Allowed>>,
    /// Keys whose signature makes root work: an operator's, or a
    /// listener's that signs on the API's behalf.
    pub(crate) trusted_keys: Vec<PublicKey>,
    /// This host's identity: a statement for another host is refused.
    pub(crate) hostname: String,
    pub(crate) sandbox: Sandbox,
    pub(crate) path: PathBuf,
}

/// Refuses a file or directory that root does not own or that group or
/// others may write.
pub(crate) fn check_root_owned(path: &Path, what: &str) -> Result<()> {
    check_owner(path, what, false)
}

/// The same, a sticky directory (`/tmp`) allowed to be writable when
/// `sticky_ok`: nobody else can rename or remove what root put in it.
fn check_owner(path: &Path, what: &str, sticky_ok: bool) -> Result<()> {
    let meta =
        std::fs::symlink_metadata(path).with_context(|| format!("{what} {}", path.display()))?;
    ensure!(!meta.file_type().is_symlink(), "{what} {} is a symlink", path.display());
    ensure!(meta.uid() == 0, "{what} {} is not owned by root (uid {})", path.display(), meta.uid());
    ensure!(
        meta.mode() & 0o022 == 0 || (sticky_ok && meta.mode() & 0o1000 != 0),
        "{what} {} is writable by group or others (mode {:04o})",
        path.display(),
        meta.mode() & 0o7777
    );
    Ok(())
}

/// [`check_root_owned`] for `path`, and every directory above it owned by
/// root and not a symlink, writable by others only if sticky: nobody but
/// root can replace what the path names.
pub(crate) fn check_root_owned_chain(path: &Path, what: &str) -> Result<()> {
    ensure!(path.is_absolute(), "{what} {} is not absolute", path.display());
    check_root_owned(path, what)?;
    let above = format!("directory above the {what}:");
    path.ancestors().skip(1).try_for_each(|dir| check_owner(dir, &above, true))
}

/// An absolute path with no `.`, `..` or empty parts, as written (std's
/// `components` would quietly drop a `.`).
fn plain_absolute(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let bytes = p.as_os_str().as_bytes();
    bytes.first() == Some(&b'/')
        && (bytes == b"/"
            || bytes[1..].split(|&b| b == b'/').all(|c| !matches!(c, b"" | b"." | b"..")))
}

impl Config {
    pub(crate) fn load(path: &Path) -> Result<Self> {
        let path = &std::path::absolute(path)
            .with_context(|| format!("config file {}", path.display()))?;
        check_root_owned_chain(path, "config file")?;
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let f: File =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let keep = f
            .sandbox
            .keep_capabilities
            .unwrap_or_else(|| DEFAULT_KEEP.split_whitespace().map(str::to_owned).collect());
        for name in &keep {
            caps::Capability::from_str(name)
                .map_err(|_| anyhow::anyhow!("keep_capabilities: unknown capability {name:?}"))?;
            ensure!(
                !NEVER_KEEP.split_whitespace().any(|n| n == name),
                "keep_capabilities: {name} may never be kept"
            );
        }
        let trusted_keys = f
            .trusted_keys
            .iter()
            .map(|l| PublicKey::parse(l).map_err(|e| anyhow::anyhow!("trusted_keys: {e}")))
            .collect::<Result<Vec<_>>>()?;
        ensure!(
            !f.system_mode || !trusted_keys.is_empty(),
            "system_mode = true needs at least one key in trusted_keys: unsigned root work does not exist"
        );
        let hostname = match f.hostname {
            Some(h) => h,
            None => nix::unistd::gethostname()?
                .into_string()
                .map_err(|_| anyhow::anyhow!("the system hostname is not UTF-8"))?,
        };
        let allowed_commands = f
            .allowed_commands
            .map(|list| list.into_iter().map(Allowed::check).collect::<Result<Vec<_>>>())
            .transpose()?;
        let cfg = Self {
            socket: f.socket.unwrap_or_else(|| "/run/croncommander/helper.sock".into()),
            agent_user: f.agent_user.unwrap_or_else(|| "cc-agent-user".into()),
            system_mode: f.system_mode,
            cron_file: f.cron_file.unwrap_or_else(|| "/etc/cron.d/croncommander".into()),
            state_dir: f.state_dir.unwrap_or_else(|| "/var/lib/croncommander-helper".into()),
            allowed_commands,
            trusted_keys,
            hostname: cc_proto::Hostname::parse(&hostname).context("hostname")?.to_string(),
            sandbox: Sandbox {
                keep_capabilities: keep,
                write_paths: f.sandbox.write_paths,
                landlock: f.sandbox.landlock.unwrap_or(Enforce::Required),
                limits: f.sandbox.limits.unwrap_or(Enforce::Required),
                max_processes: f.sandbox.max_processes.unwrap_or(512),
                max_memory_bytes: f
                    .sandbox
                    .max_memory_mib
                    .unwrap_or(1024)
                    .checked_mul(1024 * 1024)
                    .context("max_memory_mib is too large")?,
                tcp_bind_ports: f.sandbox.tcp_bind_ports,
                tcp_connect_ports: f.sandbox.tcp_connect_ports,
                rlimits: f.rlimits,
            },
            path: path.to_owned(),
        };
        ensure!(cfg.sandbox.max_processes >= 1, "max_processes must be at least 1");
        ensure!(
            cfg.sandbox.max_memory_bytes >= 16 * 1024 * 1024,
            "max_memory_mib must be at least 16"
        );
        let mut cfg = cfg;
        cfg.sandbox.write_paths = cfg.check_write_paths()?;
        cfg.check_socket_dir()?;
        Ok(cfg)
    }

    /// The socket's directory is made, chowned and chmodded by path at
    /// start: every directory above it must be root's and closed to others
    /// (sticky allowed), and the directory itself, if it is there, root's.
    fn check_socket_dir(&self) -> Result<()> {
        ensure!(
            plain_absolute(&self.socket),
            "socket {} is not a plain absolute path",
            self.socket.display()
        );
        let dir = self.socket.parent().context("the socket has no directory")?;
        if std::fs::symlink_metadata(dir).is_ok() {
            check_owner(dir, "socket: its directory", false)?;
        }
        let above = format!("socket: a directory above {}:", dir.display());
        dir.ancestors().skip(1).try_for_each(|d| check_owner(d, &above, true))
    }

    /// Every write path is a plain absolute path to an existing directory,
    /// named without symlinks (so what is checked is what landlock and the
    /// mounts will use), and none lies inside or holds a protected tree or
    /// one of the helper's own files.
    fn check_write_paths(&self) -> Result<Vec<PathBuf>> {
        let exe = std::env::current_exe().context("finding cc-privhelper's own path")?;
        let cron_dir = self.cron_file.parent().unwrap_or(Path::new("/"));
        let config_dir = self.path.parent().unwrap_or(Path::new("/"));
        let own = [
            self.path.as_path(),
            config_dir,
            self.state_dir.as_path(),
            self.cron_file.as_path(),
            cron_dir,
            exe.as_path(),
            self.socket.as_path(),
        ];
        let mut out = Vec::new();
        for w in &self.sandbox.write_paths {
            ensure!(
                plain_absolute(w),
                "write_paths: {} is not a plain absolute path (no `.`, `..` or relative parts)",
                w.display()
            );
            let real = std::fs::canonicalize(w)
                .with_context(|| format!("write_paths: {}", w.display()))?;
            ensure!(
                &real == w,
                "write_paths: {} is reached through a symlink ({}); name the real directory",
                w.display(),
                real.display()
            );
            ensure!(real.is_dir(), "write_paths: {} is not a directory", w.display());
            // Nobody but root may replace it between this check and the
            // job's bind mount.
            let above = format!("write_paths: a directory above {}:", w.display());
            real.ancestors().skip(1).try_for_each(|d| check_owner(d, &above, true))?;
            // Compared as written and as the kernel resolves them (`/bin`
            // is `/usr/bin` on a merged-/usr system).
            let protected: Vec<PathBuf> = PROTECTED_TREES
                .split_whitespace()
                .map(Path::new)
                .chain(own)
                .flat_map(|p| {
                    [p.to_owned(), std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned())]
                })
                .collect();
            for p in &protected {
                if p.starts_with(&real) || real.starts_with(p) {
                    bail!(
                        "write_paths: {} overlaps {}, which jobs must never write",
                        w.display(),
                        p.display()
                    );
                }
            }
            out.push(real);
        }
        Ok(out)
    }
}

impl Allowed {
    fn check(f: AllowedFile) -> Result<Self> {
        let (path, args) = match f {
            AllowedFile::Path(p) => (p, None),
            AllowedFile::WithArgs { path, args } => (path, Some(args)),
        };
        ensure!(
            plain_absolute(&path),
            "allowed_commands: {} is not a plain absolute path",
            path.display()
        );
        Ok(Self { path, args })
    }

    /// Whether `argv` (without the program) fits the patterns.
    pub(crate) fn args_match(&self, argv: &[String]) -> bool {
        match &self.args {
            None => true,
            Some(patterns) => {
                patterns.len() == argv.len()
                    && patterns.iter().zip(argv).all(|(p, a)| glob(p.as_bytes(), a.as_bytes()))
            }
        }
    }
}

/// `*` matches any run of bytes, `?` one byte; everything else itself.
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == s[si] => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The socket's directory chain: root's all the way, a sticky
    /// directory allowed; a directory another user owns, or one others may
    /// write, anywhere above it is refused.
    #[test]
    fn the_sockets_directories_must_be_roots() {
        use std::os::unix::fs::PermissionsExt;
        let d = std::env::temp_dir().join(format!("cc-sockdir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("theirs/run")).unwrap();
        std::fs::create_dir_all(d.join("open/run")).unwrap();
        std::fs::create_dir_all(d.join("ours/run")).unwrap();
        let mut c = cfg(&[]);
        c.socket = d.join("ours/run/helper.sock");
        c.check_socket_dir().unwrap();
        c.socket = d.join("ours/missing/helper.sock");
        c.check_socket_dir().unwrap();
        let nobody = Some(nix::unistd::Uid::from_raw(65534));
        if nix::unistd::geteuid().is_root() {
            nix::unistd::chown(&d.join("theirs"), nobody, None).unwrap();
            c.socket = d.join("theirs/run/helper.sock");
            let e = c.check_socket_dir().unwrap_err().to_string();
            assert!(e.contains("not owned by root"), "{e}");
            nix::unistd::chown(&d.join("ours/run"), nobody, None).unwrap();
            c.socket = d.join("ours/run/helper.sock");
            assert!(c.check_socket_dir().is_err(), "the directory itself is another user's");
        }
        std::fs::set_permissions(d.join("open"), std::fs::Permissions::from_mode(0o777)).unwrap();
        c.socket = d.join("open/run/helper.sock");
        assert!(c.check_socket_dir().is_err(), "a directory above is writable by all");
        c.socket = "relative/helper.sock".into();
        assert!(c.check_socket_dir().is_err());
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A config for unit tests (paths need not exist).
    pub(crate) fn cfg(write: &[&str]) -> Config {
        Config {
            socket: "/run/s".into(),
            agent_user: "u".into(),
            system_mode: true,
            cron_file: "/etc/cron.d/croncommander".into(),
            state_dir: "/var/lib/cch".into(),
            allowed_commands: None,
            trusted_keys: vec![],
            hostname: "h".into(),
            sandbox: Sandbox {
                keep_capabilities: vec![],
                write_paths: write.iter().map(PathBuf::from).collect(),
                landlock: Enforce::Required,
                limits: Enforce::Required,
                max_processes: 512,
                max_memory_bytes: 1 << 30,
                tcp_bind_ports: vec![],
                tcp_connect_ports: None,
                rlimits: Rlimits::default(),
            },
            path: "/etc/croncommander/helper.toml".into(),
        }
    }

    #[test]
    fn write_paths_may_not_overlap_protected_trees_or_the_helpers_own_files() {
        // A directory of its own, not the temp directory itself: a checkout
        // (and so this test's own binary, a protected file) may live there.
        let ok = std::env::temp_dir().join(format!("cc-write-path-{}", std::process::id()));
        std::fs::create_dir_all(&ok).unwrap();
        let ok = std::fs::canonicalize(ok).unwrap();
        let allowed = cfg(&[ok.to_str().unwrap()]).check_write_paths();
        let _ = std::fs::remove_dir(&ok);
        assert!(allowed.is_ok(), "{allowed:?}");
        for bad in [
            "/",
            "/etc",
            "/etc/cron.d",
            "/var/lib",
            "/etc/croncommander",
            "/usr/local",
            "/etc/systemd/system",
        ] {
            let Err(e) = cfg(&[bad]).check_write_paths() else {
                panic!("{bad} accepted");
            };
            let e = e.to_string();
            assert!(e.contains("must never write") || e.contains("write_paths"), "{bad}: {e}");
        }
        for bad in ["relative", "/tmp/../etc", "/tmp/./x", "/tmp//x", "/tmp/"] {
            let e = cfg(&[bad]).check_write_paths().unwrap_err().to_string();
            assert!(e.contains("plain absolute"), "{bad}: {e}");
        }
    }

    #[test]
    fn argument_patterns_match_whole_arguments_one_for_one() {
        let a = Allowed {
            path: "/usr/bin/systemctl".into(),
            args: Some(vec!["restart".into(), "nginx*.service".into()]),
        };
        let v = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert!(a.args_match(&v(&["restart", "nginx.service"])));
        assert!(a.args_match(&v(&["restart", "nginx-2.service"])));
        assert!(!a.args_match(&v(&["start", "nginx.service"])));
        assert!(!a.args_match(&v(&["restart", "nginx.service", "x"])));
        assert!(!a.args_match(&v(&["restart"])));
        assert!(!a.args_match(&v(&["restart", "nginx.service.bak"])));
        assert!(glob(b"a?c", b"abc") && !glob(b"a?c", b"ac"));
        assert!(glob(b"*", b"") && glob(b"**x", b"yx") && !glob(b"x*", b"yx"));
        let any = Allowed { path: "/bin/true".into(), args: None };
        assert!(any.args_match(&v(&["anything", "at all"])));
    }

    #[test]
    fn ownership_checks_refuse_what_others_may_change() {
        assert_eq!(
            (Enforce::Required.name(), Enforce::BestEffort.name()),
            ("required", "best_effort")
        );
        // Root's, closed to others: accepted, with every directory above.
        check_root_owned(Path::new("/etc/passwd"), "file").unwrap();
        check_root_owned_chain(Path::new("/etc/passwd"), "file").unwrap();
        // /tmp is writable by all: refused as a file's home, accepted
        // above one because it is sticky.
        assert!(check_root_owned(Path::new("/tmp"), "dir").is_err());
        check_owner(Path::new("/tmp"), "dir", true).unwrap();
        // World-writable, and below a directory others may write.
        let d = std::env::temp_dir().join(format!("cc-owner-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("helper.toml");
        std::fs::write(&f, "").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = check_root_owned(&f, "config file").unwrap_err().to_string();
        assert!(
            e.contains("writable by group or others") || e.contains("not owned by root"),
            "{e}"
        );
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(check_root_owned_chain(&f, "config file").is_err());
        assert!(check_root_owned_chain(Path::new("etc/passwd"), "file").is_err());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_memory_limit_is_read_in_mebibytes() {
        if !nix::unistd::Uid::effective().is_root() {
            // Config::load needs a root-owned file; CI runs as root.
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "CI runs this as root");
            return;
        }
        let d = std::env::temp_dir().join(format!("cc-load-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        let f = d.join("helper.toml");
        for (text, bytes) in [("", 1024u64 << 20), ("[sandbox]\nmax_memory_mib = 64\n", 64 << 20)] {
            std::fs::write(&f, text).unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert_eq!(Config::load(&f).unwrap().sandbox.max_memory_bytes, bytes);
        }
        std::fs::write(&f, "[sandbox]\nmax_memory_mib = 15\n").unwrap();
        assert!(Config::load(&f).is_err(), "below 16 MiB");
        let _ = std::fs::remove_dir_all(&d);
    }
}
