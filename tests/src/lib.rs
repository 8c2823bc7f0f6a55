//! Helpers for the end-to-end suite: finding the workspace's real binaries.
//!
//! Cargo gives `CARGO_BIN_EXE_*` only to a binary's own package, so the suite
//! finds `cc-agent`, `cc-listener` and `cc-privhelper` next to its own test
//! executable (`target/<profile>/deps/..`). The test command builds them
//! first (`cargo build --workspace --bins`).
#![forbid(unsafe_code)]
// Test support: a missing binary or directory is a broken test set-up and
// should stop the test with a message, which is what `expect` does.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::PathBuf;

/// Path of a workspace binary built beside the running test executable.
///
/// # Panics
/// When the binary is missing: the suite cannot run without it, and the
/// message says how to build it.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}
