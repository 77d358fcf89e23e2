//! Usage recording off the request path: calls hand events to a bounded queue and never
//! wait; one writer task drains it in batches into the store. A full queue drops the
//! event and counts the drop. Does not decide what an event contains (see `router.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::UsageSettings;
use crate::store::{Store, UsageEvent};

/// Cheap, cloneable handle for recording usage.
#[derive(Clone)]
pub struct UsageRecorder {
    tx: mpsc::Sender<UsageEvent>,
    counters: Arc<UsageCounters>,
    observer: Option<Observer>,
}

/// Sees each usage event as it is recorded (the relay's metrics).
pub type Observer = Arc<dyn Fn(&UsageEvent) + Send + Sync>;

impl std::fmt::Debug for UsageRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageRecorder")
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

/// What happened to usage events, for metrics and tests.
#[derive(Debug, Default)]
pub struct UsageCounters {
    /// Events written to the store.
    pub written: AtomicU64,
    /// Events dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Events lost because the store refused a batch.
    pub failed: AtomicU64,
}

/// The task that writes batches. Ends when every recorder is dropped, after writing
/// what was queued.
#[must_use = "the usage writer must be spawned"]
pub struct UsageWriter {
    rx: mpsc::Receiver<UsageEvent>,
    store: Arc<dyn Store>,
    settings: UsageSettings,
    counters: Arc<UsageCounters>,
}

/// Creates a recorder and the writer that drains it.
pub fn channel(store: Arc<dyn Store>, settings: UsageSettings) -> (UsageRecorder, UsageWriter) {
    let (tx, rx) = mpsc::channel(settings.queue);
    let counters = Arc::new(UsageCounters::default());
    (
        UsageRecorder {
            tx,
            counters: counters.clone(),
            observer: None,
        },
        UsageWriter {
            rx,
            store,
            settings,
            counters,
        },
    )
}

impl UsageRecorder {
    /// Queues an event without waiting; drops and counts it if the queue is full.
    pub fn record(&self, event: UsageEvent) {
        if let Some(observer) = &self.observer {
            observer(&event);
        }
        if self.tx.try_send(event).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Also shows every event to `observer` (metrics), before it is queued.
    pub fn with_observer(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The counters.
    pub fn counters(&self) -> &UsageCounters {
        &self.counters
    }
}

impl UsageWriter {
    /// Writes batches until every recorder is gone or `stop` fires; then writes what is
    /// still queued and returns.
    pub async fn run(mut self, stop: tokio_util::sync::CancellationToken) {
        let mut batch = Vec::with_capacity(self.settings.batch);
        loop {
            let first = tokio::select! {
                first = self.rx.recv() => first,
                _ = stop.cancelled() => {
                    self.rx.close();
                    self.rx.recv().await
                }
            };
            let Some(first) = first else { break };
            batch.push(first);
            let deadline = Instant::now() + self.settings.flush_interval;
            while batch.len() < self.settings.batch {
                match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                    Ok(Some(event)) => batch.push(event),
                    Ok(None) | Err(_) => break,
                }
            }
            self.write(&mut batch).await;
        }
    }

    async fn write(&self, batch: &mut Vec<UsageEvent>) {
        let count = batch.len() as u64;
        match self.store.record_usage(batch).await {
            Ok(()) => {
                self.counters.written.fetch_add(count, Ordering::Relaxed);
            }
            Err(err) => {
                self.counters.failed.fetch_add(count, Ordering::Relaxed);
                tracing::error!(%err, events = count, "usage batch not written");
            }
        }
        batch.clear();
    }
}
