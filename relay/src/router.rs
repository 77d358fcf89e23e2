//! Client sessions. Each [`ClientSession`] owns one tunnel stream to one upstream server
//! and a dispatcher that reads it (a task of its own, or a stateless request's handler):
//! responses go to the POST that carried their request, progress to the POST whose request
//! named the token, everything else to the session's GET stream (or an open POST stream,
//! or a bounded backlog). Every request is answered exactly once: by the upstream, or by
//! an error when the stream ends or the call times out. Does not speak HTTP (see
//! `mcp_endpoint.rs`).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use outpost_protocol::{CloseCode, envelope};
use outpost_tunnel::{
    Arrival, Part, Reassembly, Stream, StreamEnd, StreamError, StreamReceiver, StreamSender,
};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Principal, now_ms};
use crate::error::{CorrelationId, RelayError};
use crate::jsonrpc::{self, Kind};
use crate::replay::{ReplayBuffer, ReplayLimits, StreamName};
use crate::store::{CallStatus, UsageEvent};
use crate::usage::UsageRecorder;

/// An event in its session's span ([`ClientSession::span`]), which is made only when the
/// event is enabled.
macro_rules! session_event {
    ($session:expr, $level:ident, $($event:tt)+) => {
        if tracing::enabled!(tracing::Level::$level) {
            $session
                .span()
                .in_scope(|| tracing::event!(tracing::Level::$level, $($event)+));
        }
    };
}

/// All client sessions of this relay, by session id.
#[derive(Debug)]
pub(crate) struct SessionRegistry {
    sessions: Mutex<HashMap<String, Arc<ClientSession>>>,
    max: usize,
    /// What each session may keep for `Last-Event-ID` resumption.
    replay: ReplayLimits,
    /// How long a client's response may take nothing of a long answer going on to it
    /// (see [`ClientSession::hand_over`]).
    client_stall: std::time::Duration,
}

/// One client session: a key talking to one server of one agent.
#[derive(Debug)]
pub(crate) struct ClientSession {
    /// The `Mcp-Session-Id`, random.
    pub(crate) id: String,
    /// The key that created it; only that key may use it.
    pub(crate) principal: Principal,
    /// Agent name.
    pub(crate) agent: String,
    /// Server name.
    pub(crate) server: String,
    sender: StreamSender,
    state: Mutex<State>,
    /// Milliseconds since `created` of the last request, for idle expiry.
    last_active: AtomicU64,
    created: Instant,
    /// Fires when the session ends.
    closed: CancellationToken,
    usage: UsageRecorder,
    /// Where the session's side tasks (upstream cancellations) run.
    tasks: TaskTracker,
    /// How long a call may take.
    call_timeout: std::time::Duration,
    /// See `SessionRegistry::client_stall` (`limits.client_stall_timeout`).
    client_stall: std::time::Duration,
    /// The random tag of this session's SSE event ids (see `replay.rs`).
    replay_tag: String,
}

/// A message from the upstream for the client, as one SSE event's data.
#[derive(Debug)]
pub(crate) struct Outbound {
    /// Its position in its stream when that stream is resumable: the SSE event's id.
    pub(crate) seq: Option<u64>,
    /// The JSON-RPC message; or, with `rest`, its start.
    pub(crate) body: Bytes,
    /// The rest of a long answer still arriving from the upstream, which goes on to the
    /// client as it comes (see [`ClientSession::pass_on`]). Only on the channel of a POST
    /// made with [`ClientSession::submit_resumable`], whose response is an SSE stream.
    pub(crate) rest: Option<Rest>,
}

impl Outbound {
    /// A whole message.
    pub(crate) fn whole(seq: Option<u64>, body: Bytes) -> Self {
        Self {
            seq,
            body,
            rest: None,
        }
    }
}

/// The rest of a message an [`Outbound`] began. The channel closing before
/// [`RestPart::Last`] means the message broke off (the upstream gave it up, or the stream
/// ended): the response carrying it cannot be completed.
pub(crate) type Rest = mpsc::Receiver<RestPart>;

/// A part of [`Rest`].
#[derive(Debug)]
pub(crate) enum RestPart {
    /// A part; more follow.
    More(Bytes),
    /// The message's last part, and its position in its stream when that stream is
    /// resumable: its SSE event's id goes after its data.
    Last {
        /// The part.
        part: Bytes,
        /// The event's position.
        seq: Option<u64>,
    },
}

/// What a `GET` with `Last-Event-ID` gets: the stream it names, the kept events after
/// the id, and the channel of the stream's next messages.
#[derive(Debug)]
pub(crate) struct Resumed {
    /// The stream resumed.
    pub(crate) stream: StreamName,
    /// Kept events after the id, in order.
    pub(crate) replay: Vec<Outbound>,
    /// The stream's messages from now on; closes after a POST's last answer.
    pub(crate) messages: mpsc::Receiver<Outbound>,
    /// For a POST still unanswered: when its requests time out, and the POST.
    pub(crate) deadline: Option<(Instant, u64)>,
}

/// What a POST gets back from [`ClientSession::submit`]: a channel of messages for its
/// response, which closes after the last response to its requests.
#[derive(Debug)]
pub(crate) struct Submission {
    /// The POST's id within the session.
    pub(crate) post: u64,
    /// Messages to send before those of the channel (errors found while submitting).
    pub(crate) initial: Vec<Bytes>,
    /// Messages for this POST's response.
    pub(crate) messages: mpsc::Receiver<Outbound>,
}

#[derive(Debug)]
struct State {
    /// Requests awaiting a response, by canonical id.
    pending: HashMap<String, Pending>,
    /// Response channels of open POSTs.
    posts: HashMap<u64, Post>,
    /// Progress tokens of pending requests, to the POST that carries them.
    progress: HashMap<String, u64>,
    /// The client's GET stream, if open.
    get_stream: Option<mpsc::Sender<Outbound>>,
    /// Messages for the client that found no open stream.
    backlog: VecDeque<Bytes>,
    next_post: u64,
    /// Set once the upstream stream has ended: new requests fail with this.
    ended: Option<EndReason>,
    /// Events of the resumable streams, for `Last-Event-ID`. Memory only.
    replay: ReplayBuffer,
}

#[derive(Debug)]
struct Pending {
    post: u64,
    id: Value,
    method: String,
    tool: Option<String>,
    progress_token: Option<String>,
    started: Instant,
    at: i64,
    bytes_in: usize,
}

#[derive(Debug)]
struct Post {
    tx: mpsc::Sender<Outbound>,
    /// Whether the POST answers with SSE, and so can carry notifications and requests.
    streaming: bool,
    /// Whether a long answer to a `tools/call` of this POST may go on as it arrives (an
    /// [`Outbound`] with `rest`): its response is a client's resumable SSE stream, the
    /// only reader of the channel that knows such messages. Cancelled when the client
    /// resumes the stream elsewhere (see [`ClientSession::pass_on`]).
    cut_through: Option<CancellationToken>,
    /// Requests of this POST still unanswered.
    open: usize,
    /// When its requests time out. The POST's response enforces this while the client
    /// listens; the sweeper enforces it for clients that went away.
    deadline: Instant,
}

/// Why a session's stream ended, kept to answer later requests.
#[derive(Debug, Clone, Copy)]
enum EndReason {
    UpstreamUnavailable,
    UnknownServer,
    TunnelLost,
    TooLarge,
    Busy,
    Closed,
}

/// A session that lives for one POST: a request of the stateless 2026 era. Dropping it
/// (the POST's answer is complete, or its client went away) removes the session and closes
/// its stream, which at the agent cancels the request in the shared stdio process or drops
/// the HTTP request.
pub(crate) struct OneShot {
    registry: Arc<SessionRegistry>,
    session: Arc<ClientSession>,
    tasks: TaskTracker,
    /// The session's dispatcher when it runs here (see [`SessionRegistry::create`]):
    /// polled by [`Self::drive`], until the stream ends or the request is over.
    dispatcher: Option<Dispatcher>,
}

/// A session's dispatcher, not yet running: see [`SessionRegistry::create`].
pub(crate) type Dispatcher = Pin<Box<dyn Future<Output = ()> + Send>>;

impl OneShot {
    /// A one-shot session. With `dispatcher`, the session's dispatcher runs here, only
    /// while [`Self::drive`] is awaited: whatever waits on the session's posts must wait
    /// through it. Without, it runs in the task [`crate::mcp_endpoint::open_session`]
    /// spawned for it.
    pub(crate) fn new(
        registry: Arc<SessionRegistry>,
        session: Arc<ClientSession>,
        dispatcher: Option<Dispatcher>,
    ) -> Self {
        let tasks = session.tasks.clone();
        Self {
            registry,
            session,
            tasks,
            dispatcher,
        }
    }

    /// Awaits `future` while the inline dispatcher, if any, moves the stream's messages
    /// to the session's posts. The dispatcher goes first at each poll, so a message it
    /// hands over is there when `future` looks. Once it has finished (the stream ended,
    /// and it answered what was pending), `future` runs alone.
    pub(crate) async fn drive<F: Future>(&mut self, future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        std::future::poll_fn(|cx| {
            if let Some(dispatcher) = self.dispatcher.as_mut()
                && dispatcher.as_mut().poll(cx).is_ready()
            {
                self.dispatcher = None;
            }
            future.as_mut().poll(cx)
        })
        .await
    }
}

impl std::fmt::Debug for OneShot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OneShot")
            .field("session", &self.session.id)
            .field("inline", &self.dispatcher.is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for OneShot {
    fn drop(&mut self) {
        self.registry.remove(&self.session.id);
        // The stream's close is queued now, before the client has its answer and can send
        // the next request: that request's `Open` then reaches the agent after this close,
        // and the agent never counts both streams at once. (Usually the agent has closed
        // it already, behind the answer, and this sends nothing.)
        self.session.closed.cancel();
        self.session
            .sender
            .abort(CloseCode::Normal, "request answered");
        // A request still pending (the client went away first) is answered in a task,
        // since that waits on its post's channel; an answered session needs none.
        if let Some(left) = self.session.end_now(EndReason::Closed) {
            let session = self.session.clone();
            self.tasks.spawn(async move {
                session.fail_left(EndReason::Closed, left).await;
            });
        }
    }
}

/// A session's requests still pending when it ended, and the posts they came on.
type Left = (HashMap<String, Pending>, HashMap<u64, Post>);

// === impl SessionRegistry ===

impl SessionRegistry {
    /// An empty registry holding at most `max` sessions, each keeping at most `replay`
    /// for resumption, and giving up on a client that takes nothing of a long answer for
    /// `client_stall`.
    pub(crate) fn new(max: usize, replay: ReplayLimits, client_stall: std::time::Duration) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            max,
            replay,
            client_stall,
        }
    }

    /// Creates a session on `stream`. Its dispatcher is returned for the caller to run:
    /// in a task of its own, or, for a stateless request, in the request's handler (a
    /// [`OneShot`]), so that an answer goes from the tunnel's reader straight to the task
    /// that sends it to the client. A dispatcher in a task of its own is one more
    /// hand-over per answer, and a task to spawn per request.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn create(
        self: &Arc<Self>,
        principal: Principal,
        agent: &str,
        server: &str,
        stream: Stream,
        usage: UsageRecorder,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
        call_timeout: std::time::Duration,
    ) -> Result<(Arc<ClientSession>, Dispatcher), RelayError> {
        let mut sessions = self.lock();
        if sessions.len() >= self.max {
            return Err(RelayError::TooManySessions);
        }
        let Stream {
            sender, receiver, ..
        } = stream;
        let replay = ReplayBuffer::new(self.replay);
        let session = Arc::new(ClientSession {
            id: crate::auth::random_id("", 16),
            principal,
            agent: agent.to_owned(),
            server: server.to_owned(),
            sender,
            replay_tag: replay.tag().to_owned(),
            state: Mutex::new(State {
                pending: HashMap::new(),
                posts: HashMap::new(),
                progress: HashMap::new(),
                get_stream: None,
                backlog: VecDeque::new(),
                next_post: 0,
                ended: None,
                replay,
            }),
            last_active: AtomicU64::new(0),
            created: Instant::now(),
            closed: shutdown.child_token(),
            usage,
            tasks: tasks.clone(),
            call_timeout,
            client_stall: self.client_stall,
        });
        sessions.insert(session.id.clone(), session.clone());
        drop(sessions);
        let dispatcher = Box::pin(dispatch(self.clone(), session.clone(), receiver));
        Ok((session, dispatcher))
    }

    /// The session with this id, if `principal` may use it.
    pub(crate) fn get(&self, id: &str, principal: &Principal) -> Option<Arc<ClientSession>> {
        let session = self.lock().get(id).cloned()?;
        (session.principal.key_id == principal.key_id).then_some(session)
    }

    /// Ends and removes a session (client DELETE). `false` if it was not there.
    pub(crate) async fn delete(&self, id: &str, principal: &Principal) -> bool {
        let Some(session) = self.get(id, principal) else {
            return false;
        };
        self.lock().remove(id);
        session
            .close(CloseCode::Normal, "session deleted by client")
            .await;
        true
    }

    /// Sessions open now.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Closes sessions idle for longer than `idle`: no request, no GET stream, nothing
    /// pending. Returns how many it closed.
    pub(crate) async fn expire_idle(&self, idle: std::time::Duration) -> usize {
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        let expired: Vec<_> = {
            let mut sessions = self.lock();
            let ids: Vec<String> = sessions
                .values()
                .filter(|s| s.idle_for_ms() >= idle_ms && s.is_quiet())
                .map(|s| s.id.clone())
                .collect();
            ids.iter().filter_map(|id| sessions.remove(id)).collect()
        };
        for session in &expired {
            session.close(CloseCode::Normal, "session idle").await;
        }
        expired.len()
    }

    /// Times out calls whose clients went away; see [`ClientSession::expire_abandoned`].
    pub(crate) fn expire_abandoned_calls(&self) -> usize {
        let sessions: Vec<_> = self.lock().values().cloned().collect();
        sessions.iter().map(|s| s.expire_abandoned()).sum()
    }

    fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<ClientSession>>> {
        // Each critical section is one map operation, so a poisoned map is consistent.
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// === impl ClientSession ===

impl ClientSession {
    /// Forwards a POST's messages upstream. If they include requests, returns the channel
    /// their responses (and related messages) arrive on.
    pub(crate) async fn submit(
        &self,
        messages: Vec<(Bytes, Kind)>,
        streaming: bool,
    ) -> Result<Option<Submission>, RelayError> {
        self.submit_to(messages, streaming, false).await
    }

    /// As [`Self::submit`] for a client's SSE POST whose stream can be resumed: its
    /// messages are numbered and kept until they are delivered (see `replay.rs`).
    pub(crate) async fn submit_resumable(
        &self,
        messages: Vec<(Bytes, Kind)>,
    ) -> Result<Option<Submission>, RelayError> {
        self.submit_to(messages, true, true).await
    }

    async fn submit_to(
        &self,
        messages: Vec<(Bytes, Kind)>,
        streaming: bool,
        resumable: bool,
    ) -> Result<Option<Submission>, RelayError> {
        self.touch();
        let (submission, messages) = {
            let mut state = self.lock();
            if let Some(reason) = state.ended {
                return Err(reason.into());
            }
            // A request whose id is already in flight (or twice in this batch) cannot be
            // told apart from the other when its answer comes: refuse it here, once.
            let mut forward = Vec::with_capacity(messages.len());
            let mut refused = Vec::new();
            // The requests to wait for, with their sizes: only the bytes go on upstream.
            let mut fresh = Vec::new();
            for (raw, kind) in messages {
                if let Kind::Notification {
                    cancels: Some(id), ..
                } = &kind
                {
                    self.cancel_pending(&mut state, id);
                }
                if let Kind::Request { id, .. } = &kind {
                    if state.pending.contains_key(id)
                        || fresh.iter().any(|(_, k)| request_id(k) == Some(id))
                    {
                        refused.push(duplicate_id_error(id));
                        continue;
                    }
                    fresh.push((raw.len(), kind));
                }
                forward.push(raw);
            }
            if fresh.is_empty() && refused.is_empty() {
                (None, forward)
            } else {
                let post = state.next_post;
                state.next_post += 1;
                let (tx, rx) = mpsc::channel(POST_DEPTH);
                let now = Instant::now();
                let requests = fresh.len();
                for (bytes_in, kind) in fresh {
                    let tool = kind.tool().map(str::to_owned);
                    let Kind::Request {
                        id,
                        method,
                        progress_token,
                        ..
                    } = kind
                    else {
                        continue;
                    };
                    if let Some(token) = &progress_token {
                        state.progress.insert(token.clone(), post);
                    }
                    let pending = Pending {
                        post,
                        id: serde_json::from_str(&id).unwrap_or(Value::Null),
                        method,
                        tool,
                        progress_token,
                        started: now,
                        at: now_ms(),
                        bytes_in,
                    };
                    state.pending.insert(id, pending);
                }
                // With nothing to wait for, the channel closes at once (its sender drops).
                if requests > 0 {
                    if resumable {
                        state.replay.open(StreamName::Post(post));
                    }
                    state.posts.insert(
                        post,
                        Post {
                            tx,
                            streaming,
                            cut_through: resumable.then(CancellationToken::new),
                            open: requests,
                            deadline: now + self.call_timeout,
                        },
                    );
                }
                let submission = Submission {
                    post,
                    initial: refused,
                    messages: rx,
                };
                (Some(submission), forward)
            }
        };
        let mut submission = submission;
        for raw in messages {
            if let Err(err) = self.sender.send(raw).await {
                // When the stream has ended, the dispatcher answers the pending requests;
                // a message too large for the tunnel fails only this POST's requests.
                match (&err, submission.as_mut()) {
                    (StreamError::TooLarge { .. }, Some(submission)) => {
                        submission.initial.extend(
                            self.fail_post(
                                submission.post,
                                &RelayError::MessageTooLarge,
                                CallStatus::Error,
                            )
                            .into_iter()
                            .map(|(_, out)| out.body),
                        );
                    }
                    (_, Some(_)) => {}
                    (_, None) => return Err(RelayError::from_stream_error(&err)),
                }
                break;
            }
        }
        Ok(submission)
    }

    /// The client cancelled request `id`: the upstream will not answer it, so it stops
    /// being pending, and a POST left with nothing to wait for ends.
    fn cancel_pending(&self, state: &mut State, id: &str) {
        let Some(pending) = state.pending.remove(id) else {
            return;
        };
        if let Some(token) = &pending.progress_token {
            state.progress.remove(token);
        }
        self.record(&pending, CallStatus::Cancelled, None, 0);
        if let Some(post) = state.posts.get_mut(&pending.post) {
            post.open = post.open.saturating_sub(1);
            if post.open == 0 {
                state.posts.remove(&pending.post);
                state.replay.finish(StreamName::Post(pending.post));
            }
        }
    }

    /// Fails a POST's unanswered requests with a timeout, tells the upstream to cancel
    /// them, and returns the error responses for the caller to deliver.
    pub(crate) fn expire_post(&self, post: u64) -> Vec<Bytes> {
        self.expire_post_events(post)
            .into_iter()
            .map(|out| out.body)
            .collect()
    }

    /// As [`Self::expire_post`], with the errors' positions in a resumable stream.
    pub(crate) fn expire_post_events(&self, post: u64) -> Vec<Outbound> {
        let failed = self.fail_post(post, &RelayError::Timeout, CallStatus::Timeout);
        self.cancel_upstream(failed.iter().map(|(id, _)| id.clone()).collect());
        failed.into_iter().map(|(_, out)| out).collect()
    }

    /// Times out the requests of POSTs whose client went away and whose deadline passed;
    /// nobody else would. Returns how many requests it failed.
    fn expire_abandoned(&self) -> usize {
        let now = Instant::now();
        let overdue: Vec<u64> = self
            .lock()
            .posts
            .iter()
            .filter(|(_, post)| post.tx.is_closed() && post.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        overdue
            .into_iter()
            .map(|post| self.expire_post(post).len())
            .sum()
    }

    /// Sends `notifications/cancelled` upstream for each id, without making the caller
    /// wait on the stream's credit (an upstream that stopped reading must not delay the
    /// client's timeout error).
    fn cancel_upstream(&self, ids: Vec<Value>) {
        if ids.is_empty() {
            return;
        }
        let sender = self.sender.clone();
        let closed = self.closed.clone();
        self.tasks.spawn(async move {
            for id in ids {
                let cancel = serde_json::json!({
                    "jsonrpc": "2.0",
                    "method": "notifications/cancelled",
                    "params": { "requestId": id, "reason": "timed out at the relay" },
                });
                tokio::select! {
                    _ = closed.cancelled() => return,
                    sent = sender.send(Bytes::from(cancel.to_string())) => if sent.is_err() { return },
                }
            }
        });
    }

    /// Attaches a GET stream of the relay's own (the aggregate's), not kept for
    /// resumption. Queued messages are delivered first.
    pub(crate) fn attach_get_stream(&self) -> Result<mpsc::Receiver<Outbound>, RelayError> {
        self.attach_get(false).map(|(_, rx)| rx)
    }

    /// Attaches the client's GET stream, resumable: queued messages come first, and
    /// every message is numbered and kept (see `replay.rs`). Returns the position of
    /// the stream's last event before this attachment, for a priming event.
    pub(crate) fn attach_resumable_get_stream(
        &self,
    ) -> Result<(u64, mpsc::Receiver<Outbound>), RelayError> {
        self.attach_get(true)
    }

    fn attach_get(&self, resumable: bool) -> Result<(u64, mpsc::Receiver<Outbound>), RelayError> {
        self.touch();
        let mut state = self.lock();
        if state.ended.is_some() {
            return Err(RelayError::SessionNotFound);
        }
        if state.get_stream.as_ref().is_some_and(|tx| !tx.is_closed()) {
            return Err(RelayError::StreamConflict);
        }
        if resumable {
            state.replay.open(StreamName::Get);
        }
        let before = state.replay.last(StreamName::Get);
        let rx = state.open_get_channel();
        Ok((before, rx))
    }

    /// Resumes the stream a client's `Last-Event-ID` names: its kept events after the
    /// id, then its live messages (a POST's until its last answer). Only this session's
    /// streams can be named; a session is only reached with the key that owns it.
    pub(crate) fn resume(&self, last_event_id: &str) -> Result<Resumed, RelayError> {
        self.touch();
        let mut state = self.lock();
        if state.ended.is_some() {
            return Err(RelayError::SessionNotFound);
        }
        let (stream, events) = state.replay.after(last_event_id)?;
        let replay = events
            .into_iter()
            .map(|(seq, body)| Outbound::whole(Some(seq), body))
            .collect();
        let (messages, deadline) = match stream {
            // The client says its GET connection is dead, whether or not this relay has
            // noticed yet: the new one replaces it.
            StreamName::Get => (state.open_get_channel(), None),
            StreamName::Post(post) => match state.posts.get_mut(&post) {
                Some(open) => {
                    let (tx, rx) = mpsc::channel(POST_DEPTH);
                    // The old connection's channel closes: its stream ends.
                    open.tx = tx;
                    // A resumed stream's filter reads every answer whole (its requests'
                    // methods are not known there): answers go to it whole, and one
                    // going on to the old connection now goes to this one whole.
                    if let Some(moved) = open.cut_through.take() {
                        moved.cancel();
                    }
                    (rx, Some((open.deadline, post)))
                }
                // Answered already: the replay holds the rest, then the stream ends.
                None => (mpsc::channel(1).1, None),
            },
        };
        Ok(Resumed {
            stream,
            replay,
            messages,
            deadline,
        })
    }

    /// A resumable stream's response handed all it had to its connection: once complete
    /// (its POST answered), its events are released after a grace (see `replay.rs`).
    pub(crate) fn release_delivered(&self, stream: StreamName) {
        self.lock().replay.delivered(stream);
    }

    /// The SSE event id of event `seq` of `stream`.
    pub(crate) fn event_id(&self, stream: StreamName, seq: u64) -> String {
        crate::replay::event_id(&self.replay_tag, stream, seq)
    }

    /// Sends a request of the relay's own (a bridge's or the aggregate's) and waits up to
    /// `within` for its answer, which is returned whole (a result or an error).
    pub(crate) async fn call(
        &self,
        method: &str,
        params: Value,
        within: std::time::Duration,
    ) -> Result<Value, RelayError> {
        let id = relay_request_id();
        let message =
            serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let raw = Bytes::from(message.to_string());
        let kind = jsonrpc::classify(&raw).map_err(|_| RelayError::Internal)?;
        let id_text = format!("\"{id}\"");
        let submission = self
            .submit(vec![(raw, kind)], false)
            .await?
            .ok_or(RelayError::Internal)?;
        let mut pending = submission.initial;
        let mut messages = submission.messages;
        let deadline = Instant::now() + within;
        loop {
            let message = match pending.pop() {
                Some(message) => message,
                None => match tokio::time::timeout_at(deadline, messages.recv()).await {
                    Ok(Some(message)) => message.body,
                    Ok(None) => return Err(RelayError::SessionClosed),
                    Err(_) => {
                        let _ = self.expire_post(submission.post);
                        return Err(RelayError::Timeout);
                    }
                },
            };
            if matches!(jsonrpc::classify(&message), Ok(Kind::Response { ref id, .. }) if *id == id_text)
            {
                return serde_json::from_slice(&message).map_err(|_| RelayError::Internal);
            }
        }
    }

    /// Sends a message of the relay's own to the client as a server-initiated one: on the
    /// GET stream, else the newest streaming POST, else the backlog.
    pub(crate) fn push(&self, message: Bytes) {
        if let Some((tx, outbound)) = self.route_elsewhere(&mut self.lock(), message) {
            // A full stream drops it, as for the upstream's own messages.
            let _ = tx.try_send(outbound);
        }
    }

    /// The session's span: its id, agent, server and key. Made for each event that is
    /// enabled, not once per session: a stateless request's session lives for one call,
    /// and its span's four fields, formatted up front, were 4% of the relay's instructions
    /// per call when almost none logs anything.
    fn span(&self) -> tracing::Span {
        tracing::info_span!(
            "session",
            session = %self.id,
            agent = %self.agent,
            server = %self.server,
            key = %self.principal.key_id,
        )
    }

    /// Picks a stream for a message unrelated to any POST: the GET stream, else the newest
    /// streaming POST, else the backlog (bounded; the oldest message is dropped).
    fn route_elsewhere(
        &self,
        state: &mut State,
        message: Bytes,
    ) -> Option<(mpsc::Sender<Outbound>, Outbound)> {
        if let Some(tx) = state.get_stream.clone().filter(|tx| !tx.is_closed()) {
            return Some((tx, state.outbound(StreamName::Get, message)));
        }
        if let Some((post, tx)) = state
            .posts
            .iter()
            .filter(|(_, p)| p.streaming && !p.tx.is_closed())
            .max_by_key(|(id, _)| **id)
            .map(|(id, p)| (*id, p.tx.clone()))
        {
            return Some((tx, state.outbound(StreamName::Post(post), message)));
        }
        if state.backlog.len() >= BACKLOG {
            state.backlog.pop_front();
            session_event!(
                self,
                WARN,
                "backlog full: dropped the oldest undelivered server message"
            );
        }
        state.backlog.push_back(message);
        None
    }

    /// Sends a notification or a response of the relay's own.
    pub(crate) async fn send(&self, raw: Bytes) -> Result<(), RelayError> {
        let kind = jsonrpc::classify(&raw).map_err(|_| RelayError::Internal)?;
        self.submit(vec![(raw, kind)], false).await.map(|_| ())
    }

    /// Whether the session has ended.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.is_cancelled() || self.lock().ended.is_some()
    }

    /// Resolves when the session has ended.
    pub(crate) async fn closed(&self) {
        self.closed.cancelled().await
    }

    async fn close(&self, code: CloseCode, why: &str) {
        self.closed.cancel();
        // Without waiting on the tunnel: the idle sweeper closes sessions of every agent,
        // and one slow agent must not hold it up.
        self.sender.close_now(code, why);
        self.end(EndReason::Closed).await;
    }

    /// Removes `post` and its unanswered requests, and returns an error response for each
    /// (id, body). The caller delivers them: the POST's channel is closed by then.
    fn fail_post(
        &self,
        post: u64,
        error: &RelayError,
        status: CallStatus,
    ) -> Vec<(Value, Outbound)> {
        let failed: Vec<Pending> = {
            let mut state = self.lock();
            let ids: Vec<String> = state
                .pending
                .iter()
                .filter(|(_, p)| p.post == post)
                .map(|(id, _)| id.clone())
                .collect();
            let failed: Vec<Pending> = ids
                .iter()
                .filter_map(|id| state.pending.remove(id))
                .collect();
            for pending in &failed {
                if let Some(token) = &pending.progress_token {
                    state.progress.remove(token);
                }
            }
            state.posts.remove(&post);
            failed
        };
        let bodies: Vec<(Value, Bytes)> = failed
            .into_iter()
            .map(|pending| {
                let correlation = CorrelationId::new();
                error.log(&correlation, &format_args!("method {}", pending.method));
                let body = error
                    .to_jsonrpc(Some(&pending.id), &correlation)
                    .to_string();
                self.record(&pending, status, Some(error.code()), body.len());
                (pending.id, Bytes::from(body))
            })
            .collect();
        // A resumable stream keeps its errors too: its client may be away.
        let stream = StreamName::Post(post);
        let mut state = self.lock();
        let failed = bodies
            .into_iter()
            .map(|(id, body)| (id, state.outbound(stream, body)))
            .collect();
        state.replay.finish(stream);
        failed
    }

    /// Ends the session: every pending request gets an error for `reason`.
    async fn end(&self, reason: EndReason) {
        if let Some(left) = self.end_now(reason) {
            self.fail_left(reason, left).await;
        }
    }

    /// What of [`Self::end`] needs no waiting: marks the session ended and drops its
    /// streams' state. Returns the requests still pending, with the posts to answer them
    /// on, for [`Self::fail_left`]; `None` when there are none (a stateless request's
    /// session once answered).
    fn end_now(&self, reason: EndReason) -> Option<Left> {
        let (pending, posts) = {
            let mut state = self.lock();
            state.ended.get_or_insert(reason);
            state.get_stream = None;
            state.progress.clear();
            state.replay.clear();
            (
                std::mem::take(&mut state.pending),
                std::mem::take(&mut state.posts),
            )
        };
        // With nothing pending, the posts' channels close here, as the session ends.
        if pending.is_empty() {
            return None;
        }
        Some((pending, posts))
    }

    /// Answers the requests [`Self::end_now`] left pending with an error for `reason`.
    async fn fail_left(&self, reason: EndReason, (pending, posts): Left) {
        // Calls in flight when the session closes get "closed", not "not found".
        let error = match reason {
            EndReason::Closed => RelayError::SessionClosed,
            other => RelayError::from(other),
        };
        let correlation = CorrelationId::new();
        self.span().in_scope(|| {
            error.log(
                &correlation,
                &format_args!("session ended with {} calls in flight", pending.len()),
            );
        });
        for pending in pending.into_values() {
            let body = error
                .to_jsonrpc(Some(&pending.id), &correlation)
                .to_string();
            self.record(
                &pending,
                CallStatus::Unavailable,
                Some(error.code()),
                body.len(),
            );
            if let Some(post) = posts.get(&pending.post) {
                let body = Bytes::from(body);
                let _ = post.tx.send(Outbound::whole(None, body)).await;
            }
        }
    }

    /// Routes one message from the upstream.
    async fn deliver(&self, message: Bytes) {
        let kind = match jsonrpc::classify(&message) {
            Ok(kind) => kind,
            Err(invalid) => {
                session_event!(
                    self,
                    WARN,
                    ?invalid,
                    bytes = message.len(),
                    "dropping malformed message from upstream"
                );
                return;
            }
        };
        let target = {
            let mut state = self.lock();
            match &kind {
                Kind::Response { id, error_code } => match state.pending.remove(id) {
                    Some(pending) => self
                        .book_answer(
                            &mut state,
                            &pending,
                            *error_code,
                            Some(&message),
                            message.len(),
                        )
                        .map(|(tx, seq)| (tx, Outbound::whole(seq, message.clone()))),
                    None => {
                        session_event!(
                            self,
                            DEBUG,
                            "response to no pending request (timed out or unknown)"
                        );
                        None
                    }
                },
                Kind::Notification {
                    progress_token: Some(token),
                    ..
                } if state.progress.contains_key(token) => {
                    let post = state.progress[token];
                    match state.posts.get(&post).filter(|p| p.streaming) {
                        Some(open) => {
                            let tx = open.tx.clone();
                            Some((tx, state.outbound(StreamName::Post(post), message.clone())))
                        }
                        None => self.route_elsewhere(&mut state, message.clone()),
                    }
                }
                _ => self.route_elsewhere(&mut state, message.clone()),
            }
        };
        if let Some((tx, out)) = target {
            // Waiting here is backpressure on this session's own stream only. A client
            // that went away loses nothing a resumable stream kept.
            let _ = tx.send(out).await;
        }
    }

    /// Books the answer to `pending`, just taken from the pending requests: the usage
    /// record, its POST's count of open requests, and its position in the POST's stream
    /// when that is resumable (`kept`, when given, is kept for replay if not too large;
    /// `len` is the answer's length). Returns the POST's channel, and the position;
    /// `None` when the POST is gone.
    fn book_answer(
        &self,
        state: &mut State,
        pending: &Pending,
        error_code: Option<i64>,
        kept: Option<&Bytes>,
        len: usize,
    ) -> Option<(mpsc::Sender<Outbound>, Option<u64>)> {
        // Idle time runs from the last answer, not the last request: a slow answer must
        // not leave its session already expired.
        self.touch();
        if let Some(token) = &pending.progress_token {
            state.progress.remove(token);
        }
        let status = if error_code.is_some() {
            CallStatus::Error
        } else {
            CallStatus::Ok
        };
        self.record(pending, status, error_code, len);
        let stream = StreamName::Post(pending.post);
        let post = state.posts.get_mut(&pending.post)?;
        post.open -= 1;
        let tx = post.tx.clone();
        let done = post.open == 0;
        if done {
            state.posts.remove(&pending.post);
        }
        let seq = state.replay.holds(stream).then(|| match kept {
            Some(body) => state.replay.push(stream, body.clone()),
            None => state.replay.number(stream),
        });
        if done {
            state.replay.finish(stream);
        }
        Some((tx, seq))
    }

    /// A long message has begun to arrive (`head`, its start). An answer that may go on
    /// as it arrives does ([`Self::pass_on`]); anything else is read whole and delivered.
    async fn begun(&self, head: Bytes, receiver: &mut StreamReceiver) -> Result<(), StreamError> {
        match self.cut_through(&head) {
            Some((passing, tx)) => self.pass_on(passing, tx, head, receiver).await,
            None => {
                let message = receiver.rest_of(head).await?;
                self.deliver(message).await;
                Ok(())
            }
        }
    }

    /// The answer `head` begins, if it may go on as it arrives: its id comes before its
    /// result (see [`envelope::answer_head`]), and it answers a pending `tools/call` of a
    /// POST that allows it (`Post::cut_through`) and whose client is still there. A
    /// `tools/call` answer is never filtered on its way.
    fn cut_through(&self, head: &[u8]) -> Option<(Passing, mpsc::Sender<Outbound>)> {
        let id = envelope::answer_head(head)?;
        let state = self.lock();
        let pending = state.pending.get(&id)?;
        let post = state
            .posts
            .get(&pending.post)
            .filter(|post| !post.tx.is_closed())?;
        let moved = post.cut_through.clone()?;
        (pending.method == "tools/call").then(|| {
            let passing = Passing {
                id,
                deadline: post.deadline,
                moved,
            };
            (passing, post.tx.clone())
        })
    }

    /// Hands `item` to the client's response, unless the response takes nothing for
    /// `client_stall` (`limits.client_stall_timeout`), the client resumes the stream on
    /// another connection, or (with `until_closed`) the session closes meanwhile. A client
    /// that reads slowly holds the upstream back, through the tunnel's credit; one that
    /// stops reading, only so long.
    async fn hand_over<T>(
        &self,
        passing: &Passing,
        to: &mpsc::Sender<T>,
        item: T,
        until_closed: bool,
    ) -> Handed {
        tokio::select! {
            biased;
            _ = self.closed.cancelled(), if until_closed => Handed::SessionClosed,
            _ = passing.moved.cancelled() => Handed::Gone,
            sent = tokio::time::timeout(self.client_stall, to.send(item)) => match sent {
                Ok(Ok(())) => Handed::Sent,
                _ => Handed::Gone,
            },
        }
    }

    /// Sends an answer on to its POST's client as it arrives: its start at once, as an
    /// [`Outbound`] whose `rest` carries the parts that follow. The answer is booked when
    /// its last part is here; until then its request stays pending, so that if the
    /// upstream gives it up part-way, the error the agent sends in its place is delivered
    /// as any answer is, after the broken event (which ends as `abandoned`). An answer
    /// whose request was answered meanwhile (the call timed out, the session was
    /// deleted) ends so too: a request gets one answer.
    ///
    /// While the answer fits the replay budget its parts are kept too: to be kept for
    /// replay, or, if the client went away meanwhile (or resumed the stream on another
    /// connection), to go whole to the POST's channel; past the budget, an error goes
    /// there in its place.
    async fn pass_on(
        &self,
        passing: Passing,
        tx: mpsc::Sender<Outbound>,
        head: Bytes,
        receiver: &mut StreamReceiver,
    ) -> Result<(), StreamError> {
        let (rest_tx, rest) = mpsc::channel(REST_DEPTH);
        // The agent checks no answer's syntax; the relay did, reading each whole.
        let mut syntax = envelope::Syntax::default();
        let mut valid = syntax.push(&head).is_ok();
        if !valid {
            session_event!(self, WARN, "a long answer from upstream is not valid JSON");
        }
        let mut parts = Reassembly::default();
        let mut len = 0;
        let largest_kept = self.lock().replay.largest_kept();
        let mut keep = |parts: &mut Reassembly, part: &Bytes| {
            len += part.len();
            if largest_kept.is_some_and(|largest| len <= largest) {
                parts.push(part.clone());
            } else if !parts.is_empty() {
                *parts = Reassembly::default();
            }
            len
        };
        keep(&mut parts, &head);
        let start = Outbound {
            seq: None,
            body: head,
            rest: Some(rest),
        };
        // `None` once the client's response is gone (or moved, or stalled), or the answer
        // is not JSON or came too late: what it had of the answer ends as `abandoned`.
        let mut to_client = None;
        if valid {
            match self.hand_over(&passing, &tx, start, true).await {
                Handed::Sent => to_client = Some(rest_tx),
                Handed::Gone => {}
                Handed::SessionClosed => return Err(session_closed()),
            }
        }
        // Not held meanwhile: the POST's channel closes once its calls are answered (or
        // timed out), which ends its response.
        drop(tx);
        // The call's deadline holds for the upstream's part of the answer's arrival, as
        // when it was read whole: the time spent waiting for the client to take parts (which
        // holds the upstream back) does not count. Past it, the client's response gets the
        // timeout error in place of the answer.
        let mut deadline = passing.deadline;
        let last = loop {
            let next = match &to_client {
                Some(_) => tokio::time::timeout_at(deadline, receiver.next_part()).await,
                None => Ok(receiver.next_part().await),
            };
            let Ok(next) = next else {
                session_event!(
                    self,
                    DEBUG,
                    "a long answer was still arriving at the call's deadline"
                );
                to_client = None;
                continue;
            };
            match next? {
                Part::More(part) => {
                    keep(&mut parts, &part);
                    if valid && syntax.push(&part).is_err() {
                        valid = false;
                        session_event!(self, WARN, "a long answer from upstream is not valid JSON");
                        to_client = None;
                    }
                    if let Some(client) = &to_client {
                        let handing = Instant::now();
                        let handed = self
                            .hand_over(&passing, client, RestPart::More(part), true)
                            .await;
                        deadline += handing.elapsed();
                        match handed {
                            Handed::Sent => {}
                            Handed::Gone => to_client = None,
                            Handed::SessionClosed => return Err(session_closed()),
                        }
                    }
                }
                Part::Last(part) => break part,
                Part::Abandoned => {
                    session_event!(self, DEBUG, "a long answer was given up part-way");
                    return Ok(());
                }
            }
        };
        let len = keep(&mut parts, &last);
        let whole = (!parts.is_empty()).then(|| parts.take());
        if valid && (syntax.push(&last).is_err() || syntax.finish().is_err()) {
            valid = false;
            session_event!(self, WARN, "a long answer from upstream is not valid JSON");
        }
        if !valid
            || passing.moved.is_cancelled()
            || to_client.as_ref().is_some_and(|c| c.is_closed())
        {
            to_client = None;
        }
        // Not JSON, or gone with nothing kept: the call gets an error in its place.
        let replaced = if !valid {
            Some(RelayError::MalformedAnswer)
        } else if to_client.is_none() && whole.is_none() {
            Some(RelayError::AnswerNotKept)
        } else {
            None
        };
        let (message, error_code) = match replaced {
            Some(error) => (Some(error_answer(&error, &passing.id)), Some(error.code())),
            None => (whole, None),
        };
        let Some(pending) = self.lock().pending.remove(&passing.id) else {
            session_event!(self, DEBUG, "a long answer to a request already answered");
            return Ok(());
        };
        let booked = self.book_answer(
            &mut self.lock(),
            &pending,
            error_code,
            message.as_ref(),
            len,
        );
        let Some((tx, seq)) = booked else {
            return Ok(());
        };
        if let Some(client) = &to_client {
            // Booked: the session's close must not take it from the client now.
            match self
                .hand_over(&passing, client, RestPart::Last { part: last, seq }, false)
                .await
            {
                Handed::Sent => return Ok(()),
                Handed::Gone => {}
                Handed::SessionClosed => return Err(session_closed()),
            }
        }
        // The client went away (or moved) at the very end: its channel gets the
        // answer whole; or, not kept, an error in its place, which is then not kept
        // either and not counted as one (the answer was booked as delivered).
        let message =
            message.unwrap_or_else(|| error_answer(&RelayError::AnswerNotKept, &passing.id));
        let _ = tx.send(Outbound::whole(seq, message)).await;
        Ok(())
    }

    fn record(
        &self,
        pending: &Pending,
        status: CallStatus,
        error_code: Option<i64>,
        bytes_out: usize,
    ) {
        let latency = pending.started.elapsed();
        self.usage.record(UsageEvent {
            at: pending.at,
            org_id: self.principal.org_id.clone(),
            key_id: self.principal.key_id.0.clone(),
            agent: self.agent.clone(),
            server: self.server.clone(),
            method: pending.method.clone(),
            tool: pending.tool.clone(),
            status,
            error_code,
            latency_us: i64::try_from(latency.as_micros()).unwrap_or(i64::MAX),
            bytes_in: i64::try_from(pending.bytes_in).unwrap_or(i64::MAX),
            bytes_out: i64::try_from(bytes_out).unwrap_or(i64::MAX),
        });
    }

    /// Notes activity, for idle expiry.
    pub(crate) fn touch(&self) {
        let ms = u64::try_from(self.created.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_active.store(ms, Ordering::Relaxed);
    }

    fn idle_for_ms(&self) -> u64 {
        let now = u64::try_from(self.created.elapsed().as_millis()).unwrap_or(u64::MAX);
        now.saturating_sub(self.last_active.load(Ordering::Relaxed))
    }

    fn is_quiet(&self) -> bool {
        let state = self.lock();
        state.pending.is_empty() && state.get_stream.as_ref().is_none_or(|tx| tx.is_closed())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Critical sections do no I/O and leave the state consistent between statements.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An id for a request the relay itself sends upstream (bridges, the aggregate): unique in
/// the process, so it never meets a client's id in the same session.
pub(crate) fn relay_request_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("outpost-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

fn request_id(kind: &Kind) -> Option<&String> {
    match kind {
        Kind::Request { id, .. } => Some(id),
        _ => None,
    }
}

/// A long answer going on to its client as it arrives (see [`ClientSession::pass_on`]).
struct Passing {
    /// The request's id, as canonical JSON text.
    id: String,
    /// When the POST's calls time out.
    deadline: Instant,
    /// Cancelled when the client resumes the POST's stream on another connection.
    moved: CancellationToken,
}

/// How a passing answer stops when its session closes: as the stream's end would, which
/// the dispatcher then meets.
fn session_closed() -> StreamError {
    StreamError::Ended(StreamEnd::Closed {
        code: CloseCode::Normal,
        message: "the session closed".to_owned(),
    })
}

/// What became of a part handed to a client's response.
enum Handed {
    Sent,
    /// The response is gone, took nothing for `client_stall`, or moved.
    Gone,
    SessionClosed,
}

/// `error` in place of the answer to request `id` (see [`ClientSession::pass_on`]).
fn error_answer(error: &RelayError, id: &str) -> Bytes {
    let correlation = CorrelationId::new();
    error.log(&correlation, &format_args!("answer to request {id}"));
    let id: Value = serde_json::from_str(id).unwrap_or(Value::Null);
    Bytes::from(error.to_jsonrpc(Some(&id), &correlation).to_string())
}

fn duplicate_id_error(id: &str) -> Bytes {
    let error = RelayError::InvalidRequest("this request id is already in flight");
    let correlation = CorrelationId::new();
    error.log(&correlation, &format_args!("duplicate request id {id}"));
    let id: Value = serde_json::from_str(id).unwrap_or(Value::Null);
    Bytes::from(error.to_jsonrpc(Some(&id), &correlation).to_string())
}

/// The session's dispatcher: reads the upstream stream until it ends or the session closes.
async fn dispatch(
    registry: Arc<SessionRegistry>,
    session: Arc<ClientSession>,
    mut receiver: StreamReceiver,
) {
    let reason = loop {
        tokio::select! {
            _ = session.closed.cancelled() => break EndReason::Closed,
            arrival = receiver.recv_or_begin(CUT_THROUGH_FROM) => match arrival {
                Ok(Arrival::Whole(message)) => session.deliver(message).await,
                Ok(Arrival::Begun(head)) => {
                    if let Err(err) = session.begun(head, &mut receiver).await {
                        break session.ended_by(&err);
                    }
                }
                Err(err) => break session.ended_by(&err),
            },
        }
    };
    registry.remove(&session.id);
    session.closed.cancel();
    session.end(reason).await;
    session_event!(session, DEBUG, "session dispatcher stopped");
}

impl ClientSession {
    /// Why the session ends after its stream failed with `err`, logged.
    fn ended_by(&self, err: &StreamError) -> EndReason {
        match err {
            StreamError::TooLarge { len, max } => {
                session_event!(
                    self,
                    WARN,
                    len,
                    max,
                    "upstream message over the tunnel limit"
                );
                EndReason::TooLarge
            }
            StreamError::Ended(end) => {
                // A stateless request's stream ends so after every answer: not news.
                if matches!(
                    end,
                    StreamEnd::Closed {
                        code: CloseCode::Normal,
                        ..
                    }
                ) {
                    session_event!(self, DEBUG, %end, "upstream stream ended");
                } else {
                    session_event!(self, INFO, %end, "upstream stream ended");
                }
                EndReason::from(end)
            }
            err => {
                session_event!(self, WARN, %err, "upstream stream failed");
                EndReason::TunnelLost
            }
        }
    }
}

// === impl State ===

impl State {
    /// `body` as the next event of `stream`: numbered and kept when the stream is
    /// resumable.
    fn outbound(&mut self, stream: StreamName, body: Bytes) -> Outbound {
        let seq = self
            .replay
            .holds(stream)
            .then(|| self.replay.push(stream, body.clone()));
        Outbound::whole(seq, body)
    }

    /// A new channel for the GET stream, replacing the old one, with the backlog queued
    /// in it first.
    fn open_get_channel(&mut self) -> mpsc::Receiver<Outbound> {
        let backlog: Vec<Bytes> = self.backlog.drain(..).collect();
        let (tx, rx) = mpsc::channel(GET_DEPTH.max(backlog.len()));
        for body in backlog {
            let out = self.outbound(StreamName::Get, body);
            // Capacity was sized for the backlog above.
            let _ = tx.try_send(out);
        }
        self.get_stream = Some(tx);
        rx
    }
}

// === conversions ===

impl From<&StreamEnd> for EndReason {
    fn from(end: &StreamEnd) -> Self {
        match end {
            StreamEnd::TunnelClosed => EndReason::TunnelLost,
            StreamEnd::Closed { code, .. } => match code {
                CloseCode::UnknownServer => EndReason::UnknownServer,
                CloseCode::MessageTooLarge => EndReason::TooLarge,
                CloseCode::Overloaded | CloseCode::ShuttingDown => EndReason::Busy,
                CloseCode::Normal => EndReason::Closed,
                _ => EndReason::UpstreamUnavailable,
            },
        }
    }
}

impl From<EndReason> for RelayError {
    fn from(reason: EndReason) -> Self {
        match reason {
            EndReason::UpstreamUnavailable => RelayError::UpstreamUnavailable,
            EndReason::UnknownServer => RelayError::UnknownServer,
            EndReason::TunnelLost => RelayError::TunnelLost,
            EndReason::TooLarge => RelayError::MessageTooLarge,
            EndReason::Busy => RelayError::AgentBusy,
            EndReason::Closed => RelayError::SessionNotFound,
        }
    }
}

impl From<crate::replay::ReplayError> for RelayError {
    fn from(err: crate::replay::ReplayError) -> Self {
        match err {
            crate::replay::ReplayError::Malformed => RelayError::LastEventIdInvalid,
            crate::replay::ReplayError::Evicted => RelayError::LastEventIdEvicted,
            _ => RelayError::LastEventIdUnknown,
        }
    }
}

impl RelayError {
    fn from_stream_error(err: &StreamError) -> Self {
        match err {
            StreamError::TooLarge { .. } => RelayError::MessageTooLarge,
            StreamError::Ended(end) => EndReason::from(end).into(),
            _ => RelayError::TunnelLost,
        }
    }
}

/// Messages a POST's response may have waiting before the dispatcher waits.
const POST_DEPTH: usize = 64;
/// Parts of a long answer queued for its client's response (see
/// [`ClientSession::pass_on`]): with the tunnel's 16 KiB pieces, a few hundred KiB, so
/// that a client reading slowly holds the upstream back through the tunnel's credit.
const REST_DEPTH: usize = 16;
/// Answers from this size up may go on to their client as they arrive (see
/// [`ClientSession::pass_on`]); shorter ones are read whole. The same mark as the
/// agent's, which sends nothing of a long answer on before it has this much.
const CUT_THROUGH_FROM: usize = 64 * 1024;
/// Messages the GET stream may have waiting.
const GET_DEPTH: usize = 256;
/// Messages kept for a GET stream that is not open yet.
const BACKLOG: usize = 256;
