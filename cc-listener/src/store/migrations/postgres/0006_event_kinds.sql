-- As SQLite's migration 12.
ALTER TABLE events ADD COLUMN kind TEXT NOT NULL DEFAULT 'job';
ALTER TABLE events ADD COLUMN detail TEXT;
