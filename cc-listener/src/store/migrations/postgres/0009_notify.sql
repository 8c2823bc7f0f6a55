-- As SQLite's migration 15 (notifications: cursor, per-subject state, queue).
CREATE TABLE notify_cursor (
    id             BIGINT PRIMARY KEY CHECK (id = 1),
    last_event_id  BIGINT NOT NULL
);
INSERT INTO notify_cursor (id, last_event_id) SELECT 1, coalesce(max(id), 0) FROM events;
CREATE TABLE notify_state (
    hostname  TEXT NOT NULL,
    aspect    TEXT NOT NULL,
    subject   TEXT NOT NULL,
    state     TEXT NOT NULL,
    since_ms  BIGINT NOT NULL,
    PRIMARY KEY (hostname, aspect, subject)
);
CREATE TABLE notify_queue (
    id              BIGSERIAL PRIMARY KEY,
    sink            TEXT NOT NULL,
    event           TEXT NOT NULL,
    hostname        TEXT NOT NULL,
    subject         TEXT NOT NULL,
    body            TEXT NOT NULL,
    idem_key        TEXT NOT NULL UNIQUE,
    created_ms      BIGINT NOT NULL,
    next_ms         BIGINT NOT NULL,
    attempts        BIGINT NOT NULL,
    claim           TEXT,
    claim_until_ms  BIGINT
);
CREATE INDEX notify_queue_due ON notify_queue (next_ms);
CREATE TABLE host_conditions (
    hostname  TEXT NOT NULL,
    aspect    TEXT NOT NULL,
    state     TEXT NOT NULL,
    since_ms  BIGINT NOT NULL,
    PRIMARY KEY (hostname, aspect)
);
