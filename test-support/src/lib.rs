//! Starts real Outpost parts on 127.0.0.1 with ephemeral ports for tests: a relay
//! ([`relay`]), agents ([`agent`]), an rmcp Streamable HTTP server ([`HttpMcpServer`]),
//! paths to the real MCP servers and clients installed by `scripts/setup-tools.sh`, and a
//! small MCP-over-HTTP client ([`McpClient`]) for asserting on the wire. Not published.

mod certs;
mod client;
pub mod conformance;
mod cut_proxy;
pub mod listen;
mod mcp_server;
mod process;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use outpost_agent::config::{
    Config as AgentConfig, ServerConfig, StdioConfig, Transport, TunnelSettings,
};
use outpost_agent::policy::ToolPolicy;
use outpost_agent::{Agent, ReloadHandle, Status};
use outpost_relay::Relay;
use outpost_relay::auth::{self, Environment, KeyKind, Pepper};
use outpost_relay::config::{
    Config as RelayConfig, HttpSettings, Limits, TlsFiles, TunnelSettings as RelayTunnel,
    UsageSettings,
};
use outpost_relay::store::{NewKey, SqliteStore, Store, UsageEvent};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use tempfile::TempDir;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use certs::Certs;
pub use client::{McpClient, McpResponse};
pub use cut_proxy::CutProxy;
pub use mcp_server::{HttpMcpServer, serve_on_loopback};
pub use process::Process;

// === relay ===

/// Starts building a relay.
pub fn relay() -> RelayBuilder {
    init_logging();
    RelayBuilder::default()
}

/// Logs to stderr when `TEST_LOG` holds a filter (e.g. `debug`), for debugging a
/// test; silent otherwise.
pub fn init_logging() {
    if let Ok(filter) = std::env::var("TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// Settings for a test relay; defaults suit most tests.
#[derive(Debug, Clone)]
pub struct RelayBuilder {
    limits: Limits,
    tunnel: RelayTunnel,
    listen: Option<SocketAddr>,
    reuse: Option<Arc<RelayState>>,
    http: HttpSettings,
    rate_limits: outpost_relay::config::RateLimits,
}

impl Default for RelayBuilder {
    fn default() -> Self {
        let tunnel = RelayTunnel {
            heartbeat_interval: Duration::from_secs(5),
            ..RelayTunnel::default()
        };
        Self {
            limits: Limits {
                shutdown_grace: Duration::from_secs(5),
                ..Limits::default()
            },
            tunnel,
            listen: None,
            reuse: None,
            http: HttpSettings::default(),
            // Generous, so tests that are not about limits never meet one.
            rate_limits: outpost_relay::config::RateLimits {
                requests_per_second: 100_000,
                burst: 100_000,
                tool_requests_per_second: 100_000,
                tool_burst: 100_000,
                max_in_flight_per_key: 10_000,
                max_in_flight_per_agent: 10_000,
                failures_per_minute: 100_000,
                ..outpost_relay::config::RateLimits::default()
            },
        }
    }
}

/// A relay's lasting state: certificates, data directory, pepper, organisation. Shared by
/// a relay and its restart.
#[derive(Debug)]
pub struct RelayState {
    /// TLS material.
    pub certs: Certs,
    data: TempDir,
    pepper_file: PathBuf,
    /// The organisation the keys belong to.
    pub org_id: String,
}

/// A running relay.
pub struct TestRelay {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where its Prometheus metrics are served (plain HTTP).
    pub metrics_addr: Option<SocketAddr>,
    /// Lasting state, for [`RelayBuilder::restart_of`].
    pub state: Arc<RelayState>,
    store: SqliteStore,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl RelayBuilder {
    /// Sets how many `subscriptions/listen` streams a key may hold open.
    pub fn max_listen_streams_per_key(mut self, max: usize) -> Self {
        self.rate_limits.max_listen_streams_per_key = max;
        self
    }

    /// Sets the call timeout.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.limits.call_timeout = timeout;
        self
    }

    /// Sets what each session keeps for `Last-Event-ID` resumption.
    pub fn replay_limits(mut self, events: usize, bytes: usize) -> Self {
        self.limits.replay_events_per_session = events;
        self.limits.replay_bytes_per_session = bytes;
        self
    }

    /// Sets how long a session may sit idle before the relay closes it.
    pub fn session_idle_timeout(mut self, idle: Duration) -> Self {
        self.limits.session_idle_timeout = idle;
        self
    }

    /// Sets the allowed `Host` and `Origin` values.
    pub fn allow(mut self, hosts: &[&str], origins: &[&str]) -> Self {
        self.http.allowed_hosts = hosts.iter().map(|h| (*h).to_owned()).collect();
        self.http.allowed_origins = origins.iter().map(|o| (*o).to_owned()).collect();
        self
    }

    /// Sets the TLS handshake and request-header timeout.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.limits.handshake_timeout = timeout;
        self
    }

    /// Sets how many TLS handshakes may be in progress at once.
    pub fn max_handshakes(mut self, handshakes: usize) -> Self {
        self.limits.max_handshakes = handshakes;
        self
    }

    /// Sets the rate limits.
    pub fn rate_limits(mut self, limits: outpost_relay::config::RateLimits) -> Self {
        self.rate_limits = limits;
        self
    }

    /// Sets the request body limit.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.limits.max_body_bytes = bytes;
        self
    }

    /// Sets the largest message through the tunnel (and lowers the body limit to match).
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.limits.max_message_bytes = bytes;
        self.limits.max_body_bytes = self.limits.max_body_bytes.min(bytes);
        self
    }

    /// Sets the tunnel heartbeat interval.
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.tunnel.heartbeat_interval = interval;
        self
    }

    /// Sets `limits.client_stall_timeout`.
    pub fn client_stall_timeout(mut self, stall: Duration) -> Self {
        self.limits.client_stall_timeout = stall;
        self
    }

    /// Sets the SSE keep-alive interval.
    pub fn sse_keepalive(mut self, interval: Duration) -> Self {
        self.limits.sse_keepalive = interval;
        self
    }

    /// Reuses another relay's address and state: a restart.
    pub fn restart_of(mut self, relay: &TestRelay) -> Self {
        self.listen = Some(relay.addr);
        self.reuse = Some(relay.state.clone());
        self
    }

    /// Starts the relay and returns once it listens.
    pub async fn spawn(self) -> anyhow::Result<TestRelay> {
        let state = match self.reuse {
            Some(state) => state,
            None => Arc::new(new_state().await?),
        };
        let config = RelayConfig {
            listen: self
                .listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            environment: Environment::Live,
            data_dir: state.data.path().to_owned(),
            pepper_file: state.pepper_file.clone(),
            tls: TlsFiles {
                cert_file: state.certs.cert.clone(),
                key_file: state.certs.key.clone(),
            },
            limits: self.limits,
            tunnel: self.tunnel,
            usage: UsageSettings {
                flush_interval: Duration::from_millis(20),
                ..UsageSettings::default()
            },
            http: self.http,
            rate_limits: self.rate_limits,
            metrics: outpost_relay::config::MetricsSettings {
                listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            },
        };
        let bound = Relay::bind(config.clone()).await?;
        let addr = bound.local_addr();
        let metrics_addr = bound.metrics_addr();
        let store = SqliteStore::open(&config.database_path()).await?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(bound.run(stop.clone()));
        Ok(TestRelay {
            addr,
            metrics_addr,
            state,
            store,
            stop,
            task,
        })
    }
}

impl RelayState {
    /// The data directory (SQLite files, pepper).
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }
}

async fn new_state() -> anyhow::Result<RelayState> {
    let certs = Certs::generate()?;
    let data = tempfile::tempdir()?;
    let pepper_file = data.path().join("pepper");
    std::fs::write(&pepper_file, Pepper::generate_hex().expose_secret())?;
    let store = SqliteStore::open(&data.path().join(outpost_relay::config::DATABASE_FILE)).await?;
    let org = store.create_organisation("acme").await?;
    store.close().await;
    Ok(RelayState {
        certs,
        data,
        pepper_file,
        org_id: org.id,
    })
}

impl TestRelay {
    /// `wss://localhost:PORT`, for agents.
    pub fn tunnel_url(&self) -> String {
        format!("wss://localhost:{}", self.addr.port())
    }

    /// `https://localhost:PORT`, for clients.
    pub fn base_url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// The text of its Prometheus `/metrics`.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let addr = self
            .metrics_addr
            .ok_or_else(|| anyhow::anyhow!("the relay serves no metrics"))?;
        Ok(self
            .http_client()
            .get(format!("http://{addr}/metrics"))
            .send()
            .await?
            .text()
            .await?)
    }

    /// The MCP endpoint of one server of one agent.
    pub fn mcp_url(&self, agent: &str, server: &str) -> String {
        format!("{}/mcp/{agent}/{server}", self.base_url())
    }

    /// The data directory (SQLite files).
    pub fn data_dir(&self) -> &Path {
        self.state.data.path()
    }

    /// Issues a client key with the member role.
    pub async fn client_key(&self) -> anyhow::Result<String> {
        self.issue(KeyKind::Client, None, "member", None).await
    }

    /// Issues a client key of `role` in organisation `org_id` with `scopes`.
    pub async fn key_with(
        &self,
        org_id: &str,
        role: &str,
        scopes: outpost_relay::store::Scopes,
    ) -> anyhow::Result<String> {
        let key = issue_key_full(
            &self.store,
            &self.state,
            org_id,
            KeyKind::Client,
            None,
            role,
            None,
            scopes,
        )
        .await?;
        Ok(key.expose_secret().to_owned())
    }

    /// Creates another organisation; returns its id.
    pub async fn organisation(&self, name: &str) -> anyhow::Result<String> {
        Ok(self.store.create_organisation(name).await?.id)
    }

    /// The id of the organisation the builder's keys belong to.
    pub fn org_id(&self) -> &str {
        &self.state.org_id
    }

    /// Calls the admin API: `(status, headers, JSON body or Null)`.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<(u16, reqwest::header::HeaderMap, serde_json::Value)> {
        let mut request = self
            .http_client()
            .request(method, format!("{}{path}", self.base_url()))
            .bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.json().await.unwrap_or(serde_json::Value::Null);
        Ok((status, headers, body))
    }

    /// Direct access to the store, for tests that tamper with it.
    pub fn store(&self) -> &SqliteStore {
        &self.store
    }

    /// Issues a client key that expires at `expires_at` (ms since the epoch).
    pub async fn expiring_client_key(&self, expires_at: i64) -> anyhow::Result<String> {
        self.issue(KeyKind::Client, None, "member", Some(expires_at))
            .await
    }

    /// Issues an agent key bound to `agent`.
    pub async fn agent_key(&self, agent: &str) -> anyhow::Result<String> {
        let record = self.store.ensure_agent(&self.state.org_id, agent).await?;
        self.issue(KeyKind::Agent, Some(record.id), "agent", None)
            .await
    }

    /// Revokes a key given in full.
    pub async fn revoke(&self, key: &str) -> anyhow::Result<()> {
        let kind = if key.starts_with("ak_") {
            KeyKind::Agent
        } else {
            KeyKind::Client
        };
        let id = auth::parse(key, kind, Environment::Live)?;
        self.store
            .revoke_key(&self.state.org_id, &id.0, auth::now_ms())
            .await?;
        Ok(())
    }

    async fn issue(
        &self,
        kind: KeyKind,
        agent_id: Option<String>,
        role: &str,
        expires_at: Option<i64>,
    ) -> anyhow::Result<String> {
        let key = issue_key(&self.store, &self.state, kind, agent_id, role, expires_at).await?;
        Ok(key.expose_secret().to_owned())
    }

    /// Usage recorded so far.
    pub async fn usage(&self) -> anyhow::Result<Vec<UsageEvent>> {
        Ok(self.store.usage_since(&self.state.org_id, 0).await?)
    }

    /// Waits until at least `count` usage events are stored, or fails after a while.
    pub async fn wait_for_usage(&self, count: usize) -> anyhow::Result<Vec<UsageEvent>> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let usage = self.usage().await?;
            if usage.len() >= count {
                return Ok(usage);
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("expected {count} usage events, found {}", usage.len());
            }
            // The writer flushes every 20 ms in tests; poll at that pace.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `head` (request line and headers, without the blank line) and `body` over
    /// a fresh TLS connection, exactly as given: no URL normalisation on the way; `Host:
    /// localhost` is added unless `head` has a `Host`. Returns the status and the raw
    /// response.
    pub async fn raw_request(&self, head: &str, body: &[u8]) -> anyhow::Result<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tls = tls_client_config(&self.state.certs);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        let name = rustls_pki_types::ServerName::try_from("localhost")?;
        let mut stream = connector.connect(name, tcp).await?;
        let host = if head.to_ascii_lowercase().contains("\r\nhost:") {
            String::new()
        } else {
            "\r\nHost: localhost".to_owned()
        };
        let request = format!(
            "{head}{host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        // A server may answer (431, 413) and close before it read everything: a failed
        // write is only an error if no answer arrives either.
        let written = async {
            stream.write_all(request.as_bytes()).await?;
            stream.write_all(body).await
        }
        .await;
        let mut response = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
            .await?;
        if response.is_empty() {
            written?;
            read?;
        }
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no status line in {text:?}"))?;
        Ok((status, text))
    }

    /// Opens a raw tunnel WebSocket, as an agent would, without the agent's protocol.
    pub async fn raw_tunnel(
        &self,
        key: Option<&str>,
    ) -> anyhow::Result<
        Result<
            tokio_tungstenite::WebSocketStream<
                tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
            >,
            tokio_tungstenite::tungstenite::Error,
        >,
    > {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let connector =
            tokio_rustls::TlsConnector::from(Arc::new(tls_client_config(&self.state.certs)));
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        let tls = connector
            .connect(rustls_pki_types::ServerName::try_from("localhost")?, tcp)
            .await?;
        let mut request = format!("{}/tunnel/v1", self.tunnel_url()).into_client_request()?;
        if let Some(key) = key {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {key}").parse()?);
        }
        Ok(tokio_tungstenite::client_async(request, tls)
            .await
            .map(|(socket, _)| socket))
    }

    /// An HTTP client that trusts the relay's test CA.
    pub fn http_client(&self) -> reqwest::Client {
        http_client(&self.state.certs)
    }

    /// A client for one server's MCP endpoint.
    pub fn mcp_client(&self, key: &str, agent: &str, server: &str) -> McpClient {
        McpClient::new(self.http_client(), self.mcp_url(agent, server), key)
    }

    /// Stops the relay (graceful) and waits for it.
    pub async fn stop(self) -> Arc<RelayState> {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.task).await;
        self.store.close().await;
        self.state
    }
}

/// A rustls client configuration trusting the CA of `certs`, TLS 1.3 only.
pub fn tls_client_config(certs: &Certs) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        rustls_pki_types::pem::PemObject::pem_file_iter(&certs.ca).expect("test CA readable")
    {
        roots
            .add(cert.expect("test CA parses"))
            .expect("test CA accepted");
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 is supported")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A reqwest client trusting the CA of `certs`, TLS 1.3 only.
pub fn http_client(certs: &Certs) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls_client_config(certs))
        .no_proxy()
        .build()
        .expect("reqwest client builds")
}

// === agent ===

/// Starts building an agent for `relay`.
pub fn agent(relay: &TestRelay, name: &str) -> AgentBuilder {
    AgentBuilder {
        relay_url: relay.tunnel_url(),
        ca: relay.state.certs.ca.clone(),
        store: relay.store.clone(),
        state: relay.state.clone(),
        name: name.to_owned(),
        servers: BTreeMap::new(),
        tunnel: TunnelSettings {
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_millis(500),
            shutdown_grace: Duration::from_secs(10),
            ..TunnelSettings::default()
        },
        health: None,
    }
}

/// Settings for a test agent.
pub struct AgentBuilder {
    relay_url: String,
    ca: PathBuf,
    store: SqliteStore,
    state: Arc<RelayState>,
    name: String,
    servers: BTreeMap<String, ServerConfig>,
    tunnel: TunnelSettings,
    health: Option<SocketAddr>,
}

/// A running agent.
pub struct TestAgent {
    /// Its status.
    pub status: watch::Receiver<Status>,
    /// Its key.
    pub key: String,
    /// Its health endpoint, if enabled.
    pub health: Option<SocketAddr>,
    /// Reloads its configuration.
    pub reload: ReloadHandle,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl AgentBuilder {
    /// Adds a stdio server.
    pub fn stdio(mut self, name: &str, command: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut vars: Vec<(String, SecretString)> = vec![(
            "PATH".into(),
            SecretString::from(std::env::var("PATH").unwrap_or_default()),
        )];
        vars.extend(
            env.iter()
                .map(|(k, v)| ((*k).to_owned(), SecretString::from((*v).to_owned()))),
        );
        // Values given here stand for `${env:}` references: secrets, PATH aside.
        let env_is_secret = vars.iter().map(|(k, _)| k != "PATH").collect();
        let reference_values = env
            .iter()
            .map(|(_, v)| SecretString::from((*v).to_owned()))
            .collect();
        self.servers.insert(
            name.to_owned(),
            ServerConfig {
                name: name.to_owned(),
                transport: Transport::Stdio(StdioConfig {
                    command: command.to_owned(),
                    args: args.iter().map(|a| (*a).to_owned()).collect(),
                    env: vars,
                    env_is_secret,
                    reference_values,
                    cwd: None,
                }),
                policy: ToolPolicy::default(),
            },
        );
        self
    }

    /// Sets the local policy of server `name` (added before).
    pub fn policy(mut self, name: &str, policy: ToolPolicy) -> Self {
        if let Some(server) = self.servers.get_mut(name) {
            server.policy = policy;
        }
        self
    }

    /// Serves the health endpoint on an ephemeral loopback port.
    pub fn health(mut self) -> Self {
        self.health = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        self
    }

    /// Adds `@modelcontextprotocol/server-everything` over stdio.
    pub fn server_everything(self, name: &str) -> Self {
        let (node, script) = server_everything();
        let script = script.to_string_lossy().into_owned();
        let node = node.to_string_lossy().into_owned();
        self.stdio(name, &node, &[&script, "stdio"], &[])
    }

    /// Adds the 2025-era conformance target `tests/conformance/server-2025.mjs` over stdio
    /// (its `test://watched-resource` sends an update right after a subscription).
    pub fn conformance_2025(self, name: &str) -> Self {
        let node = conformance::node22().to_string_lossy().into_owned();
        let script = workspace_root().join("tests/conformance/server-2025.mjs");
        let script = script.to_string_lossy().into_owned();
        self.stdio(name, &node, &[&script, "--stdio"], &[])
    }

    /// Adds a Streamable HTTP server.
    pub fn http(mut self, name: &str, url: &str) -> Self {
        self.servers.insert(
            name.to_owned(),
            ServerConfig {
                name: name.to_owned(),
                transport: Transport::Http(outpost_agent::config::HttpConfig {
                    url: url.parse().expect("test server URL parses"),
                    headers: Vec::new(),
                    reference_values: Vec::new(),
                    answer_stall_timeout: outpost_agent::config::DEFAULT_ANSWER_STALL_TIMEOUT,
                }),
                policy: ToolPolicy::default(),
            },
        );
        self
    }

    /// Sets the reconnect backoff bounds.
    pub fn reconnect(mut self, min: Duration, max: Duration) -> Self {
        self.tunnel.reconnect_min = min;
        self.tunnel.reconnect_max = max;
        self
    }

    /// Sets the drain grace period.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.tunnel.shutdown_grace = grace;
        self
    }

    /// Starts the agent and waits until its tunnel is registered.
    pub async fn spawn(self) -> anyhow::Result<TestAgent> {
        let record = self
            .store
            .ensure_agent(&self.state.org_id, &self.name)
            .await?;
        let key = issue_key(
            &self.store,
            &self.state,
            KeyKind::Agent,
            Some(record.id),
            "agent",
            None,
        )
        .await?;
        let config = AgentConfig {
            relay_url: self.relay_url.parse()?,
            key,
            ca_file: Some(self.ca),
            tunnel: self.tunnel,
            servers: self.servers,
            proxy: None,
            relay_pins: Vec::new(),
            health_listen: self.health,
        };
        let key = config.key.expose_secret().to_owned();
        let agent = Agent::new(config)?;
        let mut status = agent.status();
        let health = agent.health_addr();
        let reload = agent.reload_handle();
        let stop = CancellationToken::new();
        let task = tokio::spawn(agent.run(stop.clone()));
        let test_agent = TestAgent {
            status: status.clone(),
            key,
            health,
            reload,
            stop,
            task,
        };
        tokio::time::timeout(
            READY_TIMEOUT,
            status.wait_for(|s| matches!(s, Status::Connected { .. })),
        )
        .await
        .map_err(|_| anyhow::anyhow!("agent did not connect within {READY_TIMEOUT:?}"))??;
        Ok(test_agent)
    }
}

impl TestAgent {
    /// Waits until the agent reports `Connected` again (after a relay restart).
    pub async fn wait_connected(&mut self) -> anyhow::Result<()> {
        tokio::time::timeout(
            READY_TIMEOUT,
            self.status
                .wait_for(|s| matches!(s, Status::Connected { .. })),
        )
        .await
        .map_err(|_| anyhow::anyhow!("agent did not reconnect within {READY_TIMEOUT:?}"))??;
        Ok(())
    }

    /// Waits until the agent reports anything but `Connected`.
    pub async fn wait_disconnected(&mut self) -> anyhow::Result<()> {
        tokio::time::timeout(
            READY_TIMEOUT,
            self.status
                .wait_for(|s| !matches!(s, Status::Connected { .. })),
        )
        .await
        .map_err(|_| anyhow::anyhow!("agent stayed connected"))??;
        Ok(())
    }

    /// Begins a graceful stop (as SIGTERM does) without waiting for it.
    pub fn begin_stop(&self) {
        self.stop.cancel();
    }

    /// Stops gracefully and waits.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
    }

    /// Ends the agent at once, as a crash would: no drain, no close frame.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Issues a key straight into the relay's store, as `outpost-relay keys create` does.
async fn issue_key(
    store: &SqliteStore,
    state: &RelayState,
    kind: KeyKind,
    agent_id: Option<String>,
    role: &str,
    expires_at: Option<i64>,
) -> anyhow::Result<SecretString> {
    issue_key_full(
        store,
        state,
        &state.org_id,
        kind,
        agent_id,
        role,
        expires_at,
        Default::default(),
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn issue_key_full(
    store: &SqliteStore,
    state: &RelayState,
    org_id: &str,
    kind: KeyKind,
    agent_id: Option<String>,
    role: &str,
    expires_at: Option<i64>,
    scopes: outpost_relay::store::Scopes,
) -> anyhow::Result<SecretString> {
    let pepper_text = std::fs::read(&state.pepper_file)?;
    let pepper = Pepper::new(SecretBox::new(
        pepper_text.trim_ascii_end().to_vec().into_boxed_slice(),
    ))?;
    let key = auth::generate(kind, Environment::Live, &pepper);
    store
        .insert_key(NewKey {
            id: key.key_id.0.clone(),
            org_id: org_id.to_owned(),
            kind: kind.as_str(),
            environment: "live",
            name: format!("test {}", kind.as_str()),
            role: role.to_owned(),
            agent_id,
            hash: key.hash,
            expires_at,
            scopes,
            rate_per_second: None,
            burst: None,
            created_by: "cli".into(),
        })
        .await?;
    Ok(key.secret)
}

// === a whole stack ===

/// The usual end-to-end setup: a relay, the rmcp test server as server `rmcp` of agent
/// `laptop`, and a client key.
pub struct HttpStack {
    /// The rmcp server behind the agent.
    pub upstream: HttpMcpServer,
    /// The relay.
    pub relay: TestRelay,
    /// The agent.
    pub agent: TestAgent,
    /// A client key (member).
    pub key: String,
}

impl HttpStack {
    /// Starts the stack with this relay and a default agent.
    pub async fn start(relay: RelayBuilder) -> anyhow::Result<Self> {
        Self::start_with(relay, |agent| agent).await
    }

    /// Starts the stack, letting `configure` adjust the agent.
    pub async fn start_with(
        relay: RelayBuilder,
        configure: impl FnOnce(AgentBuilder) -> AgentBuilder,
    ) -> anyhow::Result<Self> {
        let upstream = HttpMcpServer::spawn("fortune").await?;
        let relay = relay.spawn().await?;
        let agent = configure(agent(&relay, "laptop").http("rmcp", &upstream.url))
            .spawn()
            .await?;
        let key = relay.client_key().await?;
        Ok(Self {
            upstream,
            relay,
            agent,
            key,
        })
    }

    /// A client of `/mcp/laptop/rmcp` with an initialized session.
    pub async fn client(&self) -> anyhow::Result<McpClient> {
        let mut client = self.relay.mcp_client(&self.key, "laptop", "rmcp");
        client.initialize().await?;
        Ok(client)
    }

    /// Stops agent, relay and server, in that order.
    pub async fn stop(self) {
        self.agent.stop().await;
        self.relay.stop().await;
        self.upstream.stop().await;
    }
}

// === installed tools ===

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-support lives in the workspace")
        .to_owned()
}

/// Where `scripts/setup-tools.sh` installs npm packages and the Python virtualenv.
pub fn tools_dir() -> PathBuf {
    std::env::var_os("MCP_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".tools"))
}

/// `node` and the server-everything script.
pub fn server_everything() -> (PathBuf, PathBuf) {
    let script =
        tools_dir().join("node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    assert!(
        script.exists(),
        "{} is missing: run scripts/setup-tools.sh (the README's test command does)",
        script.display()
    );
    (find_program("node"), script)
}

/// The virtualenv's Python, with the `mcp` SDK installed.
pub fn python() -> PathBuf {
    let python = tools_dir().join("venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup-tools.sh (the README's test command does)",
        python.display()
    );
    python
}

/// A built binary of this workspace (`outpost-relay`, `outpost-agent`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/test-xxxx → target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo build --workspace --bins`; the README's test command does)",
        path.display()
    );
    path
}

/// An absolute path for a program on PATH.
pub fn find_program(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{name} is not on PATH"))
}

/// How long an agent may take to connect in tests.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
