//! Jobs between their arrival and their report.
//!
//! A job is validated when it arrives, then held in memory in arrival
//! order, bounded in count and in bytes, and started at most
//! `max_concurrent_jobs` at a time. The at-most-once marker (`seen.rs`) is
//! written, durably, immediately before a job starts. So:
//! - a job the agent held but never started runs after a restart: the
//!   listener still has it as sent and unreported and sends it again;
//! - a job that started never runs again: its marker refuses the resend;
//! - a job dropped here (a full queue, the agent stopping) left no marker;
//! - a slot is freed only when the job's report is on disk, so at most
//!   `max_concurrent_jobs` jobs are started and unreported at any moment
//!   (what a SIGKILL can lose), and a disk that refuses reports stops new
//!   jobs instead of piling reports up in memory.
//!
//! The listener sends no more than the agent's `jobWindow` (twice
//! `max_concurrent_jobs`) unreported jobs, so the queue stays short; the
//! bounds are for a listener that does not (a spec-only one).

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cc_proto::wire::{ExecutionReport, JobSpec};
use tokio::sync::{Notify, Semaphore, mpsc};
use tracing::{error, info, warn};

use crate::outbox::Outbox;
use crate::runner::Runner;

/// Jobs held but not started, at most.
const MAX_QUEUED: usize = 1024;
/// Bytes of jobs held but not started, at most (program, arguments and, in
/// system mode, the listener's payload text).
const MAX_QUEUED_BYTES: usize = 4 * 1024 * 1024;

/// A validated job; in system mode, what goes to the helper untouched.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) spec: JobSpec,
    pub(crate) forward: Option<crate::runner::Forward>,
}

impl Job {
    fn bytes(&self) -> usize {
        self.spec.command.program().len()
            + self
                .spec
                .command
                .args()
                .iter()
                .map(String::len)
                .sum::<usize>()
            + self.forward.as_ref().map_or(0, |f| {
                f.payload.len() + f.signed.as_ref().map_or(0, String::len)
            })
    }
}

/// What became of an arriving job.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Offer {
    Queued,
    /// Held or running already (a resend while it waits).
    Duplicate,
    /// Started before (its marker exists): never again.
    AlreadyStarted,
    /// Over a bound: dropped, no marker; the listener sends it again after
    /// a reconnect.
    Full,
    /// The agent is stopping.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Job>,
    /// Ids queued or running.
    ids: HashSet<String>,
    bytes: usize,
    running: usize,
    closed: bool,
}

#[derive(Debug)]
pub(crate) struct Jobs {
    state: Mutex<State>,
    wake: Notify,
    /// Told when a running job has finished (its report on disk).
    finished: Notify,
    state_dir: PathBuf,
    slots: usize,
}

impl Jobs {
    pub(crate) fn new(state_dir: PathBuf, slots: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            finished: Notify::new(),
            state_dir,
            slots,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Single-statement updates: consistent even after a panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The agent's `jobWindow`: what it runs plus as much again waiting.
    pub(crate) fn window(&self) -> u32 {
        u32::try_from(self.slots * 2).unwrap_or(u32::MAX)
    }

    /// Takes an arriving job, or says why not.
    pub(crate) fn offer(&self, job: Job) -> Offer {
        let id = job.spec.id.to_string();
        {
            let s = self.lock();
            if s.closed {
                return Offer::Closed;
            }
            if s.ids.contains(&id) {
                return Offer::Duplicate;
            }
        }
        if crate::seen::started(&self.state_dir, &job.spec.id) {
            return Offer::AlreadyStarted;
        }
        let mut s = self.lock();
        if s.closed {
            return Offer::Closed;
        }
        if s.ids.contains(&id) {
            return Offer::Duplicate;
        }
        let bytes = job.bytes();
        if s.queue.len() >= MAX_QUEUED || s.bytes + bytes > MAX_QUEUED_BYTES {
            return Offer::Full;
        }
        s.bytes += bytes;
        s.ids.insert(id);
        s.queue.push_back(job);
        drop(s);
        self.wake.notify_one();
        Offer::Queued
    }

    /// Stops taking jobs and forgets those not started; returns how many.
    pub(crate) fn close(&self) -> usize {
        let mut s = self.lock();
        s.closed = true;
        let dropped = s.queue.len();
        let State {
            queue, ids, bytes, ..
        } = &mut *s;
        for j in queue.drain(..) {
            ids.remove(j.spec.id.as_str());
        }
        *bytes = 0;
        drop(s);
        self.wake.notify_one();
        dropped
    }

    pub(crate) fn running(&self) -> usize {
        self.lock().running
    }

    /// The next job to start, counted as running.
    async fn next(&self) -> Option<Job> {
        loop {
            {
                let mut s = self.lock();
                if let Some(j) = s.queue.pop_front() {
                    s.bytes -= j.bytes();
                    s.running += 1;
                    return Some(j);
                }
                if s.closed {
                    return None;
                }
            }
            self.wake.notified().await;
        }
    }

    /// Resolves once no job is running (at once if none is).
    pub(crate) async fn idle(&self) {
        loop {
            let finished = self.finished.notified();
            tokio::pin!(finished);
            // Registered before the count is read: a job finishing in
            // between still wakes this.
            finished.as_mut().enable();
            if self.running() == 0 {
                return;
            }
            finished.await;
        }
    }

    fn finished(&self, id: &str) {
        let mut s = self.lock();
        s.running -= 1;
        s.ids.remove(id);
        drop(s);
        self.finished.notify_waiters();
    }

    /// Starts jobs in arrival order, at most `slots` at once, until closed.
    /// Each report goes to the outbox, then `done` is told.
    pub(crate) async fn dispatch(
        self: Arc<Self>,
        runner: Arc<Runner>,
        outbox: Outbox,
        done: mpsc::Sender<()>,
    ) {
        let slots = Arc::new(Semaphore::new(self.slots));
        loop {
            let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let Some(job) = self.next().await else {
                return;
            };
            let (jobs, runner, outbox, done) = (
                Arc::clone(&self),
                Arc::clone(&runner),
                outbox.clone(),
                done.clone(),
            );
            tokio::spawn(async move {
                let id = job.spec.id.to_string();
                let dir = jobs.state_dir.clone();
                let report = tokio::task::spawn_blocking(move || start(&dir, &runner, &job)).await;
                match report {
                    Ok(Some(report)) => crate::handlers::job::store(outbox, report, done).await,
                    Ok(None) => {}
                    Err(e) => error!(job_id = %id, "job task failed: {e}"),
                }
                // The slot is free only once the report is on disk: a crash
                // loses at most `max_concurrent_jobs` started jobs, and a
                // full disk holds at most that many reports in memory.
                drop(permit);
                // Only now: a stopping agent waits for the report too.
                jobs.finished(&id);
            });
        }
    }
}

/// Marks the job started — durably — then runs it. A job whose marker
/// exists already is not run again; one whose marker cannot be written is
/// not run at all (it could run twice after a restart) and says why.
fn start(state_dir: &std::path::Path, runner: &Runner, job: &Job) -> Option<ExecutionReport> {
    let spec = &job.spec;
    match crate::seen::mark_started(state_dir, &spec.id) {
        Ok(true) => Some(runner.run(&spec.id, &spec.command, spec.timeout, job.forward.as_ref())),
        Ok(false) => {
            info!(job_id = %spec.id, "job started before: not run again");
            None
        }
        Err(e) => {
            warn!(job_id = %spec.id, "could not record the job's start, so it was not run: {e:#}");
            Some(runner.refused(
                &spec.id,
                &spec.command,
                cc_exec::EXIT_NOT_EXECUTABLE,
                &format!("not started: the agent could not record the start durably ({e:#})"),
            ))
        }
    }
}

/// Set once the drain time is over: running jobs are stopped.
pub(crate) type Cancel = Arc<AtomicBool>;

pub(crate) fn cancel_all(c: &Cancel) {
    c.store(true, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stopping agent's drain waits on this instead of polling: it
    /// resolves at once with nothing running, and only when the last
    /// running job has finished otherwise.
    #[tokio::test]
    async fn idle_resolves_when_the_last_running_job_finishes() {
        let dir = std::env::temp_dir().join(format!("cc-idle-{}", uuid::Uuid::new_v4()));
        let jobs = Arc::new(Jobs::new(dir, 2));
        tokio::time::timeout(std::time::Duration::from_secs(5), jobs.idle())
            .await
            .expect("nothing runs: idle at once");
        jobs.lock().running = 2;
        let waiter = tokio::spawn({
            let jobs = Arc::clone(&jobs);
            async move { jobs.idle().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        jobs.finished("a");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "one job still runs");
        jobs.finished("b");
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("idle once the last job finished")
            .expect("the waiter did not panic");
    }
}
