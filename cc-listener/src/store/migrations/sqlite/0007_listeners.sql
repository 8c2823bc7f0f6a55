-- Which listener (and connection) holds each agent; each listener's
-- lease, renewed as one row however many agents it holds.
ALTER TABLE agents ADD COLUMN listener TEXT;
ALTER TABLE agents ADD COLUMN lease_conn INTEGER;
CREATE INDEX agents_by_listener ON agents (listener);
CREATE TABLE listeners (
    name      TEXT PRIMARY KEY,
    lease_ms  INTEGER NOT NULL
);
