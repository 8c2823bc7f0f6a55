use super::*;

const MIN: i64 = MINUTE_MS;
const UTC: Option<&str> = Some("UTC");

fn ms(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_millis()
}

fn entry(id: &str, schedule: &str) -> CronEntry {
    CronEntry {
        id: id.into(),
        schedule: schedule.into(),
        command: "/bin/true".into(),
        ..Default::default()
    }
}

fn with(mut e: CronEntry, jitter: Option<u64>, grace: Option<u64>) -> CronEntry {
    e.jitter = jitter;
    e.grace = grace;
    e
}

fn ids(m: &[Missed]) -> Vec<(String, String, i64)> {
    m.iter()
        .map(|m| (m.hostname.clone(), m.entry_id.clone(), m.due_ms))
        .collect()
}

#[test]
fn a_run_without_a_report_is_missed_at_its_deadline_and_not_before() {
    let t0 = ms("2026-12-07T10:00:30Z");
    let mut t = Tracker::new();
    t.set_host("h", UTC, &[entry("e", "* * * * *")], t0);
    let due = ms("2026-12-07T10:01:00Z");
    assert_eq!(t.due("h", "e"), Some(due));
    // Default grace: jitter (0) + 60 s.
    assert!(t.tick(due + 60 * 1000 - 1).is_empty());
    let m = t.tick(due + 60 * 1000);
    assert_eq!(ids(&m), vec![("h".into(), "e".into(), due)]);
    assert_eq!(m[0].deadline_ms, due + 60_000);
    // Once: the next tick has nothing more until the next deadline.
    assert!(t.tick(due + 60 * 1000 + 500).is_empty());
    assert_eq!(t.due("h", "e"), Some(due + MIN));
}

#[test]
fn a_report_in_the_due_minute_satisfies_the_run() {
    let t0 = ms("2026-12-07T10:00:30Z");
    let due = ms("2026-12-07T10:01:00Z");
    let mut t = Tracker::new();
    t.set_host("h", UTC, &[entry("e", "* * * * *")], t0);
    // Cron starts it a little late: still that minute.
    assert_eq!(t.report("h", "e", due + 1_300), Fed::Counted);
    // The same run again (a resent report): nothing new.
    assert_eq!(t.report("h", "e", due + 1_300), Fed::Late);
    assert!(t.tick(due + 60_000).is_empty());
    // The next run had no report.
    assert_eq!(
        ids(&t.tick(due + 2 * 60_000)),
        vec![("h".into(), "e".into(), due + MIN)]
    );
    assert_eq!(t.report("h", "nope", due), Fed::Unknown);
    assert_eq!(t.report("other", "e", due), Fed::Unknown);
}

#[test]
fn jitter_moves_the_deadline_by_the_hosts_offset_and_the_default_grace() {
    let t0 = ms("2026-12-07T01:59:00Z");
    let due = ms("2026-12-07T02:00:00Z");
    let e = with(entry("backup", "0 2 * * *"), Some(600), None);
    let mut t = Tracker::new();
    let hosts = ["web-1", "web-2", "db-1"];
    for h in hosts {
        t.set_host(h, UTC, std::slice::from_ref(&e), t0);
    }
    for h in hosts {
        let offset = jitter_offset(h, "backup", 600) as i64 * 1000;
        // Grace = jitter + 60 s.
        let deadline = due + offset + (600 + 60) * 1000;
        let mut t = Tracker::new();
        t.set_host(h, UTC, std::slice::from_ref(&e), t0);
        assert!(t.tick(deadline - 1).is_empty(), "{h}");
        assert_eq!(t.tick(deadline).len(), 1, "{h}");
        // A run that waited its offset: `startTime - waitedMs` is the
        // due minute, so it satisfies the run, received however late
        // before the deadline.
        let mut t = Tracker::new();
        t.set_host(h, UTC, std::slice::from_ref(&e), t0);
        assert_eq!(t.report(h, "backup", due + 800), Fed::Counted);
        assert!(t.tick(deadline).is_empty(), "{h}");
    }
    // An explicit grace replaces the default.
    let mut t = Tracker::new();
    let e = with(entry("backup", "0 2 * * *"), Some(600), Some(5));
    t.set_host("web-1", UTC, &[e], t0);
    let offset = jitter_offset("web-1", "backup", 600) as i64 * 1000;
    assert!(t.tick(due + offset + 4_999).is_empty());
    assert_eq!(t.tick(due + offset + 5_000).len(), 1);
}

#[test]
fn a_late_report_does_not_undo_a_miss_nor_satisfy_the_next_run() {
    let t0 = ms("2026-12-07T10:00:30Z");
    let due = ms("2026-12-07T10:01:00Z");
    let mut t = Tracker::new();
    t.set_host("h", UTC, &[entry("e", "*/5 * * * *")], t0);
    assert_eq!(t.due("h", "e"), Some(ms("2026-12-07T10:05:00Z")));
    let due5 = ms("2026-12-07T10:05:00Z");
    assert_eq!(t.tick(due5 + 60_000).len(), 1);
    // The 10:05 run reports at 10:06:30: too late, and it is not the
    // 10:10 run's report.
    assert_eq!(t.report("h", "e", due5 + 200), Fed::Late);
    assert_eq!(t.tick(due5 + 5 * MIN + 60_000).len(), 1);
    let _ = due;
}

#[test]
fn reports_of_later_runs_are_kept_while_an_earlier_run_is_open() {
    // Grace longer than the period: several runs are open at once.
    let t0 = ms("2026-12-07T10:00:30Z");
    let due = ms("2026-12-07T10:01:00Z");
    let mut t = Tracker::new();
    t.set_host(
        "h",
        UTC,
        &[with(entry("e", "* * * * *"), None, Some(300))],
        t0,
    );
    // Runs at 10:02 and 10:03 report; 10:01 and 10:04 do not.
    assert_eq!(t.report("h", "e", due + MIN + 10), Fed::Counted);
    assert_eq!(t.report("h", "e", due + 2 * MIN + 10), Fed::Counted);
    let m = t.tick(due + 3 * MIN + 300_000);
    assert_eq!(
        m.iter().map(|m| m.due_ms).collect::<Vec<_>>(),
        vec![due, due + 3 * MIN]
    );
}

#[test]
fn a_skipped_run_reported_is_not_missed() {
    // Exit 75 is a report like any other here; the caller names it
    // `skipped` (the tracker never sees exit codes).
    let t0 = ms("2026-12-07T10:00:30Z");
    let due = ms("2026-12-07T10:01:00Z");
    let mut t = Tracker::new();
    t.set_host("h", UTC, &[entry("e", "* * * * *")], t0);
    assert_eq!(t.report("h", "e", due), Fed::Counted);
    assert!(t.tick(due + 60_000).is_empty());
}

#[test]
fn runs_are_due_in_the_hosts_time_zone() {
    let t0 = ms("2026-12-07T00:00:00Z");
    let mut t = Tracker::new();
    t.set_host(
        "berlin",
        Some("Europe/Berlin"),
        &[entry("e", "0 3 * * *")],
        t0,
    );
    t.set_host("utc", UTC, &[entry("e", "0 3 * * *")], t0);
    t.set_host(
        "nonsense",
        Some("Mars/Olympus"),
        &[entry("e", "0 3 * * *")],
        t0,
    );
    // 03:00 in Berlin (CET, UTC+1) is 02:00 UTC.
    assert_eq!(t.due("berlin", "e"), Some(ms("2026-12-07T02:00:00Z")));
    assert_eq!(t.due("utc", "e"), Some(ms("2026-12-07T03:00:00Z")));
    // A zone the listener does not know, or none: not tracked (a guess
    // would make a daily entry "missed" every day while it runs).
    t.set_host("untold", None, &[entry("e", "0 3 * * *")], t0);
    assert_eq!(t.due("nonsense", "e"), None);
    assert_eq!(t.due("untold", "e"), None);
    // Its reports are not news (the listener does not read its list again
    // for each).
    assert_eq!(t.report("untold", "e", t0), Fed::Untracked);
    assert_eq!(t.hosts(), 2);
    assert_eq!(t.tick(ms("2026-12-09T00:00:00Z")).len(), 4);
    // Told its zone later: tracked from then on. 03:00 IST (UTC+5:30) is
    // 21:30 UTC the day before.
    t.set_host(
        "untold",
        Some("Asia/Kolkata"),
        &[entry("e", "0 3 * * *")],
        t0,
    );
    assert_eq!(t.due("untold", "e"), Some(ms("2026-12-07T21:30:00Z")));
}

/// Walks the runs an entry is expected at from `from`, `n` of them, all
/// missed (no reports), as instants.
fn expected(zone: &str, schedule: &str, from: &str, until: &str) -> Vec<String> {
    let mut t = Tracker::new();
    t.set_host("h", Some(zone), &[entry("e", schedule)], ms(from));
    t.tick(ms(until))
        .iter()
        .map(|m| {
            chrono::DateTime::from_timestamp_millis(m.due_ms)
                .unwrap()
                .to_rfc3339()
        })
        .collect()
}

#[test]
fn spring_forward_a_skipped_local_time_is_not_expected() {
    // Europe/Berlin, 2026-03-29: 02:00 CET becomes 03:00 CEST; 02:30 does
    // not exist that day.
    let got = expected(
        "Europe/Berlin",
        "30 2 * * *",
        "2026-03-27T12:00:00Z",
        "2026-03-30T12:00:00Z",
    );
    assert_eq!(
        got,
        vec![
            "2026-03-28T01:30:00+00:00", // 02:30 CET
            // 29th: none.
            "2026-03-30T00:30:00+00:00", // 02:30 CEST
        ]
    );
    // An hourly entry: the local day has 23 hours, and each real hour
    // has its run (01:00 UTC is 03:00 CEST).
    let got = expected(
        "Europe/Berlin",
        "0 * * * *",
        "2026-03-28T22:59:00Z",
        "2026-03-29T21:59:00Z",
    );
    assert_eq!(got.len(), 23, "{got:?}");
    assert_eq!(got[2], "2026-03-29T01:00:00+00:00");
}

#[test]
fn fall_back_a_repeated_local_time_is_expected_once() {
    // Europe/Berlin, 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:30 comes
    // twice, cron runs a fixed-time entry once.
    let got = expected(
        "Europe/Berlin",
        "30 2 * * *",
        "2026-10-24T12:00:00Z",
        "2026-10-26T12:00:00Z",
    );
    assert_eq!(
        got,
        vec![
            "2026-10-25T00:30:00+00:00", // 02:30 CEST, the first
            "2026-10-26T01:30:00+00:00", // 02:30 CET
        ]
    );
}

#[test]
fn a_reload_keeps_an_unchanged_entry_and_restarts_a_changed_one() {
    let t0 = ms("2026-12-07T10:00:30Z");
    let due = ms("2026-12-07T10:01:00Z");
    let mut t = Tracker::new();
    t.set_host(
        "h",
        UTC,
        &[entry("a", "* * * * *"), entry("b", "* * * * *")],
        t0,
    );
    assert_eq!(t.report("h", "a", due), Fed::Counted);
    // Reloaded later (the same list pushed again, a cron_status): `a`
    // keeps its report; `b` changed schedule and starts afresh.
    t.set_host(
        "h",
        UTC,
        &[entry("a", "* * * * *"), entry("b", "*/2 * * * *")],
        due + 10_000,
    );
    assert_eq!(t.due("h", "b"), Some(due + MIN));
    let m = t.tick(due + MIN + 60_000);
    assert_eq!(
        ids(&m),
        vec![
            ("h".into(), "a".into(), due + MIN),
            ("h".into(), "b".into(), due + MIN)
        ]
    );
    // Removed (an empty list): nothing more, and old heap items are stale.
    t.set_host("h", UTC, &[], due + MIN + 61_000);
    assert_eq!(t.hosts(), 0);
    assert!(t.tick(due + 100 * MIN).is_empty());
    // Invalid entries are not tracked; `@reboot` has no runs to miss.
    t.set_host(
        "h",
        UTC,
        &[entry("bad id!", "* * * * *"), entry("r", "@reboot")],
        t0,
    );
    assert_eq!(t.entries(), 0);
    assert!(t.tick(due + 1000 * MIN).is_empty());
}

#[test]
fn every_unreported_run_is_missed_exactly_once_and_no_reported_one_is() {
    // A small random walk: 50 hosts, mixed schedules and graces, reports
    // for some runs (some of them late), ticks at uneven steps.
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let t0 = ms("2026-12-07T10:00:30Z");
    let schedules = ["* * * * *", "*/2 * * * *", "*/5 * * * *", "7 * * * *"];
    let mut t = Tracker::new();
    let mut plan = Vec::new();
    for h in 0..50 {
        let s = schedules[rnd(4) as usize];
        let grace = [None, Some(30), Some(200)][rnd(3) as usize];
        let host = format!("h{h}");
        t.set_host(&host, UTC, &[with(entry("e", s), None, grace)], t0);
        plan.push((host, Schedule::parse(s).unwrap(), grace.unwrap_or(60)));
    }
    let end = t0 + 180 * MIN;
    let mut want_missed = std::collections::BTreeSet::new();
    let mut reports = Vec::new(); // (received, host, fire)
    for (host, s, grace) in &plan {
        let mut due = next_after(s, Tz::UTC, t0);
        while due + (*grace as i64) * 1000 <= end - MIN {
            let r = rnd(10);
            if r < 6 {
                // Reported in time.
                let at = due + rnd(*grace * 1000) as i64;
                reports.push((at, host.clone(), due + rnd(50_000) as i64));
            } else if r < 8 {
                // Reported after the deadline: missed all the same.
                // After a tick past the deadline (ticks are at most 5 s apart).
                let at = due + (*grace as i64) * 1000 + 5_001 + rnd(30_000) as i64;
                reports.push((at, host.clone(), due + 1000));
                want_missed.insert((host.clone(), due));
            } else {
                want_missed.insert((host.clone(), due));
            }
            due = next_after(s, Tz::UTC, due);
        }
    }
    reports.sort();
    let mut got = std::collections::BTreeSet::new();
    let mut now = t0;
    let mut r = reports.into_iter().peekable();
    while now < end {
        now += 1 + rnd(5_000) as i64;
        while let Some((at, host, fire)) = r.next_if(|(at, ..)| *at < now) {
            let _ = (at, t.report(&host, "e", fire));
        }
        for m in t.tick(now) {
            assert!(m.deadline_ms <= now);
            assert!(got.insert((m.hostname, m.due_ms)), "missed twice");
        }
    }
    // Runs whose deadline is past `end - 1 min` may or may not be in.
    got.retain(|(h, due)| {
        let g = plan.iter().find(|p| &p.0 == h).unwrap().2 as i64;
        due + g * 1000 <= end - MIN
    });
    let extra: Vec<_> = got.difference(&want_missed).collect();
    let lacking: Vec<_> = want_missed.difference(&got).collect();
    assert!(
        extra.is_empty() && lacking.is_empty(),
        "extra {extra:?} lacking {lacking:?}"
    );
    assert!(want_missed.len() > 100);
}
