//! The relay's persistent state behind one interface, [`Store`], with one implementation
//! per backend (SQLite now; PostgreSQL implements the same trait for cluster mode). Holds
//! key hashes and metadata, agents and usage counters; never message content. Callers see
//! records and [`StoreError`], never SQL.

mod sqlite;

use async_trait::async_trait;

pub use sqlite::SqliteStore;

/// An organisation: owns agents and keys.
#[derive(Debug, Clone)]
pub struct Organisation {
    /// Stable id, `org_` + hex.
    pub id: String,
    /// Unique display name.
    pub name: String,
}

/// An agent registration. Its name is unique in its organisation.
#[derive(Debug, Clone)]
pub struct AgentRecord {
    /// Stable id, `agt_` + hex.
    pub id: String,
    /// Owning organisation.
    pub org_id: String,
    /// Name used in `/mcp/{agent}/...`.
    pub name: String,
}

/// A key's stored form: metadata and the HMAC, never the key.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    /// `kid_...`
    pub id: String,
    /// Owning organisation.
    pub org_id: String,
    /// `client` or `agent`.
    pub kind: String,
    /// `live` or `test`.
    pub environment: String,
    /// Human label.
    pub name: String,
    /// `owner`, `admin`, `member`, `viewer`, or `agent` for agent keys.
    pub role: String,
    /// For agent keys, the agent it is bound to.
    pub agent_id: Option<String>,
    /// HMAC-SHA-256(pepper, key).
    pub hash: Vec<u8>,
    /// Creation time, ms since the epoch.
    pub created_at: i64,
    /// Expiry, ms since the epoch.
    pub expires_at: Option<i64>,
    /// Revocation time, ms since the epoch.
    pub revoked_at: Option<i64>,
    /// What the key may reach.
    pub scopes: Scopes,
    /// Its token bucket: requests per second; `None` is the relay's default.
    pub rate_per_second: Option<u32>,
    /// Its token bucket: burst; `None` is the relay's default.
    pub burst: Option<u32>,
    /// Last successful authentication, ms since the epoch (at most a minute stale).
    pub last_used_at: Option<i64>,
    /// The key that replaced this one in a rotation.
    pub replaced_by: Option<String>,
    /// Who created it: a key id, or `cli`.
    pub created_by: String,
}

/// What a client key may reach: `agent/server` globs, and optionally tool-name globs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Scopes {
    /// `agent/server` globs (`prod-eu/*`, `*/erp`); a request must match one.
    pub servers: Vec<String>,
    /// Tool-name globs; empty means every tool of the servers in scope.
    pub tools: Vec<String>,
}

impl Default for Scopes {
    fn default() -> Self {
        Self {
            servers: vec!["*/*".to_owned()],
            tools: Vec::new(),
        }
    }
}

/// One row of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    /// Position in the chain, from 1, without gaps.
    pub seq: i64,
    /// When, ms since the epoch (UTC).
    pub at: i64,
    /// Organisation concerned, if any.
    pub org_id: Option<String>,
    /// Who acted: a key id, `cli`, `relay`, or a source address.
    pub actor: String,
    /// What happened, e.g. `key.created`.
    pub action: String,
    /// What it happened to, e.g. a key id or an agent name.
    pub resource: String,
    /// The client's address.
    pub source: Option<String>,
    /// The client's user agent.
    pub user_agent: Option<String>,
    /// The request's correlation id.
    pub correlation_id: Option<String>,
    /// A JSON object with details; never key material or message content.
    pub detail: String,
    /// The previous row's hash (zeros for the first).
    pub prev_hash: Vec<u8>,
    /// This row's chained HMAC.
    pub hash: Vec<u8>,
}

/// The end of the audit chain, sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditHead {
    /// Sequence number of the last row.
    pub seq: i64,
    /// Its hash.
    pub hash: Vec<u8>,
    /// HMAC over `seq` and `hash`, so the head cannot be moved back without the pepper.
    pub seal: Vec<u8>,
}

/// One recorded call: who, where, what kind, how it went. No content.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageEvent {
    /// When the call started, ms since the epoch.
    pub at: i64,
    /// Organisation of the key.
    pub org_id: String,
    /// Key id that made the call.
    pub key_id: String,
    /// Agent name.
    pub agent: String,
    /// Server name.
    pub server: String,
    /// JSON-RPC method.
    pub method: String,
    /// Tool name, for `tools/call`.
    pub tool: Option<String>,
    /// Outcome.
    pub status: CallStatus,
    /// JSON-RPC error code, if the call ended in one.
    pub error_code: Option<i64>,
    /// Time to the response, microseconds.
    pub latency_us: i64,
    /// Request bytes.
    pub bytes_in: i64,
    /// Response bytes.
    pub bytes_out: i64,
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallStatus {
    /// A result.
    Ok,
    /// A JSON-RPC error from the upstream.
    Error,
    /// The relay's call timeout fired.
    Timeout,
    /// The agent or upstream was unavailable, or the tunnel dropped.
    Unavailable,
    /// The client cancelled or went away.
    Cancelled,
}

impl CallStatus {
    /// Name stored in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            CallStatus::Ok => "ok",
            CallStatus::Error => "error",
            CallStatus::Timeout => "timeout",
            CallStatus::Unavailable => "unavailable",
            CallStatus::Cancelled => "cancelled",
        }
    }
}

/// A new key to store.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// `kid_...`
    pub id: String,
    /// Owning organisation.
    pub org_id: String,
    /// `client` or `agent`.
    pub kind: &'static str,
    /// `live` or `test`.
    pub environment: &'static str,
    /// Human label.
    pub name: String,
    /// Role, `agent` for agent keys.
    pub role: String,
    /// For agent keys, the agent.
    pub agent_id: Option<String>,
    /// HMAC-SHA-256(pepper, key).
    pub hash: [u8; 32],
    /// Expiry, ms since the epoch.
    pub expires_at: Option<i64>,
    /// What the key may reach (client keys).
    pub scopes: Scopes,
    /// Token bucket rate; `None` is the relay's default.
    pub rate_per_second: Option<u32>,
    /// Token bucket burst; `None` is the relay's default.
    pub burst: Option<u32>,
    /// Who creates it: a key id, or `cli`.
    pub created_by: String,
}

/// What the store holds at one moment, as far as committed writes go: two equal versions
/// mean nothing was committed in between, by this process or by another one sharing the
/// database (`outpost-relay keys revoke`). Cheap to take (no query); the verified-key
/// cache compares one on every hit. Opaque: only equality means anything.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreVersion(pub(crate) [u8; STORE_VERSION_LEN]);

impl std::fmt::Debug for StoreVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreVersion(..)")
    }
}

/// Bytes of a [`StoreVersion`]: SQLite's two copies of the WAL-index header.
pub(crate) const STORE_VERSION_LEN: usize = 96;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database refused or failed the operation.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations could not be applied.
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// A unique name is taken.
    #[error("{0} already exists")]
    Conflict(String),
    /// The named object does not exist.
    #[error("{0} not found")]
    NotFound(String),
}

/// Everything the relay persists. One implementation per backend.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates an organisation; `Conflict` if the name is taken.
    async fn create_organisation(&self, name: &str) -> Result<Organisation, StoreError>;
    /// Finds an organisation by name.
    async fn organisation_by_name(&self, name: &str) -> Result<Option<Organisation>, StoreError>;
    /// Finds an organisation by id.
    async fn organisation_by_id(&self, id: &str) -> Result<Option<Organisation>, StoreError>;
    /// Renames an organisation; `Conflict` if the name is taken.
    async fn rename_organisation(&self, id: &str, name: &str) -> Result<(), StoreError>;
    /// An organisation's agents, by name.
    async fn agents(&self, org_id: &str) -> Result<Vec<AgentRecord>, StoreError>;
    /// Changes a client key's role.
    async fn set_key_role(&self, org_id: &str, id: &str, role: &str) -> Result<(), StoreError>;
    /// All organisations, oldest first.
    async fn organisations(&self) -> Result<Vec<Organisation>, StoreError>;
    /// Returns the agent of that name in the organisation, creating it if needed.
    async fn ensure_agent(&self, org_id: &str, name: &str) -> Result<AgentRecord, StoreError>;
    /// Finds an agent by id.
    async fn agent_by_id(&self, id: &str) -> Result<Option<AgentRecord>, StoreError>;
    /// Records that an agent's tunnel was registered now.
    async fn touch_agent(&self, id: &str, at: i64) -> Result<(), StoreError>;
    /// Stores a new key.
    async fn insert_key(&self, key: NewKey) -> Result<(), StoreError>;
    /// The store's version now, read without a query, or `None` when this backend (or this
    /// store at this moment) cannot tell: then nothing read from it may be reused.
    fn version(&self) -> Option<StoreVersion> {
        None
    }
    /// Finds a key by id.
    async fn key_by_id(&self, id: &str) -> Result<Option<KeyRecord>, StoreError>;
    /// An organisation's keys, oldest first.
    async fn keys(&self, org_id: &str) -> Result<Vec<KeyRecord>, StoreError>;
    /// Revokes a key; `NotFound` if the organisation has no such key.
    async fn revoke_key(&self, org_id: &str, id: &str, at: i64) -> Result<(), StoreError>;
    /// Records a successful authentication time.
    async fn touch_key(&self, id: &str, at: i64) -> Result<(), StoreError>;
    /// Stores `new` and makes it the replacement of `old_id`, which expires at
    /// `old_expires_at` (or earlier, if it already did), in one transaction.
    async fn rotate_key(
        &self,
        org_id: &str,
        old_id: &str,
        new: NewKey,
        old_expires_at: i64,
    ) -> Result<(), StoreError>;
    /// Keys whose expiry falls in `[from, to)`, not revoked.
    async fn keys_expiring_between(&self, from: i64, to: i64)
    -> Result<Vec<KeyRecord>, StoreError>;
    /// The end of the audit chain, if any row exists.
    async fn audit_head(&self) -> Result<Option<AuditHead>, StoreError>;
    /// Appends rows after `expected_seq` (0: the chain is empty) and moves the head, in one
    /// transaction; `Conflict` when another writer appended first.
    async fn append_audit(
        &self,
        expected_seq: i64,
        rows: &[AuditRow],
        head: &AuditHead,
    ) -> Result<(), StoreError>;
    /// Audit rows with `seq > after`, in order, at most `limit`.
    async fn audit_rows(&self, after: i64, limit: i64) -> Result<Vec<AuditRow>, StoreError>;
    /// Deletes usage events older than `before`; returns how many.
    async fn prune_usage(&self, before: i64) -> Result<u64, StoreError>;
    /// Appends usage events in one transaction.
    async fn record_usage(&self, events: &[UsageEvent]) -> Result<(), StoreError>;
    /// Usage events of an organisation since a time, oldest first.
    async fn usage_since(&self, org_id: &str, since: i64) -> Result<Vec<UsageEvent>, StoreError>;
}
