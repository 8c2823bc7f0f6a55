//! What cc-listener's test files and benches share that only this package
//! can give: the path of its own binary (`CARGO_BIN_EXE_*` exists only in a
//! binary's package). Each includes it with `mod common;` (a bench with
//! `#[path]`); the rest of the harness is `cc_testkit`.

use std::path::Path;

/// The `cc-listener` binary Cargo built for this package's tests and benches.
pub(crate) fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cc-listener"))
}
