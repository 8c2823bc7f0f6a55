CREATE TABLE api_keys (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    key_hash    TEXT NOT NULL UNIQUE,
    hostname    TEXT UNIQUE,
    created_ms  BIGINT NOT NULL,
    revoked_ms  BIGINT
);
CREATE TABLE agents (
    hostname        TEXT PRIMARY KEY,
    os              TEXT NOT NULL,
    arch            TEXT NOT NULL,
    tags            TEXT NOT NULL,
    execution_mode  TEXT NOT NULL,
    is_root         BOOLEAN NOT NULL,
    first_seen_ms   BIGINT NOT NULL,
    last_seen_ms    BIGINT NOT NULL,
    cron_status     TEXT,
    listener        TEXT,
    lease_conn      BIGINT
);
CREATE INDEX agents_by_listener ON agents (listener);
CREATE TABLE listeners (
    name      TEXT PRIMARY KEY,
    lease_ms  BIGINT NOT NULL
);
CREATE TABLE jobs (
    rowid         BIGSERIAL UNIQUE,
    job_id        TEXT PRIMARY KEY,
    hostname      TEXT NOT NULL,
    command       TEXT NOT NULL,
    args          TEXT NOT NULL,
    timeout_secs  BIGINT NOT NULL,
    status        TEXT NOT NULL,
    created_ms    BIGINT NOT NULL,
    expires_ms    BIGINT NOT NULL,
    sent_ms       BIGINT,
    finished_ms   BIGINT,
    report_id     BIGINT,
    signed        TEXT,
    run_id        TEXT
);
CREATE INDEX jobs_by_host_status ON jobs (hostname, status);
CREATE INDEX jobs_by_status ON jobs (status);
CREATE INDEX jobs_by_run ON jobs (run_id, status);
CREATE TABLE cron_sets (
    hostname    TEXT PRIMARY KEY,
    entries     TEXT NOT NULL,
    updated_ms  BIGINT NOT NULL,
    signed      TEXT
);
CREATE TABLE reports (
    id           BIGSERIAL PRIMARY KEY,
    hostname     TEXT NOT NULL,
    job_id       TEXT NOT NULL,
    dedupe_key   TEXT NOT NULL,
    kind         TEXT NOT NULL,
    received_ms  BIGINT NOT NULL,
    payload      TEXT NOT NULL,
    size         BIGINT NOT NULL DEFAULT 0,
    UNIQUE (hostname, dedupe_key)
);
CREATE INDEX reports_by_job ON reports (job_id, id);
CREATE INDEX reports_by_host ON reports (hostname, id);
CREATE INDEX reports_by_age ON reports (received_ms);
CREATE TABLE report_usage (
    hostname   TEXT PRIMARY KEY,
    bytes      BIGINT NOT NULL,
    unmatched  BIGINT NOT NULL
);
CREATE TABLE runs (
    rowid         BIGSERIAL UNIQUE,
    run_id        TEXT PRIMARY KEY,
    command       TEXT NOT NULL,
    args          TEXT NOT NULL,
    timeout_secs  BIGINT NOT NULL,
    batch         BIGINT,
    selector      TEXT NOT NULL,
    queue_ttl_ms  BIGINT NOT NULL,
    created_ms    BIGINT NOT NULL
);
CREATE TABLE events (
    id         BIGSERIAL PRIMARY KEY,
    at_ms      BIGINT NOT NULL,
    job_id     TEXT NOT NULL,
    run_id     TEXT,
    hostname   TEXT NOT NULL,
    status     TEXT NOT NULL,
    exit_code  BIGINT
);
CREATE INDEX events_by_run ON events (run_id, id);
CREATE INDEX events_by_host ON events (hostname, id);
CREATE INDEX events_by_job ON events (job_id, id);
CREATE INDEX events_by_age ON events (at_ms);
-- SQLite's json_extract, for the integer fields the queries read.
CREATE FUNCTION json_extract(doc TEXT, path TEXT) RETURNS BIGINT
    LANGUAGE sql IMMUTABLE STRICT
    AS $$ SELECT (doc::jsonb #>> string_to_array(substr(path, 3), '.'))::bigint $$;
-- Every change of a job's state becomes an event, in the transaction that
-- makes it (as SQLite's triggers do). Listeners are told after the commit:
-- `cc_events` (one per transaction: equal notifications are folded) wakes
-- event streams; `cc_jobs` with the hostname, when a job is queued, wakes
-- whichever listener holds that host's agent.
CREATE FUNCTION cc_job_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status THEN
        INSERT INTO events (at_ms, job_id, run_id, hostname, status, exit_code)
        VALUES ((extract(epoch FROM clock_timestamp()) * 1000)::bigint,
                NEW.job_id, NEW.run_id, NEW.hostname, NEW.status,
                CASE WHEN TG_OP = 'UPDATE' THEN
                    (SELECT json_extract(payload, '$.exitCode') FROM reports WHERE id = NEW.report_id)
                END);
        PERFORM pg_notify('cc_events', '');
        IF NEW.status = 'queued' THEN
            PERFORM pg_notify('cc_jobs', NEW.hostname);
        END IF;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER job_created AFTER INSERT ON jobs
    FOR EACH ROW EXECUTE FUNCTION cc_job_changed();
CREATE TRIGGER job_changed AFTER UPDATE OF status ON jobs
    FOR EACH ROW EXECUTE FUNCTION cc_job_changed();
