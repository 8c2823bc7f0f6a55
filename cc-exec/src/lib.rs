//! `cc-exec`: how a job runs, shared by the agent (user mode) and the root
//! helper (system mode), so both capture and time out in exactly one way.
//!
//! - [`spawn`] starts a program directly (no shell) with a clean
//!   environment, stdin `/dev/null`, a working directory, in a new session
//!   (so its own process group), with nothing of ours open in it.
//! - [`supervise`] takes any such child with piped stdout and stderr, reads
//!   both with `poll(2)` into the shared [`OutputCollector`]s so the child
//!   never blocks on a full pipe, and enforces the timeout on the whole
//!   process group: SIGTERM, a grace period, SIGKILL.
//! - [`Finished::report`] turns the outcome into the spec's
//!   `execution_report`, exit codes as DESIGN.md says.
//!
//! Synchronous and small on purpose: the helper links it, and the helper has
//! no async runtime.

use std::fs::File;
use std::io::{self, ErrorKind, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cc_proto::output::{CapturedOutput, OutputCollector};
use cc_proto::wire::ExecutionReport;
use cc_proto::{CommandLine, JobId, Timestamp};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

mod phase;
mod sys;

use phase::{Action, Event, Phase, Plan, StopReason};

/// Pipe buffer asked for each stream.
const PIPE_SIZE: i32 = 1024 * 1024;
/// Bytes read per `read(2)` once a stream has filled a first, small read:
/// the collector copies only the last 128 KiB of a chunk into its tail ring,
/// so large chunks mean little copying.
const READ_CHUNK: usize = 1024 * 1024;
/// The first reads' buffer. Most jobs print little; zeroing a 1 MiB buffer
/// for each of them cost more than running `/bin/true`'s capture.
const FIRST_READ: usize = 16 * 1024;

/// Exit code for a timed-out job (as `timeout(1)`).
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit code for a job stopped because its runner was shutting down
/// (128 + SIGTERM).
pub const EXIT_STOPPED: i32 = 143;
/// Exit code when the program exists but cannot be executed.
pub const EXIT_NOT_EXECUTABLE: i32 = 126;
/// Exit code when the program was not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// Where and how to start a job.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The whole environment of the job; nothing else is inherited.
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
}

/// How long a job may run and how it is stopped.
#[derive(Debug, Clone)]
pub struct Limits {
    pub timeout: Duration,
    /// Between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// Bytes kept per stream.
    pub stream_cap: usize,
    /// Set by the caller to stop the job before its timeout (the agent's
    /// drain time ran out): it is stopped as at a timeout, and its report
    /// says why. Looked at whenever the supervisor wakes, at least once a
    /// second.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Limits {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            grace: Duration::from_secs(5),
            stream_cap: cc_proto::MAX_STREAM_BYTES,
            cancel: None,
        }
    }

    fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }
}

/// A job's outcome.
#[derive(Debug, Clone)]
pub struct Finished {
    pub exit_code: i32,
    pub stdout: CapturedOutput,
    pub stderr: CapturedOutput,
    pub started: Timestamp,
    pub duration: Duration,
    pub warnings: Vec<String>,
}

/// A started job: the process to wait for, its output pipes and, for a
/// job with a reaper ([`spawn`]), the reaper's status pipe.
#[derive(Debug)]
pub struct Started {
    pid: u32,
    /// std's handle when std started it; `None` for [`Started::from_raw`].
    child: Option<Child>,
    stdout: Option<File>,
    stderr: Option<File>,
    reaper: Option<File>,
}

impl Started {
    /// A job a caller started itself (the helper's contained jobs): `pid`
    /// is a child of this process not yet waited for, whose stdout and
    /// stderr are the write ends of these pipes. It leads its own session
    /// (the timeout signals its process group) and something other than a
    /// reaper ends what it leaves (the helper's PID namespace).
    pub fn from_raw(pid: u32, stdout: OwnedFd, stderr: OwnedFd) -> Self {
        Self {
            pid,
            child: None,
            stdout: Some(stdout.into()),
            stderr: Some(stderr.into()),
            reaper: None,
        }
    }

    fn from_child(mut child: Child, reaper: Option<File>) -> Self {
        Self {
            pid: child.id(),
            stdout: child.stdout.take().map(|p| OwnedFd::from(p).into()),
            stderr: child.stderr.take().map(|p| OwnedFd::from(p).into()),
            child: Some(child),
            reaper,
        }
    }

    /// The pid of the process [`supervise`] waits for.
    pub fn id(&self) -> u32 {
        self.pid
    }

    fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        match &mut self.child {
            Some(c) => c.try_wait().ok().flatten(),
            None => sys::try_wait(self.pid),
        }
    }

    fn kill(&mut self) {
        match &mut self.child {
            Some(c) => {
                let _ = c.kill();
            }
            None => {
                if let Ok(pid) = i32::try_from(self.pid) {
                    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
    }
}

/// Starts `command` under a reaper of its own (see `sys.rs`): the job leads
/// a new session, and whatever it leaves running — even in another
/// session — is killed when it ends or times out. A program that cannot be
/// started is not an error here: it is a finished job with exit code 127
/// or 126 and the reason in stderr, which is what the report must say.
pub fn spawn(
    command: &CommandLine,
    launch: &Launch,
    limits: &Limits,
) -> Result<Started, Box<Finished>> {
    let started = Timestamp::now();
    let clock = Instant::now();
    let fail = |e: &io::Error| Box::new(not_started(command, e, started, clock.elapsed()));
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| fail(&io::Error::from(e)))?;
    let mut cmd = Command::new(command.program());
    cmd.args(command.args())
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&launch.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    sys::prepare_reaped_child(&mut cmd, limits.grace, write);
    let child = cmd.spawn().map_err(|e| fail(&e))?;
    // The parent's copy of the write end went with `cmd`'s closure.
    drop(cmd);
    Ok(Started::from_child(child, Some(File::from(read))))
}

/// For a caller's own `pre_exec` (async-signal-safe: two system calls): a
/// new session and process group led by the child, and every descriptor
/// from 3 up close-on-exec.
pub fn child_session_and_cloexec() -> io::Result<()> {
    sys::session_and_cloexec()
}

fn not_started(
    command: &CommandLine,
    e: &io::Error,
    started: Timestamp,
    took: Duration,
) -> Finished {
    let (exit_code, why) = match e.kind() {
        ErrorKind::NotFound => (EXIT_NOT_FOUND, "not found"),
        ErrorKind::PermissionDenied => (EXIT_NOT_EXECUTABLE, "permission denied (not executable)"),
        _ => (EXIT_NOT_EXECUTABLE, "could not be started"),
    };
    let line = format!("{}: {why}: {e}", command.program());
    without_running(exit_code, &line, started, took, Vec::new())
}

/// The outcome of a job that never ran: `croncommander: LINE` on stderr.
fn without_running(
    exit_code: i32,
    line: &str,
    started: Timestamp,
    duration: Duration,
    warnings: Vec<String>,
) -> Finished {
    let mut stderr = OutputCollector::new(cc_proto::MAX_STREAM_BYTES);
    stderr.push(format!("croncommander: {line}\n").as_bytes());
    Finished {
        exit_code,
        stdout: OutputCollector::new(cc_proto::MAX_STREAM_BYTES).finish(),
        stderr: stderr.finish(),
        started,
        duration,
        warnings,
    }
}

/// How long past the grace a reaper gets to finish its own SIGKILL round.
const REAPER_SLACK: Duration = Duration::from_secs(2);

/// Reads the job's output and waits for it, within `limits`. It sleeps in
/// `poll(2)` on the pipes and a pidfd of the process, so it wakes only when
/// there is output, the process exits, or a deadline comes. What it sees
/// becomes [`phase::Event`]s; the [`Phase`] machine says what to do.
pub fn supervise(job: Started, limits: Limits) -> Finished {
    let mut job = Supervised::new(job, limits.stream_cap);
    let started = Timestamp::now();
    let clock = Instant::now();
    let plan = Plan {
        deadline: clock + limits.timeout,
        grace: limits.grace,
        // The reaper SIGKILLs what the job started after the grace itself.
        slack: if job.reaper.is_some() {
            REAPER_SLACK
        } else {
            Duration::ZERO
        },
        reaper: job.reaper.is_some(),
    };
    let exit_fd = sys::pidfd_open(job.child.id()).ok();
    let mut buf = vec![0u8; FIRST_READ];
    let mut status = None;
    let mut phase = Phase::Running;
    let mut reap_wait = Duration::from_micros(50);
    loop {
        if !phase.exited() {
            status = job.child.try_wait();
            if status.is_some() {
                phase = job.apply(phase, Event::ChildExited(Instant::now()), &plan);
            }
        }
        if job.out.done() && job.err.done() {
            phase = job.apply(phase, Event::OutputClosed, &plan);
        }
        if matches!(phase, Phase::Done { .. }) {
            break;
        }
        let now = Instant::now();
        while let Some(event) = phase.due(now, limits.cancelled(), &plan) {
            phase = job.apply(phase, event, &plan);
        }
        if matches!(phase, Phase::Done { .. }) {
            break;
        }
        // The next moment something must be done, whatever arrives first.
        let wait = phase
            .wake_at(&plan)
            .unwrap_or(now + Duration::from_secs(1))
            .saturating_duration_since(now)
            .clamp(Duration::from_millis(1), Duration::from_secs(1));
        if job.out.done() && job.err.done() && exit_fd.is_none() {
            // Only the reap is left and there is no pidfd to wait on: pipes
            // reach EOF a moment before the process can be reaped, so wait
            // in short, growing steps.
            std::thread::sleep(reap_wait.min(wait));
            reap_wait = (reap_wait * 2).min(Duration::from_millis(5));
            continue;
        }
        pump(&mut job.out, &mut job.err, exit_fd.as_ref(), wait, &mut buf);
    }
    job.finish(phase.stop(), status, &limits, started, clock.elapsed())
}

/// A job under supervision: what the [`Action`]s act on.
struct Supervised {
    child: Started,
    reaper: Option<ReaperStatus>,
    /// The job leads its own process group.
    pgid: Option<Pid>,
    out: Stream<File>,
    err: Stream<File>,
    warnings: Vec<String>,
}

impl Supervised {
    fn new(mut child: Started, cap: usize) -> Self {
        Self {
            reaper: child.reaper.take().map(ReaperStatus::new),
            pgid: i32::try_from(child.id()).map(Pid::from_raw).ok(),
            out: Stream::new(child.stdout.take(), cap),
            err: Stream::new(child.stderr.take(), cap),
            child,
            warnings: Vec::new(),
        }
    }

    /// Feeds `event` to the machine and does what it says.
    fn apply(&mut self, phase: Phase, event: Event, plan: &Plan) -> Phase {
        let (next, actions) = phase.on(event, plan);
        for action in actions {
            self.act(*action);
        }
        next
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::TermGroup => signal_group(self.pgid, Signal::SIGTERM),
            Action::KillAll => {
                signal_group(self.pgid, Signal::SIGKILL);
                if let Some(job) = self.reaper.as_mut().and_then(ReaperStatus::job_pid) {
                    signal_group(Some(job), Signal::SIGKILL);
                }
                self.child.kill();
            }
            // The main process is gone but something it started still
            // holds a pipe open: end the group.
            Action::KillGroup => signal_group(self.pgid, Signal::SIGKILL),
            Action::AbandonOutput => {
                self.out.abandon();
                self.err.abandon();
            }
            Action::Warn(line) => self.warnings.push(line.to_owned()),
        }
    }

    /// The outcome, once the process is reaped and the pipes are closed.
    fn finish(
        mut self,
        stop: Option<StopReason>,
        status: Option<std::process::ExitStatus>,
        limits: &Limits,
        started: Timestamp,
        duration: Duration,
    ) -> Finished {
        let warnings = &mut self.warnings;
        let main_status = self.reaper.as_mut().and_then(ReaperStatus::finish);
        if let Some((_, n)) = main_status {
            if n > 0 {
                warnings.push(format!(
                    "{n} processes the job left running were killed when it ended"
                ));
            }
        } else if self.reaper.is_some() {
            warnings.push(
                "the job's reaper ended without a status; the exit code is the reaper's".to_owned(),
            );
        }
        let exit_code = match stop {
            Some(StopReason::Cancelled) => {
                warnings.push(format!(
                    "stopped after {} s: the agent was shutting down and its drain time ran out; the job and everything it started were sent SIGTERM, then SIGKILL after {} s",
                    duration.as_secs(),
                    limits.grace.as_secs()
                ));
                EXIT_STOPPED
            }
            Some(StopReason::Timeout) => {
                warnings.push(format!(
                    "timed out after {} s: the job and everything it started were sent SIGTERM, then SIGKILL after {} s",
                    limits.timeout.as_secs(),
                    limits.grace.as_secs()
                ));
                EXIT_TIMEOUT
            }
            None => match (main_status, status) {
                (Some((raw, _)), _) => code_of(std::process::ExitStatus::from_raw(raw)),
                (None, Some(s)) => code_of(s),
                (None, None) => EXIT_NOT_EXECUTABLE,
            },
        };
        let stdout = self.out.finish();
        let stderr = self.err.finish();
        for (name, s) in [("stdout", &stdout), ("stderr", &stderr)] {
            if s.dropped_bytes > 0 {
                warnings.push(format!(
                    "{name}: {} of {} bytes dropped (first and last {} KiB kept)",
                    s.dropped_bytes,
                    s.total_bytes,
                    limits.stream_cap / 2048
                ));
            }
        }
        Finished {
            exit_code,
            stdout,
            stderr,
            started,
            duration,
            warnings: self.warnings,
        }
    }
}

/// A wait status as an exit code: the code, or 128 + the signal.
fn code_of(s: std::process::ExitStatus) -> i32 {
    s.code()
        .or_else(|| s.signal().map(|n| 128 + n))
        .unwrap_or(EXIT_NOT_EXECUTABLE)
}

/// The reaper's status pipe: the job's pid first, the job's wait status and
/// the number of leftovers killed last.
#[derive(Debug)]
struct ReaperStatus {
    pipe: std::fs::File,
    got: Vec<u8>,
}

impl ReaperStatus {
    fn new(pipe: std::fs::File) -> Self {
        Self {
            pipe,
            got: Vec::with_capacity(sys::STATUS_LEN),
        }
    }

    /// Reads what is there without waiting (the reaper may still run).
    fn job_pid(&mut self) -> Option<Pid> {
        if self.got.len() < 4 {
            let _ = nix::fcntl::fcntl(
                self.pipe.as_fd(),
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            );
            let mut b = [0u8; sys::STATUS_LEN];
            if let Ok(n) = self.pipe.read(&mut b[..4 - self.got.len()]) {
                self.got.extend_from_slice(&b[..n]);
            }
        }
        let pid = i32::from_ne_bytes(self.got.get(..4)?.try_into().ok()?);
        (pid > 0).then(|| Pid::from_raw(pid))
    }

    /// After the reaper exited: (the job's raw wait status, leftovers).
    fn finish(&mut self) -> Option<(i32, u32)> {
        let _ = nix::fcntl::fcntl(
            self.pipe.as_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        );
        let mut b = [0u8; sys::STATUS_LEN];
        while self.got.len() < sys::STATUS_LEN {
            match self.pipe.read(&mut b[..sys::STATUS_LEN - self.got.len()]) {
                Ok(0) | Err(_) => break,
                Ok(n) => self.got.extend_from_slice(&b[..n]),
            }
        }
        let raw = i32::from_ne_bytes(self.got.get(4..8)?.try_into().ok()?);
        let leftovers = u32::from_ne_bytes(self.got.get(8..12)?.try_into().ok()?);
        (raw >= 0).then_some((raw, leftovers))
    }
}

fn signal_group(pgid: Option<Pid>, signal: Signal) {
    if let Some(pgid) = pgid {
        // ESRCH (group already gone) is fine.
        let _ = killpg(pgid, signal);
    }
}

/// One captured stream: the pipe until EOF, and what was kept.
struct Stream<R> {
    pipe: Option<R>,
    collector: OutputCollector,
    /// The pipe was enlarged (once a read found it full).
    grown: bool,
}

impl<R: Read + AsFd> Stream<R> {
    fn new(pipe: Option<R>, cap: usize) -> Self {
        Self {
            pipe,
            collector: OutputCollector::new(cap),
            grown: false,
        }
    }

    fn done(&self) -> bool {
        self.pipe.is_none()
    }

    /// Stops reading: whatever still holds the pipe writes to no one.
    fn abandon(&mut self) {
        self.pipe = None;
    }

    /// Reads what is there; EOF or an error closes the stream. While reads
    /// fill the buffer (a fast writer), reads again without polling, a few
    /// times, so the other stream still gets its turn.
    fn read_some(&mut self, buf: &mut Vec<u8>) {
        for _ in 0..8 {
            let Some(pipe) = &mut self.pipe else { return };
            match pipe.read(buf) {
                Ok(0) => self.pipe = None,
                Ok(n) => {
                    self.collector.push(&buf[..n]);
                    if n == buf.len() {
                        if !self.grown {
                            // A chatty job: a larger pipe means fewer
                            // wake-ups (best effort: the kernel caps it at
                            // fs.pipe-max-size for unprivileged users). Not
                            // done up front: most jobs print little, and
                            // the resize costs more than `/bin/true`'s run.
                            self.grown = true;
                            let _ = nix::fcntl::fcntl(
                                pipe.as_fd(),
                                nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE),
                            );
                        }
                        if buf.len() < READ_CHUNK {
                            buf.resize(READ_CHUNK, 0);
                        }
                        continue;
                    }
                }
                Err(e)
                    if e.kind() == ErrorKind::Interrupted || e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => self.pipe = None,
            }
            return;
        }
    }

    fn finish(self) -> CapturedOutput {
        self.collector.finish()
    }
}

/// Waits up to `wait` for either pipe or the process's exit, then reads
/// from each ready pipe.
fn pump(
    out: &mut Stream<File>,
    err: &mut Stream<File>,
    exit: Option<&std::os::fd::OwnedFd>,
    wait: Duration,
    buf: &mut Vec<u8>,
) {
    let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
    let (out_ready, err_ready) = {
        let open = [
            out.pipe.as_ref().map(AsFd::as_fd),
            err.pipe.as_ref().map(AsFd::as_fd),
        ];
        let mut fds: Vec<PollFd<'_>> = open
            .iter()
            .flatten()
            .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
            .collect();
        if let Some(e) = exit {
            fds.push(PollFd::new(e.as_fd(), PollFlags::POLLIN));
        }
        if fds.is_empty() {
            std::thread::sleep(wait.min(Duration::from_millis(5)));
            return;
        }
        if poll(&mut fds, timeout).is_err() {
            return;
        }
        // `fds` holds the open pipes in order: stdout's first if open.
        let mut ready = fds
            .iter()
            .map(|p| p.revents().is_some_and(|r| !r.is_empty()));
        let out_ready = open[0].is_some() && ready.next().unwrap_or(false);
        let err_ready = open[1].is_some() && ready.next().unwrap_or(false);
        (out_ready, err_ready)
    };
    if out_ready {
        out.read_some(buf);
    }
    if err_ready {
        err.read_some(buf);
    }
}

impl Finished {
    /// The spec's `execution_report` for this run.
    pub fn report(
        &self,
        job_id: &JobId,
        command: &CommandLine,
        uid: u32,
        user: &str,
        extra_warning: Option<&str>,
        report_id: Option<String>,
    ) -> ExecutionReport {
        let warnings: Vec<&str> = extra_warning
            .into_iter()
            .chain(self.warnings.iter().map(String::as_str))
            .collect();
        ExecutionReport {
            job_id: job_id.to_string(),
            command: command.to_shell_line(),
            exit_code: self.exit_code,
            stdout: self.stdout.text.clone(),
            stderr: self.stderr.text.clone(),
            start_time: self.started.to_string(),
            duration_ms: u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX),
            executing_uid: uid,
            executing_user: user.to_owned(),
            warning: (!warnings.is_empty()).then(|| warnings.join("; ")),
            report_id,
            waited_ms: None,
        }
    }
}

/// A job that never started for a reason of ours (refused, invalid): the
/// report still goes back, with a non-zero exit code and the reason.
pub fn refused(exit_code: i32, reason: &str) -> Finished {
    without_running(
        exit_code,
        reason,
        Timestamp::now(),
        Duration::ZERO,
        vec![reason.to_owned()],
    )
}

/// Runs `command` to the end: [`spawn`] then [`supervise`].
pub fn run(command: &CommandLine, launch: &Launch, limits: Limits) -> Finished {
    match spawn(command, launch, &limits) {
        Ok(child) => supervise(child, limits),
        Err(finished) => *finished,
    }
}
