//! Bounds how fast the relay takes on new TLS handshakes, so that a reconnect storm (every
//! agent of a fleet coming back after a restart) cannot take all of the relay's CPU and
//! memory from the calls it is already serving: at most `limits.max_handshakes` in
//! progress at once, started at most `limits.handshakes_per_second` (with a burst of
//! `limits.handshake_burst`). A connection waits for its turn inside its own task, before
//! any TLS state exists for it; the caller bounds the wait. Counts waiting, in-progress and
//! refused connections for the metrics. Does not do the handshake (see `server.rs`).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::Limits;

/// The handshake bound, shared by every connection task. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct HandshakeGate {
    /// One permit per handshake in progress.
    permits: Arc<Semaphore>,
    /// When the next handshake may start, by the rate.
    pacer: Arc<Mutex<Pacer>>,
    metrics: HandshakeMetrics,
}

/// The gate's figures, registered in the relay's metrics.
#[derive(Debug, Clone, Default)]
pub(crate) struct HandshakeMetrics {
    /// Connections accepted and waiting for their turn to handshake.
    pub(crate) waiting: Gauge,
    /// TLS handshakes in progress (each holds a permit).
    pub(crate) in_progress: Gauge,
    /// Connections dropped because their turn did not come within the handshake timeout.
    pub(crate) refused: Counter,
}

/// A handshake's turn: held while the handshake runs, released on drop.
#[derive(Debug)]
pub(crate) struct HandshakePermit {
    _permit: OwnedSemaphorePermit,
    in_progress: Gauge,
}

/// Spaces handshake starts `interval` apart, letting up to `burst` start at once after a
/// quiet spell: a start is allowed at `next`, or at once when `next` is that far behind.
#[derive(Debug)]
struct Pacer {
    next: Instant,
    interval: Duration,
    /// `interval × (burst − 1)`: how much unused time the pacer may carry forward.
    burst_window: Duration,
}

impl HandshakeGate {
    pub(crate) fn new(limits: &Limits, metrics: HandshakeMetrics) -> Self {
        let rate = f64::from(limits.handshakes_per_second.max(1));
        let interval = Duration::from_secs_f64(1.0 / rate);
        let burst_window = interval * (limits.handshake_burst.max(1) - 1);
        let now = Instant::now();
        Self {
            permits: Arc::new(Semaphore::new(limits.max_handshakes)),
            pacer: Arc::new(Mutex::new(Pacer {
                // A full burst is available from the start.
                next: now.checked_sub(burst_window).unwrap_or(now),
                interval,
                burst_window,
            })),
            metrics,
        }
    }

    /// Waits for this connection's turn, until `deadline` at most: its start time by the
    /// rate, then a permit. Counted as waiting meanwhile. `None`, counted as refused, when
    /// the turn would come after the deadline: the caller drops the connection.
    pub(crate) async fn enter(&self, deadline: Instant) -> Option<HandshakePermit> {
        let _waiting = WaitingGuard::new(&self.metrics.waiting);
        let turn = async {
            let start = self.reserve_start(deadline)?;
            tokio::time::sleep_until(start).await;
            self.permits.clone().acquire_owned().await.ok()
        };
        match tokio::time::timeout_at(deadline, turn).await {
            Ok(Some(permit)) => {
                self.metrics.in_progress.inc();
                Some(HandshakePermit {
                    _permit: permit,
                    in_progress: self.metrics.in_progress.clone(),
                })
            }
            _ => {
                self.metrics.refused.inc();
                None
            }
        }
    }

    /// Takes the next start time the rate allows, unless it is after `deadline` (then the
    /// time stays free for another connection).
    fn reserve_start(&self, deadline: Instant) -> Option<Instant> {
        let mut pacer = self.pacer.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let earliest = now.checked_sub(pacer.burst_window).unwrap_or(now);
        let start = pacer.next.max(earliest);
        if start > deadline {
            return None;
        }
        pacer.next = start + pacer.interval;
        Some(start)
    }
}

impl Drop for HandshakePermit {
    fn drop(&mut self) {
        self.in_progress.dec();
    }
}

/// Counts a connection as waiting for as long as it lives.
struct WaitingGuard<'a>(&'a Gauge);

impl<'a> WaitingGuard<'a> {
    fn new(gauge: &'a Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(max_handshakes: usize, per_second: u32, burst: u32) -> HandshakeGate {
        let limits = Limits {
            max_handshakes,
            handshakes_per_second: per_second,
            handshake_burst: burst,
            ..Limits::default()
        };
        HandshakeGate::new(&limits, HandshakeMetrics::default())
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_starts_at_once_and_the_rest_follow_at_the_rate() {
        let gate = gate(100, 10, 3);
        let far = Instant::now() + Duration::from_secs(60);
        let starts: Vec<Duration> = (0..6)
            .map(|_| gate.reserve_start(far).expect("before the deadline") - Instant::now())
            .collect();
        let ms: Vec<u128> = starts.iter().map(Duration::as_millis).collect();
        // Three at once (the burst), then one per 100 ms.
        assert_eq!(ms, [0, 0, 0, 100, 200, 300]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_after_the_deadline_is_refused_and_not_taken() {
        let gate = gate(100, 1, 1);
        let soon = Instant::now() + Duration::from_millis(500);
        assert!(gate.reserve_start(soon).is_some());
        assert!(
            gate.reserve_start(soon).is_none(),
            "the next start is 1 s away"
        );
        // The refused start was not taken: the next one is still 1 s after the first.
        let later = Instant::now() + Duration::from_secs(5);
        let next = gate.reserve_start(later).expect("within 5 s");
        assert_eq!((next - Instant::now()).as_millis(), 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn no_more_than_max_handshakes_hold_a_permit() {
        let gate = gate(2, 1000, 1000);
        let deadline = Instant::now() + Duration::from_secs(10);
        let first = gate.enter(deadline).await.expect("a permit");
        let _second = gate.enter(deadline).await.expect("a permit");
        assert_eq!(gate.metrics.in_progress.get(), 2);
        // A third waits until the deadline, then is refused.
        assert!(gate.enter(deadline).await.is_none());
        assert_eq!(gate.metrics.refused.get(), 1);
        drop(first);
        assert!(
            gate.enter(Instant::now() + Duration::from_secs(1))
                .await
                .is_some()
        );
        assert_eq!(gate.metrics.waiting.get(), 0);
    }
}
