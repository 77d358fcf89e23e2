//! Outpost's tunnel protocol: the frames an agent and a relay exchange over one WebSocket,
//! their binary codec, and the envelope of the JSON-RPC messages they carry. Owns the wire format and its limits; does no I/O, reads no clock
//! and spawns nothing, so it can be tested and fuzzed without a runtime.
//!
//! `docs/protocol.md` specifies the format; this crate is its reference implementation.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod codec;
pub mod envelope;
mod error;
mod frame;
mod ids;
mod version;

pub use codec::{Frame, MAX_FRAME_LEN};
pub use error::DecodeError;
pub use frame::{
    AgentFrame, CloseCode, Hello, Limits, Open, Reject, RejectCode, RelayFrame, ServerAnnouncement,
    StreamFrame, Welcome,
};
pub use ids::{AgentId, StreamId};
pub use version::{PROTOCOL_VERSION, ProtocolVersion};
