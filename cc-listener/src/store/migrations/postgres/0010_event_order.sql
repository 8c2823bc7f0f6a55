-- As SQLite's migration 16, and no fleet-wide write lock (issue #28).
--
-- Without the lock, ids (a sequence) are not given in commit order. Each
-- event row keeps the 64-bit id of the transaction that wrote it
-- (`pg_current_xact_id()`, an xid8, stored as a bigint), and readers read
-- in (tx, id) order, only events whose transaction is older than the
-- oldest one still running: that part of the log is final, since every
-- transaction that commits later has a larger id. ARCHITECTURE.md,
-- "Event order", has the argument. Rows written before this migration are
-- all committed: tx 0, in id order.
ALTER TABLE events ADD COLUMN tx BIGINT NOT NULL DEFAULT 0;
ALTER TABLE events ALTER COLUMN tx SET DEFAULT pg_current_xact_id()::text::bigint;
CREATE INDEX events_by_tx ON events (tx, id);

-- Job changes become events once per statement (transition tables), and
-- wake listeners once per statement, not once per row.
DROP TRIGGER job_created ON jobs;
DROP TRIGGER job_changed ON jobs;
DROP FUNCTION cc_job_changed();

CREATE FUNCTION cc_jobs_created() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    added bigint;
BEGIN
    INSERT INTO events (at_ms, job_id, run_id, hostname, status, exit_code)
    SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint,
           c.job_id, c.run_id, c.hostname, c.status, NULL
    FROM created c ORDER BY c.rowid;
    GET DIAGNOSTICS added = ROW_COUNT;
    IF added > 0 THEN
        PERFORM pg_notify('cc_events', '');
    END IF;
    -- A statement queuing jobs for more than 64 hosts (a fan-out) wakes
    -- each listener once, with no host: it reads which hosts have queued
    -- jobs. 100,000 notifications, each read by every listener, cost more.
    SELECT count(DISTINCT c.hostname) INTO added FROM created c WHERE c.status = 'queued';
    IF added > 64 THEN
        PERFORM pg_notify('cc_jobs', '');
    ELSE
        PERFORM pg_notify('cc_jobs', q.h)
        FROM (SELECT DISTINCT c.hostname AS h FROM created c WHERE c.status = 'queued') q;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_created AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS created
    FOR EACH STATEMENT EXECUTE FUNCTION cc_jobs_created();

CREATE FUNCTION cc_jobs_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    added bigint;
BEGIN
    INSERT INTO events (at_ms, job_id, run_id, hostname, status, exit_code)
    SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint,
           n.job_id, n.run_id, n.hostname, n.status,
           (SELECT json_extract(r.payload, '$.exitCode') FROM reports r WHERE r.id = n.report_id)
    FROM after_rows n JOIN before_rows o ON o.job_id = n.job_id
    WHERE n.status IS DISTINCT FROM o.status
    ORDER BY n.rowid;
    GET DIAGNOSTICS added = ROW_COUNT;
    IF added > 0 THEN
        PERFORM pg_notify('cc_events', '');
    END IF;
    SELECT count(DISTINCT n.hostname) INTO added
    FROM after_rows n JOIN before_rows o ON o.job_id = n.job_id
    WHERE n.status = 'queued' AND o.status IS DISTINCT FROM 'queued';
    IF added > 64 THEN
        PERFORM pg_notify('cc_jobs', '');
    ELSE
        PERFORM pg_notify('cc_jobs', q.h)
        FROM (SELECT DISTINCT n.hostname AS h
              FROM after_rows n JOIN before_rows o ON o.job_id = n.job_id
              WHERE n.status = 'queued' AND o.status IS DISTINCT FROM 'queued') q;
    END IF;
    RETURN NULL;
END $$;
-- Transition tables cannot be named with a column list (`UPDATE OF
-- status`): the function keeps only rows whose status changed.
CREATE TRIGGER jobs_changed AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows
    FOR EACH STATEMENT EXECUTE FUNCTION cc_jobs_changed();

-- "Does this connection hold the agent?" (every hand-over and resend)
-- names the host and the listener. With an index on the listener alone, a
-- plan made while `agents` was small scans every agent the listener holds:
-- 6,667 rows per hand-over in a fan-out over 20,000 agents and 3
-- listeners, 30 s before the first report. Both columns: one row.
DROP INDEX agents_by_listener;
CREATE INDEX agents_by_listener ON agents (listener, hostname);
