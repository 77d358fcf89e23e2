-- Outpost relay store, version 1. Holds key hashes and metadata, agents, and usage
-- counters. Never message content: no arguments, results, prompts or resources.

CREATE TABLE organisations (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

CREATE TABLE agents (
    id            TEXT PRIMARY KEY,
    org_id        TEXT NOT NULL REFERENCES organisations(id),
    name          TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    last_seen_at  INTEGER,
    UNIQUE (org_id, name)
);

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,          -- key id: kid_ + 16 hex of SHA-256(key)
    org_id       TEXT NOT NULL REFERENCES organisations(id),
    kind         TEXT NOT NULL CHECK (kind IN ('client', 'agent')),
    environment  TEXT NOT NULL CHECK (environment IN ('live', 'test')),
    name         TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer', 'agent')),
    agent_id     TEXT REFERENCES agents(id),
    hash         BLOB NOT NULL,             -- HMAC-SHA-256(pepper, key)
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    revoked_at   INTEGER,
    CHECK ((kind = 'agent') = (agent_id IS NOT NULL))
);
CREATE INDEX api_keys_org ON api_keys (org_id);

CREATE TABLE usage_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,           -- ms since the epoch, when the call started
    org_id      TEXT NOT NULL,
    key_id      TEXT NOT NULL,
    agent       TEXT NOT NULL,
    server      TEXT NOT NULL,
    method      TEXT NOT NULL,
    tool        TEXT,
    status      TEXT NOT NULL,              -- ok | error | timeout | unavailable | cancelled
    error_code  INTEGER,
    latency_us  INTEGER NOT NULL,
    bytes_in    INTEGER NOT NULL,
    bytes_out   INTEGER NOT NULL
);
CREATE INDEX usage_events_at ON usage_events (org_id, at);
