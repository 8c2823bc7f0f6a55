//! What the reliability suite observed, row by row, for `RELIABILITY.md`.
//!
//! Each scenario (one test) records a row per fault or hostile input: what
//! was done, what the documented outcome is, what was observed, and whether
//! they agree. [`Record::row`] writes the row to
//! `<dir>/<scenario>.jsonl` *before* the test asserts on it, so a failing
//! run still leaves its evidence; the table is assembled from those files by
//! `cc-reliability-table` (see `scripts/reliability.sh`). The directory is
//! `$CC_RELIABILITY_DIR`, or `target/reliability` beside the test binaries.

use std::io::Write;
use std::path::PathBuf;

use serde_json::json;

/// Where rows go.
pub fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CC_RELIABILITY_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current test executable");
    // target/<profile>/deps/<exe> → target/reliability
    exe.ancestors()
        .nth(3)
        .map_or_else(|| PathBuf::from("target"), ToOwned::to_owned)
        .join("reliability")
}

/// What hostile inputs put after a line break: a line of a log that starts
/// with it was started by a peer.
pub const FORGED: &str = "FORGED-BY-A-PEER";

/// A value that tries to start a log line of its own.
pub fn forged_line() -> String {
    format!("x\n{FORGED} 2026-12-07T00:00:00.000000Z  INFO cc: all is well\r")
}

/// One scenario's rows.
#[derive(Debug)]
pub struct Record {
    path: PathBuf,
    area: String,
    rows: std::sync::atomic::AtomicUsize,
    /// Logs scanned for a forged line after every row.
    logs: std::sync::Mutex<Vec<PathBuf>>,
}

impl Record {
    /// Starts `scenario`'s file afresh. `area` is the table's section
    /// (`fault`, `hostile input`, `load`).
    pub fn new(area: &str, scenario: &str) -> Self {
        let dir = dir();
        std::fs::create_dir_all(&dir).expect("creating the reliability directory");
        let path = dir.join(format!("{scenario}.jsonl"));
        std::fs::write(&path, "").expect("starting a reliability record");
        Self {
            path,
            area: area.to_owned(),
            rows: std::sync::atomic::AtomicUsize::new(0),
            logs: std::sync::Mutex::default(),
        }
    }

    /// From now on every row also checks that no line of `log` starts
    /// with [`FORGED`]: the input it records did not forge a log line.
    pub fn watch_log(&self, log: PathBuf) {
        self.logs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(log);
    }

    /// The first forged line in the watched logs, naming its log.
    fn forged(&self) -> Option<String> {
        let logs = self
            .logs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        logs.iter().find_map(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            let line = text.lines().find(|l| l.starts_with(FORGED))?;
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            Some(format!("{}: {line}", name.unwrap_or_default()))
        })
    }

    /// Records a row, then fails the test if `ok` is false or a watched log
    /// has a forged line.
    #[track_caller]
    pub fn row(&self, target: &str, input: &str, expected: &str, observed: &str, ok: bool) {
        let forged = self.forged();
        let observed = match &forged {
            Some(line) => format!("{observed}; and a log line forged: {line}"),
            None => observed.to_owned(),
        };
        let ok = ok && forged.is_none();
        let n = self.rows.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let line = json!({
            "area": self.area, "n": n, "target": target, "input": input,
            "expected": expected, "observed": observed, "ok": ok,
        });
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .expect("opening the reliability record");
        writeln!(f, "{line}").expect("writing a reliability row");
        assert!(
            ok,
            "{target}: {input}: expected {expected}, observed {observed}"
        );
    }
}
