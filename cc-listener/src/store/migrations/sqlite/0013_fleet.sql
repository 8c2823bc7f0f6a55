-- Fleet cron entries (issue 26): the whole set as one row, replaced
-- atomically by `PUT /fleet/cron`; `generation` counts the replacements.
-- `entries`: JSON list of {id, target, schedule, command, timeout?,
-- jitter?, grace?}.
CREATE TABLE fleet_cron (
    one         INTEGER PRIMARY KEY CHECK (one = 1),
    generation  INTEGER NOT NULL,
    entries     TEXT NOT NULL,
    updated_ms  INTEGER NOT NULL
);
-- An operator's signed statement over a system-mode host's effective list
-- (own entries and matching fleet entries), from `ccctl cron apply
-- --system`; relayed untouched, and only while it covers the list.
CREATE TABLE fleet_signed (
    hostname    TEXT PRIMARY KEY,
    signed      TEXT NOT NULL,
    updated_ms  INTEGER NOT NULL
);
-- Hosts whose list must be sent again (their tags changed), in order
-- (`seq`): whichever listener holds the host sends it.
CREATE TABLE cron_resend (
    hostname    TEXT PRIMARY KEY,
    seq         INTEGER NOT NULL
);
CREATE INDEX cron_resend_seq ON cron_resend (seq);
