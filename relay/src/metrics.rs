//! The relay's Prometheus metrics, on their own listener (`metrics.listen`): figures
//! across all organisations, so never on the public port. Labels are bounded sets (an
//! HTTP status class, a call status, a limit scope); no key, organisation, agent or tool
//! name appears, so cardinality cannot grow with tenants.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::App;
use crate::handshake_gate::HandshakeMetrics;

/// Every metric the relay exports.
pub(crate) struct RelayMetrics {
    registry: Registry,
    pub(crate) auth_failures: Counter,
    limited: Family<ScopeLabel, Counter>,
    calls: Family<StatusLabel, Counter>,
    latency: Histogram,
    agents: Gauge,
    sessions: Gauge,
    listen_streams: Gauge,
    usage_dropped: Gauge,
    audit_dropped: Gauge,
    resumptions: Family<ResultLabel, Counter>,
    /// The handshake gate's figures (waiting, in progress, refused).
    pub(crate) handshakes: HandshakeMetrics,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabel {
    scope: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

impl std::fmt::Debug for RelayMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayMetrics").finish_non_exhaustive()
    }
}

impl RelayMetrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("outpost_relay");
        let auth_failures = Counter::default();
        registry.register(
            "auth_failures",
            "Requests refused for a missing or bad key",
            auth_failures.clone(),
        );
        let limited = Family::<ScopeLabel, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit or in-flight cap, by scope (key, tool, agent, listen)",
            limited.clone(),
        );
        let calls = Family::<StatusLabel, Counter>::default();
        registry.register(
            "calls",
            "Client requests answered, by status",
            calls.clone(),
        );
        let latency = Histogram::new([
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
        ]);
        registry.register(
            "call_duration_seconds",
            "Time from a request reaching the relay to its answer",
            latency.clone(),
        );
        let agents = Gauge::default();
        registry.register(
            "agents_connected",
            "Agent tunnels registered",
            agents.clone(),
        );
        let sessions = Gauge::default();
        registry.register(
            "client_sessions",
            "Client MCP sessions open",
            sessions.clone(),
        );
        let listen_streams = Gauge::default();
        registry.register(
            "listen_streams",
            "subscriptions/listen streams open (2026-era clients); refusals over \
             rate_limits.max_listen_streams_per_key count in rate_limited{scope=\"listen\"}",
            listen_streams.clone(),
        );
        let usage_dropped = Gauge::default();
        registry.register(
            "usage_events_dropped",
            "Usage events dropped because the queue was full",
            usage_dropped.clone(),
        );
        let audit_dropped = Gauge::default();
        registry.register(
            "audit_events_dropped",
            "Audit events dropped because the queue was full",
            audit_dropped.clone(),
        );
        let resumptions = Family::<ResultLabel, Counter>::default();
        registry.register(
            "stream_resumptions",
            "GETs with Last-Event-ID, by result (resumed, unknown, evicted, invalid)",
            resumptions.clone(),
        );
        let handshakes = HandshakeMetrics::default();
        registry.register(
            "handshakes_waiting",
            "Connections accepted and waiting for a turn to start their TLS handshake (limits.max_handshakes, limits.handshakes_per_second)",
            handshakes.waiting.clone(),
        );
        registry.register(
            "handshakes_in_progress",
            "TLS handshakes in progress",
            handshakes.in_progress.clone(),
        );
        registry.register(
            "handshakes_refused",
            "Connections dropped because their handshake turn did not come within limits.handshake_timeout",
            handshakes.refused.clone(),
        );
        Self {
            resumptions,
            registry,
            handshakes,
            auth_failures,
            limited,
            calls,
            latency,
            agents,
            sessions,
            listen_streams,
            usage_dropped,
            audit_dropped,
        }
    }

    /// Counts a request refused by a limit.
    pub(crate) fn limited(&self, scope: &'static str) {
        self.limited.get_or_create(&ScopeLabel { scope }).inc();
    }

    /// Counts a `Last-Event-ID` resumption by its result.
    pub(crate) fn resumption(&self, result: &'static str) {
        self.resumptions
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Counts an answered call.
    pub(crate) fn call(&self, status: &'static str, seconds: f64) {
        self.calls.get_or_create(&StatusLabel { status }).inc();
        self.latency.observe(seconds);
    }
}

/// Serves `/metrics` on `listener` until the relay closes.
pub(crate) async fn serve(listener: tokio::net::TcpListener, app: Arc<App>) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics listening");
    }
    let stop = app.close.clone();
    let router = Router::new().route("/metrics", get(render)).with_state(app);
    if let Err(err) = axum::serve(listener, router)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
    {
        tracing::error!(%err, "metrics endpoint failed");
    }
}

async fn render(State(app): State<Arc<App>>) -> impl IntoResponse {
    let metrics = &app.metrics;
    metrics
        .agents
        .set(i64::try_from(app.agents.len()).unwrap_or(i64::MAX));
    metrics
        .sessions
        .set(i64::try_from(app.sessions.len()).unwrap_or(i64::MAX));
    metrics
        .listen_streams
        .set(i64::try_from(app.guard.listen_streams()).unwrap_or(i64::MAX));
    metrics.usage_dropped.set(
        i64::try_from(
            app.usage
                .counters()
                .dropped
                .load(std::sync::atomic::Ordering::Relaxed),
        )
        .unwrap_or(i64::MAX),
    );
    metrics
        .audit_dropped
        .set(i64::try_from(app.auditor.dropped()).unwrap_or(i64::MAX));
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &metrics.registry);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
}
