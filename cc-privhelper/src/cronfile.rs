//! The system cron file, `/etc/cron.d/croncommander`, and `cron-run`.
//!
//! Each line is `SCHEDULE root /path/to/cc-privhelper cron-run --config
//! /path/to/helper.toml JOB_ID`: a canonical schedule, a validated id and
//! plain paths. The commands live in a root-owned state file. The file is
//! written atomically: a dot-named temp file (cron ignores names with dots)
//! opened `O_CREAT|O_EXCL|O_NOFOLLOW` with mode 0644, fsync, rename, fsync
//! of the directory; a directory that is a symlink or writable by group or
//! others is refused.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use cc_proto::wire::{CronEntry, CronJob, CronRejection};
use cc_proto::{CommandLine, JobId, Timeout};
use nix::unistd::{Gid, Uid, chown};

use crate::config::{Config, check_root_owned};

const STATE_FILE: &str = "system-cron.json";
pub(crate) const HEADER: &str =
    "# Managed by CronCommander (cc-privhelper). Do not edit: rewritten on every cron_refresh.";

/// Validates, stores the commands, and rewrites the cron file. Returns
/// (installed ids, rejections).
pub(crate) fn write(
    cfg: &Config,
    entries: &[CronEntry],
) -> Result<(Vec<String>, Vec<CronRejection>)> {
    let mut valid: Vec<CronJob> = Vec::new();
    let mut rejected = Vec::new();
    for e in entries {
        match e.validate() {
            Ok(j) if valid.iter().any(|v| v.id == j.id) => rejected.push(CronRejection {
                id: e.id.clone(),
                reason: "duplicate id".into(),
            }),
            Ok(j) => valid.push(j),
            Err(err) => rejected.push(CronRejection {
                id: e.id.chars().take(128).collect(),
                reason: err.to_string(),
            }),
        }
    }
    let me = std::env::current_exe().context("finding cc-privhelper's own path")?;
    let exe = plain(&me)?;
    let config = plain(&cfg.path)?;
    let mut text = format!("{HEADER}\nSHELL=/bin/sh\nPATH=/usr/sbin:/usr/bin:/sbin:/bin\n");
    let mut state = BTreeMap::new();
    for j in &valid {
        text.push_str(&format!(
            "{} root {exe} cron-run --config {config} {}\n",
            j.schedule, j.id
        ));
        let argv: Vec<String> = std::iter::once(j.command.program().to_owned())
            .chain(j.command.args().iter().cloned())
            .collect();
        state.insert(j.id.to_string(), argv);
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&cfg.state_dir)?;
    check_root_owned(&cfg.state_dir, "state_dir")?;
    // Commands first: a run that starts right after the file changes finds them.
    atomic_write(
        &cfg.state_dir.join(STATE_FILE),
        serde_json::to_string(&state)?.as_bytes(),
        0o600,
    )?;
    write_cron_file(&cfg.cron_file, text.as_bytes())?;
    Ok((valid.iter().map(|j| j.id.to_string()).collect(), rejected))
}

fn plain(p: &Path) -> Result<&str> {
    let s = p.to_str().context("path is not UTF-8")?;
    Ok(cc_proto::command::plain_cron_path(s)?)
}

pub(crate) fn write_cron_file(path: &Path, body: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .context("cron_file has no file name")?;
    ensure!(
        !name.contains('.'),
        "cron_file name {name:?} contains a dot: cron would ignore it"
    );
    let dir = path.parent().context("cron_file has no directory")?;
    check_root_owned(dir, "cron directory")?;
    ensure!(
        fs::symlink_metadata(dir)?.is_dir(),
        "{} is not a directory",
        dir.display()
    );
    atomic_write(path, body, 0o644)
}

/// temp file (`O_EXCL|O_NOFOLLOW`), fsync, rename, fsync the directory.
fn atomic_write(path: &Path, body: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().context("no parent directory")?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .context("no file name")?;
    let tmp = dir.join(format!(".{name}.new"));
    // A temp file left by a crash: remove it (unlink does not follow links).
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc_o_nofollow())
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    chown(&tmp, Some(Uid::from_raw(0)), Some(Gid::from_raw(0))).context("chown root:root")?;
    f.write_all(body)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

fn libc_o_nofollow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}

/// The stored command of a system cron entry.
pub(crate) fn load(cfg: &Config, id: &JobId) -> Result<CommandLine> {
    let path = cfg.state_dir.join(STATE_FILE);
    check_root_owned(&path, "cron state file")?;
    let state: BTreeMap<String, Vec<String>> = serde_json::from_str(&fs::read_to_string(&path)?)?;
    let argv = state
        .get(id.as_str())
        .with_context(|| format!("no system cron entry {id}"))?;
    let (program, args) = argv.split_first().context("empty command")?;
    Ok(CommandLine::new(program, args)?)
}

pub(crate) const CRON_TIMEOUT: Timeout = Timeout::DEFAULT;

/// Where the agent collects reports of scheduled system jobs: a directory
/// root owns and the agent's group may read and empty (0770), files 0640.
pub(crate) fn deliver(
    cfg: &Config,
    report: &cc_proto::wire::ExecutionReport,
    agent_gid: u32,
) -> Result<PathBuf> {
    let dir = &cfg.report_dir;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o770)
        .create(dir)?;
    chown(dir, Some(Uid::from_raw(0)), Some(Gid::from_raw(agent_gid)))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o770))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let id = report.report_id.clone().unwrap_or_default();
    let path = dir.join(format!("{nanos:020}-{id}.json"));
    let tmp = dir.join(format!(".{nanos:020}-{id}.tmp"));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .custom_flags(libc_o_nofollow())
        .open(&tmp)?;
    chown(&tmp, Some(Uid::from_raw(0)), Some(Gid::from_raw(agent_gid)))?;
    f.write_all(&serde_json::to_vec(report)?)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, &path)?;
    File::open(dir)?.sync_all()?;
    Ok(path)
}
