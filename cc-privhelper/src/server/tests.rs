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
        trusted_keys: vec![PublicKey::parse(&format!("{} ops", sign::public_id(&key()))).unwrap()],
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
    CronEntry {
        id: id.into(),
        schedule: "@daily".into(),
        command: "/bin/true -x".into(),
        ..Default::default()
    }
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
    assert!(matches!(ask(&f, Peer::Agent, HelperRequest::Status), Ok(HelperResponse::Status(_))));
    assert!(matches!(ask(&f, Peer::Root, HelperRequest::Status), Ok(HelperResponse::Status(_))));
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
    let Ok(HelperResponse::ExecResult(r)) = answer(&f.h, Peer::Agent, exec("web1", 3), &mut audit)
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
        format!("@daily root {} cron-run --config /etc/croncommander/helper.toml a", exe.display())
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

/// An entry id whose offset on `web1` with 3 s of jitter is `want`.
fn id_with_offset(want: u64) -> String {
    (0..1000)
        .map(|i| format!("j{i}"))
        .find(|id| cc_proto::wire::jitter_offset("web1", id, 3) == want)
        .unwrap()
}

/// A jittered entry waits this host's offset (from the signed statement
/// and the config's hostname) and says so; it counts as running while it
/// waits, so a run fired meanwhile is skipped; a jitter over the bound in
/// a signed list is a rejected entry, never a wait.
#[test]
fn a_jittered_scheduled_run_waits_its_offset_and_blocks_a_second() {
    let f = fixture("jitter", true, None);
    let id = id_with_offset(2);
    let mut e = entry(&id);
    e.jitter = Some(3);
    let mut far = entry("far");
    far.jitter = Some(cc_proto::wire::MAX_CRON_DELAY_SECS + 1);
    let Ok(HelperResponse::CronWritten(w)) =
        ask(&f, Peer::Agent, HelperRequest::WriteCron(cron(vec![e, entry("plain"), far], 1)))
    else {
        panic!()
    };
    assert_eq!(w.installed, [id.clone(), "plain".into()]);
    assert_eq!(w.rejected[0].id, "far");
    // The first run's connection holds a root slot, as `serve` counts it.
    f.h.slots[1].store(1, Ordering::Release);
    std::thread::scope(|s| {
        let first = s.spawn(|| report(ask(&f, Peer::Root, run_scheduled(&id))));
        std::thread::sleep(Duration::from_millis(500));
        // While it waits for its jitter it holds no slot: sixteen waiting
        // entries do not turn the next scheduled runs away as busy.
        assert_eq!(f.h.slots[1].load(Ordering::Acquire), 0);
        let began = Instant::now();
        let second = report(ask(&f, Peer::Root, run_scheduled(&id)));
        assert!(began.elapsed() < Duration::from_secs(1));
        assert_eq!((second.exit_code, second.waited_ms), (EXIT_SKIPPED, None));
        let first = first.join().unwrap();
        let waited = first.waited_ms.unwrap();
        assert!((2000..2900).contains(&waited), "{first:?}");
        assert_ne!(first.exit_code, EXIT_SKIPPED);
    });
    assert_eq!(f.h.slots[1].load(Ordering::Acquire), 1, "taken back to run");
    f.h.slots[1].store(0, Ordering::Release);
    // No jitter: no wait, no waitedMs; the slot counters are untouched.
    let r = report(ask(&f, Peer::Root, run_scheduled("plain")));
    assert_eq!(r.waited_ms, None);
    assert_eq!(f.h.slots[1].load(Ordering::Acquire), 0);
}
