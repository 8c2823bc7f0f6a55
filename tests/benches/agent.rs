//! Agent benchmarks, each beside the same work done directly, in one run:
//!
//! 1. capture: a job writing 1 GiB to stdout through the shared executor
//!    (`cc-exec`, what the agent and helper run) vs `cmd > /dev/null`, vs
//!    `cmd | cat > /dev/null` (any pipe reader), and vs a reader that moves
//!    every byte to `/dev/null` with `splice(2)` as soon as it is there (no
//!    copy to user space: what is left is the cost of the pipe itself);
//! 2. idle RSS of `cc-agent run` connected to a listener, beside a minimal
//!    process (`sleep`);
//! 3. throughput of `/bin/true` jobs through listener → agent → report
//!    stored, `max_concurrent_jobs = 4`, vs spawning `/bin/true` directly,
//!    4 at a time.
//!
//! Needs release binaries: `cargo build --release --bins`, then
//! `cargo bench -p cc-e2e --bench agent`. As root the agent runs as
//! cc-agent-user. `CC_BENCH_ONLY=capture` (or `idle`, `throughput`,
//! comma-separated) runs only those parts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a failed step should stop it

use std::fs::OpenOptions;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cc_e2e::agent::{AgentProcess, agent_user, is_root, proc_status_kib};
use cc_e2e::listener::ListenerProcess;
use cc_e2e::stats::median;
use cc_e2e::{TempDir, bin};
use cc_exec::{Launch, Limits};
use cc_proto::CommandLine;
use nix::fcntl::{FcntlArg, SpliceFFlags, fcntl, splice};
use serde_json::json;

const GIB: &str = "1073741824";

fn time(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

fn capture() {
    let launch = Launch {
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        cwd: "/".into(),
    };
    let cmd = CommandLine::new(
        "/usr/bin/head",
        &["-c".into(), GIB.into(), "/dev/zero".into()],
    )
    .unwrap();
    let (mut direct, mut piped, mut spliced, mut ours) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..11 {
        direct.push(time(|| {
            let s = Command::new("/usr/bin/head")
                .args(["-c", GIB, "/dev/zero"])
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(s.success());
        }));
        piped.push(time(|| {
            let s = Command::new("/bin/sh")
                .args(["-c", &format!("head -c {GIB} /dev/zero | cat > /dev/null")])
                .status()
                .unwrap();
            assert!(s.success());
        }));
        spliced.push(time(|| {
            let mut child = Command::new("/usr/bin/head")
                .args(["-c", GIB, "/dev/zero"])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let out = child.stdout.take().unwrap();
            let _ = fcntl(&out, FcntlArg::F_SETPIPE_SZ(1 << 20));
            let null = OpenOptions::new().write(true).open("/dev/null").unwrap();
            while splice(&out, None, &null, None, 1 << 20, SpliceFFlags::empty()).unwrap() > 0 {}
            assert!(child.wait().unwrap().success());
        }));
        ours.push(time(|| {
            let f = cc_exec::run(&cmd, &launch, Limits::new(Duration::from_secs(600)));
            assert_eq!(f.exit_code, 0);
            assert_eq!(f.stdout.total_bytes, 1 << 30);
        }));
    }
    let (d, p, s, o) = (median(direct), median(piped), median(spliced), median(ours));
    println!("capture, 1 GiB to stdout (median of 11, interleaved):");
    println!(
        "  head > /dev/null                 {d:>8.3} s  {:>7.0} MiB/s",
        1024.0 / d
    );
    println!(
        "  head | cat > /dev/null           {p:>8.3} s  {:>7.0} MiB/s  ({:.2}x direct)",
        1024.0 / p,
        p / d
    );
    println!(
        "  head | splice to /dev/null       {s:>8.3} s  {:>7.0} MiB/s  ({:.2}x direct; no copy to user space)",
        1024.0 / s,
        s / d
    );
    println!(
        "  cc-exec capture (agent, helper)  {o:>8.3} s  {:>7.0} MiB/s  ({:.2}x direct, {:.2}x pipe to cat)",
        1024.0 / o,
        o / d,
        o / p
    );
}

fn agent_rig(dir: &TempDir, extra: &str) -> (ListenerProcess, AgentProcess, String) {
    std::fs::create_dir_all(dir.path().join("listener")).unwrap();
    std::fs::create_dir_all(dir.path().join("agent")).unwrap();
    let listener = ListenerProcess::start(
        &bin("cc-listener"),
        &dir.path().join("listener"),
        "sweep_interval_ms = 100\n",
    );
    let host = "bench.test".to_owned();
    let key = listener.add_key(&host);
    let user = if is_root() { agent_user() } else { None };
    let agent = AgentProcess::start(
        &bin("cc-agent"),
        &dir.path().join("agent"),
        &listener.ws_url(),
        &key,
        &host,
        extra,
        user,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = listener.get("/api/v1/agents").json();
        if a.as_array().unwrap().iter().any(|a| a["connected"] == true) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "agent did not connect\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (listener, agent, host)
}

fn idle_rss() {
    let dir = TempDir::new("bench-idle");
    let (_listener, agent, _) = agent_rig(&dir, "");
    let mut sleeper = Command::new("sleep").arg("60").spawn().unwrap();
    std::thread::sleep(Duration::from_secs(5));
    let agent_kib = agent.rss_kib();
    let sleep_kib = proc_status_kib(sleeper.id(), "VmRSS:");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    println!("idle RSS, connected, heartbeating every second for 5 s:");
    println!(
        "  cc-agent run                     {agent_kib:>8} KiB ({:.1} MiB; target <= 8 MiB)",
        agent_kib as f64 / 1024.0
    );
    println!(
        "  sleep (a minimal process)        {sleep_kib:>8} KiB  ({:.1}x)",
        agent_kib as f64 / sleep_kib.max(1) as f64
    );
}

fn throughput() {
    let jobs = 400;
    let dir = TempDir::new("bench-tput");
    let (listener, agent, host) = agent_rig(&dir, "max_concurrent_jobs = 4");
    let started = Instant::now();
    let ids: Vec<_> = (0..jobs)
        .map(|_| listener.post_job(&host, &json!({"command": "/bin/true"})))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let n = listener
            .get("/api/v1/reports?limit=1000")
            .json()
            .as_array()
            .unwrap()
            .len();
        if n >= jobs {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {n} reports\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let through_agent = started.elapsed().as_secs_f64();
    assert_eq!(ids.len(), jobs);

    let direct = time(|| {
        let mut running = Vec::new();
        for _ in 0..jobs {
            if running.len() == 4 {
                let mut c: std::process::Child = running.remove(0);
                c.wait().unwrap();
            }
            running.push(Command::new("/bin/true").spawn().unwrap());
        }
        for mut c in running {
            c.wait().unwrap();
        }
    });
    println!("/bin/true jobs, max_concurrent_jobs = 4, {jobs} jobs:");
    println!(
        "  API -> agent -> report stored    {:>8.0} jobs/s",
        jobs as f64 / through_agent
    );
    println!(
        "  spawn + wait directly, 4 at once {:>8.0} jobs/s  ({:.1}x faster)",
        jobs as f64 / direct,
        through_agent / direct
    );
}

fn main() {
    // CC_BENCH_ONLY=capture (or idle, throughput; comma-separated) runs
    // only those parts.
    let only = std::env::var("CC_BENCH_ONLY").unwrap_or_default();
    let wanted = |name: &str| only.is_empty() || only.split(',').any(|p| p.trim() == name);
    if wanted("capture") {
        capture();
    }
    if wanted("idle") {
        idle_rss();
    }
    if wanted("throughput") {
        throughput();
    }
}
