//! `cc-agent cron-run`: one scheduled run of a user-mode cron entry.
//!
//! Order: the entry's lock first, then the jitter wait, then the run. A
//! run still waiting for its jitter holds the lock, so a run fired while
//! it waits is skipped (exit 75, at once, `waited_ms` left out): at most
//! one run of an entry is waiting or running at any time, and the
//! listener sees the skip rather than two runs close together.

use std::fs::OpenOptions;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use cc_proto::JobId;
use cc_proto::wire::ExecutionReport;
use nix::fcntl::{Flock, FlockArg};

use crate::cron::StoredEntry;
use crate::runner::Runner;

/// Exit code of a skipped scheduled run (EX_TEMPFAIL).
pub(crate) const EXIT_SKIPPED: i32 = 75;

/// Runs entry `id` once: locks `locks/ID.lock`, waits the host's jitter
/// offset, runs with the entry's timeout. The report says how long it
/// waited (`waited_ms`) when the entry has a jitter.
pub(crate) fn run(
    runner: &Runner,
    locks: &Path,
    hostname: &str,
    id: &JobId,
    entry: &StoredEntry,
) -> Result<ExecutionReport> {
    let command = entry.command()?;
    let timeout = entry.timeout()?;
    let wait = entry.wait(hostname, id)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(locks)?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(locks.join(format!("{id}.lock")))
        .context("opening the job's lock file")?;
    let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            return Ok(runner.refused(
                id,
                &command,
                EXIT_SKIPPED,
                "skipped: the previous run of this job is still waiting or running",
            ));
        }
        Err((_, e)) => return Err(e).context("locking the job"),
    };
    let began = Instant::now();
    std::thread::sleep(wait);
    let waited = began.elapsed();
    let mut report = runner.run(id, &command, timeout, None);
    drop(lock);
    if entry.jitter.is_some() {
        report.waited_ms = Some(u64::try_from(waited.as_millis()).unwrap_or(u64::MAX));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cc_proto::wire::{ExecutionMode, jitter_offset};
    use std::time::Duration;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("cc-sched-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn entry(argv: &[&str], timeout: Option<u64>, jitter: Option<u64>) -> StoredEntry {
        StoredEntry {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            timeout,
            jitter,
        }
    }

    /// An entry id whose offset on host "h" with 3 s of jitter is `want`.
    fn id_with_offset(want: u64) -> JobId {
        (0..1000)
            .map(|i| format!("e{i}"))
            .find(|id| jitter_offset("h", id, 3) == want)
            .map(|id| JobId::parse(&id).unwrap())
            .unwrap()
    }

    fn runner() -> Runner {
        Runner::new(ExecutionMode::User, "/nonexistent".into())
    }

    #[test]
    fn a_run_waits_its_offset_and_says_so() {
        let d = dir("wait");
        let id = id_with_offset(1);
        let r = run(
            &runner(),
            &d,
            "h",
            &id,
            &entry(&["/bin/true"], None, Some(3)),
        )
        .unwrap();
        assert_eq!(r.exit_code, 0, "{r:?}");
        let waited = r.waited_ms.unwrap();
        assert!((1000..1900).contains(&waited), "{waited}");
        // Another host, another offset: the wait is the host's own.
        let other = (0..1000)
            .map(|i| format!("host{i}"))
            .find(|h| jitter_offset(h, id.as_str(), 3) == 0)
            .unwrap();
        let r = run(
            &runner(),
            &d,
            &other,
            &id,
            &entry(&["/bin/true"], None, Some(3)),
        )
        .unwrap();
        assert!(r.waited_ms.unwrap() < 900, "{r:?}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn no_jitter_no_wait_and_no_waited_ms() {
        let d = dir("nojitter");
        let id = JobId::parse("plain").unwrap();
        let began = Instant::now();
        let r = run(&runner(), &d, "h", &id, &entry(&["/bin/true"], None, None)).unwrap();
        assert!(began.elapsed() < Duration::from_secs(1));
        assert_eq!((r.exit_code, r.waited_ms), (0, None));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_entry_timeout_stops_a_long_run() {
        let d = dir("timeout");
        let id = JobId::parse("long").unwrap();
        let began = Instant::now();
        let r = run(
            &runner(),
            &d,
            "h",
            &id,
            &entry(&["/bin/sleep", "30"], Some(1), None),
        )
        .unwrap();
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "{:?}",
            began.elapsed()
        );
        assert_eq!(r.exit_code, 124, "{r:?}");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// The lock is taken before the wait: a run fired while the previous
    /// one still waits for its jitter is skipped at once.
    #[test]
    fn a_run_fired_while_the_previous_waits_is_skipped() {
        let d = dir("skip");
        let id = id_with_offset(2);
        let e = entry(&["/bin/true"], None, Some(3));
        let (d2, id2, e2) = (d.clone(), id.clone(), e.clone());
        let first = std::thread::spawn(move || run(&runner(), &d2, "h", &id2, &e2).unwrap());
        std::thread::sleep(Duration::from_millis(500));
        let began = Instant::now();
        let second = run(&runner(), &d, "h", &id, &e).unwrap();
        assert!(began.elapsed() < Duration::from_secs(1));
        assert_eq!((second.exit_code, second.waited_ms), (EXIT_SKIPPED, None));
        assert!(
            second.stderr.contains("still waiting or running"),
            "{second:?}"
        );
        let first = first.join().unwrap();
        assert_eq!(first.exit_code, 0);
        assert!(first.waited_ms.unwrap() >= 2000);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// The stored file is the agent's own, but it is checked again: a
    /// timeout or jitter out of bounds runs nothing.
    #[test]
    fn out_of_bounds_options_in_the_stored_file_run_nothing() {
        let d = dir("bounds");
        let id = JobId::parse("x").unwrap();
        for e in [
            entry(&["/bin/true"], Some(0), None),
            entry(&["/bin/true"], Some(cc_proto::Timeout::MAX_SECS + 1), None),
            entry(
                &["/bin/true"],
                None,
                Some(cc_proto::wire::MAX_CRON_DELAY_SECS + 1),
            ),
        ] {
            assert!(run(&runner(), &d, "h", &id, &e).is_err(), "{e:?}");
        }
        assert!(!d.exists(), "refused before any file");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A file written before timeout and jitter existed still loads.
    #[test]
    fn an_old_stored_file_loads_with_defaults() {
        let e: StoredEntry = serde_json::from_str(r#"{"argv":["/bin/true"]}"#).unwrap();
        assert_eq!(e.timeout().unwrap(), cc_proto::Timeout::DEFAULT);
        assert_eq!(e.jitter, None);
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"argv":["/bin/true"]}"#
        );
    }
}
