//! The socket: who may talk, and the closed set of requests.
//!
//! Before a byte is read, the peer's uid (SO_PEERCRED) must be the
//! configured `agent_user`'s or root's; anyone else is logged and
//! disconnected. Each class has its own slots (a compromised agent cannot
//! crowd out the cron daemon's scheduled runs); over them, the answer is
//! `busy`. Then exactly one request per connection, read through the
//! length-checked frame decoder within one deadline for the whole request
//! (a byte at a time buys nothing), decoded strictly, answered, logged,
//! closed.
//!
//! The request table — everything the helper will do, and nothing else:
//!
//! | request         | peer  | what it may do                                   | refused when                                   |
//! |-----------------|-------|--------------------------------------------------|------------------------------------------------|
//! | `status`        | both  | say the version, system mode, landlock mode and ABI | never                                       |
//! | `exec`          | agent | run one validated job as root, contained         | system mode off; invalid job; its signature does not hold (`trust.rs`); program not allowed |
//! | `write_cron`    | agent | replace `cron_file` and the state file with a signed list's valid entries | system mode off; invalid payload; its signature does not hold |
//! | `take_reports`  | agent | hand over kept reports of scheduled runs         | never                                          |
//! | `ack_reports`   | agent | forget the reports the agent has stored          | never                                          |
//! | `run_scheduled` | root  | run one entry of the installed signed list, contained; keep its report (a refusal too) | system mode off |
//!
//! The audit log holds only validated values: the job id once it parsed,
//! the full argv of every root run (quoted, escaped), every cron entry
//! written.

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use cc_proto::JobId;
use cc_proto::frame::{self, FrameDecoder, MAX_FRAME_LEN};
use cc_proto::helper::{
    self, CronWritten, HelperRequest, HelperResponse, HelperStatus, Refusal, RefusalCode,
};
use cc_proto::wire::{ExecutionReport, JobSpec};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::{Gid, Uid, User, chown};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::exec::refusal;
use crate::reports::Reports;
use crate::sandbox::Plan;

/// Everything a request may read from the peer, header to last byte.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests served at once, per peer class.
const AGENT_SLOTS: usize = 64;
const ROOT_SLOTS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    Agent,
    Root,
}

#[derive(Debug)]
struct Helper {
    cfg: Config,
    plan: Arc<Plan>,
    trust: crate::trust::Trust,
    reports: Reports,
    /// Scheduled entries running now: a second run of one is skipped.
    running: Mutex<HashSet<String>>,
    slots: [AtomicUsize; 2],
    /// Held across a cron list's generation check and its write.
    cron_writes: Mutex<()>,
}

pub(crate) fn serve(cfg: Config) -> Result<()> {
    let agent = User::from_name(&cfg.agent_user)?
        .with_context(|| format!("agent_user {:?} does not exist", cfg.agent_user))?;
    // Not dumpable: no core file, no ptrace by the agent's uid.
    nix::sys::prctl::set_dumpable(false).context("making the helper not dumpable")?;
    let listener = match crate::sys::systemd_socket()? {
        Some(l) => {
            info!("using the socket passed by systemd");
            l
        }
        None => bind(&cfg, agent.gid)?,
    };
    if !cfg.system_mode {
        if let Err(e) = crate::cronfile::remove_all(&cfg) {
            warn!(
                "system mode is off, but the old system cron entries could not be removed: {e:#}"
            );
        }
    }
    let plan = Arc::new(crate::sandbox::Plan::new(&cfg.sandbox)?);
    info!(
        socket = %cfg.socket.display(),
        agent_user = %cfg.agent_user,
        system_mode = cfg.system_mode,
        landlock_abi = plan.landlock_abi,
        cgroups = %match &plan.cgroups.tree {
            Ok(crate::cgroup::Tree::V2(p)) => format!("v2 under {}", p.display()),
            Ok(crate::cgroup::Tree::V1 { pids, memory }) => format!("v1 under {} and {}", pids.display(), memory.display()),
            Err(why) => format!("none ({why})"),
        },
        refusing = plan.refusal.as_deref().unwrap_or(""),
        "cc-privhelper serving"
    );
    // SIGHUP re-reads the trusted keys; blocked here, before any thread
    // exists, so only the waiting thread below takes it.
    let hup = nix::sys::signal::SigSet::from(nix::sys::signal::Signal::SIGHUP);
    hup.thread_block()?;
    let helper = Arc::new(Helper {
        reports: Reports::open(&cfg.state_dir)?,
        trust: crate::trust::Trust::new(&cfg)?,
        cfg,
        plan,
        running: Mutex::new(HashSet::new()),
        slots: [AtomicUsize::new(0), AtomicUsize::new(0)],
        cron_writes: Mutex::new(()),
    });
    let reloader = Arc::clone(&helper);
    std::thread::Builder::new().name("sighup".into()).spawn(move || {
        while hup.wait().is_ok() {
            reloader.trust.reload(&reloader.cfg);
        }
    })?;
    let agent_uid = agent.uid.as_raw();
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                warn!("accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let Ok(cred) = getsockopt(&stream, PeerCredentials) else {
            warn!("refused: no peer credentials");
            continue;
        };
        let (uid, pid) = (cred.uid(), cred.pid());
        let peer = match uid {
            u if u == agent_uid => Peer::Agent,
            0 => Peer::Root,
            _ => {
                turned_away(uid, pid, "peer is neither agent_user nor root");
                continue;
            }
        };
        let (slot, cap) = match peer {
            Peer::Agent => (&helper.slots[0], AGENT_SLOTS),
            Peer::Root => (&helper.slots[1], ROOT_SLOTS),
        };
        if slot.fetch_add(1, Ordering::AcqRel) >= cap {
            slot.fetch_sub(1, Ordering::AcqRel);
            turned_away(uid, pid, "busy");
            let _ = stream.set_nonblocking(true);
            respond(
                &stream,
                &refused(
                    RefusalCode::Busy,
                    "the helper is serving as many requests as it will; try again",
                ),
            );
            continue;
        }
        let h = Arc::clone(&helper);
        let spawned = std::thread::Builder::new().name("request".into()).spawn(move || {
            handle(stream, &h, peer, uid, pid);
            let i = usize::from(peer == Peer::Root);
            h.slots[i].fetch_sub(1, Ordering::AcqRel);
        });
        if let Err(e) = spawned {
            // The stream went with the closure: the peer sees it close.
            slot.fetch_sub(1, Ordering::AcqRel);
            warn!(peer_uid = uid, peer_pid = pid, "no thread for a request: {e}");
        }
    }
    Ok(())
}

/// Requests refused before or while being read, and refused reads: their
/// audit lines, 50 in 10 s at most.
static TURNED_AWAY: cc_proto::logline::LogBudget =
    cc_proto::logline::LogBudget::new(std::time::Duration::from_secs(10), 50);

/// The audit line of a connection refused before its request was read.
fn turned_away(peer_uid: u32, peer_pid: i32, reason: &str) {
    if let Some(left_out) = TURNED_AWAY.allow() {
        warn!(peer_uid, peer_pid, decision = "refused", reason, left_out, "helper request");
    }
}

/// Socket directory 0750 and socket 0660, both root:<agent's group>.
fn bind(cfg: &Config, agent_gid: Gid) -> Result<UnixListener> {
    let dir = cfg.socket.parent().context("socket path has no directory")?;
    std::fs::DirBuilder::new().recursive(true).mode(0o750).create(dir)?;
    chown(dir, Some(Uid::from_raw(0)), Some(agent_gid))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))?;
    let _ = std::fs::remove_file(&cfg.socket);
    let listener = UnixListener::bind(&cfg.socket)
        .with_context(|| format!("binding {}", cfg.socket.display()))?;
    chown(&cfg.socket, Some(Uid::from_raw(0)), Some(agent_gid))?;
    std::fs::set_permissions(&cfg.socket, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

fn respond(mut stream: &UnixStream, response: &HelperResponse) {
    if let Ok(body) = helper::encode(response) {
        if let Ok(framed) = frame::encode_frame(&body, MAX_FRAME_LEN) {
            let _ = stream.write_all(&framed);
        }
    }
}

/// What the audit line says about a request besides its outcome, and what
/// its job left to release once the answer is sent.
#[derive(Default)]
struct Audit {
    job_id: Option<JobId>,
    argv: Option<String>,
    /// The name of the key whose signature made the work.
    key: Option<String>,
    /// The signed statement's nonce (ad-hoc root jobs).
    nonce: Option<String>,
    leftovers: crate::exec::Leftovers,
}

fn handle(mut stream: UnixStream, h: &Helper, peer: Peer, uid: u32, pid: i32) {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let mut audit = Audit::default();
    let (response, op) = match read_request(&mut stream) {
        Ok(req) => {
            let op = req.operation();
            let response = answer(h, peer, req, &mut audit).unwrap_or_else(HelperResponse::Refused);
            (response, op)
        }
        Err(e) => (refused(RefusalCode::BadRequest, format!("{e:#}")), "invalid"),
    };
    let (decision, reason) = match &response {
        HelperResponse::Refused(r) => ("refused", r.message.as_str()),
        _ => ("done", ""),
    };
    let job_id = audit.job_id.as_ref().map(JobId::as_str).unwrap_or("");
    let argv = audit.argv.as_deref().unwrap_or("");
    let key = audit.key.as_deref().unwrap_or("");
    // Root work is audited whole. A read that went through (the agent
    // asks for reports every second) is at debug; refusals and invalid
    // requests, which the agent's uid can make at will, at a bounded rate.
    let read = matches!(op, "status" | "take_reports" | "ack_reports");
    if read && decision == "done" {
        debug!(peer_uid = uid, peer_pid = pid, op, decision, "helper request");
    } else if !read && op != "invalid" {
        info!(peer_uid = uid, peer_pid = pid, op, job_id, argv, key, decision, reason = ?reason, "helper request");
    } else if let Some(left_out) = TURNED_AWAY.allow() {
        info!(peer_uid = uid, peer_pid = pid, op, decision, reason = ?reason, left_out, "helper request");
    }
    respond(&stream, &response);
    drop(stream);
    if audit.argv.is_some() {
        drop(audit.leftovers);
        // A job used a cgroup: make the next one now, not on its time.
        h.plan.cgroups.replenish();
    }
}

/// One request: one frame, decoded strictly, within [`REQUEST_DEADLINE`]
/// for the whole of it.
fn read_request(stream: &mut UnixStream) -> Result<HelperRequest> {
    let body = read_frame(stream, Some(Instant::now() + REQUEST_DEADLINE))?;
    Ok(helper::decode_strict(&body)?)
}

/// One frame, through the same decoder the fuzz target exercises (never a
/// byte past its end); with a deadline, all of it by then.
pub(crate) fn read_frame(stream: &mut UnixStream, deadline: Option<Instant>) -> Result<Vec<u8>> {
    let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
    let mut buf = [0u8; 16 * 1024];
    let late = || anyhow!("no whole frame within {} s", REQUEST_DEADLINE.as_secs());
    loop {
        if let Some(left) = deadline.map(|d| d.saturating_duration_since(Instant::now())) {
            ensure!(!left.is_zero(), late());
            stream.set_read_timeout(Some(left))?;
        }
        let want = decoder.wanted().clamp(1, buf.len());
        let n = match stream.read(&mut buf[..want]) {
            Ok(0) => bail!("the peer closed before a whole frame"),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(late());
            }
            Err(e) => return Err(e).context("reading a frame"),
        };
        if let (_, Some(body)) = decoder.feed(&buf[..n])? {
            return Ok(body);
        }
    }
}

/// A refusal with this code, for `?`.
fn no(code: RefusalCode) -> impl Fn(&dyn std::fmt::Display) -> Refusal {
    move |why| refusal(code, why.to_string())
}

/// The request table, in code.
fn answer(
    h: &Helper,
    peer: Peer,
    req: HelperRequest,
    audit: &mut Audit,
) -> Result<HelperResponse, Refusal> {
    let cfg = &h.cfg;
    let allowed = match (&req, peer) {
        (HelperRequest::Status, _) | (HelperRequest::RunScheduled(_), Peer::Root) => true,
        (HelperRequest::RunScheduled(_), Peer::Agent) | (_, Peer::Root) => false,
        (_, Peer::Agent) => true,
    };
    if !allowed {
        let op = req.operation();
        return Err(refusal(
            RefusalCode::NotPermitted,
            format!("{op} is not a request this peer may make"),
        ));
    }
    let root_work = matches!(
        req,
        HelperRequest::Exec(_) | HelperRequest::WriteCron(_) | HelperRequest::RunScheduled(_)
    );
    if root_work && !cfg.system_mode {
        return Err(refusal(RefusalCode::SystemModeDisabled, DISABLED));
    }
    let invalid = no(RefusalCode::InvalidPayload);
    let unsigned = no(RefusalCode::SignatureRefused);
    Ok(match req {
        HelperRequest::Status => HelperResponse::Status(HelperStatus {
            version: env!("CARGO_PKG_VERSION").into(),
            system_mode: cfg.system_mode,
            landlock: cfg.sandbox.landlock.name().into(),
            landlock_abi: h.plan.landlock_abi,
        }),
        HelperRequest::Exec(e) => {
            let job = e.job().map_err(|e| invalid(&format!("execute_job: {e}")))?;
            let spec = job.validate().map_err(|e| invalid(&format!("execute_job: {e}")))?;
            audit.job_id = Some(spec.id.clone());
            let signed = cc_proto::helper::signed(e.signed.as_deref());
            // The key the envelope names, logged even when refused.
            audit.key = signed.as_ref().ok().map(|s| s.key.clone());
            let signer = h.trust.exec(signed, &job).map_err(|e| unsigned(&e))?;
            audit.key = Some(signer.key);
            audit.nonce = Some(signer.nonce);
            let durable = h.trust.sync();
            let report = run(h, &spec, audit);
            if let Err(e) = durable.wait() {
                warn!(job_id = %spec.id, "the nonce record may not be on disk: {e}");
            }
            HelperResponse::ExecResult(report?)
        }
        HelperRequest::WriteCron(w) => {
            // Read, compare and write in one critical section: two lists
            // sent together must not both pass the generation check and
            // land in the wrong order (a rollback).
            let _one_at_a_time = h.cron_writes.lock().unwrap_or_else(|e| e.into_inner());
            let installed = crate::cronfile::installed(cfg);
            let signed = cc_proto::helper::signed(w.signed.as_deref()).ok();
            audit.key = signed.as_ref().map(|s| s.key.clone());
            let (statement, key) = match installed
                .as_ref()
                .filter(|i| Some(&i.signed) == signed.as_ref())
            {
                // The listener pushes the list again on every connection:
                // the installed statement, checked again, nothing to write.
                Some(i) => {
                    let (s, _) = h.trust.installed(&i.signed).map_err(|e| unsigned(&e))?;
                    let (valid, rejected) = crate::cronfile::validate(&s.entries);
                    let installed = valid.iter().map(|j| j.id.to_string()).collect();
                    return Ok(HelperResponse::CronWritten(CronWritten { installed, rejected }));
                }
                None => {
                    let generation = installed.map_or(0, |s| s.generation);
                    let (s, signed, key) =
                        h.trust.cron(w.signed.as_deref(), generation).map_err(|e| unsigned(&e))?;
                    ((s, signed), key)
                }
            };
            audit.key = Some(key);
            h.trust
                .sync()
                .wait()
                .map_err(|e| refusal(RefusalCode::Internal, format!("recording the nonce: {e}")))?;
            let (statement, signed) = statement;
            if statement.entries.len() > cc_proto::wire::MAX_CRON_ENTRIES {
                return Err(invalid(&"too many cron entries"));
            }
            let state = crate::cronfile::State { generation: statement.generation, signed };
            let (installed, rejected) = crate::cronfile::write(cfg, &statement.entries, &state)
                .map_err(|e| refusal(RefusalCode::Internal, format!("{e:#}")))?;
            HelperResponse::CronWritten(CronWritten { installed, rejected })
        }
        HelperRequest::RunScheduled(r) => {
            let id = JobId::parse(&r.job_id).map_err(|e| invalid(&format!("job id: {e}")))?;
            audit.job_id = Some(id.clone());
            // Whatever happens now is a report: the operator sees a
            // scheduled run refused, not silence.
            let mut report = match crate::cronfile::load(cfg, &h.trust, &id) {
                Ok(job) => {
                    let wait =
                        cc_proto::wire::jitter_offset(&cfg.hostname, id.as_str(), job.jitter);
                    let spec = JobSpec { id, command: job.command, timeout: job.timeout };
                    scheduled(h, &spec, (job.jitter > 0).then_some(wait), audit)
                }
                Err(why) => {
                    let none = cc_proto::CommandLine::new("-", &[]).map_err(|e| invalid(&e))?;
                    not_run(&id, &none, &why, cc_exec::EXIT_NOT_EXECUTABLE)
                }
            };
            report.report_id = Some(scheduled_report_id());
            h.reports.put(&report).map_err(|e| {
                refusal(RefusalCode::Internal, format!("keeping the report: {e:#}"))
            })?;
            HelperResponse::ExecResult(report)
        }
        HelperRequest::TakeReports => HelperResponse::Reports(h.reports.take()),
        HelperRequest::AckReports(a) => HelperResponse::Acked(h.reports.ack(&a.report_ids)),
    })
}

/// The report of a scheduled run that did not start.
fn not_run(id: &JobId, command: &cc_proto::CommandLine, why: &str, code: i32) -> ExecutionReport {
    crate::exec::stamp(&cc_exec::refused(code, why), id, command)
}

/// Runs a scheduled entry unless its previous run still waits or goes on.
/// With a jitter, it first waits (`wait`: this host's offset) and the
/// report says how long (`waited_ms`). The entry is marked running before
/// the wait, as the agent takes its lock before it: a run fired while the
/// previous one waits is skipped. The wait holds no root slot: the
/// running set allows one waiting thread per entry, so waiting threads
/// are bounded by the installed list (`MAX_CRON_ENTRIES`), and sixteen
/// entries waiting out an hour's jitter do not turn the next runs away.
fn scheduled(h: &Helper, spec: &JobSpec, wait: Option<u64>, audit: &mut Audit) -> ExecutionReport {
    let running = |f: &dyn Fn(&mut HashSet<String>) -> bool| {
        f(&mut h.running.lock().unwrap_or_else(|e| e.into_inner()))
    };
    let (id, cmd, skipped) =
        (&spec.id, &spec.command, "skipped: the previous run is still running");
    if !running(&|r| r.insert(id.to_string())) {
        return not_run(id, cmd, skipped, EXIT_SKIPPED);
    }
    let waited = wait.map(|secs| {
        let (began, root) = (Instant::now(), &h.slots[1]);
        let released = root.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        std::thread::sleep(Duration::from_secs(secs));
        let _ = released.map(|_| root.fetch_add(1, Ordering::AcqRel));
        u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX)
    });
    let done = run(h, spec, audit)
        .unwrap_or_else(|r| not_run(id, cmd, &r.message, cc_exec::EXIT_NOT_EXECUTABLE));
    running(&|r| r.remove(id.as_str()));
    ExecutionReport { waited_ms: waited, ..done }
}

/// Exit code of a skipped scheduled run (EX_TEMPFAIL), as in user mode.
const EXIT_SKIPPED: i32 = 75;

/// Runs a validated job (ad hoc or scheduled), its argv in the audit line,
/// with an audit line of its own before it starts and after it ends.
fn run(h: &Helper, spec: &JobSpec, audit: &mut Audit) -> Result<ExecutionReport, Refusal> {
    audit.job_id = Some(spec.id.clone());
    let argv = spec.command.to_shell_line();
    audit.argv = Some(argv.clone());
    let (key, nonce) = (audit.key.as_deref().unwrap_or(""), audit.nonce.as_deref().unwrap_or(""));
    info!(job_id = %spec.id, key, nonce, argv = ?argv, timeout_secs = spec.timeout.duration().as_secs(), "root run started");
    let began = Instant::now();
    let outcome = crate::exec::run(&h.cfg, &h.plan, spec);
    let ms = began.elapsed().as_millis();
    let (mut report, leftovers) = match outcome {
        Ok(done) => done,
        Err(r) => {
            info!(job_id = %spec.id, duration_ms = ms, stopped_by = "refused", reason = ?r.message, "root run ended");
            return Err(r);
        }
    };
    let stopped_by = match report.exit_code {
        124 => "its timeout",
        126 | 127 => "not started",
        c if c > 128 => "a signal",
        _ => "its own exit",
    };
    info!(job_id = %spec.id, exit_code = report.exit_code, duration_ms = ms, stopped_by, "root run ended");
    audit.leftovers = leftovers;
    report.fit();
    Ok(report)
}

/// A report id for a scheduled run: unique per helper process and run, and
/// short whatever the job id (a `reportId` must fit the job-id rules, or
/// the listener refuses the report and it would stay in the agent's outbox).
fn scheduled_report_id() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let (ms, n) = (cc_proto::Timestamp::now().unix_millis(), N.fetch_add(1, Ordering::Relaxed));
    format!("sys-{ms}-{}-{n}", std::process::id())
}

const DISABLED: &str =
    "system mode is not enabled on this host (system_mode = false in cc-privhelper's config)";

fn refused(code: RefusalCode, message: impl Into<String>) -> HelperResponse {
    HelperResponse::Refused(refusal(code, message))
}

#[cfg(test)]
mod tests;
