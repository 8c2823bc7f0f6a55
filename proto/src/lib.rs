//! `cc-proto`: CronCommander's wire types and their validation.
//!
//! Architecture invariant: this crate does no I/O, spawns nothing, has no
//! async and no `unsafe`. It turns bytes that came from a peer into
//! validated values, and values into bytes, and that is all.
//!
//! - [`wire`]: agent↔listener messages (spec v1.3 and our extensions).
//! - [`helper`], [`frame`]: the agent↔helper link.
//! - [`ids`], [`command`], [`schedule`], [`time`]: validated values.
//! - [`output`]: the bounded output collector every executor shares.
//! - [`sign`]: signed root work — statements, their encoding, verification.
//! - [`logline`]: one event, one log line, whatever a peer sent.
#![forbid(unsafe_code)]

pub mod checklist;
pub mod command;
pub mod frame;
pub mod helper;
pub mod ids;
pub mod logline;
pub mod output;
pub mod schedule;
pub mod sign;
pub mod time;
pub mod wire;

pub use command::CommandLine;
pub use ids::{Hostname, JobId, Tag, TextError, Timeout};
pub use output::{CapturedOutput, MAX_STREAM_BYTES, OutputCollector};
pub use schedule::{Schedule, ScheduleError};
pub use time::Timestamp;
