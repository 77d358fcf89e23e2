//! The verified-key cache: client keys that passed [`auth::authenticate`], so that the next
//! request with the same key skips the HMAC and the store lookup. Owns a bounded map from
//! key id to what that verification found; does not decide whether a key is valid (a miss
//! always goes through [`auth::authenticate`], which refuses, logs and counts as before),
//! and does not touch the rate limiter, scopes or last-use bookkeeping (callers do, for a
//! hit as for a miss).
//!
//! A hit needs all of:
//! - the presented key's SHA-256 equal, compared in constant time, to that of the key
//!   verified (the key id is only 64 bits of it; a wrong key with a known id misses);
//! - the store's [`StoreVersion`] unchanged since that verification began: any commit to
//!   the store, by this relay (the admin API) or another process (`outpost-relay keys
//!   revoke`), changes it, so a revocation, rotation, role or scope change is seen by the
//!   very next request; a store that cannot tell its version caches nothing;
//! - the key's expiry still ahead, checked against the clock on every hit.
//!
//! Holds no key: the SHA-256 of each (zeroized when dropped), never printed.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::auth::{self, AuthError, Environment, KeyId, KeyKind, Pepper, Principal};
use crate::store::{Store, StoreVersion};

/// Client keys verified against the store, by key id.
pub(crate) struct VerifiedKeys {
    entries: Mutex<HashMap<KeyId, Verified>>,
    /// At most this many keys are remembered; past it, stale entries go, then new keys
    /// are verified every time rather than remembered.
    capacity: usize,
}

/// What one verification found.
struct Verified {
    /// SHA-256 of the whole key that was verified.
    digest: Zeroizing<[u8; 32]>,
    /// The store's version read before the lookup that verified it.
    version: StoreVersion,
    /// Who the key acts as.
    principal: Principal,
}

// === impl VerifiedKeys ===

impl VerifiedKeys {
    /// An empty cache of at most `capacity` keys.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// Authenticates a client key: from the cache when the same key was verified and
    /// nothing was committed to the store since, else against the store (and then
    /// remembered).
    pub(crate) async fn authenticate(
        &self,
        store: &dyn Store,
        pepper: &Pepper,
        environment: Environment,
        key: &str,
    ) -> Result<Principal, AuthError> {
        let (key_id, digest) = auth::parse_with_digest(key, KeyKind::Client, environment)?;
        let version = store.version();
        if let Some(version) = &version
            && let Some(principal) = self.hit(&key_id, &digest, version, auth::now_ms())
        {
            return Ok(principal);
        }
        let principal =
            auth::authenticate(store, pepper, environment, KeyKind::Client, key).await?;
        if let Some(version) = version {
            self.remember(key_id, digest, version, &principal);
        }
        Ok(principal)
    }

    /// The cached principal for this key, if it is still good.
    fn hit(
        &self,
        key_id: &KeyId,
        digest: &[u8; 32],
        version: &StoreVersion,
        now_ms: i64,
    ) -> Option<Principal> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = entries.get(key_id)?;
        let same_key: bool = entry.digest.as_slice().ct_eq(digest.as_slice()).into();
        if !same_key {
            return None;
        }
        if entry.version != *version || entry.principal.expires_at.is_some_and(|at| at <= now_ms) {
            entries.remove(key_id);
            return None;
        }
        Some(entry.principal.clone())
    }

    fn remember(
        &self,
        key_id: KeyId,
        digest: Zeroizing<[u8; 32]>,
        version: StoreVersion,
        principal: &Principal,
    ) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= self.capacity && !entries.contains_key(&key_id) {
            entries.retain(|_, entry| entry.version == version);
            if entries.len() >= self.capacity {
                return;
            }
        }
        entries.insert(
            key_id,
            Verified {
                digest,
                version,
                principal: principal.clone(),
            },
        );
    }
}

impl std::fmt::Debug for VerifiedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedKeys")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// Verified client keys a relay remembers at most.
pub(crate) const DEFAULT_VERIFIED_KEYS: usize = 10_000;

#[cfg(test)]
mod tests {
    use secrecy::{ExposeSecret, SecretBox};

    use super::*;
    use crate::store::{NewKey, Scopes, SqliteStore};

    struct Fixture {
        _dir: tempfile::TempDir,
        store: SqliteStore,
        /// Another pool on the same file, as another process would write it.
        other: SqliteStore,
        pepper: Pepper,
        org_id: String,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outpost.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let other = SqliteStore::open(&path).await.unwrap();
        let org_id = store.create_organisation("acme").await.unwrap().id;
        let pepper = Pepper::new(SecretBox::new(vec![7u8; 32].into_boxed_slice())).unwrap();
        Fixture {
            _dir: dir,
            store,
            other,
            pepper,
            org_id,
        }
    }

    async fn issue(f: &Fixture, expires_at: Option<i64>) -> (String, KeyId) {
        let key = auth::generate(KeyKind::Client, Environment::Live, &f.pepper);
        f.store
            .insert_key(NewKey {
                id: key.key_id.0.clone(),
                org_id: f.org_id.clone(),
                kind: "client",
                environment: "live",
                name: "t".into(),
                role: "member".into(),
                agent_id: None,
                hash: key.hash,
                expires_at,
                scopes: Scopes::default(),
                rate_per_second: None,
                burst: None,
                created_by: "cli".into(),
            })
            .await
            .unwrap();
        (key.secret.expose_secret().to_owned(), key.key_id)
    }

    async fn check(f: &Fixture, cache: &VerifiedKeys, key: &str) -> Result<Principal, AuthError> {
        cache
            .authenticate(&f.store, &f.pepper, Environment::Live, key)
            .await
    }

    #[tokio::test]
    async fn a_verified_key_is_served_from_the_cache_until_the_store_changes() {
        let f = fixture().await;
        let cache = VerifiedKeys::new(DEFAULT_VERIFIED_KEYS);
        let (key, key_id) = issue(&f, None).await;
        check(&f, &cache, &key).await.unwrap();
        let (_, digest) =
            auth::parse_with_digest(&key, KeyKind::Client, Environment::Live).unwrap();
        let version = f.store.version().expect("SQLite in WAL mode has a version");
        assert!(
            cache
                .hit(&key_id, &digest, &version, auth::now_ms())
                .is_some()
        );

        // A commit through another pool (as `keys revoke` in another process does).
        f.other
            .revoke_key(&f.org_id, &key_id.0, auth::now_ms())
            .await
            .unwrap();
        let changed = f.store.version().unwrap();
        assert!(changed != version);
        assert!(
            cache
                .hit(&key_id, &digest, &changed, auth::now_ms())
                .is_none()
        );
        assert!(matches!(
            check(&f, &cache, &key).await,
            Err(AuthError::Revoked(_))
        ));
    }

    #[tokio::test]
    async fn a_wrong_key_under_a_cached_key_id_misses() {
        let f = fixture().await;
        let cache = VerifiedKeys::new(DEFAULT_VERIFIED_KEYS);
        let (key, key_id) = issue(&f, None).await;
        check(&f, &cache, &key).await.unwrap();
        let version = f.store.version().unwrap();
        let (_, other_digest) = auth::parse_with_digest(
            &format!("pk_live_{}", "B".repeat(32)),
            KeyKind::Client,
            Environment::Live,
        )
        .unwrap();
        assert!(
            cache
                .hit(&key_id, &other_digest, &version, auth::now_ms())
                .is_none()
        );
    }

    #[tokio::test]
    async fn an_expired_key_misses() {
        let f = fixture().await;
        let cache = VerifiedKeys::new(DEFAULT_VERIFIED_KEYS);
        let expires_at = auth::now_ms() + 60_000;
        let (key, key_id) = issue(&f, Some(expires_at)).await;
        check(&f, &cache, &key).await.unwrap();
        let (_, digest) =
            auth::parse_with_digest(&key, KeyKind::Client, Environment::Live).unwrap();
        let version = f.store.version().unwrap();
        assert!(
            cache
                .hit(&key_id, &digest, &version, expires_at - 1)
                .is_some()
        );
        assert!(cache.hit(&key_id, &digest, &version, expires_at).is_none());
    }

    #[tokio::test]
    async fn the_cache_stays_within_its_capacity() {
        let f = fixture().await;
        let cache = VerifiedKeys::new(2);
        let mut keys = Vec::new();
        for _ in 0..3 {
            keys.push(issue(&f, None).await);
        }
        for (key, _) in &keys {
            check(&f, &cache, key).await.unwrap();
        }
        let remembered = cache.entries.lock().unwrap().len();
        assert!(remembered <= 2, "{remembered}");
        // Every key still authenticates, remembered or not.
        for (key, _) in &keys {
            check(&f, &cache, key).await.unwrap();
        }
    }
}
