//! A client of the stateful 2025 era on an upstream of the stateless 2026 era. When the
//! upstream refuses `initialize`, the relay asks it `server/discover`; if that names
//! 2026-07-28 among its versions, the relay from then on serves the client's session
//! itself: each request goes upstream as a
//! stateless request (its own one-shot stream, the `_meta` envelope built from the
//! client's `initialize`, the `Mcp-Method`/`Mcp-Name` headers), and a Multi Round-Trip
//! Request's input requests (`InputRequiredResult`) become ordinary requests to the client
//! (sampling, elicitation, roots), whose answers go back as `inputResponses`.
//! `resources/subscribe` is served with a `subscriptions/listen` upstream whose resource
//! updates reach the client as server-initiated messages (the GET stream).
//!
//! Owns the bridged sessions; the session id, its key and its expiry stay with the
//! [`ClientSession`] the client initialized (`router.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::App;
use crate::error::{CorrelationId, RelayError};
use crate::jsonrpc::{self, Kind};
use crate::mcp_endpoint as endpoint;
use crate::router::{ClientSession, OneShot, relay_request_id};

/// The stateless revision the relay speaks to upstreams it bridges.
const MODERN: &str = "2026-07-28";
const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
const META_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
const META_LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";
const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
/// Input rounds one request may take before the relay gives up on it.
const MAX_ROUNDS: usize = 8;
/// How long `server/discover` may take when a session is bridged.
const DISCOVER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);
/// How long a `resources/subscribe` waits for the upstream listen's acknowledgement.
const LISTEN_ACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The least time between two upstream listens of one session, when the upstream ends one.
const RELISTEN_SPACING: std::time::Duration = std::time::Duration::from_secs(1);
/// The 2026 era's request for change notifications.
const LISTEN: &str = endpoint::LISTEN_METHOD;
/// Messages buffered for one POST's response.
const CHANNEL_DEPTH: usize = 64;

/// Bridged sessions, by session id.
#[derive(Debug, Default)]
pub(crate) struct Bridges {
    sessions: Mutex<HashMap<String, Arc<Bridge>>>,
}

/// One bridged session.
#[derive(Debug)]
pub(crate) struct Bridge {
    /// The session the client initialized: its id, key, agent and server.
    anchor: Arc<ClientSession>,
    /// The client's `initialize` params: its capabilities and info go in every request.
    init: Value,
    /// The level the client set with `logging/setLevel`, sent as `_meta` from then on.
    log_level: Mutex<Option<Value>>,
    /// Relay-chosen id of an input request sent to the client -> where its answer goes.
    awaiting: Mutex<HashMap<String, oneshot::Sender<Value>>>,
    /// Client request id -> what stops its upstream request, for cancellation.
    in_flight: Mutex<HashMap<String, CancellationToken>>,
    /// URIs the client subscribed to with `resources/subscribe`.
    subscriptions: Mutex<Vec<String>>,
    /// Ends the upstream `subscriptions/listen` that carries their updates (when dropped:
    /// replaced by the next one, or with the bridge).
    listen: Mutex<Option<tokio_util::sync::DropGuard>>,
}

impl Bridges {
    /// The bridge of session `id`, if it is bridged.
    pub(crate) fn get(&self, id: &str) -> Option<Arc<Bridge>> {
        self.lock().get(id).cloned()
    }

    /// Forgets session `id` (deleted or expired).
    pub(crate) fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Drops bridges whose session has ended.
    pub(crate) fn sweep(&self) {
        self.lock().retain(|_, bridge| !bridge.anchor.is_closed());
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Bridge>>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Called with the upstream's answers to a new session's `initialize`. When the upstream
/// refused it, asks it `server/discover`; if that answers with 2026-07-28 among its
/// `supportedVersions`, the session becomes a bridge and the client gets an `initialize`
/// result built from the discovery. `None` leaves the answers as they are.
pub(crate) async fn bridge_if_modern(
    app: &Arc<App>,
    session: &Arc<ClientSession>,
    initialize: &Value,
    answers: &[Bytes],
) -> Option<Bytes> {
    let id = initialize.get("id")?;
    // Any refusal: a 2026-era server answers -32601 (a removed method), or over HTTP
    // -32020 first (the handshake carries no `Mcp-Method`). The discovery decides.
    let refused = answers.iter().any(|answer| {
        serde_json::from_slice::<Value>(answer)
            .is_ok_and(|a| a.get("id") == Some(id) && a.get("error").is_some())
    });
    if !refused {
        return None;
    }
    let init = initialize
        .get("params")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let bridge = Arc::new(Bridge {
        anchor: session.clone(),
        init,
        log_level: Mutex::new(None),
        awaiting: Mutex::default(),
        in_flight: Mutex::default(),
        subscriptions: Mutex::default(),
        listen: Mutex::default(),
    });
    let (tx, _rx) = mpsc::channel(CHANNEL_DEPTH);
    let discovered = tokio::time::timeout(
        DISCOVER_TIMEOUT,
        bridge.stateless(app, "server/discover", json!({}), &tx, None),
    )
    .await;
    let result = match discovered {
        Ok(Ok(answer)) => answer.get("result").cloned()?,
        Ok(Err(err)) => {
            tracing::info!(error = %err, "initialize refused and server/discover failed: not bridged");
            return None;
        }
        Err(_) => return None,
    };
    let modern = result
        .get("supportedVersions")
        .and_then(Value::as_array)
        .is_some_and(|versions| versions.iter().any(|v| v == MODERN));
    if !modern {
        return None;
    }
    tracing::info!(
        agent = %session.agent,
        server = %session.server,
        "a 2025-era client on a 2026-era server: the session is bridged"
    );
    app.bridges
        .lock()
        .insert(session.id.clone(), bridge.clone());
    let requested = bridge
        .init
        .get("protocolVersion")
        .and_then(Value::as_str)
        .filter(|v| endpoint::SUPPORTED_PROTOCOL_VERSIONS.contains(v))
        .filter(|v| !endpoint::STATELESS_PROTOCOL_VERSIONS.contains(v))
        .unwrap_or("2025-11-25");
    let server_info = result
        .pointer(&format!("/_meta/{}", META_SERVER_INFO.replace('/', "~1")))
        .cloned()
        .or_else(|| result.get("serverInfo").cloned())
        .unwrap_or_else(|| json!({"name": session.server, "version": "unknown"}));
    let mut answer = json!({
        "protocolVersion": requested,
        "capabilities": result.get("capabilities").cloned().unwrap_or_else(|| json!({})),
        "serverInfo": server_info,
    });
    if let Some(instructions) = result.get("instructions") {
        answer["instructions"] = instructions.clone();
    }
    Some(Bytes::from(
        json!({"jsonrpc": "2.0", "id": id, "result": answer}).to_string(),
    ))
}

/// Serves one POST of a bridged session.
pub(crate) async fn handle(
    app: &Arc<App>,
    bridge: Arc<Bridge>,
    messages: Vec<(Bytes, Kind)>,
    streaming: bool,
) -> Response {
    bridge.anchor.touch();
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let mut any_request = false;
    for (raw, kind) in messages {
        match kind {
            Kind::Request { id, method, .. } => {
                any_request = true;
                let message: Value = serde_json::from_slice(&raw).unwrap_or_default();
                let client_id = message.get("id").cloned().unwrap_or(Value::Null);
                let params = message.get("params").cloned().unwrap_or_else(|| json!({}));
                let (app, bridge, tx) = (app.clone(), bridge.clone(), tx.clone());
                app.tasks.clone().spawn(async move {
                    let answer = bridge.request(&app, &id, &method, params, &tx).await;
                    let message = match answer {
                        Ok(mut answer) => {
                            answer["id"] = client_id;
                            answer
                        }
                        Err(err) => {
                            let correlation = CorrelationId::new();
                            err.log(&correlation, &"bridged call");
                            err.to_jsonrpc(Some(&client_id), &correlation)
                        }
                    };
                    let _ = tx.send(Bytes::from(message.to_string())).await;
                });
            }
            Kind::Response { id, .. } => bridge.client_answer(&id, &raw),
            Kind::Notification {
                method, cancels, ..
            } => {
                if method == "notifications/cancelled"
                    && let Some(id) = cancels
                {
                    // Ending the request's stream stops it upstream.
                    if let Some(stop) = bridge.in_flight_lock().remove(&id) {
                        stop.cancel();
                    }
                }
            }
        }
    }
    drop(tx);
    if !any_request {
        return StatusCode::ACCEPTED.into_response();
    }
    if streaming {
        endpoint::channel_sse(app, rx)
    } else {
        let mut rx = rx;
        let mut answers = Vec::new();
        while let Some(message) = rx.recv().await {
            answers.push(message);
        }
        endpoint::json_response(answers)
    }
}

impl Bridge {
    /// Answers one client request: locally for what the 2026 era removed, else upstream.
    async fn request(
        self: &Arc<Self>,
        app: &Arc<App>,
        id: &str,
        method: &str,
        params: Value,
        tx: &mpsc::Sender<Bytes>,
    ) -> Result<Value, RelayError> {
        match method {
            "ping" => return Ok(json!({"jsonrpc": "2.0", "result": {}})),
            "logging/setLevel" => {
                *self
                    .log_level
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = params.get("level").cloned();
                return Ok(json!({"jsonrpc": "2.0", "result": {}}));
            }
            "initialize" => return Err(RelayError::InvalidRequest("the session is initialized")),
            "resources/subscribe" | "resources/unsubscribe" => {
                let Some(uri) = params.get("uri").and_then(Value::as_str) else {
                    return Ok(json!({"jsonrpc": "2.0", "error": {"code": -32602,
                        "message": "Invalid params: uri is required"}}));
                };
                let uris = {
                    let mut subscriptions = self
                        .subscriptions
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    subscriptions.retain(|u| u != uri);
                    if method == "resources/subscribe" {
                        subscriptions.push(uri.to_owned());
                    }
                    subscriptions.clone()
                };
                self.relisten(app, uris).await;
                return Ok(json!({"jsonrpc": "2.0", "result": {}}));
            }
            _ => {}
        }
        let mut params = params;
        for _ in 0..MAX_ROUNDS {
            let answer = self
                .stateless(app, method, params.clone(), tx, Some(id))
                .await?;
            let Some(result) = answer.get("result") else {
                return Ok(answer);
            };
            if result.get("resultType").and_then(Value::as_str) != Some("input_required") {
                let mut answer = answer.clone();
                if let Some(result) = answer.get_mut("result").and_then(Value::as_object_mut) {
                    result.remove("resultType");
                }
                return Ok(answer);
            }
            // A Multi Round-Trip Request: ask the client, then retry with its answers.
            let requests = result
                .get("inputRequests")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let mut responses = serde_json::Map::new();
            for (key, request) in requests {
                let reply = self.ask_client(app, &request, tx).await?;
                responses.insert(key, reply);
            }
            params["inputResponses"] = Value::Object(responses);
            match result.get("requestState") {
                Some(state) => params["requestState"] = state.clone(),
                None => {
                    if let Some(p) = params.as_object_mut() {
                        p.remove("requestState");
                    }
                }
            }
        }
        Err(RelayError::InvalidRequest(
            "the upstream asked for input too many times",
        ))
    }

    /// Replaces the upstream `subscriptions/listen` with one for `uris` (none: no listen),
    /// and waits (up to [`LISTEN_ACK_TIMEOUT`]) for its acknowledgement, so that an update
    /// right after the client's subscription reaches it. Its resource updates go to the
    /// client as server-initiated messages (the GET stream). It lasts until replaced, or
    /// the session ends; one the upstream ends is opened again, at most once a second.
    async fn relisten(self: &Arc<Self>, app: &Arc<App>, uris: Vec<String>) {
        let stop = CancellationToken::new();
        let previous = self
            .listen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(stop.clone().drop_guard());
        drop(previous);
        if uris.is_empty() {
            return;
        }
        let (acked_tx, acked) = oneshot::channel::<()>();
        let (bridge, app_task) = (Arc::downgrade(self), app.clone());
        let anchor = self.anchor.clone();
        app.tasks.spawn(async move {
            let app = &app_task;
            let mut acked_tx = Some(acked_tx);
            loop {
                let Some(this) = bridge.upgrade() else { return };
                let (tx, mut rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
                let params = json!({"notifications": {"resourceSubscriptions": uris}});
                let listen = async move {
                    let _ = this.stateless(app, LISTEN, params, &tx, None).await;
                };
                let pass = async {
                    while let Some(message) = rx.recv().await {
                        let Some((method, mut params)) = crate::listen::notification(&message)
                        else {
                            continue;
                        };
                        if method == "notifications/subscriptions/acknowledged" {
                            if let Some(acked) = acked_tx.take() {
                                let _ = acked.send(());
                            }
                            continue;
                        }
                        if let Some(meta) = params.get_mut("_meta").and_then(Value::as_object_mut) {
                            meta.remove(crate::listen::SUBSCRIPTION_ID);
                        }
                        let note = json!({"jsonrpc": "2.0", "method": method, "params": params});
                        anchor.push(Bytes::from(note.to_string()));
                    }
                };
                let next_try = Instant::now() + RELISTEN_SPACING;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = anchor.closed() => return,
                    _ = async { tokio::join!(listen, pass) } => {}
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = anchor.closed() => return,
                    _ = tokio::time::sleep_until(next_try) => {}
                }
            }
        });
        let _ = tokio::time::timeout(LISTEN_ACK_TIMEOUT, acked).await;
    }

    /// Sends one input request to the client on the POST's stream and waits for its answer.
    async fn ask_client(
        &self,
        app: &App,
        request: &Value,
        tx: &mpsc::Sender<Bytes>,
    ) -> Result<Value, RelayError> {
        let id = relay_request_id();
        let (reply_tx, reply_rx) = oneshot::channel();
        self.awaiting_lock().insert(format!("\"{id}\""), reply_tx);
        let message = json!({
            "jsonrpc": "2.0",
            "id": id,
            "method": request.get("method").cloned().unwrap_or(Value::Null),
            "params": request.get("params").cloned().unwrap_or_else(|| json!({})),
        });
        if tx.send(Bytes::from(message.to_string())).await.is_err() {
            return Err(RelayError::SessionClosed);
        }
        let reply = tokio::time::timeout(app.config.limits.call_timeout, reply_rx).await;
        match reply {
            Ok(Ok(reply)) => Ok(reply),
            _ => {
                self.awaiting_lock().remove(&format!("\"{id}\""));
                Err(RelayError::Timeout)
            }
        }
    }

    /// A client's answer to an input request; an error answer is passed on as it is.
    fn client_answer(&self, id: &str, raw: &Bytes) {
        let Some(waiting) = self.awaiting_lock().remove(id) else {
            tracing::debug!("bridged session: an answer for no input request dropped");
            return;
        };
        let answer: Value = serde_json::from_slice(raw).unwrap_or_default();
        let reply = answer
            .get("result")
            .or_else(|| answer.get("error"))
            .cloned()
            .unwrap_or_default();
        let _ = waiting.send(reply);
    }

    /// Sends one stateless request upstream on a one-shot stream, forwarding what comes
    /// before its answer (progress, logs) to `tx`, and returns the answer.
    async fn stateless(
        &self,
        app: &Arc<App>,
        method: &str,
        mut params: Value,
        tx: &mpsc::Sender<Bytes>,
        client_id: Option<&str>,
    ) -> Result<Value, RelayError> {
        if !params.is_object() {
            params = json!({});
        }
        let meta = params
            .as_object_mut()
            .map(|p| p.entry("_meta").or_insert_with(|| json!({})))
            .filter(|m| m.is_object());
        if let Some(meta) = meta {
            meta[META_VERSION] = json!(MODERN);
            meta[META_CAPABILITIES] = self
                .init
                .get("capabilities")
                .cloned()
                .unwrap_or_else(|| json!({}));
            if let Some(info) = self.init.get("clientInfo") {
                meta[META_CLIENT_INFO] = info.clone();
            }
            if let Some(level) = self
                .log_level
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
            {
                meta[META_LOG_LEVEL] = level;
            }
        }
        let stop = CancellationToken::new();
        if let Some(client_id) = client_id {
            self.in_flight_lock()
                .insert(client_id.to_owned(), stop.clone());
        }
        let anchor = &self.anchor;
        let result = one_shot_request(
            app,
            &anchor.principal,
            &anchor.agent,
            &anchor.server,
            method,
            params,
            tx,
            &stop,
        )
        .await;
        if let Some(client_id) = client_id {
            self.in_flight_lock().remove(client_id);
        }
        result
    }

    fn awaiting_lock(&self) -> MutexGuard<'_, HashMap<String, oneshot::Sender<Value>>> {
        self.awaiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn in_flight_lock(&self) -> MutexGuard<'_, HashMap<String, CancellationToken>> {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Sends one stateless (2026-era) request to `agent`/`server` on a one-shot stream, with
/// the `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name` headers its body calls for,
/// forwarding what comes before its answer (progress, logs) to `tx`. Returns the answer
/// message (a result or an error). `stop` ends it early, which stops it upstream.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn one_shot_request(
    app: &Arc<App>,
    principal: &crate::auth::Principal,
    agent: &str,
    server: &str,
    method: &str,
    params: Value,
    tx: &mpsc::Sender<Bytes>,
    stop: &CancellationToken,
) -> Result<Value, RelayError> {
    let id = relay_request_id();
    let message = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    let raw = Bytes::from(message.to_string());
    let mut headers = HeaderMap::new();
    headers.insert("mcp-protocol-version", HeaderValue::from_static(MODERN));
    if let Ok(value) = HeaderValue::from_str(method) {
        headers.insert("mcp-method", value);
    }
    let kind = jsonrpc::classify(&raw).map_err(|_| RelayError::Internal)?;
    if let Kind::Request {
        target: Some(name), ..
    } = &kind
        && let Ok(value) = HeaderValue::from_str(name)
    {
        headers.insert("mcp-name", value);
    }
    let session = endpoint::open_session(app, principal.clone(), agent, server, &headers)?;
    let _one_shot = OneShot::new(app.sessions.clone(), session.clone(), None);
    let submission = session
        .submit(vec![(raw, kind)], true)
        .await?
        .ok_or(RelayError::Internal)?;
    let id_text = format!("\"{id}\"");
    let deadline = Instant::now() + app.config.limits.call_timeout;
    let mut initial = submission.initial.into_iter();
    let mut messages = submission.messages;
    loop {
        let message = match initial.next() {
            Some(message) => message,
            None => tokio::select! {
                _ = stop.cancelled() => return Err(RelayError::SessionClosed),
                next = tokio::time::timeout_at(deadline, messages.recv()) => match next {
                    Ok(Some(message)) => message.body,
                    Ok(None) => return Err(RelayError::SessionClosed),
                    Err(_) => {
                        let _ = session.expire_post(submission.post);
                        return Err(RelayError::Timeout);
                    }
                },
            },
        };
        match jsonrpc::classify(&message) {
            Ok(Kind::Response { id, .. }) if id == id_text => {
                return serde_json::from_slice::<Value>(&message).map_err(|_| RelayError::Internal);
            }
            Ok(Kind::Notification { .. }) => {
                let _ = tx.send(message).await;
            }
            _ => {}
        }
    }
}
