//! Protocol versions.

/// A tunnel protocol version. Sent first, in the agent's hello; the relay rejects a version
/// it does not speak with [`crate::RejectCode::UnsupportedVersion`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProtocolVersion(pub u16);

/// The version this crate encodes and decodes.
pub const PROTOCOL_VERSION: ProtocolVersion = ProtocolVersion(1);
