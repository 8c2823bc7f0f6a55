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

/// One scenario's rows.
#[derive(Debug)]
pub struct Record {
    path: PathBuf,
    area: String,
    rows: std::sync::atomic::AtomicUsize,
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
        }
    }

    /// Records a row, then fails the test if `ok` is false.
    #[track_caller]
    pub fn row(&self, target: &str, input: &str, expected: &str, observed: &str, ok: bool) {
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
