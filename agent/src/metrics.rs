//! The agent's Prometheus metrics. Labels are bounded: server names come from the
//! configuration, statuses and reasons are fixed sets, and tool names are capped per
//! server (`_other` beyond the cap), since a client may call any name it likes.
//! Never carries arguments, results or secrets.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Every metric the agent exports.
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) tunnel_up: Gauge,
    pub(crate) reconnects: Counter,
    calls: Family<CallLabels, Counter>,
    latency: Family<ServerLabels, Histogram>,
    redactions: Family<ServerLabels, Counter>,
    denials: Family<DenialLabels, Counter>,
    restarts: Family<ServerLabels, Counter>,
    sessions: Family<ServerLabels, Gauge>,
    tools_seen: Mutex<HashMap<String, HashSet<String>>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    server: String,
    tool: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DenialLabels {
    server: String,
    reason: &'static str,
}

/// How a call ended, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallStatus {
    /// A result.
    Ok,
    /// A JSON-RPC error from the upstream, or the agent's in its place.
    Error,
    /// The agent's call timeout answered it.
    Timeout,
    /// The client cancelled it.
    Cancelled,
}

/// Why local policy refused something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denial {
    /// The tool is hidden by `allow_tools`/`deny_tools`.
    Tool,
    /// `max_concurrent_calls` was reached.
    Concurrency,
    /// `max_sessions` was reached.
    Sessions,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("outpost_agent");
        let tunnel_up = Gauge::default();
        registry.register(
            "tunnel_up",
            "1 while a tunnel to the relay is registered, else 0",
            tunnel_up.clone(),
        );
        let reconnects = Counter::default();
        registry.register(
            "reconnects",
            "Tunnels lost or failed to establish, each followed by a reconnect attempt",
            reconnects.clone(),
        );
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "calls",
            "Requests answered, by server, tool (tools/call only; other methods as `-`) and status",
            calls.clone(),
        );
        let latency = Family::<ServerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(LATENCY_BUCKETS)
        });
        registry.register(
            "call_duration_seconds",
            "Time from a request reaching the agent to its answer leaving it",
            latency.clone(),
        );
        let redactions = Family::<ServerLabels, Counter>::default();
        registry.register(
            "redactions",
            "Secret values replaced in messages leaving the agent",
            redactions.clone(),
        );
        let denials = Family::<DenialLabels, Counter>::default();
        registry.register(
            "policy_denials",
            "Requests refused by local policy, by reason (tool, concurrency, sessions)",
            denials.clone(),
        );
        let restarts = Family::<ServerLabels, Counter>::default();
        registry.register(
            "upstream_restarts",
            "Stdio servers restarted after they crashed or hung",
            restarts.clone(),
        );
        let sessions = Family::<ServerLabels, Gauge>::default();
        registry.register(
            "sessions",
            "Client sessions open per server (for stdio servers, child processes)",
            sessions.clone(),
        );
        Self {
            registry,
            tunnel_up,
            reconnects,
            calls,
            latency,
            redactions,
            denials,
            restarts,
            sessions,
            tools_seen: Mutex::new(HashMap::new()),
        }
    }

    /// Counts an answered request.
    pub(crate) fn call(
        &self,
        server: &str,
        tool: Option<&str>,
        status: CallStatus,
        took: Duration,
    ) {
        let tool = match tool {
            Some(tool) => self.bounded_tool(server, tool),
            None => "-".to_owned(),
        };
        let status = match status {
            CallStatus::Ok => "ok",
            CallStatus::Error => "error",
            CallStatus::Timeout => "timeout",
            CallStatus::Cancelled => "cancelled",
        };
        self.calls
            .get_or_create(&CallLabels {
                server: server.to_owned(),
                tool,
                status,
            })
            .inc();
        self.latency
            .get_or_create(&ServerLabels {
                server: server.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// Counts `n` redacted secret values.
    pub(crate) fn redacted(&self, server: &str, n: usize) {
        self.redactions
            .get_or_create(&ServerLabels {
                server: server.to_owned(),
            })
            .inc_by(n as u64);
    }

    /// Counts a refusal by local policy.
    pub(crate) fn denied(&self, server: &str, denial: Denial) {
        let reason = match denial {
            Denial::Tool => "tool",
            Denial::Concurrency => "concurrency",
            Denial::Sessions => "sessions",
        };
        self.denials
            .get_or_create(&DenialLabels {
                server: server.to_owned(),
                reason,
            })
            .inc();
    }

    /// Sets how many sessions `server` has open.
    pub(crate) fn sessions_open(&self, server: &str, open: usize) {
        self.sessions
            .get_or_create(&ServerLabels {
                server: server.to_owned(),
            })
            .set(i64::try_from(open).unwrap_or(i64::MAX));
    }

    /// Counts a restart of a stdio server.
    pub(crate) fn restarted(&self, server: &str) {
        self.restarts
            .get_or_create(&ServerLabels {
                server: server.to_owned(),
            })
            .inc();
    }

    /// The Prometheus text exposition.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    fn bounded_tool(&self, server: &str, tool: &str) -> String {
        let mut seen = self
            .tools_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let tools = seen.entry(server.to_owned()).or_default();
        if tools.contains(tool) {
            return tool.to_owned();
        }
        if tools.len() < MAX_TOOLS_PER_SERVER && tool.len() <= MAX_TOOL_LABEL {
            tools.insert(tool.to_owned());
            return tool.to_owned();
        }
        OTHER_TOOL.to_owned()
    }
}

/// Distinct tool label values per server; later names count as `_other`.
const MAX_TOOLS_PER_SERVER: usize = 200;
const MAX_TOOL_LABEL: usize = 128;
const OTHER_TOOL: &str = "_other";
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 300.0,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_labels_are_capped() {
        let metrics = Metrics::new();
        for i in 0..(MAX_TOOLS_PER_SERVER + 10) {
            metrics.call(
                "erp",
                Some(&format!("t{i}")),
                CallStatus::Ok,
                Duration::from_millis(1),
            );
        }
        let text = metrics.encode();
        assert!(text.contains(r#"tool="_other""#), "{text}");
        assert!(!text.contains(&format!("t{}\"", MAX_TOOLS_PER_SERVER + 5)));
        assert!(text.contains("outpost_agent_call_duration_seconds_count"));
    }
}
