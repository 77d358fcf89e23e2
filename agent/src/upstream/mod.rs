//! Bridges one tunnel stream to one local MCP server. For stdio servers: a child process
//! per stream in the stateful era (a stream is a client session), one child shared by all
//! streams of a server in the stateless era (a stream is a request). For Streamable HTTP
//! servers: an MCP session, or a request, per stream. Owns the upstream side of each
//! stream; does not own the tunnel (see `tunnel/`).

mod arriving;
mod calls;
mod http;
mod param_headers;
mod rewrite;
mod shared;
mod sse;
mod stdio;

use bytes::Bytes;
use outpost_tunnel::{Stream, StreamError, StreamSender};
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

pub(crate) use calls::{Admission, CallRef, Calls, InFlight, ServerRuntime, Via};
pub(crate) use shared::SharedProcesses;

use crate::config::{ServerConfig, Transport};
use crate::metrics::Metrics;
use crate::redact::Redactor;

/// What every upstream bridge shares.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamContext {
    /// Calls in flight over the whole agent, for draining on shutdown.
    pub(crate) in_flight: InFlight,
    /// HTTP client for Streamable HTTP servers, shared for its connection pool.
    pub(crate) http: reqwest::Client,
    /// Largest message the tunnel carries.
    pub(crate) max_message_len: usize,
    /// Fires when the tunnel session ends: children are stopped, requests abandoned.
    pub(crate) cancel: CancellationToken,
    /// The agent's metrics.
    pub(crate) metrics: Arc<Metrics>,
    /// Secrets to keep out of everything sent to the relay.
    pub(crate) redactor: Arc<Redactor>,
    /// The stdio processes stateless streams share, one per server.
    pub(crate) shared: Arc<SharedProcesses>,
}

impl UpstreamContext {
    /// The call bookkeeping and policy gate of one stream of `server`.
    pub(crate) fn calls(&self, server: Arc<ServerRuntime>) -> Calls {
        Calls::new(
            self.in_flight.clone(),
            server,
            self.metrics.clone(),
            self.redactor.clone(),
        )
    }
}

/// Serves one stream until the relay closes it, the upstream goes away or the session ends.
pub(crate) async fn serve(
    server: &ServerConfig,
    runtime: Arc<ServerRuntime>,
    stream: Stream,
    meta: Vec<(String, String)>,
    ctx: UpstreamContext,
) {
    let calls = ctx.calls(runtime);
    match &server.transport {
        Transport::Stdio(config) if is_stateless(&meta) => {
            shared::serve(&server.name, config, stream, meta, calls, ctx).await;
        }
        Transport::Stdio(config) => stdio::serve(&server.name, config, stream, calls, ctx).await,
        Transport::Http(config) => {
            http::serve(&server.name, config, stream, meta, calls, ctx).await;
        }
    }
}

/// Whether a stream carries a request of a stateless revision (its `MCP-Protocol-Version`
/// header, forwarded by the relay in the stream's open metadata).
fn is_stateless(meta: &[(String, String)]) -> bool {
    meta.iter().any(|(name, value)| {
        name.eq_ignore_ascii_case(PROTOCOL_VERSION_HEADER)
            && STATELESS_REVISIONS.contains(&value.trim())
    })
}

/// Sends an upstream message to the relay. A message over the tunnel's limit is replaced
/// by an error response to the request it answers, so the client is not left waiting.
/// `via`: where it came from, which says whether an answer in it is late ([`Via`]).
/// `Err` means the stream is gone.
pub(crate) async fn forward(
    sender: &StreamSender,
    calls: &Calls,
    message: Bytes,
    via: Via<'_>,
) -> Result<(), ()> {
    // An answer closed its call: it is owed, and counts as in flight, until it is on its
    // way to the relay (so a draining agent never closes the tunnel under it), or until
    // the error replacing it is.
    let Some((message, answers)) = calls.outgoing(message, via) else {
        return Ok(());
    };
    let len = message.len();
    if let Some(id) = &answers {
        calls.owe(id, &message);
    }
    let sent = sender.send(message).await;
    if let (Ok(()), Some(id)) = (&sent, &answers) {
        calls.delivered(id);
    }
    match sent {
        Ok(()) => Ok(()),
        Err(StreamError::TooLarge { len: _, max }) => {
            tracing::warn!(
                len,
                max,
                "upstream message over the tunnel limit replaced by an error"
            );
            match answers {
                Some(id) => {
                    // The error takes the refused answer's place among those owed. Its call
                    // is closed already, and the id may be a later call's by now: nothing
                    // else is closed for it.
                    calls.withdraw(&id);
                    let text = format!(
                        "the result of {len} bytes exceeds the tunnel's limit of {max} bytes"
                    );
                    let error = calls::error_response(&id, ERROR_TOO_LARGE, &text);
                    send_owed(sender, calls, &id, error).await
                }
                None => Ok(()),
            }
        }
        Err(_) => Err(()),
    }
}

/// Answers request `id` (canonical JSON text) with a JSON-RPC error on the upstream's behalf.
pub(crate) async fn answer_with_error(
    sender: &StreamSender,
    calls: &Calls,
    id: &str,
    code: i64,
    message: &str,
) -> Result<(), ()> {
    calls.answered(id);
    let message = calls.redact_text(message);
    send_owed(sender, calls, id, calls::error_response(id, code, &message)).await
}

/// Answers `call` with a JSON-RPC error on the upstream's behalf, unless it was closed
/// meanwhile (cancelled, timed out): its id may then belong to a later call.
pub(crate) async fn answer_call_with_error(
    sender: &StreamSender,
    calls: &Calls,
    call: &CallRef,
    code: i64,
    message: &str,
) -> Result<(), ()> {
    if !calls.answered_call(call) {
        return Ok(());
    }
    let message = calls.redact_text(message);
    let answer = calls::error_response(&call.id, code, &message);
    send_owed(sender, calls, &call.id, answer).await
}

/// Sends `answer` to request `id`, whose call is closed, keeping it owed (see
/// [`Calls::owe`]) until the tunnel has it. `Err` means the stream is gone.
pub(crate) async fn send_owed(
    sender: &StreamSender,
    calls: &Calls,
    id: &str,
    answer: Bytes,
) -> Result<(), ()> {
    calls.owe(id, &answer);
    sender.send(answer).await.map_err(|_| ())?;
    calls.delivered(id);
    Ok(())
}

/// What the agent sends when call `id` outlived its `call_timeout`: the answer for the
/// client, and the cancellation for the upstream.
pub(crate) fn timed_out(id: &str, timeout: std::time::Duration) -> (Bytes, Bytes) {
    let text = format!(
        "the call exceeded the agent's call_timeout of {timeout:?}; the server was asked to cancel it"
    );
    let cancel = format!(
        r#"{{"jsonrpc":"2.0","method":"notifications/cancelled","params":{{"requestId":{id},"reason":"timeout"}}}}"#
    );
    (
        calls::error_response(id, ERROR_TIMEOUT, &text),
        Bytes::from(cancel),
    )
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
pub(crate) async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The MCP revisions in which every request stands alone (no initialize, no session):
/// their streams carry one request each, and a stdio server's are served by one shared
/// process. The only place the agent lists them.
pub(crate) const STATELESS_REVISIONS: [&str; 1] = ["2026-07-28"];
/// The stream metadata (an HTTP header at the relay) that names the request's revision.
const PROTOCOL_VERSION_HEADER: &str = "mcp-protocol-version";
/// JSON-RPC code: the upstream server could not be reached or failed the request.
pub(crate) const ERROR_UPSTREAM: i64 = -32012;
/// JSON-RPC code: the agent's call timeout answered the request.
pub(crate) const ERROR_TIMEOUT: i64 = -32014;
/// JSON-RPC code: a message exceeded a size limit.
pub(crate) const ERROR_TOO_LARGE: i64 = -32015;

/// A relay and an agent tunnel over an in-memory socket, for tests of the upstream
/// bridges: one stream opened by the relay with `meta`, as each side sees it, with the
/// metadata the agent read. The tunnels run until `stop` fires; the agent's tunnel is
/// returned so the test keeps it alive.
#[cfg(test)]
pub(crate) async fn opened_stream(
    config: outpost_tunnel::TunnelConfig,
    meta: Vec<(String, String)>,
    stop: &CancellationToken,
) -> (
    outpost_tunnel::Stream,
    outpost_tunnel::Stream,
    Vec<(String, String)>,
    outpost_tunnel::Tunnel<outpost_protocol::AgentFrame>,
) {
    use outpost_protocol::{AgentFrame, RelayFrame};
    use outpost_tunnel::{Tunnel, TunnelEvent};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::protocol::Role;

    let (a, b) = tokio::io::duplex(64 * 1024);
    let relay_socket = WebSocketStream::from_raw_socket(a, Role::Server, None).await;
    let agent_socket = WebSocketStream::from_raw_socket(b, Role::Client, None).await;
    let (relay, _, relay_driver) =
        Tunnel::<RelayFrame>::start::<_, AgentFrame>(relay_socket, config, stop.clone());
    let (agent, mut events, agent_driver) =
        Tunnel::<AgentFrame>::start::<_, RelayFrame>(agent_socket, config, stop.clone());
    tokio::spawn(relay_driver);
    tokio::spawn(agent_driver);
    let relay_side = relay.open_stream("erp", meta).unwrap();
    let Some(TunnelEvent::Open { stream, meta, .. }) = events.recv().await else {
        panic!("no stream opened");
    };
    (relay_side, stream, meta, agent)
}

/// What [`serve`] and the bridges need besides the stream, for tests: an open policy and
/// no secrets, the agent's local HTTP client, stopped with `stop`.
#[cfg(test)]
pub(crate) fn test_context(
    max_message_len: usize,
    stop: &CancellationToken,
) -> (Calls, UpstreamContext) {
    test_context_timed(max_message_len, stop, None)
}

/// [`test_context`] with the policy's `call_timeout`.
#[cfg(test)]
pub(crate) fn test_context_timed(
    max_message_len: usize,
    stop: &CancellationToken,
    call_timeout: Option<std::time::Duration>,
) -> (Calls, UpstreamContext) {
    let (redactor, _) = crate::redact::Redactor::new(std::iter::empty());
    let redactor = Arc::new(redactor);
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let in_flight = InFlight::new();
    let policy = crate::policy::ToolPolicy::new(vec![], vec![], None, call_timeout).unwrap();
    let runtime = Arc::new(ServerRuntime::new("erp".into(), policy));
    let calls = Calls::new(
        in_flight.clone(),
        runtime,
        metrics.clone(),
        redactor.clone(),
    );
    let ctx = UpstreamContext {
        in_flight,
        http: reqwest::Client::builder()
            .use_preconfigured_tls(crate::local_tls().unwrap())
            .no_proxy()
            .build()
            .unwrap(),
        max_message_len,
        cancel: stop.clone(),
        metrics,
        redactor,
        shared: Arc::new(SharedProcesses::new(tokio_util::task::TaskTracker::new())),
    };
    (calls, ctx)
}

/// The tunnel settings of the bridges' tests: 1 MiB messages and window.
#[cfg(test)]
pub(crate) fn test_tunnel_config() -> outpost_tunnel::TunnelConfig {
    outpost_tunnel::TunnelConfig {
        heartbeat_interval: std::time::Duration::from_secs(10),
        chunk_len: 16 * 1024,
        max_message_len: 1024 * 1024,
        initial_window: 1024 * 1024,
        peer_chunk_len: 16 * 1024,
        max_streams: 8,
    }
}

/// `future`'s output, or a test failure after 20 s.
#[cfg(test)]
pub(crate) async fn within<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(std::time::Duration::from_secs(20), future)
        .await
        .expect("nothing came within 20 s")
}

/// Asserts that the next thing on the relay's side of a stream is the agent's Close, with
/// code `Normal`.
#[cfg(test)]
pub(crate) async fn assert_closed_by_agent(relay_side: &mut outpost_tunnel::Stream) {
    use outpost_tunnel::{StreamEnd, StreamError};
    match within(relay_side.receiver.recv()).await {
        Err(StreamError::Ended(StreamEnd::Closed { code, .. })) => {
            assert_eq!(code, outpost_protocol::CloseCode::Normal);
        }
        other => panic!("expected the agent's Close, got {other:?}"),
    }
}
