-- As SQLite's migration 14.
CREATE TABLE schedule_misses (
    hostname  TEXT NOT NULL,
    entry_id  TEXT NOT NULL,
    due_ms    BIGINT NOT NULL,
    reason    TEXT NOT NULL,
    at_ms     BIGINT NOT NULL,
    PRIMARY KEY (hostname, entry_id, due_ms)
);
CREATE INDEX schedule_misses_by_age ON schedule_misses (at_ms);
