//! A client of the stateless 2026 era on an upstream of the stateful 2025 era. The relay
//! learns an upstream's era once (it asks `server/discover`; a 2025 server refuses it) and
//! then serves each stateless request of such an upstream itself: a session of its own
//! with the upstream (`initialize` with the request's client capabilities and info), the
//! request, and the session closed with the answer. `server/discover` is answered from the
//! upstream's `initialize` result.
//!
//! Requests the upstream sends the client during a call (sampling, elicitation, roots)
//! cannot reach a stateless client; the call is held open instead and the client gets an
//! `InputRequiredResult` naming them, with a `requestState` that points at the held call.
//! The client's retry carries `inputResponses`, which go to the upstream as the answers it
//! waits for, and the held call goes on. Held calls live in this relay's memory: the retry
//! must reach the same replica, and a held call not continued within the call timeout is
//! closed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::App;
use crate::auth::Principal;
use crate::error::{CorrelationId, RelayError};
use crate::jsonrpc::{self, Kind};
use crate::mcp_endpoint as endpoint;
use crate::router::{ClientSession, OneShot, relay_request_id};

const MODERN: &str = "2026-07-28";
/// The revision the relay speaks to 2025-era upstreams.
const LEGACY: &str = "2025-11-25";
const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
const META_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
const META_LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";
const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
/// How long a learned era is trusted before it is asked again.
const ERA_TTL: std::time::Duration = std::time::Duration::from_secs(60);
/// How long the era probe and the upstream's `initialize` may take.
const SETUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Held calls at once, over the relay.
const MAX_HELD: usize = 1024;
/// Results that carry cache hints (`ttlMs`, `cacheScope`) in the 2026 era.
const CACHEABLE: [&str; 5] = [
    "tools/list",
    "prompts/list",
    "resources/list",
    "resources/templates/list",
    "resources/read",
];

/// An upstream's era, as learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Era {
    /// Speaks 2026-07-28: requests pass through.
    Modern,
    /// Speaks only the 2025 handshake: requests are bridged here.
    Legacy,
}

/// An upstream, as (organisation, agent, server).
type Upstream = (String, String, String);

/// Learned eras and held calls.
#[derive(Debug, Default)]
pub(crate) struct LegacyBridge {
    eras: Mutex<HashMap<Upstream, Learning>>,
    held: Mutex<HashMap<String, Held>>,
}

/// One upstream's era: learned, or being learned by one probe that every concurrent
/// request waits for (a burst of stateless requests must not send a burst of probes,
/// which would crowd out the requests themselves and time each other out).
#[derive(Debug)]
struct Learning {
    /// Set once by the probe; `None` when the upstream could not be reached.
    era: Arc<tokio::sync::OnceCell<Option<Era>>>,
    /// When the probe began; the answer is kept for `ERA_TTL` from then.
    since: Instant,
}

/// A call waiting for the client's input.
#[derive(Debug)]
struct Held {
    /// The key that made it; only it may continue it.
    key_id: String,
    session: Arc<ClientSession>,
    _one_shot: OneShot,
    messages: mpsc::Receiver<Bytes>,
    post: u64,
    /// The id the call has upstream.
    upstream_id: String,
    /// Input key -> the id of the upstream's request it answers.
    asked: HashMap<String, Value>,
    until: Instant,
}

impl LegacyBridge {
    /// The era of `agent`/`server` for `principal`'s organisation: learned, or asked now.
    pub(crate) async fn era(
        &self,
        app: &Arc<App>,
        principal: &Principal,
        agent: &str,
        server: &str,
    ) -> Era {
        let key = (
            principal.org_id.clone(),
            agent.to_owned(),
            server.to_owned(),
        );
        let cell = {
            let mut eras = self.eras();
            match eras.get(&key) {
                Some(learning) if learning.since.elapsed() < ERA_TTL => learning.era.clone(),
                _ => {
                    let cell = Arc::new(tokio::sync::OnceCell::new());
                    let learning = Learning {
                        era: cell.clone(),
                        since: Instant::now(),
                    };
                    eras.insert(key.clone(), learning);
                    cell
                }
            }
        };
        // If the request running the probe goes away, a waiting one runs it instead.
        let learned = *cell
            .get_or_init(|| async {
                let era = probe(app, principal, agent, server).await;
                tracing::debug!(agent, server, ?era, "learned the upstream's era");
                era
            })
            .await;
        match learned {
            Some(era) => era,
            None => {
                // Unreachable now: not remembered, so the next request asks again; this
                // one passes through, which reports why.
                let mut eras = self.eras();
                if eras
                    .get(&key)
                    .is_some_and(|learning| Arc::ptr_eq(&learning.era, &cell))
                {
                    eras.remove(&key);
                }
                Era::Modern
            }
        }
    }

    /// Closes held calls nobody continued in time.
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        self.held_lock().retain(|_, held| held.until > now);
    }

    fn eras(&self) -> MutexGuard<'_, HashMap<Upstream, Learning>> {
        self.eras.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn held_lock(&self) -> MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Asks `server/discover`: a result naming 2026-07-28 is a modern server, any other answer,
/// or none within the setup timeout, a 2025 one. `None` when the upstream could not be
/// reached at all.
async fn probe(app: &Arc<App>, principal: &Principal, agent: &str, server: &str) -> Option<Era> {
    let params = json!({"_meta": {
        META_VERSION: MODERN,
        META_CAPABILITIES: {},
        META_CLIENT_INFO: {"name": "outpost-relay", "version": env!("CARGO_PKG_VERSION")},
    }});
    let mut headers = HeaderMap::new();
    headers.insert("mcp-protocol-version", HeaderValue::from_static(MODERN));
    headers.insert("mcp-method", HeaderValue::from_static("server/discover"));
    let session = endpoint::open_session(app, principal.clone(), agent, server, &headers).ok()?;
    let _one_shot = OneShot::new(app.sessions.clone(), session.clone(), None);
    let answer = match session.call("server/discover", params, SETUP_TIMEOUT).await {
        Ok(answer) => answer,
        // Some 2025 servers never answer a request that comes before `initialize`; a 2026
        // server must answer `server/discover`.
        Err(RelayError::Timeout) => return Some(Era::Legacy),
        Err(_) => return None,
    };
    let modern = answer
        .pointer("/result/supportedVersions")
        .and_then(Value::as_array)
        .is_some_and(|v| v.iter().any(|v| v == MODERN));
    Some(if modern { Era::Modern } else { Era::Legacy })
}

/// Serves one stateless request (already checked against its headers) of a 2025-era
/// upstream.
pub(crate) async fn handle(
    app: &Arc<App>,
    principal: Principal,
    agent: &str,
    server: &str,
    raw: &Bytes,
    streaming: bool,
    slots: Vec<crate::guard::Slot>,
) -> Response {
    let message: Value = serde_json::from_slice(raw).unwrap_or_default();
    let client_id = message.get("id").cloned().unwrap_or(Value::Null);
    let method = message
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let params = message.get("params").cloned().unwrap_or_else(|| json!({}));
    let (tx, rx) = mpsc::channel(64);
    let (app_task, agent, server) = (app.clone(), agent.to_owned(), server.to_owned());
    app.tasks.spawn(async move {
        let app = app_task;
        // The request's in-flight (or listen) slots, held until it is answered.
        let _slots = slots;
        let answer = if method != endpoint::LISTEN_METHOD {
            serve(&app, &principal, &agent, &server, &method, params, &tx).await
        } else if !streaming {
            Err(crate::listen::needs_stream())
        } else {
            crate::listen::bridged(&app, &principal, &agent, &server, &client_id, params, &tx).await
        };
        let message = answer_message(&client_id, &method, answer);
        let _ = tx.send(Bytes::from(message.to_string())).await;
    });
    endpoint::stateless_answer(app, rx, streaming).await
}

/// The answer to the client's request `client_id`: the result as the 2026 era has it, or
/// the error.
pub(crate) fn answer_message(
    client_id: &Value,
    method: &str,
    answer: Result<Value, Refusal>,
) -> Value {
    match answer {
        Ok(result) => {
            json!({"jsonrpc": "2.0", "id": client_id, "result": finish(method, result)})
        }
        Err(Refusal::Rpc(code, text)) => {
            json!({"jsonrpc": "2.0", "id": client_id, "error": {"code": code, "message": text}})
        }
        Err(Refusal::Relay(err)) => {
            let correlation = CorrelationId::new();
            err.log(&correlation, &"bridged request");
            err.to_jsonrpc(Some(client_id), &correlation)
        }
    }
}

/// Adds what the 2026 era requires of a result: `resultType`, and on lists and reads the
/// cache hints. A 2025 server gives none: do not cache, and never share (the answer came
/// from this key's session).
fn finish(method: &str, mut result: Value) -> Value {
    if let Some(object) = result.as_object_mut() {
        object
            .entry("resultType")
            .or_insert_with(|| json!("complete"));
        if CACHEABLE.contains(&method) && object.get("resultType") == Some(&json!("complete")) {
            object.entry("ttlMs").or_insert_with(|| json!(0));
            object
                .entry("cacheScope")
                .or_insert_with(|| json!("private"));
        }
    }
    result
}

/// One stateless request to `agent`/`server`, whatever its era: passed through to a 2026
/// server, bridged to a 2025 one. Returns the answer message (a result or an error), with
/// no id; what comes before it goes to `tx`.
pub(crate) async fn call_any_era(
    app: &Arc<App>,
    principal: &Principal,
    agent: &str,
    server: &str,
    method: &str,
    params: Value,
    tx: &mpsc::Sender<Bytes>,
) -> Result<Value, RelayError> {
    match app.legacy.era(app, principal, agent, server).await {
        Era::Modern => {
            let stop = tokio_util::sync::CancellationToken::new();
            crate::bridge::one_shot_request(
                app, principal, agent, server, method, params, tx, &stop,
            )
            .await
        }
        Era::Legacy => match serve(app, principal, agent, server, method, params, tx).await {
            Ok(result) => Ok(json!({"jsonrpc": "2.0", "result": finish(method, result)})),
            Err(Refusal::Rpc(code, message)) => {
                Ok(json!({"jsonrpc": "2.0", "error": {"code": code, "message": message}}))
            }
            Err(Refusal::Relay(err)) => Err(err),
        },
    }
}

/// Why a bridged request failed.
pub(crate) enum Refusal {
    /// An error the upstream (or the era's rules) gives, passed on.
    Rpc(i64, String),
    /// The relay's own.
    Relay(RelayError),
}

impl From<RelayError> for Refusal {
    fn from(err: RelayError) -> Self {
        Refusal::Relay(err)
    }
}

async fn serve(
    app: &Arc<App>,
    principal: &Principal,
    agent: &str,
    server: &str,
    method: &str,
    mut params: Value,
    tx: &mpsc::Sender<Bytes>,
) -> Result<Value, Refusal> {
    let meta = params.get("_meta").cloned().unwrap_or_else(|| json!({}));
    if let Some(state) = params.get("requestState").and_then(Value::as_str) {
        let held = app.legacy.held_lock().remove(state);
        let Some(held) = held.filter(|h| h.key_id == principal.key_id.0) else {
            return Err(Refusal::Rpc(
                -32602,
                "requestState names no call waiting for input here".into(),
            ));
        };
        let responses = params
            .get("inputResponses")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for (key, upstream_request) in &held.asked {
            let reply = match responses.get(key) {
                Some(result) => json!({"jsonrpc": "2.0", "id": upstream_request, "result": result}),
                None => json!({"jsonrpc": "2.0", "id": upstream_request,
                    "error": {"code": -32602, "message": "the client gave no input for this request"}}),
            };
            held.session.send(Bytes::from(reply.to_string())).await?;
        }
        return follow(app, held, tx).await;
    }

    let (session, one_shot, init) =
        open_legacy_session(app, principal, agent, server, &meta).await?;
    if method == "server/discover" {
        let mut result = json!({
            "supportedVersions": [MODERN],
            "capabilities": init.get("capabilities").cloned().unwrap_or_else(|| json!({})),
            "_meta": {META_SERVER_INFO: init.get("serverInfo").cloned().unwrap_or_else(|| json!({}))},
        });
        if let Some(instructions) = init.get("instructions") {
            result["instructions"] = instructions.clone();
        }
        return Ok(result);
    }

    // The request itself, without the 2026 envelope, under a relay-chosen id.
    if let Some(meta) = params.get_mut("_meta").and_then(Value::as_object_mut) {
        for key in [
            META_VERSION,
            META_CAPABILITIES,
            META_CLIENT_INFO,
            META_LOG_LEVEL,
        ] {
            meta.remove(key);
        }
        if meta.is_empty()
            && let Some(params) = params.as_object_mut()
        {
            params.remove("_meta");
        }
    }
    let upstream_id = relay_request_id();
    let message = json!({"jsonrpc": "2.0", "id": upstream_id, "method": method, "params": params});
    let raw = Bytes::from(message.to_string());
    let kind = jsonrpc::classify(&raw).map_err(|_| RelayError::Internal)?;
    let submission = session
        .submit(vec![(raw, kind)], true)
        .await?
        .ok_or(RelayError::Internal)?;
    let mut initial = submission.initial;
    let (fwd_tx, messages) = mpsc::channel(64);
    // Messages submit already had come first.
    for message in initial.drain(..) {
        let _ = fwd_tx.try_send(message);
    }
    let mut inner = submission.messages;
    app.tasks.spawn(async move {
        while let Some(message) = inner.recv().await {
            if fwd_tx.send(message.body).await.is_err() {
                return;
            }
        }
    });
    let held = Held {
        key_id: principal.key_id.0.clone(),
        session,
        _one_shot: one_shot,
        messages,
        post: submission.post,
        upstream_id: format!("\"{upstream_id}\""),
        asked: HashMap::new(),
        until: Instant::now() + app.config.limits.call_timeout,
    };
    follow(app, held, tx).await
}

/// A session of the relay's own with a 2025-era upstream, as the client of the stateless
/// request (`meta` is its `_meta`) would have opened it: `initialize` with its capabilities
/// and info, `notifications/initialized`, and its log level where the server has logging.
/// Returns the session, the guard that ends it, and the server's `initialize` result.
pub(crate) async fn open_legacy_session(
    app: &Arc<App>,
    principal: &Principal,
    agent: &str,
    server: &str,
    meta: &Value,
) -> Result<(Arc<ClientSession>, OneShot, Value), Refusal> {
    let mut headers = HeaderMap::new();
    headers.insert("mcp-protocol-version", HeaderValue::from_static(LEGACY));
    let session = endpoint::open_session(app, principal.clone(), agent, server, &headers)?;
    let one_shot = OneShot::new(app.sessions.clone(), session.clone(), None);
    let initialize = json!({
        "protocolVersion": LEGACY,
        "capabilities": meta.get(META_CAPABILITIES).cloned().unwrap_or_else(|| json!({})),
        "clientInfo": meta.get(META_CLIENT_INFO).cloned()
            .unwrap_or_else(|| json!({"name": "outpost-relay", "version": env!("CARGO_PKG_VERSION")})),
    });
    let initialized = session
        .call("initialize", initialize, SETUP_TIMEOUT)
        .await?;
    let Some(init) = initialized.get("result").cloned() else {
        return Err(upstream_error(&initialized));
    };
    session
        .send(Bytes::from_static(
            br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        ))
        .await?;
    if let Some(level) = meta.get(META_LOG_LEVEL)
        && init
            .get("capabilities")
            .and_then(|c| c.get("logging"))
            .is_some()
    {
        let _ = session
            .call("logging/setLevel", json!({"level": level}), SETUP_TIMEOUT)
            .await;
    }
    Ok((session, one_shot, init))
}

/// Reads a call's messages: notifications go to the client, the answer ends it, and
/// requests to the client hold it and become an `InputRequiredResult`.
async fn follow(
    app: &Arc<App>,
    mut held: Held,
    tx: &mpsc::Sender<Bytes>,
) -> Result<Value, Refusal> {
    let mut asked = serde_json::Map::new();
    held.asked.clear();
    loop {
        // Requests to the client come together: after the first, wait briefly for more.
        let next = if asked.is_empty() {
            tokio::time::timeout_at(held.until, held.messages.recv()).await
        } else {
            match tokio::time::timeout(std::time::Duration::from_millis(50), held.messages.recv())
                .await
            {
                Ok(message) => Ok(message),
                Err(_) => break,
            }
        };
        let message = match next {
            Ok(Some(message)) => message,
            Ok(None) => return Err(RelayError::SessionClosed.into()),
            Err(_) => {
                let _ = held.session.expire_post(held.post);
                return Err(RelayError::Timeout.into());
            }
        };
        match jsonrpc::classify(&message) {
            Ok(Kind::Response { id, .. }) if id == held.upstream_id => {
                let answer: Value = serde_json::from_slice(&message).unwrap_or_default();
                return match answer.get("result") {
                    Some(result) => Ok(result.clone()),
                    None => Err(upstream_error(&answer)),
                };
            }
            Ok(Kind::Request { method, .. }) => {
                let request: Value = serde_json::from_slice(&message).unwrap_or_default();
                let key = format!("input-{}", held.asked.len() + 1);
                held.asked.insert(
                    key.clone(),
                    request.get("id").cloned().unwrap_or(Value::Null),
                );
                asked.insert(
                    key,
                    json!({"method": method, "params": request.get("params").cloned().unwrap_or_else(|| json!({}))}),
                );
            }
            Ok(Kind::Notification { .. }) => {
                let _ = tx.send(message).await;
            }
            _ => {}
        }
    }
    // Hold the call for the client's retry.
    let state = crate::auth::random_id("", 16);
    {
        let mut table = app.legacy.held_lock();
        if table.len() >= MAX_HELD {
            return Err(RelayError::TooManySessions.into());
        }
        table.insert(state.clone(), held);
    }
    Ok(json!({
        "resultType": "input_required",
        "inputRequests": asked,
        "requestState": state,
    }))
}

fn upstream_error(answer: &Value) -> Refusal {
    let code = answer
        .pointer("/error/code")
        .and_then(Value::as_i64)
        .unwrap_or(-32603);
    let text = answer
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("the upstream refused the request")
        .to_owned();
    Refusal::Rpc(code, text)
}
