//! The end-to-end suite's crate. Its harness lives in the test-support crate
//! `cc-testkit` (`testkit/`), which depends on no crate of the product's
//! server side, so `cc-listener`'s own tests can use it without a cycle;
//! this crate re-exports it so the suites in `tests/tests` and the binaries in
//! `tests/src/bin` name it `cc_e2e::…`.
#![forbid(unsafe_code)]

pub use cc_testkit::*;
