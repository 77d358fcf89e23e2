-- Outpost relay store, version 2: what a key may reach and how fast, when it was last
-- used, what replaced it, and the hash-chained audit trail. Still no message content.

-- JSON array of `agent/server` globs the key may reach; every server by default.
ALTER TABLE api_keys ADD COLUMN scopes TEXT NOT NULL DEFAULT '["*/*"]';
-- JSON array of tool-name globs the key may call; empty: every tool in scope.
ALTER TABLE api_keys ADD COLUMN tool_scopes TEXT NOT NULL DEFAULT '[]';
-- Token bucket of the key; NULL: the relay's configured default.
ALTER TABLE api_keys ADD COLUMN rate_per_second INTEGER;
ALTER TABLE api_keys ADD COLUMN burst INTEGER;
-- Last successful authentication, ms since the epoch (updated at most once a minute).
ALTER TABLE api_keys ADD COLUMN last_used_at INTEGER;
-- Rotation: the id of the key that replaces this one.
ALTER TABLE api_keys ADD COLUMN replaced_by TEXT;
-- Who created the key: a key id, or `cli` for the local command line.
ALTER TABLE api_keys ADD COLUMN created_by TEXT NOT NULL DEFAULT 'cli';

-- Append-only. Each row's hash is HMAC-SHA-256 (under a key derived from the pepper) of
-- the previous row's hash and this row's fields, so a changed, inserted or deleted row
-- breaks the chain, and only a holder of the pepper could forge a new one.
CREATE TABLE audit_events (
    seq             INTEGER PRIMARY KEY,   -- 1, 2, 3, ... without gaps
    at              INTEGER NOT NULL,      -- ms since the epoch, UTC
    org_id          TEXT,
    actor           TEXT NOT NULL,         -- key id, `cli`, `relay`, or a source address
    action          TEXT NOT NULL,         -- e.g. key.created, agent.connected
    resource        TEXT NOT NULL,
    source          TEXT,                  -- client address
    user_agent      TEXT,
    correlation_id  TEXT,
    detail          TEXT NOT NULL,         -- JSON object; never key material or content
    prev_hash       BLOB NOT NULL,
    hash            BLOB NOT NULL
);
-- Where the chain ends, updated with every append and sealed by its own HMAC: deleting
-- the newest rows shows too.
CREATE TABLE audit_head (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    seq   INTEGER NOT NULL,
    hash  BLOB NOT NULL,
    seal  BLOB NOT NULL
);
