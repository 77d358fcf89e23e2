//! A stdio upstream of the stateless (2026) era: ONE child process per server, shared by
//! every stateless stream of it (a stream per request), so requests are not a process
//! start each and state the server keeps across requests (a signed multi-round
//! `requestState`, subscriptions) survives. Owns the shared child, its supervision and the
//! routing of its output; starts, stops and reads it with `stdio.rs`. Does not own policy:
//! each stream keeps its own `Calls` gate on the client's un-rewritten messages.
//!
//! Multiplexing: every request gets an agent-unique id `o:<n>` on its way to the child
//! (see `rewrite.rs`); the answer goes back to the stream that asked, with the client's id.
//! Notifications reach a stream only when they name one of its requests (progress token,
//! `subscriptions/listen` id, `notifications/cancelled`); anything else the child sends on
//! its own is dropped, since the stateless era has no session stream to carry it.
//!
//! Supervision: the child starts with the first request. When it exits, or stays silent
//! for a `call_timeout` after a call timed out (hung, then killed), its in-flight requests
//! are answered with errors and the next request starts a new child, with the same backoff
//! and limits as a session's child. There is no `initialize` to replay in this era.
//!
//! `Mcp-Param-*` headers are checked here for `tools/call` (see `param_headers.rs`), with
//! the tool list the agent asks the child for itself, refreshed on `list_changed`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use outpost_protocol::CloseCode;
use outpost_tunnel::{Stream, StreamSender};
use secrecy::ExposeSecret;
use tokio::io::BufReader;
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::calls::Via;
use super::param_headers::ToolHeaders;
use super::rewrite::{self, Key, Routing};
use super::stdio::{self, Line, Outcome, RestartBudget};
use super::{Admission, Calls, UpstreamContext, answer_with_error, forward, sleep_until};
use crate::config::StdioConfig;

/// The shared processes of one tunnel session, one per stdio server, started on first use.
#[derive(Debug)]
pub(crate) struct SharedProcesses {
    processes: Mutex<HashMap<String, SharedProcess>>,
    /// The session's tasks: a supervisor is waited for when the session ends, so its child
    /// is stopped and reaped.
    tasks: TaskTracker,
}

/// A handle to one server's shared process. Dropping every handle stops it.
#[derive(Debug, Clone)]
struct SharedProcess {
    commands: mpsc::Sender<Command>,
    /// The configuration it runs: a reload that changes it starts a new process.
    config: Arc<StdioConfig>,
}

/// Why a request could not be given to the shared process.
#[derive(Debug)]
struct Refusal {
    code: i64,
    message: String,
}

enum Command {
    /// Registers a request and hands back its key and the child's stdin.
    Call {
        answer: oneshot::Sender<Bytes>,
        events: mpsc::Sender<(Key, Bytes)>,
        reply: oneshot::Sender<Result<(Key, mpsc::Sender<Bytes>), Refusal>>,
    },
    /// A client notification for the child, if it runs.
    Notify(Bytes),
    /// Forgets requests whose streams no longer wait for them and cancels them upstream.
    /// `hang_grace`: they timed out, and a child silent from now on for that long is hung.
    Abandon {
        keys: Vec<Key>,
        reason: &'static str,
        hang_grace: Option<Duration>,
    },
    /// The `x-mcp-header` annotations of the child's tools (`None`: unknown).
    ToolHeaders {
        version: String,
        reply: oneshot::Sender<Option<Arc<ToolHeaders>>>,
    },
}

impl SharedProcesses {
    pub(crate) fn new(tasks: TaskTracker) -> Self {
        Self {
            processes: Mutex::new(HashMap::new()),
            tasks,
        }
    }

    /// Server `name`'s shared process, its supervisor started if there is none yet for
    /// this configuration.
    fn process(&self, name: &str, config: &StdioConfig, ctx: &UpstreamContext) -> SharedProcess {
        let mut processes = self
            .processes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(process) = processes.get(name)
            && !process.commands.is_closed()
            && same_process(&process.config, config)
        {
            return process.clone();
        }
        let (commands, receiver) = mpsc::channel(COMMAND_DEPTH);
        let config = Arc::new(config.clone());
        let supervisor = Supervisor {
            name: name.to_owned(),
            config: config.clone(),
            ctx: ctx.clone(),
            routes: HashMap::new(),
            next: 0,
            tools: None,
            fetch: None,
            waiting: Vec::new(),
            restarts: RestartBudget::default(),
            failed: false,
            generation: 0,
            hang_at: None,
        };
        self.tasks.spawn(
            supervisor
                .run(receiver)
                .instrument(tracing::info_span!("shared_stdio", server = %name)),
        );
        let process = SharedProcess { commands, config };
        processes.insert(name.to_owned(), process.clone());
        process
    }
}

/// Whether two configurations start the same process.
fn same_process(a: &StdioConfig, b: &StdioConfig) -> bool {
    a.command == b.command
        && a.args == b.args
        && a.cwd == b.cwd
        && a.env.len() == b.env.len()
        && a.env
            .iter()
            .zip(&b.env)
            .all(|((ka, va), (kb, vb))| ka == kb && va.expose_secret() == vb.expose_secret())
}

// === the stream side ===

/// What the stream remembers of one of its requests in the shared process.
struct Sent {
    /// The client's id (canonical JSON text).
    id: String,
    /// The client's progress token (JSON text).
    token: Option<String>,
    /// The request is an `initialize`: a session's start, whose stream goes on after the
    /// answer (a stateless request never is one).
    initialize: bool,
}

/// Serves one stateless stream through server `name`'s shared process.
pub(super) async fn serve(
    name: &str,
    config: &StdioConfig,
    stream: Stream,
    meta: Vec<(String, String)>,
    calls: Calls,
    ctx: UpstreamContext,
) {
    let process = ctx.shared.process(name, config, &ctx);
    let Stream {
        sender,
        mut receiver,
        ..
    } = stream;
    let (events_tx, mut events) = mpsc::channel::<(Key, Bytes)>(EVENTS_PER_STREAM);
    let mut sent: HashMap<Key, Sent> = HashMap::new();
    let mut answers = FuturesUnordered::new();
    loop {
        let wake = calls.next_deadline();
        tokio::select! {
            // Notifications first: the child wrote a request's progress before its answer,
            // and the stream must pass them on in that order.
            biased;
            Some((key, event)) = events.recv() => {
                let Some(request) = sent.get(&key) else { continue };
                let Some(event) = rewrite::restore_event(&event, key, &request.id, request.token.as_deref()) else {
                    continue;
                };
                if forward(&sender, &calls, event, Via::Shared).await.is_err() {
                    break;
                }
            }
            Some((key, answer)) = answers.next(), if !answers.is_empty() => {
                let answer: Result<Bytes, oneshot::error::RecvError> = answer;
                let Some(request) = sent.remove(&key) else { continue };
                // No answer: the child gave the request up (its own `notifications/cancelled`
                // went to the client already).
                let Ok(answer) = answer else { continue };
                let Some(answer) = rewrite::restore_answer(&answer, &request.id) else { continue };
                if forward(&sender, &calls, answer, Via::Shared).await.is_err() {
                    break;
                }
                // A stateless stream carries one request: with its answer sent, the stream
                // is over, and its Close follows the answer rather than the relay's (a
                // wake-up of each side fewer per request). Not after an `initialize`,
                // which only a session's stream begins with.
                if sent.is_empty() && !request.initialize {
                    break;
                }
            }
            message = receiver.recv() => {
                let Ok(message) = message else { break };
                let step = from_client(&process, message, &meta, &sender, &calls, &events_tx, &mut sent).await;
                match step {
                    Ok(Some((key, answer))) => answers.push(async move { (key, answer.await) }),
                    Ok(None) => {}
                    Err(()) => break,
                }
            }
            _ = sleep_until(wake) => {
                let mut expired = Vec::new();
                for id in calls.expire(Instant::now()) {
                    let timeout = calls.call_timeout().unwrap_or_default();
                    tracing::warn!(server = name, ?timeout, "call timed out; cancelling it upstream");
                    let (answer, _) = super::timed_out(&id, timeout);
                    if super::send_owed(&sender, &calls, &id, answer).await.is_err() {
                        break;
                    }
                    expired.extend(take_by_id(&mut sent, &id));
                }
                if !expired.is_empty() {
                    let grace = stdio::hang_grace(calls.call_timeout().unwrap_or_default());
                    process.abandon(expired, "timeout", Some(grace)).await;
                }
            }
            _ = ctx.cancel.cancelled() => break,
        }
    }
    // The client left (or the agent stops) before these were answered: the child is asked
    // to cancel them, and their late answers have nowhere to go.
    if !sent.is_empty() {
        let keys = sent.into_keys().collect();
        process.abandon(keys, "the client went away", None).await;
    }
    sender.close(CloseCode::Normal, "stream ended").await;
}

/// Handles one client message: a request goes to the child under a new key (returned with
/// the channel of its answer), a cancellation is translated, policy refusals and header
/// mismatches are answered here. `Err`: the stream is gone.
#[allow(clippy::type_complexity)]
async fn from_client(
    process: &SharedProcess,
    message: Bytes,
    meta: &[(String, String)],
    sender: &StreamSender,
    calls: &Calls,
    events: &mpsc::Sender<(Key, Bytes)>,
    sent: &mut HashMap<Key, Sent>,
) -> Result<Option<(Key, oneshot::Receiver<Bytes>)>, ()> {
    let read = match calls.admit(&message) {
        Admission::Forward(read) => read,
        Admission::Refuse { id, answer } => {
            return super::send_owed(sender, calls, &id, answer)
                .await
                .map(|()| None);
        }
    };
    let method = read.method;
    match (read.id, method.is_some()) {
        (Some(id), true) => {
            if method.as_deref() == Some("tools/call")
                && let Err(text) = process.check_param_headers(&message, meta).await
            {
                answer_with_error(sender, calls, &id, ERROR_HEADER_MISMATCH, &text).await?;
                return Ok(None);
            }
            let (answer_tx, answer_rx) = oneshot::channel();
            let (key, stdin) = match process.call(answer_tx, events.clone()).await {
                Ok(registered) => registered,
                Err(refusal) => {
                    answer_with_error(sender, calls, &id, refusal.code, &refusal.message).await?;
                    return Ok(None);
                }
            };
            let Some(rewritten) = rewrite::request(&message, key) else {
                process.abandon(vec![key], "unreadable", None).await;
                answer_with_error(
                    sender,
                    calls,
                    &id,
                    super::ERROR_UPSTREAM,
                    "the request could not be read",
                )
                .await?;
                return Ok(None);
            };
            sent.insert(
                key,
                Sent {
                    id: rewritten.id,
                    token: rewritten.token,
                    initialize: method.as_deref() == Some("initialize"),
                },
            );
            // If the child just went away, its supervisor answers the request.
            let _ = stdin.send(rewritten.message).await;
            Ok(Some((key, answer_rx)))
        }
        // The stateless era has no server-to-client requests to answer.
        (Some(_), false) => {
            tracing::debug!("an answer from the client dropped: nothing asked it");
            Ok(None)
        }
        (None, _) if method.as_deref() == Some("notifications/cancelled") => {
            // Only a cancellation of this stream's own request reaches the child.
            let keys = cancelled_id(&message)
                .map(|id| take_by_id(sent, &id))
                .unwrap_or_default();
            if keys.is_empty() {
                tracing::debug!("a cancellation of no request of this stream dropped");
            } else {
                process.abandon(keys, "cancelled by the client", None).await;
            }
            Ok(None)
        }
        (None, _) => {
            process.notify(message).await;
            Ok(None)
        }
    }
}

/// Removes and returns the keys of the stream's request with client id `id`.
fn take_by_id(sent: &mut HashMap<Key, Sent>, id: &str) -> Vec<Key> {
    let keys: Vec<Key> = sent
        .iter()
        .filter(|(_, s)| s.id == id)
        .map(|(key, _)| *key)
        .collect();
    for key in &keys {
        sent.remove(key);
    }
    keys
}

/// `params.requestId` of a `notifications/cancelled`, as canonical JSON text.
fn cancelled_id(message: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(message).ok()?;
    let id = value.pointer("/params/requestId")?;
    Some(id.to_string())
}

// === impl SharedProcess ===

impl SharedProcess {
    async fn call(
        &self,
        answer: oneshot::Sender<Bytes>,
        events: mpsc::Sender<(Key, Bytes)>,
    ) -> Result<(Key, mpsc::Sender<Bytes>), Refusal> {
        let (reply, replied) = oneshot::channel();
        let gone = || Refusal {
            code: super::ERROR_UPSTREAM,
            message: "the server's process is stopping".into(),
        };
        self.commands
            .send(Command::Call {
                answer,
                events,
                reply,
            })
            .await
            .map_err(|_| gone())?;
        replied.await.map_err(|_| gone())?
    }

    async fn notify(&self, message: Bytes) {
        let _ = self.commands.send(Command::Notify(message)).await;
    }

    async fn abandon(&self, keys: Vec<Key>, reason: &'static str, hang_grace: Option<Duration>) {
        let _ = self
            .commands
            .send(Command::Abandon {
                keys,
                reason,
                hang_grace,
            })
            .await;
    }

    /// Checks a `tools/call`'s `Mcp-Param-*` headers against the tool's annotations. When
    /// the tool list cannot be had, the call goes through unchecked: the server judges it.
    async fn check_param_headers(
        &self,
        message: &[u8],
        meta: &[(String, String)],
    ) -> Result<(), String> {
        #[derive(serde::Deserialize)]
        struct Call {
            params: Params,
        }
        #[derive(serde::Deserialize)]
        struct Params {
            name: String,
            arguments: Option<serde_json::Map<String, serde_json::Value>>,
        }
        let Ok(call) = serde_json::from_slice::<Call>(message) else {
            return Ok(());
        };
        let version = meta
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(super::PROTOCOL_VERSION_HEADER))
            .map_or(super::STATELESS_REVISIONS[0], |(_, v)| v.as_str())
            .to_owned();
        let (reply, replied) = oneshot::channel();
        if self
            .commands
            .send(Command::ToolHeaders { version, reply })
            .await
            .is_err()
        {
            return Ok(());
        }
        // A child that does not list its tools in time does not hold the call up.
        match tokio::time::timeout(TOOL_LIST_WAIT, replied).await {
            Ok(Ok(Some(headers))) => {
                headers.check(&call.params.name, call.params.arguments.as_ref(), meta)
            }
            _ => Ok(()),
        }
    }
}

// === the supervisor ===

/// Owns the shared child and routes what it writes. Never waits on a stream or on the
/// child's stdin, so one slow client cannot stall the others.
struct Supervisor {
    name: String,
    config: Arc<StdioConfig>,
    ctx: UpstreamContext,
    /// In-flight requests by key, at most [`MAX_ROUTES`].
    routes: HashMap<Key, Route>,
    next: Key,
    /// The child's tool annotations, once asked for; dropped on `list_changed` and restart.
    tools: Option<Arc<ToolHeaders>>,
    /// The agent's own `tools/list` under way.
    fetch: Option<Fetch>,
    /// Streams waiting for the tool annotations.
    waiting: Vec<oneshot::Sender<Option<Arc<ToolHeaders>>>>,
    restarts: RestartBudget,
    /// The last child failed: the next start goes through the restart budget.
    failed: bool,
    generation: u32,
    /// When a child silent since a call timed out counts as hung.
    hang_at: Option<Instant>,
}

enum Route {
    /// A client's request: its answer and its notifications go to its stream.
    Client {
        answer: oneshot::Sender<Bytes>,
        events: mpsc::Sender<(Key, Bytes)>,
    },
    /// A page of the agent's own `tools/list`.
    ToolList,
}

struct Fetch {
    /// Its page under way, and since when: a fetch the child never answers is given up.
    key: Key,
    started: Instant,
    version: String,
    pages: usize,
    headers: ToolHeaders,
}

/// One run of the child.
struct Running {
    child: Child,
    pid: Option<u32>,
    stdin: mpsc::Sender<Bytes>,
    lines: mpsc::Receiver<StdoutLine>,
    tasks: [JoinHandle<()>; 3],
}

enum StdoutLine {
    Message(Bytes),
    TooLong {
        len: usize,
        id: Option<String>,
    },
    /// A line that cannot be a message, dropped ([`stdio::StrayLines`]): still word from
    /// the child.
    Stray,
}

impl Supervisor {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut running: Option<Running> = None;
        loop {
            let hang_at = self.hang_at.filter(|_| running.is_some());
            let line = async {
                match running.as_mut() {
                    Some(run) => run.lines.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                command = commands.recv() => {
                    let Some(command) = command else { break };
                    self.command(command, &mut running).await;
                }
                line = line => match line {
                    Some(line) => self.route_output(line, running.as_ref()),
                    None => self.end(&mut running, Outcome::Exited).await,
                },
                _ = sleep_until(hang_at), if hang_at.is_some() => {
                    self.end(&mut running, Outcome::Hung).await;
                }
                _ = self.ctx.cancel.cancelled() => {
                    self.end(&mut running, Outcome::Cancelled).await;
                    return;
                }
            }
        }
        // Every stream of this configuration is gone.
        self.end(&mut running, Outcome::RelayClosed).await;
    }

    async fn command(&mut self, command: Command, running: &mut Option<Running>) {
        match command {
            Command::Call {
                answer,
                events,
                reply,
            } => {
                if self.routes.len() >= MAX_ROUTES {
                    let _ = reply.send(Err(Refusal {
                        code: super::calls::ERROR_BUSY,
                        message: format!(
                            "the server is busy: {MAX_ROUTES} requests in flight in its shared process"
                        ),
                    }));
                    return;
                }
                match self.ensure_running(running).await {
                    Ok(stdin) => {
                        let key = self.key();
                        self.routes.insert(key, Route::Client { answer, events });
                        let _ = reply.send(Ok((key, stdin)));
                    }
                    Err(message) => {
                        let _ = reply.send(Err(Refusal {
                            code: super::ERROR_UPSTREAM,
                            message,
                        }));
                    }
                }
            }
            Command::Notify(message) => {
                if let Some(run) = running.as_ref() {
                    write(&run.stdin, message);
                }
            }
            Command::Abandon {
                keys,
                reason,
                hang_grace,
            } => {
                for key in keys {
                    if self.routes.remove(&key).is_some()
                        && let Some(run) = running.as_ref()
                    {
                        write(&run.stdin, rewrite::cancellation(key, reason));
                    }
                }
                if let Some(grace) = hang_grace
                    && running.is_some()
                    && self.hang_at.is_none()
                {
                    self.hang_at = Some(Instant::now() + grace);
                }
            }
            Command::ToolHeaders { version, reply } => {
                if let Some(tools) = &self.tools {
                    let _ = reply.send(Some(tools.clone()));
                    return;
                }
                self.waiting.retain(|waiting| !waiting.is_closed());
                self.waiting.push(reply);
                if let Some(fetch) = &self.fetch {
                    if fetch.started.elapsed() < TOOL_LIST_WAIT {
                        return;
                    }
                    let stale = fetch.key;
                    self.routes.remove(&stale);
                    let waiting = self.waiting.pop();
                    self.tools_unknown();
                    self.waiting.extend(waiting);
                }
                match self.ensure_running(running).await {
                    Ok(stdin) => {
                        let key = self.key();
                        self.routes.insert(key, Route::ToolList);
                        write(
                            &stdin,
                            rewrite::own_request(key, "tools/list", &version, None),
                        );
                        self.fetch = Some(Fetch {
                            key,
                            started: Instant::now(),
                            version,
                            pages: 1,
                            headers: ToolHeaders::default(),
                        });
                    }
                    Err(_) => self.tools_unknown(),
                }
            }
        }
    }

    /// Routes one message of the child's.
    fn route_output(&mut self, line: StdoutLine, running: Option<&Running>) {
        // Any word from the child: it is not hung.
        self.hang_at = None;
        let message = match line {
            StdoutLine::Message(message) => message,
            StdoutLine::Stray => return,
            StdoutLine::TooLong { len, id } => {
                tracing::warn!(server = %self.name, len, "server wrote a message over the tunnel limit");
                if let Some(key) = id.as_deref().and_then(rewrite::answer_key) {
                    let max = self.ctx.max_message_len;
                    let text = format!(
                        "the server's message of {len} bytes exceeds the tunnel's limit of {max} bytes"
                    );
                    let error = super::calls::error_response(
                        &rewrite::wire_id(key),
                        super::ERROR_TOO_LARGE,
                        &text,
                    );
                    self.answer(key, error, running);
                }
                return;
            }
        };
        if super::calls::method(&message).as_deref() == Some("notifications/tools/list_changed") {
            self.tools = None;
        }
        match rewrite::route(&message) {
            Routing::Answer(key) => self.answer(key, message, running),
            Routing::Event { key, ends } => {
                let route = if ends { self.routes.remove(&key) } else { None };
                let events = match (&route, self.routes.get(&key)) {
                    (Some(Route::Client { events, .. }), _)
                    | (None, Some(Route::Client { events, .. })) => events,
                    _ => {
                        tracing::debug!(server = %self.name, "a notification for no request in flight dropped");
                        return;
                    }
                };
                if events.try_send((key, message)).is_err() {
                    tracing::debug!(server = %self.name, "a notification dropped: its stream is not keeping up");
                }
            }
            Routing::Request(id) => {
                tracing::debug!(server = %self.name, "a request from the server refused: the stateless era has no server-to-client requests");
                if let Some(run) = running {
                    write(
                        &run.stdin,
                        super::calls::error_response(
                            &id,
                            ERROR_METHOD_NOT_FOUND,
                            "no client to ask: stateless requests cannot be answered by the client",
                        ),
                    );
                }
            }
            Routing::Unrouted => {
                // An answer that went wrong after its start still closes its request.
                if let Some(key) =
                    super::calls::broken_answer(&message).and_then(|id| rewrite::answer_key(&id))
                {
                    tracing::warn!(server = %self.name, bytes = message.len(), "the server's answer is not valid JSON; its call gets an error");
                    let error = super::calls::error_response(
                        &rewrite::wire_id(key),
                        super::ERROR_UPSTREAM,
                        "the upstream server's answer is not valid JSON",
                    );
                    self.answer(key, error, running);
                    return;
                }
                tracing::debug!(server = %self.name, "a message of the server's that names no request dropped");
            }
        }
    }

    fn answer(&mut self, key: Key, message: Bytes, running: Option<&Running>) {
        match self.routes.remove(&key) {
            Some(Route::Client { answer, .. }) => {
                let _ = answer.send(message);
            }
            Some(Route::ToolList) => self.tool_page(&message, running),
            None => {
                tracing::debug!(server = %self.name, "an answer to no request in flight dropped");
            }
        }
    }

    /// Takes in one page of the agent's own `tools/list`, and asks for the next.
    fn tool_page(&mut self, message: &[u8], running: Option<&Running>) {
        let Some(mut fetch) = self.fetch.take() else {
            return;
        };
        let page: Option<serde_json::Value> = serde_json::from_slice(message).ok();
        let Some(result) = page.as_ref().and_then(|p| p.get("result")) else {
            tracing::warn!(server = %self.name, "the server's tools/list failed; Mcp-Param headers are not checked");
            self.tools_unknown();
            return;
        };
        if let Some(tools) = result.get("tools").and_then(|t| t.as_array()) {
            fetch.headers.add_page(tools);
        }
        match (result.get("nextCursor").and_then(|c| c.as_str()), running) {
            (Some(cursor), Some(run)) if fetch.pages < MAX_TOOL_PAGES => {
                let key = self.key();
                self.routes.insert(key, Route::ToolList);
                write(
                    &run.stdin,
                    rewrite::own_request(key, "tools/list", &fetch.version, Some(cursor)),
                );
                fetch.pages += 1;
                fetch.key = key;
                fetch.started = Instant::now();
                self.fetch = Some(fetch);
            }
            _ => {
                let tools = Arc::new(fetch.headers);
                self.tools = Some(tools.clone());
                for waiting in self.waiting.drain(..) {
                    let _ = waiting.send(Some(tools.clone()));
                }
            }
        }
    }

    fn tools_unknown(&mut self) {
        self.fetch = None;
        for waiting in self.waiting.drain(..) {
            let _ = waiting.send(None);
        }
    }

    fn key(&mut self) -> Key {
        self.next += 1;
        self.next
    }

    /// The running child's stdin, starting the child if there is none: at once the first
    /// time, after the restart delay once a child failed, not at all while the budget of
    /// restarts is spent.
    async fn ensure_running(
        &mut self,
        running: &mut Option<Running>,
    ) -> Result<mpsc::Sender<Bytes>, String> {
        if let Some(run) = running.as_ref() {
            return Ok(run.stdin.clone());
        }
        if self.failed {
            let Some(delay) = self.restarts.next_delay() else {
                return Err(format!(
                    "the server failed {} times within {:?}, so it is not restarted now",
                    stdio::RESTART_LIMIT,
                    stdio::RESTART_WINDOW
                ));
            };
            tracing::info!(server = %self.name, ?delay, "restarting the stdio server");
            self.ctx.metrics.restarted(&self.name);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.ctx.cancel.cancelled() => return Err("the agent is stopping".into()),
            }
        }
        let mut child = match stdio::spawn(&self.config) {
            Ok(child) => child,
            Err(err) => {
                tracing::warn!(server = %self.name, command = %self.config.command, %err, "cannot start stdio server");
                self.failed = true;
                return Err(format!("cannot start the server: {err}"));
            }
        };
        let pid = child.id();
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            // Unreachable: all three were configured as pipes in `spawn`.
            return Err("no pipes to the server".into());
        };
        tracing::info!(server = %self.name, pid, generation = self.generation, "shared stdio server started");
        self.generation += 1;
        let stderr_task = tokio::spawn(
            stdio::log_stderr(self.name.clone(), stderr, self.ctx.redactor.clone())
                .instrument(tracing::Span::current()),
        );
        let (stdin_tx, mut stdin_rx) = mpsc::channel::<Bytes>(STDIN_DEPTH);
        let writer = tokio::spawn(async move {
            let mut stdin = stdin;
            while let Some(message) = stdin_rx.recv().await {
                if stdio::write_line(&mut stdin, message).await.is_err() {
                    return;
                }
            }
        });
        let (lines_tx, lines) = mpsc::channel(STDOUT_DEPTH);
        let max = self.ctx.max_message_len;
        let name = self.name.clone();
        let reader = tokio::spawn(async move {
            let mut stdout = BufReader::with_capacity(64 * 1024, stdout);
            let mut line = BytesMut::new();
            let mut stray = stdio::StrayLines::default();
            loop {
                let next = match stdio::read_line(&mut stdout, &mut line, max, None).await {
                    Ok(Line::Message) => {
                        let message = line.split().freeze();
                        if message.iter().all(u8::is_ascii_whitespace) {
                            continue;
                        }
                        if stray.is_message(&name, &message) {
                            StdoutLine::Message(message)
                        } else {
                            StdoutLine::Stray
                        }
                    }
                    Ok(Line::TooLong { len, id, .. }) => StdoutLine::TooLong { len, id },
                    Ok(Line::Long) => continue,
                    Ok(Line::Eof) | Err(_) => return,
                };
                if lines_tx.send(next).await.is_err() {
                    return;
                }
            }
        });
        *running = Some(Running {
            child,
            pid,
            stdin: stdin_tx.clone(),
            lines,
            tasks: [stderr_task, writer, reader],
        });
        Ok(stdin_tx)
    }

    /// Stops the child, if one runs, and fails what it had in flight.
    async fn end(&mut self, running: &mut Option<Running>, outcome: Outcome) {
        self.hang_at = None;
        let Some(mut run) = running.take() else {
            return;
        };
        // Closing stdin (the writer holds it) tells the child to finish.
        run.tasks[1].abort();
        let status = stdio::stop(&mut run.child, run.pid, outcome).await;
        for task in &run.tasks {
            task.abort();
        }
        let what = match outcome {
            Outcome::Exited => "exited",
            Outcome::Hung => "was killed after it stopped answering",
            Outcome::RelayClosed | Outcome::Cancelled => "was stopped",
        };
        if matches!(outcome, Outcome::Exited | Outcome::Hung) {
            tracing::warn!(server = %self.name, pid = run.pid, %status, "shared stdio server {what}");
            self.failed = true;
        } else {
            tracing::info!(server = %self.name, pid = run.pid, %status, "shared stdio server stopped");
        }
        let text = format!("the server {what} ({status}) during the call");
        for (key, route) in self.routes.drain() {
            if let Route::Client { answer, .. } = route {
                let error = super::calls::error_response(
                    &rewrite::wire_id(key),
                    super::ERROR_UPSTREAM,
                    &text,
                );
                let _ = answer.send(error);
            }
        }
        self.tools = None;
        self.tools_unknown();
    }
}

/// Writes to the child without waiting: when its stdin queue is full, a task waits instead
/// (it ends with the child).
fn write(stdin: &mpsc::Sender<Bytes>, message: Bytes) {
    if let Err(mpsc::error::TrySendError::Full(message)) = stdin.try_send(message) {
        let stdin = stdin.clone();
        tokio::spawn(async move {
            let _ = stdin.send(message).await;
        });
    }
}

/// JSON-RPC code of MCP 2026-07-28: a header does not match the body (HTTP 400).
const ERROR_HEADER_MISMATCH: i64 = -32020;
/// JSON-RPC: method not found.
const ERROR_METHOD_NOT_FOUND: i64 = -32601;
/// How long a `tools/call` waits for the child's tool list before it goes unchecked.
const TOOL_LIST_WAIT: Duration = Duration::from_secs(10);
/// Requests in flight in one shared process.
const MAX_ROUTES: usize = 4096;
/// Pages of the agent's own `tools/list` followed.
const MAX_TOOL_PAGES: usize = 100;
const COMMAND_DEPTH: usize = 64;
const STDIN_DEPTH: usize = 64;
const STDOUT_DEPTH: usize = 64;
/// Notifications queued for one stream; beyond, they are dropped (never an answer).
const EVENTS_PER_STREAM: usize = 64;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use outpost_tunnel::Stream;
    use secrecy::SecretString;
    use tokio_util::sync::CancellationToken;

    use crate::upstream::within;

    use crate::config::StdioConfig;

    /// A stdio MCP server in a few lines of Python: every request gets an empty result.
    const SERVER: &str = r#"
import json, sys
for line in sys.stdin:
    message = json.loads(line)
    if "id" in message and "method" in message:
        print(json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": {}}), flush=True)
"#;

    /// A stream of the stateless era served by [`super::serve`] through the shared
    /// process of [`SERVER`]: the relay's side of it, and the token that stops it all.
    async fn served() -> (Stream, CancellationToken) {
        let config = super::super::test_tunnel_config();
        let stop = CancellationToken::new();
        let meta = vec![("mcp-protocol-version".to_owned(), "2026-07-28".to_owned())];
        let (relay_side, stream, meta, agent) =
            super::super::opened_stream(config, meta, &stop).await;
        let (calls, ctx) = super::super::test_context(config.max_message_len, &stop);
        let stdio = StdioConfig {
            command: python3(),
            args: vec!["-c".into(), SERVER.into()],
            env: Vec::<(String, SecretString)>::new(),
            env_is_secret: vec![],
            reference_values: vec![],
            cwd: None,
        };
        tokio::spawn(async move {
            let _agent = agent;
            super::serve("erp", &stdio, stream, meta, calls, ctx).await;
        });
        (relay_side, stop)
    }

    /// python3 as found on `PATH`: the child itself gets no environment to search.
    fn python3() -> String {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|dir| dir.join("python3"))
            .find(|path| path.is_file())
            .expect("python3 on PATH")
            .to_string_lossy()
            .into_owned()
    }

    fn json(message: &[u8]) -> serde_json::Value {
        serde_json::from_slice(message).unwrap()
    }

    /// A stateless request's stream is over once its answer is sent: the agent closes it
    /// behind the answer.
    #[tokio::test]
    async fn the_stream_of_an_answered_request_is_closed_behind_its_answer() {
        let (mut relay_side, stop) = served().await;
        let request = r#"{"jsonrpc":"2.0","id":"r1","method":"tools/list","params":{}}"#;
        relay_side.sender.send(Bytes::from(request)).await.unwrap();
        let answer = within(relay_side.receiver.recv()).await.unwrap();
        assert_eq!(
            json(&answer),
            json(br#"{"jsonrpc":"2.0","id":"r1","result":{}}"#)
        );
        super::super::assert_closed_by_agent(&mut relay_side).await;
        stop.cancel();
    }

    /// An `initialize` on such a stream (a session's start) is answered and the stream
    /// stays open for what follows.
    #[tokio::test]
    async fn the_stream_stays_open_after_an_initialize() {
        let (mut relay_side, stop) = served().await;
        let initialize = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#;
        relay_side
            .sender
            .send(Bytes::from(initialize))
            .await
            .unwrap();
        let answer = within(relay_side.receiver.recv()).await.unwrap();
        assert_eq!(
            json(&answer),
            json(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#)
        );
        let more = tokio::time::timeout(Duration::from_millis(500), relay_side.receiver.recv());
        assert!(more.await.is_err(), "the stream ended after an initialize");
        stop.cancel();
    }
}
