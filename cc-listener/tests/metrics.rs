//! `GET /metrics`: the real listener, simulated agents doing known things,
//! and the exposition read back with a Prometheus text parser
//! (`prometheus-parse`): every value is what the test did, no label value
//! is a hostname, the endpoint wants the operator token, and the
//! OpenMetrics form (for a client that asks) has the same samples.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use cc_proto::ids::JobId;
use cc_testkit::http;
use cc_testkit::listener::{ListenerProcess, TOKEN};
use cc_testkit::sse;
use cc_testkit::{TempDir, ws};
use prometheus_parse::{Scrape, Value as PValue};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use common::bin;

const LONG: Duration = Duration::from_secs(20);

/// What each job the answering agent gets reports as its run time (ms):
/// the job's first argument.
const DURATIONS_MS: [u64; 5] = [40, 250, 1_200, 7_000, 95_000];

/// A registered agent with its own key; `mode` and `root` as it says.
async fn agent(l: &ListenerProcess, host: &str, mode: &str, root: bool) -> ws::Ws {
    let key = l.add_key(host);
    ws::registered_as(
        l,
        &key,
        &json!({"type": "register", "payload": {
            "hostname": host, "os": "linux", "arch": "amd64", "tags": [],
            "executionMode": mode, "isRoot": root, "jobWindow": 10
        }}),
    )
    .await
}

/// Reads (and ignores) everything the listener sends, so its writes never
/// wait on us; the connection stays open until the task is dropped.
fn drain(mut conn: ws::Ws) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while ws::recv(&mut conn, Duration::from_secs(3600))
            .await
            .is_some()
        {}
    })
}

fn wait_status(l: &ListenerProcess, job: &JobId, status: &str) {
    l.wait_for(LONG, |l| {
        (l.get(&format!("/api/v1/jobs/{job}")).json()["status"] == status).then_some(())
    });
}

/// A scrape, parsed; every data line must have become a sample.
struct Parsed {
    scrape: Scrape,
    text: String,
}

fn scrape(l: &ListenerProcess) -> Parsed {
    let r = l.get("/metrics");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let scrape = Scrape::parse(r.body.lines().map(|l| Ok(l.to_owned()))).unwrap();
    // Typed as declared: counters are `_total`, and nothing is untyped.
    for s in &scrape.samples {
        let counter = matches!(s.value, PValue::Counter(_));
        assert_eq!(counter, s.metric.ends_with("_total"), "{s:?}");
        if let PValue::Untyped(_) = s.value {
            assert!(
                s.metric.ends_with("_sum") || s.metric.ends_with("_count"),
                "{s:?}"
            );
        }
    }
    // The parser skips what it cannot read: every data line's name must be
    // among what it returned (a histogram's buckets under its name).
    for line in r.body.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap();
        let name = name.strip_suffix("_bucket").unwrap_or(name);
        assert!(
            scrape.samples.iter().any(|s| s.metric == name),
            "line not parsed: {line}"
        );
    }
    Parsed {
        scrape,
        text: r.body,
    }
}

/// `GET /metrics` asking for OpenMetrics, as Prometheus does.
fn scrape_openmetrics(l: &ListenerProcess) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(l.admin_addr).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n\
         Authorization: Bearer {TOKEN}\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    body.to_owned()
}

/// The sample lines of an exposition.
fn samples(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.starts_with('#')).collect()
}

impl Parsed {
    /// The value of the one sample `name{label=value}` (no label: `None`).
    fn value(&self, name: &str, label: Option<(&str, &str)>) -> f64 {
        let found: Vec<f64> = self
            .scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| match label {
                Some((k, v)) => s.labels.get(k) == Some(v),
                None => s.labels.is_empty(),
            })
            .map(|s| match s.value {
                PValue::Counter(v) | PValue::Gauge(v) | PValue::Untyped(v) => v,
                _ => panic!("{name} is a histogram"),
            })
            .collect();
        assert_eq!(found.len(), 1, "{name} {label:?}: {found:?}");
        found[0]
    }

    /// Every sample of `name` by its `label`'s value.
    fn by(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        self.scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .map(|s| {
                let v = match s.value {
                    PValue::Counter(v) | PValue::Gauge(v) | PValue::Untyped(v) => v,
                    _ => panic!("{name} is a histogram"),
                };
                (s.labels.get(label).unwrap().to_owned(), v)
            })
            .collect()
    }

    /// A histogram's cumulative buckets (upper bound, count).
    fn buckets(&self, name: &str) -> Vec<(f64, f64)> {
        let s = self
            .scrape
            .samples
            .iter()
            .find(|s| s.metric == name)
            .unwrap_or_else(|| panic!("no {name}"));
        match &s.value {
            PValue::Histogram(h) => h.iter().map(|b| (b.less_than, b.count)).collect(),
            other => panic!("{name} is {other:?}"),
        }
    }
}

fn map(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_exactly_what_happened_and_need_the_token() {
    let dir = TempDir::new("metrics");
    let l = ListenerProcess::start(
        bin(),
        dir.path(),
        "lost_grace_secs = 0\nsweep_interval_ms = 100\njob_queue_ttl_secs = 2\n\
         unmatched_report_quota = 1\nreport_quota_bytes = 3000\n",
    );

    needs_the_token_and_starts_at_zero(&l);
    // Three agents: a user-mode one that answers, a user-mode one running
    // as root that never answers, a system-mode one.
    let a = agent(&l, "a.test", "user", false).await;
    let b = agent(&l, "b.test", "user", true).await;
    let mut c = agent(&l, "c.test", "system", false).await;
    let b = drain(b);
    // d registers and leaves: its job waits in the queue and expires.
    let d = agent(&l, "d.test", "user", false).await;
    drop(d);
    l.wait_connected("d.test", false);

    let mut a = jobs_done_lost_sent_and_expired(&l, a).await;
    refused_reports_messages_and_connections(&l, &mut a, &mut c).await;

    // An operator event stream, open while we look.
    let stream = sse::Stream::open(&l, "", None, Some(TOKEN));
    assert_eq!(stream.status, 200);

    // Wait until the last refusals are counted, then a few more sweeps:
    // nothing may be counted twice.
    l.wait_for(LONG, |l| {
        let m = scrape(l);
        let refused = m.by("croncommander_reports_refused_total", "reason");
        (refused["quota"] == 1.0 && refused["invalid"] == 1.0).then_some(())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m = scrape(&l);

    counts_agents_jobs_and_durations(&m);
    counts_reports_and_refusals(&m);
    counts_the_store_and_labels_nothing_else(&m);

    // The OpenMetrics form: the same samples, the unit declared.
    let open = scrape_openmetrics(&l);
    assert_eq!(samples(&open), samples(&m.text));
    assert!(open.contains("# UNIT croncommander_job_duration_seconds seconds\n"));

    drop(stream);
    b.abort();
    drop((a, c));
}

/// The token, as for the API; before anything, every series is there, at
/// zero.
fn needs_the_token_and_starts_at_zero(l: &ListenerProcess) {
    let anon = http::request(l.admin_addr, "GET", "/metrics", None, None);
    assert_eq!(anon.status, 401, "{}", anon.body);
    let wrong = http::request(
        l.admin_addr,
        "GET",
        "/metrics",
        Some("not-the-token-0123456789"),
        None,
    );
    assert_eq!(wrong.status, 401, "{}", wrong.body);

    // Before anything: every series is there, at zero.
    let m = scrape(l);
    assert_eq!(
        m.by("croncommander_jobs_finished_total", "state"),
        map(&[("done", 0.0), ("expired", 0.0), ("lost", 0.0)])
    );
    assert_eq!(
        m.value("croncommander_job_duration_seconds_count", None),
        0.0
    );
}

/// Five jobs for `a` done, each reporting the run time its argument says
/// (`a` answers them); on `b.test` (which never answers) one lost and one
/// still sent; one for the departed `d.test` expired. Gives `a` back.
async fn jobs_done_lost_sent_and_expired(l: &ListenerProcess, mut a: ws::Ws) -> ws::Ws {
    let answering = tokio::spawn(async move {
        let (mut sent, mut acked) = (0, 0);
        while acked < DURATIONS_MS.len() {
            let m = ws::recv(&mut a, LONG).await.expect("a.test was closed");
            if m["type"] == "report_ack" {
                acked += 1;
            }
            if m["type"] != "execute_job" {
                continue;
            }
            let id = ws::job_id(&m);
            let ms: u64 = m["payload"]["args"][0].as_str().unwrap().parse().unwrap();
            sent += 1;
            let mut r = ws::report(id.as_str(), Some(&format!("a-{sent}")));
            r["payload"]["durationMs"] = json!(ms);
            ws::send(&mut a, &r).await;
        }
        a
    });
    let done: Vec<JobId> = DURATIONS_MS
        .iter()
        .map(|ms| {
            l.post_job(
                "a.test",
                &json!({"command": "/bin/true", "args": [ms.to_string()]}),
            )
        })
        .collect();
    let a = answering.await.unwrap();
    for job in &done {
        wait_status(l, job, "done");
    }
    // One lost (sent, no report within its timeout), one still sent, one
    // expired (never sent).
    let lost = l.post_job("b.test", &json!({"command": "/bin/true", "timeout": 1}));
    let sent = l.post_job("b.test", &json!({"command": "/bin/true", "timeout": 3600}));
    let expired = l.post_job("d.test", &json!({"command": "/bin/true"}));
    wait_status(l, &sent, "sent");
    wait_status(l, &lost, "lost");
    wait_status(l, &expired, "expired");

    a
}

/// From `c`: a stored unmatched report, one refused by the unmatched
/// quota; a malformed message, a binary frame, an invalid report. From
/// `a`: a report over the byte quota. Then two refused connections.
async fn refused_reports_messages_and_connections(
    l: &ListenerProcess,
    a: &mut ws::Ws,
    c: &mut ws::Ws,
) {
    // From c: a stored unmatched report, one refused by the unmatched
    // quota; a malformed message, a binary frame, an invalid report.
    ws::send(c, &ws::report("nothing-1", Some("c-1"))).await;
    ws::recv_type(c, "report_ack", LONG).await;
    ws::send(c, &ws::report("nothing-2", Some("c-2"))).await;
    ws::send_text(c, "{not json").await;
    futures_util::SinkExt::send(c, Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    let mut bad = ws::report("nothing-3", Some("c-3"));
    bad["payload"]["startTime"] = json!("yesterday");
    ws::send(c, &bad).await;
    // From a: a report over the byte quota (3000 per host).
    let mut big = ws::report("nothing-4", Some("a-big"));
    big["payload"]["stdout"] = json!("x".repeat(4000));
    ws::send(a, &big).await;

    // Connections refused: a wrong key, and a connection whose first
    // message is not a register.
    assert_eq!(
        ws::connect(&l.ws_url(), Some("cck_wrong")).await.err(),
        Some(401)
    );
    let key = l.add_key("e.test");
    let mut e = ws::connect(&l.ws_url(), Some(&key)).await.unwrap();
    ws::send(&mut e, &json!({"type": "heartbeat", "payload": {}})).await;
    assert!(ws::recv_close(&mut e, LONG).await.is_some());
}

/// Agents by what they registered as, jobs by state, and the run times the
/// reports gave, bucket by bucket.
fn counts_agents_jobs_and_durations(m: &Parsed) {
    // Agents, by what they registered as.
    assert_eq!(
        m.by("croncommander_agents_connected", "mode"),
        map(&[("system", 1.0), ("user", 2.0)])
    );
    assert_eq!(m.value("croncommander_agents_root_in_user_mode", None), 1.0);
    // Jobs.
    assert_eq!(
        m.by("croncommander_jobs_finished_total", "state"),
        map(&[("done", 5.0), ("expired", 1.0), ("lost", 1.0)])
    );
    assert_eq!(
        m.by("croncommander_jobs_open", "state"),
        map(&[("held", 0.0), ("queued", 0.0), ("sent", 1.0)])
    );
    // The run times the reports gave, bucket by bucket.
    let secs: Vec<f64> = DURATIONS_MS.iter().map(|ms| *ms as f64 / 1000.0).collect();
    assert_eq!(
        m.value("croncommander_job_duration_seconds_count", None),
        5.0
    );
    let sum = m.value("croncommander_job_duration_seconds_sum", None);
    assert!((sum - secs.iter().sum::<f64>()).abs() < 1e-9, "{sum}");
    let buckets = m.buckets("croncommander_job_duration_seconds");
    assert!(buckets.len() > 5, "{buckets:?}");
    for (le, count) in buckets {
        let want = secs.iter().filter(|s| **s <= le).count() as f64;
        assert_eq!(count, want, "le={le}");
    }
}

/// Reports stored and refused; refused messages and connections; the
/// event stream open; no doorbell on SQLite.
fn counts_reports_and_refusals(m: &Parsed) {
    // Reports.
    assert_eq!(
        m.by("croncommander_reports_stored_total", "kind"),
        map(&[("cron", 0.0), ("job", 5.0), ("unmatched", 1.0)])
    );
    assert_eq!(
        m.by("croncommander_reports_refused_total", "reason"),
        map(&[
            ("error", 0.0),
            ("invalid", 1.0),
            ("quota", 1.0),
            ("unmatched_quota", 1.0)
        ])
    );
    // Refused messages and connections.
    assert_eq!(
        m.by("croncommander_ws_messages_refused_total", "reason"),
        map(&[
            ("binary", 1.0),
            ("invalid_payload", 0.0),
            ("invalid_report", 1.0),
            ("invalid_utf8", 0.0),
            ("malformed", 1.0),
            ("too_large", 0.0),
            ("unexpected_type", 0.0)
        ])
    );
    assert_eq!(
        m.by("croncommander_connections_refused_total", "reason"),
        map(&[
            ("auth", 1.0),
            ("budget", 0.0),
            ("key_binding", 0.0),
            ("max_connections", 0.0),
            ("per_source", 0.0),
            ("reconnecting", 0.0),
            ("register", 1.0),
            ("source_failing", 0.0)
        ])
    );
    assert_eq!(m.value("croncommander_event_streams_open", None), 1.0);
    // One listener on SQLite: nothing to listen to.
    assert_eq!(m.value("croncommander_doorbell_connected", None), 0.0);
    assert_eq!(
        m.value("croncommander_doorbell_connections_total", None),
        0.0
    );
}

/// The store's writer's figures; no hostname (nor anything but the
/// documented words) in a label; every family documented.
fn counts_the_store_and_labels_nothing_else(m: &Parsed) {
    // The store's writer: every commit timed and sized (at least the eight
    // reports it stored or refused, one write each), nothing waiting now.
    let commits = m.value("croncommander_store_commit_seconds_count", None);
    assert!(commits >= 1.0, "{commits}");
    assert_eq!(
        m.value("croncommander_store_commit_group_size_count", None),
        commits
    );
    let writes = m.value("croncommander_store_commit_group_size_sum", None);
    assert!(writes >= 8.0 && writes >= commits, "{writes}");
    assert!(m.value("croncommander_store_commit_seconds_sum", None) > 0.0);
    assert_eq!(m.value("croncommander_store_write_queue", None), 0.0);
    assert_eq!(m.value("croncommander_agent_outbound_queued", None), 0.0);

    // No hostname (nor anything but the documented words) in a label.
    for s in &m.scrape.samples {
        for (k, v) in s.labels.iter() {
            assert!(
                ["mode", "state", "kind", "reason", "channel", "phase"].contains(&k.as_str()),
                "{}: label {k}",
                s.metric
            );
            assert!(
                !v.contains(".test")
                    && v.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{}: {k}={v}",
                s.metric
            );
        }
    }
    // Every family documented.
    for s in &m.scrape.samples {
        let docs = &m.scrape.docs;
        let documented = docs.contains_key(&s.metric)
            || ["_count", "_sum"].iter().any(|x| {
                s.metric
                    .strip_suffix(x)
                    .is_some_and(|f| docs.contains_key(f))
            });
        assert!(documented, "{} has no HELP", s.metric);
    }
}
