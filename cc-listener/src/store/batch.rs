//! A group's common writes as a few set-based statements (PostgreSQL).
//!
//! The writer's group runs each write in its own savepoint, a few round
//! trips each ([`super::writer`]). On PostgreSQL, where every round trip
//! is a statement the server plans and runs, most of a fan-out's time was
//! that: about five statements per report and three per hand-over. Here
//! the reports of jobs and the hand-overs of a group are done together —
//! four statements for all the group's reports, two for all its
//! hand-overs — before the rest runs one by one as before.
//!
//! Only the plain case is taken: the reports of a host whose reports in
//! the group are all of its jobs (each key once), checked for duplicates
//! and quota in the group's order; a hand-over to a host no other write of
//! the group names. Anything else (a host with a cron or unmatched report
//! in the group, a key twice, a host taken twice or also reporting) is
//! left to the one-by-one path, which runs after this pass and is the
//! reference: for what it takes, this pass gives each write the answer
//! the one-by-one path would. If a
//! statement here fails (another listener stored the same report a moment
//! before), its savepoint is rolled back and the whole group goes one by
//! one.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::Result;
use cc_proto::wire::ReportKind;
use serde_json::json;

use crate::sql::{Sql, p};

use super::{JobRow, JobStatus, ReportOutcome, ReportWrite, Store, StoreError, Stored, TakeWrite};

/// What the set-based pass decided for one write: `None` leaves it to the
/// one-by-one path.
pub(super) type Decided<T> = Option<Result<T>>;

/// The reports in `writes` (the group's, in order) that are plain reports
/// of jobs, stored and their jobs settled together.
pub(super) fn reports(
    tx: &mut dyn Sql,
    writes: &[&ReportWrite],
    now_ms: i64,
) -> Result<Vec<Decided<ReportOutcome>>> {
    let mut out: Vec<Decided<ReportOutcome>> = writes.iter().map(|_| None).collect();
    if writes.is_empty() {
        return Ok(out);
    }
    let mut new = decide(tx, writes, &mut out)?;
    if new.is_empty() {
        return Ok(out);
    }
    let id_of = insert_new(tx, writes, &mut new, &mut out, now_ms)?;
    if !new.is_empty() {
        settle_new(tx, writes, &new, &id_of, &mut out, now_ms)?;
    }
    Ok(out)
}

/// Steps 1 and 2: which reports are plain and new (returned, by index);
/// duplicates and refusals answered in `out`.
fn decide(
    tx: &mut dyn Sql,
    writes: &[&ReportWrite],
    out: &mut [Decided<ReportOutcome>],
) -> Result<Vec<usize>> {
    // 1. What decides where each report goes, in one round trip.
    let ask: Vec<_> = writes
        .iter()
        .map(|w| json!([w.hostname.as_str(), w.job_id.as_str(), w.dedupe_key]))
        .collect();
    let facts = tx.query(
        "SELECT EXISTS (SELECT 1 FROM reports r WHERE r.hostname = x.e->>0 AND r.dedupe_key = x.e->>2),
                EXISTS (SELECT 1 FROM jobs j WHERE j.job_id = x.e->>1 AND j.hostname = x.e->>0),
                (SELECT u.bytes FROM report_usage u WHERE u.hostname = x.e->>0)
         FROM jsonb_array_elements(CAST(?1 AS TEXT)::jsonb) WITH ORDINALITY AS x(e, n)
         ORDER BY x.n",
        &p![serde_json::to_string(&ask)?],
    )?;
    // 2. The decisions, in the group's order: usage grows as the one-by-one
    // path would grow it.
    // A host with any report here that is not plain (not a job's, or its
    // key twice in the group) has all its reports go one by one, in order:
    // quota and duplicates are per host.
    let mut seen: HashSet<(&str, &str)> = HashSet::new();
    let mut mixed: HashSet<&str> = HashSet::new();
    for (w, f) in writes.iter().zip(&facts) {
        let host = w.hostname.as_str();
        if !seen.insert((host, w.dedupe_key.as_str())) || !f.get::<bool>(1)? {
            mixed.insert(host);
        }
    }
    let mut used: HashMap<&str, u64> = HashMap::new();
    let mut new = Vec::new();
    for (i, (w, f)) in writes.iter().zip(&facts).enumerate() {
        let duplicate: bool = f.get(0)?;
        let host = w.hostname.as_str();
        if mixed.contains(host) {
            continue;
        }
        if duplicate {
            out[i] = Some(Ok(ReportOutcome::not_new(Stored::Duplicate)));
            continue;
        }
        let before = *used
            .entry(host)
            .or_insert(u64::try_from(f.get::<Option<i64>>(2)?.unwrap_or(0)).unwrap_or(0));
        let size = w.payload.len() as u64;
        if before.saturating_add(size) > w.limits.quota_bytes {
            out[i] = Some(Ok(ReportOutcome::not_new(Stored::Refused(
                super::Refusal::Quota {
                    used: before,
                    size,
                    quota: w.limits.quota_bytes,
                },
            ))));
            continue;
        }
        used.insert(host, before + size);
        new.push(i);
    }
    Ok(new)
}

/// Steps 3 and 4: the new reports stored and their hosts' usage grown;
/// one another listener stored meanwhile becomes a duplicate (taken out
/// of `new`). Returns each stored report's id by (host, key).
fn insert_new(
    tx: &mut dyn Sql,
    writes: &[&ReportWrite],
    new: &mut Vec<usize>,
    out: &mut [Decided<ReportOutcome>],
    now_ms: i64,
) -> Result<HashMap<(String, String), i64>> {
    // 3. The new reports, in one statement.
    let rows: Vec<_> = new
        .iter()
        .map(|&i| {
            let w = writes[i];
            json!([
                w.hostname.as_str(),
                w.job_id.as_str(),
                w.dedupe_key,
                w.payload,
                w.payload.len()
            ])
        })
        .collect();
    let ids = tx.query(
        "INSERT INTO reports (hostname, job_id, dedupe_key, kind, received_ms, payload, size)
         SELECT x.e->>0, x.e->>1, x.e->>2, ?2, ?3, x.e->>3, (x.e->>4)::bigint
         FROM jsonb_array_elements(CAST(?1 AS TEXT)::jsonb) WITH ORDINALITY AS x(e, n)
         ORDER BY x.n
         ON CONFLICT (hostname, dedupe_key) DO NOTHING
         RETURNING id, hostname, dedupe_key",
        &p![serde_json::to_string(&rows)?, ReportKind::Job, now_ms],
    )?;
    let mut id_of: HashMap<(String, String), i64> = HashMap::new();
    for r in &ids {
        id_of.insert((r.get(1)?, r.get(2)?), r.get(0)?);
    }
    // One another listener stored since step 1 (the agent sent it to both,
    // reconnecting) is a duplicate here, as it is one by one.
    new.retain(|&i| {
        let w = writes[i];
        let key = (w.hostname.as_str().to_owned(), w.dedupe_key.clone());
        let stored = id_of.contains_key(&key);
        if !stored {
            out[i] = Some(Ok(ReportOutcome::not_new(Stored::Duplicate)));
        }
        stored
    });
    if new.is_empty() {
        return Ok(id_of);
    }
    // 4. Each host's usage, once, in hostname order (two listeners' groups
    // lock the rows they share in the same order).
    let mut grown: BTreeMap<&str, u64> = BTreeMap::new();
    for &i in new.iter() {
        *grown.entry(writes[i].hostname.as_str()).or_default() += writes[i].payload.len() as u64;
    }
    let grown: Vec<_> = grown.into_iter().map(|(h, b)| json!([h, b])).collect();
    tx.exec(
        "INSERT INTO report_usage (hostname, bytes, unmatched)
         SELECT x.e->>0, (x.e->>1)::bigint, 0
         FROM jsonb_array_elements(CAST(?1 AS TEXT)::jsonb) AS x(e)
         ON CONFLICT (hostname) DO UPDATE SET bytes = report_usage.bytes + excluded.bytes",
        &p![serde_json::to_string(&grown)?],
    )?;
    Ok(id_of)
}

/// Steps 5 and 6: the reports' jobs settled, places freed in batched
/// runs, and each report's answer.
fn settle_new(
    tx: &mut dyn Sql,
    writes: &[&ReportWrite],
    new: &[usize],
    id_of: &HashMap<(String, String), i64>,
    out: &mut [Decided<ReportOutcome>],
    now_ms: i64,
) -> Result<()> {
    // 5. Their jobs settled, once each (`report_id IS NULL`), in job order.
    let mut settle: Vec<(String, i64)> = Vec::with_capacity(new.len());
    for &i in new.iter() {
        let w = writes[i];
        let key = (w.hostname.as_str().to_owned(), w.dedupe_key.clone());
        let id = *id_of.get(&key).ok_or_else(|| {
            StoreError::Backend("a stored report came back without its id".into())
        })?;
        settle.push((w.job_id.as_str().to_owned(), id));
    }
    let mut by_job: Vec<&(String, i64)> = settle.iter().collect();
    by_job.sort();
    let settled_rows = tx.query(
        "UPDATE jobs SET status = ?3, finished_ms = ?2, report_id = (x.e->>1)::bigint
         FROM jsonb_array_elements(CAST(?1 AS TEXT)::jsonb) AS x(e)
         WHERE jobs.job_id = x.e->>0 AND jobs.report_id IS NULL
         RETURNING jobs.job_id, jobs.run_id,
                   (SELECT r.batch FROM runs r WHERE r.run_id = jobs.run_id) IS NOT NULL",
        &p![
            serde_json::to_string(
                &by_job
                    .iter()
                    .map(|(j, r)| json!([j, r]))
                    .collect::<Vec<_>>()
            )?,
            now_ms,
            JobStatus::Done
        ],
    )?;
    let mut settled: HashSet<String> = HashSet::new();
    let mut batched_runs: BTreeMap<String, ()> = BTreeMap::new();
    for r in &settled_rows {
        settled.insert(r.get(0)?);
        if r.get::<bool>(2)? {
            if let Some(run) = r.get::<Option<String>>(1)? {
                batched_runs.insert(run, ());
            }
        }
    }
    // A job settled before (by another report) may still free a place in
    // its run's batch: as the one-by-one path, that run is looked at too.
    for &i in new.iter() {
        let job = writes[i].job_id.as_str();
        if !settled.contains(job) {
            let run: Option<String> =
                crate::sql::scalar(tx, "SELECT run_id FROM jobs WHERE job_id = ?1", &p![job])?;
            if let Some(run) = run {
                batched_runs.insert(run, ());
            }
        }
    }
    // 6. Places freed in batched runs (in run order), told to the first
    // report of each run.
    let mut released: HashMap<String, Vec<String>> = HashMap::new();
    for run in batched_runs.into_keys() {
        let hosts = Store::release_held(tx, &run, now_ms)?;
        released.insert(run, hosts);
    }
    let run_of: HashMap<String, String> = if released.is_empty() {
        HashMap::new()
    } else {
        let mut m = HashMap::new();
        for &i in new.iter() {
            let job = writes[i].job_id.as_str();
            let run: Option<String> =
                crate::sql::scalar(tx, "SELECT run_id FROM jobs WHERE job_id = ?1", &p![job])?;
            if let Some(run) = run {
                m.insert(job.to_owned(), run);
            }
        }
        m
    };
    for &i in new.iter() {
        let job = writes[i].job_id.as_str();
        let freed = run_of
            .get(job)
            .and_then(|run| released.remove(run))
            .unwrap_or_default();
        out[i] = Some(Ok(ReportOutcome {
            stored: Stored::New,
            released: freed,
            new: Some((ReportKind::Job, settled.contains(job))),
        }));
    }
    Ok(())
}

/// The hand-overs in `takes` (the group's, in order) for hosts only one of
/// them names, done together for connections of listener `me`.
///
/// A host the group also has a report of is left to the one-by-one path,
/// which runs after this pass and the reports: its hand-over then has the
/// room the report freed, as the writer's order (reports first) intends.
pub(super) fn takes(
    tx: &mut dyn Sql,
    me: &str,
    takes: &[&TakeWrite],
    reported: &HashSet<&str>,
    now_ms: i64,
) -> Result<Vec<Decided<Vec<JobRow>>>> {
    let mut out: Vec<Decided<Vec<JobRow>>> = takes.iter().map(|_| None).collect();
    let mut count: HashMap<&str, usize> = HashMap::new();
    for t in takes {
        t.mark();
        *count.entry(t.hostname.as_str()).or_default() += 1;
    }
    let alone: Vec<usize> = (0..takes.len())
        .filter(|&i| {
            let host = takes[i].hostname.as_str();
            count[host] == 1 && !reported.contains(host)
        })
        .collect();
    if alone.is_empty() {
        return Ok(out);
    }
    // 1. Whether each connection holds its agent, and the jobs in flight.
    let ask: Vec<_> = alone
        .iter()
        .map(|&i| json!([takes[i].hostname.as_str(), takes[i].conn]))
        .collect();
    let facts = tx.query(
        "SELECT EXISTS (SELECT 1 FROM agents a WHERE a.hostname = x.e->>0 AND a.listener = ?2
                                                AND a.lease_conn = (x.e->>1)::bigint),
                (SELECT count(*) FROM jobs j WHERE j.hostname = x.e->>0 AND j.status = ?3)
         FROM jsonb_array_elements(CAST(?1 AS TEXT)::jsonb) WITH ORDINALITY AS x(e, n)
         ORDER BY x.n",
        &p![serde_json::to_string(&ask)?, me, JobStatus::Sent],
    )?;
    let (mut want, mut rooms) = (Vec::new(), HashMap::new());
    for (&i, f) in alone.iter().zip(&facts) {
        let t = takes[i];
        if !f.get::<bool>(0)? {
            out[i] = Some(Err(StoreError::Moved(t.hostname.to_string()).into()));
            continue;
        }
        let in_flight: i64 = f.get(1)?;
        let room = t.window.map_or(super::TAKE_BATCH, |w| {
            (i64::from(w) - in_flight).clamp(0, super::TAKE_BATCH)
        });
        out[i] = Some(Ok(Vec::new()));
        rooms.insert(i, room);
        if room > 0 {
            want.push(json!([t.hostname.as_str(), room]));
        } else {
            t.took(room, 0);
        }
    }
    if want.is_empty() {
        return Ok(out);
    }
    // 2. Each host's oldest queued jobs, moved only if still queued.
    let rows = tx.query(
        "UPDATE jobs SET status = ?4, sent_ms = ?2
         WHERE job_id IN (SELECT q.job_id
                          FROM jsonb_array_elements(CAST(?1 AS TEXT)::jsonb) AS x(e)
                          CROSS JOIN LATERAL (
                              SELECT j.job_id FROM jobs j
                              WHERE j.hostname = x.e->>0 AND j.status = ?3 AND j.expires_ms > ?2
                              ORDER BY j.rowid LIMIT (x.e->>1)::bigint) q)
           AND status = ?3
         RETURNING job_id, hostname, command, args, timeout_secs, status, created_ms,
                   expires_ms, sent_ms, finished_ms, CAST(NULL AS TEXT), signed, submitter, rowid",
        &p![
            serde_json::to_string(&want)?,
            now_ms,
            JobStatus::Queued,
            JobStatus::Sent
        ],
    )?;
    let mut by_host: HashMap<String, Vec<(i64, JobRow)>> = HashMap::new();
    for r in &rows {
        let job = super::jobs::job_row(r)?;
        by_host
            .entry(job.hostname.clone())
            .or_default()
            .push((r.get(13)?, job));
    }
    for &i in &alone {
        if let Some(Ok(jobs)) = &mut out[i] {
            let mut mine = by_host
                .remove(takes[i].hostname.as_str())
                .unwrap_or_default();
            mine.sort_by_key(|(rowid, _)| *rowid);
            *jobs = mine.into_iter().map(|(_, j)| j).collect();
            takes[i].took(rooms[&i], jobs.len());
        }
    }
    Ok(out)
}
