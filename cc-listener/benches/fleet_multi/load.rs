//! The bench's load process (`CC_FLEET_ROLE=load`): simulated agents,
//! reporting on stdout.

use super::*;

/// This process's soft limit on open files (`/proc/self/limits`).
fn open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------
// The load process: simulated agents (`cc_testkit::sim`), reporting on
// stdout.
//
// Lines it prints:
//   `got JOB_ID MICROS`        an `execute_job` arrived (wall clock)
//   `ack JOB_ID MICROS`        a `report_ack` arrived (wall clock)
//   `done OK FAILED RETRIES`   every agent's first connection was attempted
//   `drop HOST REASON`         a registered agent's connection ended (it
//                              reconnects; the first 20 are printed)
//   `fail HOST ERROR`          a connect attempt failed (first 20 printed)
// It ends when its stdin closes (the bench ended or died).

/// What the load process's agents tell: printed as the lines above.
struct LoadOut {
    out: std_mpsc::Sender<String>,
    agents: u64,
    /// Agents whose first connection was made or given up.
    settled: AtomicU64,
    ok: AtomicU64,
    retries: AtomicU64,
    drops: AtomicU64,
    failed: AtomicU64,
    printed: AtomicU64,
}

impl LoadOut {
    fn settle(&self) {
        if self.settled.fetch_add(1, Ordering::Relaxed) + 1 == self.agents {
            self.done();
        }
    }

    fn done(&self) {
        let _ = self.out.send(format!(
            "done {} {} {}",
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.retries.load(Ordering::Relaxed)
        ));
    }

    /// One of the first 20 `fail` and `drop` lines.
    fn print(&self, line: String) {
        if self.printed.fetch_add(1, Ordering::Relaxed) < 20 {
            let _ = self.out.send(line);
        }
    }
}

impl Observer for LoadOut {
    fn connected(&self, _host: &str, first: bool) {
        if first {
            self.ok.fetch_add(1, Ordering::Relaxed);
            self.settle();
        }
    }

    fn connect_failed(&self, host: &str, why: &str) {
        self.retries.fetch_add(1, Ordering::Relaxed);
        self.print(format!("fail {host} {why}"));
    }

    fn gave_up(&self, _host: &str, ever_connected: bool) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if !ever_connected {
            self.settle();
        }
    }

    fn ended(&self, host: &str, why: &str) {
        self.drops.fetch_add(1, Ordering::Relaxed);
        self.print(format!("drop {host} {why}"));
    }

    fn job(&self, _host: &str, job_id: &str) {
        let at = now_us();
        let _ = self.out.send(format!("got {job_id} {at}"));
    }

    fn acked(&self, report_id: &str) {
        let at = now_us();
        let _ = self.out.send(format!("ack {report_id} {at}"));
    }
}

/// The load process's agents: the benches' agent that behaves as the real
/// one after a failure (30 s to shake hands, a failed handshake retried 5
/// times, a dropped connection after a backoff, unacknowledged reports
/// sent again).
fn load_behaviour(heartbeat: Duration) -> Behaviour {
    Behaviour {
        handshake_timeout: Some(Duration::from_secs(30)),
        resend_unacked: true,
        reconnect: Reconnect::LikeTheAgent,
        ..Behaviour::bench(heartbeat)
    }
}

pub(crate) fn load_main() {
    let var = |n: &str| std::env::var(n).unwrap_or_else(|_| panic!("{n} is not set"));
    let url: Arc<str> = var("CC_FLEET_URL").into();
    let keys_file = PathBuf::from(var("CC_FLEET_KEYS"));
    let from: usize = var("CC_FLEET_FROM").parse().unwrap();
    let to: usize = var("CC_FLEET_TO").parse().unwrap();
    let heartbeat = Duration::from_millis(var("CC_FLEET_HEARTBEAT_MS").parse().unwrap());
    let gate = Arc::new(Semaphore::new(
        var("CC_FLEET_GATE").parse::<usize>().unwrap().max(1),
    ));
    let limit = open_files_limit();
    assert!(
        (to - from) as u64 + 64 <= limit,
        "{} agents need more descriptors than this process may open ({limit})",
        to - from
    );
    let keys: Vec<(String, String)> = std::fs::read_to_string(&keys_file)
        .unwrap()
        .lines()
        .skip(from)
        .take(to - from)
        .map(|l| {
            let (h, k) = l.split_once(' ').unwrap();
            (h.to_owned(), k.to_owned())
        })
        .collect();

    // One thread writes stdout: lines leave at once, in batches when many.
    let (out_tx, out_rx) = std_mpsc::channel::<String>();
    std::thread::spawn(move || {
        let stdout = std::io::stdout();
        let mut w = std::io::BufWriter::new(stdout.lock());
        while let Ok(line) = out_rx.recv() {
            let _ = writeln!(w, "{line}");
            while let Ok(more) = out_rx.try_recv() {
                let _ = writeln!(w, "{more}");
            }
            if w.flush().is_err() {
                std::process::exit(0);
            }
        }
    });
    // The bench closes stdin (or dies): end.
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        std::process::exit(0);
    });

    let out = Arc::new(LoadOut {
        out: out_tx,
        agents: keys.len() as u64,
        settled: AtomicU64::new(0),
        ok: AtomicU64::new(0),
        retries: AtomicU64::new(0),
        drops: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        printed: AtomicU64::new(0),
    });
    if keys.is_empty() {
        out.done();
    }
    let how = Arc::new(load_behaviour(heartbeat));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for (host, key) in keys {
            let obs: Arc<dyn Observer + Send + Sync> = out.clone();
            let (url, how, gate) = (Arc::clone(&url), Arc::clone(&how), Arc::clone(&gate));
            tokio::spawn(sim::run(url, key, host, how, gate, obs));
        }
        std::future::pending::<()>().await;
    });
}
