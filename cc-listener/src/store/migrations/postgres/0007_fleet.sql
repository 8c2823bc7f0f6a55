-- As SQLite's migration 13.
CREATE TABLE fleet_cron (
    one         BIGINT PRIMARY KEY CHECK (one = 1),
    generation  BIGINT NOT NULL,
    entries     TEXT NOT NULL,
    updated_ms  BIGINT NOT NULL
);
CREATE TABLE fleet_signed (
    hostname    TEXT PRIMARY KEY,
    signed      TEXT NOT NULL,
    updated_ms  BIGINT NOT NULL
);
-- Hosts whose list must be sent again (their tags changed), in order
-- (`seq`): whichever listener holds the host sends it.
CREATE TABLE cron_resend (
    hostname    TEXT PRIMARY KEY,
    seq         BIGINT NOT NULL
);
CREATE INDEX cron_resend_seq ON cron_resend (seq);
