//! At most once per job id: `execute_job` is delivered at least once (the
//! listener sends again, on reconnect, any job it sent that has no report),
//! so the agent records each job id it accepts and ignores a second
//! delivery. A marker is an empty file `jobs/<id>` in the state directory,
//! created with `O_EXCL`; markers older than the longest timeout plus a day
//! are pruned when the agent starts.

use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use cc_proto::{JobId, Timeout};

const KEEP: Duration = Duration::from_secs(Timeout::MAX_SECS + 24 * 3600);

/// True the first time `job_id` is seen; false for a repeat. An invalid id
/// is "first" (it is refused later with a reason).
pub(crate) fn first_time(state_dir: &Path, job_id: &str) -> Result<bool> {
    let Ok(id) = JobId::parse(job_id) else {
        return Ok(true);
    };
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
        Ok(_) => Ok(true),
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
    fn a_job_id_is_accepted_once() {
        let dir = std::env::temp_dir().join(format!("cc-seen-{}", uuid::Uuid::new_v4()));
        assert!(first_time(&dir, "job-1").unwrap());
        assert!(!first_time(&dir, "job-1").unwrap());
        assert!(first_time(&dir, "job-2").unwrap());
        assert!(
            first_time(&dir, "../bad").unwrap(),
            "invalid ids are refused later, not here"
        );
        assert_eq!(prune(&dir).unwrap(), 0);
        fs::remove_dir_all(dir).unwrap();
    }
}
