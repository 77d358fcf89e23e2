//! One tunnel session, from hello to close: sends the hello, reads the welcome or reject,
//! runs the multiplexer, serves each opened stream with its upstream, and on shutdown
//! drains: tells the relay, finishes in-flight calls within the grace period, then closes.

use futures_util::{SinkExt, StreamExt};
use outpost_protocol::{
    AgentFrame, CloseCode, Frame, Hello, PROTOCOL_VERSION, RejectCode, RelayFrame,
    ServerAnnouncement, Welcome,
};
use outpost_tunnel::{Tunnel, TunnelConfig, TunnelEvent, TunnelExit};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::dial::{self, DialError, TunnelSocket};
use crate::metrics::Denial;
use crate::upstream::{self, InFlight, UpstreamContext};
use crate::{AgentInner, Status, policy};

/// How a session ended.
#[derive(Debug)]
pub(crate) enum SessionEnd {
    /// The agent was asked to stop and has drained.
    Shutdown,
    /// The tunnel ended after being up for a while; reconnect.
    Lost {
        /// Why it ended.
        exit: TunnelExit,
        /// How long it was up, to decide whether the backoff starts over.
        up_for: std::time::Duration,
    },
}

/// Why a session could not be established.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error(transparent)]
    Dial(#[from] DialError),
    #[error("the relay rejected the hello ({code:?}): {message}")]
    Rejected { code: RejectCode, message: String },
    #[error("handshake failed: {0}")]
    Handshake(String),
}

/// Dials, handshakes and serves one tunnel until it ends or `shutdown` fires.
pub(crate) async fn run(
    agent: &AgentInner,
    shutdown: &CancellationToken,
) -> Result<SessionEnd, SessionError> {
    let config = agent.config();
    let mut socket = tokio::select! {
        socket = dial::dial(&config, agent.tls()) => socket?,
        _ = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
    };
    let welcome =
        tokio::time::timeout(config.tunnel.connect_timeout, handshake(agent, &mut socket))
            .await
            .map_err(|_| SessionError::Handshake("no welcome in time".into()))??;
    let limits = welcome.limits;
    let tunnel_config = TunnelConfig {
        heartbeat_interval: std::time::Duration::from_millis(u64::from(
            welcome.heartbeat_interval_ms.max(100),
        )),
        chunk_len: CHUNK_LEN
            .min((limits.max_frame_len as usize).saturating_sub(FRAME_HEADER))
            .max(1),
        max_message_len: limits.max_message_len as usize,
        initial_window: limits.initial_window,
        peer_chunk_len: limits.max_frame_len as usize,
        max_streams: (limits.max_streams as usize).min(config.tunnel.max_streams),
    };
    let session_token = CancellationToken::new();
    let (tunnel, mut events, driver) =
        Tunnel::<AgentFrame>::start::<_, RelayFrame>(socket, tunnel_config, session_token.clone());
    tracing::info!(agent = %welcome.agent_name, agent_id = %welcome.agent_id, "tunnel established");
    agent.status.send_replace(Status::Connected {
        agent_name: welcome.agent_name.clone(),
    });
    agent.metrics().tunnel_up.set(1);
    let connected_at = tokio::time::Instant::now();

    let in_flight = InFlight::new();
    let streams = TaskTracker::new();
    let context = UpstreamContext {
        in_flight: in_flight.clone(),
        http: agent.http.clone(),
        max_message_len: tunnel_config.max_message_len,
        cancel: session_token.clone(),
        metrics: agent.metrics_arc(),
        redactor: agent.redactor(),
        shared: std::sync::Arc::new(upstream::SharedProcesses::new(streams.clone())),
    };
    let mut draining = false;
    let mut drained = false;
    let drain = drain(&in_flight, config.tunnel.shutdown_grace);
    tokio::pin!(driver, drain);
    let end = loop {
        tokio::select! {
            exit = &mut driver => {
                break if draining {
                    SessionEnd::Shutdown
                } else {
                    SessionEnd::Lost { exit, up_for: connected_at.elapsed() }
                };
            }
            Some(event) = events.recv() => match event {
                TunnelEvent::Open { stream, server, meta } => {
                    // This loop also drives the tunnel: it must not wait on the tunnel here.
                    // The configuration in force now (it may have been reloaded) decides.
                    let current = agent.config();
                    let runtime = agent.server(&server);
                    let (Some(_), Some(runtime)) = (current.servers.get(&server), runtime) else {
                        stream.sender.close_now(CloseCode::UnknownServer, format!("no server named {server:?}"));
                        continue;
                    };
                    if draining {
                        stream.sender.close_now(CloseCode::ShuttingDown, "the agent is shutting down");
                        continue;
                    }
                    let place = match runtime.open_session() {
                        Ok(place) => place,
                        Err(max) => {
                            agent.metrics().denied(&server, Denial::Sessions);
                            tracing::warn!(server = %server, max, "session refused: the server has max_sessions open");
                            stream.sender.close_now(
                                CloseCode::Overloaded,
                                format!("server {server:?} has its max_sessions ({max}) open"),
                            );
                            continue;
                        }
                    };
                    agent.metrics().sessions_open(&server, runtime.open_sessions());
                    let metrics = agent.metrics_arc();
                    let span = tracing::info_span!("stream", server = %server, stream = %stream.id);
                    let mut context = context.clone();
                    // Secrets of the configuration the upstream starts with.
                    context.redactor = agent.redactor();
                    streams.spawn(async move {
                        if let Some(server_config) = current.servers.get(&server) {
                            upstream::serve(server_config, runtime.clone(), stream, meta, context).await;
                        }
                        drop(place);
                        metrics.sessions_open(&server, runtime.open_sessions());
                    }.instrument(span));
                }
                other => tracing::warn!(?other, "unexpected event from the relay ignored"),
            },
            _ = agent.announce.notified(), if !draining => {
                let servers = announcements(&agent.config());
                tracing::info!(servers = servers.len(), "announcing the reloaded server list");
                let _ = tunnel.send_control(AgentFrame::Servers(servers));
            }
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                agent.status.send_replace(Status::Draining);
                tracing::info!(in_flight = in_flight.get(), "draining: finishing in-flight calls");
                let _ = tunnel.send_control(AgentFrame::Draining);
            }
            _ = &mut drain, if draining && !drained => {
                drained = true;
                tracing::info!(unfinished = in_flight.get(), "drained; closing the tunnel");
                tunnel.close();
            }
        }
    };
    session_token.cancel();
    streams.close();
    if tokio::time::timeout(STREAM_STOP_GRACE, streams.wait())
        .await
        .is_err()
    {
        tracing::warn!("some upstreams did not stop in time");
    }
    agent.status.send_replace(Status::Disconnected);
    agent.metrics().tunnel_up.set(0);
    Ok(end)
}

/// Sends the hello and reads the welcome.
async fn handshake(agent: &AgentInner, socket: &mut TunnelSocket) -> Result<Welcome, SessionError> {
    let hello = AgentFrame::Hello(Hello {
        version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        servers: announcements(&agent.config()),
    });
    socket
        .send(Message::Binary(hello.to_bytes()))
        .await
        .map_err(|e| SessionError::Handshake(e.to_string()))?;
    loop {
        match socket.next().await {
            Some(Ok(Message::Binary(bytes))) => {
                return match RelayFrame::decode_message(bytes) {
                    Ok(RelayFrame::Welcome(welcome)) => Ok(welcome),
                    Ok(RelayFrame::Reject(reject)) => Err(SessionError::Rejected {
                        code: reject.code,
                        message: reject.message,
                    }),
                    Ok(_) => Err(SessionError::Handshake("expected a welcome".into())),
                    Err(err) => Err(SessionError::Handshake(format!("invalid welcome: {err}"))),
                };
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(frame))) => {
                return Err(SessionError::Handshake(format!(
                    "the relay closed the connection: {}",
                    frame.map(|f| f.reason.to_string()).unwrap_or_default()
                )));
            }
            Some(Ok(_)) => return Err(SessionError::Handshake("expected a binary welcome".into())),
            Some(Err(err)) => return Err(SessionError::Handshake(err.to_string())),
            None => {
                return Err(SessionError::Handshake(
                    "connection closed before the welcome".into(),
                ));
            }
        }
    }
}

/// The servers of `config`, as the hello and a reload announce them.
fn announcements(config: &crate::config::Config) -> Vec<ServerAnnouncement> {
    config
        .servers
        .values()
        .map(|server| ServerAnnouncement {
            name: server.name.clone(),
            policy_digest: policy::digest(server),
        })
        .collect()
}

/// Resolves when no call is in flight or the grace period is over. Only polled once
/// draining has begun.
async fn drain(in_flight: &InFlight, grace: std::time::Duration) {
    let _ = tokio::time::timeout(grace, in_flight.idle()).await;
}

/// How long upstreams get to stop (children reaped, HTTP sessions deleted) after a session.
const STREAM_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);
/// Largest payload per data frame the agent sends.
const CHUNK_LEN: usize = 64 * 1024;
/// Bytes of a data frame that are not payload (length, type, stream, flags), rounded up.
const FRAME_HEADER: usize = 16;
