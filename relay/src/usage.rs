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
                // On `stop`, the batch takes what is queued and goes, rather than waiting
                // out the interval (or for every recorder to go).
                let next = tokio::select! {
                    biased;
                    received = tokio::time::timeout_at(deadline, self.rx.recv()) => {
                        received.ok().flatten()
                    }
                    _ = stop.cancelled() => self.rx.try_recv().ok(),
                };
                match next {
                    Some(event) => batch.push(event),
                    None => break,
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::store::{CallStatus, SqliteStore, Store};

    /// A writer running on a real store, with `batch` and `flush_interval` as given.
    struct Running {
        _dir: tempfile::TempDir,
        store: Arc<dyn Store>,
        org: String,
        recorder: UsageRecorder,
        stop: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    async fn start(batch: usize, flush_interval: Duration) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).await.unwrap();
        let org = store.create_organisation("acme").await.unwrap().id;
        let store: Arc<dyn Store> = Arc::new(store);
        let settings = UsageSettings {
            batch,
            flush_interval,
            ..UsageSettings::default()
        };
        let (recorder, writer) = channel(store.clone(), settings);
        let stop = CancellationToken::new();
        let task = tokio::spawn(writer.run(stop.clone()));
        Running {
            _dir: dir,
            store,
            org,
            recorder,
            stop,
            task,
        }
    }

    fn event(org: &str, at: i64) -> UsageEvent {
        UsageEvent {
            at,
            org_id: org.to_owned(),
            key_id: "kid_1".into(),
            agent: "site".into(),
            server: "erp".into(),
            method: "tools/call".into(),
            tool: Some("echo".into()),
            status: CallStatus::Ok,
            error_code: None,
            latency_us: 1,
            bytes_in: 1,
            bytes_out: 1,
        }
    }

    async fn written_reaches(recorder: &UsageRecorder, count: u64) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while recorder.counters().written.load(Ordering::Relaxed) < count {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the events were written in time");
    }

    #[tokio::test]
    async fn a_whole_batch_is_written_without_waiting_for_the_interval() {
        let Running {
            _dir,
            store,
            org,
            recorder,
            stop,
            task,
        } = start(4, Duration::from_secs(3600)).await;
        // The first event wakes the writer, which then waits for its interval to end...
        recorder.record(event(&org, 0));
        tokio::time::sleep(Duration::from_millis(50)).await;
        // ... unless a whole batch comes meanwhile: it then writes that batch at once.
        for at in 1..5 {
            recorder.record(event(&org, at));
        }
        written_reaches(&recorder, 4).await;
        assert_eq!(store.usage_since(&org, 0).await.unwrap().len(), 4);
        stop.cancel();
        task.await.unwrap();
        assert_eq!(store.usage_since(&org, 0).await.unwrap().len(), 5);
    }

    #[tokio::test]
    async fn a_partial_batch_is_written_when_the_interval_ends() {
        let Running {
            _dir,
            store,
            org,
            recorder,
            stop,
            task,
        } = start(100, Duration::from_millis(100)).await;
        for at in 0..3 {
            recorder.record(event(&org, at));
        }
        written_reaches(&recorder, 3).await;
        // A later event starts a batch of its own.
        recorder.record(event(&org, 3));
        written_reaches(&recorder, 4).await;
        assert_eq!(store.usage_since(&org, 0).await.unwrap().len(), 4);
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn stopping_writes_what_is_queued() {
        let Running {
            _dir,
            store,
            org,
            recorder,
            stop,
            task,
        } = start(2, Duration::from_secs(3600)).await;
        recorder.record(event(&org, 0));
        tokio::task::yield_now().await;
        for at in 1..5 {
            recorder.record(event(&org, at));
        }
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the writer stops")
            .unwrap();
        assert_eq!(recorder.counters().written.load(Ordering::Relaxed), 5);
        assert_eq!(store.usage_since(&org, 0).await.unwrap().len(), 5);
    }
}
