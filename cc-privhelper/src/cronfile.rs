//! The system cron file, `/etc/cron.d/croncommander`, and the state file
//! that holds the commands its lines name.
//!
//! Each line is `SCHEDULE root /path/to/cc-privhelper cron-run --config
//! /path/to/helper.toml JOB_ID`: a canonical schedule, a validated id and
//! plain paths. `cron-run` only asks the running helper to run that id; the
//! command comes from the signed statement kept in the root-owned state
//! file, verified again at every run (an edited state file, or a key since
//! removed, runs nothing). Both files are written
//! atomically (a dot-named temp file opened `O_CREAT|O_EXCL|O_NOFOLLOW`,
//! owner set on the descriptor, fsync, rename, fsync of the directory) in a
//! directory that must be root's and closed to others, and one write at a
//! time, so the two never disagree. With system mode off the helper removes
//! both when it starts.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result, ensure};
use cc_proto::wire::{CronEntry, CronJob, CronRejection};
use cc_proto::{JobId, sign::Signed};
use tracing::info;

use crate::config::{Config, check_root_owned};

const STATE_FILE: &str = "system-cron.json";
pub(crate) const HEADER: &str =
    "# Managed by CronCommander (cc-privhelper). Do not edit: rewritten on every cron_refresh.";

/// One `write`/`remove_all` at a time: the state file and the cron file
/// change together.
static WRITING: Mutex<()> = Mutex::new(());

/// The state file: the installed list's signed statement and generation.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct State {
    pub(crate) generation: u64,
    pub(crate) signed: Signed,
}

/// The installed list's state, if any (unreadable is none).
pub(crate) fn installed(cfg: &Config) -> Option<State> {
    let path = cfg.state_dir.join(STATE_FILE);
    check_root_owned(&path, "cron state file").ok()?;
    serde_json::from_str(&fs::read_to_string(path).ok()?).ok()
}

/// Validates `entries` (the statement's), stores the statement, and
/// rewrites the cron file. Returns (installed ids, rejections).
pub(crate) fn write(
    cfg: &Config,
    entries: &[CronEntry],
    state: &State,
) -> Result<(Vec<String>, Vec<CronRejection>)> {
    let (valid, rejected) = validate(entries);
    let me = std::env::current_exe().context("finding cc-privhelper's own path")?;
    let exe = plain(&me)?;
    let config = plain(&cfg.path)?;
    let mut text = format!("{HEADER}\nSHELL=/bin/sh\nPATH=/usr/sbin:/usr/bin:/sbin:/bin\n");
    for j in &valid {
        text.push_str(&format!("{} root {exe} cron-run --config {config} {}\n", j.schedule, j.id));
    }
    let _one = WRITING.lock().unwrap_or_else(|e| e.into_inner());
    fs::DirBuilder::new().recursive(true).mode(0o700).create(&cfg.state_dir)?;
    check_root_owned(&cfg.state_dir, "state_dir")?;
    // The statement first: a run that starts right after the file changes
    // finds it.
    atomic_write(&cfg.state_dir.join(STATE_FILE), serde_json::to_string(state)?.as_bytes(), 0o600)?;
    write_cron_file(&cfg.cron_file, text.as_bytes())?;
    for j in &valid {
        info!(id = %j.id, schedule = %j.schedule, command = ?j.command.to_shell_line(), generation = state.generation, "cron entry written");
    }
    Ok((valid.iter().map(|j| j.id.to_string()).collect(), rejected))
}

/// Valid entries (first of each id) and why the others are not.
pub(crate) fn validate(entries: &[CronEntry]) -> (Vec<CronJob>, Vec<CronRejection>) {
    let mut valid: Vec<CronJob> = Vec::new();
    let mut rejected = Vec::new();
    for e in entries {
        match e.validate() {
            Ok(j) if valid.iter().any(|v| v.id == j.id) => {
                rejected.push(CronRejection { id: j.id.to_string(), reason: "duplicate id".into() })
            }
            Ok(j) if !j.command.program().starts_with('/') => rejected.push(CronRejection {
                id: j.id.to_string(),
                reason: crate::exec::ABSOLUTE_ONLY.into(),
            }),
            Ok(j) => valid.push(j),
            Err(err) => rejected.push(CronRejection {
                id: e.id.chars().take(128).collect(),
                reason: err.to_string(),
            }),
        }
    }
    (valid, rejected)
}

/// System mode is off: no root cron line may remain from when it was on.
/// Removes the cron file (only if it is ours) and the state file.
pub(crate) fn remove_all(cfg: &Config) -> Result<()> {
    let _one = WRITING.lock().unwrap_or_else(|e| e.into_inner());
    if let Ok(text) = fs::read_to_string(&cfg.cron_file) {
        ensure!(
            text.starts_with(HEADER),
            "{} is not CronCommander's: left alone",
            cfg.cron_file.display()
        );
        fs::remove_file(&cfg.cron_file)
            .with_context(|| format!("removing {}", cfg.cron_file.display()))?;
        info!(file = %cfg.cron_file.display(), "system mode is off: system cron file removed");
    }
    match fs::remove_file(cfg.state_dir.join(STATE_FILE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

fn plain(p: &Path) -> Result<&str> {
    let s = p.to_str().context("path is not UTF-8")?;
    Ok(cc_proto::command::plain_cron_path(s)?)
}

fn write_cron_file(path: &Path, body: &[u8]) -> Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).context("cron_file has no file name")?;
    ensure!(!name.contains('.'), "cron_file name {name:?} contains a dot: cron would ignore it");
    atomic_write(path, body, 0o644)
}

/// Temp file (`O_EXCL|O_NOFOLLOW`) in a root-owned directory closed to
/// others, owner and mode set on the descriptor, fsync, rename, fsync of
/// the directory. Callers serialise writes to one path.
pub(crate) fn atomic_write(path: &Path, body: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().context("no parent directory")?;
    check_root_owned(dir, "directory")?;
    let name = path.file_name().and_then(|n| n.to_str()).context("no file name")?;
    let tmp = dir.join(format!(".{name}.new"));
    // A temp file left by a crash: remove it (unlink does not follow links).
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    nix::unistd::fchown(
        &f,
        Some(nix::unistd::Uid::from_raw(0)),
        Some(nix::unistd::Gid::from_raw(0)),
    )
    .context("chown root:root")?;
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.write_all(body)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Installed entry `id` (command, timeout, jitter), from the stored
/// statement checked again now (trusted key, this host, bounds of
/// `CronEntry::validate`); or why it may not run.
pub(crate) fn load(
    cfg: &Config,
    trust: &crate::trust::Trust,
    id: &JobId,
) -> Result<CronJob, String> {
    let state = installed(cfg).ok_or("no readable, root-owned cron state file")?;
    let (statement, _) = trust
        .installed(&state.signed)
        .map_err(|e| format!("the installed cron list does not verify: {e}"))?;
    if statement.generation != state.generation {
        return Err("the state file's generation is not its statement's".into());
    }
    let (valid, _) = validate(&statement.entries);
    valid
        .into_iter()
        .find(|j| &j.id == id)
        .ok_or_else(|| format!("no signed system cron entry {id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(name: &str) -> (Config, std::path::PathBuf) {
        let d = std::env::temp_dir().join(format!("cc-cronfile-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(d.join("state")).unwrap();
        let mut cfg = crate::config::tests::cfg(&[]);
        cfg.cron_file = d.join("croncommander");
        cfg.state_dir = d.join("state");
        (cfg, d)
    }

    /// Root entries name their program by absolute path; a bare name is a
    /// rejected entry, the rest of the list stands.
    #[test]
    fn a_bare_program_name_is_a_rejected_entry() {
        let e = |id: &str, command: &str| CronEntry {
            id: id.into(),
            schedule: "@daily".into(),
            command: command.into(),
            ..Default::default()
        };
        let (valid, rejected) = validate(&[e("path", "/usr/bin/id -u"), e("bare", "id -u")]);
        assert_eq!(valid.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), ["path"]);
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].id, "bare");
        assert!(rejected[0].reason.contains("absolute path"), "{:?}", rejected[0]);
    }

    /// With system mode off, our cron file and the state go; a file that
    /// is not ours stays, and says so; nothing there is no error.
    #[test]
    fn remove_all_removes_only_what_is_ours() {
        let (cfg, d) = cfg("remove");
        let state = cfg.state_dir.join(STATE_FILE);
        remove_all(&cfg).unwrap();
        fs::write(&cfg.cron_file, format!("{HEADER}\n* * * * * root x\n")).unwrap();
        fs::write(&state, "{}").unwrap();
        remove_all(&cfg).unwrap();
        assert!(!cfg.cron_file.exists() && !state.exists());
        fs::write(&cfg.cron_file, "* * * * * root someone-elses\n").unwrap();
        let e = remove_all(&cfg).unwrap_err().to_string();
        assert!(e.ends_with("is not CronCommander's: left alone"), "{e}");
        assert!(cfg.cron_file.exists());
        fs::remove_file(&cfg.cron_file).unwrap();
        // A state "file" that cannot be removed is an error, not ignored.
        fs::create_dir(&state).unwrap();
        assert!(remove_all(&cfg).is_err());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn validation_keeps_the_first_of_each_id_and_says_why_the_others_went() {
        let e = |id: &str, schedule: &str| CronEntry {
            id: id.into(),
            schedule: schedule.into(),
            command: "/bin/true".into(),
            ..Default::default()
        };
        let long = "x".repeat(300);
        let (valid, rejected) =
            validate(&[e("a", "@daily"), e("a", "@hourly"), e("b", "@hourly"), e(&long, "@daily")]);
        let ids: Vec<&str> = valid.iter().map(|j| j.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(valid[0].schedule.to_string(), "@daily");
        assert_eq!(rejected[0], CronRejection { id: "a".into(), reason: "duplicate id".into() });
        assert_eq!(rejected[1].id, "x".repeat(128));
        assert_eq!(rejected[1].reason, "job id is 300 bytes long; at most 128 allowed");
        assert_eq!(rejected.len(), 2);
    }

    #[test]
    fn a_cron_file_name_with_a_dot_is_refused() {
        let (cfg, d) = cfg("dot");
        let e = write_cron_file(&d.join("cc.cron"), b"x").unwrap_err().to_string();
        assert!(e.contains("contains a dot: cron would ignore it"), "{e}");
        write_cron_file(&cfg.cron_file, b"x\n").unwrap();
        assert_eq!(fs::read(&cfg.cron_file).unwrap(), b"x\n");
        let _ = fs::remove_dir_all(&d);
    }
}
