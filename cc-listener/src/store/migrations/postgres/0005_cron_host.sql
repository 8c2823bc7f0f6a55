-- As SQLite's migration 11.
ALTER TABLE agents ADD COLUMN cron_host TEXT;
