//! outpost-relay: accepts agent tunnels and serves MCP Streamable HTTP to AI clients,
//! routing each client session to the right agent and server. Records usage metrics and
//! key hashes only, never message content.
//!
//! Start with [`Relay::bind`], which validates everything and binds the listener, then
//! [`BoundRelay::run`] until the cancellation token fires.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod auth;
pub mod config;
pub mod error;
mod jsonrpc;
mod mcp_endpoint;
mod router;
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
    usage: UsageRecorder,
    /// Every task the relay spawns: connections, agent sessions, session dispatchers.
    tasks: TaskTracker,
    /// Phase one of shutdown: stop accepting, end GET streams.
    shutdown: CancellationToken,
    /// Phase two: close tunnels and sessions, after in-flight calls drained.
    close: CancellationToken,
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
        let shared_store: Arc<dyn Store> = Arc::new(store.clone());
        let (usage, usage_writer) = usage::channel(shared_store.clone(), config.usage.clone());
        let close = CancellationToken::new();
        let app = Arc::new(App {
            sessions: Arc::new(SessionRegistry::new(config.limits.max_sessions)),
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
            store,
        })
    }
}

// === impl BoundRelay ===

impl BoundRelay {
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
            store,
        } = self;
        let usage_stop = CancellationToken::new();
        let usage_task = tokio::spawn(usage_writer.run(usage_stop.clone()));
        let sweeper = app.tasks.spawn(sweep_idle_sessions(app.clone()));
        tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "relay listening");

        let stop_accepting = app.shutdown.clone();
        let forward = async {
            shutdown.cancelled().await;
            stop_accepting.cancel();
        };
        let router = router(app.clone());
        tokio::join!(
            server::serve(
                listener,
                tls,
                router,
                app.config.limits.clone(),
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
        usage_stop.cancel();
        let _ = usage_task.await;
        store.close().await;
        tracing::info!("relay stopped");
    }
}

fn router(app: Arc<App>) -> Router {
    Router::new()
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

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
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
            return RelayError::KeyInUrl.into_http(&correlation);
        }
    }
    next.run(request).await
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
                let closed = app.sessions.expire_idle(idle).await;
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

/// Query parameter names that carry credentials in other products.
const KEY_PARAMS: [&str; 6] = ["key", "api_key", "apikey", "access_token", "token", "auth"];
