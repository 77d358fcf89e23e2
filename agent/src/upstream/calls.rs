//! One stream's calls, and the local policy applied to them on the way through: which
//! client requests the upstream has not answered yet (so shutdown can wait for them),
//! hidden tools refused and filtered out of `tools/list`, the server's cap on concurrent
//! calls, the per-call timeout, metrics, and the redaction of secrets in everything the
//! upstream sends. Reads only `id`, `method`, a `tools/call`'s tool name and, for
//! `tools/list` results when tools are hidden, the tool names.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use outpost_protocol::envelope;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::{CallStatus, Denial, Metrics};
use crate::policy::ToolPolicy;
use crate::redact::Redactor;

/// The agent-wide count of calls in flight: calls open, and answers decided on but not
/// yet handed to the tunnel. A draining agent closes its tunnel once it is zero, so an
/// answer counts until it is queued ahead of the tunnel's close.
#[derive(Debug, Clone)]
pub(crate) struct InFlight(watch::Sender<usize>);

/// A server's state shared by all its streams: its policy (replaced on reload) and the
/// calls in flight for `max_concurrent_calls`.
#[derive(Debug)]
pub(crate) struct ServerRuntime {
    pub(crate) name: String,
    policy: RwLock<Arc<ToolPolicy>>,
    busy: AtomicUsize,
    /// Sessions (streams) open now, for `max_sessions`.
    sessions: Arc<AtomicUsize>,
}

/// One of a server's `max_sessions` places, held by a stream while it lives.
#[derive(Debug)]
pub(crate) struct SessionPlace(Arc<AtomicUsize>);

impl Drop for SessionPlace {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What to do with a message from the client.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Send it upstream; with the id and method admitting it read, so that no bridge reads
    /// them again.
    Forward(Read),
    /// Do not send it; answer request `id` (canonical JSON text) with this error instead,
    /// owed until sent (see [`super::send_owed`]).
    Refuse { id: String, answer: Bytes },
}

/// A message's id and method, as [`read`] and [`Calls::admit`] read them.
#[derive(Debug, Default)]
pub(crate) struct Read {
    /// Its id (canonical JSON text), unless absent or `null`.
    pub(crate) id: Option<String>,
    pub(crate) method: Option<String>,
    /// The serial of the call [`Calls::admit`] opened for it.
    pub(crate) serial: Option<u64>,
}

/// One call: its request's id, and which of the calls with that id it is. A client may
/// use an id again once its call is closed (answered, cancelled, timed out), while the
/// exchange of the first is still ending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CallRef {
    pub(crate) id: String,
    serial: u64,
}

impl Read {
    /// The id of a request: a message with an id and a method.
    pub(crate) fn request_id(&self) -> Option<&str> {
        self.id.as_deref().filter(|_| self.method.is_some())
    }

    /// The call admitting this request opened.
    pub(crate) fn call(&self) -> Option<CallRef> {
        Some(CallRef {
            id: self.request_id()?.to_owned(),
            serial: self.serial?,
        })
    }
}

/// Where an upstream message came from, which says which call an answer in it can be for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Via<'a> {
    /// A channel every call's answers share (a stdio server's stdout): the id alone says
    /// which call, and an answer is late only after the agent answered its call on timeout.
    Shared,
    /// The response to the HTTP POST that sent `call`'s request: an answer there with that
    /// id is that call's, whichever call has the id now. Once the call is closed
    /// (cancelled, timed out) such an answer is late, also when the client has used the id
    /// again since. Answers with other ids are taken as on `Shared`.
    Reply(&'a CallRef),
    /// A channel that carries no answers: an HTTP session's GET stream, where MCP forbids
    /// them unless a stream is resumed, which the agent never does. Servers put an answer
    /// there once its POST's response has ended (rmcp, after a cancellation), so it is late.
    NoAnswers,
}

/// One stream's unanswered client requests. Dropping it releases them from the counts.
/// Shared by a stream's two directions, which run concurrently.
#[derive(Debug)]
pub(crate) struct Calls {
    state: Mutex<State>,
    total: InFlight,
    server: Arc<ServerRuntime>,
    metrics: Arc<Metrics>,
    redactor: Arc<Redactor>,
}

#[derive(Debug, Default)]
struct State {
    open: HashMap<String, OpenCall>,
    /// Requests the agent answered itself on timeout: a late answer is dropped.
    expired: HashSet<String>,
    /// Answers decided on (a call closed, a request refused) and not yet handed to the
    /// tunnel, by request id: the upstream's answer, or the agent's own error (without its
    /// text until [`Calls::owe`] sets it).
    /// A stdio session's loop may be dropped while it waits to send one (the server
    /// exits); [`Calls::take_all`] then still answers them. Elsewhere an entry outlives
    /// its send ([`Calls::delivered`]) only when the stream is gone.
    owed: Owed,
    /// Answers [`Calls::take_all`] gave out and their sender has not handed to the tunnel
    /// yet (see [`Calls::handed`]).
    handing: usize,
    /// When a call first timed out with no word from the upstream since.
    silent_since: Option<Instant>,
    /// The serial of the next call opened.
    next_serial: u64,
}

/// When a call times out: `None` when no timeout is set.
pub(crate) type Deadline = Option<Instant>;

#[derive(Debug)]
struct OpenCall {
    /// Which of the calls with this id it is ([`CallRef`]).
    serial: u64,
    tool: Option<String>,
    started: Instant,
    deadline: Deadline,
    /// Holds one of the server's `max_concurrent_calls` slots.
    slot: bool,
    /// A `tools/list` whose result must be filtered.
    filter_tools: bool,
}

#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct CancelledParams<'a> {
    #[serde(borrow, rename = "requestId")]
    request_id: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct CallParams<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
}

impl InFlight {
    pub(crate) fn new() -> Self {
        Self(watch::Sender::new(0))
    }

    /// Calls in flight now.
    pub(crate) fn get(&self) -> usize {
        *self.0.borrow()
    }

    /// Resolves when no call is in flight.
    pub(crate) async fn idle(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    fn add(&self, n: usize) {
        self.0.send_modify(|count| *count += n);
    }

    fn sub(&self, n: usize) {
        self.0.send_modify(|count| *count = count.saturating_sub(n));
    }
}

impl ServerRuntime {
    pub(crate) fn new(name: String, policy: ToolPolicy) -> Self {
        Self {
            name,
            policy: RwLock::new(Arc::new(policy)),
            busy: AtomicUsize::new(0),
            sessions: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// A place for one more session, or `Err(max)` when the policy's `max_sessions` are
    /// all open.
    pub(crate) fn open_session(&self) -> Result<SessionPlace, usize> {
        let max = self.policy().max_sessions.unwrap_or(usize::MAX);
        self.sessions
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < max).then_some(open + 1)
            })
            .map(|_| SessionPlace(self.sessions.clone()))
            .map_err(|_| max)
    }

    /// Sessions open now.
    pub(crate) fn open_sessions(&self) -> usize {
        self.sessions.load(Ordering::Acquire)
    }

    /// The policy now in force.
    pub(crate) fn policy(&self) -> Arc<ToolPolicy> {
        self.policy
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the policy; calls in flight keep their slots and deadlines.
    pub(crate) fn set_policy(&self, policy: ToolPolicy) {
        *self.policy.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(policy);
    }

    fn try_take_slot(&self, max: Option<usize>) -> bool {
        let Some(max) = max else {
            self.busy.fetch_add(1, Ordering::AcqRel);
            return true;
        };
        self.busy
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |busy| {
                (busy < max).then_some(busy + 1)
            })
            .is_ok()
    }

    fn release_slot(&self) {
        let _ = self
            .busy
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |busy| {
                Some(busy.saturating_sub(1))
            });
    }
}

impl Calls {
    pub(crate) fn new(
        total: InFlight,
        server: Arc<ServerRuntime>,
        metrics: Arc<Metrics>,
        redactor: Arc<Redactor>,
    ) -> Self {
        Self {
            state: Mutex::new(State::default()),
            total,
            server,
            metrics,
            redactor,
        }
    }

    /// Notes a message from the client and decides whether it goes upstream. A request
    /// opens a call unless policy refuses it; a cancellation closes one, since a server
    /// does not answer a cancelled request.
    pub(crate) fn admit(&self, message: &[u8]) -> Admission {
        let Ok(peek) = serde_json::from_slice::<Peek<'_>>(message) else {
            return Admission::Forward(Read::default());
        };
        let id = peek.id.filter(|id| id.get() != "null");
        let Some(method) = peek.method.as_deref() else {
            return Admission::Forward(Read {
                id: id.map(|id| id.get().to_owned()),
                method: None,
                serial: None,
            });
        };
        let Some(id) = id else {
            if method == "notifications/cancelled"
                && let Some(cancelled) = peek
                    .params
                    .and_then(|p| serde_json::from_str::<CancelledParams<'_>>(p.get()).ok())
                    .and_then(|p| p.request_id)
            {
                self.close(cancelled.get(), CallStatus::Cancelled);
            }
            return Admission::Forward(Read {
                id: None,
                method: Some(method.to_owned()),
                serial: None,
            });
        };
        let id = id.get().to_owned();
        let policy = self.server.policy();
        let tool = (method == "tools/call")
            .then(|| {
                peek.params
                    .and_then(|p| serde_json::from_str::<CallParams<'_>>(p.get()).ok())
                    .and_then(|p| p.name.map(Cow::into_owned))
            })
            .flatten();
        if method == "tools/call" {
            let permitted = tool.as_deref().is_some_and(|tool| policy.permits(tool));
            if !permitted {
                self.metrics.denied(&self.server.name, Denial::Tool);
                tracing::info!(server = %self.server.name, tool = tool.as_deref().unwrap_or(""), "tool call refused by local policy");
                let name = tool.as_deref().unwrap_or("");
                let answer =
                    error_response(&id, ERROR_INVALID_PARAMS, &format!("Unknown tool: {name}"));
                return self.refuse(id, answer);
            }
        }
        // The handshake and pings are not work: they neither take a slot nor time out.
        let is_work = !matches!(method, "initialize" | "ping");
        let slot = is_work && self.server.try_take_slot(policy.max_concurrent_calls);
        if is_work && !slot {
            self.metrics.denied(&self.server.name, Denial::Concurrency);
            let max = policy.max_concurrent_calls.unwrap_or_default();
            let answer = error_response(
                &id,
                ERROR_BUSY,
                &format!("the server is busy: {max} calls in flight, the agent's limit for it"),
            );
            return self.refuse(id, answer);
        }
        let now = Instant::now();
        let mut state = self.lock();
        let serial = state.next_serial;
        state.next_serial += 1;
        let call = OpenCall {
            serial,
            tool,
            started: now,
            deadline: policy.call_timeout.filter(|_| is_work).map(|t| now + t),
            slot,
            filter_tools: method == "tools/list" && policy.filters_tools(),
        };
        state.expired.remove(&id);
        if let Some(replaced) = state.open.insert(id.clone(), call) {
            // A client reusing an open id: the relay refuses that, so this is a bug
            // elsewhere; keep the counts straight regardless.
            if replaced.slot {
                self.server.release_slot();
            }
        }
        drop(state);
        Admission::Forward(Read {
            id: Some(id),
            method: Some(method.to_owned()),
            serial: Some(serial),
        })
    }

    /// Refuses request `id` with `answer`, owed from now on until [`Calls::delivered`].
    fn refuse(&self, id: String, answer: Bytes) -> Admission {
        self.lock().owed.decide(&id);
        Admission::Refuse { id, answer }
    }

    /// Notes a message from the upstream on its way to the client: closes the call it
    /// answers, filters hidden tools out of a `tools/list` result, and redacts secrets.
    /// `None`: drop it (a late answer to a call the agent already answered); else the
    /// message and, if it is an answer, the id it answers (canonical JSON text), whose
    /// answer is owed until [`Calls::delivered`]. Reads the message once. An answer that
    /// is not JSON (see [`broken_answer`]) is replaced by an error answering its call,
    /// which the relay could not have told apart from the rest.
    /// `via` says which call an answer can be for ([`Via`]).
    pub(crate) fn outgoing(&self, message: Bytes, via: Via<'_>) -> Option<(Bytes, Option<String>)> {
        let mut message = message;
        let mut answer = answer(&message);
        if answer.is_none()
            && let Some(id) = broken_answer(&message)
        {
            tracing::warn!(server = %self.server.name, bytes = message.len(), "the server's answer is not valid JSON; its call gets an error");
            message = error_response(
                &id,
                super::ERROR_UPSTREAM,
                "the upstream server's answer is not valid JSON",
            );
            answer = Some((id, true));
        }
        {
            let mut state = self.lock();
            state.silent_since = None;
            if let Some((id, is_error)) = &answer {
                if state.late(id, via) {
                    tracing::debug!(server = %self.server.name, "a late answer dropped");
                    return None;
                }
                if let Some(call) = state.open.remove(id) {
                    state.owed.decide(id);
                    drop(state);
                    self.finish(
                        &call,
                        if *is_error {
                            CallStatus::Error
                        } else {
                            CallStatus::Ok
                        },
                    );
                    if call.filter_tools {
                        message = filter_tools(message, &self.server.policy(), id);
                    }
                }
            }
        }
        let (message, redacted) = self.redactor.redact(message);
        self.note_redacted(redacted);
        Some((message, answer.map(|(id, _)| id)))
    }

    /// Whether the answer to call `id` may go on to the client as it arrives, before its
    /// end: the call is open and its result needs no filtering. `Some` holds the call's
    /// deadline, by which the answer must have ended. The upstream is heard from (see
    /// [`Calls::heard`]). A late answer ([`Via`]) is not: [`Calls::outgoing`] drops it
    /// once it is read whole.
    pub(crate) fn streamable(&self, id: &str, via: Via<'_>) -> Option<Deadline> {
        let mut state = self.lock();
        if state.is_late(id, via) {
            return None;
        }
        let call = state.open.get(id)?;
        if call.filter_tools {
            return None;
        }
        let deadline = call.deadline;
        state.silent_since = None;
        Some(deadline)
    }

    /// An answer to `id` came after its call was closed and is dropped unread (too long to
    /// read): a timed-out call's late answer comes once, so its expiry is forgotten, as
    /// [`Calls::outgoing`] forgets it for the answers it drops.
    pub(crate) fn dropped_late(&self, id: &str) {
        self.lock().expired.remove(id);
    }

    /// The upstream is writing: a server in the middle of a long answer is not silent.
    pub(crate) fn heard(&self) {
        self.lock().silent_since = None;
    }

    /// The upstream is writing a line that will be dropped: a silence counted since a
    /// timeout starts again now rather than ends, so that a server that stops in the
    /// middle of the line still counts as hung.
    pub(crate) fn still_writing(&self) {
        let mut state = self.lock();
        if state.silent_since.is_some() {
            state.silent_since = Some(Instant::now());
        }
    }

    /// Redaction for an answer sent on as it arrives.
    pub(crate) fn redaction(&self) -> crate::redact::RedactStream<'_> {
        self.redactor.stream()
    }

    /// Closes call `id`, whose answer went on as it arrived and has ended. `false` if the
    /// call had timed out meanwhile (its timeout's error follows the answer). Either way
    /// the upstream has been heard, and no late answer is awaited.
    pub(crate) fn streamed(&self, id: &str) -> bool {
        let mut state = self.lock();
        state.silent_since = None;
        state.expired.remove(id);
        let call = state.open.remove(id);
        drop(state);
        self.finished(call, CallStatus::Ok)
    }

    /// Closes call `id` as timed out, its answer still arriving at its deadline. `true` if
    /// this closed it (the caller answers it with the timeout's error), `false` if the
    /// timeout had already (and answers it). The rest of the answer is skipped, so no late
    /// answer is awaited; a server that now writes nothing more counts as silent, as after
    /// any timeout, until [`Calls::heard`].
    pub(crate) fn time_out_arriving(&self, id: &str) -> bool {
        let mut state = self.lock();
        state.expired.remove(id);
        let call = state.open.remove(id);
        if call.is_some() {
            state.owed.decide(id);
            if state.silent_since.is_none() {
                state.silent_since = Some(Instant::now());
            }
        }
        drop(state);
        self.finished(call, CallStatus::Timeout)
    }

    /// Counts and logs secrets replaced in an upstream message.
    pub(crate) fn note_redacted(&self, redacted: usize) {
        if redacted > 0 {
            self.metrics.redacted(&self.server.name, redacted);
            tracing::warn!(server = %self.server.name, redacted, "secret values redacted from an upstream message");
        }
    }

    /// Redacts text the agent writes itself from upstream material (error texts, logs).
    pub(crate) fn redact_text(&self, text: &str) -> String {
        self.redactor.redact_text(text)
    }

    /// Closes a call answered by the agent itself (an error in the upstream's place),
    /// owed until [`Calls::delivered`]. `false` if it was not open (answered already).
    pub(crate) fn answered(&self, id: &str) -> bool {
        self.answered_if(id, |_| true)
    }

    /// [`Calls::answered`] for this very call: `false`, touching nothing, when it is closed
    /// already, even if a later call has taken its id.
    pub(crate) fn answered_call(&self, call: &CallRef) -> bool {
        self.answered_if(&call.id, |open| open.serial == call.serial)
    }

    fn answered_if(&self, id: &str, this_call: impl FnOnce(&OpenCall) -> bool) -> bool {
        let mut state = self.lock();
        let call = match state.open.get(id) {
            Some(open) if this_call(open) => state.open.remove(id),
            _ => None,
        };
        if call.is_some() {
            state.owed.decide(id);
        }
        drop(state);
        self.finished(call, CallStatus::Error)
    }

    fn close(&self, id: &str, status: CallStatus) -> bool {
        let call = self.lock().open.remove(id);
        self.finished(call, status)
    }

    /// Counts `call`, just taken from the open calls with the lock released since, as
    /// finished with `status`. `false` if there was none (it was closed already).
    fn finished(&self, call: Option<OpenCall>, status: CallStatus) -> bool {
        call.map(|call| self.finish(&call, status)).is_some()
    }

    fn finish(&self, call: &OpenCall, status: CallStatus) {
        if call.slot {
            self.server.release_slot();
        }
        self.metrics.call(
            &self.server.name,
            call.tool.as_deref(),
            status,
            call.started.elapsed(),
        );
    }

    /// The earliest deadline of an open call.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.lock().open.values().filter_map(|c| c.deadline).min()
    }

    /// Closes every call past its deadline and returns their ids, to be answered with a
    /// timeout error and cancelled upstream.
    pub(crate) fn expire(&self, now: Instant) -> Vec<String> {
        let mut state = self.lock();
        let due: Vec<String> = state
            .open
            .iter()
            .filter(|(_, call)| call.deadline.is_some_and(|d| d <= now))
            .map(|(id, _)| id.clone())
            .collect();
        let mut closed = Vec::new();
        for id in &due {
            if let Some(call) = state.open.remove(id) {
                closed.push(call);
            }
            state.owed.decide(id);
            if state.expired.len() < MAX_EXPIRED_REMEMBERED {
                state.expired.insert(id.clone());
            }
        }
        if !due.is_empty() && state.silent_since.is_none() {
            state.silent_since = Some(now);
        }
        drop(state);
        for call in &closed {
            self.finish(call, CallStatus::Timeout);
        }
        due
    }

    /// How long the upstream has said nothing since a call of it timed out: a stdio
    /// server silent for long after a timeout is hung.
    pub(crate) fn silent_for(&self, now: Instant) -> Option<Duration> {
        self.lock().silent_since.map(|since| now - since)
    }

    /// The call timeout now in force.
    pub(crate) fn call_timeout(&self) -> Option<Duration> {
        self.server.policy().call_timeout
    }

    /// Every call still owed an answer, closing them all: the upstream is gone. Open
    /// calls come with `None` (the agent answers each with an error); calls whose answer
    /// was decided on but not sent (see `owed`) with that answer, if it was set. Each
    /// counts as in flight until [`Calls::handed`] says it is sent.
    pub(crate) fn take_all(&self) -> Vec<(String, Option<Bytes>)> {
        let mut state = self.lock();
        let calls: Vec<(String, OpenCall)> = state.open.drain().collect();
        let owed = state.owed.drain();
        state.handing += calls.len() + owed.len();
        state.silent_since = None;
        drop(state);
        for (_, call) in &calls {
            self.finish(call, CallStatus::Error);
        }
        calls
            .into_iter()
            .map(|(id, _)| (id, None))
            .chain(owed)
            .collect()
    }

    /// `answer` is about to be sent to request `id`, whose call is closed: owed until
    /// [`Calls::delivered`].
    pub(crate) fn owe(&self, id: &str, answer: &Bytes) {
        self.lock().owed.set(id, answer);
    }

    /// The answer to request `id` has been handed to the tunnel: it is owed no longer.
    pub(crate) fn delivered(&self, id: &str) {
        self.lock().owed.sent(id);
    }

    /// The answer to request `id` whose text was set last will not be sent (the tunnel
    /// refused it); the one sent instead, set by the next [`Calls::owe`], takes its place.
    /// It stays owed meanwhile, so the stream's count never falls between the two.
    pub(crate) fn withdraw(&self, id: &str) {
        self.lock().owed.withdraw(id);
    }

    /// One answer [`Calls::take_all`] gave out has been handed to the tunnel.
    pub(crate) fn handed(&self) {
        let mut state = self.lock();
        state.handing = state.handing.saturating_sub(1);
    }

    /// The one unanswered request, if exactly one is open: the only call a nameless
    /// failure can belong to.
    pub(crate) fn only_open(&self) -> Option<String> {
        let state = self.lock();
        if state.open.len() == 1 {
            state.open.keys().next().cloned()
        } else {
            None
        }
    }

    /// Whether some call with id `id` is unanswered.
    #[cfg(test)]
    pub(crate) fn has_open(&self, id: &str) -> bool {
        self.lock().open.contains_key(id)
    }

    /// Whether `call` is still unanswered.
    pub(crate) fn is_open(&self, call: &CallRef) -> bool {
        self.lock().is_open(call)
    }

    /// The state, locked. The agent-wide count follows this stream's share as the lock is
    /// let go.
    fn lock(&self) -> Locked<'_> {
        // Each critical section leaves the state consistent: a poisoned one is usable.
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        Locked {
            owing: state.owing(),
            state,
            total: &self.total,
        }
    }
}

impl Drop for Calls {
    fn drop(&mut self) {
        let mut state = self.lock();
        let open: Vec<OpenCall> = state.open.drain().map(|(_, c)| c).collect();
        state.owed.clear();
        state.handing = 0;
        drop(state);
        for call in &open {
            if call.slot {
                self.server.release_slot();
            }
        }
    }
}

impl State {
    /// Whether `call` is still unanswered: its id is open, and not for a later call.
    fn is_open(&self, call: &CallRef) -> bool {
        self.open
            .get(&call.id)
            .is_some_and(|open| open.serial == call.serial)
    }

    /// Whether an answer to request `id` that came `via` is late: its call was closed
    /// (answered by the agent on timeout, cancelled), whatever call has the id now.
    fn is_late(&self, id: &str, via: Via<'_>) -> bool {
        match via {
            Via::Reply(call) if call.id == id => !self.is_open(call),
            Via::Shared | Via::Reply(_) => self.expired.contains(id),
            Via::NoAnswers => true,
        }
    }

    /// [`State::is_late`], forgetting the expiry it settles: an expired call's late answer
    /// comes once. On a reply, the expiry (that call's, or an earlier one's whose answers
    /// come on their own replies) has no more use.
    fn late(&mut self, id: &str, via: Via<'_>) -> bool {
        let late = self.is_late(id, via);
        if late || matches!(via, Via::Reply(call) if call.id == id) {
            self.expired.remove(id);
        }
        late
    }

    /// What this stream counts in [`InFlight`]: calls open, and answers not yet handed to
    /// the tunnel.
    fn owing(&self) -> usize {
        self.open.len() + self.owed.len + self.handing
    }
}

/// Answers owed, by request id. A client may send an id again once its call is closed, so
/// two answers can be owed under one id (the first call's error still waiting for the
/// tunnel's credit, the second call's answer): each is counted and given out on its own.
#[derive(Debug, Default)]
struct Owed {
    /// Per id, oldest first: each answer's text once [`Owed::set`] has it.
    by_id: HashMap<String, VecDeque<Option<Bytes>>>,
    /// Answers owed, under every id.
    len: usize,
}

impl Owed {
    /// An answer to `id` is decided on; its text comes later.
    fn decide(&mut self, id: &str) {
        self.by_id.entry(id.to_owned()).or_default().push_back(None);
        self.len += 1;
    }

    /// `answer` is about to be sent to `id`: the text of the oldest answer decided on
    /// without one; if every answer owed to `id` has its text, one more owed from now on
    /// (an error for a call that was closed already).
    fn set(&mut self, id: &str, answer: &Bytes) {
        let answers = self.by_id.entry(id.to_owned()).or_default();
        match answers.iter_mut().find(|text| text.is_none()) {
            Some(text) => *text = Some(answer.clone()),
            None => {
                answers.push_back(Some(answer.clone()));
                self.len += 1;
            }
        }
    }

    /// The answer to `id` whose text was set last will not be sent: it waits for the text
    /// of the one sent instead.
    fn withdraw(&mut self, id: &str) {
        if let Some(text) = self
            .by_id
            .get_mut(id)
            .and_then(|answers| answers.iter_mut().rev().find(|text| text.is_some()))
        {
            *text = None;
        }
    }

    /// An answer to `id` is on its way: the oldest one with its text set. (Every answer is
    /// given its text before it is sent; the oldest without one goes for tests that skip
    /// that step.)
    fn sent(&mut self, id: &str) {
        let Some(answers) = self.by_id.get_mut(id) else {
            return;
        };
        let sent = answers.iter().position(Option::is_some).unwrap_or(0);
        if answers.remove(sent).is_some() {
            self.len -= 1;
        }
        if answers.is_empty() {
            self.by_id.remove(id);
        }
    }

    /// Every answer owed, each with its id.
    fn drain(&mut self) -> Vec<(String, Option<Bytes>)> {
        self.len = 0;
        self.by_id
            .drain()
            .flat_map(|(id, answers)| answers.into_iter().map(move |text| (id.clone(), text)))
            .collect()
    }

    fn clear(&mut self) {
        self.by_id.clear();
        self.len = 0;
    }
}

/// [`Calls`]' state under its lock; as it is let go, [`InFlight`] takes the change in
/// [`State::owing`]. Every change to what a stream owes passes through here, so the count
/// cannot fall to zero between a call's close and its answer's send.
struct Locked<'a> {
    state: std::sync::MutexGuard<'a, State>,
    /// [`State::owing`] when the lock was taken.
    owing: usize,
    total: &'a InFlight,
}

impl std::ops::Deref for Locked<'_> {
    type Target = State;

    fn deref(&self) -> &State {
        &self.state
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.state
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let now = self.state.owing();
        if now > self.owing {
            self.total.add(now - self.owing);
        } else if now < self.owing {
            self.total.sub(self.owing - now);
        }
    }
}

/// Removes hidden tools from a `tools/list` result. A result that cannot be read is
/// replaced by an error: hiding must not fail open. An error lists no tools: it goes on
/// as it is, unless it comes with a result too.
fn filter_tools(message: Bytes, policy: &ToolPolicy, id: &str) -> Bytes {
    let value = serde_json::from_slice::<serde_json::Value>(&message).ok();
    if let Some(value) = &value
        && value.get("result").is_none()
        && value.get("error").is_some()
    {
        return message;
    }
    let filtered = value.and_then(|mut value| {
        let tools = value.get_mut("result")?.get_mut("tools")?.as_array_mut()?;
        tools.retain(|tool| {
            tool.get("name")
                .and_then(|n| n.as_str())
                .is_some_and(|name| policy.permits(name))
        });
        serde_json::to_vec(&value).ok()
    });
    match filtered {
        Some(bytes) => Bytes::from(bytes),
        None => error_response(
            id,
            super::ERROR_UPSTREAM,
            "the server's tools/list result could not be read",
        ),
    }
}

/// A JSON-RPC error response to request `id` (canonical JSON text).
pub(crate) fn error_response(id: &str, code: i64, message: &str) -> Bytes {
    let id: serde_json::Value = serde_json::from_str(id).unwrap_or(serde_json::Value::Null);
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": { "code": code, "message": message },
    });
    Bytes::from(body.to_string())
}

/// The message's id and method, from one parse; neither for what is not JSON-RPC.
pub(crate) fn read(message: &[u8]) -> Read {
    let Ok(peek) = serde_json::from_slice::<Peek<'_>>(message) else {
        return Read::default();
    };
    Read {
        id: peek
            .id
            .filter(|id| id.get() != "null")
            .map(|id| id.get().to_owned()),
        method: peek.method.map(Cow::into_owned),
        serial: None,
    }
}

/// The message's id (canonical JSON text) and whether it has a method.
pub(crate) fn peek(message: &[u8]) -> Option<(String, bool)> {
    let Read { id, method, .. } = read(message);
    Some((id?, method.is_some()))
}

/// The id a message from the upstream answers (canonical JSON text) and whether the answer
/// is an error; `None` for a request, a notification or what is not JSON-RPC.
fn answer(message: &[u8]) -> Option<(String, bool)> {
    if message.len() >= envelope::FAST_PATH_FROM
        && let Ok(members) = envelope::members(message)
        && let Some(answer) = answer_of(&members)
    {
        return answer;
    }
    answer_by_serde(message)
}

/// The id of an answer that is not JSON: it begins as one ([`envelope::answer_head`]:
/// `{"jsonrpc":"2.0","id":<id>,"result":`), so the server meant to answer that request,
/// but the text goes wrong after. A line of log output written to stdout is not one.
pub(crate) fn broken_answer(message: &[u8]) -> Option<String> {
    let id = envelope::answer_head(message)?;
    serde_json::from_slice::<serde::de::IgnoredAny>(message)
        .is_err()
        .then_some(id)
}

fn answer_by_serde(message: &[u8]) -> Option<(String, bool)> {
    let peek: Peek<'_> = serde_json::from_slice(message).ok()?;
    if peek.method.is_some() {
        return None;
    }
    let id = peek.id.filter(|id| id.get() != "null")?;
    Some((id.get().to_owned(), peek.error.is_some()))
}

/// [`answer`] from the fast path's members as serde_json reads them into a [`Peek`]; `None`
/// where it would refuse the message (serde_json then decides).
fn answer_of(members: &envelope::Members<'_>) -> Option<Option<(String, bool)>> {
    // A method that is a string makes a request or notification; one that is not, a
    // message serde_json refuses: no answer either way.
    if envelope::raw_value(members.method)?.is_some() {
        return Some(None);
    }
    let id = envelope::raw_value(members.id)?;
    envelope::raw_value(members.params)?;
    let is_error = envelope::raw_value(members.error)?.is_some();
    Some(id.map(|id| (id.to_owned(), is_error)))
}

/// The message's method, if it is a request or notification.
pub(crate) fn method(message: &[u8]) -> Option<String> {
    read(message).method
}

/// JSON-RPC: invalid params (MCP answers an unknown tool with it).
const ERROR_INVALID_PARAMS: i64 = -32602;
/// JSON-RPC code: the server's concurrency limit is reached (the relay's "busy").
pub(crate) const ERROR_BUSY: i64 = -32016;
/// Timed-out ids remembered to drop their late answers.
const MAX_EXPIRED_REMEMBERED: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    fn calls(policy: ToolPolicy) -> (Calls, InFlight, Arc<Metrics>) {
        let total = InFlight::new();
        let metrics = Arc::new(Metrics::new());
        let server = Arc::new(ServerRuntime::new("erp".into(), policy));
        let (redactor, _) = Redactor::new(std::iter::empty());
        let calls = Calls::new(total.clone(), server, metrics.clone(), Arc::new(redactor));
        (calls, total, metrics)
    }

    fn admitted(calls: &Calls, message: &[u8]) -> bool {
        matches!(calls.admit(message), Admission::Forward(_))
    }

    /// A client may send an id again once its call is cancelled, while the first call's
    /// exchange is still ending: what that exchange does for its call must not reach the
    /// second.
    #[test]
    fn a_closed_call_s_leftovers_do_not_reach_a_later_call_with_its_id() {
        let (calls, total, _) = calls(ToolPolicy::new(vec![], vec![], None, None).unwrap());
        let request =
            br#"{"jsonrpc":"2.0","id":500,"method":"tools/call","params":{"name":"slow"}}"#;
        let Admission::Forward(first) = calls.admit(request) else {
            panic!("refused");
        };
        let first = first.call().expect("a call");
        assert!(calls.is_open(&first));
        assert!(admitted(
            &calls,
            br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":500}}"#
        ));
        assert!(!calls.is_open(&first));
        let Admission::Forward(second) = calls.admit(request) else {
            panic!("refused");
        };
        let second = second.call().expect("a call");
        assert_eq!(second.id, first.id);
        assert!(
            !calls.is_open(&first),
            "the id is open, but not for the first call"
        );
        assert!(!calls.answered_call(&first));
        assert!(calls.is_open(&second) && total.get() == 1);
        // The first call's answer, on its own POST's response or on the GET stream where
        // rmcp puts it after a cancellation, is late; nor may it go on as it arrives.
        let late = br#"{"jsonrpc":"2.0","id":500,"error":{"code":-32603,"message":"cancelled"}}"#;
        for via in [Via::Reply(&first), Via::NoAnswers] {
            assert!(calls.outgoing(Bytes::from_static(late), via).is_none());
            assert_eq!(calls.streamable("500", via), None);
        }
        assert!(calls.is_open(&second) && total.get() == 1);
        // On the second call's own response, the same id is the second call's.
        assert_eq!(calls.streamable("500", Via::Reply(&second)), Some(None));
        assert!(calls.answered_call(&second));
        assert!(!calls.is_open(&second) && total.get() == 1, "owed");
        calls.delivered(&second.id);
        assert_eq!(total.get(), 0);
    }

    #[test]
    fn admitting_reads_the_id_and_method_as_read_does() {
        let (calls, _, _) = calls(ToolPolicy::default());
        let messages: [&[u8]; 7] = [
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#,
            br#"{"jsonrpc":"2.0","id":"a b","method":"ping"}"#,
            br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}"#,
            br#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#,
            br#"{"jsonrpc":"2.0","id":7,"result":{}}"#,
            br#"{"jsonrpc":"2.0","id":[1],"method":"x"#,
            b"not json",
        ];
        for message in messages {
            let Admission::Forward(admitted) = calls.admit(message) else {
                panic!("refused: {}", String::from_utf8_lossy(message));
            };
            let Read { id, method, .. } = read(message);
            assert_eq!(
                (admitted.id, admitted.method),
                (id, method),
                "{}",
                String::from_utf8_lossy(message)
            );
        }
    }

    #[test]
    fn requests_open_calls_and_responses_close_them() {
        let (calls, total, _) = calls(ToolPolicy::default());
        assert!(admitted(
            &calls,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#
        ));
        assert!(admitted(
            &calls,
            br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#
        ));
        assert!(admitted(
            &calls,
            br#"{"jsonrpc":"2.0","id":"a","method":"ping"}"#
        ));
        assert_eq!(total.get(), 2);
        // A server-to-client request with the same id is not an answer.
        calls.outgoing(
            Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"method":"sampling/createMessage"}"#),
            Via::Shared,
        );
        assert_eq!(total.get(), 2);
        let (_, answers) = calls
            .outgoing(
                Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#),
                Via::Shared,
            )
            .unwrap();
        assert!(!calls.has_open("1"));
        assert_eq!(total.get(), 2, "the answer counts until the tunnel has it");
        calls.delivered(&answers.unwrap());
        assert_eq!(total.get(), 1);
        // A cancelled request will not be answered: it no longer counts.
        calls.admit(
            br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"a"}}"#,
        );
        assert_eq!(total.get(), 0);
        calls.admit(br#"{"jsonrpc":"2.0","id":"b","method":"ping"}"#);
        assert_eq!(total.get(), 1);
        drop(calls);
        assert_eq!(total.get(), 0);
    }

    /// An answer that goes wrong after its start closes its call with an error in its
    /// place; text that never looked like an answer (a log line) goes on untouched.
    #[test]
    fn an_answer_that_is_not_json_is_replaced_by_an_error() {
        let (calls, total, metrics) = calls(ToolPolicy::default());
        assert!(admitted(
            &calls,
            br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"x"}}"#
        ));
        for junk in [&b"starting up..."[..], br#"{"jsonrpc":"2.0","method":"x""#] {
            let (out, answers) = calls
                .outgoing(Bytes::from_static(junk), Via::Shared)
                .unwrap();
            assert_eq!((&out[..], answers), (junk, None));
        }
        assert!(calls.has_open("3"));
        let (out, answers) = calls
            .outgoing(
                Bytes::from_static(
                    b"{\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{\"text\":\"a\x01b\"}}",
                ),
                Via::Shared,
            )
            .unwrap();
        assert_eq!(answers.as_deref(), Some("3"));
        let out: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(out["id"], 3);
        assert_eq!(out["error"]["code"], super::super::ERROR_UPSTREAM);
        assert!(!calls.has_open("3"));
        assert_eq!(total.get(), 1, "the error is owed");
        assert!(metrics.encode().contains(r#"status="error""#));
    }

    #[test]
    fn hidden_tools_are_refused_and_filtered() {
        let policy = ToolPolicy::new(vec![], vec!["get-env".into()], None, None).unwrap();
        let (calls, total, metrics) = calls(policy);
        let Admission::Refuse { id, answer } = calls.admit(
            br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"get-env"}}"#,
        ) else {
            panic!("a hidden tool was forwarded")
        };
        assert_eq!(id, "7", "the refusal is owed under its request's id");
        let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(answer["id"], 7);
        assert_eq!(answer["error"]["code"], -32602);
        assert_eq!(total.get(), 1, "the refusal is owed until it is sent");
        calls.delivered("7");
        assert_eq!(total.get(), 0);
        assert!(admitted(
            &calls,
            br#"{"jsonrpc":"2.0","id":8,"method":"tools/list"}"#
        ));
        let out = calls
            .outgoing(Bytes::from_static(
                br#"{"jsonrpc":"2.0","id":8,"result":{"tools":[{"name":"echo"},{"name":"get-env"}]}}"#,
            ), Via::Shared)
            .unwrap()
            .0;
        let out: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(out["result"]["tools"], serde_json::json!([{"name":"echo"}]));
        assert!(metrics.encode().contains(r#"reason="tool""#));
        calls.delivered("8");
        // The server's own error, and the agent's for an answer that is not JSON, say
        // what went wrong rather than that a list could not be read.
        let answers: [&[u8]; 2] = [
            br#"{"jsonrpc":"2.0","id":9,"error":{"code":-32603,"message":"db down"}}"#,
            br#"{"jsonrpc":"2.0","id":9,"result":{"tools":[{"name":"get-env""#,
        ];
        for (answer, message) in answers.into_iter().zip(["db down", "not valid JSON"]) {
            assert!(admitted(
                &calls,
                br#"{"jsonrpc":"2.0","id":9,"method":"tools/list"}"#
            ));
            let (out, _) = calls
                .outgoing(Bytes::from_static(answer), Via::Shared)
                .unwrap();
            let out: serde_json::Value = serde_json::from_slice(&out).unwrap();
            let text = out["error"]["message"].as_str().unwrap();
            assert!(text.contains(message), "{out}");
            calls.delivered("9");
        }
        // An error that comes with a result too is filtered like a result.
        assert!(admitted(
            &calls,
            br#"{"jsonrpc":"2.0","id":10,"method":"tools/list"}"#
        ));
        let (out, _) = calls
            .outgoing(Bytes::from_static(
                br#"{"jsonrpc":"2.0","id":10,"error":{"code":1,"message":"x"},"result":{"tools":[{"name":"get-env"}]}}"#,
            ), Via::Shared)
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&out).contains("get-env"),
            "{out:?}"
        );
        calls.delivered("10");
        assert_eq!(total.get(), 0);
    }

    #[test]
    fn the_concurrency_cap_is_per_server_and_released_on_answer() {
        let policy = ToolPolicy::new(vec![], vec![], Some(1), None).unwrap();
        let (calls, _, _) = calls(policy);
        let call = |id: u32| {
            format!(
                r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"x"}}}}"#
            )
        };
        assert!(admitted(&calls, call(1).as_bytes()));
        assert!(matches!(
            calls.admit(call(2).as_bytes()),
            Admission::Refuse { .. }
        ));
        // Pings are not work and pass.
        assert!(admitted(
            &calls,
            br#"{"jsonrpc":"2.0","id":3,"method":"ping"}"#
        ));
        calls.outgoing(
            Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#),
            Via::Shared,
        );
        assert!(admitted(&calls, call(4).as_bytes()));
    }

    #[tokio::test(start_paused = true)]
    async fn timed_out_calls_expire_and_their_late_answers_are_dropped() {
        let policy = ToolPolicy::new(vec![], vec![], None, Some(Duration::from_secs(5))).unwrap();
        let (calls, total, _) = calls(policy);
        assert!(admitted(
            &calls,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#
        ));
        let deadline = calls.next_deadline().unwrap();
        assert!(calls.expire(deadline - Duration::from_millis(1)).is_empty());
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(calls.expire(Instant::now()), vec!["1".to_owned()]);
        assert_eq!(total.get(), 1, "its error is owed");
        calls.delivered("1");
        assert_eq!(total.get(), 0);
        assert!(calls.silent_for(Instant::now()).is_some());
        assert!(
            calls
                .outgoing(
                    Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#),
                    Via::Shared
                )
                .is_none()
        );
        assert!(calls.silent_for(Instant::now()).is_none());
    }

    #[test]
    fn a_large_answer_is_read_as_serde_json_reads_it() {
        let pad = "x".repeat(envelope::FAST_PATH_FROM);
        for message in [
            format!(r#"{{"jsonrpc":"2.0","id":7,"result":{{"text":"{pad}"}}}}"#),
            format!(r#"{{"jsonrpc":"2.0","id":"a","error":{{"code":-1,"message":"{pad}"}}}}"#),
            format!(r#"{{"jsonrpc":"2.0","id":null,"result":"{pad}"}}"#),
            format!(r#"{{"jsonrpc":"2.0","id":1,"error":null,"result":"{pad}"}}"#),
            format!(r#"{{"jsonrpc":"2.0","id":1,"method":"x","params":"{pad}"}}"#),
            format!(r#"{{"jsonrpc":"2.0","id":1,"method":5,"result":"{pad}"}}"#),
            format!(r#"{{"jsonrpc":"2.0","method":"notifications/message","params":"{pad}"}}"#),
            format!(r#"{{"jsonrpc":"2.0","id":1,"result":"{pad}","id":2}}"#),
            format!(r#"{{"jsonrpc":"2.0","id":1,"result":"{pad}\q"}}"#),
            format!(r#"[{{"jsonrpc":"2.0","id":1,"result":"{pad}"}}]"#),
        ] {
            let message = message.as_bytes();
            assert_eq!(
                answer(message),
                answer_by_serde(message),
                "{}",
                &String::from_utf8_lossy(message)[..60]
            );
        }
        assert_eq!(
            answer(format!(r#"{{"id":7,"result":"{pad}"}}"#).as_bytes()),
            Some(("7".to_owned(), false))
        );
        // Text that is not UTF-8 in a raw member: serde_json decides.
        let mut odd = format!(r#"{{"id":7,"error":{{"m":"{pad}"}},"result":1}}"#).into_bytes();
        let at = odd.len() - 20;
        odd[at] = 0xff;
        assert_eq!(answer(&odd), answer_by_serde(&odd));
        assert_eq!(answer(&odd), None);
    }

    #[test]
    fn an_answer_streamed_closes_its_call_and_a_filtered_one_is_not_streamable() {
        let (open, total, _) = calls(ToolPolicy::default());
        assert!(admitted(
            &open,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a"}}"#
        ));
        assert!(admitted(
            &open,
            br#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#
        ));
        assert_eq!(open.streamable("1", Via::Shared), Some(None));
        assert_eq!(open.streamable("3", Via::Shared), None);
        assert_eq!(total.get(), 2);
        assert!(open.streamed("1"));
        assert!(!open.has_open("1"));
        assert_eq!(total.get(), 1);
        assert!(!open.streamed("1"), "closed once");
        assert!(open.time_out_arriving("2"));
        assert!(!open.time_out_arriving("2"));
        assert_eq!(total.get(), 1, "its error is owed");
        open.delivered("2");
        assert_eq!(total.get(), 0);
        // A tools/list result may need tools hidden: it is read whole.
        let hiding = ToolPolicy::new(vec![], vec!["get-*".into()], None, None).unwrap();
        let (filtering, _, _) = calls(hiding);
        assert!(admitted(
            &filtering,
            br#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#
        ));
        assert_eq!(filtering.streamable("2", Via::Shared), None);
    }

    /// An answer owed to a call, once the call is closed for it, is still given by
    /// `take_all` (the server's exit) until it has been sent: with its text once set.
    #[test]
    fn owed_errors_are_answered_by_take_all_until_delivered() {
        let (owing, total, _) =
            calls(ToolPolicy::new(vec![], vec![], None, Some(Duration::from_secs(1))).unwrap());
        for id in 1..=4 {
            let request = format!(
                r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"a"}}}}"#
            );
            assert!(admitted(&owing, request.as_bytes()));
        }
        let mut expired = owing.expire(Instant::now() + Duration::from_secs(2));
        expired.sort();
        assert_eq!(expired, ["1", "2", "3", "4"]);
        assert_eq!(total.get(), 4, "their errors are owed");
        owing.delivered("1");
        assert_eq!(total.get(), 3);
        assert!(!owing.answered("2"), "closed by the timeout already");
        let timeout = Bytes::from_static(b"the timeout's error");
        owing.owe("3", &timeout);
        let mut owed = owing.take_all();
        owed.sort();
        assert_eq!(
            owed,
            [
                ("2".to_owned(), None),
                ("3".to_owned(), Some(timeout)),
                ("4".to_owned(), None)
            ]
        );
        assert_eq!(total.get(), 3, "given out, not yet sent");
        for _ in 0..3 {
            owing.handed();
        }
        assert_eq!(total.get(), 0);
        assert!(owing.take_all().is_empty());
        assert!(admitted(
            &owing,
            br#"{"jsonrpc":"2.0","id":5,"method":"ping"}"#
        ));
        assert!(owing.answered("5"));
        assert_eq!(owing.take_all(), [("5".to_owned(), None)]);
        assert!(admitted(
            &owing,
            br#"{"jsonrpc":"2.0","id":6,"method":"ping"}"#
        ));
        assert!(owing.time_out_arriving("6"));
        owing.delivered("6");
        assert!(owing.take_all().is_empty());
        assert_eq!(total.get(), 1, "5's error, given out");
        drop(owing);
        assert_eq!(total.get(), 0, "a stream gone owes nothing");
    }

    /// A call's timeout error still waiting to be sent, and the answer to a later call
    /// that reused its id, are two answers owed: the first one sent leaves the other
    /// counted, and the server's exit then still gives it out.
    #[test]
    fn two_answers_owed_under_one_id_are_each_counted() {
        let (owing, total, _) =
            calls(ToolPolicy::new(vec![], vec![], None, Some(Duration::from_secs(1))).unwrap());
        let request = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a"}}"#;
        assert!(admitted(&owing, request));
        assert_eq!(owing.expire(Instant::now() + Duration::from_secs(2)), ["1"]);
        let timeout = Bytes::from_static(b"the timeout's error");
        owing.owe("1", &timeout);
        assert!(admitted(&owing, request), "the id is free again");
        let result = Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#);
        let (answer, id) = owing.outgoing(result, Via::Shared).expect("forwarded");
        assert_eq!(id.as_deref(), Some("1"));
        assert_eq!(total.get(), 2, "two answers owed under one id");
        owing.owe("1", &answer);
        owing.delivered("1");
        assert_eq!(total.get(), 1, "the second is still owed");
        assert_eq!(owing.take_all(), [("1".to_owned(), Some(answer))]);
        owing.handed();
        assert_eq!(total.get(), 0);
    }

    /// An answer the tunnel refused (over its limit) and the error sent in its place are
    /// one answer owed, not two.
    #[test]
    fn an_answer_withdrawn_for_an_error_is_owed_once() {
        let (owing, total, _) = calls(ToolPolicy::new(vec![], vec![], None, None).unwrap());
        assert!(admitted(
            &owing,
            br#"{"jsonrpc":"2.0","id":3,"method":"ping"}"#
        ));
        let big = Bytes::from_static(br#"{"jsonrpc":"2.0","id":3,"result":{"big":1}}"#);
        let (answer, _) = owing.outgoing(big, Via::Shared).expect("forwarded");
        owing.owe("3", &answer);
        owing.withdraw("3");
        assert!(!owing.answered("3"), "closed by its answer already");
        let error = Bytes::from_static(b"too large");
        owing.owe("3", &error);
        assert_eq!(total.get(), 1);
        owing.delivered("3");
        assert_eq!(total.get(), 0);
        assert!(owing.take_all().is_empty());
    }

    /// After a timeout the server counts as silent; a server still writing a line that
    /// will be dropped starts that silence again rather than ends it; one heard ends it.
    #[tokio::test(start_paused = true)]
    async fn silence_after_a_timeout_restarts_while_a_dropped_line_is_written() {
        let policy = ToolPolicy::new(vec![], vec![], None, Some(Duration::from_secs(1))).unwrap();
        let (quiet, _, _) = calls(policy);
        quiet.still_writing();
        assert_eq!(
            quiet.silent_for(Instant::now()),
            None,
            "no timeout, no silence"
        );
        assert!(admitted(
            &quiet,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a"}}"#
        ));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(quiet.expire(Instant::now()), ["1"]);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(
            quiet.silent_for(Instant::now()),
            Some(Duration::from_secs(3))
        );
        quiet.still_writing();
        assert_eq!(quiet.silent_for(Instant::now()), Some(Duration::ZERO));
        quiet.heard();
        assert_eq!(quiet.silent_for(Instant::now()), None);
    }
}
