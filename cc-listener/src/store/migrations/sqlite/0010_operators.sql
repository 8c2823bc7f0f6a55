-- Named operators (issue #27): a role, the hosts its selector reaches
-- (`*`, `host:NAME`, `tag:T`, comma-joined), the SHA-256 of its token
-- (never the token), and when it expires or was revoked.
CREATE TABLE operators (
    name        TEXT PRIMARY KEY,
    role        TEXT NOT NULL,
    hosts       TEXT NOT NULL,
    token_hash  TEXT NOT NULL UNIQUE,
    created_ms  INTEGER NOT NULL,
    expires_ms  INTEGER,
    revoked_ms  INTEGER
);
-- The audit log: one row per state-changing request, login, failed login
-- and refusal; `hash` is the SHA-256 of the row's canonical form, which
-- includes `prev_hash`, the hash of the row before it (a chain).
CREATE TABLE audit (
    seq        INTEGER PRIMARY KEY,
    at_ms      INTEGER NOT NULL,
    operator   TEXT NOT NULL,
    source     TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT NOT NULL,
    ids        TEXT NOT NULL,
    outcome    INTEGER NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);
CREATE INDEX audit_by_age ON audit (at_ms);
-- The chain's one row: the last row appended (every append updates it
-- first, which serialises appends) and the anchor, the last pruned row.
CREATE TABLE audit_head (
    id           INTEGER PRIMARY KEY,
    last_seq     INTEGER NOT NULL,
    last_hash    TEXT NOT NULL,
    anchor_seq   INTEGER NOT NULL,
    anchor_hash  TEXT NOT NULL
);
INSERT INTO audit_head (id, last_seq, last_hash, anchor_seq, anchor_hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000',
        0, '0000000000000000000000000000000000000000000000000000000000000000');
-- Who submitted a job or a run (an operator's name); NULL before this.
ALTER TABLE jobs ADD COLUMN submitter TEXT;
ALTER TABLE runs ADD COLUMN submitter TEXT;
