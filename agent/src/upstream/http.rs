//! A Streamable HTTP upstream: one MCP session with the local server per stream. Each
//! client message becomes a POST, sent in order (the next waits for the previous one's
//! response headers); response bodies, JSON or SSE, are relayed concurrently so a long
//! call never holds up the next. After `notifications/initialized` a GET stream carries
//! server-initiated messages. The session is DELETEd when the stream ends.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use outpost_protocol::CloseCode;
use outpost_tunnel::{Stream, StreamError, StreamSender};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::arriving::{self, Arriving, FORWARD_AS_IT_ARRIVES_FROM, Stop};
use super::calls::{Read, Via};
use super::sse::{Item, SseParser};
use super::{
    Admission, CallRef, Calls, ERROR_TOO_LARGE, ERROR_UPSTREAM, UpstreamContext,
    answer_call_with_error, forward,
};
use crate::config::HttpConfig;

/// The upstream session's state, shared by the POST and GET tasks.
struct Session {
    /// The upstream's name, for the log.
    name: String,
    url: url::Url,
    /// Configured headers plus the session id and protocol version, once known.
    headers: Mutex<HeaderMap>,
    http: reqwest::Client,
    max_message_len: usize,
    /// How long a long answer going on may stall (`answer_stall_timeout`).
    stall: std::time::Duration,
}

pub(super) async fn serve(
    name: &str,
    config: &HttpConfig,
    stream: Stream,
    meta: Vec<(String, String)>,
    calls: Calls,
    ctx: UpstreamContext,
) {
    let Stream {
        sender,
        mut receiver,
        ..
    } = stream;
    let mut headers = HeaderMap::new();
    for (header_name, value) in &config.headers {
        if let Ok(mut value) = HeaderValue::from_str(value.expose_secret()) {
            value.set_sensitive(true);
            headers.insert(header_name.clone(), value);
        }
    }
    for (meta_name, value) in &meta {
        if let (Ok(meta_name), Ok(value)) = (
            http::HeaderName::try_from(meta_name.as_str()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(meta_name, value);
        }
    }
    let session = Session {
        name: name.to_owned(),
        url: config.url.clone(),
        headers: Mutex::new(headers),
        http: ctx.http.clone(),
        max_message_len: ctx.max_message_len,
        stall: config.answer_stall_timeout,
    };
    let bridge = Arc::new(Bridge {
        name: name.to_owned(),
        session,
        sender: sender.clone(),
        calls,
        tasks: TaskTracker::new(),
        stop: ctx.cancel.child_token(),
        expired: std::sync::OnceLock::new(),
        listening: std::sync::atomic::AtomicBool::new(false),
        posts: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_POSTS)),
    });

    let mut initialized = false;
    // A stateless stream's one request, run by this loop rather than in a task of its
    // own (see below): the stream is over when it ends.
    let mut stateless: Option<Exchange> = None;
    // Fires when that request ends in a task after all (see `detach`).
    let mut answered: Option<CancellationToken> = None;
    loop {
        let deadline = bridge.calls.next_deadline();
        let message = tokio::select! {
            _ = bridge.stop.cancelled() => break,
            () = async { if let Some(token) = &answered { token.cancelled().await } },
                if answered.is_some() => break,
            () = async { if let Some(exchange) = stateless.as_mut() { exchange.await } },
                if stateless.is_some() => break,
            message = receiver.recv() => match message {
                Ok(message) => message,
                Err(_) => break,
            },
            _ = super::sleep_until(deadline) => {
                detach(&mut stateless, &mut answered, &bridge.tasks);
                bridge.clone().expire_calls().await;
                continue;
            }
        };
        detach(&mut stateless, &mut answered, &bridge.tasks);
        let read = match bridge.calls.admit(&message) {
            Admission::Forward(read) => read,
            Admission::Refuse { id, answer } => {
                if super::send_owed(&bridge.sender, &bridge.calls, &id, answer)
                    .await
                    .is_err()
                {
                    break;
                }
                continue;
            }
        };
        let outgoing = Outgoing::new(message, read);
        let mut first_stateless = false;
        if !initialized {
            initialized = true;
            if outgoing.method.as_deref() == Some("initialize") {
                // The first exchange (initialize) completes before anything else is sent,
                // so every later message carries the session id the server may assign.
                bridge.clone().exchange(outgoing).await;
                continue;
            }
            // A stateless request (2026 era) opens no session. Its stream carries nothing
            // after the answer, so the agent closes it then: the Close follows the
            // answer, where waiting for the relay's would cost both sides another
            // wake-up per request. The stream's metadata says so (the relay forwards the
            // request's `MCP-Protocol-Version`), not the first message alone: a 2025
            // batch may put a request before its `initialize`.
            first_stateless = outgoing.request.is_some() && super::is_stateless(&meta);
        }
        let Ok(permit) = bridge.posts.clone().acquire_owned().await else {
            break;
        };
        let task = bridge.clone();
        if first_stateless {
            // Run by this loop, which still watches the stream: its end (the client went
            // away) drops the request, as it stops a task's. A task of its own would cost
            // a hand-over to start it and another to hear that it ended.
            stateless = Some(Box::pin(async move {
                let _permit = permit;
                task.exchange(outgoing).await;
            }));
        } else if outgoing.request.is_some() {
            // Requests run concurrently: a long call must hold up neither the next call
            // nor its cancellation.
            bridge.tasks.spawn(async move {
                let _permit = permit;
                task.exchange(outgoing).await;
            });
        } else {
            // Notifications and responses are posted in order (the server answers them at
            // once with 202), so `initialized` precedes the requests that follow it and a
            // cancellation follows its request.
            let sent = task.clone().send(outgoing).await;
            bridge.tasks.spawn(async move {
                let _permit = permit;
                if let Some(sent) = sent {
                    task.finish(sent).await;
                }
            });
        }
    }
    // Stopped like the tasks' exchanges: not to be polled again.
    drop(stateless);
    bridge.stop.cancel();
    bridge.tasks.close();
    bridge.tasks.wait().await;
    bridge.session.delete().await;
    match bridge.expired.get() {
        None => sender.close(CloseCode::Normal, "stream ended").await,
        Some(reason) => {
            tracing::warn!(server = name, reason, "upstream session ended");
            sender
                .close(CloseCode::UpstreamExited, reason.clone())
                .await;
        }
    }
}

/// A request's exchange with the upstream, to run: see [`Bridge::exchange`].
type Exchange = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Moves a stateless stream's exchange from the stream's loop to a task, which cancels
/// `answered` (made here) when it ends: for when the loop is about to wait on something
/// else (a message after the request, usually its cancellation; an expired call). An
/// upstream that serves one connection at a time could otherwise wait, writing the
/// exchange's answer, for the loop that stopped reading it.
fn detach(
    exchange: &mut Option<Exchange>,
    answered: &mut Option<CancellationToken>,
    tasks: &TaskTracker,
) {
    if let Some(exchange) = exchange.take() {
        let done = answered
            .get_or_insert_with(CancellationToken::new)
            .clone()
            .drop_guard();
        tasks.spawn(async move {
            exchange.await;
            drop(done);
        });
    }
}

/// A message posted upstream, its response headers in.
struct Sent {
    response: Result<reqwest::Response, reqwest::Error>,
    /// The call the message opened, when it is a request.
    request: Option<CallRef>,
    /// The message is an `initialize` request, whose answer names the protocol version.
    initialize: bool,
    initialized: bool,
}

/// One stream's bridge to its HTTP upstream, shared by the tasks of its requests.
struct Bridge {
    name: String,
    session: Session,
    sender: StreamSender,
    calls: Calls,
    /// Request and GET-stream tasks; stopped with `stop` when the stream ends.
    tasks: TaskTracker,
    stop: CancellationToken,
    /// Set when the upstream session is gone (404): the stream ends with this reason.
    expired: std::sync::OnceLock<String>,
    listening: std::sync::atomic::AtomicBool,
    posts: Arc<tokio::sync::Semaphore>,
}

impl Bridge {
    /// Answers every call past the agent's `call_timeout` and cancels it upstream.
    async fn expire_calls(self: Arc<Self>) {
        let timeout = self.calls.call_timeout().unwrap_or_default();
        for id in self.calls.expire(tokio::time::Instant::now()) {
            tracing::warn!(server = %self.name, ?timeout, "call timed out; cancelling it upstream");
            let (answer, cancel) = super::timed_out(&id, timeout);
            let _ = super::send_owed(&self.sender, &self.calls, &id, answer).await;
            if let Some(sent) = self.clone().send(Outgoing::read(cancel)).await {
                let bridge = self.clone();
                self.tasks.spawn(async move { bridge.finish(sent).await });
            }
        }
    }

    /// POSTs one client message and relays what comes back, answering a request with an
    /// error if the upstream cannot.
    async fn exchange(self: Arc<Self>, outgoing: Outgoing) {
        if let Some(sent) = self.clone().send(outgoing).await {
            self.finish(sent).await;
        }
    }

    /// POSTs one message and waits for the response headers.
    async fn send(self: Arc<Self>, outgoing: Outgoing) -> Option<Sent> {
        let Outgoing {
            message,
            request,
            method,
        } = outgoing;
        let initialize = request.is_some() && method.as_deref() == Some("initialize");
        let initialized = method.as_deref() == Some("notifications/initialized");
        let response = tokio::select! {
            _ = self.stop.cancelled() => return None,
            response = self.session.post(message) => response,
        };
        Some(Sent {
            response,
            request,
            initialize,
            initialized,
        })
    }

    /// Relays what came back for one message, or answers its request with an error.
    async fn finish(self: Arc<Self>, sent: Sent) {
        let Sent {
            response,
            request,
            initialize,
            initialized,
        } = sent;
        match response {
            Ok(response)
                if response.status() == StatusCode::NOT_FOUND && self.session.has_session_id() =>
            {
                let _ = self.expired.set("the upstream session expired".to_owned());
                self.stop.cancel();
            }
            Ok(response) if response.status().is_success() => {
                if initialized
                    && !self
                        .listening
                        .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    let bridge = self.clone();
                    self.tasks.spawn(async move {
                        tokio::select! {
                            _ = bridge.stop.cancelled() => {}
                            _ = bridge.session.listen(&bridge.sender, &bridge.calls) => {}
                        }
                    });
                }
                tokio::select! {
                    _ = self.stop.cancelled() => {}
                    _ = self.session.relay_body(response, request, initialize, &self.sender, &self.calls) => {}
                }
            }
            Ok(response) if response.status().is_client_error() && carries_json(&response) => {
                // A refusal with a JSON-RPC error (MCP 2026-07-28 answers 400 or 404 so)
                // reaches the client as the upstream wrote it.
                tracing::debug!(server = %self.name, status = %response.status(), "upstream refused a message with a JSON-RPC answer");
                tokio::select! {
                    _ = self.stop.cancelled() => {}
                    _ = self.session.relay_body(response, request, initialize, &self.sender, &self.calls) => {}
                }
            }
            Ok(response) => {
                let status = response.status();
                tracing::warn!(server = %self.name, %status, "upstream refused a message");
                if let Some(call) = request {
                    let text = format!("the upstream server answered HTTP {}", status.as_u16());
                    let _ = answer_call_with_error(
                        &self.sender,
                        &self.calls,
                        &call,
                        ERROR_UPSTREAM,
                        &text,
                    )
                    .await;
                }
            }
            Err(err) => {
                tracing::warn!(server = %self.name, err = %err.without_url(), "upstream unreachable");
                if let Some(call) = request {
                    let text = "the upstream server is unreachable";
                    let _ = answer_call_with_error(
                        &self.sender,
                        &self.calls,
                        &call,
                        ERROR_UPSTREAM,
                        text,
                    )
                    .await;
                }
            }
        }
    }
}

/// Whether a body that stops early fails to read rather than looks complete: its length
/// announced, chunked, or over HTTP/2, not ended by its connection's end. Chunked as
/// hyper reads it: `chunked` is the last coding named.
fn end_is_marked(response: &reqwest::Response) -> bool {
    let chunked = response
        .headers()
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
    chunked || response.content_length().is_some() || response.version() >= http::Version::HTTP_2
}

/// Whether a response's body is JSON.
fn carries_json(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("application/json"))
}

impl Session {
    async fn post(&self, message: Bytes) -> Result<reqwest::Response, reqwest::Error> {
        let headers = self.headers();
        self.http
            .post(self.url.clone())
            .headers(headers)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json, text/event-stream")
            .body(message)
            .send()
            .await
    }

    /// Relays a POST's response body: one JSON message or batch, or an SSE stream.
    /// `initialize`: the POST was an `initialize` request.
    async fn relay_body(
        &self,
        response: reqwest::Response,
        request: Option<CallRef>,
        initialize: bool,
        sender: &StreamSender,
        calls: &Calls,
    ) {
        if let Some(id) = response.headers().get(SESSION_HEADER).cloned() {
            self.lock().insert(SESSION_HEADER, id);
        }
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if response.status() == StatusCode::ACCEPTED
            || request.is_none() && !content_type.starts_with("text/event-stream")
        {
            // With a request, only a 202 gets here. 202 is the answer to a notification or a
            // response; to a request it leaves the answer nowhere to come: not on this POST,
            // and not on the GET stream, where the agent takes no answers (`Via::NoAnswers`).
            if let Some(call) = request.filter(|call| calls.is_open(call)) {
                tracing::warn!("upstream answered a request with 202 Accepted");
                let _ = answer_call_with_error(
                    sender,
                    calls,
                    &call,
                    ERROR_UPSTREAM,
                    "the upstream server answered the request with HTTP 202, without an answer",
                )
                .await;
            }
            return;
        }
        let via = request.as_ref().map_or(Via::Shared, Via::Reply);
        let outcome = if content_type.starts_with("text/event-stream") {
            self.relay_events(response, initialize, via, sender, calls)
                .await
        } else {
            match self
                .read_json(response, initialize, via, sender, calls)
                .await
            {
                Ok(Some(body)) => {
                    for message in split_json(body) {
                        if initialize {
                            self.learn_protocol_version(&message);
                        }
                        if forward(sender, calls, message, via).await.is_err() {
                            return;
                        }
                    }
                    BodyEnd::Complete
                }
                Ok(None) => BodyEnd::Complete,
                Err(end) => end,
            }
        };
        // A body that ended without answering its request still owes the client an answer,
        // unless its call was closed meanwhile (its id may be a later call's by now).
        if let Some(call) = request
            && calls.is_open(&call)
        {
            let (code, text) = match outcome {
                BodyEnd::Complete => (
                    ERROR_UPSTREAM,
                    "the upstream server ended its response without an answer".to_owned(),
                ),
                BodyEnd::Broken => (
                    ERROR_UPSTREAM,
                    "the upstream server's response broke off".to_owned(),
                ),
                BodyEnd::TooLarge => (
                    ERROR_TOO_LARGE,
                    format!(
                        "the upstream server's response exceeds the tunnel's limit of {} bytes",
                        self.max_message_len
                    ),
                ),
            };
            tracing::warn!(?outcome, "upstream response ended without an answer");
            let _ = answer_call_with_error(sender, calls, &call, code, &text).await;
        }
    }

    /// Reads a JSON body up to the tunnel's limit, or, when it is a long answer, sends it
    /// on as it arrives (`None`). `initialize`: it answers `initialize`, and is read whole.
    /// So is a body that ends where its connection does: cut off, it would look complete.
    /// `via`: the POST's call, if it sent a request ([`Via`]).
    async fn read_json(
        &self,
        response: reqwest::Response,
        initialize: bool,
        via: Via<'_>,
        sender: &StreamSender,
        calls: &Calls,
    ) -> Result<Option<Bytes>, BodyEnd> {
        let max = self.max_message_len;
        let announced = response.content_length();
        if announced.is_some_and(|len| len > max as u64) {
            return Err(BodyEnd::TooLarge);
        }
        // Its announced length, once it is known not to go on as it arrives.
        let expected = announced.map_or(0, |len| len as usize);
        let mut checked = initialize || !end_is_marked(&response);
        let mut body = bytes::BytesMut::with_capacity(match checked {
            true => expected,
            false => expected.min(FORWARD_AS_IT_ARRIVES_FROM),
        });
        let mut chunks = response.bytes_stream();
        let mut arriving: Option<Arriving<'_>> = None;
        loop {
            let next = match &arriving {
                None => chunks.next().await,
                Some(answer) => match answer.read_within(chunks.next(), self.stall).await {
                    Ok(next) => next,
                    Err(stop) => return Err(give_up(arriving, stop, BodyEnd::Complete).await),
                },
            };
            let chunk = match next {
                None => break,
                Some(Ok(chunk)) => chunk,
                Some(Err(_)) => return Err(give_up(arriving, Stop::Broke, BodyEnd::Broken).await),
            };
            if let Some(answer) = arriving.as_mut() {
                if let Err(stop) = answer.push_owned(chunk).await {
                    return Err(give_up(arriving, stop, BodyEnd::Complete).await);
                }
                continue;
            }
            if body.len() + chunk.len() > max {
                return Err(BodyEnd::TooLarge);
            }
            body.extend_from_slice(&chunk);
            if checked || body.len() < FORWARD_AS_IT_ARRIVES_FROM {
                continue;
            }
            checked = true;
            let Some(call) = arriving::streamable(calls, &body, via) else {
                body.reserve(expected.saturating_sub(body.len()));
                continue;
            };
            let mut answer = Arriving::begin(&self.name, sender, calls, call, max).await;
            if let Err(stop) = answer.push_owned(body.split().freeze()).await {
                return Err(give_up(Some(answer), stop, BodyEnd::Complete).await);
            }
            arriving = Some(answer);
        }
        match arriving {
            None => Ok(Some(body.freeze())),
            Some(answer) => {
                // The relay gone, nothing more can be sent: the stream's end says the rest.
                let _ = answer.finish().await;
                Ok(None)
            }
        }
    }

    /// Relays SSE `message` events until the stream ends; `initialize`: the answer to an
    /// `initialize` request is among them. A long answer goes on as it arrives; given up
    /// on the way (past its deadline, over the limit, stalled), the rest of its event is
    /// skipped and the stream read on, as a whole event's late or oversized answer is.
    /// `via`: whose response it is ([`Via`]).
    async fn relay_events(
        &self,
        response: reqwest::Response,
        initialize: bool,
        via: Via<'_>,
        sender: &StreamSender,
        calls: &Calls,
    ) -> BodyEnd {
        let mut guard = EventSizeGuard::new(self.max_message_len + SSE_OVERHEAD);
        let mut parser = SseParser::default();
        let mut body = response.bytes_stream();
        // The answer going on as its event arrives, if one is. Once it is given up, the
        // parser still hands out the rest of its event as parts, which are dropped.
        let mut arriving: Option<Arriving<'_>> = None;
        loop {
            let next = match &arriving {
                None => body.next().await,
                Some(answer) => match answer.read_within(body.next(), self.stall).await {
                    Ok(next) => next,
                    // A server that stopped writing is not waited for again.
                    Err(stop @ Stop::Stalled(_)) => {
                        return give_up(arriving, stop, BodyEnd::Complete).await;
                    }
                    Err(stop) => {
                        if arriving
                            .take()
                            .expect("arriving")
                            .give_up(stop)
                            .await
                            .is_err()
                        {
                            return BodyEnd::Complete;
                        }
                        continue;
                    }
                },
            };
            let chunk = match next {
                None => break,
                Some(Ok(chunk)) => chunk,
                Some(Err(err)) => {
                    tracing::warn!(err = %err.without_url(), "upstream event stream broke");
                    return give_up(arriving, Stop::Broke, BodyEnd::Broken).await;
                }
            };
            // The parser buffers a whole event; refuse to let one grow past the limit.
            if !guard.feed(&chunk) {
                let over = Stop::NotSent(StreamError::TooLarge {
                    len: self.max_message_len + 1,
                    max: self.max_message_len,
                });
                return give_up(arriving, over, BodyEnd::TooLarge).await;
            }
            for item in parser.feed(chunk) {
                let sent = match item {
                    Item::Event(event) => {
                        if !event.is_message() || event.data.is_empty() {
                            continue;
                        }
                        if initialize {
                            self.learn_protocol_version(&event.data);
                        }
                        // `forward` answers an over-limit result with an error for its
                        // request.
                        forward(sender, calls, event.data, via).await.is_ok()
                    }
                    Item::Part(part) => match arriving.as_mut() {
                        Some(answer) => match answer.push_owned(part).await {
                            Ok(()) => true,
                            Err(stop) => {
                                let answer = arriving.take().expect("arriving");
                                answer.give_up(stop).await.is_ok()
                            }
                        },
                        None => true,
                    },
                    Item::Ended { message } => match arriving.take() {
                        Some(answer) if message => answer.finish().await.is_ok(),
                        // Its type, after its data, says it was no message after all.
                        Some(answer) => answer.give_up(Stop::Broke).await.is_ok(),
                        None => true,
                    },
                };
                if !sent {
                    return BodyEnd::Complete;
                }
            }
            // Nothing is offered while an event goes on as it arrives or is skipped.
            if !initialize
                && let Some(start) = parser.long_data(FORWARD_AS_IT_ARRIVES_FROM)
                && let Some(call) = arriving::streamable(calls, &start, via)
            {
                parser.stream_data();
                let mut answer =
                    Arriving::begin(&self.name, sender, calls, call, self.max_message_len).await;
                match answer.push_owned(start).await {
                    Ok(()) => arriving = Some(answer),
                    Err(stop) => {
                        if answer.give_up(stop).await.is_err() {
                            return BodyEnd::Complete;
                        }
                    }
                }
            }
        }
        // The stream ended in the middle of the answer's event.
        give_up(arriving, Stop::Broke, BodyEnd::Complete).await
    }

    /// Holds the session's GET stream open for server-initiated messages, reopening it
    /// after a drop, until the server says it has none (405) or the session ends.
    async fn listen(&self, sender: &StreamSender, calls: &Calls) {
        loop {
            let response = self
                .http
                .get(self.url.clone())
                .headers(self.headers())
                .header(header::ACCEPT, "text/event-stream")
                .send()
                .await;
            match response {
                Ok(response) if response.status().is_success() => {
                    self.relay_events(response, false, Via::NoAnswers, sender, calls)
                        .await;
                }
                Ok(response) if response.status() == StatusCode::METHOD_NOT_ALLOWED => return,
                Ok(response) => {
                    tracing::debug!(status = %response.status(), "upstream GET stream refused");
                    return;
                }
                Err(err) => tracing::debug!(err = %err.without_url(), "upstream GET stream failed"),
            }
            if sender.is_closed() {
                return;
            }
            tokio::time::sleep(GET_RETRY).await;
        }
    }

    async fn delete(&self) {
        if !self.has_session_id() {
            return;
        }
        let request = self
            .http
            .delete(self.url.clone())
            .headers(self.headers())
            .send();
        match tokio::time::timeout(DELETE_TIMEOUT, request).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::debug!(err = %err.without_url(), "upstream DELETE failed"),
            Err(_) => tracing::debug!("upstream DELETE timed out"),
        }
    }

    /// Takes the negotiated version from an initialize result, for later requests' header.
    /// Only the messages that answer an `initialize` come here (searching every result
    /// for the name cost 4% of the agent's CPU on 10 MiB results), and of those only one
    /// that names `protocolVersion` is parsed.
    fn learn_protocol_version(&self, message: &[u8]) {
        if memchr::memmem::find(message, b"\"protocolVersion\"").is_none() {
            return;
        }
        #[derive(serde::Deserialize)]
        struct Initialized {
            result: Option<InitializeResult>,
        }
        #[derive(serde::Deserialize)]
        struct InitializeResult {
            #[serde(rename = "protocolVersion")]
            protocol_version: Option<String>,
        }
        let Ok(Initialized {
            result:
                Some(InitializeResult {
                    protocol_version: Some(version),
                }),
        }) = serde_json::from_slice(message)
        else {
            return;
        };
        if let Ok(value) = HeaderValue::from_str(&version) {
            self.lock().insert(PROTOCOL_VERSION_HEADER, value);
        }
    }

    fn has_session_id(&self) -> bool {
        self.lock().contains_key(SESSION_HEADER)
    }

    fn headers(&self) -> HeaderMap {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HeaderMap> {
        // Header inserts leave the map consistent: a poisoned lock is still usable.
        self.headers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A message for the upstream, with what sending it needs to know, read in one parse.
struct Outgoing {
    message: Bytes,
    /// The call it opened, when it is a request.
    request: Option<CallRef>,
    method: Option<String>,
}

impl Outgoing {
    /// A message of the agent's own (a cancellation), read here.
    fn read(message: Bytes) -> Self {
        let read = super::calls::read(&message);
        Self::new(message, read)
    }

    /// A client's message, with what admitting it read.
    fn new(message: Bytes, read: Read) -> Self {
        Self {
            request: read.call(),
            method: read.method,
            message,
        }
    }
}

/// How a response body ended.
#[derive(Debug, Clone, Copy)]
enum BodyEnd {
    /// It was read to its end.
    Complete,
    /// The connection failed or the body was malformed.
    Broken,
    /// It grew past the tunnel's message limit and was abandoned.
    TooLarge,
}

/// Counts the bytes of the SSE event being received, across chunks, whatever the line
/// endings (`\n`, `\r\n` or `\r`): an event ends at a blank line.
struct EventSizeGuard {
    limit: usize,
    in_event: usize,
    line_len: usize,
    after_cr: bool,
}

impl EventSizeGuard {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            in_event: 0,
            line_len: 0,
            after_cr: false,
        }
    }

    /// Takes the next chunk; `false` once the current event exceeds the limit. Jumps from
    /// line end to line end, so a long line costs a `memchr`, not a step per byte.
    fn feed(&mut self, chunk: &[u8]) -> bool {
        let mut rest = chunk;
        while !rest.is_empty() {
            let Some(at) = memchr::memchr2(b'\n', b'\r', rest) else {
                self.text(rest.len());
                break;
            };
            self.text(at);
            match rest[at] {
                // The `\n` of a `\r\n` ending was counted with its `\r`.
                b'\n' if self.after_cr => self.after_cr = false,
                byte => {
                    if self.line_len == 0 {
                        self.in_event = 0;
                    }
                    self.line_len = 0;
                    self.after_cr = byte == b'\r';
                }
            }
            rest = &rest[at + 1..];
        }
        self.in_event <= self.limit
    }

    /// Counts `len` bytes of a line's text.
    fn text(&mut self, len: usize) {
        if len > 0 {
            self.line_len += len;
            self.in_event += len;
            self.after_cr = false;
        }
    }
}

/// Gives up on the answer going on as it arrives, if one is ([`Arriving::give_up`]), and
/// says how the body ended: `end`.
async fn give_up(arriving: Option<Arriving<'_>>, stop: Stop, end: BodyEnd) -> BodyEnd {
    if let Some(answer) = arriving {
        // The relay gone, nothing more can be sent: the stream's end says the rest.
        let _ = answer.give_up(stop).await;
    }
    end
}

/// One JSON message, or each message of a batch.
fn split_json(body: Bytes) -> Vec<Bytes> {
    let trimmed = body.iter().position(|b| !b.is_ascii_whitespace());
    if trimmed.is_some_and(|at| body[at] == b'[')
        && let Ok(batch) = serde_json::from_slice::<Vec<Box<serde_json::value::RawValue>>>(&body)
    {
        return batch
            .into_iter()
            .map(|m| Bytes::copy_from_slice(m.get().as_bytes()))
            .collect();
    }
    vec![body]
}

const SESSION_HEADER: &str = "mcp-session-id";
const PROTOCOL_VERSION_HEADER: &str = "mcp-protocol-version";
const DELETE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// Bytes of SSE framing (`event:`, `id:`, `data:` prefixes) allowed beyond a message.
const SSE_OVERHEAD: usize = 64 * 1024;
/// Requests one session may have open at its upstream at once.
const MAX_CONCURRENT_POSTS: usize = 64;
const GET_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use outpost_tunnel::Stream;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::sync::CancellationToken;

    use crate::upstream::within;

    use super::EventSizeGuard;

    /// A Streamable HTTP server on loopback that answers every POST with a JSON answer to
    /// id 1 (and a session id to `initialize`), and every other request with 200.
    async fn json_server() -> url::Url {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/mcp", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            let mut chunk = [0u8; 4096];
                            match conn.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        while buf.len() < head_end + 4 + len {
                            let mut chunk = [0u8; 4096];
                            match conn.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let body: Vec<u8> =
                            buf.drain(..head_end + 4 + len).skip(head_end + 4).collect();
                        let response = if !head.starts_with("post") {
                            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_owned()
                        } else {
                            let session =
                                if String::from_utf8_lossy(&body).contains("\"initialize\"") {
                                    "mcp-session-id: s1\r\n"
                                } else {
                                    ""
                                };
                            let answer = r#"{"jsonrpc":"2.0","id":1,"result":{}}"#;
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{session}content-length: {}\r\n\r\n{answer}",
                                answer.len()
                            )
                        };
                        if conn.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        url.parse().unwrap()
    }

    /// A tunnel over an in-memory socket, with one stream served by [`super::serve`] on
    /// `url`, opened for a request of protocol `version`: the relay's side of that stream,
    /// and the token that stops it all.
    async fn served(url: url::Url, version: &str) -> (Stream, CancellationToken) {
        served_timed(url, version, None).await
    }

    /// [`served`] with the policy's `call_timeout`.
    async fn served_timed(
        url: url::Url,
        version: &str,
        call_timeout: Option<Duration>,
    ) -> (Stream, CancellationToken) {
        let config = super::super::test_tunnel_config();
        let stop = CancellationToken::new();
        let meta = vec![("mcp-protocol-version".to_owned(), version.to_owned())];
        let (relay_side, stream, meta, agent) =
            super::super::opened_stream(config, meta, &stop).await;
        let (calls, ctx) =
            super::super::test_context_timed(config.max_message_len, &stop, call_timeout);
        let http = crate::config::HttpConfig {
            url,
            headers: vec![],
            reference_values: vec![],
            // Short: the tests stall a server on purpose.
            answer_stall_timeout: Duration::from_secs(1),
        };
        tokio::spawn(async move {
            let _agent = agent;
            super::serve("erp", &http, stream, meta, calls, ctx).await;
        });
        (relay_side, stop)
    }

    const ANSWER: &[u8] = br#"{"jsonrpc":"2.0","id":1,"result":{}}"#;

    /// A stateless (2026-era) request's stream is over once it is answered: the agent
    /// closes it behind the answer, without waiting for the relay's Close.
    #[tokio::test]
    async fn a_stateless_request_s_stream_is_closed_behind_its_answer() {
        let (mut relay_side, stop) = served(json_server().await, "2026-07-28").await;
        let request = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#;
        relay_side.sender.send(Bytes::from(request)).await.unwrap();
        assert_eq!(within(relay_side.receiver.recv()).await.unwrap(), ANSWER);
        super::super::assert_closed_by_agent(&mut relay_side).await;
        stop.cancel();
    }

    /// A stateless request whose client went away (the relay closes its stream) is dropped
    /// upstream: the agent closes the connection its POST was waiting on.
    #[tokio::test]
    async fn a_stateless_request_is_dropped_upstream_when_its_stream_ends() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/mcp", listener.local_addr().unwrap());
        let (arrived, request_arrived) = tokio::sync::oneshot::channel();
        let (closed, connection_closed) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut chunk = [0u8; 4096];
            // The request comes in and is never answered.
            let _ = conn.read(&mut chunk).await;
            let _ = arrived.send(());
            while matches!(conn.read(&mut chunk).await, Ok(n) if n > 0) {}
            let _ = closed.send(());
        });
        let (relay_side, stop) = served(url.parse().unwrap(), "2026-07-28").await;
        let request = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"slow","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#;
        relay_side.sender.send(Bytes::from(request)).await.unwrap();
        within(request_arrived).await.unwrap();
        drop(relay_side);
        within(connection_closed)
            .await
            .expect("the upstream connection closed");
        stop.cancel();
    }

    /// A message after a stateless request (here a notification) does not stop the
    /// request's answer from being read while the agent posts that message: an upstream
    /// that serves one connection at a time writes the whole answer (many events, more
    /// than the sockets hold) before it takes the notification's connection. The stream
    /// is closed behind the answer all the same.
    #[tokio::test]
    async fn a_stateless_answer_is_read_while_a_later_message_waits() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/mcp", listener.local_addr().unwrap());
        let (arrived, request_arrived) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut arrived = Some(arrived);
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut chunk = [0u8; 65536];
                let _ = conn.read(&mut chunk).await;
                let Some(arrived) = arrived.take() else {
                    let accepted = "HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n";
                    let _ = conn.write_all(accepted.as_bytes()).await;
                    continue;
                };
                let _ = arrived.send(());
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
                let _ = conn.write_all(head.as_bytes()).await;
                let note = format!(
                    "event: message\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{{\"level\":\"info\",\"data\":\"{}\"}}}}\n\n",
                    "x".repeat(4000)
                );
                for _ in 0..8000 {
                    if conn.write_all(note.as_bytes()).await.is_err() {
                        return;
                    }
                }
                let answer = format!(
                    "event: message\ndata: {}\n\n",
                    String::from_utf8_lossy(ANSWER)
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            }
        });
        let (mut relay_side, stop) = served(url.parse().unwrap(), "2026-07-28").await;
        let request = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"long","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#;
        relay_side.sender.send(Bytes::from(request)).await.unwrap();
        within(request_arrived).await.unwrap();
        let later = r#"{"jsonrpc":"2.0","method":"notifications/roots/list_changed"}"#;
        relay_side.sender.send(Bytes::from(later)).await.unwrap();
        let answered = async {
            while let Ok(message) = relay_side.receiver.recv().await {
                if message == ANSWER {
                    return true;
                }
            }
            false
        };
        assert!(
            within(answered).await,
            "the stream ended without the answer"
        );
        // The exchange ended in a task, and the stream is closed behind its answer still.
        super::super::assert_closed_by_agent(&mut relay_side).await;
        stop.cancel();
    }

    /// A 2025-era session's stream stays open between its requests: only the relay ends it.
    /// Also when its first message is a request other than `initialize` (a batch may put
    /// one before it): the stream's metadata, not the first message, says stateless.
    #[tokio::test]
    async fn a_session_s_stream_stays_open_after_an_answer() {
        let initialize = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
        let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
        for first in [initialize, call] {
            let (mut relay_side, stop) = served(json_server().await, "2025-06-18").await;
            for message in [first, call] {
                relay_side.sender.send(Bytes::from(message)).await.unwrap();
                assert_eq!(within(relay_side.receiver.recv()).await.unwrap(), ANSWER);
            }
            let more = tokio::time::timeout(Duration::from_millis(300), relay_side.receiver.recv());
            assert!(
                more.await.is_err(),
                "the session's stream ended after an answer"
            );
            stop.cancel();
        }
    }

    /// How [`one_answer_server`] ends its answer.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Ending {
        /// Whole.
        Whole,
        /// Cut off: the connection closes after `CUT` bytes of the answer.
        Cut,
        /// Stalled: after `CUT` bytes of the answer, the server writes nothing more.
        Stalled,
    }

    const CUT: usize = 256 * 1024;

    /// How [`one_answer_server`] sends its answer.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Body {
        /// A JSON body, its length announced.
        Json,
        /// A JSON body in one chunk of a chunked body.
        Chunked,
        /// A JSON body that ends when the connection does.
        Unannounced,
        /// One SSE event.
        Sse,
        /// SSE: the answer given is the whole stream.
        SseText,
    }

    /// A server that answers the first POST with `answer`, sent as `kind` says and ended
    /// as `ending` says, and any other request with 200.
    async fn one_answer_server(answer: String, kind: Body, ending: Ending) -> url::Url {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/mcp", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let mut answer = Some(answer);
            while let Ok((mut conn, _)) = listener.accept().await {
                let (head, _) = read_request(&mut conn).await;
                let Some(answer) = answer.take().filter(|_| head.starts_with(b"POST")) else {
                    let _ = conn
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    continue;
                };
                let (content_type, body) = match kind {
                    Body::Sse => ("text/event-stream", format!("data: {answer}\n\n")),
                    Body::SseText => ("text/event-stream", answer),
                    _ => ("application/json", answer),
                };
                // The response up to the body, then the body, then what ends it.
                let (framing, end) = match kind {
                    Body::Unannounced => ("connection: close\r\n\r\n".to_owned(), ""),
                    Body::Chunked => (
                        format!("transfer-encoding: chunked\r\n\r\n{:x}\r\n", body.len()),
                        "\r\n0\r\n\r\n",
                    ),
                    _ => (format!("content-length: {}\r\n\r\n", body.len()), ""),
                };
                let head = format!("HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\n{framing}");
                let _ = conn.write_all(head.as_bytes()).await;
                match ending {
                    Ending::Whole => {
                        let _ = conn.write_all(body.as_bytes()).await;
                        let _ = conn.write_all(end.as_bytes()).await;
                        if kind == Body::Unannounced {
                            let _ = conn.shutdown().await;
                            continue;
                        }
                        // Held until the client closes it.
                        tokio::spawn(async move {
                            let mut rest = [0u8; 1024];
                            while matches!(conn.read(&mut rest).await, Ok(n) if n > 0) {}
                        });
                    }
                    Ending::Cut => {
                        let _ = conn.write_all(&body.as_bytes()[..CUT]).await;
                    }
                    Ending::Stalled => {
                        let _ = conn.write_all(&body.as_bytes()[..CUT]).await;
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                }
            }
        });
        url.parse().unwrap()
    }

    /// Reads one request on `conn` whole, its head and its body: a socket closed with
    /// unread bytes is reset, and the answer's end could be lost with it.
    async fn read_request(conn: &mut tokio::net::TcpStream) -> (Vec<u8>, Vec<u8>) {
        let mut head = Vec::new();
        let mut byte = [0u8];
        while !head.ends_with(b"\r\n\r\n") {
            if !matches!(conn.read(&mut byte).await, Ok(1)) {
                break;
            }
            head.push(byte[0]);
        }
        let len: usize = String::from_utf8_lossy(&head)
            .to_ascii_lowercase()
            .lines()
            .find_map(|l| {
                l.strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        let mut body = vec![0; len];
        let _ = conn.read_exact(&mut body).await;
        (head, body)
    }

    /// An answer on a session's GET stream is late: it does not close the open call with
    /// its id, whose answer comes on that call's POST. rmcp puts a cancelled call's answer
    /// there once the cancellation has ended its POST's response, and a client may have
    /// sent the id again by the time it arrives.
    #[tokio::test]
    async fn an_answer_on_the_get_stream_leaves_the_open_call_with_its_id_alone() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/mcp", listener.local_addr().unwrap());
        // The GET stream and the call's POST, held open for the test to write events on.
        let (get_tx, mut get) = tokio::sync::mpsc::unbounded_channel();
        let (post_tx, mut post) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (head, body) = read_request(&mut conn).await;
                let body = String::from_utf8_lossy(&body).into_owned();
                let held = if head.starts_with(b"GET") {
                    &get_tx
                } else if body.contains("tools/call") {
                    &post_tx
                } else {
                    let response = if body.contains("\"initialize\"") {
                        let answer = r#"{"jsonrpc":"2.0","id":0,"result":{}}"#;
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nmcp-session-id: s1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{answer}",
                            answer.len()
                        )
                    } else {
                        "HTTP/1.1 202 Accepted\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
                            .to_owned()
                    };
                    let _ = conn.write_all(response.as_bytes()).await;
                    continue;
                };
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
                    .await;
                let _ = held.send(conn);
            }
        });
        let (mut relay_side, stop) = served(url.parse().unwrap(), "2025-06-18").await;
        let messages = [
            r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"slow","arguments":{}}}"#,
        ];
        for message in messages {
            relay_side.sender.send(Bytes::from(message)).await.unwrap();
        }
        assert_eq!(
            within(relay_side.receiver.recv()).await.unwrap(),
            r#"{"jsonrpc":"2.0","id":0,"result":{}}"#.as_bytes()
        );
        let mut get = within(get.recv()).await.unwrap();
        let mut post = within(post.recv()).await.unwrap();
        // The late answer, then a notification: once the notification is through, the
        // answer before it on the same stream has been dealt with.
        let late = r#"{"jsonrpc":"2.0","id":7,"error":{"code":-32603,"message":"cancelled"}}"#;
        let note = r#"{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"x"}}"#;
        let events = format!("data: {late}\n\ndata: {note}\n\n");
        get.write_all(events.as_bytes()).await.unwrap();
        assert_eq!(
            within(relay_side.receiver.recv()).await.unwrap(),
            note.as_bytes()
        );
        let answer = r#"{"jsonrpc":"2.0","id":7,"result":{"content":[]}}"#;
        post.write_all(format!("data: {answer}\n\n").as_bytes())
            .await
            .unwrap();
        assert_eq!(
            within(relay_side.receiver.recv()).await.unwrap(),
            answer.as_bytes()
        );
        stop.cancel();
    }

    /// A request the server accepts with 202, as it would a notification, gets an error at
    /// once: its answer has nowhere left to come from.
    #[tokio::test]
    async fn a_request_accepted_with_202_gets_an_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/mcp", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let _ = read_request(&mut conn).await;
                let _ = conn
                    .write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        let (mut relay_side, stop) = served(url.parse().unwrap(), "2026-07-28").await;
        let request = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#;
        relay_side.sender.send(Bytes::from(request)).await.unwrap();
        let answer = within(relay_side.receiver.recv()).await.unwrap();
        let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(answer["id"], 1);
        assert_eq!(answer["error"]["code"], super::ERROR_UPSTREAM, "{answer}");
        assert!(answer["error"]["message"].as_str().unwrap().contains("202"));
        stop.cancel();
    }

    /// An answer to call 1 with a text of `len` bytes of `x`.
    fn long_answer(len: usize) -> String {
        let head = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":""#;
        format!("{head}{}\"}}]}}}}", "x".repeat(len))
    }

    const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"big","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#;

    /// Call 1, sent on a stream served by the agent (with `call_timeout`, if given) to a
    /// [`one_answer_server`] answering it with `answer`: the relay's side of the stream,
    /// and the token that stops it all.
    async fn call(
        answer: String,
        body: Body,
        ending: Ending,
        call_timeout: Option<Duration>,
    ) -> (Stream, CancellationToken) {
        let url = one_answer_server(answer, body, ending).await;
        let (relay_side, stop) = served_timed(url, "2026-07-28", call_timeout).await;
        relay_side.sender.send(Bytes::from(CALL)).await.unwrap();
        (relay_side, stop)
    }

    /// The error the relay side receives for call 1 after an abandoned answer (ending in
    /// NUL, which the relay drops): the abandoned message's start shows that the answer
    /// went on before its end.
    async fn abandoned_then_error(relay_side: &mut Stream, answer: &str) -> serde_json::Value {
        let abandoned = within(relay_side.receiver.recv()).await.unwrap();
        assert_eq!(abandoned.last(), Some(&0), "no abandoned answer came first");
        assert!(abandoned.len() > 64 * 1024, "{}", abandoned.len());
        assert!(
            answer
                .as_bytes()
                .starts_with(&abandoned[..abandoned.len() - 1])
        );
        let error = within(relay_side.receiver.recv()).await.unwrap();
        let error: serde_json::Value = serde_json::from_slice(&error).unwrap();
        assert_eq!(error["id"], 1, "{error}");
        error
    }

    /// A long answer goes on as it arrives, as a JSON body (its length announced, or
    /// chunked) or an SSE event: whole, it arrives intact; cut off by the server, the
    /// relay side has its start already (an abandoned message) when the call's error
    /// comes. Read whole, only the error would.
    #[tokio::test]
    async fn a_long_answer_goes_on_as_it_arrives() {
        let answer = long_answer(512 * 1024);
        for body in [Body::Json, Body::Chunked, Body::Sse] {
            let (mut relay_side, stop) = call(answer.clone(), body, Ending::Whole, None).await;
            let received = within(relay_side.receiver.recv()).await.unwrap();
            assert!(
                received == answer.as_bytes(),
                "{body:?}: {}",
                received.len()
            );
            super::super::assert_closed_by_agent(&mut relay_side).await;
            stop.cancel();

            let (mut relay_side, stop) = call(answer.clone(), body, Ending::Cut, None).await;
            let error = abandoned_then_error(&mut relay_side, &answer).await;
            assert_eq!(
                error["error"]["code"],
                super::super::ERROR_UPSTREAM,
                "{body:?}: {error}"
            );
            stop.cancel();
        }
    }

    /// A JSON body that ends where its connection does is read whole: cut off, it would
    /// look complete. So the cut answer is read as the message it is, which is not JSON,
    /// and the call gets an error in its place.
    #[tokio::test]
    async fn a_body_ended_by_its_connection_is_read_whole() {
        let answer = long_answer(512 * 1024);
        let (mut relay_side, stop) =
            call(answer.clone(), Body::Unannounced, Ending::Whole, None).await;
        let received = within(relay_side.receiver.recv()).await.unwrap();
        assert!(received == answer.as_bytes(), "{}", received.len());
        stop.cancel();

        let (mut relay_side, stop) =
            call(answer.clone(), Body::Unannounced, Ending::Cut, None).await;
        let error = within(relay_side.receiver.recv()).await.unwrap();
        let error: serde_json::Value = serde_json::from_slice(&error).unwrap();
        assert_eq!(error["id"], 1, "{error}");
        assert_eq!(
            error["error"]["code"],
            super::super::ERROR_UPSTREAM,
            "{error}"
        );
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("not valid JSON"),
            "{error}"
        );
        stop.cancel();
    }

    /// An answer that outgrows the tunnel's limit on its way is abandoned, and the call
    /// gets the error for a message over the limit; announced over it, it is not sent at
    /// all.
    #[tokio::test]
    async fn an_answer_over_the_limit_on_its_way_is_abandoned() {
        let max = super::super::test_tunnel_config().max_message_len;
        let answer = long_answer(max + 1024);
        for body in [Body::Json, Body::Chunked, Body::Sse] {
            let (mut relay_side, stop) = call(answer.clone(), body, Ending::Whole, None).await;
            let error = match body {
                Body::Json => {
                    let error = within(relay_side.receiver.recv()).await.unwrap();
                    serde_json::from_slice(&error).unwrap()
                }
                _ => abandoned_then_error(&mut relay_side, &answer).await,
            };
            assert_eq!(
                error["error"]["code"],
                super::super::ERROR_TOO_LARGE,
                "{body:?}: {error}"
            );
            stop.cancel();
        }
    }

    /// At the call's deadline with the answer on its way (the server stalled in the middle
    /// of it), the answer is abandoned and the call gets one answer, the timeout's error.
    #[tokio::test]
    async fn an_answer_on_its_way_at_the_deadline_gives_way_to_the_timeout() {
        let answer = long_answer(512 * 1024);
        for body in [Body::Json, Body::Chunked, Body::Sse] {
            let timeout = Some(Duration::from_millis(500));
            let (mut relay_side, stop) = call(answer.clone(), body, Ending::Stalled, timeout).await;
            let error = abandoned_then_error(&mut relay_side, &answer).await;
            assert_eq!(
                error["error"]["code"],
                super::super::ERROR_TIMEOUT,
                "{body:?}: {error}"
            );
            assert_nothing_more(&mut relay_side, body).await;
            stop.cancel();
        }
    }

    /// With no `call_timeout`, an answer whose server stops writing in the middle of it is
    /// given up after the stall limit (the stream's other messages wait behind it): the
    /// call gets an upstream error, once.
    #[tokio::test]
    async fn an_answer_stalled_on_its_way_is_given_up() {
        let answer = long_answer(512 * 1024);
        for body in [Body::Json, Body::Sse] {
            let (mut relay_side, stop) = call(answer.clone(), body, Ending::Stalled, None).await;
            let error = abandoned_then_error(&mut relay_side, &answer).await;
            assert_eq!(
                error["error"]["code"],
                super::super::ERROR_UPSTREAM,
                "{body:?}: {error}"
            );
            assert!(
                error["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("stopped writing for 1s")),
                "{error}"
            );
            assert_nothing_more(&mut relay_side, body).await;
            stop.cancel();
        }
    }

    /// An SSE answer given up on its way (here, over the limit) has the rest of its event
    /// skipped, and the response is read on: a later event still goes on.
    #[tokio::test]
    async fn after_an_answer_given_up_the_event_stream_is_read_on() {
        let max = super::super::test_tunnel_config().max_message_len;
        let answer = long_answer(max + 1024);
        let note = r#"{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"after"}}"#;
        let stream = format!("data: {answer}\n\ndata: {note}\n\n");
        let (mut relay_side, stop) = call(stream, Body::SseText, Ending::Whole, None).await;
        let error = abandoned_then_error(&mut relay_side, &answer).await;
        assert_eq!(
            error["error"]["code"],
            super::super::ERROR_TOO_LARGE,
            "{error}"
        );
        assert_eq!(
            within(relay_side.receiver.recv()).await.unwrap(),
            note.as_bytes()
        );
        stop.cancel();
    }

    /// An SSE event sent on as it arrived, whose type, named after its data, is not
    /// `message`, is abandoned; its call stays open, and the answer in a later event
    /// reaches it.
    #[tokio::test]
    async fn an_event_that_turns_out_not_to_be_a_message_is_abandoned() {
        let long = long_answer(512 * 1024);
        let stream = format!(
            "data: {long}\nevent: other\n\ndata: {}\n\n",
            String::from_utf8_lossy(ANSWER)
        );
        let (mut relay_side, stop) = call(stream, Body::SseText, Ending::Whole, None).await;
        let abandoned = within(relay_side.receiver.recv()).await.unwrap();
        assert_eq!(abandoned.last(), Some(&0), "{}", abandoned.len());
        assert_eq!(within(relay_side.receiver.recv()).await.unwrap(), ANSWER);
        super::super::assert_closed_by_agent(&mut relay_side).await;
        stop.cancel();
    }

    /// No second answer follows the first for a while.
    async fn assert_nothing_more(relay_side: &mut Stream, body: Body) {
        let more = tokio::time::timeout(Duration::from_millis(300), relay_side.receiver.recv());
        match more.await {
            Err(_) | Ok(Err(_)) => {}
            Ok(Ok(message)) => panic!("{body:?}: a second answer: {message:?}"),
        }
    }

    /// (A length counts too: reqwest takes it from the body hyper read, which a response
    /// made here has not; `a_long_answer_goes_on_as_it_arrives` covers it.)
    #[test]
    fn a_body_s_end_is_marked_by_a_last_chunked_coding() {
        let marked = |headers: &[(&str, &str)]| {
            let mut response = http::Response::builder();
            for (name, value) in headers {
                response = response.header(*name, *value);
            }
            // A body of unknown length, as one read from a socket is.
            let body = reqwest::Body::wrap_stream(futures_util::stream::empty::<
                Result<Bytes, std::io::Error>,
            >());
            super::end_is_marked(&reqwest::Response::from(response.body(body).unwrap()))
        };
        assert!(marked(&[("transfer-encoding", "chunked")]));
        assert!(marked(&[("transfer-encoding", "gzip, Chunked")]));
        assert!(!marked(&[]), "ended by its connection");
        assert!(
            !marked(&[("transfer-encoding", "chunked, gzip")]),
            "hyper reads it to the end"
        );
        assert!(!marked(&[("transfer-encoding", "x-chunked")]));
    }

    #[test]
    fn events_are_measured_across_chunks_and_line_endings() {
        for ending in ["\n", "\r\n", "\r"] {
            let event = format!("data: {}{ending}{ending}", "x".repeat(90));
            let mut guard = EventSizeGuard::new(100);
            // Many small events in chunks that split endings: never over the limit.
            let stream = event.repeat(50);
            for piece in stream.as_bytes().chunks(7) {
                assert!(guard.feed(piece), "{ending:?}");
            }
            // One event larger than the limit, however it is chunked, is caught.
            let big = format!("data: {}{ending}", "y".repeat(150));
            assert!(
                !big.as_bytes().chunks(13).all(|piece| guard.feed(piece)),
                "{ending:?}"
            );
        }
    }
}
