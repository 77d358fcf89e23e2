//! outpost-agent: runs inside a private network beside local MCP servers and dials out
//! to the relay over one TLS 1.3 WebSocket, so clients can reach those servers without an
//! inbound port. Credentials stay here: they are read from env or files and handed only to
//! the local servers.
//!
//! Build an [`Agent`] from a [`config::Config`] and [`Agent::run`] it until the
//! cancellation token fires; [`Agent::status`] tells whether a tunnel is up.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod check;
pub mod config;
mod health;
pub use health::probe as health_get;
mod metrics;
pub mod policy;
pub mod redact;
pub mod tunnel;
mod upstream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::redact::Redactor;
use crate::tunnel::dial::{self, TrustError};
use crate::tunnel::reconnect::Backoff;
use crate::tunnel::session::{self, SessionEnd};
use crate::upstream::ServerRuntime;

/// The agent.
pub struct Agent {
    inner: Arc<AgentInner>,
    health: Option<std::net::TcpListener>,
}

/// Applies configuration reloads to a running agent (on SIGHUP).
#[derive(Clone)]
pub struct ReloadHandle {
    inner: Arc<AgentInner>,
}

/// What the agent is doing, for health checks and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// Dialing or waiting to redial.
    Disconnected,
    /// A tunnel is up and registered at the relay under this name.
    Connected {
        /// The agent's name, as the relay knows it.
        agent_name: String,
    },
    /// Shutting down: finishing in-flight calls.
    Draining,
    /// Stopped.
    Stopped,
}

/// Why the agent could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The trust anchors are unusable.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The HTTP client for local servers could not be built.
    #[error("HTTP client: {0}")]
    Http(String),
    /// The health port could not be bound.
    #[error("cannot listen on health.listen {addr}: {source}")]
    Health {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

pub(crate) struct AgentInner {
    config: RwLock<Arc<Config>>,
    tls: RwLock<Arc<rustls::ClientConfig>>,
    redactor: RwLock<Arc<Redactor>>,
    servers: Mutex<HashMap<String, Arc<ServerRuntime>>>,
    http: reqwest::Client,
    status: watch::Sender<Status>,
    metrics: Arc<Metrics>,
    /// Set by a reload that changed the servers or their policies: the live tunnel
    /// announces the new list.
    announce: tokio::sync::Notify,
}

impl Agent {
    /// Prepares the agent: TLS trust, the HTTP client for local servers, the redaction of
    /// its secrets, and the health port if one is configured (bound here, so a taken
    /// port fails at startup).
    pub fn new(config: Config) -> Result<Self, AgentError> {
        let tls = dial::tls_config(&config)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(local_tls()?)
            .connect_timeout(LOCAL_CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .no_proxy()
            // A server's configured headers (its credentials) go to its URL and nowhere
            // else: a redirect is the upstream's error, not a new destination.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| AgentError::Http(e.to_string()))?;
        let health = config
            .health_listen
            .map(|addr| {
                std::net::TcpListener::bind(addr)
                    .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
                    .map_err(|source| AgentError::Health { addr, source })
            })
            .transpose()?;
        let servers = config
            .servers
            .values()
            .map(|server| {
                (
                    server.name.clone(),
                    Arc::new(ServerRuntime::new(
                        server.name.clone(),
                        server.policy.clone(),
                    )),
                )
            })
            .collect();
        let redactor = redactor_for(&config);
        Ok(Self {
            inner: Arc::new(AgentInner {
                config: RwLock::new(Arc::new(config)),
                tls: RwLock::new(tls),
                redactor: RwLock::new(Arc::new(redactor)),
                servers: Mutex::new(servers),
                http,
                status: watch::Sender::new(Status::Disconnected),
                metrics: Arc::new(Metrics::new()),
                announce: tokio::sync::Notify::new(),
            }),
            health,
        })
    }

    /// Watches the agent's status.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.inner.status.subscribe()
    }

    /// The local address of the health endpoint, if enabled.
    pub fn health_addr(&self) -> Option<std::net::SocketAddr> {
        self.health.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// A handle to reload the configuration while the agent runs.
    pub fn reload_handle(&self) -> ReloadHandle {
        ReloadHandle {
            inner: self.inner.clone(),
        }
    }

    /// Keeps a tunnel to the relay up, reconnecting with backoff, until `shutdown` fires;
    /// then drains in-flight calls within the grace period and returns.
    ///
    /// Spawn it on a multi-threaded runtime rather than awaiting it in `block_on`: it drives
    /// the tunnel, and `block_on` polls on a thread that is not one of the runtime's workers.
    pub async fn run(self, shutdown: CancellationToken) {
        let agent = &self.inner;
        let health = match self.health {
            Some(listener) => match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => Some(tokio::spawn(health::serve(
                    listener,
                    agent.clone(),
                    shutdown.clone(),
                ))),
                Err(err) => {
                    tracing::error!(%err, "cannot serve the health port");
                    None
                }
            },
            None => None,
        };
        let settings = agent.config().tunnel.clone();
        let mut backoff = Backoff::new(settings.reconnect_min, settings.reconnect_max);
        loop {
            match session::run(agent, &shutdown).await {
                Ok(SessionEnd::Shutdown) => break,
                Ok(SessionEnd::Lost { exit, up_for }) => {
                    tracing::warn!(%exit, ?up_for, "tunnel lost; reconnecting");
                    // Only a tunnel that stayed healthy for a while starts the backoff over,
                    // so a relay that accepts and drops at once is not hammered.
                    if up_for >= settings.healthy_after {
                        backoff.reset();
                    }
                }
                Err(err) => tracing::error!(%err, "cannot establish the tunnel"),
            }
            if shutdown.is_cancelled() {
                break;
            }
            agent.metrics.reconnects.inc();
            let delay = backoff.next_delay();
            tracing::info!(?delay, "reconnecting after a delay");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        agent.status.send_replace(Status::Stopped);
        if let Some(health) = health {
            let _ = health.await;
        }
        tracing::info!("agent stopped");
    }
}

impl AgentInner {
    /// The configuration in force.
    pub(crate) fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn tls(&self) -> Arc<rustls::ClientConfig> {
        self.tls
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn redactor(&self) -> Arc<Redactor> {
        self.redactor
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The shared state of server `name`, if it is configured.
    pub(crate) fn server(&self, name: &str) -> Option<Arc<ServerRuntime>> {
        self.servers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub(crate) fn metrics_arc(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    pub(crate) fn status_now(&self) -> Status {
        self.status.borrow().clone()
    }
}

impl ReloadHandle {
    /// Applies a new configuration without dropping the tunnel. Policies (allowed tools,
    /// concurrency caps, timeouts) apply to the next call; transports and secrets to the
    /// next session; connection settings (relay, key, proxy, pins, CA) to the next dial.
    /// Servers added or removed, and changed policies, are announced to the relay on the
    /// live tunnel. Returns what changed, for the log.
    pub fn reload(&self, config: Config) -> Result<Vec<String>, AgentError> {
        let inner = &self.inner;
        let tls = dial::tls_config(&config)?;
        let old = inner.config();
        let mut changes = Vec::new();
        {
            let mut servers = inner.servers.lock().unwrap_or_else(PoisonError::into_inner);
            for server in config.servers.values() {
                match servers.get(&server.name) {
                    Some(runtime) => {
                        let before = old.servers.get(&server.name).map(policy::digest);
                        if before.as_deref() != Some(policy::digest(server).as_str()) {
                            changes.push(format!("server {} changed", server.name));
                        }
                        runtime.set_policy(server.policy.clone());
                    }
                    None => {
                        changes.push(format!("server {} added", server.name));
                        servers.insert(
                            server.name.clone(),
                            Arc::new(ServerRuntime::new(
                                server.name.clone(),
                                server.policy.clone(),
                            )),
                        );
                    }
                }
            }
            servers.retain(|name, _| {
                let keep = config.servers.contains_key(name);
                if !keep {
                    changes.push(format!("server {name} removed"));
                }
                keep
            });
        }
        if old.relay_url != config.relay_url
            || old.proxy.as_ref().map(|p| (&p.host, p.port))
                != config.proxy.as_ref().map(|p| (&p.host, p.port))
            || old.relay_pins != config.relay_pins
            || old.ca_file != config.ca_file
        {
            changes.push("connection settings changed (used from the next reconnect)".into());
        }
        if old.health_listen != config.health_listen {
            changes.push("health.listen changed: takes effect after a restart".into());
        }
        *inner
            .redactor
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(redactor_for(&config));
        *inner.tls.write().unwrap_or_else(PoisonError::into_inner) = tls;
        let servers_changed = changes.iter().any(|c| c.starts_with("server "));
        *inner.config.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
        if servers_changed {
            inner.announce.notify_one();
        }
        Ok(changes)
    }
}

/// The redactor for every secret of `config`; warns about secrets too short to redact.
fn redactor_for(config: &Config) -> Redactor {
    let (redactor, too_short) = Redactor::new(config.secret_values());
    for name in too_short {
        tracing::warn!(
            secret = %name,
            min_len = redact::MIN_SECRET_LEN,
            "secret too short to be redacted from upstream output"
        );
    }
    redactor
}

/// TLS for local HTTPS servers: system roots, rustls with ring.
fn local_tls() -> Result<rustls::ClientConfig, AgentError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| AgentError::Http(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

const LOCAL_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
