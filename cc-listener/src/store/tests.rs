//! Tests of the store against each engine: the helpers every test module
//! here uses, and what belongs to no aggregate (errors, opening).

use super::*;
use crate::sql::{p, scalar};
use cc_proto::wire::{AgentInfo, CronEntry, ExecutionMode};
use cc_proto::{Hostname, JobId};

mod audit;
mod fleet;
mod jobs;
mod keys;
mod notify;
mod operators;
mod ordering;
mod reports;
mod schedules;
mod schema;
mod shared;
mod writer;

/// `text` as a hostname.
fn h(text: &str) -> Hostname {
    Hostname::parse(text).unwrap()
}

/// `text` as a job id.
fn j(text: &str) -> JobId {
    JobId::parse(text).unwrap()
}

/// What keeps a test's store alive: its directory or its cluster.
#[allow(dead_code)]
enum Guard {
    Dir(tempdir::Dir),
    Pg(cc_testkit::pg::Cluster),
}

/// A fresh store of each backend: a SQLite file, and a database in a
/// private PostgreSQL cluster (skipped, with a note, outside CI when
/// PostgreSQL is not installed). Each test runs against both.
fn stores() -> Vec<(Guard, Store)> {
    let dir = tempdir::Dir::new();
    let sqlite = Store::open(&dir.path().join("cc.db")).unwrap();
    let mut all = vec![(Guard::Dir(dir), sqlite)];
    if let Some(cluster) = cc_testkit::pg::Cluster::start() {
        let url = cluster.create_db("cc");
        let pg = Store::open_postgres(&url).unwrap();
        all.push((Guard::Pg(cluster), pg));
    }
    all
}

/// A tiny temp dir, removed on drop (avoids a dependency for one test).
mod tempdir {
    use std::path::{Path, PathBuf};
    pub(super) struct Dir(PathBuf);
    impl Dir {
        pub(super) fn new() -> Self {
            let p = std::env::temp_dir().join(format!(
                "cc-store-test-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4()
            ));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
        pub(super) fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn agent_info(host: &str) -> AgentInfo {
    AgentInfo {
        hostname: cc_proto::Hostname::parse(host).unwrap(),
        os: "linux".into(),
        arch: "amd64".into(),
        tags: vec![],
        execution_mode: ExecutionMode::User,
        is_root: false,
        job_window: Some(4),
        cron_host: None,
    }
}

fn queued(id: String, host: &str) -> NewJob {
    NewJob {
        job_id: id,
        hostname: host.into(),
        command: "/bin/true".into(),
        args: vec![],
        timeout_secs: 10,
        created_ms: 0,
        expires_ms: i64::MAX,
        signed: None,
        submitter: None,
    }
}

#[test]
fn job_states_are_stored_as_their_words_and_an_unknown_one_is_an_error() {
    for st in JobStatus::ALL {
        assert_eq!(JobStatus::parse(st.as_str()), Some(st));
        assert_eq!(serde_json::to_value(st).unwrap(), st.as_str());
    }
    assert_eq!(JobStatus::parse("Done"), None);
    for (_guard, s) in stores() {
        let job = |id: &str| NewJob {
            job_id: id.into(),
            hostname: "h".into(),
            command: "/bin/true".into(),
            args: vec![],
            timeout_secs: 5,
            created_ms: 0,
            expires_ms: 10,
            signed: None,
            submitter: None,
        };
        s.create_job(&job("j")).unwrap();
        assert_eq!(s.get_job("j").unwrap().unwrap().status, JobStatus::Queued);
        s.write(|tx| tx.exec("UPDATE jobs SET status = 'running' WHERE job_id = 'j'", &[]))
            .unwrap();
        let e = s.get_job("j").unwrap_err();
        assert!(
            e.to_string().contains("unknown job status \"running\""),
            "{e}"
        );
        assert_eq!(StoreError::classify(&e), ErrorKind::Corrupt);
    }
}

#[test]
fn store_errors_have_kinds_the_api_answers_from() {
    for (_guard, s) in stores() {
        let job = NewJob {
            job_id: "once".into(),
            hostname: "h".into(),
            command: "/bin/true".into(),
            args: vec![],
            timeout_secs: 5,
            created_ms: 0,
            expires_ms: 10,
            signed: None,
            submitter: None,
        };
        s.create_job(&job).unwrap();
        let again = s.create_job(&job).unwrap_err();
        assert_eq!(StoreError::classify(&again), ErrorKind::Conflict);
        assert_eq!(again.to_string(), "a job once exists already");
        // The same id in a run: the whole run is refused, nothing stored.
        let run = NewRun {
            run_id: "r".into(),
            command: "/bin/true".into(),
            args: vec![],
            timeout_secs: 5,
            batch: None,
            selector: "{}".into(),
            queue_ttl_ms: 10,
            created_ms: 0,
            submitter: None,
        };
        let fresh = NewJob {
            job_id: "fresh".into(),
            ..job.clone()
        };
        let e = s.create_run(&run, &[fresh, job.clone()]).unwrap_err();
        assert_eq!(StoreError::classify(&e), ErrorKind::Conflict);
        assert!(s.get_job("fresh").unwrap().is_none(), "rolled back");
        assert!(s.get_run("r").unwrap().is_none(), "rolled back");
        s.add_key("k", None, 0).unwrap();
        let dup = s.add_key("k", None, 0).unwrap_err();
        assert_eq!(StoreError::classify(&dup), ErrorKind::Conflict);
        assert_eq!(
            StoreError::classify(&anyhow::anyhow!("disk on fire")),
            ErrorKind::Backend
        );
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        assert_eq!(StoreError::classify(&busy.into()), ErrorKind::Backend);
    }
}

/// Regression: `serve` and `keys add` opening a fresh file at the same
/// moment both saw schema version 0 and the second failed with "table
/// api_keys already exists".
#[test]
fn concurrent_first_opens_migrate_once() {
    let dir = tempdir::Dir::new();
    let path = dir.path().join("cc.db");
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let p = path.clone();
            std::thread::spawn(move || Store::open(&p).map(|_| ()))
        })
        .collect();
    for h in handles {
        h.join().unwrap().unwrap();
    }
}

#[test]
fn reopening_keeps_everything_and_does_not_migrate_twice() {
    let dir = tempdir::Dir::new();
    let path = dir.path().join("cc.db");
    let key = Store::open(&path).unwrap().add_key("k", None, 1).unwrap();
    let again = Store::open(&path).unwrap();
    assert!(again.authenticate(&key).unwrap().is_some());
}

/// Every listener reads the revoked keys each second: through the
/// partial index, not by reading every key.
#[test]
fn revoked_keys_are_read_through_their_own_index() {
    for (_guard, s) in stores() {
        let plan = s
            .read(|c| {
                if c.dialect() == Dialect::Postgres {
                    // A table this small would be read whole anyway.
                    c.batch("SET enable_seqscan = off")?;
                }
                let explain = match c.dialect() {
                    Dialect::Sqlite => "EXPLAIN QUERY PLAN ",
                    Dialect::Postgres => "EXPLAIN ",
                };
                let rows = c.query(
                    &format!("{explain}SELECT id FROM api_keys WHERE revoked_ms IS NOT NULL"),
                    &[],
                )?;
                let col = rows.first().map_or(0, |r| r.0.len() - 1);
                rows.iter()
                    .map(|r| r.get::<String>(col))
                    .collect::<Result<Vec<_>>>()
            })
            .unwrap()
            .join("\n");
        assert!(plan.contains("api_keys_revoked"), "{plan}");
    }
}
