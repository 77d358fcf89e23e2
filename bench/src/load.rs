//! Drives calls at a target and times them: closed loop (a fixed number of sessions, each
//! calling again as soon as its answer arrives) and open loop (calls sent at a fixed rate
//! whatever the answers do, timed from when each was due, so a stall is not hidden by the
//! calls it delayed). Latencies go into HDR histograms in microseconds. Owns no process.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use futures_util::future::join_all;
use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::client::{Call, Endpoint, Session};

/// What one measured run produced.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    /// Latency of each successful call, µs.
    pub(crate) latency: Histogram<u64>,
    /// Failed calls, and the first failure's message.
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    /// HTTP body bytes received by successful calls.
    pub(crate) bytes: u64,
    /// Measured time: from the end of the warm-up to the last answer.
    pub(crate) elapsed: Duration,
    /// Every call sent, the warm-up's and failed ones included: what the processes on the
    /// path did work for (closed loop only).
    pub(crate) calls_sent: u64,
}

/// How long a run lasts: whichever bound comes first.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    /// Calls made before measuring starts (across all sessions).
    pub(crate) warmup: Duration,
    /// Measured time.
    pub(crate) duration: Duration,
    /// Measured calls at most (across all sessions).
    pub(crate) max_calls: u64,
}

impl Outcome {
    pub(crate) fn new() -> Self {
        Self {
            latency: histogram(),
            errors: 0,
            first_error: None,
            bytes: 0,
            elapsed: Duration::ZERO,
            calls_sent: 0,
        }
    }

    /// Successful calls.
    pub(crate) fn calls(&self) -> u64 {
        self.latency.len()
    }

    /// Successful calls per second.
    pub(crate) fn rate(&self) -> f64 {
        self.calls() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Received MiB per second.
    pub(crate) fn mib_per_sec(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// A latency quantile in µs.
    pub(crate) fn q(&self, quantile: f64) -> u64 {
        self.latency.value_at_quantile(quantile)
    }

    /// Adds another run of the same target (another round).
    pub(crate) fn merge(&mut self, other: &Outcome) {
        self.latency
            .add(&other.latency)
            .expect("same histogram bounds");
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        self.bytes += other.bytes;
        self.elapsed += other.elapsed;
        self.calls_sent += other.calls_sent;
    }

    fn record(&mut self, result: anyhow::Result<usize>, latency: Duration) {
        match result {
            Ok(bytes) => {
                self.latency.saturating_record(micros(latency));
                self.bytes += bytes as u64;
            }
            Err(err) => {
                self.errors += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(format!("{err:#}"));
                }
            }
        }
    }
}

/// Opens `count` sessions, at most 32 initializing at once.
pub(crate) async fn open_sessions(
    endpoint: &Endpoint,
    count: usize,
) -> anyhow::Result<Vec<Session>> {
    let mut sessions = Vec::with_capacity(count);
    while sessions.len() < count {
        let batch = (count - sessions.len()).min(32);
        for session in join_all((0..batch).map(|_| endpoint.session())).await {
            sessions.push(session.context("opening a session")?);
        }
    }
    Ok(sessions)
}

/// Ends every session (DELETE), so that sessions, streams and stdio children do not pile
/// up across runs.
pub(crate) async fn close_sessions(sessions: Vec<Session>) {
    join_all(sessions.into_iter().map(Session::close)).await;
}

/// Closed loop: every session calls `call` back to back until the bounds are reached.
pub(crate) async fn closed_loop(
    sessions: Vec<Session>,
    call: Call,
    bounds: Bounds,
) -> (Outcome, Vec<Session>) {
    let started = Instant::now();
    let measure_from = started + bounds.warmup;
    let end = measure_from + bounds.duration;
    let budget = Arc::new(std::sync::atomic::AtomicU64::new(bounds.max_calls));
    let workers = sessions.into_iter().map(|mut session| {
        let budget = budget.clone();
        tokio::spawn(async move {
            let mut outcome = Outcome::new();
            let mut last = measure_from;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let measured = sent >= measure_from;
                if measured && !take_one(&budget) {
                    break;
                }
                let result = session.call(call).await;
                let done = Instant::now();
                outcome.calls_sent += 1;
                if measured {
                    outcome.record(result, done - sent);
                    last = done;
                }
            }
            outcome.elapsed = last.saturating_duration_since(measure_from);
            (outcome, session)
        })
    });
    let mut total = Outcome::new();
    let mut elapsed = Duration::ZERO;
    let mut sessions = Vec::new();
    for joined in join_all(workers).await {
        let (outcome, session) = joined.expect("a load worker panicked");
        // The workers ran side by side: the run lasted as long as the longest of them.
        elapsed = elapsed.max(outcome.elapsed);
        total.merge(&outcome);
        sessions.push(session);
    }
    total.elapsed = elapsed;
    (total, sessions)
}

/// Open loop: `rate` calls per second for the bounds' duration, each on a free session
/// of `sessions` (waiting for one when all are busy, and then timed from when it was due).
pub(crate) async fn open_loop(
    sessions: Vec<Session>,
    call: Call,
    rate: f64,
    bounds: Bounds,
) -> (Outcome, Vec<Session>) {
    let count = sessions.len();
    let (free_tx, mut free_rx) = tokio::sync::mpsc::channel(count.max(1));
    for session in sessions {
        free_tx.try_send(session).expect("room for every session");
    }
    let outcome = Arc::new(Mutex::new(Outcome::new()));
    let started = Instant::now();
    let measure_from = started + bounds.warmup;
    let end = measure_from + bounds.duration;
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let mut due = started;
    let mut sent_measured = 0u64;
    let mut tasks = Vec::new();
    while due < end && sent_measured < bounds.max_calls {
        tokio::time::sleep_until(due).await;
        // A call held up because every session was busy is timed from when it was due, so
        // the wait counts; otherwise from now, so the timer's own lateness (tokio's timer
        // has 1 ms resolution) does not.
        let (mut session, intended) = match free_rx.try_recv() {
            Ok(session) => (session, Instant::now()),
            Err(_) => match free_rx.recv().await {
                Some(session) => (session, due),
                None => break,
            },
        };
        let measured = due >= measure_from;
        sent_measured += u64::from(measured);
        let outcome = outcome.clone();
        let free_tx = free_tx.clone();
        tasks.push(tokio::spawn(async move {
            let result = session.call(call).await;
            if measured {
                let latency = Instant::now() - intended;
                outcome
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .record(result, latency);
            }
            let _ = free_tx.send(session).await;
        }));
        due += interval;
    }
    join_all(tasks).await;
    let mut outcome = outcome
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    // The window the rate was offered in: the rate is the figure, not calls over time.
    outcome.elapsed = bounds.duration;
    drop(free_tx);
    let mut sessions = Vec::with_capacity(count);
    while let Ok(session) = free_rx.try_recv() {
        sessions.push(session);
    }
    (outcome, sessions)
}

fn take_one(budget: &std::sync::atomic::AtomicU64) -> bool {
    use std::sync::atomic::Ordering;
    budget
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
}

/// An HDR histogram of µs from 1 µs to 10 minutes, 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// A duration in whole µs, at least 1.
pub(crate) fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}
