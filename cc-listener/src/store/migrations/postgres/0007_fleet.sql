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
