//! API keys: generation from the OS CSPRNG, parsing, HMAC-SHA-256 under the pepper, and
//! constant-time verification against the store; and the [`Principal`] a request acts as.
//! Does not know HTTP beyond reading one `Authorization` value.
//!
//! A key is `{pk|ak}_{live|test}_` and 32 base62 characters (~190 bits). Its key id,
//! `kid_` and 16 hex digits of SHA-256 over the whole key, is how the store finds it:
//! non-secret (64 bits of a hash of a 190-bit random value reveal nothing usable) and
//! shown in listings. The store holds only HMAC-SHA-256(pepper, key).

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::store::{KeyRecord, Store, StoreError};

/// Which side of the relay a key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// `pk_`: an AI client calling MCP.
    Client,
    /// `ak_`: an agent opening a tunnel.
    Agent,
}

/// Which deployment a key belongs to; a relay accepts only its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    /// Production keys, `_live_`.
    Live,
    /// Test keys, `_test_`.
    Test,
}

/// The server-side secret keys are hashed under. At least [`MIN_PEPPER_LEN`] bytes.
pub struct Pepper(SecretBox<[u8]>);

/// A key's non-secret lookup id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyId(pub String);

/// A freshly generated key: the secret is shown once and never stored.
pub struct GeneratedKey {
    /// The whole key, for the person who asked for it.
    pub secret: SecretString,
    /// Its lookup id.
    pub key_id: KeyId,
    /// HMAC-SHA-256 of the key under the pepper: what the store keeps.
    pub hash: [u8; 32],
}

/// Who a request acts as, once its key checked out.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The key's id, for usage records and logs.
    pub key_id: KeyId,
    /// The organisation the key belongs to.
    pub org_id: String,
    /// For agent keys, the agent the key is bound to.
    pub agent_id: Option<String>,
    /// The key's role.
    pub role: String,
    /// The key's label.
    pub name: String,
    /// What the key may reach.
    pub scope: std::sync::Arc<crate::scope::Scope>,
    /// The key's own token bucket rate, requests per second; `None`: the relay's default.
    pub rate: Option<u32>,
    /// The key's own burst; `None`: the relay's default.
    pub burst: Option<u32>,
    /// When the key expires, ms since the epoch.
    pub expires_at: Option<i64>,
    /// The key that replaces it, during a rotation's overlap.
    pub replaced_by: Option<String>,
    /// When it was last used before this request (at most a minute stale).
    pub last_used_at: Option<i64>,
}

/// Why a key was refused. Every variant answers the same 401; the variant goes to the log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("no bearer credential")]
    Missing,
    /// Not of the key format, or of the other kind or environment.
    #[error("malformed key")]
    Malformed,
    /// No key with this id.
    #[error("unknown key {0:?}")]
    Unknown(KeyId),
    /// The id exists but the key does not match its hash.
    #[error("key {0:?} does not match")]
    Mismatch(KeyId),
    /// The key was revoked.
    #[error("key {0:?} is revoked")]
    Revoked(KeyId),
    /// The key has expired.
    #[error("key {0:?} has expired")]
    Expired(KeyId),
    /// The store could not answer.
    #[error("store unavailable: {0}")]
    Store(#[from] StoreError),
}

/// Why a pepper is not acceptable.
#[derive(Debug, thiserror::Error)]
#[error("the pepper must be at least {MIN_PEPPER_LEN} bytes")]
pub struct PepperTooShort;

// === impl Pepper ===

impl Pepper {
    /// Wraps pepper bytes, refusing short ones.
    pub fn new(bytes: SecretBox<[u8]>) -> Result<Self, PepperTooShort> {
        if bytes.expose_secret().len() < MIN_PEPPER_LEN {
            return Err(PepperTooShort);
        }
        Ok(Self(bytes))
    }

    /// A new random pepper, hex-encoded, for `init` to write to a file.
    pub fn generate_hex() -> SecretString {
        let mut raw = [0u8; 32];
        fill_random(&mut raw);
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        zeroize::Zeroize::zeroize(&mut raw);
        SecretString::from(hex)
    }

    /// HMAC-SHA-256 of `key` under this pepper.
    pub fn hash(&self, key: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.0.expose_secret())
            .expect("HMAC accepts keys of any length");
        mac.update(key.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for Pepper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pepper(MASKED)")
    }
}

// === impl KeyKind / Environment ===

impl KeyKind {
    fn prefix(self) -> &'static str {
        match self {
            KeyKind::Client => "pk",
            KeyKind::Agent => "ak",
        }
    }

    /// The name stored in the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Client => "client",
            KeyKind::Agent => "agent",
        }
    }
}

impl Environment {
    fn infix(self) -> &'static str {
        match self {
            Environment::Live => "live",
            Environment::Test => "test",
        }
    }

    /// The name used in config and in the `environment` column.
    pub fn as_str(self) -> &'static str {
        self.infix()
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// === keys ===

/// Generates a key of `kind` for `environment` from the OS CSPRNG.
pub fn generate(kind: KeyKind, environment: Environment, pepper: &Pepper) -> GeneratedKey {
    let mut body = String::with_capacity(KEY_BODY_LEN);
    let mut pool = [0u8; 64];
    while body.len() < KEY_BODY_LEN {
        fill_random(&mut pool);
        // Rejection sampling: 248 = 4 * 62, so bytes below it map uniformly onto base62.
        for &byte in pool.iter().filter(|&&b| b < 248) {
            if body.len() == KEY_BODY_LEN {
                break;
            }
            body.push(char::from(BASE62[usize::from(byte % 62)]));
        }
    }
    zeroize::Zeroize::zeroize(&mut pool);
    let key = format!("{}_{}_{}", kind.prefix(), environment.infix(), body);
    zeroize::Zeroize::zeroize(&mut body);
    let key_id = key_id(&key);
    let hash = pepper.hash(&key);
    GeneratedKey {
        secret: SecretString::from(key),
        key_id,
        hash,
    }
}

/// Checks a key's shape: prefix, environment and 32 base62 characters.
pub fn parse(key: &str, kind: KeyKind, environment: Environment) -> Result<KeyId, AuthError> {
    check_shape(key, kind, environment)?;
    Ok(key_id(key))
}

/// Checks a key's shape like [`parse`] and returns its key id with the SHA-256 of the
/// whole key it was taken from, which the verified-key cache compares a presented key by.
pub(crate) fn parse_with_digest(
    key: &str,
    kind: KeyKind,
    environment: Environment,
) -> Result<(KeyId, Zeroizing<[u8; 32]>), AuthError> {
    check_shape(key, kind, environment)?;
    let digest = Zeroizing::new(<[u8; 32]>::from(Sha256::digest(key.as_bytes())));
    Ok((key_id_of_digest(&digest), digest))
}

fn check_shape(key: &str, kind: KeyKind, environment: Environment) -> Result<(), AuthError> {
    let rest = key
        .strip_prefix(kind.prefix())
        .and_then(|r| r.strip_prefix('_'))
        .and_then(|r| r.strip_prefix(environment.infix()))
        .and_then(|r| r.strip_prefix('_'))
        .ok_or(AuthError::Malformed)?;
    if rest.len() != KEY_BODY_LEN || !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(AuthError::Malformed);
    }
    Ok(())
}

/// Whether a string looks like any Outpost key, of any kind or environment: used to refuse
/// keys in places they must never be (URLs).
pub fn looks_like_key(value: &str) -> bool {
    ["pk_live_", "pk_test_", "ak_live_", "ak_test_"]
        .iter()
        .any(|prefix| value.contains(prefix))
}

/// Authenticates a bearer key of `kind` against the store.
pub async fn authenticate(
    store: &dyn Store,
    pepper: &Pepper,
    environment: Environment,
    kind: KeyKind,
    key: &str,
) -> Result<Principal, AuthError> {
    let key_id = parse(key, kind, environment)?;
    // Hash before the lookup so an unknown id costs the same as a known one.
    let presented = pepper.hash(key);
    let Some(record) = store.key_by_id(&key_id.0).await? else {
        return Err(AuthError::Unknown(key_id));
    };
    let KeyRecord {
        hash,
        kind: stored_kind,
        revoked_at,
        expires_at,
        org_id,
        agent_id,
        role,
        name,
        scopes,
        rate_per_second,
        burst,
        replaced_by,
        last_used_at,
        ..
    } = record;
    let matches: bool = hash.as_slice().ct_eq(presented.as_slice()).into();
    if !matches || stored_kind != kind.as_str() {
        return Err(AuthError::Mismatch(key_id));
    }
    if revoked_at.is_some() {
        return Err(AuthError::Revoked(key_id));
    }
    if expires_at.is_some_and(|at| at <= now_ms()) {
        return Err(AuthError::Expired(key_id));
    }
    // Stored scopes were validated when the key was made; one that no longer compiles
    // reaches nothing (fail closed).
    let scope = crate::scope::Scope::new(&scopes).unwrap_or_else(|err| {
        tracing::error!(%err, key = %key_id.0, "stored scope invalid: the key reaches nothing");
        crate::scope::Scope::new(&crate::store::Scopes {
            servers: Vec::new(),
            tools: Vec::new(),
        })
        .expect("an empty scope compiles")
    });
    Ok(Principal {
        key_id,
        org_id,
        agent_id,
        role,
        name,
        scope: std::sync::Arc::new(scope),
        rate: rate_per_second,
        burst,
        expires_at,
        replaced_by,
        last_used_at,
    })
}

/// Reads a bearer credential from an `Authorization` value.
pub fn bearer(header: Option<&http::HeaderValue>) -> Result<&str, AuthError> {
    let value = header
        .and_then(|h| h.to_str().ok())
        .ok_or(AuthError::Missing)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Missing);
    }
    Ok(token.trim())
}

fn key_id(key: &str) -> KeyId {
    key_id_of_digest(&Sha256::digest(key.as_bytes()).into())
}

fn key_id_of_digest(digest: &[u8; 32]) -> KeyId {
    KeyId(prefixed_hex("kid_", &digest[..8]))
}

/// `prefix` then `bytes` in lowercase hex. Every call makes a few such ids (its session,
/// its correlation id, its key's id); `format!` with `hex::encode`, which collects chars
/// one at a time, took about 1 k instructions for each.
fn prefixed_hex(prefix: &str, bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(prefix.len() + 2 * bytes.len());
    text.push_str(prefix);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    text
}

/// Milliseconds since the Unix epoch, the store's time unit.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Fills `buf` from the operating system's CSPRNG.
pub fn fill_random(buf: &mut [u8]) {
    // Without an OS random source no key or session id can be safe; there is no fallback.
    getrandom::fill(buf).expect("the operating system's random number generator failed");
}

/// A random identifier of `bytes` random bytes, hex-encoded, with a prefix: a session id,
/// a correlation id. Drawn from the thread's CSPRNG (ChaCha12, seeded from the OS and
/// reseeded as it goes), since requests make several of them and a system call each cost
/// the relay 3 `getrandom` calls per request. Keys and peppers come from the OS directly
/// ([`fill_random`]).
pub fn random_id(prefix: &str, bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut raw);
    prefixed_hex(prefix, &raw)
}

/// Shortest pepper accepted.
pub const MIN_PEPPER_LEN: usize = 32;
const KEY_BODY_LEN: usize = 32;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

#[cfg(test)]
mod tests {
    use super::*;

    fn pepper() -> Pepper {
        Pepper::new(SecretBox::new(vec![7u8; 32].into_boxed_slice())).unwrap()
    }

    #[test]
    fn generated_keys_have_the_documented_shape() {
        let key = generate(KeyKind::Client, Environment::Live, &pepper());
        let secret = key.secret.expose_secret();
        assert!(secret.starts_with("pk_live_"));
        assert_eq!(secret.len(), "pk_live_".len() + 32);
        assert_eq!(
            parse(secret, KeyKind::Client, Environment::Live).unwrap(),
            key.key_id
        );
        assert_eq!(key.hash, pepper().hash(secret));
    }

    #[test]
    fn keys_of_another_kind_or_environment_are_malformed() {
        let key = generate(KeyKind::Agent, Environment::Test, &pepper());
        let secret = key.secret.expose_secret();
        assert!(parse(secret, KeyKind::Agent, Environment::Test).is_ok());
        assert!(parse(secret, KeyKind::Client, Environment::Test).is_err());
        assert!(parse(secret, KeyKind::Agent, Environment::Live).is_err());
        assert!(
            parse(
                &secret[..secret.len() - 1],
                KeyKind::Agent,
                Environment::Test
            )
            .is_err()
        );
        let bad_char = format!("{}!", &secret[..secret.len() - 1]);
        assert!(parse(&bad_char, KeyKind::Agent, Environment::Test).is_err());
    }

    #[test]
    fn keys_are_unique_and_use_the_whole_alphabet() {
        let mut seen = std::collections::HashSet::new();
        let mut chars = std::collections::HashSet::new();
        for _ in 0..500 {
            let key = generate(KeyKind::Client, Environment::Live, &pepper());
            let secret = key.secret.expose_secret().to_owned();
            chars.extend(secret["pk_live_".len()..].chars());
            assert!(seen.insert(secret));
        }
        assert_eq!(chars.len(), 62);
    }

    #[test]
    fn ids_are_their_prefix_then_lowercase_hex() {
        assert_eq!(
            prefixed_hex("kid_", &[0x00, 0x9f, 0xa0, 0xff]),
            "kid_009fa0ff"
        );
        for bytes in [[0u8; 0].as_slice(), &[1, 2, 254, 255], &[0xab; 16]] {
            assert_eq!(prefixed_hex("x", bytes), format!("x{}", hex::encode(bytes)));
        }
        let id = random_id("org_", 8);
        assert_eq!(id.len(), 4 + 16);
        assert!(
            id[4..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }

    #[test]
    fn the_hash_depends_on_the_pepper() {
        let other = Pepper::new(SecretBox::new(vec![8u8; 32].into_boxed_slice())).unwrap();
        assert_ne!(pepper().hash("pk_live_x"), other.hash("pk_live_x"));
    }

    #[test]
    fn short_peppers_are_refused_and_peppers_never_print() {
        assert!(Pepper::new(SecretBox::new(vec![1u8; 31].into_boxed_slice())).is_err());
        assert_eq!(format!("{:?}", pepper()), "Pepper(MASKED)");
        let key = generate(KeyKind::Client, Environment::Live, &pepper());
        assert!(!format!("{:?}", key.secret).contains("pk_live_"));
    }

    #[test]
    fn bearer_values_are_read_case_insensitively() {
        let value = http::HeaderValue::from_static("bearer abc");
        assert_eq!(bearer(Some(&value)).unwrap(), "abc");
        let basic = http::HeaderValue::from_static("Basic abc");
        assert!(bearer(Some(&basic)).is_err());
        assert!(bearer(None).is_err());
    }
}
