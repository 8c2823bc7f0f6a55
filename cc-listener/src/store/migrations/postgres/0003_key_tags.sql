-- As SQLite's migration 9.
ALTER TABLE api_keys ADD COLUMN tags TEXT;
