//! `ccctl reports`: stored reports by host, job and age.

use anyhow::{Context, Result, ensure};
use cc_proto::Timestamp;
use serde_json::Value;

use crate::api::Api;
use crate::run::first_line;
use crate::term::{self, errln, outln};

/// `--since`: an age (`90s`, `30m`, `2h`, `7d`) before `now_ms`, or an
/// RFC 3339 time; in Unix milliseconds.
pub(crate) fn since_ms(text: &str, now_ms: i64) -> Result<i64> {
    let unit = |c: char| match c {
        's' => Some(1_000),
        'm' => Some(60_000),
        'h' => Some(3_600_000),
        'd' => Some(86_400_000),
        _ => None,
    };
    // The unit is ASCII, so the number is all but the last byte.
    let age = text
        .chars()
        .last()
        .and_then(unit)
        .and_then(|ms| Some((text[..text.len() - 1].parse::<i64>().ok()?, ms)));
    if let Some((n, ms)) = age {
        ensure!(n >= 0, "--since: an age is not negative");
        return Ok(now_ms - n.saturating_mul(ms));
    }
    Timestamp::parse("since", text)
        .map(Timestamp::unix_millis)
        .map_err(|_| anyhow::anyhow!("--since {text:?}: expected an age such as 30m, 2h or 7d, or an RFC 3339 time such as 2026-11-30T12:00:00Z"))
}

/// `ccctl reports`: newest first, following the listener's pages until
/// `limit` reports or one older than `since`.
pub(crate) fn print_reports(
    api: &Api,
    host: Option<&str>,
    job: Option<&str>,
    since: Option<&str>,
    limit: u32,
    json_out: bool,
) -> Result<bool> {
    ensure!((1..=100_000).contains(&limit), "--limit is 1 to 100000");
    let mut query = vec![format!("limit={}", limit.min(1000))];
    if let Some(h) = host {
        let h = cc_proto::Hostname::parse(h).with_context(|| format!("--host {h:?}"))?;
        query.push(format!("hostname={h}"));
    }
    if let Some(j) = job {
        cc_proto::JobId::parse(j).with_context(|| format!("--job {j:?}"))?;
        query.push(format!("jobId={j}"));
    }
    let since = since
        .map(|t| since_ms(t, Timestamp::now().unix_millis()))
        .transpose()?;
    let received = |r: &Value| {
        r["receivedAt"]
            .as_str()
            .and_then(|t| Timestamp::parse("receivedAt", t).ok())
            .map_or(i64::MIN, Timestamp::unix_millis)
    };
    let path = format!("/reports?{}", query.join("&"));
    let reports = api.get_until(&path, "x-cc-next-before", "before", |all| {
        let old = since.and_then(|s| all.iter().position(|r| received(r) < s));
        if let Some(i) = old {
            all.truncate(i);
        }
        all.truncate(limit as usize);
        old.is_some() || all.len() >= limit as usize
    })?;
    if let (true, Some(h)) = (reports.is_empty(), host) {
        // Exit 0 all the same: nothing failed.
        errln!(
            "ccctl: no report from host {h}{}; `ccctl agents` lists the hosts",
            if since.is_some() { " in that time" } else { "" }
        );
    }
    if json_out {
        term::json(&reports)?;
        return Ok(true);
    }
    outln!(
        "{:<24} {:<28} {:<24} {:<6} {:>5} {:>6}  OUTPUT",
        "RECEIVED",
        "HOST",
        "JOB",
        "KIND",
        "EXIT",
        "UID"
    );
    for r in &reports {
        let rep = &r["report"];
        outln!(
            "{:<24} {:<28} {:<24} {:<6} {:>5} {:>6}  {}",
            r["receivedAt"].as_str().unwrap_or("-"),
            r["hostname"].as_str().unwrap_or("?"),
            r["jobId"].as_str().unwrap_or("?"),
            r["kind"].as_str().unwrap_or("?"),
            rep["exitCode"]
                .as_i64()
                .map_or("-".into(), |c| c.to_string()),
            rep["executingUid"]
                .as_i64()
                .map_or("-".into(), |c| c.to_string()),
            first_line(rep)
        );
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_an_age_or_a_time() {
        let now = 1_000_000_000_000;
        assert_eq!(since_ms("90s", now).unwrap(), now - 90_000);
        assert_eq!(since_ms("30m", now).unwrap(), now - 1_800_000);
        assert_eq!(since_ms("2h", now).unwrap(), now - 7_200_000);
        assert_eq!(since_ms("7d", now).unwrap(), now - 604_800_000);
        assert_eq!(
            since_ms("2026-11-30T12:00:00Z", now).unwrap(),
            1_796_040_000_000
        );
        for bad in ["", "h", "-3h", "3w", "yesterday", "2026-13-01T00:00:00Z"] {
            let e = since_ms(bad, now).unwrap_err().to_string();
            assert!(e.contains("--since"), "{bad:?}: {e}");
        }
    }
}
