//! When a host's cron entries fire next, in the host's own time zone.
//!
//! The host's cron daemon reads schedules in the host's local time; the
//! agent says which zone that is (`cronHost.timeZone`, an IANA name). Next
//! runs are computed in that zone (`chrono-tz`), so `0 3 * * *` on a host
//! in `Europe/Berlin` is 03:00 Berlin time, across clock changes. A host
//! that said no zone, or one this listener's zone database does not know,
//! is computed in UTC, and the label says so: a next run is never shown in
//! a zone that was guessed without saying it.
//!
//! With a jitter the entry starts `jitter_offset(host, id, jitter)` seconds
//! after it fires; [`NextRun`] has both.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use cc_proto::schedule::Schedule;
use cc_proto::wire::{CronEntry, CronHost, jitter_offset};

/// The zone a host's schedules are read in, and how to name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostZone {
    pub tz: Tz,
    /// `Europe/Berlin`; `UTC (the host did not say its time zone)`;
    /// `UTC (time zone "X" is unknown here)`.
    pub label: String,
    /// Whether `tz` is the zone the host said.
    pub known: bool,
}

impl HostZone {
    /// From the agent's last `cronHost` (as stored, JSON), if any.
    pub fn of_stored(cron_host: Option<&str>) -> Self {
        let c: Option<CronHost> = cron_host.and_then(|t| serde_json::from_str(t).ok());
        Self::of(c.as_ref())
    }

    pub fn of(cron_host: Option<&CronHost>) -> Self {
        match cron_host.and_then(|c| c.time_zone.as_deref()) {
            None => Self {
                tz: Tz::UTC,
                label: "UTC (the host did not say its time zone)".into(),
                known: false,
            },
            Some(name) => match name.parse::<Tz>() {
                Ok(tz) => Self {
                    tz,
                    label: name.to_owned(),
                    known: true,
                },
                Err(_) => Self {
                    tz: Tz::UTC,
                    label: format!("UTC (time zone {name:?} is unknown here)"),
                    known: false,
                },
            },
        }
    }
}

/// An entry's next run on one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextRun {
    /// When cron fires it, in the host's zone.
    pub fires: DateTime<Tz>,
    /// Seconds it then waits for its jitter (0 without one).
    pub offset_secs: u64,
}

impl NextRun {
    /// RFC 3339 with the zone's offset: `2026-12-08T03:00:00+01:00`.
    pub fn rfc3339(&self) -> String {
        self.fires
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
    }

    /// For a person: `2026-12-08 03:00 CET`, and the jitter wait if any.
    pub fn display(&self) -> String {
        let at = self.fires.format("%Y-%m-%d %H:%M %Z").to_string();
        match self.offset_secs {
            0 => at,
            s => format!("{at} (+{s} s jitter)"),
        }
    }
}

/// The first run of `entry` on `hostname` after `now`, in `zone`; `None`
/// for an entry that does not parse (stored entries do) or never fires
/// on its own (`@reboot`).
pub fn next_run(
    hostname: &str,
    entry: &CronEntry,
    zone: &HostZone,
    now: DateTime<Utc>,
) -> Option<NextRun> {
    let schedule = Schedule::parse(&entry.schedule).ok()?;
    let fires = schedule.next_after(now.with_timezone(&zone.tz))?;
    Some(NextRun {
        fires,
        offset_secs: jitter_offset(hostname, &entry.id, entry.jitter.unwrap_or(0)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn entry(schedule: &str, jitter: Option<u64>) -> CronEntry {
        CronEntry {
            id: "nightly".into(),
            schedule: schedule.into(),
            command: "/bin/true".into(),
            jitter,
            ..Default::default()
        }
    }

    fn zone(name: Option<&str>) -> HostZone {
        HostZone::of(Some(&CronHost {
            daemon: Some("cron".into()),
            time_zone: name.map(str::to_owned),
        }))
    }

    #[test]
    fn next_runs_are_read_in_the_hosts_zone() {
        // 2026-12-07 12:00 UTC = 13:00 in Berlin (CET, +01:00).
        let now = Utc.with_ymd_and_hms(2026, 12, 7, 12, 0, 0).unwrap();
        let berlin = zone(Some("Europe/Berlin"));
        let n = next_run("web1", &entry("0 3 * * *", None), &berlin, now).unwrap();
        assert_eq!(n.rfc3339(), "2026-12-08T03:00:00+01:00");
        assert_eq!(n.display(), "2026-12-08 03:00 CET");
        assert_eq!(
            n.fires.with_timezone(&Utc).to_rfc3339(),
            "2026-12-08T02:00:00+00:00"
        );
        // The same entry on a host in New York: 03:00 there, later in UTC.
        let ny = next_run(
            "web1",
            &entry("0 3 * * *", None),
            &zone(Some("America/New_York")),
            now,
        )
        .unwrap();
        assert_eq!(ny.rfc3339(), "2026-12-08T03:00:00-05:00");
        // 14:00 Berlin is still today there.
        let today = next_run("web1", &entry("0 14 * * *", None), &berlin, now).unwrap();
        assert_eq!(today.rfc3339(), "2026-12-07T14:00:00+01:00");
    }

    /// Across a clock change the zone's own offset applies: 03:00 in
    /// Berlin is +01:00 before the last Sunday of March and +02:00 after.
    #[test]
    fn a_clock_change_moves_the_utc_time_not_the_local_one() {
        let berlin = zone(Some("Europe/Berlin"));
        let before = Utc.with_ymd_and_hms(2027, 3, 27, 12, 0, 0).unwrap();
        let n = next_run("h", &entry("30 3 * * *", None), &berlin, before).unwrap();
        assert_eq!(n.rfc3339(), "2027-03-28T03:30:00+02:00");
        // 02:30 does not exist on 2027-03-28 in Berlin: the next 02:30 that does.
        let n = next_run("h", &entry("30 2 * * *", None), &berlin, before).unwrap();
        assert_eq!(n.rfc3339(), "2027-03-29T02:30:00+02:00");
    }

    #[test]
    fn an_unknown_or_unsaid_zone_is_utc_and_says_so() {
        let now = Utc.with_ymd_and_hms(2026, 12, 7, 12, 0, 0).unwrap();
        for (z, label) in [
            (
                HostZone::of(None),
                "UTC (the host did not say its time zone)",
            ),
            (zone(None), "UTC (the host did not say its time zone)"),
            (
                zone(Some("Mars/Olympus")),
                "UTC (time zone \"Mars/Olympus\" is unknown here)",
            ),
            (
                HostZone::of_stored(Some("not json")),
                "UTC (the host did not say its time zone)",
            ),
        ] {
            assert_eq!((z.label.as_str(), z.known), (label, false));
            let n = next_run("h", &entry("0 3 * * *", None), &z, now).unwrap();
            assert_eq!(n.rfc3339(), "2026-12-08T03:00:00+00:00");
        }
        let stored = HostZone::of_stored(Some(r#"{"daemon":"cron","timeZone":"Asia/Tokyo"}"#));
        assert_eq!((stored.label.as_str(), stored.known), ("Asia/Tokyo", true));
    }

    #[test]
    fn the_jitter_offset_is_the_hosts_own_and_reboot_has_no_next_run() {
        let now = Utc.with_ymd_and_hms(2026, 12, 7, 12, 0, 0).unwrap();
        let z = zone(Some("UTC"));
        let n = next_run("web1", &entry("@hourly", Some(600)), &z, now).unwrap();
        assert_eq!(n.offset_secs, jitter_offset("web1", "nightly", 600));
        assert!(n.offset_secs < 600);
        if n.offset_secs > 0 {
            assert!(
                n.display()
                    .ends_with(&format!("(+{} s jitter)", n.offset_secs))
            );
        }
        assert_eq!(next_run("web1", &entry("@reboot", None), &z, now), None);
    }
}
