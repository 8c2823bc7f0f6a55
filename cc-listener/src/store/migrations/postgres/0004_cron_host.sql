-- As SQLite's migration 10.
ALTER TABLE agents ADD COLUMN cron_host TEXT;
