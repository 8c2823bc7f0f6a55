//! The helper's own configuration, the only thing it trusts. Refused unless
//! owned by root and not writable by group or others.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;

pub(crate) const DEFAULT_CONFIG: &str = "/etc/croncommander/helper.toml";

/// Capabilities a scheduled root job keeps unless the config says
/// otherwise. Everything else — module loading, raw I/O, reboot, MAC
/// admin/override, sys_admin, ptrace, bpf, time, net admin/raw, audit
/// control, setfcap/setpcap, immutable files, mknod — is dropped.
const DEFAULT_KEEP: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_NET_BIND_SERVICE",
    "CAP_AUDIT_WRITE",
];

/// Never kept, whatever the config says.
const NEVER_KEEP: &[&str] = &[
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_BOOT",
    "CAP_MAC_ADMIN",
    "CAP_MAC_OVERRIDE",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    socket: Option<PathBuf>,
    agent_user: Option<String>,
    #[serde(default)]
    system_mode: bool,
    cron_file: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    report_dir: Option<PathBuf>,
    allowed_commands: Option<Vec<PathBuf>>,
    #[serde(default)]
    sandbox: SandboxFile,
    #[serde(default)]
    rlimits: Rlimits,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SandboxFile {
    keep_capabilities: Option<Vec<String>>,
    #[serde(default)]
    write_paths: Vec<PathBuf>,
    landlock: Option<LandlockMode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum LandlockMode {
    Required,
    BestEffort,
}

/// Resource limits set on every job (soft = hard).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Rlimits {
    pub(crate) nofile: u64,
    pub(crate) nproc: u64,
    /// Core dump size: 0, so a root job leaves no memory image behind.
    pub(crate) core: u64,
}

impl Default for Rlimits {
    fn default() -> Self {
        Self {
            nofile: 1024,
            nproc: 4096,
            core: 0,
        }
    }
}

/// The sandbox every job starts in: derived from the config only.
#[derive(Debug, Clone, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Sandbox {
    pub(crate) keep_capabilities: Vec<String>,
    pub(crate) write_paths: Vec<PathBuf>,
    pub(crate) landlock: LandlockMode,
    pub(crate) rlimits: Rlimits,
}

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) socket: PathBuf,
    pub(crate) agent_user: String,
    pub(crate) system_mode: bool,
    pub(crate) cron_file: PathBuf,
    pub(crate) state_dir: PathBuf,
    pub(crate) report_dir: PathBuf,
    pub(crate) allowed_commands: Option<Vec<PathBuf>>,
    pub(crate) sandbox: Sandbox,
    pub(crate) path: PathBuf,
}

/// Refuses a file or directory that root does not own or that group or
/// others may write.
pub(crate) fn check_root_owned(path: &Path, what: &str) -> Result<()> {
    let meta =
        std::fs::symlink_metadata(path).with_context(|| format!("{what} {}", path.display()))?;
    ensure!(
        !meta.file_type().is_symlink(),
        "{what} {} is a symlink",
        path.display()
    );
    ensure!(
        meta.uid() == 0,
        "{what} {} is not owned by root (uid {})",
        path.display(),
        meta.uid()
    );
    ensure!(
        meta.mode() & 0o022 == 0,
        "{what} {} is writable by group or others (mode {:04o})",
        path.display(),
        meta.mode() & 0o7777
    );
    Ok(())
}

impl Config {
    pub(crate) fn load(path: &Path) -> Result<Self> {
        check_root_owned(path, "config file")?;
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let f: File =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let keep = f
            .sandbox
            .keep_capabilities
            .unwrap_or_else(|| DEFAULT_KEEP.iter().map(|s| (*s).to_owned()).collect());
        for name in &keep {
            caps::Capability::from_str(name)
                .map_err(|_| anyhow::anyhow!("keep_capabilities: unknown capability {name:?}"))?;
            ensure!(
                !NEVER_KEEP.contains(&name.as_str()),
                "keep_capabilities: {name} may never be kept"
            );
        }
        let cfg = Self {
            socket: f
                .socket
                .unwrap_or_else(|| "/run/croncommander/helper.sock".into()),
            agent_user: f.agent_user.unwrap_or_else(|| "cc-agent-user".into()),
            system_mode: f.system_mode,
            cron_file: f
                .cron_file
                .unwrap_or_else(|| "/etc/cron.d/croncommander".into()),
            state_dir: f
                .state_dir
                .unwrap_or_else(|| "/var/lib/croncommander-helper".into()),
            report_dir: f
                .report_dir
                .unwrap_or_else(|| "/var/spool/croncommander".into()),
            allowed_commands: f.allowed_commands,
            sandbox: Sandbox {
                keep_capabilities: keep,
                write_paths: f.sandbox.write_paths,
                landlock: f.sandbox.landlock.unwrap_or(LandlockMode::Required),
                rlimits: f.rlimits,
            },
            path: path.to_owned(),
        };
        cfg.check_write_paths()?;
        Ok(cfg)
    }

    /// A job may never write the helper's config, state or cron file: no
    /// write path may be one of them or contain one.
    fn check_write_paths(&self) -> Result<()> {
        let cron_dir = self.cron_file.parent().unwrap_or(Path::new("/"));
        let protected = [
            self.path.as_path(),
            self.state_dir.as_path(),
            self.cron_file.as_path(),
            cron_dir,
        ];
        for w in &self.sandbox.write_paths {
            ensure!(
                w.is_absolute(),
                "write_paths: {} is not absolute",
                w.display()
            );
            for p in protected {
                if p.starts_with(w) {
                    bail!(
                        "write_paths: {} contains {}, which jobs must never write",
                        w.display(),
                        p.display()
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(write: &[&str]) -> Config {
        Config {
            socket: "/run/s".into(),
            agent_user: "u".into(),
            system_mode: true,
            cron_file: "/etc/cron.d/croncommander".into(),
            state_dir: "/var/lib/cch".into(),
            report_dir: "/var/spool/cc".into(),
            allowed_commands: None,
            sandbox: Sandbox {
                keep_capabilities: vec![],
                write_paths: write.iter().map(PathBuf::from).collect(),
                landlock: LandlockMode::Required,
                rlimits: Rlimits::default(),
            },
            path: "/etc/croncommander/helper.toml".into(),
        }
    }

    #[test]
    fn write_paths_may_not_cover_the_helpers_own_files() {
        assert!(cfg(&["/tmp", "/var/backups"]).check_write_paths().is_ok());
        for bad in ["/", "/etc", "/etc/cron.d", "/var/lib", "/etc/croncommander"] {
            let e = cfg(&[bad]).check_write_paths().unwrap_err().to_string();
            assert!(e.contains("jobs must never write"), "{bad}: {e}");
        }
        assert!(cfg(&["relative"]).check_write_paths().is_err());
    }
}
