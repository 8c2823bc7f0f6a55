-- Events are read in (tx, id) order, written once for both engines. On
-- PostgreSQL `tx` is the writing transaction's id (migration 10 there);
-- SQLite has one writer, whose ids are already in commit order: 0.
ALTER TABLE events ADD COLUMN tx INTEGER NOT NULL DEFAULT 0;
CREATE INDEX events_by_tx ON events (tx, id);
-- As PostgreSQL's migration 10: the holder check names host and listener.
DROP INDEX agents_by_listener;
CREATE INDEX agents_by_listener ON agents (listener, hostname);
