//! RFC 3339 timestamps in UTC, as the spec's `startTime` and heartbeat use.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {text:?} is not an RFC 3339 timestamp")]
pub struct TimestampError {
    pub field: &'static str,
    pub text: String,
}

/// A point in time, rendered as RFC 3339 UTC with milliseconds
/// (`2024-03-20T10:00:00.000Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    pub fn now() -> Self {
        Self(Utc::now())
    }

    /// Parses any RFC 3339 timestamp (any offset) and keeps it in UTC.
    pub fn parse(field: &'static str, text: &str) -> Result<Self, TimestampError> {
        DateTime::parse_from_rfc3339(text)
            .map(|t| Self(t.with_timezone(&Utc)))
            .map_err(|_| TimestampError {
                field,
                text: text.chars().take(64).collect(),
            })
    }

    pub fn from_datetime(t: DateTime<Utc>) -> Self {
        Self(t)
    }

    pub fn datetime(self) -> DateTime<Utc> {
        self.0
    }

    /// Milliseconds since the Unix epoch.
    pub fn unix_millis(self) -> i64 {
        self.0.timestamp_millis()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_rfc3339_opts(SecondsFormat::Millis, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_utc_with_z() {
        let t = Timestamp::parse("startTime", "2024-03-20T12:00:00+02:00").unwrap();
        assert_eq!(t.to_string(), "2024-03-20T10:00:00.000Z");
    }

    #[test]
    fn refuses_non_rfc3339() {
        for bad in ["2024-03-20", "yesterday", "2024-03-20 10:00:00", ""] {
            assert_eq!(
                Timestamp::parse("startTime", bad).unwrap_err().to_string(),
                format!("startTime: {bad:?} is not an RFC 3339 timestamp")
            );
        }
    }
}
