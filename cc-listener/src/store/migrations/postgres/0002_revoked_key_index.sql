-- As SQLite's migration 8.
CREATE INDEX api_keys_revoked ON api_keys (id) WHERE revoked_ms IS NOT NULL;
