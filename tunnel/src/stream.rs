//! One stream's two halves, and the state the driver shares with them. Owns message
//! splitting, reassembly and credit accounting; does not touch the socket.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Bytes, BytesMut};
use outpost_protocol::{CloseCode, StreamFrame, StreamId};
use tokio::sync::{Semaphore, mpsc};

use crate::Core;

/// A stream: one JSON-RPC conversation between a relay session and an upstream.
#[derive(Debug)]
pub struct Stream {
    /// The stream's id in its tunnel.
    pub id: StreamId,
    /// Sends messages; cloneable.
    pub sender: StreamSender,
    /// Receives messages, whole.
    pub receiver: StreamReceiver,
}

/// How a stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// One side closed it, with a reason.
    Closed {
        /// Why.
        code: CloseCode,
        /// Detail, safe to log.
        message: String,
    },
    /// The tunnel carrying it ended.
    TunnelClosed,
}

impl std::fmt::Display for StreamEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamEnd::Closed { code, message } => write!(f, "closed ({code:?}): {message}"),
            StreamEnd::TunnelClosed => f.write_str("the tunnel closed"),
        }
    }
}

/// Why a send or receive failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The stream has ended; nothing more will pass.
    #[error("stream {0}")]
    Ended(StreamEnd),
    /// Empty messages are not sent: a JSON-RPC message is never empty.
    #[error("empty message")]
    Empty,
    /// A write of this message was cancelled part-way, so a part of it may be missing: it
    /// can only be abandoned.
    #[error("a write of the message was cancelled part-way")]
    Torn,
    /// The message exceeds the tunnel's message limit. On receive, the stream was closed.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Size of the message, or of the part seen so far.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// The driver's side of a stream.
#[derive(Debug)]
pub(crate) struct StreamShared {
    /// Received pieces. Unbounded in count but not in bytes: the peer may only send what
    /// it has credit for, and the driver closes a stream that sends more.
    queue: mpsc::UnboundedSender<Piece>,
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    id: StreamId,
    /// Payload bytes this side may still send. The peer's credit frames add to it.
    credit: Semaphore,
    /// Payload bytes received and not yet credited back: at most `window`.
    uncredited: AtomicUsize,
    /// The credit window the peer was granted.
    window: usize,
    /// Why the stream ended, once it has.
    end: Mutex<Option<StreamEnd>>,
    /// Held for the whole of one message's pieces: senders are cloneable, and pieces of two
    /// messages on one stream must never interleave.
    send_lock: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct Piece {
    fin: bool,
    payload: Bytes,
}

/// Sends whole messages on a stream, splitting them into data frames and waiting for
/// credit. Cloneable; the stream is closed when the receiver and every sender are dropped.
#[derive(Clone)]
pub struct StreamSender {
    state: Arc<State>,
    core: Arc<Core>,
    _guard: Arc<CloseOnDrop>,
}

/// Receives whole messages from a stream.
pub struct StreamReceiver {
    state: Arc<State>,
    core: Arc<Core>,
    queue: mpsc::UnboundedReceiver<Piece>,
    /// The message being reassembled.
    partial: Reassembly,
    /// Bytes so far of a message begun ([`Arrival::Begun`]) and still arriving.
    begun: usize,
    /// Payload bytes consumed but not yet credited back (credit goes out in batches).
    pending_credit: usize,
    _guard: Arc<CloseOnDrop>,
}

/// What [`StreamReceiver::recv_or_begin`] received.
#[derive(Debug)]
pub enum Arrival {
    /// A whole message.
    Whole(Bytes),
    /// The start of a message still arriving.
    Begun(Bytes),
}

/// The next part of a message begun ([`Arrival::Begun`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Part {
    /// A part; more follow.
    More(Bytes),
    /// The message's last part.
    Last(Bytes),
    /// Its sender abandoned it part-way (see [`MessageWriter::abandon`]): what came of it
    /// is not a message, and the stream lives on.
    Abandoned,
}

/// Closes the stream when its last half is dropped.
#[derive(Debug)]
struct CloseOnDrop {
    id: StreamId,
    core: Arc<Core>,
}

pub(crate) fn pair(id: StreamId, core: Arc<Core>) -> (StreamShared, Stream) {
    let window = core.config.initial_window as usize;
    let state = Arc::new(State {
        id,
        credit: Semaphore::new(window),
        uncredited: AtomicUsize::new(0),
        window,
        end: Mutex::new(None),
        send_lock: tokio::sync::Mutex::new(()),
    });
    let (queue_tx, queue_rx) = mpsc::unbounded_channel();
    let guard = Arc::new(CloseOnDrop {
        id,
        core: core.clone(),
    });
    let stream = Stream {
        id,
        sender: StreamSender {
            state: state.clone(),
            core: core.clone(),
            _guard: guard.clone(),
        },
        receiver: StreamReceiver {
            state: state.clone(),
            core,
            queue: queue_rx,
            partial: Reassembly::default(),
            begun: 0,
            pending_credit: 0,
            _guard: guard,
        },
    };
    (
        StreamShared {
            queue: queue_tx,
            state,
        },
        stream,
    )
}

// === impl StreamShared ===

impl StreamShared {
    /// Queues a received piece. `Err` means the peer broke flow control: it sent past its
    /// credit, or sent an empty piece (which would cost no credit and so be unbounded).
    pub(crate) fn deliver(&self, fin: bool, payload: Bytes) -> Result<(), ()> {
        if payload.is_empty() {
            return Err(());
        }
        // Credit is symmetric: each side grants the peer the same initial window.
        let window = self.state.window;
        let len = payload.len();
        let before = self.state.uncredited.fetch_add(len, Ordering::AcqRel);
        if before + len > window {
            return Err(());
        }
        // The receiver may be gone; the stream's close is then on its way.
        let _ = self.queue.send(Piece { fin, payload });
        Ok(())
    }

    /// Adds credit granted by the peer.
    pub(crate) fn add_credit(&self, bytes: u32) {
        let room = Semaphore::MAX_PERMITS - self.state.credit.available_permits();
        self.state.credit.add_permits((bytes as usize).min(room));
    }

    /// Records how the stream ended and wakes everyone waiting on it.
    pub(crate) fn end(self, end: StreamEnd) {
        self.state.set_end(end);
        self.state.credit.close();
    }
}

impl State {
    fn set_end(&self, end: StreamEnd) {
        let mut slot = self.end.lock().unwrap_or_else(PoisonError::into_inner);
        slot.get_or_insert(end);
    }

    fn ended(&self) -> StreamEnd {
        self.end
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or(StreamEnd::TunnelClosed)
    }
}

// === impl StreamSender ===

impl StreamSender {
    /// The stream's id.
    pub fn id(&self) -> StreamId {
        self.state.id
    }

    /// Sends one whole message. Waits while the stream has no credit, without holding up
    /// other streams. Concurrent sends on clones of one sender go one message at a time.
    /// Dropping the future part-way through a message closes the stream, since the peer
    /// could not tell the rest of that message from the next one.
    pub async fn send(&self, message: Bytes) -> Result<(), StreamError> {
        if message.is_empty() {
            return Err(StreamError::Empty);
        }
        let max = self.core.config.max_message_len;
        if message.len() > max {
            return Err(StreamError::TooLarge {
                len: message.len(),
                max,
            });
        }
        let mut writer = self.writer(IfDropped::CloseStream).await;
        writer.send_pieces(message, true).await
    }

    /// Starts a message to be sent in parts, for a message whose start is at hand before
    /// its end (see [`MessageWriter`]). Waits for sends on clones of this sender to finish
    /// their messages.
    pub async fn begin(&self) -> MessageWriter<'_> {
        self.writer(IfDropped::Abandon).await
    }

    async fn writer(&self, if_dropped: IfDropped) -> MessageWriter<'_> {
        let lock = self.state.send_lock.lock().await;
        MessageWriter {
            sender: self,
            torn: TornMessageGuard {
                core: &self.core,
                id: self.state.id,
                armed: false,
            },
            _one_message_at_a_time: lock,
            if_dropped,
            write_cancelled: false,
            held: Bytes::new(),
            len: 0,
        }
    }

    /// Closes the stream in both directions, after the data already sent.
    pub async fn close(&self, code: CloseCode, message: impl Into<String>) {
        if let Some(frame) = end_here(&self.core, self.state.id, code, message.into()) {
            let _ = self.core.data_tx.send(frame).await;
        }
    }

    /// Closes the stream without waiting: behind the data already queued if there is room,
    /// else at once. For code that must not await (a loop that also drives the tunnel).
    pub fn close_now(&self, code: CloseCode, message: impl Into<String>) {
        close_now(&self.core, self.state.id, code, message.into());
    }

    /// Closes the stream at once, for a stream whose exchange is over: on the control lane,
    /// ahead of any data still queued for it (which the peer then drops), and in order
    /// with the `Open`s sent after it, so the peer stops counting this stream before it
    /// counts the next. See `Core::control_tx`.
    pub fn abort(&self, code: CloseCode, message: impl Into<String>) {
        if let Some(frame) = end_here(&self.core, self.state.id, code, message.into()) {
            self.core.send_control(frame);
        }
    }

    /// Whether the stream has ended.
    pub fn is_closed(&self) -> bool {
        self.state.credit.is_closed()
    }
}

// === impl StreamReceiver ===

impl StreamReceiver {
    /// The stream's id.
    pub fn id(&self) -> StreamId {
        self.state.id
    }

    /// Receives the next whole message.
    pub async fn recv(&mut self) -> Result<Bytes, StreamError> {
        loop {
            let piece = self.next_piece(self.partial.len()).await?;
            self.partial.push(piece.payload);
            if piece.fin {
                return Ok(self.partial.take());
            }
        }
    }

    /// Receives the next message whole if it ends within `from` bytes; otherwise its first
    /// `from` bytes or more, as soon as they are here, so that a hop can send a long
    /// message's start on while its end is still on the way. After [`Arrival::Begun`],
    /// the rest of that message comes from [`Self::next_part`] until its last part, or
    /// whole from [`Self::rest_of`]: a plain [`Self::recv`] would take it for a new one.
    pub async fn recv_or_begin(&mut self, from: usize) -> Result<Arrival, StreamError> {
        loop {
            let piece = self.next_piece(self.partial.len()).await?;
            self.partial.push(piece.payload);
            if piece.fin {
                return Ok(Arrival::Whole(self.partial.take()));
            }
            if self.partial.len() >= from {
                self.begun = self.partial.len();
                return Ok(Arrival::Begun(self.partial.take()));
            }
        }
    }

    /// The next part of the message [`Self::recv_or_begin`] began.
    pub async fn next_part(&mut self) -> Result<Part, StreamError> {
        let piece = self.next_piece(self.begun).await?;
        self.begun += piece.payload.len();
        if !piece.fin {
            return Ok(Part::More(piece.payload));
        }
        self.begun = 0;
        if piece.payload == ABANDONED {
            return Ok(Part::Abandoned);
        }
        Ok(Part::Last(piece.payload))
    }

    /// The message [`Self::recv_or_begin`] began, whole: `begun`, the start it gave, and
    /// everything after.
    pub async fn rest_of(&mut self, begun: Bytes) -> Result<Bytes, StreamError> {
        self.begun = 0;
        self.partial.push(begun);
        self.recv().await
    }

    /// The next piece of a message of which `so_far` bytes came before it, within the
    /// message limit; credit goes back as it is due.
    async fn next_piece(&mut self, so_far: usize) -> Result<Piece, StreamError> {
        let max = self.core.config.max_message_len;
        let Some(piece) = self.queue.recv().await else {
            return Err(StreamError::Ended(self.state.ended()));
        };
        self.pending_credit += piece.payload.len();
        let seen = so_far + piece.payload.len();
        if seen > max {
            self.partial = Reassembly::default();
            self.begun = 0;
            self.close(
                CloseCode::MessageTooLarge,
                format!("message exceeds {max} bytes"),
            );
            return Err(StreamError::TooLarge { len: seen, max });
        }
        if self.pending_credit >= self.credit_batch() || (piece.fin && self.peer_may_lack_room()) {
            self.flush_credit();
        }
        Ok(piece)
    }

    /// Credit goes back in batches, but never so large that a peer with a small window
    /// would wait for credit this side is holding back.
    fn credit_batch(&self) -> usize {
        self.core.config.chunk_len.min(self.state.window / 2).max(1)
    }

    /// Whether the peer may not have credit left for one more whole piece, were this side
    /// to keep back what it holds: then it goes back at once, at the end of each message.
    /// Otherwise credit goes back only in batches, so a small request or answer costs no
    /// credit frame of its own (one frame, one TLS record and one wake-up of the peer
    /// fewer per message).
    fn peer_may_lack_room(&self) -> bool {
        self.state.window.saturating_sub(self.pending_credit) < self.core.config.peer_chunk_len
    }

    fn flush_credit(&mut self) {
        if self.pending_credit == 0 {
            return;
        }
        let bytes = std::mem::take(&mut self.pending_credit);
        self.state.uncredited.fetch_sub(bytes, Ordering::AcqRel);
        self.core.send_control(StreamFrame::Credit {
            stream: self.state.id,
            bytes: u32::try_from(bytes).unwrap_or(u32::MAX),
        });
    }

    fn close(&self, code: CloseCode, message: String) {
        close_now(&self.core, self.state.id, code, message);
    }
}

/// Bytes that arrive in pieces (a message's data frames, an SSE line's chunks), copied
/// together once, at the end, into a buffer of their exact size: a buffer grown piece by
/// piece would copy a large message again at each growth.
///
/// Short pieces are copied as they come into a buffer of their own. A received piece is a
/// slice of the larger buffer it was read into (tungstenite's, hyper's): kept as it is, a
/// small message would hold all of that buffer alive, in the relay's replay buffer for
/// example. Only a long piece alone is handed on uncopied.
#[derive(Debug, Default)]
pub struct Reassembly {
    /// Pieces in order: long pieces kept as received (no copy), and runs of short pieces
    /// copied together, each run ended by a long piece or at [`KEEP_APART`] bytes. So at
    /// most two per `KEEP_APART` bytes, plus one: the bookkeeping stays a small fraction
    /// of the bytes however a peer cuts them.
    pieces: Vec<Bytes>,
    /// The run of short pieces after the last kept one.
    short: BytesMut,
    /// Bytes so far.
    len: usize,
}

/// Pieces shorter than this are copied together rather than kept apart.
const KEEP_APART: usize = 16 * 1024;

impl Reassembly {
    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been pushed since the last `take`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds the next piece.
    pub fn push(&mut self, piece: Bytes) {
        self.len += piece.len();
        if piece.len() >= KEEP_APART {
            self.keep_short();
            self.pieces.push(piece);
        } else {
            self.short.extend_from_slice(&piece);
            if self.short.len() >= KEEP_APART {
                self.keep_short();
            }
        }
    }

    fn keep_short(&mut self) {
        if !self.short.is_empty() {
            self.pieces.push(self.short.split().freeze());
        }
    }

    /// Everything pushed, in one buffer, leaving this empty.
    pub fn take(&mut self) -> Bytes {
        self.keep_short();
        let message = match self.pieces.len() {
            1 => self.pieces.pop().unwrap_or_default(),
            _ => {
                let mut message = BytesMut::with_capacity(self.len);
                for piece in self.pieces.drain(..) {
                    message.extend_from_slice(&piece);
                }
                message.freeze()
            }
        };
        self.len = 0;
        message
    }
}

/// Closes the stream if a send is abandoned between two pieces of one message.
struct TornMessageGuard<'a> {
    core: &'a Core,
    id: StreamId,
    armed: bool,
}

impl Drop for TornMessageGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            close_now(
                self.core,
                self.id,
                CloseCode::ProtocolViolation,
                "a message was abandoned part-way".to_owned(),
            );
        }
    }
}

/// One message sent in parts, as they come: a hop forwards a large message's start while
/// its end is still on the way. Holds the stream's send lock until the message ends, so no
/// other message's pieces come between. The most recent part is held back until the next
/// one or the end, so that the message's last frame has a payload.
///
/// Dropped before [`finish`](Self::finish) or [`abandon`](Self::abandon) (its task
/// cancelled) after a part was sent, it abandons the message as `abandon` does if a byte
/// of credit and a place on the data lane are free at once; otherwise it closes the
/// stream, as a dropped [`StreamSender::send`] does.
pub struct MessageWriter<'a> {
    sender: &'a StreamSender,
    /// Dropped before the lock (fields drop in order), so that a stream closed for a torn
    /// message is closed before another message can start.
    torn: TornMessageGuard<'a>,
    _one_message_at_a_time: tokio::sync::MutexGuard<'a, ()>,
    /// What a message dropped part-way does.
    if_dropped: IfDropped,
    /// A write was cancelled part-way: parts may be missing.
    write_cancelled: bool,
    /// The latest part, not yet sent.
    held: Bytes,
    /// Bytes of the message so far, `held` included.
    len: usize,
}

impl MessageWriter<'_> {
    /// Bytes of the message so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `part` to the message, sending what was held before it. `TooLarge` if the
    /// message would exceed the tunnel's limit: then nothing of `part` is taken and the
    /// message can still be finished or abandoned.
    /// `Torn` if an earlier write was cancelled part-way.
    pub async fn write(&mut self, part: Bytes) -> Result<(), StreamError> {
        if self.write_cancelled {
            return Err(StreamError::Torn);
        }
        if part.is_empty() {
            return Ok(());
        }
        self.check_room(part.len())?;
        self.len += part.len();
        let before = std::mem::replace(&mut self.held, part);
        if before.is_empty() {
            return Ok(());
        }
        self.write_cancelled = true;
        self.send_pieces(before, false).await?;
        self.write_cancelled = false;
        Ok(())
    }

    /// Ends the message with what was written. `Empty` if nothing was, `Torn` if a write
    /// was cancelled part-way. Dropped part-way through, it abandons the message as a
    /// dropped writer does: a caller counts its message as sent only once this returns.
    pub async fn finish(mut self) -> Result<(), StreamError> {
        if self.write_cancelled {
            return Err(StreamError::Torn);
        }
        let held = std::mem::take(&mut self.held);
        if held.is_empty() {
            return Err(StreamError::Empty);
        }
        self.send_pieces(held, true).await
    }

    /// Ends a message that cannot be completed (its source broke off, or it outgrew the
    /// limit) so that the peer refuses it. If nothing of it was sent yet, nothing is.
    /// Otherwise the held part is dropped and the message ends with one NUL byte, which no
    /// JSON text may contain, so the peer's parser drops the message and the stream lives
    /// on. Within the limit: the held part, at least one byte, is not sent.
    pub async fn abandon(mut self) -> Result<(), StreamError> {
        self.held = Bytes::new();
        if !self.torn.armed {
            return Ok(());
        }
        self.send_pieces(Bytes::from_static(ABANDONED), true).await
    }

    fn check_room(&self, more: usize) -> Result<(), StreamError> {
        let max = self.sender.core.config.max_message_len;
        let len = self.len + more;
        if len > max {
            return Err(StreamError::TooLarge { len, max });
        }
        Ok(())
    }

    /// Sends `bytes` as data frames of at most a chunk each, waiting for credit; `fin` on
    /// the last when `ends`.
    async fn send_pieces(&mut self, mut bytes: Bytes, ends: bool) -> Result<(), StreamError> {
        let sender = self.sender;
        let config = &sender.core.config;
        let piece_len = config.chunk_len.min(config.initial_window as usize).max(1);
        while !bytes.is_empty() {
            let take = bytes.len().min(piece_len);
            let payload = bytes.split_to(take);
            let fin = ends && bytes.is_empty();
            let permits = u32::try_from(take).expect("pieces are at most the chunk length");
            let permit = match sender.state.credit.acquire_many(permits).await {
                Ok(permit) => permit,
                Err(_) => return Err(StreamError::Ended(sender.state.ended())),
            };
            let frame = StreamFrame::Data {
                stream: sender.state.id,
                fin,
                payload,
            };
            if sender.core.data_tx.send(frame).await.is_err() {
                return Err(StreamError::Ended(StreamEnd::TunnelClosed));
            }
            // Spent only once the piece is queued: a send dropped while waiting for the
            // data lane gives its credit back.
            permit.forget();
            // Between two pieces of one message, a drop would leave the peer with half.
            self.torn.armed = !fin;
        }
        Ok(())
    }
}

/// What a [`MessageWriter`] dropped part-way through its message does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IfDropped {
    /// Closes the stream: [`StreamSender::send`]'s callers rely on it.
    CloseStream,
    /// Abandons the message if it can at once, else closes the stream.
    Abandon,
}

/// The last piece of an abandoned message: a byte no JSON text contains.
const ABANDONED: &[u8] = &[0];

impl Drop for MessageWriter<'_> {
    fn drop(&mut self) {
        if !self.torn.armed || self.if_dropped == IfDropped::CloseStream {
            return;
        }
        let state = &self.sender.state;
        let Ok(permit) = state.credit.try_acquire_many(1) else {
            return;
        };
        let Ok(slot) = self.sender.core.data_tx.try_reserve() else {
            return;
        };
        slot.send(StreamFrame::Data {
            stream: state.id,
            fin: true,
            payload: Bytes::from_static(ABANDONED),
        });
        permit.forget();
        self.torn.armed = false;
    }
}

impl std::fmt::Debug for MessageWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageWriter")
            .field("stream", &self.sender.state.id)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for StreamSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StreamSender").field(&self.state.id).finish()
    }
}

impl std::fmt::Debug for StreamReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StreamReceiver")
            .field(&self.state.id)
            .finish()
    }
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        close_now(
            &self.core,
            self.id,
            CloseCode::Normal,
            "stream released".to_owned(),
        );
    }
}

/// Closes a stream from synchronous code: after queued data if the data lane has room,
/// else at once on the control lane (the stream's owner has abandoned it anyway).
fn close_now(core: &Core, id: StreamId, code: CloseCode, message: String) {
    if let Some(frame) = end_here(core, id, code, message) {
        match core.data_tx.try_reserve() {
            Ok(permit) => permit.send(frame),
            Err(_) => {
                core.send_control(frame);
            }
        }
    }
}

/// Ends a stream on this side, if it is still registered, and returns the Close frame
/// that tells the peer.
fn end_here(core: &Core, id: StreamId, code: CloseCode, message: String) -> Option<StreamFrame> {
    let shared = core.remove(id)?;
    shared.end(StreamEnd::Closed {
        code,
        message: message.clone(),
    });
    Some(StreamFrame::Close {
        stream: id,
        code,
        message,
    })
}

#[cfg(test)]
mod reassembly_tests {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::{KEEP_APART, Reassembly};

    proptest! {
        /// However a message is cut, it comes back whole, and the pieces kept apart stay
        /// few: two per `KEEP_APART` bytes, plus one.
        #[test]
        fn any_cut_reassembles_whole(
            cuts in proptest::collection::vec(1usize..3 * KEEP_APART, 1..40),
        ) {
            let len: usize = cuts.iter().sum();
            let message: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut partial = Reassembly::default();
            let mut at = 0;
            for cut in cuts {
                partial.push(Bytes::copy_from_slice(&message[at..at + cut]));
                at += cut;
                prop_assert!(partial.pieces.len() <= 2 * (at / KEEP_APART) + 1);
            }
            prop_assert_eq!(partial.len, len);
            prop_assert_eq!(&partial.take()[..], &message[..]);
            prop_assert_eq!(partial.len, 0);
            prop_assert!(partial.pieces.is_empty() && partial.short.is_empty());
        }
    }

    #[test]
    fn a_lone_long_piece_is_handed_on_uncopied() {
        let piece = Bytes::from(vec![7u8; KEEP_APART]);
        let mut partial = Reassembly::default();
        partial.push(piece.clone());
        assert_eq!(partial.take().as_ptr(), piece.as_ptr());
    }

    #[test]
    fn a_short_message_does_not_keep_the_buffer_it_came_in() {
        let buffer = Bytes::from(vec![7u8; 4 * KEEP_APART]);
        let mut partial = Reassembly::default();
        partial.push(buffer.slice(..100));
        let message = partial.take();
        assert_eq!(&message[..], &buffer[..100]);
        assert!(!buffer.as_ptr_range().contains(&message.as_ptr()));
    }

    #[test]
    fn runs_of_short_pieces_between_long_ones_are_bounded() {
        let mut partial = Reassembly::default();
        for _ in 0..3 {
            partial.push(Bytes::from(vec![1u8; 20_000]));
            partial.push(Bytes::from(vec![2u8; 100]));
        }
        assert_eq!(partial.pieces.len(), 5);
        assert_eq!(partial.take().len(), 60_300);
    }
}
