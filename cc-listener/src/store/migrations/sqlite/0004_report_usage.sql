-- What each host's reports take: the quota is checked against it in the
-- transaction that stores a report.
ALTER TABLE reports ADD COLUMN size INTEGER NOT NULL DEFAULT 0;
UPDATE reports SET size = length(CAST(payload AS BLOB));
CREATE TABLE report_usage (
    hostname   TEXT PRIMARY KEY,
    bytes      INTEGER NOT NULL,
    unmatched  INTEGER NOT NULL
);
INSERT INTO report_usage (hostname, bytes, unmatched)
    SELECT hostname, SUM(size), SUM(kind = 'unmatched') FROM reports GROUP BY hostname;
CREATE INDEX reports_by_age ON reports (received_ms);
