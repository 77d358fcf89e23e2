//! Rate limits and quotas, in memory, per relay process: a token bucket per key and one
//! per (key, tool), caps on calls in flight per key and per agent, and the tracking of
//! failed authentications per source address. Limits fail closed: when a table is full,
//! a new key or source is refused rather than let through unmetered.
//!
//! A flood of bad keys from one source is slowed, not blocked: once a source exceeds its
//! failures per minute, its failed attempts are answered late (a tarpit) with 429, while a
//! valid key from the same address passes as always.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::RateLimits;

/// The relay's limiter.
#[derive(Debug)]
pub struct Guard {
    settings: RateLimits,
    buckets: Mutex<HashMap<BucketKey, Bucket>>,
    in_flight_keys: Mutex<HashMap<String, Arc<AtomicUsize>>>,
    in_flight_agents: Mutex<HashMap<(String, String), Arc<AtomicUsize>>>,
    /// Open `subscriptions/listen` streams per key.
    listen_keys: Mutex<HashMap<String, Arc<AtomicUsize>>>,
    /// Open `subscriptions/listen` streams over the relay, for the metric.
    listen_total: Arc<AtomicUsize>,
    failures: Mutex<HashMap<String, Failures>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum BucketKey {
    Key(String),
    KeyTool(String, String),
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

#[derive(Debug, Default)]
struct Failures {
    minute: u64,
    count: u64,
    /// Failures since the last flush to the audit trail.
    unreported: u64,
    user_agent: Option<String>,
}

/// Why a request was refused by a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limited {
    /// A token bucket is empty; retry after this long.
    Rate {
        /// When a token will be there.
        retry_after: Duration,
        /// Which bucket: `key` or `tool`.
        scope: &'static str,
    },
    /// Too many calls in flight; retry after this long.
    Concurrency {
        /// A hint.
        retry_after: Duration,
        /// `key` or `agent`.
        scope: &'static str,
    },
}

impl Limited {
    /// Seconds for `Retry-After`, at least one.
    pub fn retry_after_secs(&self) -> u64 {
        let after = match self {
            Limited::Rate { retry_after, .. } | Limited::Concurrency { retry_after, .. } => {
                *retry_after
            }
        };
        after.as_secs_f64().ceil().max(1.0) as u64
    }
}

/// A held in-flight slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    counters: [Arc<AtomicUsize>; 2],
}

impl Drop for Slot {
    fn drop(&mut self) {
        for counter in &self.counters {
            counter.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A summary of one source's failures in one minute, for the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureReport {
    /// The source address.
    pub source: String,
    /// Failures not reported before.
    pub count: u64,
    /// A user agent seen.
    pub user_agent: Option<String>,
}

impl Guard {
    /// A limiter with `settings`.
    pub fn new(settings: RateLimits) -> Self {
        Self {
            settings,
            buckets: Mutex::default(),
            in_flight_keys: Mutex::default(),
            in_flight_agents: Mutex::default(),
            listen_keys: Mutex::default(),
            listen_total: Arc::default(),
            failures: Mutex::default(),
        }
    }

    /// Takes a token from the key's bucket: its own rate and burst where it has them,
    /// the relay's defaults otherwise.
    pub fn admit_request(
        &self,
        key_id: &str,
        rate: Option<u32>,
        burst: Option<u32>,
    ) -> Result<(), Limited> {
        let per_second = rate.unwrap_or(self.settings.requests_per_second);
        let burst = burst.unwrap_or(self.settings.burst);
        self.take(BucketKey::Key(key_id.to_owned()), per_second, burst, "key")
    }

    /// Takes a token from the (key, tool) bucket.
    pub fn admit_tool(&self, key_id: &str, tool: &str) -> Result<(), Limited> {
        self.take(
            BucketKey::KeyTool(key_id.to_owned(), tool.to_owned()),
            self.settings.tool_requests_per_second,
            self.settings.tool_burst,
            "tool",
        )
    }

    /// Takes an in-flight slot for the key and the agent, or refuses.
    pub fn admit_call(&self, key_id: &str, org_id: &str, agent: &str) -> Result<Slot, Limited> {
        let key = counter(
            &self.in_flight_keys,
            key_id.to_owned(),
            self.settings.max_tracked,
        )
        .ok_or(Limited::Concurrency {
            retry_after: Duration::from_secs(1),
            scope: "key",
        })?;
        let agent = counter(
            &self.in_flight_agents,
            (org_id.to_owned(), agent.to_owned()),
            self.settings.max_tracked,
        )
        .ok_or(Limited::Concurrency {
            retry_after: Duration::from_secs(1),
            scope: "agent",
        })?;
        if !try_increment(&key, self.settings.max_in_flight_per_key) {
            return Err(Limited::Concurrency {
                retry_after: Duration::from_secs(1),
                scope: "key",
            });
        }
        if !try_increment(&agent, self.settings.max_in_flight_per_agent) {
            key.fetch_sub(1, Ordering::AcqRel);
            return Err(Limited::Concurrency {
                retry_after: Duration::from_secs(1),
                scope: "agent",
            });
        }
        Ok(Slot {
            counters: [key, agent],
        })
    }

    /// Takes a slot for one open `subscriptions/listen` stream of the key, or refuses. A
    /// listen stream stays open as long as its client wants, so it holds this slot instead
    /// of an in-flight call slot, which it would hold forever.
    pub fn admit_listen(&self, key_id: &str) -> Result<Slot, Limited> {
        let refused = Limited::Concurrency {
            retry_after: Duration::from_secs(1),
            scope: "listen",
        };
        let key = counter(
            &self.listen_keys,
            key_id.to_owned(),
            self.settings.max_tracked,
        )
        .ok_or(refused.clone())?;
        if !try_increment(&key, self.settings.max_listen_streams_per_key) {
            return Err(refused);
        }
        self.listen_total.fetch_add(1, Ordering::AcqRel);
        Ok(Slot {
            counters: [key, self.listen_total.clone()],
        })
    }

    /// `subscriptions/listen` streams open now, over the relay.
    pub fn listen_streams(&self) -> usize {
        self.listen_total.load(Ordering::Acquire)
    }

    /// Notes a failed authentication from `source`; returns the delay to answer it with
    /// when the source is over its failures per minute.
    pub fn note_failure(&self, source: &str, user_agent: Option<&str>) -> Option<Duration> {
        let minute = minute_now();
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if !failures.contains_key(source) && failures.len() >= self.settings.max_tracked {
            // Fail closed: an untracked source in a full table is slowed at once.
            return Some(self.settings.failure_tarpit);
        }
        let entry = failures.entry(source.to_owned()).or_default();
        if entry.minute != minute {
            entry.minute = minute;
            entry.count = 0;
        }
        entry.count += 1;
        entry.unreported += 1;
        if entry.user_agent.is_none() {
            entry.user_agent = user_agent.map(|ua| ua.chars().take(256).collect());
        }
        (entry.count > self.settings.failures_per_minute).then_some(self.settings.failure_tarpit)
    }

    /// Takes the failures not yet reported, per source, and forgets idle sources.
    pub fn take_failure_reports(&self) -> Vec<FailureReport> {
        let minute = minute_now();
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let reports = failures
            .iter_mut()
            .filter(|(_, f)| f.unreported > 0)
            .map(|(source, f)| {
                let count = std::mem::take(&mut f.unreported);
                FailureReport {
                    source: source.clone(),
                    count,
                    user_agent: f.user_agent.take(),
                }
            })
            .collect();
        failures.retain(|_, f| f.minute + 1 >= minute);
        reports
    }

    /// Forgets full buckets and idle counters, so the tables stay small.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, b| now.duration_since(b.refilled) < IDLE_BUCKET);
        self.in_flight_keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, c| c.load(Ordering::Acquire) > 0 || Arc::strong_count(c) > 1);
        self.in_flight_agents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, c| c.load(Ordering::Acquire) > 0 || Arc::strong_count(c) > 1);
    }

    fn take(
        &self,
        key: BucketKey,
        per_second: u32,
        burst: u32,
        scope: &'static str,
    ) -> Result<(), Limited> {
        let now = Instant::now();
        let rate = f64::from(per_second.max(1));
        let burst = f64::from(burst.max(1));
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if !buckets.contains_key(&key) && buckets.len() >= self.settings.max_tracked {
            // Fail closed.
            return Err(Limited::Rate {
                retry_after: Duration::from_secs(1),
                scope,
            });
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            refilled: now,
        });
        let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Limited::Rate {
                retry_after: Duration::from_secs_f64((1.0 - bucket.tokens) / rate),
                scope,
            })
        }
    }
}

fn counter<K: std::hash::Hash + Eq>(
    table: &Mutex<HashMap<K, Arc<AtomicUsize>>>,
    key: K,
    max: usize,
) -> Option<Arc<AtomicUsize>> {
    let mut table = table.lock().unwrap_or_else(PoisonError::into_inner);
    if !table.contains_key(&key) && table.len() >= max {
        return None;
    }
    Some(table.entry(key).or_default().clone())
}

fn try_increment(counter: &AtomicUsize, max: usize) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

fn minute_now() -> u64 {
    u64::try_from(crate::auth::now_ms() / 60_000).unwrap_or(0)
}

const IDLE_BUCKET: Duration = Duration::from_secs(300);

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> RateLimits {
        RateLimits {
            requests_per_second: 10,
            burst: 3,
            tool_requests_per_second: 10,
            tool_burst: 2,
            max_in_flight_per_key: 2,
            max_in_flight_per_agent: 3,
            max_listen_streams_per_key: 1,
            failures_per_minute: 2,
            failure_tarpit: Duration::from_millis(500),
            max_tracked: 4,
        }
    }

    #[test]
    fn listen_streams_are_capped_per_key_and_not_as_calls() {
        let guard = Guard::new(settings());
        let open = guard.admit_listen("k").unwrap();
        assert_eq!(guard.admit_listen("k").unwrap_err().retry_after_secs(), 1);
        guard.admit_listen("other").unwrap();
        // Calls in flight are another budget.
        let _calls = [
            guard.admit_call("k", "o", "a").unwrap(),
            guard.admit_call("k", "o", "a").unwrap(),
        ];
        assert_eq!(guard.listen_streams(), 1);
        drop(open);
        assert_eq!(guard.listen_streams(), 0);
        guard.admit_listen("k").unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn buckets_refill_at_their_rate() {
        let guard = Guard::new(settings());
        for _ in 0..3 {
            guard.admit_request("k", None, None).unwrap();
        }
        let limited = guard.admit_request("k", None, None).unwrap_err();
        assert_eq!(limited.retry_after_secs(), 1);
        tokio::time::advance(Duration::from_millis(110)).await;
        guard.admit_request("k", None, None).unwrap();
        // A key's own plan overrides the default.
        for _ in 0..20 {
            guard.admit_request("big", Some(1000), Some(20)).unwrap();
        }
        guard.admit_tool("k", "t").unwrap();
        guard.admit_tool("k", "t").unwrap();
        assert!(guard.admit_tool("k", "t").is_err());
        guard.admit_tool("k", "other").unwrap();
    }

    #[test]
    fn in_flight_caps_release_on_drop() {
        let guard = Guard::new(settings());
        let a = guard.admit_call("k1", "o", "agent").unwrap();
        let _b = guard.admit_call("k1", "o", "agent").unwrap();
        assert!(guard.admit_call("k1", "o", "agent").is_err());
        let _c = guard.admit_call("k2", "o", "agent").unwrap();
        // The agent's cap of 3 is reached by two keys together.
        assert!(matches!(
            guard.admit_call("k3", "o", "agent"),
            Err(Limited::Concurrency { scope: "agent", .. })
        ));
        drop(a);
        guard.admit_call("k3", "o", "agent").unwrap();
    }

    #[test]
    fn failures_are_slowed_per_source_and_reported_once() {
        let guard = Guard::new(settings());
        assert_eq!(guard.note_failure("10.0.0.1", Some("curl")), None);
        assert_eq!(guard.note_failure("10.0.0.1", None), None);
        assert!(guard.note_failure("10.0.0.1", None).is_some());
        assert_eq!(guard.note_failure("10.0.0.2", None), None);
        let mut reports = guard.take_failure_reports();
        reports.sort_by(|a, b| a.source.cmp(&b.source));
        assert_eq!(reports[0].count, 3);
        assert_eq!(reports[0].user_agent.as_deref(), Some("curl"));
        assert_eq!(reports[1].count, 1);
        assert!(guard.take_failure_reports().is_empty());
    }

    #[test]
    fn full_tables_fail_closed() {
        let guard = Guard::new(settings());
        for key in ["a", "b", "c", "d"] {
            guard.admit_request(key, None, None).unwrap();
        }
        assert!(guard.admit_request("e", None, None).is_err());
    }
}
