//! The binary codec: `u32` big-endian length, one type byte, then the frame's fields.
//!
//! Strings are a `u16` length and UTF-8 bytes; lists are a `u16` count and their items;
//! a data frame's payload is the rest of the frame. Decoding is strict: unknown types,
//! unknown flags, truncated fields and trailing bytes are errors, never guesses.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::frame::{
    AgentFrame, CloseCode, Hello, Limits, Open, Reject, RejectCode, RelayFrame, ServerAnnouncement,
    StreamFrame, Welcome,
};
use crate::{AgentId, DecodeError, ProtocolVersion, StreamId};

/// Hard ceiling on one frame, length prefix included. A tunnel negotiates a smaller one in
/// [`Limits::max_frame_len`]; no decoder accepts more than this whatever was negotiated.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// A frame type of one direction: how it is written and read.
pub trait Frame: Sized {
    /// Appends the frame, length prefix included, to `buf`.
    fn encode(&self, buf: &mut BytesMut);

    /// Takes one frame off the front of `buf`. `Ok(None)` means the frame is not complete
    /// yet and `buf` is untouched; `Err` means the bytes are not a valid frame.
    fn decode(buf: &mut BytesMut) -> Result<Option<Self>, DecodeError>;

    /// Wraps a stream frame as a frame of this direction.
    fn from_stream(frame: StreamFrame) -> Self;

    /// Decodes a message that must hold exactly one complete frame, as a WebSocket
    /// message of the tunnel does. A data frame's payload shares `message`, uncopied.
    fn decode_message(message: Bytes) -> Result<Self, DecodeError>;

    /// Encodes the frame into a buffer of its own.
    fn to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::new();
        self.encode(&mut buf);
        buf.freeze()
    }
}

// === impl AgentFrame ===

impl Frame for AgentFrame {
    fn encode(&self, buf: &mut BytesMut) {
        match self {
            AgentFrame::Hello(hello) => framed(buf, TYPE_HELLO, |buf| {
                buf.put_u16(hello.version.0);
                put_str(buf, &hello.agent_version);
                put_servers(buf, &hello.servers);
            }),
            AgentFrame::Servers(servers) => framed(buf, TYPE_SERVERS, |buf| {
                put_servers(buf, servers);
            }),
            AgentFrame::Draining => framed(buf, TYPE_DRAINING, |_| {}),
            AgentFrame::Stream(frame) => encode_stream(frame, buf),
        }
    }

    fn decode(buf: &mut BytesMut) -> Result<Option<Self>, DecodeError> {
        split_frame(buf)?.map(decode_agent).transpose()
    }

    fn decode_message(message: Bytes) -> Result<Self, DecodeError> {
        decode_agent(whole_frame(message)?)
    }

    fn from_stream(frame: StreamFrame) -> Self {
        AgentFrame::Stream(frame)
    }
}

// === impl RelayFrame ===

impl Frame for RelayFrame {
    fn encode(&self, buf: &mut BytesMut) {
        match self {
            RelayFrame::Welcome(welcome) => framed(buf, TYPE_WELCOME, |buf| {
                put_str(buf, &welcome.agent_id.0);
                put_str(buf, &welcome.agent_name);
                buf.put_u32(welcome.heartbeat_interval_ms);
                buf.put_u32(welcome.limits.max_frame_len);
                buf.put_u32(welcome.limits.max_message_len);
                buf.put_u32(welcome.limits.initial_window);
                buf.put_u32(welcome.limits.max_streams);
            }),
            RelayFrame::Reject(reject) => framed(buf, TYPE_REJECT, |buf| {
                buf.put_u16(reject.code.to_u16());
                put_str(buf, &reject.message);
            }),
            RelayFrame::Open(open) => framed(buf, TYPE_OPEN, |buf| {
                buf.put_u32(open.stream.0);
                put_str(buf, &open.server);
                put_len16(buf, open.meta.len());
                for (name, value) in &open.meta {
                    put_str(buf, name);
                    put_str(buf, value);
                }
            }),
            RelayFrame::Stream(frame) => encode_stream(frame, buf),
        }
    }

    fn decode(buf: &mut BytesMut) -> Result<Option<Self>, DecodeError> {
        split_frame(buf)?.map(decode_relay).transpose()
    }

    fn decode_message(message: Bytes) -> Result<Self, DecodeError> {
        decode_relay(whole_frame(message)?)
    }

    fn from_stream(frame: StreamFrame) -> Self {
        RelayFrame::Stream(frame)
    }
}

/// An agent's frame of type `ty`, from its fields.
fn decode_agent((ty, mut body): (u8, Fields)) -> Result<AgentFrame, DecodeError> {
    let frame = match ty {
        TYPE_HELLO => {
            let version = ProtocolVersion(body.u16("version")?);
            let agent_version = body.string("agent_version")?;
            let servers = get_servers(&mut body)?;
            AgentFrame::Hello(Hello {
                version,
                agent_version,
                servers,
            })
        }
        TYPE_SERVERS => AgentFrame::Servers(get_servers(&mut body)?),
        TYPE_DRAINING => AgentFrame::Draining,
        TYPE_WELCOME | TYPE_REJECT | TYPE_OPEN => return Err(DecodeError::WrongDirection(ty)),
        _ => AgentFrame::Stream(decode_stream(ty, &mut body)?),
    };
    body.finish()?;
    Ok(frame)
}

/// A relay's frame of type `ty`, from its fields.
fn decode_relay((ty, mut body): (u8, Fields)) -> Result<RelayFrame, DecodeError> {
    let frame = match ty {
        TYPE_WELCOME => RelayFrame::Welcome(Welcome {
            agent_id: AgentId(body.string("agent_id")?),
            agent_name: body.string("agent_name")?,
            heartbeat_interval_ms: body.u32("heartbeat_interval_ms")?,
            limits: Limits {
                max_frame_len: body.u32("max_frame_len")?,
                max_message_len: body.u32("max_message_len")?,
                initial_window: body.u32("initial_window")?,
                max_streams: body.u32("max_streams")?,
            },
        }),
        TYPE_REJECT => RelayFrame::Reject(Reject {
            code: RejectCode::from_u16(body.u16("code")?),
            message: body.string("message")?,
        }),
        TYPE_OPEN => {
            let stream = StreamId(body.u32("stream")?);
            let server = body.string("server")?;
            let count = body.u16("meta")?;
            let mut meta = Vec::with_capacity(usize::from(count).min(64));
            for _ in 0..count {
                meta.push((body.string("meta.name")?, body.string("meta.value")?));
            }
            RelayFrame::Open(Open {
                stream,
                server,
                meta,
            })
        }
        TYPE_HELLO | TYPE_DRAINING | TYPE_SERVERS => {
            return Err(DecodeError::WrongDirection(ty));
        }
        _ => RelayFrame::Stream(decode_stream(ty, &mut body)?),
    };
    body.finish()?;
    Ok(frame)
}

// === stream frames, shared by both directions ===

fn encode_stream(frame: &StreamFrame, buf: &mut BytesMut) {
    match frame {
        StreamFrame::Data {
            stream,
            fin,
            payload,
        } => framed(buf, TYPE_DATA, |buf| {
            buf.put_u32(stream.0);
            buf.put_u8(if *fin { FLAG_FIN } else { 0 });
            buf.put_slice(payload);
        }),
        StreamFrame::Credit { stream, bytes } => framed(buf, TYPE_CREDIT, |buf| {
            buf.put_u32(stream.0);
            buf.put_u32(*bytes);
        }),
        StreamFrame::Close {
            stream,
            code,
            message,
        } => framed(buf, TYPE_CLOSE, |buf| {
            buf.put_u32(stream.0);
            buf.put_u16(code.to_u16());
            put_str(buf, message);
        }),
    }
}

fn decode_stream(ty: u8, body: &mut Fields) -> Result<StreamFrame, DecodeError> {
    match ty {
        TYPE_DATA => {
            let stream = StreamId(body.u32("stream")?);
            let flags = body.u8("flags")?;
            if flags & !FLAG_FIN != 0 {
                return Err(DecodeError::InvalidValue {
                    field: "flags",
                    value: u64::from(flags),
                });
            }
            Ok(StreamFrame::Data {
                stream,
                fin: flags & FLAG_FIN != 0,
                payload: body.rest(),
            })
        }
        TYPE_CREDIT => Ok(StreamFrame::Credit {
            stream: StreamId(body.u32("stream")?),
            bytes: body.u32("bytes")?,
        }),
        TYPE_CLOSE => Ok(StreamFrame::Close {
            stream: StreamId(body.u32("stream")?),
            code: CloseCode::from_u16(body.u16("code")?),
            message: body.string("message")?,
        }),
        other => Err(DecodeError::UnknownType(other)),
    }
}

// === helpers ===

/// Writes the length prefix and type byte around what `body` writes.
fn framed(buf: &mut BytesMut, ty: u8, body: impl FnOnce(&mut BytesMut)) {
    let start = buf.len();
    buf.put_u32(0);
    buf.put_u8(ty);
    body(buf);
    let len = u32::try_from(buf.len() - start - LEN_PREFIX)
        .expect("frames are bounded far below 4 GiB by their fields' own limits");
    buf[start..start + LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
}

/// Splits one complete frame off `buf`, or returns `None` if it is not all there yet.
fn split_frame(buf: &mut BytesMut) -> Result<Option<(u8, Fields)>, DecodeError> {
    let Some(len) = frame_len(buf)? else {
        return Ok(None);
    };
    if buf.len() < len {
        return Ok(None);
    }
    Ok(Some(fields(buf.split_to(len).freeze())))
}

/// The one frame that `message` must hold exactly, its fields sharing `message`.
fn whole_frame(message: Bytes) -> Result<(u8, Fields), DecodeError> {
    match frame_len(&message)? {
        Some(len) if len == message.len() => Ok(fields(message)),
        _ => Err(DecodeError::NotOneFrame),
    }
}

/// The length of the frame at the start of `buf`, length prefix included, once the
/// prefix is there.
fn frame_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    let Some(prefix) = buf.first_chunk::<LEN_PREFIX>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*prefix) as usize;
    if len + LEN_PREFIX > MAX_FRAME_LEN {
        return Err(DecodeError::TooLarge {
            len: len + LEN_PREFIX,
            max: MAX_FRAME_LEN,
        });
    }
    if len == 0 {
        return Err(DecodeError::Truncated("type"));
    }
    Ok(Some(LEN_PREFIX + len))
}

/// A whole frame's type and fields (`frame_len` has checked it has a type).
fn fields(mut frame: Bytes) -> (u8, Fields) {
    frame.advance(LEN_PREFIX);
    let ty = frame.get_u8();
    (ty, Fields(frame))
}

fn put_str(buf: &mut BytesMut, value: &str) {
    // Strings longer than a u16 are cut at a character boundary; every string field is
    // a name, a version or a human-readable reason, never content.
    let mut end = value.len().min(usize::from(u16::MAX));
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    put_len16(buf, end);
    buf.put_slice(&value.as_bytes()[..end]);
}

fn put_servers(buf: &mut BytesMut, servers: &[ServerAnnouncement]) {
    let servers = &servers[..servers.len().min(usize::from(u16::MAX))];
    put_len16(buf, servers.len());
    for server in servers {
        put_str(buf, &server.name);
        put_str(buf, &server.policy_digest);
    }
}

fn get_servers(body: &mut Fields) -> Result<Vec<ServerAnnouncement>, DecodeError> {
    let count = body.u16("servers")?;
    let mut servers = Vec::with_capacity(usize::from(count).min(64));
    for _ in 0..count {
        servers.push(ServerAnnouncement {
            name: body.string("server.name")?,
            policy_digest: body.string("server.policy_digest")?,
        });
    }
    Ok(servers)
}

fn put_len16(buf: &mut BytesMut, len: usize) {
    buf.put_u16(u16::try_from(len).unwrap_or(u16::MAX));
}

/// The fields of one frame, read front to back.
struct Fields(Bytes);

impl Fields {
    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        self.need(1, field)?;
        Ok(self.0.get_u8())
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.need(2, field)?;
        Ok(self.0.get_u16())
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.need(4, field)?;
        Ok(self.0.get_u32())
    }

    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let len = usize::from(self.u16(field)?);
        self.need(len, field)?;
        let bytes = self.0.split_to(len);
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::InvalidUtf8(field))
    }

    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.0)
    }

    fn need(&self, len: usize, field: &'static str) -> Result<(), DecodeError> {
        if self.0.len() < len {
            Err(DecodeError::Truncated(field))
        } else {
            Ok(())
        }
    }

    fn finish(self) -> Result<(), DecodeError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.0.len()))
        }
    }
}

const LEN_PREFIX: usize = 4;
const FLAG_FIN: u8 = 0b0000_0001;

const TYPE_HELLO: u8 = 0x01;
const TYPE_DRAINING: u8 = 0x02;
const TYPE_SERVERS: u8 = 0x03;
const TYPE_WELCOME: u8 = 0x10;
const TYPE_REJECT: u8 = 0x11;
const TYPE_OPEN: u8 = 0x12;
const TYPE_DATA: u8 = 0x20;
const TYPE_CREDIT: u8 = 0x21;
const TYPE_CLOSE: u8 = 0x22;

#[cfg(test)]
mod tests;
