//! MCP Streamable HTTP for clients at `/mcp/{agent}/{server}`: POST carries client
//! messages and answers with SSE (or JSON), GET opens the session's server stream, DELETE
//! ends the session. Owns the HTTP side of the session model: authentication, size and
//! media-type checks, `Mcp-Session-Id`, SSE framing and keep-alives.
//!
//! This is a pass-through, not an MCP server: messages travel as opaque bytes and the
//! upstream answers them, so rmcp's `StreamableHttpService` (which runs a local handler)
//! does not fit here. See `router.rs` for how answers find their POST.

use std::collections::VecDeque;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval};
use tokio_util::sync::CancellationToken;

use crate::App;
use crate::auth::{self, Principal};
use crate::error::{CorrelationId, RelayError, set_correlation};
use crate::jsonrpc::{self, Invalid, Kind};
use crate::replay::StreamName;
use crate::router::{ClientSession, Dispatcher, OneShot, Outbound, Rest, RestPart, Submission};

/// `POST /mcp/{agent}/{server}`
pub(crate) async fn post(
    State(app): State<Arc<App>>,
    Path((agent, server)): Path<(String, String)>,
    request: Request,
) -> Response {
    let correlation = CorrelationId::new();
    let (parts, body) = request.into_parts();
    let mut body = Some(body);
    let result = handle_post(&app, &agent, &server, &parts, &mut body, &correlation).await;
    if let Some(mut unread) = body {
        // Refused before its body was read: take the rest in, so the client reads the
        // answer instead of a reset connection.
        crate::body::discard(&mut unread).await;
    }
    respond(result, &correlation, "POST", &agent, &server)
}

/// `GET /mcp/{agent}/{server}`: the session's stream of server-initiated messages, or,
/// with `Last-Event-ID`, the resumption of the session's stream that id names (a POST's
/// or the GET stream): what it missed, then what comes next.
pub(crate) async fn get(
    State(app): State<Arc<App>>,
    Path((agent, server)): Path<(String, String)>,
    peer: Option<axum::Extension<crate::admin::PeerAddr>>,
    headers: HeaderMap,
) -> Response {
    let correlation = CorrelationId::new();
    let result = async {
        let (principal, session) = existing_session(&app, &agent, &server, &headers, peer).await?;
        if !accepts(&headers, "text/event-stream") {
            return Err(RelayError::NotAcceptable);
        }
        if let Some(last) = headers.get(LAST_EVENT_ID_HEADER) {
            let resumed = last
                .to_str()
                .map_err(|_| RelayError::LastEventIdInvalid)
                .and_then(|last| session.resume(last));
            app.metrics.resumption(match &resumed {
                Ok(_) => "resumed",
                Err(RelayError::LastEventIdEvicted) => "evicted",
                Err(RelayError::LastEventIdInvalid) => "invalid",
                Err(_) => "unknown",
            });
            let resumed = resumed?;
            let filter = scope_filter(&principal, None);
            let get_stream = resumed.stream == StreamName::Get;
            let stream = SseStream {
                initial: resumed
                    .replay
                    .into_iter()
                    .map(|out| Outbound {
                        body: filter(out.body),
                        ..out
                    })
                    .collect(),
                messages: resumed.messages,
                keepalive: keepalive(&app),
                deadline: resumed.deadline,
                session: session.clone(),
                // A resumed POST stream, like the POST's own, ends with its answers.
                stop: if get_stream {
                    app.shutdown.clone()
                } else {
                    CancellationToken::new()
                },
                get_stream,
                filter: Box::new(filter),
                resumable: Some(resumed.stream),
                prelude: None,
                rest_of_event: VecDeque::new(),
                arriving: None,
                _slots: Vec::new(),
                one_shot: None,
            };
            return Ok(sse_response(stream, None));
        }
        let (before, messages) = session.attach_resumable_get_stream()?;
        let stream = SseStream {
            initial: VecDeque::new(),
            messages,
            keepalive: keepalive(&app),
            deadline: None,
            session: session.clone(),
            stop: app.shutdown.clone(),
            get_stream: true,
            filter: Box::new(|message| message),
            resumable: Some(StreamName::Get),
            prelude: priming(&headers, &session, StreamName::Get, before),
            rest_of_event: VecDeque::new(),
            arriving: None,
            _slots: Vec::new(),
            one_shot: None,
        };
        Ok(sse_response(stream, None))
    }
    .await;
    respond(result, &correlation, "GET", &agent, &server)
}

/// `DELETE /mcp/{agent}/{server}`: ends the session and its upstream.
pub(crate) async fn delete(
    State(app): State<Arc<App>>,
    Path((agent, server)): Path<(String, String)>,
    peer: Option<axum::Extension<crate::admin::PeerAddr>>,
    headers: HeaderMap,
) -> Response {
    let correlation = CorrelationId::new();
    let result = async {
        let (principal, session) = existing_session(&app, &agent, &server, &headers, peer).await?;
        app.bridges.remove(&session.id);
        if app.sessions.delete(&session.id, &principal).await {
            Ok(StatusCode::NO_CONTENT.into_response())
        } else {
            Err(RelayError::SessionNotFound)
        }
    }
    .await;
    respond(result, &correlation, "DELETE", &agent, &server)
}

/// Turns a handler's result into the response, logging an error under the correlation id,
/// and adds the correlation header either way.
fn respond(
    result: Result<Response, RelayError>,
    correlation: &CorrelationId,
    method: &str,
    agent: &str,
    server: &str,
) -> Response {
    let mut response = result.unwrap_or_else(|err| {
        err.log(correlation, &format_args!("{method} /mcp/{agent}/{server}"));
        err.into_http(correlation)
    });
    set_correlation(&mut response, correlation);
    response
}

async fn handle_post(
    app: &Arc<App>,
    agent: &str,
    server: &str,
    parts: &http::request::Parts,
    body: &mut Option<Body>,
    correlation: &CorrelationId,
) -> Result<Response, RelayError> {
    check_names(agent, server)?;
    check_headers(app, &parts.headers)?;
    let principal = authenticate(app, &parts.headers, &parts.extensions, correlation).await?;
    if principal.role == "viewer" {
        // Viewers read usage and agents; calling tools takes a member.
        return Err(RelayError::InsufficientScope("server with a viewer key"));
    }
    if !principal.scope.allows_server(agent, server) {
        return Err(RelayError::InsufficientScope("server"));
    }
    let headers = &parts.headers;
    if !is_json(headers) {
        return Err(RelayError::UnsupportedMediaType);
    }
    let streaming = accepts(headers, "text/event-stream");
    if !streaming && !accepts(headers, "application/json") {
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
    check_depth(&body, app.config.limits.max_json_depth)?;
    let messages = parse_messages(&body)?;
    let stateless = is_stateless(headers);
    let requests: Vec<Value> = messages
        .iter()
        .filter_map(|(_, kind)| match kind {
            Kind::Request { id, .. } => serde_json::from_str(id).ok(),
            _ => None,
        })
        .collect();
    if stateless && let Err(err) = check_method_headers(headers, &messages) {
        return Ok(refuse_requests(&err, &requests, correlation));
    }
    // The key's bucket, then per call: the tool must be in scope and under its rate, and
    // the key and agent under their in-flight caps. A refusal answers every request of
    // the POST by its id.
    if let Err(limited) =
        app.guard
            .admit_request(&principal.key_id.0, principal.rate, principal.burst)
    {
        return Ok(refuse_requests(
            &limited_error(app, &limited),
            &requests,
            correlation,
        ));
    }
    let mut slots = Vec::new();
    let mut tool_lists = std::collections::HashSet::new();
    for (_, kind) in &messages {
        let Kind::Request { id, method, .. } = kind else {
            continue;
        };
        let tool = kind.tool();
        if method == "tools/call" && tool.is_none() {
            return Ok(refuse_requests(
                &RelayError::InvalidRequest("tools/call needs a readable params.name"),
                &requests,
                correlation,
            ));
        }
        if let Some(tool) = tool {
            if !principal.scope.allows_tool(tool) {
                return Ok(refuse_requests(
                    &RelayError::InsufficientScope("tool"),
                    &requests,
                    correlation,
                ));
            }
            if let Err(limited) = app.guard.admit_tool(&principal.key_id.0, tool) {
                return Ok(refuse_requests(
                    &limited_error(app, &limited),
                    &requests,
                    correlation,
                ));
            }
        }
        if method == "tools/list" && principal.scope.limits_tools() {
            tool_lists.insert(id.clone());
        }
        let admitted = if method == LISTEN_METHOD {
            // A listen stream stays open as long as its client wants: it takes a listen
            // slot of the key, not an in-flight call slot it would hold forever.
            Some(app.guard.admit_listen(&principal.key_id.0))
        } else if !matches!(method.as_str(), "initialize" | "ping") {
            Some(
                app.guard
                    .admit_call(&principal.key_id.0, &principal.org_id, agent),
            )
        } else {
            None
        };
        match admitted {
            Some(Ok(slot)) => slots.push(slot),
            Some(Err(limited)) => {
                return Ok(refuse_requests(
                    &limited_error(app, &limited),
                    &requests,
                    correlation,
                ));
            }
            None => {}
        }
    }
    let listening = messages
        .iter()
        .any(|(_, kind)| matches!(kind, Kind::Request { method, .. } if method == LISTEN_METHOD));
    let rotation = rotation_headers(&principal);
    let filter = scope_filter(&principal, Some(tool_lists));

    let mut one_shot = None;
    let (session, created) = match session_id(headers) {
        Some(id) => {
            let session = app
                .sessions
                .get(id, &principal)
                .filter(|s| s.agent == agent && s.server == server)
                .ok_or(RelayError::SessionNotFound)?;
            if let Some(bridge) = app.bridges.get(&session.id) {
                drop(slots);
                return Ok(crate::bridge::handle(app, bridge, messages, streaming).await);
            }
            (session, false)
        }
        None if stateless
            && app.legacy.era(app, &principal, agent, server).await
                == crate::bridge_legacy::Era::Legacy =>
        {
            let Some((raw, Kind::Request { .. })) = messages.first() else {
                // A notification to a bridged 2025 upstream has no session to reach.
                return Ok(StatusCode::ACCEPTED.into_response());
            };
            return Ok(crate::bridge_legacy::handle(
                app, principal, agent, server, raw, streaming, slots,
            )
            .await);
        }
        None if stateless => match open_one_shot(app, principal, agent, server, headers) {
            Ok((session, shot)) => {
                one_shot = Some(shot);
                (session, false)
            }
            Err(err) => return Ok(answer_requests_with(&err, &requests, correlation)),
        },
        None => {
            let initialize = messages.iter().any(
                |(_, kind)| matches!(kind, Kind::Request { method, .. } if method == "initialize"),
            );
            if !initialize {
                return Err(RelayError::SessionRequired);
            }
            match open_session(app, principal, agent, server, headers) {
                Ok(session) => (session, true),
                Err(err) => return Ok(answer_requests_with(&err, &requests, correlation)),
            }
        }
    };
    let initialize: Option<Value> = created
        .then(|| {
            messages.iter().find_map(|(raw, kind)| match kind {
                Kind::Request { method, .. } if method == "initialize" => {
                    serde_json::from_slice(raw).ok()
                }
                _ => None,
            })
        })
        .flatten();
    // A 2025-era SSE response can be resumed with `Last-Event-ID` if the client's
    // connection breaks; a new session's first answers are read whole, and a stateless
    // request has no session to resume in.
    let resumable = streaming && !stateless && !created;
    let forwarding = {
        let session = session.clone();
        async move {
            if resumable {
                session.submit_resumable(messages).await
            } else {
                session.submit(messages, streaming).await
            }
        }
    };
    let submitted = finish_detached(&app.tasks, forwarding)
        .await
        .unwrap_or(Err(RelayError::Internal));
    let submission = match submitted {
        Ok(Some(submission)) => submission,
        Ok(None) => return Ok(StatusCode::ACCEPTED.into_response()),
        Err(err) => return Ok(answer_requests_with(&err, &requests, correlation)),
    };
    let session_header = created.then(|| session.id.clone());
    let deadline = Instant::now() + app.config.limits.call_timeout;
    if let Some(initialize) = initialize {
        // A new session: its answers are read whole, so that an upstream of the 2026 era
        // (which refuses `initialize`) can be bridged before the client hears of it.
        let mut answers = submission.initial;
        let mut messages = submission.messages;
        loop {
            match tokio::time::timeout_at(deadline, messages.recv()).await {
                Ok(Some(message)) => answers.push(message.body),
                Ok(None) => break,
                Err(_) => {
                    answers.extend(session.expire_post(submission.post));
                    break;
                }
            }
        }
        if let Some(answer) =
            crate::bridge::bridge_if_modern(app, &session, &initialize, &answers).await
        {
            answers = vec![answer];
        }
        drop(slots);
        let answers: Vec<Bytes> = answers.into_iter().map(filter).collect();
        let mut response = if accepts(headers, "application/json") {
            json_response(answers)
        } else {
            let (tx, rx) = mpsc::channel(answers.len().max(1));
            for answer in answers {
                let _ = tx.try_send(answer);
            }
            channel_sse(app, rx)
        };
        if let Some(id) = session_header.and_then(|id| HeaderValue::from_str(&id).ok()) {
            response.headers_mut().insert(SESSION_HEADER, id);
        }
        response.headers_mut().extend(rotation);
        return Ok(response);
    }
    if streaming {
        let Submission {
            post,
            initial,
            mut messages,
        } = submission;
        let mut initial: VecDeque<Bytes> = initial.into_iter().collect();
        let resumable = resumable.then_some(StreamName::Post(post));
        let prelude = resumable.and_then(|stream| priming(headers, &session, stream, 0));
        // The headers wait for the first message, so that a quick answer leaves in the same
        // write (and TLS record) as the headers and the client reads both at once: up to one
        // keep-alive period, after which the stream opens with a keep-alive comment. A
        // client that gets a priming event (2025-11-25 on), whose point is to be there from
        // the start, waits only a moment for it.
        let mut held = None;
        let mut waited = false;
        if initial.is_empty() {
            let hold = if prelude.is_some() {
                PRIMING_HOLD
            } else {
                app.config.limits.sse_keepalive
            };
            let first =
                tokio::time::timeout_at((Instant::now() + hold).min(deadline), messages.recv());
            match driven(&mut one_shot, first).await {
                Ok(first) => held = first,
                Err(_) => waited = prelude.is_none(),
            }
        }
        if stateless {
            // A stateless answer's HTTP status depends on its error (404 for an unknown
            // method, 400 for a bad request), so a lone answer goes back as JSON with its
            // status; anything else (progress, logs, input requests) opens the SSE stream.
            if let Some(message) = initial
                .pop_front()
                .or_else(|| held.take().map(|first| first.body))
            {
                match answer_status(&message) {
                    Some(status) => {
                        drop(slots);
                        drop(one_shot);
                        let mut response = json_response(vec![filter(message)]);
                        *response.status_mut() = status;
                        response.headers_mut().extend(rotation);
                        return Ok(response);
                    }
                    None => initial.push_front(message),
                }
            }
        }
        let initial: VecDeque<Outbound> = initial
            .into_iter()
            .map(|body| Outbound::whole(None, body))
            .chain(held)
            .map(|message| match message.rest {
                // An answer going on as it arrives: a `tools/call`'s, which the filter
                // leaves as it is (see `SseStream::render_filtered`).
                Some(_) => message,
                None => Outbound {
                    body: filter(message.body),
                    ..message
                },
            })
            .collect();
        let prelude = prelude.or_else(|| waited.then(|| Bytes::from_static(KEEPALIVE_COMMENT)));
        let stream = SseStream {
            initial,
            messages,
            keepalive: keepalive(app),
            // A listen stream has no answer to wait for: it lasts while the client stays.
            deadline: (!listening).then_some((deadline, post)),
            prelude,
            rest_of_event: VecDeque::new(),
            arriving: None,
            session,
            stop: CancellationToken::new(),
            get_stream: false,
            filter: Box::new(filter),
            resumable,
            _slots: slots,
            one_shot,
        };
        let mut response = sse_response(stream, session_header);
        response.headers_mut().extend(rotation);
        Ok(response)
    } else {
        let mut answers = submission.initial;
        let mut messages = submission.messages;
        loop {
            let next = tokio::time::timeout_at(deadline, messages.recv());
            match driven(&mut one_shot, next).await {
                Ok(Some(message)) => answers.push(message.body),
                Ok(None) => break,
                Err(_) => {
                    answers.extend(session.expire_post(submission.post));
                    // An answer that raced the deadline is already in the channel, which
                    // closes now that the POST is gone: take it too.
                    while let Ok(Some(message)) = driven(
                        &mut one_shot,
                        tokio::time::timeout(LATE_ANSWER_WAIT, messages.recv()),
                    )
                    .await
                    {
                        answers.push(message.body);
                    }
                    break;
                }
            }
        }
        drop(slots);
        drop(one_shot);
        let status = match answers.as_slice() {
            [only] if stateless => stateless_status(only),
            _ => StatusCode::OK,
        };
        let mut response = json_response(answers.into_iter().map(filter).collect());
        *response.status_mut() = status;
        if let Some(id) = session_header.and_then(|id| HeaderValue::from_str(&id).ok()) {
            response.headers_mut().insert(SESSION_HEADER, id);
        }
        response.headers_mut().extend(rotation);
        Ok(response)
    }
}

/// Runs `future` to its end even if the caller is dropped on the way: a client that hangs
/// up mid-request must not cut a message in half on the tunnel (which would end the
/// session). A future done at its first poll (the usual case: the messages fit the
/// stream's credit) finishes here, with no task of its own. Spawning it would wake the
/// runtime's other worker for every request, and let the tunnel's writer send a new
/// stream's `Open` in one write and its message in the next. `None` if the task it went on
/// in panicked; a panic at the first poll unwinds here, like one anywhere in the handler.
async fn finish_detached<F>(tasks: &tokio_util::task::TaskTracker, future: F) -> Option<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let mut future = Box::pin(future);
    if let std::task::Poll::Ready(output) = futures_util::poll!(future.as_mut()) {
        return Some(output);
    }
    // Pending: the rest runs in a task, which polls it from where this poll left it.
    tasks.spawn(future).await.ok()
}

/// Resolves the agent and server, opens a tunnel stream and creates the session, its
/// dispatcher running in a task of its own.
pub(crate) fn open_session(
    app: &Arc<App>,
    principal: Principal,
    agent: &str,
    server: &str,
    headers: &HeaderMap,
) -> Result<Arc<ClientSession>, RelayError> {
    let (session, dispatcher) = open(app, principal, agent, server, headers)?;
    app.tasks.spawn(dispatcher);
    Ok(session)
}

/// As [`open_session`], for one stateless request whose handler runs the session's
/// dispatcher itself ([`OneShot::drive`]).
fn open_one_shot(
    app: &Arc<App>,
    principal: Principal,
    agent: &str,
    server: &str,
    headers: &HeaderMap,
) -> Result<(Arc<ClientSession>, OneShot), RelayError> {
    let (session, dispatcher) = open(app, principal, agent, server, headers)?;
    let one_shot = OneShot::new(app.sessions.clone(), session.clone(), Some(dispatcher));
    Ok((session, one_shot))
}

/// Resolves the agent and server, opens a tunnel stream to the server and creates the
/// session on it; its dispatcher is for the caller to run.
fn open(
    app: &Arc<App>,
    principal: Principal,
    agent: &str,
    server: &str,
    headers: &HeaderMap,
) -> Result<(Arc<ClientSession>, Dispatcher), RelayError> {
    let handle = app
        .agents
        .get(&principal.org_id, agent)
        .ok_or_else(|| RelayError::AgentOffline(agent.to_owned()))?;
    if !handle.servers().iter().any(|s| s == server) {
        return Err(RelayError::UnknownServer);
    }
    if !handle.is_available() {
        return Err(RelayError::AgentBusy);
    }
    // Fixed headers, and the `Mcp-Param-*` headers a 2026-era client mirrors from tool
    // arguments for the upstream to read.
    let meta: Vec<(String, String)> = headers
        .iter()
        .filter(|(name, _)| {
            FORWARDED_HEADERS.contains(&name.as_str())
                || name.as_str().starts_with(PARAM_HEADER_PREFIX)
        })
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect();
    tracing::debug!(agent_id = %handle.agent_id, server, "opening a stream for a new session");
    let stream = handle
        .tunnel
        .open_stream(server, meta)
        .map_err(|err| match err {
            outpost_tunnel::OpenError::TooManyStreams(_) => RelayError::AgentBusy,
            _ => RelayError::AgentOffline(agent.to_owned()),
        })?;
    app.sessions.create(
        principal,
        agent,
        server,
        stream,
        app.usage.clone(),
        &app.tasks,
        &app.close,
        app.config.limits.call_timeout,
    )
}

async fn existing_session(
    app: &Arc<App>,
    agent: &str,
    server: &str,
    headers: &HeaderMap,
    peer: Option<axum::Extension<crate::admin::PeerAddr>>,
) -> Result<(Principal, Arc<ClientSession>), RelayError> {
    check_names(agent, server)?;
    check_headers(app, headers)?;
    let mut extensions = http::Extensions::new();
    if let Some(axum::Extension(peer)) = peer {
        extensions.insert(peer);
    }
    let principal = authenticate(app, headers, &extensions, &CorrelationId::new()).await?;
    if principal.role == "viewer" {
        // Viewers read usage and agents; calling tools takes a member.
        return Err(RelayError::InsufficientScope("server with a viewer key"));
    }
    if !principal.scope.allows_server(agent, server) {
        return Err(RelayError::InsufficientScope("server"));
    }
    let id = session_id(headers).ok_or(RelayError::SessionRequired)?;
    let session = app
        .sessions
        .get(id, &principal)
        .filter(|s| s.agent == agent && s.server == server)
        .ok_or(RelayError::SessionNotFound)?;
    Ok((principal, session))
}

/// Authenticates a client key. A failure is counted against the source; a source over
/// its failure limit waits for a 429 instead of getting a 401 at once. A valid key is
/// never slowed.
pub(crate) async fn authenticate(
    app: &Arc<App>,
    headers: &HeaderMap,
    extensions: &http::Extensions,
    correlation: &CorrelationId,
) -> Result<Principal, RelayError> {
    let result = match auth::bearer(headers.get(header::AUTHORIZATION)) {
        Ok(key) => {
            app.verified_keys
                .authenticate(app.store.as_ref(), &app.pepper, app.config.environment, key)
                .await
        }
        Err(err) => Err(err),
    };
    match result {
        Ok(principal) => {
            app.note_key_used(&principal);
            Ok(principal)
        }
        Err(auth::AuthError::Store(err)) => {
            tracing::error!(%err, "store unavailable during authentication");
            Err(RelayError::Internal)
        }
        Err(err) => {
            tracing::info!(reason = %err, correlation = %correlation.0, "client key refused");
            app.note_refused_key(&err, headers, extensions, correlation);
            match app.note_auth_failure(headers, extensions, correlation) {
                Some(delay) => {
                    tokio::time::sleep(delay).await;
                    Err(RelayError::TooManyFailures)
                }
                None => Err(RelayError::Unauthorized),
            }
        }
    }
}

/// The relay's answer to a rate limit or cap, counted.
pub(crate) fn limited_error(app: &App, limited: &crate::guard::Limited) -> RelayError {
    let scope = match limited {
        crate::guard::Limited::Rate { scope, .. }
        | crate::guard::Limited::Concurrency { scope, .. } => *scope,
    };
    app.metrics.limited(scope);
    RelayError::RateLimited {
        retry_after: limited.retry_after_secs(),
        scope,
    }
}

/// Refuses a whole POST: its status (403, 429), the error's headers, and a JSON-RPC error
/// for each request so SDKs match them by id.
pub(crate) fn refuse_requests(
    err: &RelayError,
    requests: &[Value],
    correlation: &CorrelationId,
) -> Response {
    err.log(correlation, &"POST refused");
    let answers: Vec<Bytes> = if requests.is_empty() {
        vec![Bytes::from(err.to_jsonrpc(None, correlation).to_string())]
    } else {
        requests
            .iter()
            .map(|id| Bytes::from(err.to_jsonrpc(Some(id), correlation).to_string()))
            .collect()
    };
    let mut response = json_response(answers);
    *response.status_mut() = err.status();
    err.add_headers(&mut response);
    set_correlation(&mut response, correlation);
    response
}

/// What a client's stream passes through for this key: tools out of its scope removed
/// from the answers to `lists` (the ids of its `tools/list` requests), or, when the ids
/// are not known (a resumed stream), from any answer that lists tools.
fn scope_filter(
    principal: &Principal,
    lists: Option<std::collections::HashSet<String>>,
) -> impl Fn(Bytes) -> Bytes + Send + 'static {
    let scope = principal.scope.clone();
    let filters = match &lists {
        Some(lists) => !lists.is_empty(),
        None => scope.limits_tools(),
    };
    move |message: Bytes| -> Bytes {
        if filters {
            filter_tool_list(message, lists.as_ref(), &scope)
        } else {
            message
        }
    }
}

/// Removes tools out of the key's scope from a `tools/list` result it asked for (any
/// result that lists tools, when `lists` is `None`).
fn filter_tool_list(
    message: Bytes,
    lists: Option<&std::collections::HashSet<String>>,
    scope: &crate::scope::Scope,
) -> Bytes {
    let Ok(mut value) = serde_json::from_slice::<Value>(&message) else {
        return message;
    };
    let is_list_answer = value
        .get("id")
        .map(|id| lists.is_none_or(|lists| lists.contains(&id.to_string())))
        .unwrap_or(false);
    if !is_list_answer {
        return message;
    }
    if let Some(tools) = value
        .get_mut("result")
        .and_then(|r| r.get_mut("tools"))
        .and_then(Value::as_array_mut)
    {
        tools.retain(|tool| {
            tool.get("name")
                .and_then(Value::as_str)
                .is_some_and(|name| scope.allows_tool(name))
        });
    }
    serde_json::to_vec(&value)
        .map(Bytes::from)
        .unwrap_or(message)
}

/// During a rotation's overlap, tells the client its key is going away (RFC 8594).
fn rotation_headers(principal: &Principal) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let (Some(replaced_by), Some(expires_at)) = (&principal.replaced_by, principal.expires_at) {
        let when = std::time::UNIX_EPOCH
            + std::time::Duration::from_millis(u64::try_from(expires_at).unwrap_or(0));
        if let Ok(value) = HeaderValue::from_str(&httpdate::fmt_http_date(when)) {
            headers.insert("sunset", value);
        }
        if let Ok(value) = HeaderValue::from_str(replaced_by) {
            headers.insert("outpost-key-replaced-by", value);
        }
    }
    headers
}

/// Refuses JSON nested deeper than `max` (objects and arrays), without parsing it.
pub(crate) fn check_depth(body: &[u8], max: usize) -> Result<(), RelayError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return Err(RelayError::TooDeep(max));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Refuses a `Host` outside `http.allowed_hosts` (when set), an `Origin` outside
/// `http.allowed_origins`, and an `MCP-Protocol-Version` this relay does not serve.
pub(crate) fn check_headers(app: &App, headers: &HeaderMap) -> Result<(), RelayError> {
    let allowed = &app.config.http;
    if !allowed.allowed_hosts.is_empty() {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let bare = host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                name
            } else {
                host
            }
        });
        if !allowed
            .allowed_hosts
            .iter()
            .any(|a| a.eq_ignore_ascii_case(host) || a.eq_ignore_ascii_case(bare))
        {
            return Err(RelayError::ForbiddenOrigin("Host"));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if !allowed
            .allowed_origins
            .iter()
            .any(|a| a.eq_ignore_ascii_case(origin))
        {
            return Err(RelayError::ForbiddenOrigin("Origin"));
        }
    }
    if let Some(version) = headers.get(PROTOCOL_VERSION_HEADER) {
        let version = version.to_str().unwrap_or("");
        // A stateless request's version is the upstream's to judge: it answers -32022
        // with the versions it supports.
        if !SUPPORTED_PROTOCOL_VERSIONS.contains(&version) && !is_stateless(headers) {
            return Err(RelayError::UnsupportedProtocolVersion);
        }
    }
    Ok(())
}

fn check_names(agent: &str, server: &str) -> Result<(), RelayError> {
    if !crate::is_valid_name(agent) {
        return Err(RelayError::InvalidName("agent"));
    }
    if !crate::is_valid_name(server) {
        return Err(RelayError::InvalidName("server"));
    }
    Ok(())
}

pub(crate) fn parse_messages(body: &Bytes) -> Result<Vec<(Bytes, Kind)>, RelayError> {
    let raw = jsonrpc::split_body(body).map_err(invalid)?;
    raw.into_iter()
        .map(|message| {
            let kind = jsonrpc::classify(&message).map_err(invalid)?;
            Ok((message, kind))
        })
        .collect()
}

fn invalid(err: Invalid) -> RelayError {
    match err {
        Invalid::NotJson => RelayError::Parse,
        Invalid::NotJsonRpc => RelayError::InvalidRequest("not a JSON-RPC message"),
    }
}

/// Answers each request of a POST with the same error, as JSON-RPC in an HTTP 200, or
/// with the error's HTTP status when the POST had no request to answer.
fn answer_requests_with(
    err: &RelayError,
    requests: &[Value],
    correlation: &CorrelationId,
) -> Response {
    err.log(correlation, &"call not delivered");
    if requests.is_empty() {
        let status = err.status();
        let body = err.to_jsonrpc(None, correlation);
        return (status, axum::Json(body)).into_response();
    }
    let answers = requests
        .iter()
        .map(|id| Bytes::from(err.to_jsonrpc(Some(id), correlation).to_string()))
        .collect();
    json_response(answers)
}

pub(crate) fn json_response(answers: Vec<Bytes>) -> Response {
    let body = match answers.len() {
        1 => answers.into_iter().next().unwrap_or_default(),
        _ => {
            let mut buf = BytesMut::new();
            buf.put_u8(b'[');
            for (i, answer) in answers.iter().enumerate() {
                if i > 0 {
                    buf.put_u8(b',');
                }
                buf.put_slice(answer);
            }
            buf.put_u8(b']');
            buf.freeze()
        }
    };
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

// === SSE ===

/// One SSE response: messages from a channel, keep-alive comments, and for POSTs a
/// deadline after which unanswered requests get a timeout error.
struct SseStream {
    initial: VecDeque<Outbound>,
    messages: mpsc::Receiver<Outbound>,
    keepalive: Interval,
    deadline: Option<(Instant, u64)>,
    session: Arc<ClientSession>,
    /// Ends the stream on relay shutdown (GET streams only; POSTs finish their calls).
    stop: CancellationToken,
    /// A GET stream ends with its session; a POST's ends with its answers.
    get_stream: bool,
    /// Applied to each message before it is sent (hides tools out of the key's scope).
    filter: Box<dyn Fn(Bytes) -> Bytes + Send>,
    /// The session's stream this response carries, when it can be resumed: its events
    /// get ids, and once it has delivered a complete stream the kept events are released.
    resumable: Option<StreamName>,
    /// Sent first: the priming event (an id, no data) of MCP 2025-11-25, or a keep-alive
    /// comment when the headers waited a whole period for a first message.
    prelude: Option<Bytes>,
    /// The frames of the event being sent that are still to go (see [`EventFrames`]).
    rest_of_event: VecDeque<Bytes>,
    /// The rest of a message being sent as it arrives (see [`Outbound::rest`]).
    arriving: Option<Rest>,
    /// In-flight slots the POST holds until its stream ends.
    _slots: Vec<crate::guard::Slot>,
    /// A stateless request's session, ended with the stream; its dispatcher, if inline,
    /// runs while the stream waits for messages.
    one_shot: Option<OneShot>,
}

impl SseStream {
    /// One message as an SSE event, with its id when the stream is resumable: the event's
    /// first body frame, the others queued behind it. A message still arriving opens its
    /// event, which [`Self::next_part`] goes on with.
    fn render(&mut self, message: Outbound) -> Bytes {
        if let Some(rest) = message.rest {
            self.arriving = Some(rest);
            return sse_event_start(&message.body);
        }
        let id = self.event_id(message.seq);
        sse_frames(&message.body, id.as_deref()).first_queuing_rest(&mut self.rest_of_event)
    }

    fn event_id(&self, seq: Option<u64>) -> Option<String> {
        seq.zip(self.resumable)
            .map(|(seq, stream)| self.session.event_id(stream, seq))
    }

    /// A message from the channel: filtered, then rendered. A message still arriving is
    /// an answer to a `tools/call`, which the filter leaves as it is.
    fn render_filtered(&mut self, message: Outbound) -> Bytes {
        if message.rest.is_some() {
            return self.render(message);
        }
        let body = (self.filter)(message.body);
        self.render(Outbound { body, ..message })
    }

    /// The next frame of the message being sent as it arrives. One that broke off ends
    /// its event with the type `abandoned` in place of `message` ([`ABANDONED_END`]): SSE
    /// takes an event's last `event:` line as its type, and a client hands only `message`
    /// events to JSON-RPC, so what came of it is dropped (as a browser's `EventSource`
    /// drops an event no listener is for) and the stream goes on. The error answering the
    /// call in its place follows as a message of its own.
    async fn next_part(&mut self) -> Bytes {
        let Some(rest) = self.arriving.as_mut() else {
            return Bytes::new();
        };
        match rest.recv().await {
            Some(RestPart::More(part)) => sse_data_part(part),
            Some(RestPart::Last { part, seq }) => {
                self.arriving = None;
                let end = match self.event_id(seq) {
                    // SSE takes an event's fields in any order: its id goes last, as it
                    // is known only now.
                    Some(id) => Bytes::from(format!("\nid: {id}\n\n")),
                    None => Bytes::from_static(EVENT_END),
                };
                self.rest_of_event.push_back(end);
                sse_data_part(part)
            }
            None => {
                self.arriving = None;
                Bytes::from_static(ABANDONED_END)
            }
        }
    }

    /// The channel closed: everything the stream had was handed to the connection.
    fn delivered(&self) {
        if let Some(stream) = self.resumable {
            self.session.release_delivered(stream);
        }
    }

    async fn next_from_channel(&mut self) -> Option<Bytes> {
        match self.messages.recv().await {
            Some(message) => Some(self.render_filtered(message)),
            None => {
                self.delivered();
                None
            }
        }
    }
}

impl Drop for SseStream {
    /// A client that closes its connection as soon as it has the answer (the Python SDK
    /// does) may drop the response before it sees the channel close: if everything was
    /// handed over by then, the stream counts as delivered all the same.
    fn drop(&mut self) {
        if self.initial.is_empty()
            && self.rest_of_event.is_empty()
            && self.arriving.is_none()
            && self.messages.is_closed()
            && self.messages.is_empty()
        {
            self.delivered();
        }
    }
}

fn sse_response(stream: SseStream, session_header: Option<String>) -> Response {
    let body = futures_util::stream::unfold(stream, |mut s| async move {
        if let Some(prelude) = s.prelude.take() {
            return Some((Ok::<_, std::convert::Infallible>(prelude), s));
        }
        if let Some(frame) = s.rest_of_event.pop_front() {
            return Some((Ok(frame), s));
        }
        if s.arriving.is_some() {
            // No deadline or keep-alive meanwhile: the answer is here, arriving. A
            // stateless request's session, whose dispatcher may run here, has none.
            let part = s.next_part().await;
            return Some((Ok(part), s));
        }
        if let Some(message) = s.initial.pop_front() {
            let event = s.render(message);
            return Some((Ok(event), s));
        }
        let deadline = s.deadline.map(|(at, _)| at);
        // A stateless request's dispatcher runs here, while the stream waits for what
        // it hands over (see `OneShot::drive`); it goes back into the stream with it.
        let mut one_shot = s.one_shot.take();
        let next = async move {
            tokio::select! {
            biased;
            message = s.messages.recv() => match message {
                Some(message) => {
                    let event = s.render_filtered(message);
                    Some((Ok(event), s))
                }
                None => {
                    s.delivered();
                    None
                }
            },
            _ = sleep_until_opt(deadline) => {
                if let Some((_, post)) = s.deadline.take() {
                    // The POST is gone from the session, so its channel closes once any
                    // answer that raced the deadline has been read: the stream ends then.
                    s.initial.extend(s.session.expire_post_events(post));
                }
                match s.initial.pop_front() {
                    Some(message) => {
                        let event = s.render(message);
                        Some((Ok(event), s))
                    }
                    // Nothing expired: the last answer is on its way through the channel.
                    None => s.next_from_channel().await.map(|event| (Ok(event), s)),
                }
            }
            _ = s.keepalive.tick() => Some((Ok(Bytes::from_static(KEEPALIVE_COMMENT)), s)),
            _ = s.stop.cancelled() => None,
            _ = s.session.closed(), if s.get_stream => None,
            }
        };
        let next = driven(&mut one_shot, next).await;
        next.map(|(event, mut s)| {
            s.one_shot = one_shot;
            (event, s)
        })
    });
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Some(id) = session_header.and_then(|id| HeaderValue::from_str(&id).ok()) {
        headers.insert(SESSION_HEADER, id);
    }
    response
}

/// An SSE response from a channel, with keep-alive comments; `guard` lives as long as it.
pub(crate) fn channel_sse_with(
    app: &App,
    first: Option<Bytes>,
    rx: mpsc::Receiver<Bytes>,
    guard: Option<tokio_util::sync::DropGuard>,
) -> Response {
    let keepalive = keepalive(app);
    // The body frames still to go: the rest of an event begun, or the first message's.
    let mut pending = VecDeque::new();
    if let Some(message) = first {
        let head = sse_frames(&message, None).first_queuing_rest(&mut pending);
        pending.push_front(head);
    }
    let body = futures_util::stream::unfold(
        (pending, rx, keepalive, guard),
        |(mut pending, mut rx, mut keepalive, guard)| async move {
            if let Some(frame) = pending.pop_front() {
                return Some((
                    Ok::<_, std::convert::Infallible>(frame),
                    (pending, rx, keepalive, guard),
                ));
            }
            tokio::select! {
                biased;
                message = rx.recv() => message.map(|m| {
                    let head = sse_frames(&m, None).first_queuing_rest(&mut pending);
                    (Ok(head), (pending, rx, keepalive, guard))
                }),
                _ = keepalive.tick() => {
                    Some((Ok(Bytes::from_static(KEEPALIVE_COMMENT)), (pending, rx, keepalive, guard)))
                }
            }
        },
    );
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// An SSE response from a channel, with keep-alive comments.
pub(crate) fn channel_sse(app: &App, rx: mpsc::Receiver<Bytes>) -> Response {
    channel_sse_with(app, None, rx, None)
}

/// The response to a stateless request answered by the relay itself (a bridge): as for a
/// passed-through one, a lone answer goes back as JSON with the revision's status, and
/// anything before it opens an SSE stream. `rx` closes after the answer.
pub(crate) async fn stateless_answer(
    app: &App,
    mut rx: mpsc::Receiver<Bytes>,
    streaming: bool,
) -> Response {
    let first = if streaming {
        let decide_by = Instant::now() + app.config.limits.sse_keepalive;
        match tokio::time::timeout_at(decide_by, rx.recv()).await {
            Ok(first) => first,
            Err(_) => return channel_sse(app, rx),
        }
    } else {
        None
    };
    let status = first.as_deref().and_then(answer_status);
    match (first, status) {
        (Some(message), Some(status)) => {
            let mut response = json_response(vec![message]);
            *response.status_mut() = status;
            response
        }
        (Some(message), None) => channel_sse_with(app, Some(message), rx, None),
        (None, _) => {
            let mut answers = Vec::new();
            while let Some(message) = rx.recv().await {
                answers.push(message);
            }
            let status = match answers.last() {
                Some(last) => stateless_status(last),
                None => StatusCode::ACCEPTED,
            };
            let mut response = json_response(answers);
            *response.status_mut() = status;
            response
        }
    }
}

/// Awaits `future`, running a stateless request's inline dispatcher meanwhile.
async fn driven<F: std::future::Future>(one_shot: &mut Option<OneShot>, future: F) -> F::Output {
    match one_shot {
        Some(shot) => shot.drive(future).await,
        None => future.await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Frames one message as an SSE `message` event, with an `id:` line when `id` is given.
/// JSON may contain line breaks only as whitespace; each line becomes its own `data:`
/// line, which SSE joins back with `\n`.
fn sse_event_with_id(message: &[u8], id: Option<&str>) -> Bytes {
    let mut buf = BytesMut::with_capacity(message.len() + 64);
    put_event_head(&mut buf, id);
    put_data_lines(&mut buf, message);
    buf.put_slice(EVENT_END);
    buf.freeze()
}

/// Puts `text`, part of a message, into the `data:` line begun in `buf`. JSON text has
/// raw line ends only between tokens, where each may start a new `data:` line (a client
/// joins them with LF, which JSON reads as whitespace). SSE ends a line at LF, CRLF or a
/// lone CR, so all three must. `memchr` keeps a large single-line result from costing a
/// step per byte.
fn put_data_lines(buf: &mut BytesMut, text: &[u8]) {
    let mut rest = text;
    while let Some(end) = memchr::memchr2(b'\n', b'\r', rest) {
        buf.put_slice(&rest[..end]);
        buf.put_slice(b"\ndata: ");
        let crlf = rest[end] == b'\r' && rest.get(end + 1) == Some(&b'\n');
        rest = &rest[end + 1 + usize::from(crlf)..];
    }
    buf.put_slice(rest);
}

/// The start of an event for a message still arriving: the head and its first part,
/// with its `data:` line left open for [`sse_data_part`]. No `id:` line: see
/// [`SseStream::next_part`].
fn sse_event_start(start: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(start.len() + 32);
    put_event_head(&mut buf, None);
    put_data_lines(&mut buf, start);
    buf.freeze()
}

/// A later part of a message arriving, for its open `data:` line: as it is when it has no
/// line end (a CRLF cut between two parts becomes two line ends, which JSON reads as
/// whitespace all the same).
fn sse_data_part(part: Bytes) -> Bytes {
    if memchr::memchr2(b'\n', b'\r', &part).is_none() {
        return part;
    }
    let mut buf = BytesMut::with_capacity(part.len() + 64);
    put_data_lines(&mut buf, &part);
    buf.freeze()
}

/// Ends the data line and the event of a message that broke off part-way, giving the
/// event a type other than `message` (see [`SseStream::next_part`]).
const ABANDONED_END: &[u8] = b"\nevent: abandoned\n\n";

/// The start of an event, up to its first `data: `.
fn put_event_head(buf: &mut BytesMut, id: Option<&str>) {
    if let Some(id) = id {
        buf.put_slice(b"id: ");
        buf.put_slice(id.as_bytes());
        buf.put_u8(b'\n');
    }
    buf.put_slice(b"event: message\ndata: ");
}

/// One SSE event as frames of a response body.
struct EventFrames {
    /// The whole event; or, when `message` is set, the part before it.
    head: Bytes,
    /// A large message of one line, sent as it is and followed by [`EVENT_END`]: copying
    /// it into the event would add a pass over every byte of it.
    message: Option<Bytes>,
}

impl EventFrames {
    /// The event's first body frame; the others, if any, go to the back of `rest`.
    fn first_queuing_rest(self, rest: &mut VecDeque<Bytes>) -> Bytes {
        if let Some(message) = self.message {
            rest.push_back(message);
            rest.push_back(Bytes::from_static(EVENT_END));
        }
        self.head
    }
}

/// Ends the data line and the event.
const EVENT_END: &[u8] = b"\n\n";

/// Messages from this size up are not copied into their event when they are one line.
const SENT_UNCOPIED_FROM: usize = 64 * 1024;

/// `message` as an SSE event with an optional `id:` line, in frames.
fn sse_frames(message: &Bytes, id: Option<&str>) -> EventFrames {
    let one_line = || memchr::memchr2(b'\n', b'\r', message).is_none();
    if message.len() < SENT_UNCOPIED_FROM || !one_line() {
        return EventFrames {
            head: sse_event_with_id(message, id),
            message: None,
        };
    }
    let mut head = BytesMut::with_capacity(64);
    put_event_head(&mut head, id);
    EventFrames {
        head: head.freeze(),
        message: Some(message.clone()),
    }
}

/// The priming event MCP 2025-11-25 has a server send first on a resumable stream: the
/// id of the stream's position (`seq`), and no data. Only for clients of that revision
/// or later; older ones may try to parse the empty data.
fn priming(
    headers: &HeaderMap,
    session: &ClientSession,
    stream: StreamName,
    seq: u64,
) -> Option<Bytes> {
    let version = headers
        .get(PROTOCOL_VERSION_HEADER)
        .and_then(|v| v.to_str().ok())?;
    let primes = version >= PRIMING_SINCE
        && SUPPORTED_PROTOCOL_VERSIONS.contains(&version)
        && !STATELESS_PROTOCOL_VERSIONS.contains(&version);
    primes.then(|| {
        let id = session.event_id(stream, seq);
        Bytes::from(format!("id: {id}\ndata: \n\n"))
    })
}

pub(crate) fn keepalive(app: &App) -> Interval {
    let period = app.config.limits.sse_keepalive;
    let mut interval = tokio::time::interval_at(Instant::now() + period, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

// === headers ===

pub(crate) fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok())
}

/// The HTTP status MCP 2026-07-28 gives a stateless request's answer: 404 with -32601
/// (unknown or removed method), 400 with a protocol error of the request itself (parse,
/// invalid request or params, header mismatch, missing client capability, unsupported
/// version), 200 otherwise. A stdio upstream has no status of its own, so one rule serves
/// every upstream. `None` when the message is not an answer (progress, a log, an input
/// request): one reading of the message says both.
fn answer_status(message: &[u8]) -> Option<StatusCode> {
    let Ok(Kind::Response { error_code, .. }) = jsonrpc::classify(message) else {
        return None;
    };
    Some(match error_code {
        Some(-32601) => StatusCode::NOT_FOUND,
        Some(-32700 | -32600 | -32602 | -32020 | -32021 | -32022) => StatusCode::BAD_REQUEST,
        _ => StatusCode::OK,
    })
}

/// [`answer_status`], 200 for a message that is not an answer.
fn stateless_status(message: &[u8]) -> StatusCode {
    answer_status(message).unwrap_or(StatusCode::OK)
}

/// Whether a request belongs to a stateless revision (2026-07-28): no session, one POST.
/// A version the relay does not know counts too when the request carries `Mcp-Method`,
/// which only the stateless revisions send.
pub(crate) fn is_stateless(headers: &HeaderMap) -> bool {
    let Some(version) = headers
        .get(PROTOCOL_VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    session_id(headers).is_none()
        && (STATELESS_PROTOCOL_VERSIONS.contains(&version)
            || !SUPPORTED_PROTOCOL_VERSIONS.contains(&version)
                && headers.contains_key(METHOD_HEADER))
}

/// A stateless request carries one message, and its `Mcp-Method` (and, for a named target,
/// `Mcp-Name`) header must say what the body says: intermediaries route and authorise by
/// the headers, so a mismatch is refused before anything else reads them.
pub(crate) fn check_method_headers(
    headers: &HeaderMap,
    messages: &[(Bytes, Kind)],
) -> Result<(), RelayError> {
    let [(_, kind)] = messages else {
        return Err(RelayError::InvalidRequest(
            "a stateless request carries exactly one message",
        ));
    };
    let (method, target, version) = match kind {
        Kind::Request {
            method,
            target,
            version,
            ..
        } => (method, target, version),
        Kind::Notification {
            method, version, ..
        } => (method, &None, version),
        Kind::Response { .. } => {
            return Err(RelayError::InvalidRequest(
                "a stateless POST carries a request or a notification",
            ));
        }
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header(METHOD_HEADER) != Some(method.as_str()) {
        return Err(RelayError::HeaderMismatch("Mcp-Method"));
    }
    // The name or version may be hidden in what could not be read: the body cannot be
    // checked.
    if kind.unreadable() {
        return Err(RelayError::InvalidRequest(
            "params or its _meta could not be read (a member named twice?)",
        ));
    }
    // A method that names a target: the header and the body name the same one, or neither
    // names one. A body without a readable name (absent, not a string, params not an
    // object) does not match a header that has one.
    let names_target = matches!(
        method.as_str(),
        "tools/call" | "prompts/get" | "resources/read"
    );
    if names_target && header(NAME_HEADER) != target.as_deref() {
        return Err(RelayError::HeaderMismatch("Mcp-Name"));
    }
    // A stdio upstream sees only the body: the header's version must be the body's.
    if version.is_some() && header(PROTOCOL_VERSION_HEADER) != version.as_deref() {
        return Err(RelayError::HeaderMismatch("MCP-Protocol-Version"));
    }
    Ok(())
}

pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

/// Whether `Accept` allows `media` (a missing header allows everything).
pub(crate) fn accepts(headers: &HeaderMap, media: &str) -> bool {
    let values: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if values.is_empty() {
        return true;
    }
    values.iter().flat_map(|v| v.split(',')).any(|item| {
        let range = item.split(';').next().unwrap_or("").trim();
        range.eq_ignore_ascii_case(media) || range == "*/*"
    })
}

/// An SSE comment that keeps an idle stream's connection open.
const KEEPALIVE_COMMENT: &[u8] = b": keep-alive\n\n";
/// How long the headers and priming event of a POST's SSE stream wait for its first message.
const PRIMING_HOLD: std::time::Duration = std::time::Duration::from_millis(20);
/// How long a JSON answer waits, after a timeout, for an answer that raced it.
const LATE_ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
/// The protocol revision header of MCP Streamable HTTP.
const PROTOCOL_VERSION_HEADER: &str = "mcp-protocol-version";
/// The revisions the relay serves: stateful ones, then the stateless ones.
pub(crate) const SUPPORTED_PROTOCOL_VERSIONS: [&str; 5] = [
    "2024-11-05",
    "2025-03-26",
    "2025-06-18",
    "2025-11-25",
    "2026-07-28",
];
/// Stateless revisions: every request stands alone, with no session.
pub(crate) const STATELESS_PROTOCOL_VERSIONS: [&str; 1] = ["2026-07-28"];
/// The 2026-era headers that repeat the body's method and target name.
const METHOD_HEADER: &str = "mcp-method";
const NAME_HEADER: &str = "mcp-name";
/// The 2026 era's request for change notifications, answered by a long-lived stream.
pub(crate) const LISTEN_METHOD: &str = "subscriptions/listen";
/// The session header of MCP Streamable HTTP.
pub(crate) const SESSION_HEADER: &str = "mcp-session-id";
/// The SSE header a client resumes a broken stream with.
const LAST_EVENT_ID_HEADER: &str = "last-event-id";
/// The first revision whose clients expect a priming event on a resumable stream.
const PRIMING_SINCE: &str = "2025-11-25";
/// Headers of MCP 2026-07-28 that carry tool arguments marked `x-mcp-header`.
const PARAM_HEADER_PREFIX: &str = "mcp-param-";
/// Request headers the upstream should see as a direct client would send them.
const FORWARDED_HEADERS: [&str; 5] = [
    "mcp-protocol-version",
    METHOD_HEADER,
    NAME_HEADER,
    "traceparent",
    "tracestate",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_split_lines() {
        assert_eq!(
            sse_event_with_id(b"{\"a\":\n1}", None),
            Bytes::from_static(b"event: message\ndata: {\"a\":\ndata: 1}\n\n")
        );
        assert_eq!(
            sse_event_with_id(b"{}", None),
            Bytes::from_static(b"event: message\ndata: {}\n\n")
        );
        // A lone CR ends an SSE line too: left in a data line, it would cut it there.
        assert_eq!(
            sse_event_with_id(b"{\"a\":\r\n1,\r\"b\":2}", None),
            Bytes::from_static(b"event: message\ndata: {\"a\":\ndata: 1,\ndata: \"b\":2}\n\n")
        );
    }

    #[test]
    fn a_large_one_line_message_is_sent_uncopied_in_its_event() {
        let message = Bytes::from(format!("{{\"x\":\"{}\"}}", "y".repeat(SENT_UNCOPIED_FROM)));
        let frames = sse_frames(&message, Some("7"));
        assert_eq!(
            frames.head,
            Bytes::from_static(b"id: 7\nevent: message\ndata: ")
        );
        let sent = frames.message.expect("sent apart");
        assert_eq!(sent.as_ptr(), message.as_ptr());
        let mut whole = frames.head.to_vec();
        whole.extend_from_slice(&sent);
        whole.extend_from_slice(EVENT_END);
        assert_eq!(whole, sse_event_with_id(&message, Some("7")));
        // Small messages, and messages of several lines, are one frame.
        assert!(
            sse_frames(&Bytes::from_static(b"{}"), None)
                .message
                .is_none()
        );
        let lines = Bytes::from([&b"{\n"[..], &message[1..]].concat());
        assert!(sse_frames(&lines, None).message.is_none());
    }

    #[test]
    fn a_stateless_answer_s_status_comes_from_its_error_and_other_messages_have_none() {
        let answer = |tail: &str| format!(r#"{{"jsonrpc":"2.0","id":7,{tail}}}"#);
        let status = |message: String| answer_status(message.as_bytes());
        assert_eq!(status(answer(r#""result":{}"#)), Some(StatusCode::OK));
        assert_eq!(status(answer(r#""result":null"#)), Some(StatusCode::OK));
        let error = |code: i64| answer(&format!(r#""error":{{"code":{code},"message":"m"}}"#));
        assert_eq!(status(error(-32601)), Some(StatusCode::NOT_FOUND));
        for code in [-32700, -32600, -32602, -32020, -32021, -32022] {
            assert_eq!(status(error(code)), Some(StatusCode::BAD_REQUEST), "{code}");
        }
        for code in [-32603, -32000, -32012, 1] {
            assert_eq!(status(error(code)), Some(StatusCode::OK), "{code}");
        }
        let progress = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}"#;
        let request = r#"{"jsonrpc":"2.0","id":3,"method":"elicitation/create","params":{}}"#;
        for message in [progress, request, "not json"] {
            assert_eq!(answer_status(message.as_bytes()), None, "{message}");
            assert_eq!(
                stateless_status(message.as_bytes()),
                StatusCode::OK,
                "{message}"
            );
        }
    }

    #[test]
    fn the_2026_headers_must_say_what_the_body_says() {
        let check = |body: &str, sent: &[(&'static str, &'static str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in sent {
                headers.insert(*name, HeaderValue::from_static(value));
            }
            let messages = parse_messages(&Bytes::from(body.to_owned())).unwrap();
            match check_method_headers(&headers, &messages) {
                Ok(()) => "ok",
                Err(RelayError::HeaderMismatch(name)) => name,
                Err(_) => "refused",
            }
        };
        let meta = r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}"#;
        let call = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"echo",{meta}}}}}"#
        );
        let read =
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///a"}}"#;
        let version = ("mcp-protocol-version", "2026-07-28");
        let method = ("mcp-method", "tools/call");
        assert_eq!(check(&call, &[version, method, ("mcp-name", "echo")]), "ok");
        assert_eq!(
            check(&call, &[version, ("mcp-method", "tools/list")]),
            "Mcp-Method"
        );
        assert_eq!(check(&call, &[version, method]), "Mcp-Name");
        assert_eq!(
            check(&call, &[version, method, ("mcp-name", "other")]),
            "Mcp-Name"
        );
        let old = ("mcp-protocol-version", "2025-11-25");
        assert_eq!(
            check(&call, &[old, method, ("mcp-name", "echo")]),
            "MCP-Protocol-Version"
        );
        let read_method = ("mcp-method", "resources/read");
        assert_eq!(check(read, &[read_method, ("mcp-name", "file:///a")]), "ok");
        assert_eq!(check(read, &[read_method, ("mcp-name", "a")]), "Mcp-Name");
        // A header naming what the body does not (params not an object, no name): refused.
        let unnamed = r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":["public"]}"#;
        let prompt_method = ("mcp-method", "prompts/get");
        assert_eq!(
            check(unnamed, &[prompt_method, ("mcp-name", "public")]),
            "Mcp-Name"
        );
        let unnamed = r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{}}"#;
        assert_eq!(check(unnamed, &[prompt_method]), "ok");
        // A header on a method that names nothing is not compared.
        let list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
        assert_eq!(
            check(list, &[("mcp-method", "tools/list"), ("mcp-name", "x")]),
            "ok"
        );
        // Without a version in `_meta`, the header's stands alone.
        let list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
        assert_eq!(check(list, &[old, ("mcp-method", "tools/list")]), "ok");
        let two = format!("[{list},{list}]");
        assert_eq!(check(&two, &[("mcp-method", "tools/list")]), "refused");
        let answer = r#"{"jsonrpc":"2.0","id":1,"result":{}}"#;
        assert_eq!(check(answer, &[]), "refused");
        // A repeat that could hide the name or the version is refused, not skipped.
        let prompt = r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"secret","_meta":{},"_meta":{}}}"#;
        let prompt_method = ("mcp-method", "prompts/get");
        assert_eq!(
            check(prompt, &[prompt_method, ("mcp-name", "public")]),
            "refused"
        );
        let note = r#"{"jsonrpc":"2.0","method":"notifications/x","params":{"_meta":{"progressToken":1,"progressToken":1,"io.modelcontextprotocol/protocolVersion":"2025-06-18"}}}"#;
        assert_eq!(
            check(note, &[version, ("mcp-method", "notifications/x")]),
            "refused"
        );
    }

    #[test]
    fn accept_and_content_type_are_read_like_browsers_send_them() {
        let mut headers = HeaderMap::new();
        assert!(accepts(&headers, "text/event-stream"));
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream;q=0.9"),
        );
        assert!(accepts(&headers, "text/event-stream"));
        headers.insert(header::ACCEPT, HeaderValue::from_static("text/html"));
        assert!(!accepts(&headers, "application/json"));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/JSON; charset=utf-8"),
        );
        assert!(is_json(&headers));
    }
}
