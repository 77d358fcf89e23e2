//! A fleet of idle agents for workloads (d) and (e), held by this process: each one dials
//! the relay from one of several loopback source addresses (127.0.0.2 and up), completes
//! TLS 1.3 and the WebSocket upgrade with its own agent key, sends the hello, waits for the
//! welcome, then stays idle, answering pings and pinging on the relay's heartbeat as the real
//! agent does. When its tunnel drops it reconnects with the agent's backoff (equal jitter,
//! 0.5 s doubling to 30 s). Keys go straight into the relay's store, as `keys create` does.
//! Does not serve MCP.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use outpost_protocol::{
    AgentFrame, Frame, Hello, PROTOCOL_VERSION, RelayFrame, ServerAnnouncement,
};
use outpost_relay::auth::{self, Environment, KeyKind, Pepper};
use outpost_relay::store::{NewKey, SqliteStore, Store};
use secrecy::{ExposeSecret, SecretBox};
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

/// Issues `count` agent keys (agents `fleet-0` ...) into the store under `data_dir`.
pub(crate) async fn issue_keys(data_dir: &Path, count: usize) -> anyhow::Result<Vec<String>> {
    let store = SqliteStore::open(&data_dir.join(outpost_relay::config::DATABASE_FILE)).await?;
    let org = store
        .organisation_by_name("default")
        .await?
        .context("organisation default")?;
    let pepper_text = std::fs::read(data_dir.join(outpost_relay::config::PEPPER_FILE))?;
    let pepper = Pepper::new(SecretBox::new(
        pepper_text.trim_ascii_end().to_vec().into_boxed_slice(),
    ))?;
    let mut keys = Vec::with_capacity(count);
    for i in 0..count {
        let agent = store.ensure_agent(&org.id, &format!("fleet-{i}")).await?;
        let key = auth::generate(KeyKind::Agent, Environment::Live, &pepper);
        store
            .insert_key(NewKey {
                id: key.key_id.0.clone(),
                org_id: org.id.clone(),
                kind: KeyKind::Agent.as_str(),
                environment: "live",
                name: format!("fleet agent {i}"),
                role: "agent".into(),
                agent_id: Some(agent.id),
                hash: key.hash,
                expires_at: None,
                scopes: Default::default(),
                rate_per_second: None,
                burst: None,
                created_by: "cli".into(),
            })
            .await?;
        keys.push(key.secret.expose_secret().to_owned());
    }
    store.close().await;
    Ok(keys)
}

/// The fleet's agents, running until dropped or stopped.
pub(crate) struct Fleet {
    /// Agents whose tunnel is welcomed now.
    connected: Arc<AtomicUsize>,
    /// When each welcome arrived, for accept rates.
    welcomes: Arc<Mutex<Vec<Instant>>>,
    stop: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
}

impl Fleet {
    /// Starts one agent per key against the relay at `relay`, trusting `ca`. At most
    /// `dialing` of them are between TCP connect and welcome at once.
    pub(crate) fn start(
        relay: SocketAddr,
        ca: &Path,
        keys: &[String],
        dialing: usize,
    ) -> anyhow::Result<Self> {
        let mut tls = crate::client::tls_client_config(ca)?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let connected = Arc::new(AtomicUsize::new(0));
        let welcomes = Arc::new(Mutex::new(Vec::with_capacity(keys.len())));
        let stop = CancellationToken::new();
        let permits = Arc::new(Semaphore::new(dialing));
        let mut tasks = tokio::task::JoinSet::new();
        for (i, key) in keys.iter().enumerate() {
            let agent = FakeAgent {
                relay,
                source: source_address(i),
                key: key.clone(),
                connector: connector.clone(),
                connected: connected.clone(),
                welcomes: welcomes.clone(),
                permits: permits.clone(),
            };
            tasks.spawn(agent.run(stop.clone()));
        }
        Ok(Self {
            connected,
            welcomes,
            stop,
            tasks,
        })
    }

    /// Agents connected now.
    pub(crate) fn connected(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }

    /// Waits until `count` agents are connected, or fails after `limit`.
    pub(crate) async fn wait_connected(
        &self,
        count: usize,
        limit: Duration,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        while self.connected() < count {
            anyhow::ensure!(
                started.elapsed() < limit,
                "only {} of {count} agents connected after {limit:?}",
                self.connected()
            );
            tokio::time::sleep(POLL).await;
        }
        Ok(started.elapsed())
    }

    /// Waits until no agent is connected, or fails after `limit`.
    pub(crate) async fn wait_all_dropped(&self, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        while self.connected() > 0 {
            anyhow::ensure!(
                started.elapsed() < limit,
                "{} agents still connected",
                self.connected()
            );
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }

    /// Welcome times since `since`.
    pub(crate) fn welcomes_since(&self, since: Instant) -> Vec<Instant> {
        self.welcomes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .filter(|t| *t >= since)
            .collect()
    }

    /// Closes every tunnel and waits for the agents to end.
    pub(crate) async fn stop(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

struct FakeAgent {
    relay: SocketAddr,
    source: IpAddr,
    key: String,
    connector: tokio_rustls::TlsConnector,
    connected: Arc<AtomicUsize>,
    welcomes: Arc<Mutex<Vec<Instant>>>,
    permits: Arc<Semaphore>,
}

impl FakeAgent {
    async fn run(self, stop: CancellationToken) {
        let mut step = RECONNECT_MIN;
        loop {
            let dialed = {
                let Ok(_permit) = self.permits.acquire().await else {
                    return;
                };
                tokio::select! {
                    _ = stop.cancelled() => return,
                    dialed = tokio::time::timeout(DIAL_TIMEOUT, self.dial()) => dialed,
                }
            };
            if let Ok(Ok((mut socket, heartbeat))) = dialed {
                step = RECONNECT_MIN;
                self.connected.fetch_add(1, Ordering::Relaxed);
                self.welcomes
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(Instant::now());
                let mut ping = tokio::time::interval(heartbeat);
                ping.reset();
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => {
                            let _ = socket.close(None).await;
                            self.connected.fetch_sub(1, Ordering::Relaxed);
                            return;
                        }
                        message = socket.next() => match message {
                            Some(Ok(_)) => {}
                            _ => break,
                        },
                        _ = ping.tick() => {
                            if socket.send(Message::Ping(Default::default())).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                self.connected.fetch_sub(1, Ordering::Relaxed);
            }
            // The agent's backoff: a delay between half and all of a doubling step.
            let half = step / 2;
            let jitter = Duration::from_nanos(random() % (half.as_nanos() as u64 + 1));
            step = (step * 2).min(RECONNECT_MAX);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(half + jitter) => {}
            }
        }
    }

    async fn dial(
        &self,
    ) -> anyhow::Result<(
        tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
        Duration,
    )> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(self.source, 0))?;
        let tcp = socket.connect(self.relay).await?;
        tcp.set_nodelay(true)?;
        let name = rustls_pki_types::ServerName::try_from("localhost")?;
        let tls = self.connector.connect(name, tcp).await?;
        let mut request =
            format!("wss://localhost:{}/tunnel/v1", self.relay.port()).into_client_request()?;
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {}", self.key).parse()?);
        // A small read buffer: the load process holds thousands of these.
        let config = WebSocketConfig::default().read_buffer_size(4096);
        let (mut socket, _) =
            tokio_tungstenite::client_async_with_config(request, tls, Some(config)).await?;
        let hello = AgentFrame::Hello(Hello {
            version: PROTOCOL_VERSION,
            agent_version: "bench".into(),
            servers: vec![ServerAnnouncement {
                name: "idle".into(),
                policy_digest: String::new(),
            }],
        });
        socket.send(Message::Binary(hello.to_bytes())).await?;
        loop {
            match socket.next().await {
                Some(Ok(Message::Binary(bytes))) => {
                    return match RelayFrame::decode_message(bytes)? {
                        RelayFrame::Welcome(welcome) => Ok((
                            socket,
                            Duration::from_millis(u64::from(
                                welcome.heartbeat_interval_ms.max(100),
                            )),
                        )),
                        other => anyhow::bail!("no welcome: {other:?}"),
                    };
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => return Err(err.into()),
                None => anyhow::bail!("closed before the welcome"),
            }
        }
    }
}

/// Raises this process's open-file limit (inherited by the relay it starts next) to
/// `wanted`, as far as the kernel allows.
pub(crate) fn raise_open_files(wanted: u64) -> anyhow::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= wanted {
        return Ok(soft);
    }
    // Root may raise the hard limit too; otherwise stay under it.
    if setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted.max(hard)).is_ok() {
        return Ok(wanted);
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}

/// Agent `i` dials from 127.0.0.(2 + i mod SOURCES), so 10k tunnels stay far from the
/// ephemeral-port limit of one source address.
fn source_address(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % SOURCES) as u8))
}

/// Jitter, not security: xorshift on a per-thread seed.
fn random() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64 | 1),
        );
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        x
    })
}

const SOURCES: usize = 16;
const RECONNECT_MIN: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(30);
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(10);
