-- Runs: one job per matched host; a batched run holds its jobs `held`
-- until one of its running jobs ends.
CREATE TABLE runs (
    run_id        TEXT PRIMARY KEY,
    command       TEXT NOT NULL,
    args          TEXT NOT NULL,
    timeout_secs  INTEGER NOT NULL,
    batch         INTEGER,
    selector      TEXT NOT NULL,
    queue_ttl_ms  INTEGER NOT NULL,
    created_ms    INTEGER NOT NULL
);
ALTER TABLE jobs ADD COLUMN run_id TEXT;
CREATE INDEX jobs_by_run ON jobs (run_id, status);
