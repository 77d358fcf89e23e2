//! Decoding errors.

/// Why a buffer is not a valid frame. Every variant is final: the peer sent something this
/// version of the protocol does not accept, and the tunnel should be closed with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The length prefix exceeds [`crate::MAX_FRAME_LEN`] or the negotiated limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Length announced by the prefix.
        len: usize,
        /// Limit it was checked against.
        max: usize,
    },
    /// The frame type byte names no frame of this protocol version.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    /// The frame type is valid but only the other side may send it.
    #[error("frame type 0x{0:02x} is not sent in this direction")]
    WrongDirection(u8),
    /// A field runs past the end of the frame.
    #[error("frame ends inside field `{0}`")]
    Truncated(&'static str),
    /// Bytes remain after the last field of a fixed-layout frame.
    #[error("{0} trailing bytes after the frame's last field")]
    TrailingBytes(usize),
    /// A string field is not UTF-8.
    #[error("field `{0}` is not valid UTF-8")]
    InvalidUtf8(&'static str),
    /// A field holds a value outside its domain.
    #[error("field `{field}` has invalid value {value}")]
    InvalidValue {
        /// Name of the field.
        field: &'static str,
        /// Offending value.
        value: u64,
    },
    /// A whole WebSocket message held less or more than one frame.
    #[error("a tunnel message must hold exactly one frame")]
    NotOneFrame,
}
