//! The frames, named by the direction they travel in.
//!
//! A tunnel begins with [`AgentFrame::Hello`] answered by [`RelayFrame::Welcome`] or
//! [`RelayFrame::Reject`]. After the welcome, the relay opens streams with
//! [`RelayFrame::Open`] and both sides exchange [`StreamFrame`]s on them.

use bytes::Bytes;

use crate::{AgentId, ProtocolVersion, StreamId};

/// Frames the agent sends to the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AgentFrame {
    /// First frame of every tunnel: who the agent is and which servers it offers.
    Hello(Hello),
    /// A frame of one stream.
    Stream(StreamFrame),
    /// The agent is shutting down: it finishes the streams it has and accepts no new one.
    Draining,
    /// The agent's servers changed (its configuration was reloaded): the full new list,
    /// replacing the one from the hello. Streams already open are not affected.
    Servers(Vec<ServerAnnouncement>),
}

/// Frames the relay sends to the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayFrame {
    /// The hello was accepted; the tunnel is registered and these are its terms.
    Welcome(Welcome),
    /// The hello was refused; the relay closes the tunnel after sending this.
    Reject(Reject),
    /// Opens a stream to one of the agent's servers. Data may follow at once.
    Open(Open),
    /// A frame of one stream.
    Stream(StreamFrame),
}

/// Frames that belong to one stream and travel in both directions.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamFrame {
    /// A piece of one JSON-RPC message. `fin` marks its last piece; a message is delivered
    /// only when complete, and pieces of different streams may interleave.
    Data {
        /// Stream the piece belongs to.
        stream: StreamId,
        /// Whether this piece ends the message.
        fin: bool,
        /// The bytes of the piece, opaque to the tunnel.
        payload: Bytes,
    },
    /// The receiver consumed `bytes` of payload on `stream`: the sender may send that many
    /// more. This is the per-stream backpressure.
    Credit {
        /// Stream the credit is for.
        stream: StreamId,
        /// Payload bytes granted.
        bytes: u32,
    },
    /// Ends the stream in both directions, with the reason.
    Close {
        /// Stream being closed.
        stream: StreamId,
        /// Why it was closed.
        code: CloseCode,
        /// Human-readable detail, safe to log: never message content.
        message: String,
    },
}

impl StreamFrame {
    /// The stream this frame belongs to.
    pub fn stream(&self) -> StreamId {
        match self {
            StreamFrame::Data { stream, .. }
            | StreamFrame::Credit { stream, .. }
            | StreamFrame::Close { stream, .. } => *stream,
        }
    }
}

/// The agent's introduction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version the agent speaks.
    pub version: ProtocolVersion,
    /// The agent's build version, for the relay's logs and agent list.
    pub agent_version: String,
    /// The local servers the agent offers.
    pub servers: Vec<ServerAnnouncement>,
}

/// One server an agent offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAnnouncement {
    /// Name from the agent's config, unique within the agent.
    pub name: String,
    /// Digest of the server's local policy, so the relay can tell when it changed.
    pub policy_digest: String,
}

/// The relay's acceptance of a tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The relay's id for this agent.
    pub agent_id: AgentId,
    /// The agent's name in its organisation, fixed by its key.
    pub agent_name: String,
    /// How often each side pings; a side that hears nothing for two intervals gives up.
    pub heartbeat_interval_ms: u32,
    /// Limits the relay enforces on this tunnel.
    pub limits: Limits,
}

/// Size and concurrency limits of one tunnel, set by the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame either side may send, length prefix included.
    pub max_frame_len: u32,
    /// Largest JSON-RPC message, reassembled.
    pub max_message_len: u32,
    /// Payload bytes a sender may have unacknowledged per stream before it waits for credit.
    pub initial_window: u32,
    /// Streams the relay may have open at once on this tunnel.
    pub max_streams: u32,
}

/// The relay's refusal of a tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// Why.
    pub code: RejectCode,
    /// Detail for the agent's log.
    pub message: String,
}

/// Reasons a relay refuses a hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectCode {
    /// The relay does not speak the hello's protocol version.
    UnsupportedVersion,
    /// The hello is malformed: duplicate or invalid server names, too many servers.
    InvalidHello,
    /// The relay holds as many tunnels as it may.
    Overloaded,
    /// A code this version does not know, kept so it can be logged.
    Other(u16),
}

/// Opens a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    /// New stream's id, unused on this tunnel so far.
    pub stream: StreamId,
    /// Which of the agent's servers the stream goes to.
    pub server: String,
    /// Transport metadata for the upstream (e.g. `mcp-protocol-version`, `traceparent`).
    /// Never the client's credentials.
    pub meta: Vec<(String, String)>,
}

/// Reasons a stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseCode {
    /// The stream's owner is done with it (session deleted).
    Normal,
    /// The agent has no server of that name.
    UnknownServer,
    /// The upstream could not be started or reached.
    UpstreamUnavailable,
    /// The upstream exited or closed its connection.
    UpstreamExited,
    /// A message exceeded `max_message_len`.
    MessageTooLarge,
    /// The peer broke the protocol on this stream (e.g. sent past its credit).
    ProtocolViolation,
    /// The sender is shutting down.
    ShuttingDown,
    /// The agent has as many streams as its limits allow.
    Overloaded,
    /// A code this version does not know, kept so it can be logged.
    Other(u16),
}

// === impl CloseCode ===

impl CloseCode {
    pub(crate) fn to_u16(self) -> u16 {
        match self {
            CloseCode::Normal => 0,
            CloseCode::UnknownServer => 1,
            CloseCode::UpstreamUnavailable => 2,
            CloseCode::UpstreamExited => 3,
            CloseCode::MessageTooLarge => 4,
            CloseCode::ProtocolViolation => 5,
            CloseCode::ShuttingDown => 6,
            CloseCode::Overloaded => 7,
            CloseCode::Other(code) => code,
        }
    }

    pub(crate) fn from_u16(code: u16) -> Self {
        match code {
            0 => CloseCode::Normal,
            1 => CloseCode::UnknownServer,
            2 => CloseCode::UpstreamUnavailable,
            3 => CloseCode::UpstreamExited,
            4 => CloseCode::MessageTooLarge,
            5 => CloseCode::ProtocolViolation,
            6 => CloseCode::ShuttingDown,
            7 => CloseCode::Overloaded,
            other => CloseCode::Other(other),
        }
    }
}

// === impl RejectCode ===

impl RejectCode {
    pub(crate) fn to_u16(self) -> u16 {
        match self {
            RejectCode::UnsupportedVersion => 1,
            RejectCode::InvalidHello => 2,
            RejectCode::Overloaded => 3,
            RejectCode::Other(code) => code,
        }
    }

    pub(crate) fn from_u16(code: u16) -> Self {
        match code {
            1 => RejectCode::UnsupportedVersion,
            2 => RejectCode::InvalidHello,
            3 => RejectCode::Overloaded,
            other => RejectCode::Other(other),
        }
    }
}
