//! outpost-agent: runs inside a private network beside local MCP servers and dials out
//! to the relay over one TLS 1.3 WebSocket, so clients can reach those servers without an
//! inbound port. Credentials stay here: they are read from env or files and handed only to
//! the local servers.
//!
//! Build an [`Agent`] from a [`config::Config`] and [`Agent::run`] it until the
//! cancellation token fires; [`Agent::status`] tells whether a tunnel is up.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod config;
pub mod policy;
pub mod tunnel;
mod upstream;

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::tunnel::dial::{self, TrustError};
use crate::tunnel::reconnect::Backoff;
use crate::tunnel::session::{self, SessionEnd};

/// The agent.
pub struct Agent {
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
}

pub(crate) struct AgentInner {
    config: Arc<Config>,
    tls: Arc<rustls::ClientConfig>,
    http: reqwest::Client,
    status: watch::Sender<Status>,
}

impl Agent {
    /// Prepares the agent: TLS trust and the HTTP client for local servers.
    pub fn new(config: Config) -> Result<Self, AgentError> {
        let tls = dial::tls_config(&config)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(local_tls()?)
            .connect_timeout(LOCAL_CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .no_proxy()
            .build()
            .map_err(|e| AgentError::Http(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(AgentInner {
                config: Arc::new(config),
                tls,
                http,
                status: watch::Sender::new(Status::Disconnected),
            }),
        })
    }

    /// Watches the agent's status.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.inner.status.subscribe()
    }

    /// Keeps a tunnel to the relay up, reconnecting with backoff, until `shutdown` fires;
    /// then drains in-flight calls within the grace period and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let agent = &self.inner;
        let settings = &agent.config.tunnel;
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
            let delay = backoff.next_delay();
            tracing::info!(?delay, "reconnecting after a delay");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        agent.status.send_replace(Status::Stopped);
        tracing::info!("agent stopped");
    }
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
