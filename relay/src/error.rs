//! Every error a client can see, mapped in one place to an HTTP status and a JSON-RPC
//! error. Each error is classified by who caused it (the client, the agent or upstream,
//! or the relay itself); that decides the status and the log level. Clients get a generic
//! message and a correlation id; the detail goes to the log under the same id.
//!
//! Failures of one call (agent offline, upstream gone, timeout) are answered with HTTP 200
//! and a JSON-RPC error carrying the request's id: MCP clients match errors to calls by
//! id, and several SDKs treat a non-2xx answer as a transport failure that leaves the call
//! waiting. Failures of the HTTP request itself (auth, size, media type, session) use HTTP
//! statuses.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use crate::auth::random_id;

/// What went wrong, as the client is told it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The key is missing, malformed, unknown, revoked or expired (one answer for all).
    #[error("unauthorized")]
    Unauthorized,
    /// An API key appeared in the URL.
    #[error("API keys must be sent in the Authorization header, never in the URL")]
    KeyInUrl,
    /// An agent or server name is not `[a-z0-9_-]{1,64}`.
    #[error("invalid {0} name")]
    InvalidName(&'static str),
    /// The body is not `application/json`.
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    /// The client accepts neither JSON nor SSE.
    #[error("Accept must include application/json or text/event-stream")]
    NotAcceptable,
    /// The body exceeds the limit.
    #[error("request body exceeds {0} bytes")]
    BodyTooLarge(usize),
    /// The body is not JSON.
    #[error("parse error: body is not valid JSON")]
    Parse,
    /// The body is JSON but not a JSON-RPC message or batch.
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    /// A request without `Mcp-Session-Id` that is not `initialize`.
    #[error("bad request: Mcp-Session-Id header is required")]
    SessionRequired,
    /// The session id is unknown, expired, or belongs to another key.
    #[error("session not found")]
    SessionNotFound,
    /// The relay holds as many sessions as it may.
    #[error("too many sessions")]
    TooManySessions,
    /// A `Last-Event-ID` that is not an event id this relay issues.
    #[error("bad request: Last-Event-ID is not an event id of this relay")]
    LastEventIdInvalid,
    /// A `Last-Event-ID` that names no stream this session holds: another session's, a
    /// stream already answered and delivered, or one never issued.
    #[error("cannot resume: the Last-Event-ID is unknown in this session")]
    LastEventIdUnknown,
    /// A `Last-Event-ID` whose following events were evicted from the replay buffer.
    #[error("cannot resume: the Last-Event-ID is too old: the events after it were evicted")]
    LastEventIdEvicted,
    /// A GET stream is already open for this session.
    #[error("a GET stream is already open for this session")]
    StreamConflict,
    /// The `Host` or `Origin` header is not in the allow-list.
    #[error("forbidden: {0} not allowed")]
    ForbiddenOrigin(&'static str),
    /// `MCP-Protocol-Version` names a revision this relay does not serve.
    #[error("unsupported MCP-Protocol-Version")]
    UnsupportedProtocolVersion,
    /// The session ended (deleted, idle, or the relay shutting down) with the call in
    /// flight.
    #[error("the session was closed")]
    SessionClosed,
    /// No agent of that name is connected for the key's organisation.
    #[error("agent '{0}' is not connected")]
    AgentOffline(String),
    /// The agent has no server of that name.
    #[error("the agent has no such server")]
    UnknownServer,
    /// The upstream could not be started, exited, or closed its connection.
    #[error("upstream server is unavailable")]
    UpstreamUnavailable,
    /// The agent's tunnel dropped while the call was in flight.
    #[error("connection to the agent was lost")]
    TunnelLost,
    /// The call took longer than the relay's call timeout.
    #[error("the call timed out")]
    Timeout,
    /// A message exceeded the tunnel's message limit.
    #[error("message too large")]
    MessageTooLarge,
    /// A long answer sent on as it arrived turned out not to be JSON.
    #[error("the upstream's answer was not valid JSON")]
    MalformedAnswer,
    /// A long answer was being sent on as it arrived when the client's connection broke,
    /// and it was too large to keep for resumption.
    #[error("the answer was lost with the connection: too large to keep for resumption")]
    AnswerNotKept,
    /// The agent is at its stream limit or shutting down.
    #[error("agent is overloaded")]
    AgentBusy,
    /// The key's scopes do not cover this agent, server or tool.
    #[error("insufficient_scope: the key may not reach this {0}")]
    InsufficientScope(&'static str),
    /// A rate limit or in-flight cap is reached.
    #[error("rate limited ({scope}): retry after {retry_after} s")]
    RateLimited {
        /// Seconds until a retry may succeed.
        retry_after: u64,
        /// Which limit: key, tool, agent.
        scope: &'static str,
    },
    /// Too many failed authentications from this address.
    #[error("too many failed authentications from this address")]
    TooManyFailures,
    /// A stateless (2026-era) request whose `Mcp-Method` or `Mcp-Name` header is missing
    /// or does not match its body.
    #[error("header mismatch: the {0} header does not match the body")]
    HeaderMismatch(&'static str),
    /// The body nests JSON deeper than the limit.
    #[error("invalid request: JSON nested deeper than {0} levels")]
    TooDeep(usize),
    /// A bug or a failed dependency of the relay.
    #[error("internal error")]
    Internal,
}

/// Who caused an error: decides status, log level and metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The request was wrong.
    Client,
    /// The agent, tunnel or upstream failed.
    Upstream,
    /// The relay failed.
    Internal,
}

/// A correlation id: returned to the client, logged with the detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorrelationId(pub String);

impl CorrelationId {
    /// A new random id.
    pub fn new() -> Self {
        Self(random_id("", 12))
    }
}

impl Default for CorrelationId {
    fn default() -> Self {
        Self::new()
    }
}

// === impl RelayError ===

impl RelayError {
    /// Who caused it.
    pub fn source_kind(&self) -> ErrorSource {
        match self {
            RelayError::AgentOffline(_)
            | RelayError::UnknownServer
            | RelayError::UpstreamUnavailable
            | RelayError::TunnelLost
            | RelayError::Timeout
            | RelayError::AgentBusy
            | RelayError::MalformedAnswer => ErrorSource::Upstream,
            RelayError::Internal | RelayError::TooManySessions => ErrorSource::Internal,
            _ => ErrorSource::Client,
        }
    }

    /// The HTTP status of a response that carries only this error.
    pub fn status(&self) -> StatusCode {
        match self {
            RelayError::Unauthorized => StatusCode::UNAUTHORIZED,
            RelayError::KeyInUrl
            | RelayError::InvalidName(_)
            | RelayError::Parse
            | RelayError::InvalidRequest(_)
            | RelayError::SessionRequired => StatusCode::BAD_REQUEST,
            RelayError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RelayError::NotAcceptable => StatusCode::NOT_ACCEPTABLE,
            RelayError::BodyTooLarge(_)
            | RelayError::MessageTooLarge
            | RelayError::AnswerNotKept => StatusCode::PAYLOAD_TOO_LARGE,
            RelayError::SessionNotFound
            | RelayError::LastEventIdUnknown
            | RelayError::LastEventIdEvicted => StatusCode::NOT_FOUND,
            RelayError::LastEventIdInvalid => StatusCode::BAD_REQUEST,
            RelayError::StreamConflict => StatusCode::CONFLICT,
            RelayError::SessionClosed => StatusCode::NOT_FOUND,
            RelayError::ForbiddenOrigin(_) => StatusCode::FORBIDDEN,
            RelayError::UnsupportedProtocolVersion => StatusCode::BAD_REQUEST,
            RelayError::TooManySessions | RelayError::AgentBusy => StatusCode::SERVICE_UNAVAILABLE,
            RelayError::AgentOffline(_)
            | RelayError::UnknownServer
            | RelayError::UpstreamUnavailable
            | RelayError::TunnelLost
            | RelayError::MalformedAnswer => StatusCode::BAD_GATEWAY,
            RelayError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            RelayError::InsufficientScope(_) => StatusCode::FORBIDDEN,
            RelayError::RateLimited { .. } | RelayError::TooManyFailures => {
                StatusCode::TOO_MANY_REQUESTS
            }
            RelayError::TooDeep(_) | RelayError::HeaderMismatch(_) => StatusCode::BAD_REQUEST,
            RelayError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON-RPC error code.
    pub fn code(&self) -> i64 {
        match self {
            RelayError::Parse => -32700,
            RelayError::InvalidRequest(_) | RelayError::SessionRequired => -32600,
            RelayError::Unauthorized => -32001,
            RelayError::AgentOffline(_) => CODE_AGENT_OFFLINE,
            RelayError::UnknownServer => CODE_UNKNOWN_SERVER,
            RelayError::UpstreamUnavailable | RelayError::MalformedAnswer => {
                CODE_UPSTREAM_UNAVAILABLE
            }
            RelayError::TunnelLost => CODE_TUNNEL_LOST,
            RelayError::Timeout => CODE_TIMEOUT,
            RelayError::MessageTooLarge
            | RelayError::BodyTooLarge(_)
            | RelayError::AnswerNotKept => CODE_TOO_LARGE,
            RelayError::AgentBusy | RelayError::TooManySessions => CODE_BUSY,
            RelayError::SessionClosed => CODE_SESSION_CLOSED,
            RelayError::InsufficientScope(_) => CODE_INSUFFICIENT_SCOPE,
            RelayError::RateLimited { .. } | RelayError::TooManyFailures => CODE_RATE_LIMITED,
            RelayError::HeaderMismatch(_) => CODE_HEADER_MISMATCH,
            RelayError::Internal => -32603,
            _ => -32600,
        }
    }

    /// The JSON-RPC error object for request `id`.
    pub fn to_jsonrpc(&self, id: Option<&Value>, correlation: &CorrelationId) -> Value {
        json!({
            "jsonrpc": "2.0",
            "id": id.cloned().unwrap_or(Value::Null),
            "error": {
                "code": self.code(),
                "message": format!("{self} (correlation id {})", correlation.0),
                "data": { "correlation_id": correlation.0 },
            }
        })
    }

    /// Logs the error with its detail under the correlation id, at a level that fits who
    /// caused it.
    pub fn log(&self, correlation: &CorrelationId, detail: &dyn std::fmt::Display) {
        match self.source_kind() {
            ErrorSource::Client => {
                tracing::info!(correlation_id = %correlation.0, error = %self, %detail, "request refused")
            }
            ErrorSource::Upstream => {
                tracing::warn!(correlation_id = %correlation.0, error = %self, %detail, "upstream failure")
            }
            ErrorSource::Internal => {
                tracing::error!(correlation_id = %correlation.0, error = %self, %detail, "internal error")
            }
        }
    }

    /// An HTTP response carrying only this error, with its status, the correlation header
    /// and, for 401, the `WWW-Authenticate` challenge.
    pub fn into_http(self, correlation: &CorrelationId) -> Response {
        let body = self.to_jsonrpc(None, correlation);
        let mut response = (self.status(), axum::Json(body)).into_response();
        set_correlation(&mut response, correlation);
        self.add_headers(&mut response);
        response
    }

    /// The headers this error's status calls for: the `WWW-Authenticate` challenge for
    /// 401 and 403 `insufficient_scope` (RFC 6750), `Retry-After` for 429.
    pub fn add_headers(&self, response: &mut Response) {
        let headers = response.headers_mut();
        match self {
            RelayError::Unauthorized => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"outpost\""),
                );
            }
            RelayError::InsufficientScope(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        "Bearer realm=\"outpost\", error=\"insufficient_scope\"",
                    ),
                );
            }
            RelayError::RateLimited { retry_after, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            RelayError::TooManyFailures => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
            }
            _ => {}
        }
    }
}

/// Adds the `x-correlation-id` header.
pub fn set_correlation(response: &mut Response, correlation: &CorrelationId) {
    if let Ok(value) = HeaderValue::from_str(&correlation.0) {
        response.headers_mut().insert(CORRELATION_HEADER, value);
    }
}

/// Response header carrying the correlation id.
pub const CORRELATION_HEADER: &str = "x-correlation-id";
/// JSON-RPC code: the agent is not connected.
pub const CODE_AGENT_OFFLINE: i64 = -32010;
/// JSON-RPC code: the agent has no such server.
pub const CODE_UNKNOWN_SERVER: i64 = -32011;
/// JSON-RPC code: the upstream server is unavailable or exited.
pub const CODE_UPSTREAM_UNAVAILABLE: i64 = -32012;
/// JSON-RPC code: the tunnel to the agent was lost mid-call.
pub const CODE_TUNNEL_LOST: i64 = -32013;
/// JSON-RPC code: the call timed out at the relay.
pub const CODE_TIMEOUT: i64 = -32014;
/// JSON-RPC code: a message exceeded a size limit.
pub const CODE_TOO_LARGE: i64 = -32015;
/// JSON-RPC code: the agent or relay is at a limit.
pub const CODE_BUSY: i64 = -32016;
/// JSON-RPC code: the session closed with the call in flight.
pub const CODE_SESSION_CLOSED: i64 = -32017;
/// JSON-RPC code: the key's scopes do not cover the server or tool.
pub const CODE_INSUFFICIENT_SCOPE: i64 = -32018;
/// JSON-RPC code: a rate limit or in-flight cap was reached.
pub const CODE_RATE_LIMITED: i64 = -32019;
/// JSON-RPC code of MCP 2026-07-28: `Mcp-Method` or `Mcp-Name` does not match the body.
pub const CODE_HEADER_MISMATCH: i64 = -32020;
