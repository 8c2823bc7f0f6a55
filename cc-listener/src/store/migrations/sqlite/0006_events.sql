-- Every change of a job's state, in commit order, written by the
-- database itself (triggers) in the transaction that makes the change:
-- what the live event stream serves.
CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms      INTEGER NOT NULL,
    job_id     TEXT NOT NULL,
    run_id     TEXT,
    hostname   TEXT NOT NULL,
    status     TEXT NOT NULL,
    exit_code  INTEGER
);
CREATE INDEX events_by_run ON events (run_id, id);
CREATE INDEX events_by_host ON events (hostname, id);
CREATE INDEX events_by_job ON events (job_id, id);
CREATE INDEX events_by_age ON events (at_ms);
CREATE TRIGGER job_created AFTER INSERT ON jobs BEGIN
    INSERT INTO events (at_ms, job_id, run_id, hostname, status)
    VALUES (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER),
            NEW.job_id, NEW.run_id, NEW.hostname, NEW.status);
END;
CREATE TRIGGER job_changed AFTER UPDATE OF status ON jobs WHEN NEW.status IS NOT OLD.status BEGIN
    INSERT INTO events (at_ms, job_id, run_id, hostname, status, exit_code)
    VALUES (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER),
            NEW.job_id, NEW.run_id, NEW.hostname, NEW.status,
            (SELECT json_extract(payload, '$.exitCode') FROM reports WHERE id = NEW.report_id));
END;
