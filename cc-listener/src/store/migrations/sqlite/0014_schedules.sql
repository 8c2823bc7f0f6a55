-- Scheduled runs recorded missed: one row per (host, entry, due minute),
-- so that however many listeners track a host, one records a given miss
-- (the one whose insert wins writes the event). Pruned by age.
CREATE TABLE schedule_misses (
    hostname  TEXT NOT NULL,
    entry_id  TEXT NOT NULL,
    due_ms    INTEGER NOT NULL,
    reason    TEXT NOT NULL,
    at_ms     INTEGER NOT NULL,
    PRIMARY KEY (hostname, entry_id, due_ms)
);
CREATE INDEX schedule_misses_by_age ON schedule_misses (at_ms);
