//! The on-disk outbox: every report is written here before it is sent, and
//! removed only when the listener acknowledges it (`report_ack`) or
//! rejects it for good (`report_rejected`).
//!
//! One file per report, `<nanoseconds>-<reportId>.json`, holding the
//! `execution_report` payload. Files are written to a dot-named temp file,
//! fsync'd, renamed into place and the directory fsync'd, so a reader (the
//! running agent, while `cc-agent cron-run` writes) only ever sees whole
//! reports, and a crash loses nothing that was reported as written.
//! Name order is send order. A dot-named file is never a report: a write in
//! progress (`.tmp-…`), or the reserve.
//!
//! The reserve (`.reserve`, [`RESERVE_BYTES`] of written zeros, so not
//! sparse) is space held back for a full disk: when a report's write fails
//! because the file system is full (`ENOSPC`, `EDQUOT`), the reserve is
//! deleted and the write tried once more, so the report is on disk — and
//! survives a restart — rather than waiting in memory. The agent makes the
//! reserve at start and again once the outbox has drained
//! ([`Outbox::ensure_reserve`]); `cron-run` only uses it.
//!
//! Bound (a listener that never acknowledges, as a spec-only one): at most
//! [`MAX_REPORTS`] files. Past that, reports already sent at least once are
//! deleted oldest first; if every report is unsent, the oldest are deleted.
//! Each deletion is logged with its job id.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use cc_proto::wire::{ExecutionReport, MAX_MESSAGE_BYTES};
use tracing::{error, warn};

pub(crate) const MAX_REPORTS: usize = 10_000;

/// Size of the reserve: one message of the largest size, so it holds the
/// largest report there is (`ExecutionReport::fit` keeps a report under
/// [`MAX_MESSAGE_BYTES`]), or some 250 small ones (a file takes at least
/// one 4 KiB block).
pub(crate) const RESERVE_BYTES: usize = MAX_MESSAGE_BYTES;

/// The reserve's file name in the outbox (dot-named: never a report).
const RESERVE: &str = ".reserve";

/// The reserve is made only while the file system has this much free
/// beyond it, so that making it does not itself fill the disk.
const RESERVE_HEADROOM: u64 = 256 * 1024;

/// A temp file older than this was left by a write that never finished
/// (a crash between create and rename); a younger one may be a `cron-run`
/// writing now, and is left alone.
pub(crate) const STALE_TEMP: Duration = Duration::from_secs(600);

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

/// What [`Outbox::ensure_reserve`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reserve {
    /// Already there.
    Present,
    /// Made now.
    Made,
    /// Missing, and the file system has only this many bytes free: too few
    /// to make it and keep [`RESERVE_HEADROOM`].
    NoRoom { free: u64 },
}

/// The write failed because the file system (or the user's quota) is full.
fn disk_full(e: &io::Error) -> bool {
    use nix::errno::Errno;
    e.raw_os_error()
        .is_some_and(|c| c == Errno::ENOSPC as i32 || c == Errno::EDQUOT as i32)
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
    /// its id. On error nothing is half-written. A full file system gets
    /// the reserve: it is deleted and the write tried once more.
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
        let write = || crate::atomic::write_file(&self.dir, &name, &body);
        match write() {
            Ok(()) => {}
            Err(e) if disk_full(&e) && self.release_reserve() => {
                error!(
                    report_id = %id,
                    job_id = %report.job_id,
                    "the state directory is full ({e}): the outbox's reserve ({RESERVE_BYTES} bytes) was used to store this report; free space in {}",
                    self.dir.display()
                );
                write().with_context(|| {
                    format!(
                        "writing a report to {} (after using the reserve)",
                        self.dir.display()
                    )
                })?;
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("writing a report to {}", self.dir.display()));
            }
        }
        Ok(id)
    }

    /// Deletes the reserve; false when there was none (used already, maybe
    /// by a `cron-run`) or it could not go.
    fn release_reserve(&self) -> bool {
        match fs::remove_file(self.dir.join(RESERVE)) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => {
                warn!("could not release the outbox's reserve: {e}");
                false
            }
        }
    }

    /// Makes the reserve when it is missing (or not of its size) and the
    /// file system has room for it and [`RESERVE_HEADROOM`] more: written
    /// zeros (not a sparse file), whole or not at all (`atomic.rs`).
    pub(crate) fn ensure_reserve(&self) -> Result<Reserve> {
        let path = self.dir.join(RESERVE);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() && m.len() == RESERVE_BYTES as u64 => return Ok(Reserve::Present),
            Ok(_) => fs::remove_file(&path)
                .with_context(|| format!("removing {} to make it again", path.display()))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("looking at {}", path.display())),
        }
        let st = nix::sys::statvfs::statvfs(&self.dir)
            .with_context(|| format!("statvfs {}", self.dir.display()))?;
        // Both are u64 on 64-bit Linux, narrower on some 32-bit targets.
        #[allow(clippy::useless_conversion)]
        let free = u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size()));
        if free < RESERVE_BYTES as u64 + RESERVE_HEADROOM {
            return Ok(Reserve::NoRoom { free });
        }
        // A temp file left by a crash while making it would stop the write.
        let tmp = self.dir.join(format!(".tmp-{RESERVE}"));
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", tmp.display()));
            }
            _ => {}
        }
        crate::atomic::write_file(&self.dir, RESERVE, &vec![0u8; RESERVE_BYTES])
            .with_context(|| format!("making the reserve {}", path.display()))?;
        Ok(Reserve::Made)
    }

    /// Deletes temp files (`.tmp-…`) older than `older_than`: writes a
    /// crash interrupted between create and rename. Younger ones are left:
    /// a `cron-run` may be writing one now. Returns how many went.
    pub(crate) fn remove_stale_temps(&self, older_than: Duration) -> Result<usize> {
        let mut removed = 0;
        for entry in
            fs::read_dir(&self.dir).with_context(|| format!("reading {}", self.dir.display()))?
        {
            let entry = entry?;
            if !entry.file_name().as_encoded_bytes().starts_with(b".tmp-") {
                continue;
            }
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age >= older_than));
            if !stale {
                continue;
            }
            match fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("removing {}", entry.path().display()));
                }
            }
        }
        Ok(removed)
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

    /// Whether the reserve is in place (one `stat`).
    pub(crate) fn has_reserve(&self) -> bool {
        fs::symlink_metadata(self.dir.join(RESERVE))
            .is_ok_and(|m| m.is_file() && m.len() == RESERVE_BYTES as u64)
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
pub(crate) mod tests {
    use super::*;

    /// A minimal valid report of `job` (also for the connection's tests).
    pub(crate) fn report(job: &str) -> ExecutionReport {
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
            waited_ms: None,
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

    /// A tmpfs of `size` on a fresh directory, unmounted on drop; None
    /// (a skip outside CI, a failure in CI) when not root.
    struct Tmpfs(PathBuf);

    impl Tmpfs {
        fn mount(size: &str) -> Option<Self> {
            let root = nix::unistd::geteuid().is_root();
            if !cc_testkit::require("root, to mount a tmpfs", root) {
                return None;
            }
            let dir = temp();
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
                .arg("tmpfs")
                .arg(&dir)
                .status()
                .unwrap()
                .success();
            assert!(ok, "mounting a tmpfs on {}", dir.display());
            Some(Self(dir))
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Writes `path` until the file system refuses with ENOSPC.
    fn fill(path: &Path) {
        use std::io::Write;
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        let chunk = vec![1u8; 4096];
        let e = loop {
            if let Err(e) = f.write_all(&chunk) {
                break e;
            }
        };
        assert!(disk_full(&e), "{e}");
    }

    fn report_of(bytes: usize) -> ExecutionReport {
        ExecutionReport {
            stdout: "o".repeat(bytes),
            ..report("full")
        }
    }

    /// A full state directory used to keep a report in memory only, so a
    /// restart lost it. The reserve gives the space back when the disk is
    /// full: the report is written; once the reserve is used the next one
    /// waits (the caller retries); the reserve is made again when there is
    /// room.
    #[test]
    fn a_full_disk_still_takes_a_report_by_giving_up_the_reserve() {
        let Some(fs_) = Tmpfs::mount("2m") else {
            return;
        };
        let ob = Outbox::open(&fs_.0).unwrap();
        assert_eq!(ob.ensure_reserve().unwrap(), Reserve::Made);
        assert_eq!(ob.ensure_reserve().unwrap(), Reserve::Present);
        // Real zeros, not a hole: every block allocated.
        let path = fs_.0.join("outbox").join(RESERVE);
        let m = fs::metadata(&path).unwrap();
        assert_eq!(m.len(), RESERVE_BYTES as u64);
        assert!(
            std::os::unix::fs::MetadataExt::blocks(&m) * 512 >= RESERVE_BYTES as u64,
            "sparse reserve: {} blocks",
            std::os::unix::fs::MetadataExt::blocks(&m)
        );
        assert!(fs::read(&path).unwrap().iter().all(|&b| b == 0));
        // It is never a report.
        assert!(ob.list().unwrap().is_empty());

        fill(&fs_.0.join("filler"));
        // Without the reserve logic, the same write fails: the disk is full.
        let body = serde_json::to_vec(&report_of(100_000)).unwrap();
        let e = crate::atomic::write_file(&fs_.0.join("outbox"), "plain.json", &body).unwrap_err();
        assert!(disk_full(&e), "{e}");
        // Through the outbox, the reserve goes and the report is on disk.
        let id = ob.put(report_of(100_000)).unwrap();
        let listed = ob.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].report_id, id);
        assert!(
            ob.message(&listed[0])
                .unwrap()
                .contains(&"o".repeat(100_000))
        );
        assert!(!path.exists(), "the reserve was used");
        assert!(!ob.has_reserve());
        // Still full: no reserve to make, and the next report is refused
        // (it waits in the agent's memory; `handlers::job::store` retries it).
        fill(&fs_.0.join("filler"));
        assert!(matches!(
            ob.ensure_reserve().unwrap(),
            Reserve::NoRoom { .. }
        ));
        let e = ob.put(report_of(100_000)).unwrap_err();
        assert!(
            format!("{e:#}").contains("No space left on device"),
            "{e:#}"
        );
        assert_eq!(ob.list().unwrap().len(), 1);
        let names: Vec<String> = fs::read_dir(fs_.0.join("outbox"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 1, "no temp file left behind: {names:?}");
        // Space freed, outbox drained: the reserve is back.
        fs::remove_file(fs_.0.join("filler")).unwrap();
        assert!(ob.remove(&listed[0]).unwrap());
        assert_eq!(ob.ensure_reserve().unwrap(), Reserve::Made);
        assert!(ob.has_reserve());
    }

    /// A crash between a temp file's creation and its rename left the temp
    /// file in the outbox for ever. At start the agent removes those old
    /// enough to be no one's write in progress; a fresh one (a `cron-run`
    /// writing now), the reserve and the reports stay.
    #[test]
    fn temp_files_of_interrupted_writes_are_removed_at_start() {
        let dir = temp();
        let ob = Outbox::open(&dir).unwrap();
        let kept = ob.put(report("kept")).unwrap();
        let outbox = dir.join("outbox");
        let old = outbox.join(".tmp-00000000000000000001-crashed.json");
        let fresh = outbox.join(".tmp-00000000000000000002-writing.json");
        let reserve_tmp = outbox.join(".tmp-.reserve");
        for p in [&old, &fresh, &reserve_tmp] {
            fs::write(p, "{").unwrap();
        }
        let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
        for p in [&old, &reserve_tmp] {
            fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(an_hour_ago)
                .unwrap();
        }
        fs::write(outbox.join(RESERVE), "").unwrap();
        assert_eq!(ob.remove_stale_temps(STALE_TEMP).unwrap(), 2);
        assert!(!old.exists() && !reserve_tmp.exists());
        assert!(fresh.exists(), "a write in progress is left alone");
        assert!(outbox.join(RESERVE).exists());
        let ids: Vec<String> = ob
            .list()
            .unwrap()
            .into_iter()
            .map(|e| e.report_id)
            .collect();
        assert_eq!(ids, [kept]);
        assert_eq!(ob.remove_stale_temps(STALE_TEMP).unwrap(), 0);
        fs::remove_dir_all(dir).unwrap();
    }

    /// A reserve of the wrong size (an older agent's, a truncated copy) is
    /// made again at its size.
    #[test]
    fn a_reserve_of_another_size_is_made_again() {
        let dir = temp();
        let ob = Outbox::open(&dir).unwrap();
        fs::write(dir.join("outbox").join(RESERVE), b"short").unwrap();
        assert!(!ob.has_reserve());
        assert_eq!(ob.ensure_reserve().unwrap(), Reserve::Made);
        assert!(ob.has_reserve());
        fs::remove_dir_all(dir).unwrap();
    }
}
