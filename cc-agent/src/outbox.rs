//! The on-disk outbox: every report is written here before it is sent, and
//! removed only when the listener acknowledges it (`report_ack`) or
//! rejects it for good (`report_rejected`).
//!
//! One file per report, `<nanoseconds>-<reportId>.json`, holding the
//! `execution_report` payload. Files are written to a dot-named temp file,
//! fsync'd, renamed into place and the directory fsync'd, so a reader (the
//! running agent, while `cc-agent cron-run` writes) only ever sees whole
//! reports, and a crash loses nothing that was reported as written.
//! Name order is send order.
//!
//! Bound (a listener that never acknowledges, as a spec-only one): at most
//! [`MAX_REPORTS`] files. Past that, reports already sent at least once are
//! deleted oldest first; if every report is unsent, the oldest are deleted.
//! Each deletion is logged with its job id.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use cc_proto::wire::ExecutionReport;
use tracing::warn;

pub(crate) const MAX_REPORTS: usize = 10_000;

#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    dir: PathBuf,
}

/// One stored report.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) path: PathBuf,
    pub(crate) report_id: String,
}

impl Outbox {
    pub(crate) fn open(state_dir: &Path) -> Result<Self> {
        let dir = state_dir.join("outbox");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self { dir })
    }

    /// Stores a report (it gets a `reportId` if it has none) and returns
    /// its id. On error nothing is half-written.
    pub(crate) fn put(&self, mut report: ExecutionReport) -> Result<String> {
        let id = report
            .report_id
            .get_or_insert_with(|| uuid::Uuid::new_v4().to_string())
            .clone();
        report.fit();
        let body = serde_json::to_vec(&report)?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!("{nanos:020}-{id}.json");
        crate::atomic::write_file(&self.dir, &name, &body)
            .with_context(|| format!("writing a report to {}", self.dir.display()))?;
        Ok(id)
    }

    /// Stored reports in send order.
    pub(crate) fn list(&self) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        for entry in
            fs::read_dir(&self.dir).with_context(|| format!("reading {}", self.dir.display()))?
        {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let Some((_, rest)) = name.split_once('-') else {
                continue;
            };
            out.push(Entry {
                path: entry.path(),
                report_id: rest.trim_end_matches(".json").to_owned(),
            });
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// The `execution_report` message text for a stored report.
    pub(crate) fn message(&self, entry: &Entry) -> Result<String> {
        let text = fs::read_to_string(&entry.path)
            .with_context(|| format!("reading {}", entry.path.display()))?;
        Ok(format!(r#"{{"type":"execution_report","payload":{text}}}"#))
    }

    /// The `jobId` of a stored report, for the log; None when it cannot
    /// be read.
    pub(crate) fn job_id(&self, entry: &Entry) -> Option<String> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct JobOnly {
            job_id: String,
        }
        let text = fs::read(&entry.path).ok()?;
        serde_json::from_slice::<JobOnly>(&text)
            .ok()
            .map(|r| r.job_id)
    }

    /// Deletes an acknowledged (or rejected) report; false when it is
    /// already gone (an ack may come twice).
    pub(crate) fn remove(&self, entry: &Entry) -> Result<bool> {
        match fs::remove_file(&entry.path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("removing {}", entry.path.display())),
        }
    }

    /// Keeps at most `max` of `entries` (this directory's listing, from
    /// [`Outbox::list`]; [`MAX_REPORTS`] in the agent); the reports in
    /// `sent` (sent at least once) go first.
    pub(crate) fn enforce_bound(
        &self,
        entries: Vec<Entry>,
        sent: &HashMap<String, Entry>,
        max: usize,
    ) -> Result<usize> {
        let mut excess = entries.len().saturating_sub(max);
        let mut dropped = 0;
        let (sent_first, unsent): (Vec<_>, Vec<_>) = entries
            .into_iter()
            .partition(|e| sent.contains_key(&e.report_id));
        for e in sent_first.into_iter().chain(unsent) {
            if excess == 0 {
                break;
            }
            warn!(report_id = %e.report_id, "outbox full: dropping the oldest report");
            self.remove(&e)?;
            excess -= 1;
            dropped += 1;
        }
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(job: &str) -> ExecutionReport {
        ExecutionReport {
            job_id: job.into(),
            command: "x".into(),
            exit_code: 0,
            stdout: String::new(),
            stderr: String::new(),
            start_time: "2024-03-20T10:00:00Z".into(),
            duration_ms: 1,
            executing_uid: 1,
            executing_user: "u".into(),
            warning: None,
            report_id: None,
        }
    }

    fn temp() -> PathBuf {
        let p = std::env::temp_dir().join(format!("cc-outbox-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(&p).unwrap();
        p
    }

    #[test]
    fn reports_come_back_in_order_and_go_when_acknowledged() {
        let dir = temp();
        let ob = Outbox::open(&dir).unwrap();
        let a = ob.put(report("a")).unwrap();
        let b = ob.put(report("b")).unwrap();
        let ids: Vec<String> = ob
            .list()
            .unwrap()
            .into_iter()
            .map(|e| e.report_id)
            .collect();
        assert_eq!(ids, [a.clone(), b.clone()]);
        let msg = ob.message(&ob.list().unwrap()[0]).unwrap();
        assert!(
            msg.starts_with(r#"{"type":"execution_report","payload":{"jobId":"a""#),
            "{msg}"
        );
        let first = ob.list().unwrap()[0].clone();
        assert_eq!(first.report_id, a);
        assert!(ob.remove(&first).unwrap());
        assert!(!ob.remove(&first).unwrap());
        assert_eq!(ob.list().unwrap().len(), 1);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn temp_files_are_never_listed() {
        let dir = temp();
        let ob = Outbox::open(&dir).unwrap();
        fs::write(dir.join("outbox/.tmp-0001-x.json"), "{").unwrap();
        assert!(ob.list().unwrap().is_empty());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_bound_drops_sent_reports_first_then_the_oldest() {
        let dir = temp();
        let ob = Outbox::open(&dir).unwrap();
        let ids: Vec<String> = (0..5)
            .map(|i| ob.put(report(&format!("j{i}"))).unwrap())
            .collect();
        let listed = ob.list().unwrap();
        let sent: HashMap<String, Entry> = listed
            .iter()
            .filter(|e| e.report_id == ids[3])
            .map(|e| (e.report_id.clone(), e.clone()))
            .collect();
        assert_eq!(ob.enforce_bound(listed, &sent, 3).unwrap(), 2);
        let left: Vec<String> = ob
            .list()
            .unwrap()
            .into_iter()
            .map(|e| e.report_id)
            .collect();
        assert_eq!(left, [ids[1].clone(), ids[2].clone(), ids[4].clone()]);
        fs::remove_dir_all(dir).unwrap();
    }
}
