//! Runs: one job per matched host, released batch by batch.

use anyhow::Result;

use crate::sql::p;

use super::{JobStatus, NewJob, NewRun, RunJob, RunRow, RunSummary, Store, json_list};

impl Store {
    /// Stores a run and its jobs (`jobs`' hostnames and ids; command,
    /// args and timeout are the run's) in one transaction: with a batch,
    /// the first `batch` jobs are queued and the rest held.
    pub fn create_run(&self, run: &NewRun, jobs: &[NewJob]) -> Result<()> {
        let args = serde_json::to_string(&run.args)?;
        self.write(|tx| {
            tx.exec(
                "INSERT INTO runs (run_id, command, args, timeout_secs, batch, selector, queue_ttl_ms,
                                   created_ms, submitter)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                &p![
                    run.run_id,
                    run.command,
                    args,
                    run.timeout_secs,
                    run.batch,
                    run.selector,
                    run.queue_ttl_ms,
                    run.created_ms,
                    run.submitter
                ],
            )?;
            Self::insert_run_jobs(tx, run, &args, jobs)
        })
    }

    /// A run with each of its jobs, by hostname.
    pub fn get_run(&self, run_id: &str) -> Result<Option<RunRow>> {
        self.read(|c| {
            let Some(r) = c.one(
                "SELECT run_id, command, args, timeout_secs, batch, selector, created_ms, submitter
                 FROM runs WHERE run_id = ?1",
                &p![run_id],
            )?
            else {
                return Ok(None);
            };
            let jobs = c
                .query(
                    "SELECT j.hostname, j.job_id, j.status, json_extract(r.payload, '$.exitCode'),
                            json_extract(r.payload, '$.durationMs')
                     FROM jobs j LEFT JOIN reports r ON r.id = j.report_id
                     WHERE j.run_id = ?1 ORDER BY j.hostname",
                    &p![run_id],
                )?
                .iter()
                .map(|r| {
                    Ok(RunJob {
                        hostname: r.get(0)?,
                        job_id: r.get(1)?,
                        status: r.get(2)?,
                        exit_code: r.get(3)?,
                        duration_ms: r.get(4)?,
                    })
                })
                .collect::<Result<_>>()?;
            Ok(Some(RunRow {
                run_id: r.get(0)?,
                command: r.get(1)?,
                args: json_list(&r.get::<String>(2)?),
                timeout_secs: r.get(3)?,
                batch: r.get(4)?,
                selector: r.get(5)?,
                created_ms: r.get(6)?,
                submitter: r.get(7)?,
                jobs,
            }))
        })
    }

    /// The newest `limit` runs, newest first, with their jobs counted per
    /// state and how many of their done jobs failed (the console's list).
    pub fn recent_runs(&self, limit: u32) -> Result<Vec<RunSummary>> {
        self.read(|c| {
            let mut runs = c
                .query(
                    "SELECT run_id, command, args, created_ms FROM runs ORDER BY rowid DESC LIMIT ?1",
                    &p![limit],
                )?
                .iter()
                .map(|r| {
                    Ok(RunSummary {
                        run_id: r.get(0)?,
                        command: r.get(1)?,
                        args: json_list(&r.get::<String>(2)?),
                        created_ms: r.get(3)?,
                        counts: Vec::new(),
                        failed: 0,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            for run in &mut runs {
                let rows = c.query(
                    "SELECT j.status, count(*),
                            sum(CASE WHEN json_extract(r.payload, '$.exitCode') <> 0 THEN 1 ELSE 0 END)
                     FROM jobs j LEFT JOIN reports r ON r.id = j.report_id
                     WHERE j.run_id = ?1 GROUP BY j.status",
                    &p![run.run_id],
                )?;
                for r in rows {
                    let (st, n, failed): (JobStatus, i64, Option<i64>) =
                        (r.get(0)?, r.get(1)?, r.get(2)?);
                    run.counts.push((st, usize::try_from(n).unwrap_or(0)));
                    run.failed += usize::try_from(failed.unwrap_or(0)).unwrap_or(0);
                }
                run.counts.sort();
            }
            Ok(runs)
        })
    }
}
