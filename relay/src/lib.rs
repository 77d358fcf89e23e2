//! outpost-relay: accepts agent tunnels and serves MCP Streamable HTTP to AI clients,
//! routing each client session to the right agent and server. Records usage metrics and
//! key hashes only, never message content.
//!
//! Start with [`Relay::bind`], which validates everything and binds the listener, then
//! [`BoundRelay::run`] until the cancellation token fires.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod admin;
mod aggregate;
mod aggregate_listen;
mod aggregate_modern;
pub mod audit;
pub mod auth;
mod body;
mod bridge;
mod bridge_legacy;
pub mod config;
pub mod control;
pub mod error;
pub mod guard;
mod handshake_gate;
mod jsonrpc;
mod key_cache;
mod listen;
mod mcp_endpoint;
mod metrics;
mod replay;
mod router;
pub mod scope;
mod server;
pub mod store;
mod tunnel;
pub mod usage;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::StatusCode;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Pepper;
use crate::config::{Config, ConfigError};
use crate::error::{CorrelationId, RelayError};
use crate::router::SessionRegistry;
use crate::store::{SqliteStore, Store, StoreError};
use crate::tunnel::AgentRegistry;
use crate::usage::{UsageRecorder, UsageWriter};

pub use server::{TlsError, tls_config};

/// The relay, before it binds.
#[derive(Debug)]
pub struct Relay;

/// A relay whose listener is bound and whose store is open; [`BoundRelay::run`] serves.
#[must_use = "a bound relay serves nothing until it runs"]
pub struct BoundRelay {
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Arc<App>,
    usage_writer: UsageWriter,
    audit_writer: audit::AuditWriter,
    metrics_listener: Option<TcpListener>,
    store: SqliteStore,
}

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration or the pepper is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be opened or migrated.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The certificate or key is unusable.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// The listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// What every handler shares.
pub(crate) struct App {
    config: Config,
    store: Arc<dyn Store>,
    pepper: Pepper,
    agents: AgentRegistry,
    sessions: Arc<SessionRegistry>,
    /// Sessions of the aggregated endpoint `/mcp`.
    aggregates: aggregate::Aggregates,
    /// Sessions of 2025-era clients on 2026-era upstreams.
    bridges: bridge::Bridges,
    /// Eras of upstreams, and calls of 2026-era clients on 2025-era upstreams held for input.
    legacy: bridge_legacy::LegacyBridge,
    usage: UsageRecorder,
    /// Every task the relay spawns: connections, agent sessions, session dispatchers.
    tasks: TaskTracker,
    /// Phase one of shutdown: stop accepting, end GET streams.
    shutdown: CancellationToken,
    /// Phase two: close tunnels and sessions, after in-flight calls drained.
    close: CancellationToken,
    /// The audit chain's key.
    chain: audit::ChainKey,
    /// Queues audit events.
    auditor: audit::Auditor,
    /// Rate limits and in-flight caps.
    guard: guard::Guard,
    /// Client keys verified against the store, so a request with one skips the lookup.
    verified_keys: key_cache::VerifiedKeys,
    /// When each key's last use was written, to write it at most once a minute.
    key_touches: std::sync::Mutex<std::collections::HashMap<String, i64>>,
    /// Prometheus metrics.
    metrics: Arc<metrics::RelayMetrics>,
}

// === impl Relay ===

impl Relay {
    /// Opens the store, loads the pepper and TLS files, and binds the listener.
    pub async fn bind(config: Config) -> Result<BoundRelay, StartError> {
        let pepper = config.pepper()?;
        let tls = tls_config(&config.tls)?;
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            StoreError::NotFound(format!("data directory {}: {e}", config.data_dir.display()))
        })?;
        let store = SqliteStore::open(&config.database_path()).await?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let metrics_listener = match config.metrics.listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind { addr, source })?,
            ),
            None => None,
        };
        let shared_store: Arc<dyn Store> = Arc::new(store.clone());
        let relay_metrics = Arc::new(metrics::RelayMetrics::new());
        let (usage, usage_writer) = usage::channel(shared_store.clone(), config.usage.clone());
        let observer = relay_metrics.clone();
        let usage = usage.with_observer(Arc::new(move |event: &store::UsageEvent| {
            observer.call(event.status.as_str(), event.latency_us as f64 / 1e6);
        }));
        let close = CancellationToken::new();
        let (auditor, audit_writer) =
            audit::channel(shared_store.clone(), audit::ChainKey::derive(&pepper));
        let app = Arc::new(App {
            chain: audit::ChainKey::derive(&pepper),
            auditor,
            guard: guard::Guard::new(config.rate_limits.clone()),
            verified_keys: key_cache::VerifiedKeys::new(key_cache::DEFAULT_VERIFIED_KEYS),
            key_touches: std::sync::Mutex::default(),
            metrics: relay_metrics,
            sessions: Arc::new(SessionRegistry::new(
                config.limits.max_sessions,
                replay::ReplayLimits {
                    events: config.limits.replay_events_per_session,
                    bytes: config.limits.replay_bytes_per_session,
                },
                config.limits.client_stall_timeout,
            )),
            aggregates: aggregate::Aggregates::default(),
            bridges: bridge::Bridges::default(),
            legacy: bridge_legacy::LegacyBridge::default(),
            config,
            store: shared_store,
            pepper,
            agents: AgentRegistry::default(),
            usage,
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            close,
        });
        Ok(BoundRelay {
            listener,
            tls,
            app,
            usage_writer,
            audit_writer,
            metrics_listener,
            store,
        })
    }
}

// === impl BoundRelay ===

impl BoundRelay {
    /// The address of the metrics listener, if one is configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has a local address")
    }

    /// Serves until `shutdown` fires, then stops accepting, lets in-flight calls finish
    /// within the grace period, closes tunnels and sessions, and flushes usage.
    pub async fn run(self, shutdown: CancellationToken) {
        let BoundRelay {
            listener,
            tls,
            app,
            usage_writer,
            audit_writer,
            metrics_listener,
            store,
        } = self;
        let usage_stop = CancellationToken::new();
        let usage_task = tokio::spawn(usage_writer.run(usage_stop.clone()));
        let audit_stop = CancellationToken::new();
        let audit_task = tokio::spawn(audit_writer.run(audit_stop.clone()));
        let metrics_task =
            metrics_listener.map(|listener| tokio::spawn(metrics::serve(listener, app.clone())));
        let sweeper = app.tasks.spawn(sweep_idle_sessions(app.clone()));
        let control_sweeper = app.tasks.spawn(sweep_control_plane(app.clone()));
        tracing::info!(
            addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            worker_threads = tokio::runtime::Handle::current().metrics().num_workers(),
            "relay listening"
        );

        let stop_accepting = app.shutdown.clone();
        let forward = async {
            shutdown.cancelled().await;
            stop_accepting.cancel();
        };
        let router = router(app.clone());
        let gate =
            handshake_gate::HandshakeGate::new(&app.config.limits, app.metrics.handshakes.clone());
        tokio::join!(
            server::serve(
                listener,
                tls,
                router,
                app.config.limits.clone(),
                gate,
                app.shutdown.clone(),
                app.tasks.clone(),
            ),
            forward,
        );

        app.close.cancel();
        app.tasks.close();
        if tokio::time::timeout(app.config.limits.shutdown_grace, app.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some tasks did not stop within the grace period");
        }
        sweeper.abort();
        control_sweeper.abort();
        app.flush_failure_reports();
        usage_stop.cancel();
        let _ = usage_task.await;
        audit_stop.cancel();
        if tokio::time::timeout(AUDIT_FLUSH, audit_task).await.is_err() {
            tracing::warn!("audit events still queued at shutdown were not all written");
        }
        if let Some(metrics_task) = metrics_task {
            metrics_task.abort();
        }
        store.close().await;
        tracing::info!("relay stopped");
    }
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .merge(admin::routes())
        .route(
            "/mcp",
            post(aggregate::post)
                .get(aggregate::get)
                .delete(aggregate::delete),
        )
        .route(
            "/mcp/{agent}/{server}",
            post(mcp_endpoint::post)
                .get(mcp_endpoint::get)
                .delete(mcp_endpoint::delete),
        )
        .route("/tunnel/v1", get(tunnel::accept))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(refuse_keys_in_url))
        .with_state(app)
}

async fn ready(State(app): State<Arc<App>>) -> Response {
    if app.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else {
        "ready\n".into_response()
    }
}

/// No route: refused after the body is read and dropped (see `body.rs`). Like every refusal
/// before a handler reads the body: answered at once, hyper would close the connection
/// under a client still sending it.
async fn not_found(request: Request) -> Response {
    body::discard(&mut request.into_body()).await;
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// A route without this method: refused, as [`not_found`], after the body is dropped. (axum
/// adds the `Allow` header.)
async fn method_not_allowed(request: Request) -> Response {
    body::discard(&mut request.into_body()).await;
    StatusCode::METHOD_NOT_ALLOWED.into_response()
}

/// Keys belong in the `Authorization` header. One seen in a URL is refused before any
/// routing, and the refusal says why, so the mistake is caught before it spreads to logs.
async fn refuse_keys_in_url(request: Request, next: Next) -> Response {
    if let Some(query) = request.uri().query() {
        let decoded = query.replace("%5F", "_").replace("%5f", "_");
        let named_like_a_key = decoded.split('&').any(|pair| {
            let name = pair.split('=').next().unwrap_or("").to_ascii_lowercase();
            KEY_PARAMS.contains(&name.as_str())
        });
        if named_like_a_key || auth::looks_like_key(&decoded) {
            let correlation = CorrelationId::new();
            RelayError::KeyInUrl.log(&correlation, &"query string");
            body::discard(&mut request.into_body()).await;
            return RelayError::KeyInUrl.into_http(&correlation);
        }
    }
    next.run(request).await
}

impl App {
    /// Notes a failed authentication from the request's source; returns how long to hold
    /// the answer when the source is over its limit (then answered with 429).
    pub(crate) fn note_auth_failure(
        &self,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
        correlation: &CorrelationId,
    ) -> Option<std::time::Duration> {
        let source = extensions
            .get::<admin::PeerAddr>()
            .map(|peer| peer.0.ip().to_string())
            .unwrap_or_else(|| "unknown".into());
        let user_agent = headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok());
        self.metrics.auth_failures.inc();
        let delay = self.guard.note_failure(&source, user_agent);
        if delay.is_some() {
            tracing::info!(%source, correlation = %correlation.0, "authentication failures over the limit: slowing this source");
        }
        delay
    }

    /// Audits a revoked or expired key that is still being presented: a leaked key in
    /// use, or a client that missed a rotation.
    pub(crate) fn note_refused_key(
        &self,
        err: &auth::AuthError,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
        correlation: &CorrelationId,
    ) {
        let (action, key) = match err {
            auth::AuthError::Revoked(key) => ("key.used_after_revocation", key),
            auth::AuthError::Expired(key) => ("key.used_after_expiry", key),
            _ => return,
        };
        let event = audit::AuditEvent {
            org_id: None,
            actor: key.0.clone(),
            action,
            resource: key.0.clone(),
            source: extensions
                .get::<admin::PeerAddr>()
                .map(|peer| peer.0.ip().to_string()),
            user_agent: headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|ua| ua.chars().take(256).collect()),
            correlation_id: Some(correlation.0.clone()),
            detail: serde_json::json!({}),
        };
        // The key's organisation, so its admins see the event; off the request path.
        let store = self.store.clone();
        let auditor = self.auditor.clone();
        let key = key.0.clone();
        self.tasks.spawn(async move {
            let org_id = store.key_by_id(&key).await.ok().flatten().map(|k| k.org_id);
            auditor.record(audit::AuditEvent { org_id, ..event });
        });
    }

    /// Notes a successful authentication: writes the key's last use at most once a minute.
    pub(crate) fn note_key_used(self: &Arc<Self>, principal: &auth::Principal) {
        let now = auth::now_ms();
        let stale = {
            let mut touches = self
                .key_touches
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let last = touches.get(&principal.key_id.0).copied().unwrap_or(0);
            if now - last >= KEY_TOUCH_INTERVAL_MS && touches.len() < MAX_KEY_TOUCHES {
                touches.insert(principal.key_id.0.clone(), now);
                true
            } else {
                false
            }
        };
        if stale {
            let app = self.clone();
            let key = principal.key_id.0.clone();
            self.tasks.spawn(async move {
                if let Err(err) = app.store.touch_key(&key, now).await {
                    tracing::warn!(%err, "could not record a key's last use");
                }
            });
        }
    }

    /// Writes the failed authentications counted since the last flush to the audit trail,
    /// one event per source.
    fn flush_failure_reports(&self) {
        for report in self.guard.take_failure_reports() {
            self.auditor.record(audit::AuditEvent {
                org_id: None,
                actor: report.source.clone(),
                action: "auth.failed",
                resource: "api".into(),
                source: Some(report.source),
                user_agent: report.user_agent,
                correlation_id: None,
                detail: serde_json::json!({ "count": report.count, "window": "1m" }),
            });
        }
    }
}

/// Every minute: reports failed authentications, notes keys that expired, prunes usage
/// past its retention, and forgets idle rate-limit state.
async fn sweep_control_plane(app: Arc<App>) {
    let mut tick = tokio::time::interval(CONTROL_SWEEP);
    let mut checked_until = auth::now_ms();
    loop {
        tokio::select! {
            _ = app.close.cancelled() => return,
            _ = tick.tick() => {}
        }
        app.flush_failure_reports();
        app.guard.sweep();
        let stale = auth::now_ms() - KEY_TOUCH_INTERVAL_MS;
        app.key_touches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|_, at| *at > stale);
        let now = auth::now_ms();
        match app.store.keys_expiring_between(checked_until, now).await {
            Ok(keys) => {
                for key in keys {
                    app.auditor.record(audit::AuditEvent {
                        org_id: Some(key.org_id.clone()),
                        actor: "relay".into(),
                        action: "key.expired",
                        resource: key.id.clone(),
                        detail: serde_json::json!({ "kind": key.kind, "replaced_by": key.replaced_by }),
                        ..audit::AuditEvent::default()
                    });
                }
                checked_until = now;
            }
            Err(err) => tracing::warn!(%err, "could not check for expired keys"),
        }
        let retention = i64::try_from(app.config.usage.retention.as_millis()).unwrap_or(i64::MAX);
        match app.store.prune_usage(now.saturating_sub(retention)).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "usage events past their retention deleted"),
            Err(err) => tracing::warn!(%err, "could not prune usage"),
        }
    }
}

/// Now and then: times out calls whose clients went away, and closes idle sessions.
async fn sweep_idle_sessions(app: Arc<App>) {
    let idle = app.config.limits.session_idle_timeout;
    let shortest = idle.min(app.config.limits.call_timeout);
    let period = (shortest / 4).clamp(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(60),
    );
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = app.close.cancelled() => return,
            _ = tick.tick() => {
                let abandoned = app.sessions.expire_abandoned_calls();
                if abandoned > 0 {
                    tracing::info!(abandoned, "timed out calls whose clients went away");
                }
                let aggregated = app.aggregates.expire_idle(&app, idle).await;
                if aggregated > 0 {
                    tracing::info!(aggregated, "closed idle aggregated sessions");
                }
                let closed = app.sessions.expire_idle(idle).await;
                app.bridges.sweep();
                app.legacy.sweep();
                if closed > 0 {
                    tracing::info!(closed, open = app.sessions.len(), "closed idle client sessions");
                }
            }
        }
    }
}

/// Whether a name is usable as an agent or server name: `[a-z0-9_-]{1,64}`.
pub fn is_valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

const KEY_TOUCH_INTERVAL_MS: i64 = 60_000;
const MAX_KEY_TOUCHES: usize = 100_000;
const CONTROL_SWEEP: std::time::Duration = std::time::Duration::from_secs(60);
const AUDIT_FLUSH: std::time::Duration = std::time::Duration::from_secs(10);

/// Query parameter names that carry credentials in other products.
const KEY_PARAMS: [&str; 6] = ["key", "api_key", "apikey", "access_token", "token", "auth"];
