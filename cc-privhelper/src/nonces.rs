//! Replay protection: every accepted (key, nonce) is kept until its
//! statement expires, so the same statement is refused a second time —
//! including the listener's at-least-once resend of a job that already ran,
//! and across helper restarts.
//!
//! In memory, a map of `sha256(key, nonce)` to the expiry: the check and the
//! insert are one step under its lock, so two replays at once cannot both
//! pass. On disk, `state_dir/nonces.log`, one appended line per record,
//! written before the job starts; at start the helper loads it and rewrites
//! it without the expired lines. Forcing it to disk (`fdatasync`, a third
//! of a millisecond here) runs beside the job's own start, on a syncer
//! thread ([`Nonces::sync`]), and a job's answer waits for it: only a power
//! loss in that fraction of a millisecond can forget a record.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

use anyhow::{Context, Result};
use cc_proto::sign::SignError;

#[derive(Debug)]
pub(crate) struct Nonces {
    seen: Mutex<HashMap<String, i64>>,
    log: Arc<Mutex<File>>,
    syncer: Arc<Syncer>,
}

impl Nonces {
    pub(crate) fn open(state_dir: &Path) -> Result<Self> {
        let path = state_dir.join("nonces.log");
        let now = cc_proto::Timestamp::now().unix_millis();
        // A log that is there but cannot be read (EIO, EACCES, not UTF-8)
        // refuses start: read as "no nonces", every statement it records
        // could run again.
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => anyhow::bail!(
                "reading {}: {e}: without its record of used nonces the helper could not tell a replay apart, so it does not start",
                path.display()
            ),
        };
        let seen: HashMap<String, i64> = text
            .lines()
            .filter_map(|l| {
                let (digest, until) = l.split_once(' ')?;
                Some((digest.to_owned(), until.parse().ok()?))
            })
            .filter(|(_, until)| *until > now)
            .collect();
        let kept: String = seen.iter().map(|(d, u)| format!("{d} {u}\n")).collect();
        crate::cronfile::atomic_write(&path, kept.as_bytes(), 0o600)?;
        let log = OpenOptions::new()
            .append(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let log = Arc::new(Mutex::new(log));
        let syncer: Arc<Syncer> = Arc::default();
        let (l, s) = (Arc::clone(&log), Arc::clone(&syncer));
        std::thread::Builder::new()
            .name("nonce-sync".into())
            .spawn(move || flush_when_asked(l, s))?;
        Ok(Self { seen: Mutex::new(seen), log, syncer })
    }

    /// Records (key, nonce) until `expires_ms`; refuses a repeat. Not
    /// recorded, not run: a replay could not be told apart later.
    pub(crate) fn record(&self, key: &str, nonce: &str, expires_ms: i64) -> Result<(), SignError> {
        let digest =
            ring::digest::digest(&ring::digest::SHA256, format!("{key}\n{nonce}").as_bytes());
        let digest: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let now = cc_proto::Timestamp::now().unix_millis();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.get(&digest).is_some_and(|until| *until > now) {
            return Err(SignError::Replayed(key.to_owned(), nonce.to_owned()));
        }
        if seen.len() > 4096 {
            seen.retain(|_, until| *until > now);
        }
        let line = format!("{digest} {expires_ms}\n");
        let written = self.log.lock().unwrap_or_else(|e| e.into_inner()).write_all(line.as_bytes());
        written
            .map_err(|e| SignError::Malformed(format!("the nonce could not be recorded: {e}")))?;
        seen.insert(digest, expires_ms);
        Ok(())
    }

    /// Asks the syncer to force the records to disk; [`Syncing::wait`]
    /// before the job's answer. One `fdatasync` covers every record
    /// written before it started.
    pub(crate) fn sync(&self) -> Syncing {
        let mut s = self.syncer.0.lock().unwrap_or_else(|e| e.into_inner());
        s.asked += 1;
        self.syncer.1.notify_all();
        Syncing { ticket: s.asked, syncer: Arc::clone(&self.syncer) }
    }
}

/// (asked, done, the last error) and the condition both sides wait on.
type Syncer = (Mutex<SyncState>, Condvar);

#[derive(Debug, Default)]
struct SyncState {
    asked: u64,
    done: u64,
    failed: Option<String>,
}

/// The syncer thread: flushes the log whenever more is asked than done.
fn flush_when_asked(log: Arc<Mutex<File>>, s: Arc<Syncer>) {
    loop {
        let target = {
            let mut st = s.0.lock().unwrap_or_else(|e| e.into_inner());
            while st.asked == st.done {
                st = s.1.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            st.asked
        };
        let file = log.lock().unwrap_or_else(|e| e.into_inner()).try_clone();
        let r = file.and_then(|f| f.sync_data());
        let mut st = s.0.lock().unwrap_or_else(|e| e.into_inner());
        st.done = target;
        st.failed = r.err().map(|e| e.to_string());
        s.1.notify_all();
    }
}

#[derive(Debug)]
pub(crate) struct Syncing {
    ticket: u64,
    syncer: Arc<Syncer>,
}

impl Syncing {
    pub(crate) fn wait(self) -> Result<(), String> {
        let mut st = self.syncer.0.lock().unwrap_or_else(|e| e.into_inner());
        while st.done < self.ticket {
            st = self.syncer.1.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.failed.clone().map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("cc-nonces-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_log_that_cannot_be_read_refuses_start_and_a_missing_one_does_not() {
        let d = dir("unreadable");
        assert!(Nonces::open(&d).is_ok(), "no log yet: a fresh start");
        std::fs::write(d.join("nonces.log"), b"\xff\xfe not text\n").unwrap();
        let e = Nonces::open(&d).unwrap_err().to_string();
        assert!(e.contains("does not start"), "{e}");
        // Left as it was, for the operator to look at.
        assert_eq!(std::fs::read(d.join("nonces.log")).unwrap(), b"\xff\xfe not text\n");
        std::fs::remove_file(d.join("nonces.log")).unwrap();
        std::fs::create_dir(d.join("nonces.log")).unwrap();
        assert!(Nonces::open(&d).is_err(), "a directory where the log should be");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_nonce_is_accepted_once_until_it_expires_also_after_a_restart() {
        let d = dir("once");
        let now = cc_proto::Timestamp::now().unix_millis();
        let n = Nonces::open(&d).unwrap();
        n.record("k", "n1", now + 60_000).unwrap();
        assert!(matches!(n.record("k", "n1", now + 60_000), Err(SignError::Replayed(..))));
        // Another nonce, or the same nonce of another key, is new.
        n.record("k", "n2", now + 60_000).unwrap();
        n.record("other", "n1", now + 60_000).unwrap();
        // An expired record no longer refuses (its statement would be
        // refused as expired first), and is not kept across a restart.
        n.record("k", "old", now - 1).unwrap();
        n.record("k", "old", now - 1).unwrap();
        n.sync().wait().unwrap();
        assert!(n.syncer.0.lock().unwrap().done >= 1, "the syncer ran");
        drop(n);
        let n = Nonces::open(&d).unwrap();
        assert!(matches!(n.record("k", "n1", now + 60_000), Err(SignError::Replayed(..))));
        assert!(matches!(n.record("other", "n1", now + 60_000), Err(SignError::Replayed(..))));
        let log = std::fs::read_to_string(d.join("nonces.log")).unwrap();
        // Compacted at start: the three live records, not the expired one.
        assert_eq!(log.lines().count(), 3, "{log}");
        assert!(log.lines().all(|l| l.split_once(' ').unwrap().1.parse::<i64>().unwrap() > now));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn every_sync_waits_for_a_flush_after_it_was_asked() {
        let d = dir("sync");
        let n = Nonces::open(&d).unwrap();
        for i in 0..20 {
            n.record("k", &format!("n{i}"), i64::MAX).unwrap();
            let waiting = n.sync();
            let ticket = waiting.ticket;
            waiting.wait().unwrap();
            assert!(n.syncer.0.lock().unwrap().done >= ticket);
            assert_eq!(ticket, i + 1);
        }
        let _ = std::fs::remove_dir_all(&d);
    }
}
