//! `/bin/true` as a system job through cc-privhelper (socket, validation,
//! the containment prepared in the helper and applied in the forked child —
//! its own PID and mount namespaces with a read-only tree, fresh /proc and
//! empty /run, its cgroup, rlimits, no_new_privs, landlock, capability cut,
//! execveat of the checked file — the shared executor) beside the same
//! program run directly, in one run.
//!
//! As root: `cargo build --release --bins && cargo bench -p cc-e2e --bench helper`.
//! The helper is configured with `agent_user = "root"` so that this
//! process may talk to it; who the peer is does not change the job's path.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a failed step should stop it

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cc_e2e::stats::median;
use cc_e2e::{TempDir, bin};
use cc_proto::frame::{self, HEADER_LEN, MAX_FRAME_LEN};

/// A signed `exec` request for `/bin/true` (signed before the clock runs:
/// an operator signs offline).
fn signed_request(i: usize) -> String {
    let job = serde_json::json!({"jobId": format!("b-{i}"), "command": "/bin/true", "args": [], "timeout": 30});
    let st = cc_e2e::signing::exec_statement(&job, "bench.test");
    let signed = cc_e2e::signing::sign_exec(&st, &cc_e2e::signing::operator().1);
    serde_json::json!({"exec": {"execute_job": job.to_string(), "signed": serde_json::to_string(&signed).unwrap()}}).to_string()
}

fn exec_via_helper(socket: &std::path::Path, req: &str) {
    let mut s = UnixStream::connect(socket).unwrap();
    s.write_all(&frame::encode_frame(req.as_bytes(), MAX_FRAME_LEN).unwrap())
        .unwrap();
    let mut h = [0u8; HEADER_LEN];
    s.read_exact(&mut h).unwrap();
    let mut body = vec![0u8; frame::parse_header(h, MAX_FRAME_LEN).unwrap()];
    s.read_exact(&mut body).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["exec_result"]["exitCode"], 0, "{v}");
}

fn median_ms(v: Vec<Duration>) -> f64 {
    median(v).as_secs_f64() * 1e3
}

fn main() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the helper benchmark runs as root"
    );
    let dir = TempDir::new("bench-helper");
    std::fs::create_dir_all(dir.path().join("cron.d")).unwrap();
    let key = cc_e2e::signing::trusted_line(&cc_e2e::signing::operator().1, "bench");
    let config = format!(
        "socket = {:?}\nagent_user = \"root\"\nsystem_mode = true\ncron_file = {:?}\nstate_dir = {:?}\nhostname = \"bench.test\"\ntrusted_keys = [{key:?}]\n[sandbox]\nlandlock = \"required\"\n",
        dir.path().join("helper.sock"),
        dir.path().join("cron.d/croncommander"),
        dir.path().join("state")
    );
    std::fs::write(dir.path().join("helper.toml"), config).unwrap();
    let mut helper = Command::new(bin("cc-privhelper"))
        .args(["serve", "--config"])
        .arg(dir.path().join("helper.toml"))
        .env("CC_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let socket = dir.path().join("helper.sock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "helper did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let runs = 300;
    let requests: Vec<String> = (0..runs).map(signed_request).collect();
    let truth = cc_proto::CommandLine::new("/bin/true", &[]).unwrap();
    let launch = cc_exec::Launch {
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        cwd: "/".into(),
    };
    let limits = cc_exec::Limits::new(Duration::from_secs(30));
    let (mut direct, mut executor, mut helper_t) = (Vec::new(), Vec::new(), Vec::new());
    for request in &requests {
        // Interleaved, so all see the same machine.
        let t = Instant::now();
        assert!(
            Command::new("/bin/true")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .output()
                .unwrap()
                .status
                .success()
        );
        direct.push(t.elapsed());
        let t = Instant::now();
        assert_eq!(cc_exec::run(&truth, &launch, limits.clone()).exit_code, 0);
        executor.push(t.elapsed());
        let t = Instant::now();
        exec_via_helper(&socket, request);
        helper_t.push(t.elapsed());
    }
    let _ = helper.kill();
    let _ = helper.wait();
    // What the helper pays per job to check a signature (Ed25519, the
    // canonical encoding, the window), measured alone.
    let probe = {
        let job =
            serde_json::json!({"jobId": "v", "command": "/bin/true", "args": [], "timeout": 30});
        cc_e2e::signing::sign_exec(
            &cc_e2e::signing::exec_statement(&job, "bench.test"),
            &cc_e2e::signing::operator().1,
        )
    };
    let keys = vec![
        cc_proto::sign::PublicKey::parse(&cc_e2e::signing::trusted_line(
            &cc_e2e::signing::operator().1,
            "bench",
        ))
        .unwrap(),
    ];
    let t = Instant::now();
    for _ in 0..2000 {
        let (st, _): (cc_proto::sign::ExecStatement, _) =
            cc_proto::sign::verify(&probe, cc_proto::sign::EXEC_LABEL, &keys).unwrap();
        cc_proto::sign::check_window(&st.not_before, &st.expires_at, cc_proto::Timestamp::now())
            .unwrap();
    }
    let verify_us = t.elapsed().as_secs_f64() * 1e6 / 2000.0;
    let (d, e, h) = (median_ms(direct), median_ms(executor), median_ms(helper_t));
    println!("/bin/true, median of {runs} interleaved runs:");
    println!("  run directly (spawn, capture, wait)        {d:>7.3} ms");
    println!(
        "  shared executor (cc-exec), no sandbox      {e:>7.3} ms  ({:.2}x)",
        e / d
    );
    println!(
        "  system job through cc-privhelper, signed   {h:>7.3} ms  ({:.2}x; target <= 1.5x)",
        h / d
    );
    println!("  signature check alone (verify + window)    {verify_us:>7.1} us per job");
}
