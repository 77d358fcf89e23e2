//! Runs Outpost's stream multiplexer over one WebSocket: splits messages into data frames,
//! interleaves streams, enforces per-stream credit, and detects a dead peer by heartbeat.
//! Shared by the agent and the relay. Does not authenticate, does not do the hello, and
//! does not parse the JSON-RPC messages it carries.
//!
//! Start it with [`Tunnel::start`] after the hello/welcome exchange. It returns a cloneable
//! [`Tunnel`] handle, a receiver of [`TunnelEvent`]s ([`TunnelEvents`]), and a
//! [`TunnelDriver`] future that must be polled (spawned or selected on) for anything to
//! move.
//!
//! Memory per tunnel matters (a relay holds tens of thousands, mostly idle): tokio
//! allocates a block of 32 slots for each channel when it is created, so the tunnel's four
//! channels carry boxed frames or small ones, never the large frame enums themselves.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod driver;
pub mod runtime;
mod stream;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use outpost_protocol::{AgentFrame, Frame, Open, RelayFrame, StreamFrame, StreamId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use driver::{TunnelDriver, TunnelExit};
pub use runtime::CONTENT_SAFE_LOG_DIRECTIVES;
pub use stream::{
    Arrival, MessageWriter, Part, Reassembly, Stream, StreamEnd, StreamError, StreamReceiver,
    StreamSender,
};

use stream::StreamShared;

/// Settings of one running tunnel, agreed in the welcome.
#[derive(Debug, Clone, Copy)]
pub struct TunnelConfig {
    /// How often this side pings. A side that hears nothing for two intervals closes.
    pub heartbeat_interval: Duration,
    /// Largest payload in one data frame; larger messages are split.
    pub chunk_len: usize,
    /// Largest JSON-RPC message either side may send, reassembled.
    pub max_message_len: usize,
    /// Payload bytes a sender may have unacknowledged per stream.
    pub initial_window: u32,
    /// Largest payload the peer may put in one data frame (a bound: the frame limit will
    /// do). Credit for small messages is held back and returned in batches, but only while
    /// the peer still has room for a piece this large, so that no sender ever waits for
    /// credit this side is holding.
    pub peer_chunk_len: usize,
    /// Streams that may be open at once.
    pub max_streams: usize,
}

/// Something the peer did that is not a stream's data.
#[derive(Debug)]
#[non_exhaustive]
pub enum TunnelEvent<F> {
    /// The relay opened a stream (seen by agents only).
    Open {
        /// The new stream, already registered: its data is buffered until read.
        stream: Stream,
        /// Which server it is for.
        server: String,
        /// Transport metadata for the upstream.
        meta: Vec<(String, String)>,
    },
    /// A frame for the owner: the agent's `Draining`, for instance.
    Control(F),
}

/// Why a stream could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The tunnel has ended.
    #[error("the tunnel is closed")]
    TunnelClosed,
    /// As many streams are open as the limits allow.
    #[error("the tunnel has {0} streams open, its limit")]
    TooManyStreams(usize),
    /// The peer opened a stream id that is already in use.
    #[error("stream {0} is already open")]
    DuplicateStream(StreamId),
}

/// How a frame received from the peer is handled: stream frames by the multiplexer,
/// the rest by the tunnel's owner.
pub trait InboundFrame: Frame + Send + 'static {
    /// Sorts the frame.
    fn classify(self) -> Inbound<Self>;
}

/// A received frame, sorted by who handles it.
#[derive(Debug)]
pub enum Inbound<F> {
    /// Data, credit or close of a stream.
    Stream(StreamFrame),
    /// A new stream from the relay.
    Open(Open),
    /// Anything else: the owner's business.
    Control(F),
}

impl InboundFrame for AgentFrame {
    fn classify(self) -> Inbound<Self> {
        match self {
            AgentFrame::Stream(frame) => Inbound::Stream(frame),
            other => Inbound::Control(other),
        }
    }
}

impl InboundFrame for RelayFrame {
    fn classify(self) -> Inbound<Self> {
        match self {
            RelayFrame::Stream(frame) => Inbound::Stream(frame),
            RelayFrame::Open(open) => Inbound::Open(open),
            other => Inbound::Control(other),
        }
    }
}

/// A handle on a running tunnel. Cheap to clone; the tunnel runs until it is closed, the
/// peer goes away or the driver's cancellation token fires, not when handles drop.
#[derive(Debug)]
pub struct Tunnel<Out> {
    core: Arc<Core>,
    /// Frames for the peer's owner that belong to no stream (`Draining`, `Servers`).
    /// Unbounded: they are rare. Boxed: see the crate's note on memory.
    owner_tx: mpsc::UnboundedSender<Box<Out>>,
}

/// Receives what the peer did that is not a stream's data, in order. Ends when the tunnel
/// has ended.
#[derive(Debug)]
pub struct TunnelEvents<F> {
    /// Boxed: a `TunnelEvent<AgentFrame>` is over 100 bytes, and the channel's first block
    /// of 32 slots exists for the tunnel's whole life (see the crate's note on memory).
    receiver: mpsc::Receiver<Box<TunnelEvent<F>>>,
}

impl<F> TunnelEvents<F> {
    /// The next event; `None` once the tunnel has ended and every event was received.
    pub async fn recv(&mut self) -> Option<TunnelEvent<F>> {
        self.receiver.recv().await.map(|event| *event)
    }
}

impl<Out> Clone for Tunnel<Out> {
    fn clone(&self) -> Self {
        Self {
            core: self.core.clone(),
            owner_tx: self.owner_tx.clone(),
        }
    }
}

/// The direction-independent state shared by handles, streams and the driver.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) config: TunnelConfig,
    /// Streams by id. Held briefly by the reader (to deliver) and by openers and closers.
    streams: Mutex<HashMap<StreamId, StreamShared>>,
    /// Data and close frames, in order: bounded, so a busy stream waits here instead of
    /// buffering, and a close never overtakes the data sent before it.
    pub(crate) data_tx: mpsc::Sender<StreamFrame>,
    /// Stream control, in the order it was sent: the relay's `Open`s, credit, and closes
    /// that do not wait for data (refusals, `close_now`). Unbounded because each is small
    /// and their number is bounded by the streams and the data received; putting credit
    /// behind data would let a full data lane withhold the very credit that drains it.
    ///
    /// One lane keeps them in order: a stream's `Open` reaches the peer after the closes
    /// sent before it, so the peer never counts a closed stream and its successor at once
    /// (and refuses the successor as over its limit). The writer sends no data while a
    /// frame sent before it waits here, so no stream's data overtakes its `Open`.
    ///
    /// Boxed, as on the owner lane: idle tunnels hold this channel's first block all their
    /// lives.
    pub(crate) control_tx: mpsc::UnboundedSender<Box<Control>>,
    /// Fires when the tunnel ends, for whatever reason.
    pub(crate) closed: CancellationToken,
    /// The owner's token: when it fires, the tunnel ends because this side shuts down.
    pub(crate) shutdown: CancellationToken,
    /// Next stream id this side allocates (relay side only).
    next_stream: AtomicU32,
}

/// A frame of the control lane: a stream frame, or an `Open` (already encoded: the lane
/// is shared by both directions' frame types).
#[derive(Debug)]
pub(crate) enum Control {
    Stream(StreamFrame),
    Encoded(bytes::Bytes),
}

// === impl Tunnel ===

impl<Out: Frame + Send + 'static> Tunnel<Out> {
    /// Starts the multiplexer on an established WebSocket. `cancel` stops it from outside;
    /// the tunnel also ends on its own when the peer closes or falls silent.
    pub fn start<S, In>(
        socket: tokio_tungstenite::WebSocketStream<S>,
        config: TunnelConfig,
        cancel: CancellationToken,
    ) -> (Self, TunnelEvents<In>, TunnelDriver)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        In: InboundFrame,
    {
        let (data_tx, data_rx) = mpsc::channel(DATA_LANE_DEPTH);
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (owner_tx, owner_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::channel(EVENT_DEPTH);
        let core = Arc::new(Core {
            config,
            streams: Mutex::new(HashMap::new()),
            data_tx,
            control_tx,
            closed: cancel.child_token(),
            shutdown: cancel,
            next_stream: AtomicU32::new(1),
        });
        let lanes = driver::Lanes {
            owner: owner_rx,
            control: control_rx,
            data: data_rx,
        };
        let driver = TunnelDriver::new(socket, core.clone(), lanes, events_tx);
        let events = TunnelEvents {
            receiver: events_rx,
        };
        (Tunnel { core, owner_tx }, events, driver)
    }

    /// Sends a frame that belongs to no stream (e.g. the agent's `Draining`).
    pub fn send_control(&self, frame: Out) -> Result<(), OpenError> {
        self.owner_tx
            .send(Box::new(frame))
            .map_err(|_| OpenError::TunnelClosed)
    }

    /// Ends the tunnel: every stream fails with [`StreamEnd::TunnelClosed`].
    pub fn close(&self) {
        self.core.closed.cancel();
    }

    /// Resolves once the tunnel has ended.
    pub async fn closed(&self) {
        self.core.closed.cancelled().await
    }

    /// Whether the tunnel has ended.
    pub fn is_closed(&self) -> bool {
        self.core.closed.is_cancelled()
    }

    /// Streams open right now.
    pub fn open_streams(&self) -> usize {
        self.core.lock_streams().len()
    }

    /// The settings the tunnel runs with.
    pub fn config(&self) -> &TunnelConfig {
        &self.core.config
    }
}

impl Tunnel<RelayFrame> {
    /// Opens a stream to one of the agent's servers. Data may be sent at once; if the agent
    /// cannot serve it, the stream ends with the agent's reason.
    pub fn open_stream(
        &self,
        server: &str,
        meta: Vec<(String, String)>,
    ) -> Result<Stream, OpenError> {
        let id = StreamId(self.core.next_stream.fetch_add(1, Ordering::Relaxed));
        let stream = Core::register(&self.core, id)?;
        let open = RelayFrame::Open(Open {
            stream: id,
            server: server.to_owned(),
            meta,
        });
        self.core
            .control_tx
            .send(Box::new(Control::Encoded(open.to_bytes())))
            .map_err(|_| OpenError::TunnelClosed)?;
        Ok(stream)
    }
}

// === impl Core ===

impl Core {
    /// Registers a stream with the given id and returns its two halves.
    pub(crate) fn register(core: &Arc<Core>, id: StreamId) -> Result<Stream, OpenError> {
        if core.closed.is_cancelled() {
            return Err(OpenError::TunnelClosed);
        }
        let mut streams = core.lock_streams();
        if streams.len() >= core.config.max_streams {
            return Err(OpenError::TooManyStreams(streams.len()));
        }
        if streams.contains_key(&id) {
            return Err(OpenError::DuplicateStream(id));
        }
        let (shared, stream) = stream::pair(id, core.clone());
        streams.insert(id, shared);
        Ok(stream)
    }

    /// Queues a stream frame on the control lane (see `control_tx`); dropped if the tunnel
    /// has ended.
    pub(crate) fn send_control(&self, frame: StreamFrame) {
        let _ = self.control_tx.send(Box::new(Control::Stream(frame)));
    }

    /// Removes a stream, if it is still registered, and returns it.
    pub(crate) fn remove(&self, id: StreamId) -> Option<StreamShared> {
        self.lock_streams().remove(&id)
    }

    pub(crate) fn lock_streams(&self) -> MutexGuard<'_, HashMap<StreamId, StreamShared>> {
        // A panic while holding this lock leaves the map consistent (every operation on it
        // is a single insert, remove or lookup), so a poisoned lock is still usable.
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Data frames that may wait in the writer's queue.
const DATA_LANE_DEPTH: usize = 16;
/// Owner events (opens, control frames) that may wait before the reader pauses.
const EVENT_DEPTH: usize = 64;

#[cfg(test)]
mod tests;
