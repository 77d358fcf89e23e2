//! Accepts agent tunnels: authenticates the upgrade request by agent key, upgrades to a
//! WebSocket inside the connection's own task, exchanges hello and welcome under a
//! timeout, and runs the agent's session until the tunnel ends. Owns one task per agent
//! session; does not parse MCP (see `router.rs`).

mod registry;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use hyper_util::rt::TokioIo;
use outpost_protocol::{
    AgentFrame, AgentId, Frame, Hello, Limits, PROTOCOL_VERSION, Reject, RejectCode, RelayFrame,
    ServerAnnouncement, Welcome,
};
use outpost_tunnel::{Tunnel, TunnelConfig, TunnelEvent};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tracing::Instrument;

pub(crate) use registry::{AgentHandle, AgentRegistry};

use crate::App;
use crate::auth::{self, KeyKind, now_ms};
use crate::error::{CorrelationId, RelayError};
use crate::store::AgentRecord;

/// `GET /tunnel/v1`: an agent's WebSocket upgrade.
pub(crate) async fn accept(State(app): State<Arc<App>>, mut request: Request) -> Response {
    let correlation = CorrelationId::new();
    if !is_websocket_upgrade(request.headers()) {
        return (
            StatusCode::UPGRADE_REQUIRED,
            [(header::UPGRADE, "websocket")],
            "this endpoint takes a WebSocket upgrade from an outpost-agent\n",
        )
            .into_response();
    }
    let (agent, key_id) = match authenticate(&app, request.headers()).await {
        Ok(found) => found,
        Err((error, detail)) => {
            error.log(&correlation, &detail);
            if matches!(error, RelayError::Unauthorized) {
                let (headers, extensions) = (request.headers(), request.extensions());
                app.auditor.record(crate::audit::AuditEvent {
                    actor: "agent".into(),
                    action: "agent.rejected",
                    resource: "tunnel".into(),
                    source: extensions
                        .get::<crate::admin::PeerAddr>()
                        .map(|peer| peer.0.ip().to_string()),
                    user_agent: headers
                        .get(header::USER_AGENT)
                        .and_then(|v| v.to_str().ok())
                        .map(|ua| ua.chars().take(256).collect()),
                    correlation_id: Some(correlation.0.clone()),
                    detail: serde_json::json!({ "reason": "key refused" }),
                    ..crate::audit::AuditEvent::default()
                });
                if let Some(delay) = app.note_auth_failure(headers, extensions, &correlation) {
                    tokio::time::sleep(delay).await;
                    return RelayError::TooManyFailures.into_http(&correlation);
                }
            }
            return error.into_http(&correlation);
        }
    };
    let Some(accept_key) = request
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|key| derive_accept_key(key.as_bytes()))
    else {
        return (StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n").into_response();
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    let span = tracing::info_span!("agent", agent = %agent.name, agent_id = %agent.id);
    let session_app = app.clone();
    app.tasks.spawn(
        async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let config = websocket_config(&session_app);
                    let socket = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        Some(config),
                    )
                    .await;
                    run_session(session_app, agent, key_id, socket).await;
                }
                Err(err) => tracing::warn!(%err, "tunnel upgrade failed"),
            }
        }
        .instrument(span),
    );
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(value) = HeaderValue::from_str(&accept_key) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    response
}

/// Runs one agent's tunnel from hello to close.
async fn run_session<S>(
    app: Arc<App>,
    agent: AgentRecord,
    key_id: auth::KeyId,
    mut socket: WebSocketStream<S>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let hello = match tokio::time::timeout(app.config.tunnel.hello_timeout, read_hello(&mut socket))
        .await
    {
        Ok(Ok(hello)) => hello,
        Ok(Err(reason)) if reason == CLOSED_BEFORE_HELLO => {
            // What `outpost-agent check` does after its key was accepted: not a fault.
            tracing::info!("agent closed the tunnel before its hello (a connectivity check?)");
            return;
        }
        Ok(Err(reason)) => {
            tracing::warn!(%reason, "agent hello refused");
            reject(&mut socket, RejectCode::InvalidHello, &reason).await;
            return;
        }
        Err(_) => {
            tracing::warn!("agent sent no hello in time");
            reject(&mut socket, RejectCode::InvalidHello, "no hello in time").await;
            return;
        }
    };
    if hello.version != PROTOCOL_VERSION {
        let reason = format!(
            "protocol version {} is not supported; this relay speaks version {}",
            hello.version.0, PROTOCOL_VERSION.0
        );
        tracing::warn!(%reason, "agent hello refused");
        reject(&mut socket, RejectCode::UnsupportedVersion, &reason).await;
        return;
    }
    let servers = match validate_servers(&hello) {
        Ok(servers) => servers,
        Err(reason) => {
            tracing::warn!(%reason, "agent hello refused");
            reject(&mut socket, RejectCode::InvalidHello, &reason).await;
            return;
        }
    };
    let settings = &app.config.tunnel;
    let limits = Limits {
        max_frame_len: max_frame_len(&app),
        max_message_len: u32::try_from(app.config.limits.max_message_bytes).unwrap_or(u32::MAX),
        initial_window: settings.initial_window,
        max_streams: u32::try_from(app.config.limits.max_streams_per_agent).unwrap_or(u32::MAX),
    };
    let welcome = RelayFrame::Welcome(Welcome {
        agent_id: AgentId(agent.id.clone()),
        agent_name: agent.name.clone(),
        heartbeat_interval_ms: u32::try_from(settings.heartbeat_interval.as_millis())
            .unwrap_or(u32::MAX),
        limits,
    });
    let config = TunnelConfig {
        heartbeat_interval: settings.heartbeat_interval,
        chunk_len: settings.chunk_bytes as usize,
        max_message_len: app.config.limits.max_message_bytes,
        initial_window: settings.initial_window,
        peer_chunk_len: max_frame_len(&app) as usize,
        max_streams: app.config.limits.max_streams_per_agent,
    };
    let (tunnel, mut events, driver) =
        Tunnel::<RelayFrame>::start::<_, AgentFrame>(socket, config, app.close.child_token());
    let handle = app.agents.register(AgentHandle::new(
        agent.id.clone(),
        agent.org_id.clone(),
        agent.name.clone(),
        key_id.0.clone(),
        servers,
        tunnel,
    ));
    // The welcome goes out only once the agent is routable, so an agent that has been
    // welcomed can be called at once.
    if handle.tunnel.send_control(welcome).is_err() {
        app.agents.remove(&handle);
        tracing::warn!("tunnel closed before the welcome");
        return;
    }
    app.auditor.record(crate::audit::AuditEvent {
        org_id: Some(agent.org_id.clone()),
        actor: key_id.0.clone(),
        action: "agent.connected",
        resource: agent.name.clone(),
        detail: serde_json::json!({
            "agent_version": hello.agent_version,
            "servers": handle.servers().as_ref(),
        }),
        ..crate::audit::AuditEvent::default()
    });
    if let Err(err) = app.store.touch_agent(&agent.id, now_ms()).await {
        tracing::warn!(%err, "could not record the agent's connection time");
    }
    tracing::info!(
        agent_version = %hello.agent_version,
        servers = ?handle.servers(),
        agents_connected = app.agents.len(),
        "agent connected"
    );
    tokio::pin!(driver);
    // The key was checked at the upgrade; a revocation or expiry since then closes the
    // tunnel within one heartbeat interval. In a task of its own, so that a slow store
    // never holds up the loop that drives the tunnel.
    app.tasks.spawn(
        recheck_key(app.clone(), key_id.clone(), handle.tunnel.clone())
            .instrument(tracing::Span::current()),
    );
    let exit = loop {
        tokio::select! {
            exit = &mut driver => break exit,

            Some(event) = events.recv() => match event {
                TunnelEvent::Control(AgentFrame::Draining) => {
                    tracing::info!("agent is draining: no new sessions go to it");
                    handle.draining.store(true, Ordering::Relaxed);
                }
                TunnelEvent::Control(AgentFrame::Servers(servers)) => {
                    match validate_server_list(&servers) {
                        Ok(names) => {
                            tracing::info!(servers = ?names, "agent announced a new server list");
                            handle.set_servers(names);
                            app.agents.changed();
                        }
                        // A bad list keeps the old one; the tunnel itself is fine.
                        Err(reason) => tracing::warn!(%reason, "agent server list refused"),
                    }
                }
                other => tracing::warn!(?other, "unexpected frame from agent ignored"),
            },
        }
    };
    app.agents.remove(&handle);
    app.auditor.record(crate::audit::AuditEvent {
        org_id: Some(agent.org_id.clone()),
        actor: key_id.0.clone(),
        action: "agent.disconnected",
        resource: agent.name.clone(),
        detail: serde_json::json!({ "reason": exit.to_string() }),
        ..crate::audit::AuditEvent::default()
    });
    tracing::info!(%exit, "agent disconnected");
}

async fn read_hello<S>(socket: &mut WebSocketStream<S>) -> Result<Hello, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match socket.next().await {
            Some(Ok(Message::Binary(bytes))) => {
                return match AgentFrame::decode_message(bytes) {
                    Ok(AgentFrame::Hello(hello)) => Ok(hello),
                    Ok(_) => Err("the first frame must be a hello".into()),
                    Err(err) => Err(format!("invalid hello: {err}")),
                };
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(_))) | None => return Err(CLOSED_BEFORE_HELLO.into()),
            Some(Ok(_)) => return Err("the first frame must be a binary hello".into()),
            Some(Err(err)) => return Err(format!("connection failed: {err}")),
        }
    }
}

const CLOSED_BEFORE_HELLO: &str = "connection closed before the hello";

fn validate_servers(hello: &Hello) -> Result<Vec<String>, String> {
    validate_server_list(&hello.servers)
}

fn validate_server_list(servers: &[ServerAnnouncement]) -> Result<Vec<String>, String> {
    if servers.len() > MAX_SERVERS {
        return Err(format!("at most {MAX_SERVERS} servers per agent"));
    }
    let mut seen = HashSet::new();
    for server in servers {
        if !crate::is_valid_name(&server.name) {
            return Err(format!(
                "server name {:?} is not [a-z0-9_-]{{1,64}}",
                server.name
            ));
        }
        if !seen.insert(server.name.as_str()) {
            return Err(format!("server name {:?} appears twice", server.name));
        }
    }
    Ok(servers.iter().map(|s| s.name.clone()).collect())
}

async fn reject<S>(socket: &mut WebSocketStream<S>, code: RejectCode, message: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let frame = RelayFrame::Reject(Reject {
        code,
        message: message.to_owned(),
    });
    let _ = socket.send(Message::Binary(frame.to_bytes())).await;
    let _ = socket.close(None).await;
}

/// Closes `tunnel` once its agent key is revoked or expired; ends with the tunnel.
async fn recheck_key(app: Arc<App>, key_id: auth::KeyId, tunnel: Tunnel<RelayFrame>) {
    let mut every = tokio::time::interval(app.config.tunnel.heartbeat_interval);
    every.reset();
    loop {
        tokio::select! {
            _ = tunnel.closed() => return,
            _ = every.tick() => {
                if !key_still_valid(&app, &key_id).await {
                    tracing::warn!(key = %key_id, "the agent's key was revoked or expired: closing its tunnel");
                    tunnel.close();
                    return;
                }
            }
        }
    }
}

/// Whether the agent key is still neither revoked nor expired. A store that cannot answer
/// keeps the tunnel: an outage of the store must not take every agent offline.
async fn key_still_valid(app: &App, key_id: &auth::KeyId) -> bool {
    match app.store.key_by_id(&key_id.0).await {
        Ok(Some(key)) => key.revoked_at.is_none() && key.expires_at.is_none_or(|at| at > now_ms()),
        Ok(None) => false,
        Err(err) => {
            tracing::warn!(%err, "cannot recheck the agent's key");
            true
        }
    }
}

/// The agent an upgrade request's key names. A refused key is `Unauthorized`; a store
/// that cannot answer is `Internal`, so an outage is not reported as a bad key.
async fn authenticate(
    app: &App,
    headers: &HeaderMap,
) -> Result<(AgentRecord, auth::KeyId), (RelayError, String)> {
    let refused = |detail: String| (RelayError::Unauthorized, detail);
    let key =
        auth::bearer(headers.get(header::AUTHORIZATION)).map_err(|e| refused(e.to_string()))?;
    let principal = auth::authenticate(
        app.store.as_ref(),
        &app.pepper,
        app.config.environment,
        KeyKind::Agent,
        key,
    )
    .await
    .map_err(|e| match e {
        auth::AuthError::Store(err) => (RelayError::Internal, err.to_string()),
        other => refused(other.to_string()),
    })?;
    let agent_id = principal
        .agent_id
        .ok_or_else(|| refused(format!("key {} is bound to no agent", principal.key_id)))?;
    let agent = app
        .store
        .agent_by_id(&agent_id)
        .await
        .map_err(|e| (RelayError::Internal, e.to_string()))?
        .ok_or_else(|| {
            refused(format!(
                "agent {agent_id} of key {} not found",
                principal.key_id
            ))
        })?;
    Ok((agent, principal.key_id))
}

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value
                .to_str()
                .map(|v| {
                    v.split(',')
                        .any(|part| part.trim().eq_ignore_ascii_case(token))
                })
                .unwrap_or(false)
        })
    };
    has(header::CONNECTION, "upgrade")
        && has(header::UPGRADE, "websocket")
        && headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v == "13")
}

fn max_frame_len(app: &App) -> u32 {
    app.config.tunnel.chunk_bytes + FRAME_OVERHEAD
}

fn websocket_config(app: &App) -> WebSocketConfig {
    let max = max_frame_len(app) as usize;
    WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
        .read_buffer_size(READ_BUFFER)
}

/// Room for a frame's header and its largest string fields beyond the data payload.
const FRAME_OVERHEAD: u32 = 64 * 1024 + 64;
/// Servers one agent may announce.
const MAX_SERVERS: usize = 256;
/// tungstenite's read buffer: small, because idle tunnels are the common case, and because
/// tungstenite zero-fills this much before every read of the socket (6% of the relay's
/// instructions per call at 8 KiB; see docs/benchmarks.md).
const READ_BUFFER: usize = 4 * 1024;
