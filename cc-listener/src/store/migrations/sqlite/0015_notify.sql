-- Notifications (issue #26, `[[notify]]`): the notifier reads the event log
-- from `notify_cursor` (one row: the last event id it has turned into
-- notifications, started at the log's end so history is not re-sent), keeps
-- the state of each (host, aspect, subject) in `notify_state` (aspect 'cron':
-- subject = entry id, state ok | failed | missed; aspect 'host': subject
-- 'connection' | 'root' | 'cron', state ok | bad), and queues one row per
-- notification to send in `notify_queue`, in the transaction that advances
-- the cursor. A row is sent by whoever claims it (`claim`, until
-- `claim_until_ms`) and deleted once delivered or given up.
CREATE TABLE notify_cursor (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    last_event_id  INTEGER NOT NULL
);
INSERT INTO notify_cursor (id, last_event_id) SELECT 1, coalesce(max(id), 0) FROM events;
CREATE TABLE notify_state (
    hostname  TEXT NOT NULL,
    aspect    TEXT NOT NULL,
    subject   TEXT NOT NULL,
    state     TEXT NOT NULL,
    since_ms  INTEGER NOT NULL,
    PRIMARY KEY (hostname, aspect, subject)
);
CREATE TABLE notify_queue (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    sink            TEXT NOT NULL,
    event           TEXT NOT NULL,
    hostname        TEXT NOT NULL,
    subject         TEXT NOT NULL,
    body            TEXT NOT NULL,
    idem_key        TEXT NOT NULL UNIQUE,
    created_ms      INTEGER NOT NULL,
    next_ms         INTEGER NOT NULL,
    attempts        INTEGER NOT NULL,
    claim           TEXT,
    claim_until_ms  INTEGER
);
CREATE INDEX notify_queue_due ON notify_queue (next_ms);
-- What the listener last saw of a host's conditions (aspect 'connection':
-- ok | offline; 'root': ok | root_in_user_mode; 'cron': ok | cron_refused):
-- a kind 'host' event is written only when one changes, in the same
-- transaction.
CREATE TABLE host_conditions (
    hostname  TEXT NOT NULL,
    aspect    TEXT NOT NULL,
    state     TEXT NOT NULL,
    since_ms  INTEGER NOT NULL,
    PRIMARY KEY (hostname, aspect)
);
