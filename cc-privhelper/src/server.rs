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
        cgroups = ?plan.cgroups.tree,
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
                Ok(command) => scheduled(
                    h,
                    &JobSpec { id, command, timeout: crate::cronfile::CRON_TIMEOUT },
                    audit,
                ),
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

/// Runs a scheduled entry unless its previous run still goes on.
fn scheduled(h: &Helper, spec: &JobSpec, audit: &mut Audit) -> ExecutionReport {
    let running = |f: &dyn Fn(&mut HashSet<String>) -> bool| {
        f(&mut h.running.lock().unwrap_or_else(|e| e.into_inner()))
    };
    let (id, cmd) = (&spec.id, &spec.command);
    if !running(&|r| r.insert(id.to_string())) {
        return not_run(
            id,
            cmd,
            "skipped: the previous run of this job is still running",
            EXIT_SKIPPED,
        );
    }
    let done = run(h, spec, audit)
        .unwrap_or_else(|r| not_run(id, cmd, &r.message, cc_exec::EXIT_NOT_EXECUTABLE));
    running(&|r| r.remove(id.as_str()));
    done
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
mod tests {
    use std::path::PathBuf;

    use cc_proto::Timestamp;
    use cc_proto::helper::{AckReportsRequest, ExecRequest, RunScheduledRequest, WriteCronRequest};
    use cc_proto::sign::{self, CRON_LABEL, CronStatement, EXEC_LABEL, ExecStatement, PublicKey};
    use cc_proto::wire::CronEntry;

    use super::*;
    use crate::config::{Allowed, Enforce, Rlimits, Sandbox};

    fn key() -> ring::signature::Ed25519KeyPair {
        ring::signature::Ed25519KeyPair::from_seed_unchecked(&[9u8; 32]).unwrap()
    }

    /// A helper over a fresh state directory, trusting [`key`] for host
    /// `web1`, whose sandbox plan refuses to start any job (nothing runs in
    /// a unit test: a job that gets that far comes back "not started").
    struct Fixture {
        h: Helper,
        dir: PathBuf,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn fixture(name: &str, system_mode: bool, allowed: Option<Vec<Allowed>>) -> Fixture {
        let dir = std::env::temp_dir().join(format!("cc-server-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("cron")).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cfg = Config {
            socket: dir.join("s"),
            agent_user: "root".into(),
            system_mode,
            cron_file: dir.join("cron/croncommander"),
            state_dir: dir.join("state"),
            allowed_commands: allowed,
            trusted_keys: vec![
                PublicKey::parse(&format!("{} ops", sign::public_id(&key()))).unwrap(),
            ],
            hostname: "web1".into(),
            sandbox: Sandbox {
                keep_capabilities: vec![],
                write_paths: vec![],
                landlock: Enforce::Required,
                limits: Enforce::Required,
                max_processes: 16,
                max_memory_bytes: 64 << 20,
                tcp_bind_ports: vec![],
                tcp_connect_ports: None,
                rlimits: Rlimits::default(),
            },
            path: "/etc/croncommander/helper.toml".into(),
        };
        std::fs::DirBuilder::new().mode(0o700).create(&cfg.state_dir).unwrap();
        let plan = Plan {
            ruleset: None,
            landlock_abi: 0,
            drop_caps: vec![],
            rlimits: [
                (nix::sys::resource::Resource::RLIMIT_NOFILE, 1024),
                (nix::sys::resource::Resource::RLIMIT_CORE, 0),
            ],
            write_paths: vec![],
            cgroups: crate::cgroup::Cgroups::detect(16, 64 << 20),
            max_processes: 16,
            max_memory: 64 << 20,
            refusal: Some("nothing runs in a unit test".into()),
            warning: None,
            seccomp: crate::sandbox::job_filters().unwrap(),
        };
        let h = Helper {
            reports: Reports::open(&cfg.state_dir).unwrap(),
            trust: crate::trust::Trust::new(&cfg).unwrap(),
            cfg,
            plan: Arc::new(plan),
            running: Mutex::new(HashSet::new()),
            slots: [AtomicUsize::new(0), AtomicUsize::new(0)],
            cron_writes: Mutex::new(()),
        };
        Fixture { h, dir }
    }

    fn ask(f: &Fixture, peer: Peer, req: HelperRequest) -> Result<HelperResponse, Refusal> {
        answer(&f.h, peer, req, &mut Audit::default())
    }

    fn code(r: Result<HelperResponse, Refusal>) -> RefusalCode {
        match r {
            Err(refusal) => refusal.code,
            Ok(other) => panic!("not refused: {other:?}"),
        }
    }

    fn report(r: Result<HelperResponse, Refusal>) -> ExecutionReport {
        match r {
            Ok(HelperResponse::ExecResult(report)) => report,
            other => panic!("no report: {other:?}"),
        }
    }

    /// A signed `exec` of `/bin/true` for `host`, nonce `n`.
    fn exec(host: &str, n: u8) -> HelperRequest {
        let job = r#"{"jobId":"j1","command":"/bin/true","args":["-x"],"timeout":60}"#;
        let (not_before, expires_at) = sign::window(Timestamp::now(), 600);
        let statement = ExecStatement {
            host: host.into(),
            job_id: "j1".into(),
            program: "/bin/true".into(),
            args: vec!["-x".into()],
            timeout: 60,
            not_before,
            expires_at,
            nonce: sign::nonce([n; 16]),
        };
        let signed = sign::sign(&statement, EXEC_LABEL, &key()).unwrap();
        HelperRequest::Exec(ExecRequest {
            execute_job: job.into(),
            signed: Some(serde_json::to_string(&signed).unwrap()),
        })
    }

    fn entry(id: &str) -> CronEntry {
        CronEntry { id: id.into(), schedule: "@daily".into(), command: "/bin/true -x".into() }
    }

    /// A signed `write_cron` of `entries`, generation `generation`.
    fn cron(entries: Vec<CronEntry>, generation: u64) -> WriteCronRequest {
        let (not_before, expires_at) = sign::window(Timestamp::now(), 600);
        let statement = CronStatement {
            host: "web1".into(),
            generation,
            entries,
            not_before,
            expires_at,
            nonce: sign::nonce([generation as u8; 16]),
        };
        let signed = sign::sign(&statement, CRON_LABEL, &key()).unwrap();
        WriteCronRequest {
            cron_refresh: "[]".into(),
            signed: Some(serde_json::to_string(&signed).unwrap()),
        }
    }

    fn run_scheduled(id: &str) -> HelperRequest {
        HelperRequest::RunScheduled(RunScheduledRequest { job_id: id.into() })
    }

    /// Who may ask what: the agent anything but `run_scheduled`, root only
    /// that and `status`.
    #[test]
    fn the_request_table_refuses_what_a_peer_may_not_ask() {
        let f = fixture("table", true, None);
        assert!(matches!(
            ask(&f, Peer::Agent, HelperRequest::Status),
            Ok(HelperResponse::Status(_))
        ));
        assert!(matches!(
            ask(&f, Peer::Root, HelperRequest::Status),
            Ok(HelperResponse::Status(_))
        ));
        let Err(r) = ask(&f, Peer::Agent, run_scheduled("daily")) else { panic!() };
        assert_eq!(r.code, RefusalCode::NotPermitted);
        assert_eq!(r.message, "run_scheduled is not a request this peer may make");
        for req in [
            exec("web1", 1),
            HelperRequest::WriteCron(cron(vec![], 1)),
            HelperRequest::TakeReports,
            HelperRequest::AckReports(AckReportsRequest { report_ids: vec![] }),
        ] {
            assert_eq!(code(ask(&f, Peer::Root, req)), RefusalCode::NotPermitted);
        }
        // Root's run_scheduled is answered: a report of an entry not found.
        let r = report(ask(&f, Peer::Root, run_scheduled("daily")));
        assert!(r.stderr.contains("no readable, root-owned cron state file"), "{r:?}");
        assert!(matches!(
            ask(&f, Peer::Agent, HelperRequest::TakeReports),
            Ok(HelperResponse::Reports(v)) if v.len() == 1
        ));
    }

    /// With system mode off, nothing that makes root work is done; the
    /// rest still is.
    #[test]
    fn system_mode_off_refuses_root_work_only() {
        let f = fixture("off", false, None);
        assert_eq!(code(ask(&f, Peer::Agent, exec("web1", 1))), RefusalCode::SystemModeDisabled);
        assert_eq!(
            code(ask(&f, Peer::Agent, HelperRequest::WriteCron(cron(vec![entry("a")], 1)))),
            RefusalCode::SystemModeDisabled
        );
        assert_eq!(code(ask(&f, Peer::Root, run_scheduled("a"))), RefusalCode::SystemModeDisabled);
        assert!(matches!(
            ask(&f, Peer::Agent, HelperRequest::TakeReports),
            Ok(HelperResponse::Reports(v)) if v.is_empty()
        ));
        assert!(matches!(
            ask(
                &f,
                Peer::Agent,
                HelperRequest::AckReports(AckReportsRequest { report_ids: vec!["x".into()] })
            ),
            Ok(HelperResponse::Acked(0))
        ));
        let Ok(HelperResponse::Status(s)) = ask(&f, Peer::Agent, HelperRequest::Status) else {
            panic!()
        };
        assert!(!s.system_mode);
        assert_eq!(s.landlock, "required");
    }

    #[test]
    fn exec_refuses_invalid_unsigned_foreign_and_unlisted_jobs() {
        let f = fixture("exec", true, None);
        let bad = HelperRequest::Exec(ExecRequest {
            execute_job: r#"{"jobId":"../x","command":"/bin/true"}"#.into(),
            signed: None,
        });
        assert_eq!(code(ask(&f, Peer::Agent, bad)), RefusalCode::InvalidPayload);
        let garbled = HelperRequest::Exec(ExecRequest { execute_job: "{".into(), signed: None });
        assert_eq!(code(ask(&f, Peer::Agent, garbled)), RefusalCode::InvalidPayload);
        let unsigned = HelperRequest::Exec(ExecRequest {
            execute_job: r#"{"jobId":"j1","command":"/bin/true"}"#.into(),
            signed: None,
        });
        assert_eq!(code(ask(&f, Peer::Agent, unsigned)), RefusalCode::SignatureRefused);
        assert_eq!(code(ask(&f, Peer::Agent, exec("web2", 2))), RefusalCode::SignatureRefused);
        // Signed and allowed: it gets as far as the sandbox plan, which
        // refuses to start it; the report is the helper's own.
        let mut audit = Audit::default();
        let Ok(HelperResponse::ExecResult(r)) =
            answer(&f.h, Peer::Agent, exec("web1", 3), &mut audit)
        else {
            panic!()
        };
        assert_eq!((r.job_id.as_str(), r.exit_code), ("j1", cc_exec::EXIT_NOT_EXECUTABLE));
        assert_eq!(r.command, "/bin/true -x");
        assert!(r.stderr.contains("nothing runs in a unit test"), "{r:?}");
        assert_eq!((r.executing_uid, r.executing_user.as_str()), (0, "root"));
        assert_eq!(audit.argv.as_deref(), Some("/bin/true -x"));
        assert_eq!(audit.key.as_deref(), Some("ops"));
        // The same statement again is a replay.
        assert_eq!(code(ask(&f, Peer::Agent, exec("web1", 3))), RefusalCode::SignatureRefused);

        let only_id = vec![Allowed { path: "/usr/bin/id".into(), args: None }];
        let f = fixture("exec-allowed", true, Some(only_id));
        let Err(r) = ask(&f, Peer::Agent, exec("web1", 4)) else { panic!() };
        assert_eq!(r.code, RefusalCode::CommandNotAllowed);
        assert_eq!(r.message, "/bin/true is not in allowed_commands");
    }

    /// A signed list is written once (valid entries installed, the others
    /// rejected with why); sent again it is only checked; more than
    /// MAX_CRON_ENTRIES entries are refused, exactly that many are not.
    #[test]
    fn write_cron_installs_signed_lists_and_refuses_oversized_ones() {
        let f = fixture("cron", true, None);
        let bad = CronEntry { schedule: "61 * * * *".into(), ..entry("bad") };
        let first = cron(vec![entry("a"), bad, entry("a"), entry("b")], 1);
        let expect = |r: Result<HelperResponse, Refusal>| {
            let Ok(HelperResponse::CronWritten(w)) = r else { panic!("{r:?}") };
            assert_eq!(w.installed, ["a", "b"]);
            let reasons: Vec<(&str, &str)> =
                w.rejected.iter().map(|r| (r.id.as_str(), r.reason.as_str())).collect();
            assert_eq!(
                reasons,
                [("bad", "minute field \"61\": 61 is out of range 0-59"), ("a", "duplicate id")]
            );
        };
        expect(ask(&f, Peer::Agent, HelperRequest::WriteCron(first.clone())));
        let text = std::fs::read_to_string(&f.h.cfg.cron_file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], crate::cronfile::HEADER);
        let exe = std::env::current_exe().unwrap();
        assert_eq!(
            lines[3],
            format!(
                "@daily root {} cron-run --config /etc/croncommander/helper.toml a",
                exe.display()
            )
        );
        assert_eq!(lines.len(), 5, "{text}");
        let mode = std::fs::metadata(&f.h.cfg.cron_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        // Sent again (the listener does on every connection): the same
        // answer, nothing written.
        std::fs::remove_file(&f.h.cfg.cron_file).unwrap();
        expect(ask(&f, Peer::Agent, HelperRequest::WriteCron(first)));
        assert!(!f.h.cfg.cron_file.exists());

        let many = |n: usize| (0..n).map(|i| entry(&format!("e{i}"))).collect::<Vec<_>>();
        let max = cc_proto::wire::MAX_CRON_ENTRIES;
        let Err(r) = ask(&f, Peer::Agent, HelperRequest::WriteCron(cron(many(max + 1), 2))) else {
            panic!()
        };
        assert_eq!(
            (r.code, r.message.as_str()),
            (RefusalCode::InvalidPayload, "too many cron entries")
        );
        let Ok(HelperResponse::CronWritten(w)) =
            ask(&f, Peer::Agent, HelperRequest::WriteCron(cron(many(max), 3)))
        else {
            panic!()
        };
        assert_eq!(w.installed.len(), max);
        // An older generation is a rollback.
        assert_eq!(
            code(ask(&f, Peer::Agent, HelperRequest::WriteCron(cron(many(1), 2)))),
            RefusalCode::SignatureRefused
        );
    }

    /// Every scheduled run ends in a kept report: run (here refused by the
    /// plan), skipped while it still runs, or not found.
    #[test]
    fn scheduled_runs_leave_a_report_whatever_happens() {
        let f = fixture("scheduled", true, None);
        assert!(matches!(
            ask(&f, Peer::Agent, HelperRequest::WriteCron(cron(vec![entry("a")], 1))),
            Ok(HelperResponse::CronWritten(_))
        ));
        let r = report(ask(&f, Peer::Root, run_scheduled("a")));
        assert_eq!((r.job_id.as_str(), r.command.as_str()), ("a", "/bin/true -x"));
        assert_eq!(r.exit_code, cc_exec::EXIT_NOT_EXECUTABLE);
        assert!(r.stderr.contains("nothing runs in a unit test"), "{r:?}");
        assert!(r.report_id.as_deref().is_some_and(|id| id.starts_with("sys-")), "{r:?}");

        f.h.running.lock().unwrap().insert("a".into());
        let r = report(ask(&f, Peer::Root, run_scheduled("a")));
        assert_eq!(r.exit_code, EXIT_SKIPPED);
        assert!(r.stderr.contains("skipped: the previous run"), "{r:?}");
        f.h.running.lock().unwrap().clear();

        let r = report(ask(&f, Peer::Root, run_scheduled("nope")));
        assert!(r.stderr.contains("no signed system cron entry nope"), "{r:?}");
        assert_eq!(r.command, "-");
        assert_eq!(code(ask(&f, Peer::Root, run_scheduled("../x"))), RefusalCode::InvalidPayload);
        // A run finished leaves the id free for the next.
        let r = report(ask(&f, Peer::Root, run_scheduled("a")));
        assert_ne!(r.exit_code, EXIT_SKIPPED);
        assert!(f.h.running.lock().unwrap().is_empty());

        // A state file whose generation is not its statement's runs nothing.
        let state = f.h.cfg.state_dir.join("system-cron.json");
        let text = std::fs::read_to_string(&state).unwrap();
        std::fs::write(&state, text.replace("\"generation\":1", "\"generation\":7")).unwrap();
        let r = report(ask(&f, Peer::Root, run_scheduled("a")));
        assert!(r.stderr.contains("generation is not its statement's"), "{r:?}");
        let kept = f.h.reports.take();
        assert_eq!(kept.len(), 3, "take_reports hands over three at a time");
    }

    /// A signed `exec` of `program` (no arguments), nonce `n`.
    fn exec_of(program: &str, n: u8) -> HelperRequest {
        let job = format!(r#"{{"jobId":"j2","command":"{program}","timeout":60}}"#);
        let (not_before, expires_at) = sign::window(Timestamp::now(), 600);
        let statement = ExecStatement {
            host: "web1".into(),
            job_id: "j2".into(),
            program: program.into(),
            args: vec![],
            timeout: 60,
            not_before,
            expires_at,
            nonce: sign::nonce([n; 16]),
        };
        let signed = sign::sign(&statement, EXEC_LABEL, &key()).unwrap();
        HelperRequest::Exec(ExecRequest {
            execute_job: job,
            signed: Some(serde_json::to_string(&signed).unwrap()),
        })
    }

    /// What `exec::run` refuses before anything is started: a file that
    /// is not executable (the report says so), and, with allowed_commands,
    /// a path whose file is not the one opened. A program not found is
    /// the job's outcome (127), as in user mode; a bare name is refused.
    #[test]
    fn a_file_that_cannot_run_is_reported_before_any_start() {
        let mut f = fixture("not-exec", true, None);
        Arc::get_mut(&mut f.h.plan).unwrap().refusal = None;
        let denied = |r: &ExecutionReport| {
            assert_eq!(r.exit_code, cc_exec::EXIT_NOT_EXECUTABLE, "{r:?}");
            assert!(r.stderr.contains("permission denied (not an executable file)"), "{r:?}");
        };
        denied(&report(ask(&f, Peer::Agent, exec_of("/etc/passwd", 1))));
        // Through a symlink, without allowed_commands: the same.
        let link = f.dir.join("passwd-link");
        std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
        denied(&report(ask(&f, Peer::Agent, exec_of(link.to_str().unwrap(), 2))));
        let r = report(ask(&f, Peer::Agent, exec_of("/no/such/cc-program", 3)));
        assert_eq!(r.exit_code, cc_exec::EXIT_NOT_FOUND, "{r:?}");
        assert!(r.stderr.contains("/no/such/cc-program: not found"), "{r:?}");
        // A bare name is refused, never looked up in PATH.
        assert_eq!(code(ask(&f, Peer::Agent, exec_of("id", 4))), RefusalCode::InvalidPayload);

        let passwd = vec![Allowed { path: "/etc/passwd".into(), args: Some(vec![]) }];
        let mut f = fixture("not-exec-allowed", true, Some(passwd));
        Arc::get_mut(&mut f.h.plan).unwrap().refusal = None;
        denied(&report(ask(&f, Peer::Agent, exec_of("/etc/passwd", 1))));
    }

    /// With `limits = "required"`, a job whose cgroup cannot be made (the
    /// tree went away after the helper started) is not started.
    #[test]
    fn a_job_without_its_required_cgroup_never_starts() {
        let mut f = fixture("no-cgroup", true, None);
        let plan = Arc::get_mut(&mut f.h.plan).unwrap();
        plan.refusal = None;
        plan.cgroups.tree = Err("no cgroup tree in this test".into());
        let r = report(ask(&f, Peer::Agent, exec_of("/usr/bin/id", 1)));
        assert_eq!(r.exit_code, cc_exec::EXIT_NOT_EXECUTABLE, "{r:?}");
        assert!(r.stderr.contains("its cgroup could not be made"), "{r:?}");
        assert!(r.stderr.contains("no cgroup tree in this test"), "{r:?}");
    }

    fn pair() -> (UnixStream, UnixStream) {
        UnixStream::pair().unwrap()
    }

    fn soon() -> Option<Instant> {
        Some(Instant::now() + Duration::from_millis(300))
    }

    /// One frame, however it arrives; refused when the peer closes early,
    /// stalls past the deadline, fails, or declares too much.
    #[test]
    fn frames_are_read_whole_within_the_deadline_or_refused() {
        let (mut a, mut b) = pair();
        let body = helper::encode(&HelperRequest::TakeReports).unwrap();
        let framed = frame::encode_frame(&body, MAX_FRAME_LEN).unwrap();
        let writer = std::thread::spawn(move || {
            for byte in framed {
                a.write_all(&[byte]).unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
            a
        });
        assert_eq!(read_request(&mut b).unwrap(), HelperRequest::TakeReports);
        drop(writer.join().unwrap());

        let late = |e: anyhow::Error| e.to_string();
        let (mut a, mut b) = pair();
        a.write_all(&[0, 0]).unwrap();
        drop(a);
        assert_eq!(
            late(read_frame(&mut b, soon()).unwrap_err()),
            "the peer closed before a whole frame"
        );

        let (mut a, mut b) = pair();
        a.write_all(&[0, 0, 0, 9, b'x']).unwrap();
        assert_eq!(late(read_frame(&mut b, soon()).unwrap_err()), "no whole frame within 5 s");
        drop(a);

        // A hard error (the peer closed with bytes of ours unread) is said
        // as such, not taken for a timeout.
        let (a, mut b) = pair();
        b.write_all(b"unread").unwrap();
        drop(a);
        let e = format!("{:#}", read_frame(&mut b, soon()).unwrap_err());
        assert!(e.starts_with("reading a frame"), "{e}");

        let (mut a, mut b) = pair();
        a.write_all(&u32::try_from(MAX_FRAME_LEN + 1).unwrap().to_be_bytes()).unwrap();
        let e = read_frame(&mut b, soon()).unwrap_err().to_string();
        assert!(e.starts_with("frame declares 4194305 bytes"), "{e}");
        drop(a);
    }

    /// Stopped and continued mid-read (a debugger, a cgroup freezer), a
    /// socket read with a timeout fails with EINTR on Linux even with no
    /// signal handler: that is retried, not taken for a bad request.
    #[test]
    fn a_read_interrupted_by_stop_and_continue_is_retried() {
        let (mut a, mut b) = pair();
        let pid = std::process::id();
        let stopper = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("sleep 0.1; kill -STOP {pid}; sleep 0.1; kill -CONT {pid}"))
            .spawn()
            .unwrap();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(600));
            a.write_all(&frame::encode_frame(b"x", MAX_FRAME_LEN).unwrap()).unwrap();
            a
        });
        let got = read_frame(&mut b, Some(Instant::now() + Duration::from_secs(4)));
        let _ = writer.join();
        let mut stopper = stopper;
        let _ = stopper.wait();
        assert_eq!(got.unwrap(), b"x");
    }

    /// Regression: the id once embedded the job id, so a 128-character job
    /// id gave a reportId the listener refused for ever.
    #[test]
    fn scheduled_report_ids_are_valid_report_ids() {
        let id = super::scheduled_report_id();
        assert!(cc_proto::JobId::parse(&id).is_ok(), "{id}");
        assert!(id.len() <= cc_proto::JobId::MAX_LEN);
        assert_ne!(id, super::scheduled_report_id());
    }
}
