//! The aggregated endpoint `/mcp`: every server the key may reach, on every connected agent
//! of its organisation, as one MCP server of the stateful 2025 era. Owns the aggregated
//! sessions and the naming scheme; each upstream is an ordinary [`ClientSession`]
//! (`router.rs`), so usage, timeouts and errors work as on `/mcp/{agent}/{server}`.
//!
//! Naming (collision-free, deterministic): tools and prompts are `{server}__{name}`, or
//! `{agent}__{server}__{name}` when servers of the same name are reachable on several
//! agents; resource URIs and templates become `outpost://{agent}/{server}/{original}`.
//! Lists are merged in (agent, server) order, each upstream's own order kept. Requests the
//! upstreams send the client (sampling, elicitation, roots) get relay-chosen ids so the
//! client's answers find their upstream. Agents that come or go, or announce other servers,
//! produce `list_changed` notifications on the GET stream.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::App;
use crate::auth::Principal;
use crate::error::{CorrelationId, RelayError, set_correlation};
use crate::jsonrpc::{self, Kind};
use crate::mcp_endpoint as endpoint;
use crate::router::{ClientSession, relay_request_id};

/// Separates prefixes from names in tool and prompt names.
const SEPARATOR: &str = "__";
/// The scheme of wrapped resource URIs.
const URI_SCHEME: &str = "outpost://";
/// How long an upstream may take to answer `initialize` or a list.
const UPSTREAM_SETUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);
/// Pages of one list followed per upstream.
const MAX_PAGES: usize = 50;
/// Messages buffered for one POST's or GET's response.
const CHANNEL_DEPTH: usize = 64;

/// The aggregated sessions of this relay.
#[derive(Debug, Default)]
pub(crate) struct Aggregates {
    sessions: Mutex<HashMap<String, Arc<Aggregate>>>,
}

/// One client's aggregated session.
#[derive(Debug)]
pub(crate) struct Aggregate {
    id: String,
    principal: Principal,
    /// The client's `initialize` params, sent to every upstream, also those joining later.
    init: Value,
    upstreams: Mutex<Vec<Arc<Upstream>>>,
    /// Client request id (canonical JSON) -> the upstream and the id it was sent with.
    routes: Mutex<HashMap<String, (Arc<Upstream>, String)>>,
    /// Relay-chosen id of an upstream's request to the client -> the upstream and its id.
    outbound: Mutex<HashMap<String, (Arc<Upstream>, Value)>>,
    last_active: Mutex<Instant>,
    closed: CancellationToken,
}

/// One server behind an aggregated session.
#[derive(Debug)]
struct Upstream {
    agent: String,
    server: String,
    /// `server`, or `agent__server` when the server's name is not unique.
    prefix: String,
    session: Arc<ClientSession>,
    capabilities: Value,
    instructions: Option<String>,
}

// === HTTP ===

/// `POST /mcp`
pub(crate) async fn post(State(app): State<Arc<App>>, request: Request) -> Response {
    let correlation = CorrelationId::new();
    let (parts, body) = request.into_parts();
    let mut body = Some(body);
    let result = handle_post(&app, &parts, &mut body, &correlation).await;
    if let Some(mut unread) = body {
        crate::body::discard(&mut unread).await;
    }
    respond(result, &correlation, "POST")
}

/// `GET /mcp`: server-initiated messages of every upstream, and list changes.
pub(crate) async fn get(State(app): State<Arc<App>>, request: Request) -> Response {
    let correlation = CorrelationId::new();
    let (parts, _) = request.into_parts();
    let result = async {
        let (_, aggregate) = existing(&app, &parts.headers, &parts.extensions).await?;
        if !endpoint::accepts(&parts.headers, "text/event-stream") {
            return Err(RelayError::NotAcceptable);
        }
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let stop = aggregate.closed.child_token();
        app.tasks
            .spawn(follow(app.clone(), aggregate.clone(), tx, stop.clone()));
        Ok(endpoint::channel_sse_with(
            &app,
            None,
            rx,
            Some(stop.drop_guard()),
        ))
    }
    .await;
    respond(result, &correlation, "GET")
}

/// `DELETE /mcp`: ends the aggregated session and every upstream session of it.
pub(crate) async fn delete(State(app): State<Arc<App>>, request: Request) -> Response {
    let correlation = CorrelationId::new();
    let (parts, _) = request.into_parts();
    let result = async {
        let (principal, aggregate) = existing(&app, &parts.headers, &parts.extensions).await?;
        app.aggregates.remove(&aggregate.id);
        aggregate.close(&app, &principal).await;
        Ok(StatusCode::NO_CONTENT.into_response())
    }
    .await;
    respond(result, &correlation, "DELETE")
}

fn respond(
    result: Result<Response, RelayError>,
    correlation: &CorrelationId,
    method: &str,
) -> Response {
    let mut response = result.unwrap_or_else(|err| {
        err.log(correlation, &format_args!("{method} /mcp"));
        err.into_http(correlation)
    });
    set_correlation(&mut response, correlation);
    response
}

async fn authenticate(
    app: &Arc<App>,
    headers: &HeaderMap,
    extensions: &http::Extensions,
) -> Result<Principal, RelayError> {
    endpoint::check_headers(app, headers)?;
    let principal = endpoint::authenticate(app, headers, extensions, &CorrelationId::new()).await?;
    if principal.role == "viewer" {
        return Err(RelayError::InsufficientScope("server with a viewer key"));
    }
    Ok(principal)
}

async fn existing(
    app: &Arc<App>,
    headers: &HeaderMap,
    extensions: &http::Extensions,
) -> Result<(Principal, Arc<Aggregate>), RelayError> {
    let principal = authenticate(app, headers, extensions).await?;
    let id = endpoint::session_id(headers).ok_or(RelayError::SessionRequired)?;
    let aggregate = app
        .aggregates
        .get(id, &principal)
        .ok_or(RelayError::SessionNotFound)?;
    aggregate.touch();
    Ok((principal, aggregate))
}

async fn handle_post(
    app: &Arc<App>,
    parts: &http::request::Parts,
    body: &mut Option<Body>,
    correlation: &CorrelationId,
) -> Result<Response, RelayError> {
    let headers = &parts.headers;
    let principal = authenticate(app, headers, &parts.extensions).await?;
    if !endpoint::is_json(headers) {
        return Err(RelayError::UnsupportedMediaType);
    }
    let streaming = endpoint::accepts(headers, "text/event-stream");
    if !streaming && !endpoint::accepts(headers, "application/json") {
        return Err(RelayError::NotAcceptable);
    }
    let body = crate::body::read_limited(
        headers,
        body.take().ok_or(RelayError::Internal)?,
        app.config.limits.max_body_bytes,
    )
    .await
    .map_err(|err| match err {
        crate::body::BodyError::TooLarge => {
            RelayError::BodyTooLarge(app.config.limits.max_body_bytes)
        }
        crate::body::BodyError::Unreadable => RelayError::InvalidRequest("body could not be read"),
    })?;
    endpoint::check_depth(&body, app.config.limits.max_json_depth)?;
    let messages = endpoint::parse_messages(&body)?;
    let requests: Vec<Value> = messages
        .iter()
        .filter_map(|(_, kind)| match kind {
            Kind::Request { id, .. } => serde_json::from_str(id).ok(),
            _ => None,
        })
        .collect();
    if let Err(limited) =
        app.guard
            .admit_request(&principal.key_id.0, principal.rate, principal.burst)
    {
        return Ok(endpoint::refuse_requests(
            &endpoint::limited_error(app, &limited),
            &requests,
            correlation,
        ));
    }

    if endpoint::is_stateless(headers) {
        if let Err(err) = endpoint::check_method_headers(headers, &messages) {
            return Ok(endpoint::refuse_requests(&err, &requests, correlation));
        }
        let (raw, _) = &messages[0];
        return Ok(crate::aggregate_modern::handle(app, principal, raw, streaming).await);
    }
    let Some(id) = endpoint::session_id(headers) else {
        let initialize = messages.iter().find_map(|(raw, kind)| match kind {
            Kind::Request { id, method, .. } if method == "initialize" => Some((raw, id)),
            _ => None,
        });
        let Some((raw, id)) = initialize else {
            return Err(RelayError::SessionRequired);
        };
        return initialize_session(app, principal, raw, id).await;
    };
    let aggregate = app
        .aggregates
        .get(id, &principal)
        .ok_or(RelayError::SessionNotFound)?;
    aggregate.touch();

    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let mut any_request = false;
    for (raw, kind) in messages {
        match kind {
            Kind::Request { id, method, .. } => {
                any_request = true;
                let message: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
                let params = message.get("params").cloned().unwrap_or(Value::Null);
                let client_id: Value = serde_json::from_str(&id).unwrap_or(Value::Null);
                let (app, aggregate, tx) = (app.clone(), aggregate.clone(), tx.clone());
                app.tasks.clone().spawn(async move {
                    let answer = aggregate
                        .request(&app, &client_id, &id, &method, params, &tx)
                        .await;
                    if let Some(answer) = answer {
                        let _ = tx.send(answer).await;
                    }
                });
            }
            Kind::Notification {
                method, cancels, ..
            } => {
                aggregate
                    .client_notification(&method, cancels.as_deref(), &raw)
                    .await
            }
            Kind::Response { id, .. } => aggregate.client_response(&id, &raw).await,
        }
    }
    drop(tx);
    if !any_request {
        return Ok(StatusCode::ACCEPTED.into_response());
    }
    if streaming {
        Ok(endpoint::channel_sse(app, rx))
    } else {
        let mut rx = rx;
        let mut answers = Vec::new();
        while let Some(message) = rx.recv().await {
            answers.push(message);
        }
        Ok(endpoint::json_response(answers))
    }
}

/// Opens an upstream session to every reachable server, answers `initialize` with the
/// merged capabilities, and registers the aggregated session.
async fn initialize_session(
    app: &Arc<App>,
    principal: Principal,
    raw: &Bytes,
    id: &str,
) -> Result<Response, RelayError> {
    let message: Value = serde_json::from_slice(raw).map_err(|_| RelayError::Parse)?;
    let init = message.get("params").cloned().unwrap_or_else(|| json!({}));
    let requested = init
        .get("protocolVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let version = if endpoint::SUPPORTED_PROTOCOL_VERSIONS.contains(&requested)
        && !endpoint::STATELESS_PROTOCOL_VERSIONS.contains(&requested)
    {
        requested.to_owned()
    } else {
        LATEST_STATEFUL.to_owned()
    };
    let aggregate = Arc::new(Aggregate {
        id: crate::auth::random_id("", 16),
        principal,
        init,
        upstreams: Mutex::default(),
        routes: Mutex::default(),
        outbound: Mutex::default(),
        last_active: Mutex::new(Instant::now()),
        closed: app.close.child_token(),
    });
    aggregate.reconcile(app).await;
    app.aggregates
        .insert(aggregate.clone(), app.config.limits.max_sessions)?;
    let upstreams = aggregate.upstreams();
    let result = json!({
        "protocolVersion": version,
        "capabilities": merged_capabilities(&upstreams),
        "serverInfo": {"name": "outpost", "version": env!("CARGO_PKG_VERSION")},
        "instructions": instructions(&upstreams),
    });
    let client_id: Value = serde_json::from_str(id).unwrap_or(Value::Null);
    let answer = json!({"jsonrpc": "2.0", "id": client_id, "result": result});
    let mut response = endpoint::json_response(vec![Bytes::from(answer.to_string())]);
    if let Ok(value) = HeaderValue::from_str(&aggregate.id) {
        response
            .headers_mut()
            .insert(endpoint::SESSION_HEADER, value);
    }
    Ok(response)
}

const LATEST_STATEFUL: &str = "2025-11-25";

/// Only what some upstream supports. `listChanged` is always true where the capability
/// exists: the relay announces changes of its own (agents coming and going).
fn merged_capabilities(upstreams: &[Arc<Upstream>]) -> Value {
    let has = |name: &str| upstreams.iter().any(|u| u.capabilities.get(name).is_some());
    let mut capabilities = serde_json::Map::new();
    if has("tools") {
        capabilities.insert("tools".into(), json!({"listChanged": true}));
    }
    if has("prompts") {
        capabilities.insert("prompts".into(), json!({"listChanged": true}));
    }
    if has("resources") {
        let subscribe = upstreams.iter().any(|u| {
            u.capabilities
                .pointer("/resources/subscribe")
                .and_then(Value::as_bool)
                .unwrap_or(false)
        });
        capabilities.insert(
            "resources".into(),
            json!({"listChanged": true, "subscribe": subscribe}),
        );
    }
    if has("completions") {
        capabilities.insert("completions".into(), json!({}));
    }
    if has("logging") {
        capabilities.insert("logging".into(), json!({}));
    }
    Value::Object(capabilities)
}

fn instructions(upstreams: &[Arc<Upstream>]) -> String {
    let mut text = String::from(
        "Tools and prompts are named SERVER__NAME (AGENT__SERVER__NAME when two agents have \
         a server of that name); resource URIs are outpost://AGENT/SERVER/URI.",
    );
    for upstream in upstreams {
        if let Some(instructions) = &upstream.instructions {
            text.push_str(&format!(
                "\n\n{} (agent {}, server {}):\n{instructions}",
                upstream.prefix, upstream.agent, upstream.server
            ));
        }
    }
    text
}

/// Feeds a GET stream: every upstream's server-initiated messages, and `list_changed`
/// notifications when the reachable servers change. Ends with the client or the session.
async fn follow(
    app: Arc<App>,
    aggregate: Arc<Aggregate>,
    tx: mpsc::Sender<Bytes>,
    stop: CancellationToken,
) {
    let mut changes = app.agents.subscribe();
    let mut attached: HashSet<String> = HashSet::new();
    loop {
        for upstream in aggregate.upstreams() {
            let key = format!("{}/{}", upstream.agent, upstream.server);
            if attached.contains(&key) {
                continue;
            }
            let Ok(mut messages) = upstream.session.attach_get_stream() else {
                continue;
            };
            attached.insert(key);
            let (aggregate, tx, stop) = (aggregate.clone(), tx.clone(), stop.clone());
            app.tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        message = messages.recv() => {
                            let Some(message) = message else { return };
                            let message = aggregate.for_client(&upstream, message.body);
                            if tx.send(message).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tx.closed() => return,
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                if aggregate.reconcile(&app).await {
                    attached.retain(|key| aggregate.upstreams().iter().any(|u| format!("{}/{}", u.agent, u.server) == *key));
                    for method in [
                        "notifications/tools/list_changed",
                        "notifications/prompts/list_changed",
                        "notifications/resources/list_changed",
                    ] {
                        let note = json!({"jsonrpc": "2.0", "method": method});
                        if tx.send(Bytes::from(note.to_string())).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
}

// === impl Aggregates ===

impl Aggregates {
    fn insert(&self, aggregate: Arc<Aggregate>, max: usize) -> Result<(), RelayError> {
        let mut sessions = self.lock();
        if sessions.len() >= max {
            return Err(RelayError::TooManySessions);
        }
        sessions.insert(aggregate.id.clone(), aggregate);
        Ok(())
    }

    fn get(&self, id: &str, principal: &Principal) -> Option<Arc<Aggregate>> {
        let aggregate = self.lock().get(id).cloned()?;
        (aggregate.principal.key_id == principal.key_id).then_some(aggregate)
    }

    fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Closes aggregated sessions without a request for `idle`. Returns how many.
    pub(crate) async fn expire_idle(&self, app: &App, idle: std::time::Duration) -> usize {
        let expired: Vec<Arc<Aggregate>> = {
            let mut sessions = self.lock();
            let ids: Vec<String> = sessions
                .values()
                .filter(|a| a.idle_for() >= idle)
                .map(|a| a.id.clone())
                .collect();
            ids.iter().filter_map(|id| sessions.remove(id)).collect()
        };
        for aggregate in &expired {
            let principal = aggregate.principal.clone();
            aggregate.close(app, &principal).await;
        }
        expired.len()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Aggregate>>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// === impl Aggregate ===

impl Aggregate {
    fn upstreams(&self) -> Vec<Arc<Upstream>> {
        self.upstreams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn touch(&self) {
        *self
            .last_active
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    fn idle_for(&self) -> std::time::Duration {
        self.last_active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed()
    }

    async fn close(&self, app: &App, principal: &Principal) {
        self.closed.cancel();
        for upstream in self.upstreams() {
            app.sessions.delete(&upstream.session.id, principal).await;
        }
    }

    /// Brings the upstreams in line with what the key may reach now: opens sessions to new
    /// servers, drops those whose agent or session went away, and renames prefixes.
    /// Returns whether the set changed.
    async fn reconcile(&self, app: &Arc<App>) -> bool {
        let targets = targets(app, &self.principal);
        let current = self.upstreams();
        let mut kept = Vec::new();
        let mut changed = false;
        for upstream in &current {
            let reachable = targets
                .iter()
                .any(|(a, s)| *a == upstream.agent && *s == upstream.server);
            if reachable && !upstream.session.is_closed() {
                kept.push(upstream.clone());
            } else {
                changed = true;
                app.sessions
                    .delete(&upstream.session.id, &self.principal)
                    .await;
            }
        }
        let missing: Vec<(String, String)> = targets
            .iter()
            .filter(|(a, s)| !kept.iter().any(|u| u.agent == *a && u.server == *s))
            .cloned()
            .collect();
        let joined = futures_util::future::join_all(
            missing
                .iter()
                .map(|(agent, server)| self.connect(app, agent, server)),
        )
        .await;
        for upstream in joined.into_iter().flatten() {
            changed = true;
            kept.push(upstream);
        }
        // Prefixes depend on which server names repeat across agents.
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for upstream in &kept {
            *counts.entry(upstream.server.as_str()).or_default() += 1;
        }
        let mut renamed: Vec<Arc<Upstream>> = kept
            .iter()
            .map(|u| {
                let prefix = prefix_of(&u.agent, &u.server, counts[u.server.as_str()] > 1);
                if prefix == u.prefix {
                    u.clone()
                } else {
                    Arc::new(Upstream {
                        agent: u.agent.clone(),
                        server: u.server.clone(),
                        prefix,
                        session: u.session.clone(),
                        capabilities: u.capabilities.clone(),
                        instructions: u.instructions.clone(),
                    })
                }
            })
            .collect();
        renamed.sort_by(|a, b| (&a.agent, &a.server).cmp(&(&b.agent, &b.server)));
        if renamed
            .iter()
            .zip(&current)
            .any(|(a, b)| a.prefix != b.prefix)
        {
            changed = true;
        }
        *self
            .upstreams
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = renamed;
        changed
    }

    /// Opens a session to one server and runs the `initialize` handshake with the client's
    /// params. `None` (logged) when the server cannot be reached.
    async fn connect(&self, app: &Arc<App>, agent: &str, server: &str) -> Option<Arc<Upstream>> {
        let mut headers = HeaderMap::new();
        if let Some(version) = self
            .init
            .get("protocolVersion")
            .and_then(Value::as_str)
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            headers.insert("mcp-protocol-version", version);
        }
        let session = match endpoint::open_session(
            app,
            self.principal.clone(),
            agent,
            server,
            &headers,
        ) {
            Ok(session) => session,
            Err(err) => {
                tracing::warn!(agent, server, error = %err, "aggregated session: upstream not opened");
                return None;
            }
        };
        let answer = match session
            .call("initialize", self.init.clone(), UPSTREAM_SETUP_TIMEOUT)
            .await
        {
            Ok(answer) => answer,
            Err(err) => {
                tracing::warn!(agent, server, error = %err, "aggregated session: upstream did not initialize");
                app.sessions.delete(&session.id, &self.principal).await;
                return None;
            }
        };
        let Some(result) = answer.get("result") else {
            tracing::warn!(
                agent,
                server,
                "aggregated session: upstream refused initialize"
            );
            app.sessions.delete(&session.id, &self.principal).await;
            return None;
        };
        let initialized =
            Bytes::from_static(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        let _ = session.send(initialized).await;
        Some(Arc::new(Upstream {
            agent: agent.to_owned(),
            server: server.to_owned(),
            prefix: server.to_owned(),
            session,
            capabilities: result.get("capabilities").cloned().unwrap_or_default(),
            instructions: result
                .get("instructions")
                .and_then(Value::as_str)
                .map(str::to_owned),
        }))
    }

    /// Answers one client request: by the relay (lists, ping) or by the upstream it names.
    /// Messages before the answer (progress, requests to the client) go to `tx`.
    async fn request(
        &self,
        app: &Arc<App>,
        client_id: &Value,
        id_text: &str,
        method: &str,
        params: Value,
        tx: &mpsc::Sender<Bytes>,
    ) -> Option<Bytes> {
        let result = match method {
            "ping" => Ok(json!({})),
            "initialize" => Err((-32600, "the session is already initialized".to_owned())),
            "tools/list" => {
                self.list(app, "tools", "tools", |u, item| {
                    let name = item.get("name").and_then(Value::as_str)?.to_owned();
                    if !self.principal.scope.allows_tool(&name) {
                        return None;
                    }
                    item["name"] = json!(prefixed(&u.prefix, &name));
                    Some(item.take())
                })
                .await
            }
            "prompts/list" => {
                self.list(app, "prompts", "prompts", |u, item| {
                    let name = item.get("name").and_then(Value::as_str)?.to_owned();
                    item["name"] = json!(prefixed(&u.prefix, &name));
                    Some(item.take())
                })
                .await
            }
            "resources/list" => {
                self.list(app, "resources", "resources", |u, item| {
                    let uri = item.get("uri").and_then(Value::as_str)?.to_owned();
                    item["uri"] = json!(wrap_uri(u, &uri));
                    Some(item.take())
                })
                .await
            }
            "resources/templates/list" => {
                self.list(app, "resources", "resourceTemplates", |u, item| {
                    let template = item.get("uriTemplate").and_then(Value::as_str)?.to_owned();
                    item["uriTemplate"] = json!(wrap_uri(u, &template));
                    Some(item.take())
                })
                .await
            }
            "logging/setLevel" => {
                for upstream in self.upstreams() {
                    if upstream.capabilities.get("logging").is_some() {
                        let _ = upstream
                            .session
                            .call(method, params.clone(), UPSTREAM_SETUP_TIMEOUT)
                            .await;
                    }
                }
                Ok(json!({}))
            }
            _ => {
                return self
                    .routed(app, client_id, id_text, method, params, tx)
                    .await;
            }
        };
        Some(answer(client_id, result))
    }

    /// Fans a list out to every upstream with `capability`, follows cursors, renames each
    /// item with `rename` (which may drop it), and merges in upstream order.
    async fn list(
        &self,
        app: &Arc<App>,
        capability: &str,
        field: &str,
        rename: impl Fn(&Upstream, &mut Value) -> Option<Value>,
    ) -> Result<Value, (i64, String)> {
        self.reconcile(app).await;
        let upstreams: Vec<Arc<Upstream>> = self
            .upstreams()
            .into_iter()
            .filter(|u| u.capabilities.get(capability).is_some())
            .collect();
        let method = match field {
            "resourceTemplates" => "resources/templates/list".to_owned(),
            other => format!("{other}/list"),
        };
        let pages = futures_util::future::join_all(upstreams.iter().map(|upstream| {
            let method = method.clone();
            async move {
                let mut items = Vec::new();
                let mut cursor: Option<Value> = None;
                for _ in 0..MAX_PAGES {
                    let params = match &cursor {
                        Some(cursor) => json!({"cursor": cursor}),
                        None => json!({}),
                    };
                    match upstream.session.call(&method, params, UPSTREAM_SETUP_TIMEOUT).await {
                        Ok(answer) => {
                            let result = answer.get("result").cloned().unwrap_or_default();
                            if let Some(list) = result.get(field).and_then(Value::as_array) {
                                items.extend(list.iter().cloned());
                            }
                            cursor = result.get("nextCursor").filter(|c| !c.is_null()).cloned();
                            if cursor.is_none() {
                                break;
                            }
                        }
                        Err(err) => {
                            tracing::warn!(agent = %upstream.agent, server = %upstream.server, error = %err, "aggregated list: upstream left out");
                            break;
                        }
                    }
                }
                items
            }
        }))
        .await;
        let mut merged = Vec::new();
        for (upstream, items) in upstreams.iter().zip(pages) {
            for mut item in items {
                if let Some(item) = rename(upstream, &mut item) {
                    merged.push(item);
                }
            }
        }
        Ok(json!({ field: merged }))
    }

    /// Sends a request that names one upstream (a tool, prompt, resource or completion
    /// reference) to it, with the name restored and a relay-chosen id.
    async fn routed(
        &self,
        app: &Arc<App>,
        client_id: &Value,
        id_text: &str,
        method: &str,
        mut params: Value,
        tx: &mpsc::Sender<Bytes>,
    ) -> Option<Bytes> {
        let target = match method {
            "tools/call" | "prompts/get" => find_prefixed(&self.upstreams(), &mut params, "/name"),
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                find_wrapped(&self.upstreams(), &mut params, "/uri")
            }
            "completion/complete" => match params.pointer("/ref/type").and_then(Value::as_str) {
                Some("ref/prompt") => find_prefixed(&self.upstreams(), &mut params, "/ref/name"),
                Some("ref/resource") => find_wrapped(&self.upstreams(), &mut params, "/ref/uri"),
                _ => None,
            },
            _ => {
                return Some(answer(
                    client_id,
                    Err((-32601, format!("Method not found: {method}"))),
                ));
            }
        };
        let Some(upstream) = target else {
            return Some(answer(
                client_id,
                Err((
                    -32602,
                    "no reachable server has that name or URI".to_owned(),
                )),
            ));
        };
        if method == "tools/call" {
            let tool = params.get("name").and_then(Value::as_str).unwrap_or("");
            if !self.principal.scope.allows_tool(tool) {
                return Some(error_answer(
                    client_id,
                    &RelayError::InsufficientScope("tool"),
                ));
            }
            if let Err(limited) = app.guard.admit_tool(&self.principal.key_id.0, tool) {
                return Some(error_answer(
                    client_id,
                    &endpoint::limited_error(app, &limited),
                ));
            }
        }
        // As on `/mcp/{agent}/{server}`: the call holds an in-flight slot of the key and of
        // the agent until it is answered.
        let _slot = match app.guard.admit_call(
            &self.principal.key_id.0,
            &self.principal.org_id,
            &upstream.agent,
        ) {
            Ok(slot) => slot,
            Err(limited) => {
                return Some(error_answer(
                    client_id,
                    &endpoint::limited_error(app, &limited),
                ));
            }
        };
        let upstream_id = relay_request_id();
        let message =
            json!({"jsonrpc": "2.0", "id": upstream_id, "method": method, "params": params});
        let raw = Bytes::from(message.to_string());
        let Ok(kind) = jsonrpc::classify(&raw) else {
            return Some(answer(
                client_id,
                Err((-32603, "internal error".to_owned())),
            ));
        };
        let upstream_id_text = format!("\"{upstream_id}\"");
        self.routes_lock().insert(
            id_text.to_owned(),
            (upstream.clone(), upstream_id_text.clone()),
        );
        let submitted = upstream.session.submit(vec![(raw, kind)], true).await;
        let submission = match submitted {
            Ok(Some(submission)) => submission,
            Ok(None) => {
                self.routes_lock().remove(id_text);
                return Some(answer(
                    client_id,
                    Err((-32603, "internal error".to_owned())),
                ));
            }
            Err(err) => {
                self.routes_lock().remove(id_text);
                return Some(error_answer(client_id, &err));
            }
        };
        let deadline = Instant::now() + app.config.limits.call_timeout;
        let mut pending: std::collections::VecDeque<Bytes> = submission.initial.into();
        let mut messages = submission.messages;
        let mut late = false;
        let result = loop {
            let next = match pending.pop_front() {
                Some(message) => Some(message),
                None if late => messages.recv().await.map(|m| m.body),
                None => match tokio::time::timeout_at(deadline, messages.recv()).await {
                    Ok(message) => message.map(|m| m.body),
                    Err(_) => {
                        pending.extend(upstream.session.expire_post(submission.post));
                        late = true;
                        continue;
                    }
                },
            };
            let Some(message) = next else {
                break None;
            };
            match jsonrpc::classify(&message) {
                Ok(Kind::Response { id, .. }) if id == upstream_id_text => {
                    let mut value: Value = serde_json::from_slice(&message).unwrap_or_default();
                    value["id"] = client_id.clone();
                    if method == "resources/read"
                        && let Some(contents) = value
                            .pointer_mut("/result/contents")
                            .and_then(Value::as_array_mut)
                    {
                        for content in contents {
                            if let Some(uri) = content.get("uri").and_then(Value::as_str) {
                                content["uri"] = json!(wrap_uri(&upstream, uri));
                            }
                        }
                    }
                    break Some(Bytes::from(value.to_string()));
                }
                _ => {
                    let message = self.for_client(&upstream, message);
                    if tx.send(message).await.is_err() {
                        // The client went away; the session's own sweep times the call out.
                    }
                }
            }
        };
        self.routes_lock().remove(id_text);
        Some(result.unwrap_or_else(|| {
            answer(
                client_id,
                Err((
                    crate::error::CODE_SESSION_CLOSED,
                    "the upstream session ended".to_owned(),
                )),
            )
        }))
    }

    /// Rewrites a message an upstream sends the client: its requests get relay-chosen ids,
    /// resource URIs are wrapped.
    fn for_client(&self, upstream: &Arc<Upstream>, message: Bytes) -> Bytes {
        match jsonrpc::classify(&message) {
            Ok(Kind::Request { .. }) => {
                let mut value: Value = serde_json::from_slice(&message).unwrap_or_default();
                let id = relay_request_id();
                let original = value.get("id").cloned().unwrap_or(Value::Null);
                self.outbound
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(format!("\"{id}\""), (upstream.clone(), original));
                value["id"] = json!(id);
                Bytes::from(value.to_string())
            }
            Ok(Kind::Notification { method, .. })
                if method == "notifications/resources/updated" =>
            {
                let mut value: Value = serde_json::from_slice(&message).unwrap_or_default();
                if let Some(uri) = value.pointer("/params/uri").and_then(Value::as_str) {
                    let wrapped = wrap_uri(upstream, uri);
                    value["params"]["uri"] = json!(wrapped);
                }
                Bytes::from(value.to_string())
            }
            _ => message,
        }
    }

    /// A client's answer to an upstream's request goes back with the upstream's own id.
    async fn client_response(&self, id: &str, raw: &Bytes) {
        let Some((upstream, original)) = self
            .outbound
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id)
        else {
            tracing::debug!("aggregated session: an answer for no outstanding request dropped");
            return;
        };
        let mut value: Value = serde_json::from_slice(raw).unwrap_or_default();
        value["id"] = original;
        let _ = upstream.session.send(Bytes::from(value.to_string())).await;
    }

    /// Cancellation goes to the upstream of the request it names; other notifications
    /// (roots changed) to every upstream; `initialized` was sent at setup.
    async fn client_notification(&self, method: &str, cancels: Option<&str>, raw: &Bytes) {
        match method {
            "notifications/initialized" => {}
            "notifications/cancelled" => {
                let route = cancels.and_then(|id| self.routes_lock().get(id).cloned());
                if let Some((upstream, upstream_id)) = route {
                    let mut value: Value = serde_json::from_slice(raw).unwrap_or_default();
                    value["params"]["requestId"] =
                        serde_json::from_str(&upstream_id).unwrap_or(Value::Null);
                    let _ = upstream.session.send(Bytes::from(value.to_string())).await;
                }
            }
            _ => {
                for upstream in self.upstreams() {
                    let _ = upstream.session.send(raw.clone()).await;
                }
            }
        }
    }

    fn routes_lock(&self) -> MutexGuard<'_, HashMap<String, (Arc<Upstream>, String)>> {
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The servers `principal` may reach now, in (agent, server) order.
pub(crate) fn targets(app: &App, principal: &Principal) -> Vec<(String, String)> {
    let mut targets: Vec<(String, String)> = app
        .agents
        .of_org(&principal.org_id)
        .into_iter()
        .filter(|agent| agent.is_available())
        .flat_map(|agent| {
            agent
                .servers()
                .iter()
                .map(|server| (agent.name.clone(), server.clone()))
                .collect::<Vec<_>>()
        })
        .filter(|(agent, server)| principal.scope.allows_server(agent, server))
        .collect();
    targets.sort();
    targets
}

fn wrap_uri(upstream: &Upstream, uri: &str) -> String {
    wrap(&upstream.agent, &upstream.server, uri)
}

// === naming, shared with the 2026-era aggregate ===

/// A server reachable through `/mcp`, as far as its names go.
pub(crate) trait Named {
    fn agent(&self) -> &str;
    fn server(&self) -> &str;
    /// `server`, or `agent__server` when the server's name is not unique.
    fn prefix(&self) -> &str;
}

impl Named for Arc<Upstream> {
    fn agent(&self) -> &str {
        &self.agent
    }
    fn server(&self) -> &str {
        &self.server
    }
    fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// The prefix of `server` on `agent`: the agent's name joins it when `repeated`.
pub(crate) fn prefix_of(agent: &str, server: &str, repeated: bool) -> String {
    if repeated {
        format!("{agent}{SEPARATOR}{server}")
    } else {
        server.to_owned()
    }
}

/// A tool or prompt name as `/mcp` shows it.
pub(crate) fn prefixed(prefix: &str, name: &str) -> String {
    format!("{prefix}{SEPARATOR}{name}")
}

/// `uri` of `server` on `agent`, as `/mcp` names it.
pub(crate) fn wrap(agent: &str, server: &str, uri: &str) -> String {
    format!("{URI_SCHEME}{agent}/{server}/{uri}")
}

/// The item a prefixed name at `pointer` belongs to, and the name restored in `params`.
/// The longest matching prefix wins: names may themselves contain the separator.
pub(crate) fn find_prefixed<T: Named + Clone>(
    items: &[T],
    params: &mut Value,
    pointer: &str,
) -> Option<T> {
    let name = params.pointer(pointer).and_then(Value::as_str)?.to_owned();
    let item = items
        .iter()
        .filter(|i| name.starts_with(&format!("{}{SEPARATOR}", i.prefix())))
        .max_by_key(|i| i.prefix().len())?
        .clone();
    *params.pointer_mut(pointer)? = json!(name[item.prefix().len() + SEPARATOR.len()..]);
    Some(item)
}

/// The item a wrapped URI at `pointer` belongs to, and the URI restored in `params`.
pub(crate) fn find_wrapped<T: Named + Clone>(
    items: &[T],
    params: &mut Value,
    pointer: &str,
) -> Option<T> {
    let uri = params.pointer(pointer).and_then(Value::as_str)?.to_owned();
    let rest = uri.strip_prefix(URI_SCHEME)?;
    let (agent, rest) = rest.split_once('/')?;
    let (server, original) = rest.split_once('/')?;
    let item = items
        .iter()
        .find(|i| i.agent() == agent && i.server() == server)?
        .clone();
    *params.pointer_mut(pointer)? = json!(original);
    Some(item)
}

fn answer(id: &Value, result: Result<Value, (i64, String)>) -> Bytes {
    let message = match result {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err((code, message)) => {
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
        }
    };
    Bytes::from(message.to_string())
}

fn error_answer(id: &Value, err: &RelayError) -> Bytes {
    let correlation = CorrelationId::new();
    err.log(&correlation, &"aggregated call");
    Bytes::from(err.to_jsonrpc(Some(id), &correlation).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_carry_the_clients_id() {
        let ok = answer(&json!(7), Ok(json!({})));
        assert_eq!(ok, Bytes::from(r#"{"id":7,"jsonrpc":"2.0","result":{}}"#));
        let err = answer(&json!("a"), Err((-32601, "nope".into())));
        let value: Value = serde_json::from_slice(&err).unwrap();
        assert_eq!(value["error"]["code"], -32601);
        assert_eq!(value["id"], "a");
    }
}
