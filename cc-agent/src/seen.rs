//! At most once per job id: `execute_job` is delivered at least once (the
//! listener sends again, on reconnect, any job it sent that has no report),
//! so the agent records each job id it *starts* and never starts it again.
//! A marker is an empty file `jobs/<id>` in the state directory, created
//! with `O_EXCL` and made durable (the directory is fsync'd) immediately
//! before the job starts: a job that never started leaves none and runs
//! when it is sent again. Markers older than the longest timeout plus a
//! day are pruned when the agent starts.

use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use cc_proto::{JobId, Timeout};

const KEEP: Duration = Duration::from_secs(Timeout::MAX_SECS + 24 * 3600);

/// Whether `id` was started before.
pub(crate) fn started(state_dir: &Path, id: &JobId) -> bool {
    state_dir.join("jobs").join(id.as_str()).exists()
}

/// Records that `id` starts now, on disk before it returns: true the first
/// time, false if it had started before.
pub(crate) fn mark_started(state_dir: &Path, id: &JobId) -> Result<bool> {
    let dir = state_dir.join("jobs");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join(id.as_str()))
    {
        Ok(_) => {
            // The name is what matters: make the directory entry durable.
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .context("making the job marker durable")?;
            Ok(true)
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e).context("creating a job marker"),
    }
}

/// Removes markers older than [`KEEP`]; returns how many.
pub(crate) fn prune(state_dir: &Path) -> Result<usize> {
    let dir = state_dir.join("jobs");
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(0);
    };
    let now = SystemTime::now();
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > KEEP);
        if old && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_id_starts_once() {
        let dir = std::env::temp_dir().join(format!("cc-seen-{}", uuid::Uuid::new_v4()));
        let (one, two) = (
            JobId::parse("job-1").unwrap(),
            JobId::parse("job-2").unwrap(),
        );
        assert!(!started(&dir, &one));
        assert!(mark_started(&dir, &one).unwrap());
        assert!(started(&dir, &one));
        assert!(!mark_started(&dir, &one).unwrap());
        assert!(!started(&dir, &two));
        assert!(mark_started(&dir, &two).unwrap());
        assert_eq!(prune(&dir).unwrap(), 0);
        fs::remove_dir_all(dir).unwrap();
    }
}
