-- Hostnames are case-insensitive: one canonical, lowercase form. Where
-- two rows differ only in case, the first one updated keeps the name;
-- a key left bound to a mixed-case name matches no registration again.
UPDATE OR IGNORE api_keys SET hostname = lower(hostname)
    WHERE hostname IS NOT NULL AND hostname <> lower(hostname);
UPDATE OR IGNORE agents SET hostname = lower(hostname) WHERE hostname <> lower(hostname);
DELETE FROM agents WHERE hostname <> lower(hostname);
UPDATE jobs SET hostname = lower(hostname) WHERE hostname <> lower(hostname);
UPDATE OR IGNORE cron_sets SET hostname = lower(hostname) WHERE hostname <> lower(hostname);
UPDATE OR IGNORE reports SET hostname = lower(hostname) WHERE hostname <> lower(hostname);
