//! The audit trail: append-only events chained by HMAC-SHA-256 under a key derived from
//! the pepper. Each row's hash covers the previous row's hash and every field of the row;
//! the head (last sequence number and hash) is sealed the same way. A modified, inserted
//! or deleted row, or a truncated tail, therefore breaks [`verify`], and only a holder of
//! the pepper could forge a chain that passes.
//!
//! The relay appends through [`Auditor`] (a bounded queue and one writer task, off the
//! request path); the command line appends with [`append`] directly. Two writers may
//! race: the store refuses the loser's rows, which it re-chains on the new head.
//! Events never carry key material or message content.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretBox};
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::auth::{Pepper, now_ms};
use crate::store::{AuditHead, AuditRow, Store, StoreError};

/// One thing that happened, before it is chained.
#[derive(Debug, Clone, Default)]
pub struct AuditEvent {
    /// Organisation concerned, if any.
    pub org_id: Option<String>,
    /// Who acted: a key id, `cli`, `relay`, or a source address.
    pub actor: String,
    /// What happened, e.g. `key.created`.
    pub action: &'static str,
    /// What it happened to.
    pub resource: String,
    /// The client's address.
    pub source: Option<String>,
    /// The client's user agent.
    pub user_agent: Option<String>,
    /// The request's correlation id.
    pub correlation_id: Option<String>,
    /// Details, a JSON object; never key material or content.
    pub detail: serde_json::Value,
}

/// The chain's MAC key, derived from the pepper.
pub struct ChainKey(SecretBox<[u8; 32]>);

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainKey(MASKED)")
    }
}

impl ChainKey {
    /// Derives the chain key: HMAC(pepper, a fixed label), so the pepper itself never
    /// keys anything but key hashes.
    pub fn derive(pepper: &Pepper) -> Self {
        Self(SecretBox::new(Box::new(pepper.hash(CHAIN_LABEL))))
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as Mac>::new_from_slice(self.0.expose_secret())
            .expect("HMAC accepts keys of any length")
    }

    /// The hash of a row: every field, length-prefixed, after the previous hash.
    fn row_hash(&self, row: &AuditRow) -> Vec<u8> {
        let mut mac = self.mac();
        mac.update(&row.prev_hash);
        mac.update(&row.seq.to_be_bytes());
        mac.update(&row.at.to_be_bytes());
        for field in [
            row.org_id.as_deref(),
            Some(row.actor.as_str()),
            Some(row.action.as_str()),
            Some(row.resource.as_str()),
            row.source.as_deref(),
            row.user_agent.as_deref(),
            row.correlation_id.as_deref(),
            Some(row.detail.as_str()),
        ] {
            match field {
                Some(text) => {
                    mac.update(&[1]);
                    mac.update(&(text.len() as u64).to_be_bytes());
                    mac.update(text.as_bytes());
                }
                None => mac.update(&[0]),
            }
        }
        mac.finalize().into_bytes().to_vec()
    }

    fn seal(&self, seq: i64, hash: &[u8]) -> Vec<u8> {
        let mut mac = self.mac();
        mac.update(b"head\0");
        mac.update(&seq.to_be_bytes());
        mac.update(hash);
        mac.finalize().into_bytes().to_vec()
    }
}

/// Chains `events` onto the store's trail.
pub async fn append(
    store: &dyn Store,
    key: &ChainKey,
    events: &[AuditEvent],
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    for _ in 0..APPEND_ATTEMPTS {
        let head = store.audit_head().await?;
        let (mut seq, mut prev) = match &head {
            Some(head) => (head.seq, head.hash.clone()),
            None => (0, vec![0u8; 32]),
        };
        let expected = seq;
        let at = now_ms();
        let mut rows = Vec::with_capacity(events.len());
        for event in events {
            seq += 1;
            let mut row = AuditRow {
                seq,
                at,
                org_id: event.org_id.clone(),
                actor: event.actor.clone(),
                action: event.action.to_owned(),
                resource: event.resource.clone(),
                source: event.source.clone(),
                user_agent: event.user_agent.clone(),
                correlation_id: event.correlation_id.clone(),
                detail: event.detail.to_string(),
                prev_hash: prev,
                hash: Vec::new(),
            };
            row.hash = key.row_hash(&row);
            prev = row.hash.clone();
            rows.push(row);
        }
        let head = AuditHead {
            seq,
            seal: key.seal(seq, &prev),
            hash: prev,
        };
        match store.append_audit(expected, &rows, &head).await {
            Ok(()) => return Ok(()),
            Err(StoreError::Conflict(_)) => continue,
            Err(err) => return Err(err),
        }
    }
    Err(StoreError::Conflict(
        "the audit chain (too many concurrent writers)".into(),
    ))
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Rows checked.
    pub rows: i64,
    /// The first break, if any: which row and why.
    pub problem: Option<String>,
}

/// Walks the whole chain and its head.
pub async fn verify(store: &dyn Store, key: &ChainKey) -> Result<Verification, StoreError> {
    let mut expected_seq = 1;
    let mut prev = vec![0u8; 32];
    let mut checked = 0;
    loop {
        let rows = store.audit_rows(expected_seq - 1, VERIFY_PAGE).await?;
        if rows.is_empty() {
            break;
        }
        for row in rows {
            let fail = |why: String| Verification {
                rows: checked,
                problem: Some(why),
            };
            if row.seq != expected_seq {
                return Ok(fail(format!(
                    "row {} follows row {}: rows were deleted or inserted",
                    row.seq,
                    expected_seq - 1
                )));
            }
            if row.prev_hash != prev {
                return Ok(fail(format!(
                    "row {} does not chain to row {}: a row was replaced, inserted or deleted",
                    row.seq,
                    row.seq - 1
                )));
            }
            if key.row_hash(&row) != row.hash {
                return Ok(fail(format!(
                    "row {} was modified: its hash does not match its fields",
                    row.seq
                )));
            }
            prev = row.hash;
            expected_seq += 1;
            checked += 1;
        }
    }
    let head = store.audit_head().await?;
    let problem = match head {
        None if checked == 0 => None,
        None => Some("the chain's head is missing".to_owned()),
        Some(head) if key.seal(head.seq, &head.hash) != head.seal => {
            Some("the chain's head seal is wrong: the head was altered".to_owned())
        }
        Some(head) if head.seq != checked || head.hash != prev => Some(format!(
            "the chain ends at row {checked} but its sealed head says row {}: rows were deleted from the end",
            head.seq
        )),
        Some(_) => None,
    };
    Ok(Verification {
        rows: checked,
        problem,
    })
}

/// The relay's handle: queues events for the writer task; never waits.
#[derive(Debug, Clone)]
pub struct Auditor {
    tx: mpsc::Sender<AuditEvent>,
    dropped: Arc<AtomicU64>,
}

/// Drains the queue into the store, in batches. Ends when every [`Auditor`] is dropped,
/// after writing what was queued.
#[must_use = "the audit writer must be spawned"]
pub struct AuditWriter {
    rx: mpsc::Receiver<AuditEvent>,
    store: Arc<dyn Store>,
    key: ChainKey,
}

/// An auditor and its writer.
pub fn channel(store: Arc<dyn Store>, key: ChainKey) -> (Auditor, AuditWriter) {
    let (tx, rx) = mpsc::channel(AUDIT_QUEUE);
    (
        Auditor {
            tx,
            dropped: Arc::default(),
        },
        AuditWriter { rx, store, key },
    )
}

impl Auditor {
    /// Queues an event. A full queue drops it, counts it and says so in the log: the
    /// trail must not stall requests, and its loss must not go unnoticed.
    pub fn record(&self, event: AuditEvent) {
        if self.tx.try_send(event).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!("audit queue full: an audit event was dropped");
        }
    }

    /// Events dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl AuditWriter {
    /// Writes until `stop` fires (or every auditor is gone), then writes what is queued
    /// and returns.
    pub async fn run(mut self, stop: tokio_util::sync::CancellationToken) {
        let mut batch = Vec::new();
        loop {
            let received = tokio::select! {
                received = self.rx.recv_many(&mut batch, AUDIT_BATCH) => received,
                _ = stop.cancelled() => {
                    while let Ok(event) = self.rx.try_recv() {
                        batch.push(event);
                    }
                    self.write(&mut batch).await;
                    return;
                }
            };
            if received == 0 {
                return;
            }
            self.write(&mut batch).await;
        }
    }

    async fn write(&self, batch: &mut Vec<AuditEvent>) {
        for chunk in batch.chunks(AUDIT_BATCH) {
            if let Err(err) = append(self.store.as_ref(), &self.key, chunk).await {
                tracing::error!(%err, events = chunk.len(), "audit events could not be written");
            }
        }
        batch.clear();
    }
}

const CHAIN_LABEL: &str = "outpost audit chain v1";
const APPEND_ATTEMPTS: usize = 20;
const VERIFY_PAGE: i64 = 1000;
const AUDIT_QUEUE: usize = 10_000;
const AUDIT_BATCH: usize = 256;
