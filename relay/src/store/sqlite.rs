//! The embedded SQLite store: one database file in the data directory, WAL mode, schema
//! from `migrations/sqlite`. The default backend: zero setup.
//!
//! Its [`Store::version`] is the header of the WAL index (the `-shm` file beside the
//! database), which every commit of every connection, in this process or another, rewrites
//! before the commit returns: SQLite itself finds out whether another connection wrote by
//! comparing this header (<https://www.sqlite.org/walformat.html>, "The WAL-Index
//! Header"). Reading it is one `pread`, no query.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, Row, SqliteConnection, SqlitePool};

use super::{
    AgentRecord, AuditHead, AuditRow, CallStatus, KeyRecord, NewKey, Organisation,
    STORE_VERSION_LEN, Scopes, Store, StoreError, StoreVersion, UsageEvent,
};
use crate::auth::{now_ms, random_id};

/// A SQLite-backed [`Store`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Reads the WAL-index header for [`Store::version`]; `None` if it could not be opened.
    wal_index: Option<Arc<WalIndex>>,
}

/// The `-shm` file, and a connection that keeps it alive.
struct WalIndex {
    /// Held open for the store's lifetime and never used: SQLite deletes the `-shm` file
    /// when its last connection in this process closes (a pool's idle connections do), and
    /// a recreated file is a new one that `file` would not see.
    keep_alive: Mutex<Option<SqliteConnection>>,
    /// The `-shm` file, opened read-only.
    file: std::fs::File,
}

impl std::fmt::Debug for WalIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalIndex").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(POOL_SIZE)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        let wal_index = match WalIndex::open(&options, path).await {
            Ok(index) => Some(Arc::new(index)),
            Err(err) => {
                tracing::warn!(%err, "cannot watch the WAL index: verified keys are not cached");
                None
            }
        };
        Ok(Self { pool, wal_index })
    }

    /// Closes the pool and the WAL index's connection, checkpointing the WAL.
    pub async fn close(&self) {
        self.pool.close().await;
        let keep_alive = self.wal_index.as_ref().and_then(|index| {
            index
                .keep_alive
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
        });
        if let Some(conn) = keep_alive
            && let Err(err) = conn.close().await
        {
            tracing::debug!(%err, "closing the WAL index connection");
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_organisation(&self, name: &str) -> Result<Organisation, StoreError> {
        let org = Organisation {
            id: random_id("org_", 8),
            name: name.to_owned(),
        };
        sqlx::query("INSERT INTO organisations (id, name, created_at) VALUES (?, ?, ?)")
            .bind(&org.id)
            .bind(&org.name)
            .bind(now_ms())
            .execute(&self.pool)
            .await
            .map_err(|e| unique_to_conflict(e, format!("organisation {name:?}")))?;
        Ok(org)
    }

    async fn organisation_by_name(&self, name: &str) -> Result<Option<Organisation>, StoreError> {
        let row = sqlx::query("SELECT id, name FROM organisations WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| Organisation {
            id: r.get("id"),
            name: r.get("name"),
        }))
    }

    async fn organisation_by_id(&self, id: &str) -> Result<Option<Organisation>, StoreError> {
        let row = sqlx::query("SELECT id, name FROM organisations WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| Organisation {
            id: r.get("id"),
            name: r.get("name"),
        }))
    }

    async fn rename_organisation(&self, id: &str, name: &str) -> Result<(), StoreError> {
        let done = sqlx::query("UPDATE organisations SET name = ? WHERE id = ?")
            .bind(name)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(|e| unique_to_conflict(e, format!("organisation {name:?}")))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("organisation {id}")));
        }
        Ok(())
    }

    async fn agents(&self, org_id: &str) -> Result<Vec<AgentRecord>, StoreError> {
        let rows =
            sqlx::query("SELECT id, org_id, name FROM agents WHERE org_id = ? ORDER BY name")
                .bind(org_id)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.iter().map(agent_from_row).collect())
    }

    async fn set_key_role(&self, org_id: &str, id: &str, role: &str) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE api_keys SET role = ? WHERE org_id = ? AND id = ? AND kind = 'client'",
        )
        .bind(role)
        .bind(org_id)
        .bind(id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("client key {id}")));
        }
        Ok(())
    }

    async fn organisations(&self) -> Result<Vec<Organisation>, StoreError> {
        let rows = sqlx::query("SELECT id, name FROM organisations ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| Organisation {
                id: r.get("id"),
                name: r.get("name"),
            })
            .collect())
    }

    async fn ensure_agent(&self, org_id: &str, name: &str) -> Result<AgentRecord, StoreError> {
        sqlx::query(
            "INSERT INTO agents (id, org_id, name, created_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (org_id, name) DO NOTHING",
        )
        .bind(random_id("agt_", 8))
        .bind(org_id)
        .bind(name)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT id, org_id, name FROM agents WHERE org_id = ? AND name = ?")
            .bind(org_id)
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        Ok(agent_from_row(&row))
    }

    async fn agent_by_id(&self, id: &str) -> Result<Option<AgentRecord>, StoreError> {
        let row = sqlx::query("SELECT id, org_id, name FROM agents WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(agent_from_row))
    }

    async fn touch_agent(&self, id: &str, at: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE agents SET last_seen_at = ? WHERE id = ?")
            .bind(at)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn insert_key(&self, key: NewKey) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        insert_key(&mut conn, &key).await
    }

    fn version(&self) -> Option<StoreVersion> {
        // A closed store's `-shm` file may be gone, and a new one not seen.
        let index = self.wal_index.as_ref().filter(|_| !self.pool.is_closed())?;
        let mut header = [0u8; STORE_VERSION_LEN];
        index.file.read_exact_at(&mut header, 0).ok()?;
        // The two copies differ only while a commit is writing them: no version yet.
        let (first, second) = header.split_at(STORE_VERSION_LEN / 2);
        (first == second).then_some(StoreVersion(header))
    }

    async fn key_by_id(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(key_from_row))
    }

    async fn keys(&self, org_id: &str) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE org_id = ? ORDER BY created_at, id"
        ))
        .bind(org_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(key_from_row).collect())
    }

    async fn revoke_key(&self, org_id: &str, id: &str, at: i64) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE org_id = ? AND id = ?",
        )
        .bind(at)
        .bind(org_id)
        .bind(id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("key {id}")));
        }
        Ok(())
    }

    async fn touch_key(&self, id: &str, at: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE api_keys SET last_used_at = MAX(COALESCE(last_used_at, 0), ?) WHERE id = ?",
        )
        .bind(at)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn rotate_key(
        &self,
        org_id: &str,
        old_id: &str,
        new: NewKey,
        old_expires_at: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE api_keys SET replaced_by = ?, \
             expires_at = MIN(COALESCE(expires_at, ?), ?) \
             WHERE org_id = ? AND id = ? AND revoked_at IS NULL AND replaced_by IS NULL",
        )
        .bind(&new.id)
        .bind(old_expires_at)
        .bind(old_expires_at)
        .bind(org_id)
        .bind(old_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!(
                "active, unrotated key {old_id}"
            )));
        }
        insert_key(&mut tx, &new).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn keys_expiring_between(
        &self,
        from: i64,
        to: i64,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE expires_at >= ? AND expires_at < ? \
             AND revoked_at IS NULL ORDER BY expires_at, id"
        ))
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(key_from_row).collect())
    }

    async fn audit_head(&self) -> Result<Option<AuditHead>, StoreError> {
        let row = sqlx::query("SELECT seq, hash, seal FROM audit_head WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| AuditHead {
            seq: r.get("seq"),
            hash: r.get("hash"),
            seal: r.get("seal"),
        }))
    }

    async fn append_audit(
        &self,
        expected_seq: i64,
        rows: &[AuditRow],
        head: &AuditHead,
    ) -> Result<(), StoreError> {
        // BEGIN IMMEDIATE: the write lock first, so two writers cannot both read the same
        // head; the loser sees the moved head and gets Conflict. sqlx's transaction rolls
        // back if this future is dropped or fails, so no pooled connection is left inside it.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let current: Option<i64> = sqlx::query_scalar("SELECT seq FROM audit_head WHERE id = 1")
            .fetch_optional(&mut *tx)
            .await?;
        if current.unwrap_or(0) != expected_seq {
            return Err(StoreError::Conflict("the audit chain's head".into()));
        }
        for row in rows {
            sqlx::query(
                "INSERT INTO audit_events (seq, at, org_id, actor, action, resource, source, \
                 user_agent, correlation_id, detail, prev_hash, hash) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(row.seq)
            .bind(row.at)
            .bind(&row.org_id)
            .bind(&row.actor)
            .bind(&row.action)
            .bind(&row.resource)
            .bind(&row.source)
            .bind(&row.user_agent)
            .bind(&row.correlation_id)
            .bind(&row.detail)
            .bind(&row.prev_hash)
            .bind(&row.hash)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO audit_head (id, seq, hash, seal) VALUES (1, ?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, \
             seal = excluded.seal",
        )
        .bind(head.seq)
        .bind(&head.hash)
        .bind(&head.seal)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn audit_rows(&self, after: i64, limit: i64) -> Result<Vec<AuditRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, at, org_id, actor, action, resource, source, user_agent, \
             correlation_id, detail, prev_hash, hash FROM audit_events \
             WHERE seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| AuditRow {
                seq: r.get("seq"),
                at: r.get("at"),
                org_id: r.get("org_id"),
                actor: r.get("actor"),
                action: r.get("action"),
                resource: r.get("resource"),
                source: r.get("source"),
                user_agent: r.get("user_agent"),
                correlation_id: r.get("correlation_id"),
                detail: r.get("detail"),
                prev_hash: r.get("prev_hash"),
                hash: r.get("hash"),
            })
            .collect())
    }

    async fn prune_usage(&self, before: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM usage_events WHERE at < ?")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn record_usage(&self, events: &[UsageEvent]) -> Result<(), StoreError> {
        // Rows go in a few at a time: each statement is one round trip to the connection's
        // thread, which a statement per event made the larger part of the writer's cost.
        // And in a few shapes only, so that every statement is prepared once per
        // connection and found in its cache afterwards: a batch's last rows in an INSERT
        // of their own count were a new statement to prepare at nearly every flush.
        let mut tx = self.pool.begin().await?;
        let mut rest = events;
        while !rest.is_empty() {
            let (rows, after) = rest.split_at(insert_rows(rest.len()));
            rest = after;
            let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO usage_events (at, org_id, key_id, agent, server, method, tool, \
                 status, error_code, latency_us, bytes_in, bytes_out) ",
            );
            insert.push_values(rows, |mut row, e| {
                row.push_bind(e.at)
                    .push_bind(&e.org_id)
                    .push_bind(&e.key_id)
                    .push_bind(&e.agent)
                    .push_bind(&e.server)
                    .push_bind(&e.method)
                    .push_bind(&e.tool)
                    .push_bind(e.status.as_str())
                    .push_bind(e.error_code)
                    .push_bind(e.latency_us)
                    .push_bind(e.bytes_in)
                    .push_bind(e.bytes_out);
            });
            insert.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn usage_since(&self, org_id: &str, since: i64) -> Result<Vec<UsageEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, org_id, key_id, agent, server, method, tool, status, error_code, \
             latency_us, bytes_in, bytes_out FROM usage_events \
             WHERE org_id = ? AND at >= ? ORDER BY at, id",
        )
        .bind(org_id)
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| UsageEvent {
                at: r.get("at"),
                org_id: r.get("org_id"),
                key_id: r.get("key_id"),
                agent: r.get("agent"),
                server: r.get("server"),
                method: r.get("method"),
                tool: r.get("tool"),
                status: status_from_str(r.get("status")),
                error_code: r.get("error_code"),
                latency_us: r.get("latency_us"),
                bytes_in: r.get("bytes_in"),
                bytes_out: r.get("bytes_out"),
            })
            .collect())
    }
}

fn agent_from_row(row: &sqlx::sqlite::SqliteRow) -> AgentRecord {
    AgentRecord {
        id: row.get("id"),
        org_id: row.get("org_id"),
        name: row.get("name"),
    }
}

// === impl WalIndex ===

impl WalIndex {
    /// Opens the keep-alive connection, makes it read once (which maps the WAL index), then
    /// opens the `-shm` file.
    async fn open(options: &SqliteConnectOptions, path: &Path) -> Result<Self, std::io::Error> {
        let mut conn = options
            .connect()
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        sqlx::query("SELECT count(*) FROM sqlite_master")
            .fetch_one(&mut conn)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut shm = path.as_os_str().to_owned();
        shm.push("-shm");
        let file = std::fs::File::open(shm)?;
        Ok(Self {
            keep_alive: Mutex::new(Some(conn)),
            file,
        })
    }
}

async fn insert_key(conn: &mut sqlx::SqliteConnection, key: &NewKey) -> Result<(), StoreError> {
    let scopes = serde_json::to_string(&key.scopes.servers).unwrap_or_else(|_| "[]".into());
    let tools = serde_json::to_string(&key.scopes.tools).unwrap_or_else(|_| "[]".into());
    sqlx::query(
        "INSERT INTO api_keys (id, org_id, kind, environment, name, role, agent_id, hash, \
         created_at, expires_at, scopes, tool_scopes, rate_per_second, burst, created_by) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&key.id)
    .bind(&key.org_id)
    .bind(key.kind)
    .bind(key.environment)
    .bind(&key.name)
    .bind(&key.role)
    .bind(&key.agent_id)
    .bind(key.hash.as_slice())
    .bind(now_ms())
    .bind(key.expires_at)
    .bind(scopes)
    .bind(tools)
    .bind(key.rate_per_second.map(i64::from))
    .bind(key.burst.map(i64::from))
    .bind(&key.created_by)
    .execute(&mut *conn)
    .await
    .map_err(|e| unique_to_conflict(e, format!("key {}", key.id)))?;
    Ok(())
}

fn key_from_row(row: &sqlx::sqlite::SqliteRow) -> KeyRecord {
    let list = |column: &str| -> Vec<String> {
        serde_json::from_str(&row.get::<String, _>(column)).unwrap_or_default()
    };
    let rate = |column: &str| -> Option<u32> {
        row.get::<Option<i64>, _>(column)
            .and_then(|v| u32::try_from(v).ok())
    };
    KeyRecord {
        scopes: Scopes {
            servers: list("scopes"),
            tools: list("tool_scopes"),
        },
        rate_per_second: rate("rate_per_second"),
        burst: rate("burst"),
        last_used_at: row.get("last_used_at"),
        replaced_by: row.get("replaced_by"),
        created_by: row.get("created_by"),
        id: row.get("id"),
        org_id: row.get("org_id"),
        kind: row.get("kind"),
        environment: row.get("environment"),
        name: row.get("name"),
        role: row.get("role"),
        agent_id: row.get("agent_id"),
        hash: row.get("hash"),
        created_at: row.get("created_at"),
        expires_at: row.get("expires_at"),
        revoked_at: row.get("revoked_at"),
    }
}

fn status_from_str(value: &str) -> CallStatus {
    match value {
        "ok" => CallStatus::Ok,
        "timeout" => CallStatus::Timeout,
        "unavailable" => CallStatus::Unavailable,
        "cancelled" => CallStatus::Cancelled,
        _ => CallStatus::Error,
    }
}

fn unique_to_conflict(err: sqlx::Error, what: String) -> StoreError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(what),
        _ => StoreError::Database(err),
    }
}

const POOL_SIZE: u32 = 4;
/// Usage rows per INSERT: 12 values each, 768 in all, within the 999 bound parameters of
/// SQLite builds before 3.32.
const USAGE_ROWS_PER_INSERT: usize = 64;
/// The row counts an INSERT of usage takes, largest first: a batch of any size is written
/// in at most three statements of each smaller shape beyond its full ones.
const USAGE_INSERT_SHAPES: [usize; 4] = [USAGE_ROWS_PER_INSERT, 16, 4, 1];

/// How many of `left` rows the next INSERT takes: the largest shape that fits.
fn insert_rows(left: usize) -> usize {
    USAGE_INSERT_SHAPES
        .into_iter()
        .find(|&shape| shape <= left)
        .unwrap_or(left)
}
const KEY_COLUMNS: &str = "id, org_id, kind, environment, name, role, agent_id, hash, \
                           created_at, expires_at, revoked_at, scopes, tool_scopes, \
                           rate_per_second, burst, last_used_at, replaced_by, created_by";

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_agents_and_usage_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).await.unwrap();
        let org = store.create_organisation("acme").await.unwrap();
        assert!(matches!(
            store.create_organisation("acme").await,
            Err(StoreError::Conflict(_))
        ));
        let agent = store.ensure_agent(&org.id, "prod-eu").await.unwrap();
        assert_eq!(
            store.ensure_agent(&org.id, "prod-eu").await.unwrap().id,
            agent.id
        );
        store
            .insert_key(NewKey {
                id: "kid_1".into(),
                org_id: org.id.clone(),
                kind: "agent",
                environment: "live",
                name: "agent key".into(),
                role: "agent".into(),
                agent_id: Some(agent.id.clone()),
                hash: [1; 32],
                expires_at: None,
                scopes: Scopes::default(),
                rate_per_second: None,
                burst: None,
                created_by: "cli".into(),
            })
            .await
            .unwrap();
        let key = store.key_by_id("kid_1").await.unwrap().unwrap();
        assert_eq!(key.hash, vec![1; 32]);
        assert_eq!(key.agent_id.as_deref(), Some(agent.id.as_str()));
        store.revoke_key(&org.id, "kid_1", 5).await.unwrap();
        assert_eq!(
            store.key_by_id("kid_1").await.unwrap().unwrap().revoked_at,
            Some(5)
        );
        assert!(matches!(
            store.revoke_key("org_other", "kid_1", 6).await,
            Err(StoreError::NotFound(_))
        ));
        let event = UsageEvent {
            at: 10,
            org_id: org.id.clone(),
            key_id: "kid_1".into(),
            agent: "prod-eu".into(),
            server: "erp".into(),
            method: "tools/call".into(),
            tool: Some("echo".into()),
            status: CallStatus::Ok,
            error_code: None,
            latency_us: 1500,
            bytes_in: 80,
            bytes_out: 120,
        };
        store
            .record_usage(&[event.clone(), event.clone()])
            .await
            .unwrap();
        assert_eq!(
            store.usage_since(&org.id, 0).await.unwrap(),
            vec![event.clone(), event]
        );
        assert!(store.usage_since(&org.id, 11).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_batch_larger_than_one_insert_is_recorded_whole_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).await.unwrap();
        let org = store.create_organisation("acme").await.unwrap();
        let events: Vec<UsageEvent> = (0..USAGE_ROWS_PER_INSERT as i64 * 2 + 3)
            .map(|n| UsageEvent {
                at: n,
                org_id: org.id.clone(),
                key_id: format!("kid_{n}"),
                agent: "prod-eu".into(),
                server: "erp".into(),
                method: "tools/call".into(),
                tool: (n % 2 == 0).then(|| format!("tool_{n}")),
                status: if n % 3 == 0 {
                    CallStatus::Ok
                } else {
                    CallStatus::Error
                },
                error_code: (n % 3 != 0).then_some(-32000 - n),
                latency_us: n * 10,
                bytes_in: n + 1,
                bytes_out: n + 2,
            })
            .collect();
        store.record_usage(&events).await.unwrap();
        assert_eq!(store.usage_since(&org.id, 0).await.unwrap(), events);
    }

    #[test]
    fn a_batch_of_any_size_is_cut_into_a_few_insert_shapes() {
        for len in 0..1_000 {
            let mut left = len;
            let mut cuts = Vec::new();
            while left > 0 {
                let rows = insert_rows(left);
                assert!(USAGE_INSERT_SHAPES.contains(&rows), "{len}: {rows}");
                cuts.push(rows);
                left -= rows;
            }
            let full = len / USAGE_ROWS_PER_INSERT;
            assert!(cuts.len() <= full + 9, "{len}: {cuts:?}");
            assert!(cuts.is_sorted_by(|a, b| a >= b), "{len}: {cuts:?}");
        }
    }
}
