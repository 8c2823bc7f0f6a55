CREATE TABLE api_keys (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    key_hash    TEXT NOT NULL UNIQUE,
    hostname    TEXT UNIQUE,
    created_ms  INTEGER NOT NULL,
    revoked_ms  INTEGER
);
CREATE TABLE agents (
    hostname        TEXT PRIMARY KEY,
    os              TEXT NOT NULL,
    arch            TEXT NOT NULL,
    tags            TEXT NOT NULL,
    execution_mode  TEXT NOT NULL,
    is_root         INTEGER NOT NULL,
    first_seen_ms   INTEGER NOT NULL,
    last_seen_ms    INTEGER NOT NULL,
    cron_status     TEXT
);
CREATE TABLE jobs (
    job_id        TEXT PRIMARY KEY,
    hostname      TEXT NOT NULL,
    command       TEXT NOT NULL,
    args          TEXT NOT NULL,
    timeout_secs  INTEGER NOT NULL,
    status        TEXT NOT NULL,
    created_ms    INTEGER NOT NULL,
    expires_ms    INTEGER NOT NULL,
    sent_ms       INTEGER,
    finished_ms   INTEGER,
    report_id     INTEGER
);
CREATE INDEX jobs_by_host_status ON jobs (hostname, status);
CREATE INDEX jobs_by_status ON jobs (status);
CREATE TABLE cron_sets (
    hostname    TEXT PRIMARY KEY,
    entries     TEXT NOT NULL,
    updated_ms  INTEGER NOT NULL
);
CREATE TABLE reports (
    id           INTEGER PRIMARY KEY,
    hostname     TEXT NOT NULL,
    job_id       TEXT NOT NULL,
    dedupe_key   TEXT NOT NULL,
    kind         TEXT NOT NULL,
    received_ms  INTEGER NOT NULL,
    payload      TEXT NOT NULL,
    UNIQUE (hostname, dedupe_key)
);
CREATE INDEX reports_by_job ON reports (job_id, id);
CREATE INDEX reports_by_host ON reports (hostname, id);
