//! Reports of scheduled root runs, kept by the helper until the agent has
//! them on disk: `state_dir/reports/<nanoseconds>-<reportId>.json`, root's
//! alone (0700 directory, 0600 files). The agent takes them over the socket
//! (`take_reports`) and acknowledges what it stored (`ack_reports`); root
//! never writes into a directory anyone else can change.
//!
//! Bound: at most [`MAX_KEPT`] reports; past it the oldest are dropped and
//! logged (an agent that never collects cannot fill root's disk).

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use cc_proto::helper::MAX_REPORTS_PER_TAKE;
use cc_proto::wire::ExecutionReport;
use tracing::warn;

pub(crate) const MAX_KEPT: usize = 1000;

#[derive(Debug)]
pub(crate) struct Reports {
    dir: PathBuf,
    /// One writer or remover at a time (names, the bound).
    lock: Mutex<()>,
}

impl Reports {
    pub(crate) fn open(state_dir: &Path) -> Result<Self> {
        let dir = state_dir.join("reports");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        crate::config::check_root_owned(&dir, "report directory")?;
        Ok(Self { dir, lock: Mutex::new(()) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// (path, report id) of every kept report, oldest first.
    fn list(&self) -> Vec<(PathBuf, String)> {
        let mut out: Vec<(PathBuf, String)> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let id = name.strip_suffix(".json")?.split_once('-')?.1.to_owned();
                (!name.starts_with('.')).then(|| (e.path(), id))
            })
            .collect();
        out.sort();
        out
    }

    /// Stores a report (it must carry a `reportId`), whole or not at all.
    pub(crate) fn put(&self, report: &ExecutionReport) -> Result<()> {
        let id = report.report_id.as_deref().context("a kept report needs a reportId")?;
        let _g = self.lock();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        crate::cronfile::atomic_write(
            &self.dir.join(format!("{nanos:020}-{id}.json")),
            &serde_json::to_vec(report)?,
            0o600,
        )?;
        let all = self.list();
        for (path, id) in all.iter().take(all.len().saturating_sub(MAX_KEPT)) {
            warn!(report_id = %id, "scheduled-run reports over their bound: the oldest is dropped");
            let _ = fs::remove_file(path);
        }
        Ok(())
    }

    /// The oldest reports, a few at a time (a frame's worth).
    pub(crate) fn take(&self) -> Vec<ExecutionReport> {
        let _g = self.lock();
        self.list()
            .into_iter()
            .filter_map(|(path, _)| serde_json::from_slice(&fs::read(path).ok()?).ok())
            .take(MAX_REPORTS_PER_TAKE)
            .collect()
    }

    /// Forgets the reports with these ids; returns how many went. The
    /// agent acknowledges what one `take` gave it: ids past the first 64
    /// are not looked at (a frame holds 800,000, each compared with every
    /// kept report while root's scheduled runs wait on the lock).
    pub(crate) fn ack(&self, ids: &[String]) -> usize {
        let ids = &ids[..ids.len().min(64)];
        let _g = self.lock();
        self.list()
            .into_iter()
            .filter(|(_, id)| ids.contains(id))
            .filter(|(path, _)| fs::remove_file(path).is_ok())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(id: &str) -> ExecutionReport {
        ExecutionReport {
            job_id: "nightly".into(),
            command: "/bin/true".into(),
            exit_code: 0,
            stdout: String::new(),
            stderr: String::new(),
            start_time: "2026-12-07T00:00:00Z".into(),
            duration_ms: 1,
            executing_uid: 0,
            executing_user: "root".into(),
            warning: None,
            report_id: Some(id.into()),
            waited_ms: None,
        }
    }

    /// An acknowledgement looks at its first 64 ids only.
    #[test]
    fn an_ack_forgets_what_it_names_within_its_first_64_ids() {
        if !nix::unistd::geteuid().is_root() {
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "needs root");
            eprintln!("skipped: needs root (a root-owned directory)");
            return;
        }
        let dir = std::env::temp_dir().join(format!("cc-reports-{}", std::process::id()));
        let r = Reports::open(&dir).unwrap();
        r.put(&report("a")).unwrap();
        r.put(&report("b")).unwrap();
        let mut ids: Vec<String> = (0..100).map(|i| format!("x{i}")).collect();
        ids[70] = "a".into();
        assert_eq!(r.ack(&ids), 0, "the 71st id is not looked at");
        ids[63] = "b".into();
        assert_eq!(r.ack(&ids), 1, "the 64th is");
        assert_eq!(r.ack(&["a".to_owned()]), 1);
        assert!(r.take().is_empty());
        let _ = fs::remove_dir_all(&dir);
    }
}
