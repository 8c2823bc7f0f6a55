-- Revoked keys, read by every listener's sweep each second, without
-- reading every key (a fleet of 100,000 hosts has 100,000 keys).
CREATE INDEX api_keys_revoked ON api_keys (id) WHERE revoked_ms IS NOT NULL;
