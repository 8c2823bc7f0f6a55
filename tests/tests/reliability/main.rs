//! The whole system under faults, hostile input and load.
//!
//! Every scenario starts the real `cc-listener`, real `cc-agent` processes
//! as `cc-agent-user`, and where it needs them the real `cc-privhelper` as
//! root and Debian's real `cron` daemon, inside a private mount namespace
//! ([`Isolation`](cc_e2e::isolation::Isolation): its own tmpfs
//! `/etc/cron.d`, crontab spool and `/run`), and drives them the way
//! operators do — the operator API — while it breaks things. Each check is
//! recorded as a row ([`Record`](cc_e2e::reliability::Record)) before it is
//! asserted; `scripts/reliability.sh` turns the rows into `RELIABILITY.md`.
//! A row's scenario is the name given to [`common::rig`], not the test's
//! name: moving a test between modules leaves the document as it is.
//!
//! One test binary (`--test reliability`), one module per kind of trouble:
//!
//! - [`faults`]: a process killed or stopped, a link cut, a disk full;
//! - [`restarts`]: an agent restarted, killed, or killed with its listener
//!   during 1,000 jobs;
//! - [`failover`]: several listeners on one PostgreSQL database, one killed
//!   or the database restarted;
//! - [`hostile`]: hostile input to the listener, its API, the agent and the
//!   helper, each a table of inputs with their documented outcome;
//! - [`load`]: a backlog for one agent, 1,000 simulated agents and 10,000
//!   jobs;
//! - [`common`]: the rig and the counts the checks are made of.
//!
//! Needs root (namespaces, the agent user, the helper); outside CI it skips
//! without it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

mod common;
mod failover;
mod faults;
mod hostile;
mod load;
mod restarts;
