//! The task body that owns the WebSocket: a reader that sorts incoming frames and watches
//! the peer's heartbeat, and a writer that drains the outgoing lanes and pings. Owns the
//! socket; does not own the streams' state (see `stream.rs`).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use outpost_protocol::{CloseCode, DecodeError, Frame, StreamFrame};
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::stream::StreamEnd;
use crate::{Control, Core, Inbound, InboundFrame, OpenError, TunnelEvent};

/// Runs a tunnel until it ends and says why. Must be polled, by spawning it or selecting
/// on it, or nothing moves.
#[must_use = "tunnel drivers must be polled for the tunnel to run"]
pub struct TunnelDriver {
    future: Pin<Box<dyn Future<Output = TunnelExit> + Send>>,
}

/// Why a tunnel ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TunnelExit {
    /// This side closed it with [`crate::Tunnel::close`].
    Closed,
    /// This side is shutting down (the driver's parent token fired).
    ShutDown,
    /// The peer closed the WebSocket.
    PeerClosed {
        /// WebSocket close code, if the peer sent one.
        code: Option<u16>,
        /// The peer's reason.
        reason: String,
    },
    /// Nothing arrived from the peer for two heartbeat intervals.
    PeerSilent,
    /// The peer sent something that is not a valid frame.
    Protocol(DecodeError),
    /// The peer sent a message larger than the frame limit.
    TooLarge,
    /// The connection failed.
    Io(String),
}

impl std::fmt::Display for TunnelExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TunnelExit::Closed => f.write_str("closed by this side"),
            TunnelExit::ShutDown => f.write_str("shutting down"),
            TunnelExit::PeerClosed { code, reason } => {
                write!(f, "closed by peer (code {code:?}): {reason}")
            }
            TunnelExit::PeerSilent => f.write_str("peer silent for two heartbeat intervals"),
            TunnelExit::Protocol(err) => write!(f, "protocol error: {err}"),
            TunnelExit::TooLarge => f.write_str("peer sent a message over the frame limit"),
            TunnelExit::Io(err) => write!(f, "connection failed: {err}"),
        }
    }
}

/// The writer's inputs, highest priority first.
pub(crate) struct Lanes<Out> {
    pub(crate) owner: mpsc::UnboundedReceiver<Box<Out>>,
    pub(crate) control: mpsc::UnboundedReceiver<Box<Control>>,
    pub(crate) data: mpsc::Receiver<StreamFrame>,
}

type ExitSlot = Arc<Mutex<Option<TunnelExit>>>;

impl TunnelDriver {
    pub(crate) fn new<S, Out, In>(
        socket: WebSocketStream<S>,
        core: Arc<Core>,
        lanes: Lanes<Out>,
        events: mpsc::Sender<Box<TunnelEvent<In>>>,
    ) -> Self
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        Out: Frame + Send + 'static,
        In: InboundFrame,
    {
        let future = async move {
            let exit: ExitSlot = Arc::default();
            let (sink, source) = socket.split();
            tokio::join!(
                read_loop(source, core.clone(), events, exit.clone()),
                write_loop(sink, core.clone(), lanes, exit.clone()),
            );
            fail_open_streams(&core);
            current_exit(&core, &exit)
        };
        Self {
            future: Box::pin(future),
        }
    }
}

impl Future for TunnelDriver {
    type Output = TunnelExit;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TunnelExit> {
        self.future.as_mut().poll(cx)
    }
}

impl std::fmt::Debug for TunnelDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelDriver").finish_non_exhaustive()
    }
}

// === reader ===

async fn read_loop<S, In>(
    mut source: futures_util::stream::SplitStream<WebSocketStream<S>>,
    core: Arc<Core>,
    events: mpsc::Sender<Box<TunnelEvent<In>>>,
    exit: ExitSlot,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    In: InboundFrame,
{
    let silence = core.config.heartbeat_interval * 2;
    let reason = loop {
        let message = tokio::select! {
            _ = core.closed.cancelled() => return,
            message = tokio::time::timeout(silence, source.next()) => message,
        };
        let message = match message {
            Err(_elapsed) => break TunnelExit::PeerSilent,
            Ok(None) => {
                break TunnelExit::PeerClosed {
                    code: None,
                    reason: "connection ended".into(),
                };
            }
            Ok(Some(Err(WsError::Capacity(_)))) => break TunnelExit::TooLarge,
            Ok(Some(Err(err))) => break TunnelExit::Io(err.to_string()),
            Ok(Some(Ok(message))) => message,
        };
        match message {
            Message::Binary(bytes) => match In::decode_message(bytes) {
                Ok(frame) => {
                    if let Err(reason) = dispatch(&core, &events, frame).await {
                        break reason;
                    }
                }
                Err(err) => break TunnelExit::Protocol(err),
            },
            Message::Close(frame) => {
                break TunnelExit::PeerClosed {
                    code: frame.as_ref().map(|f| u16::from(f.code)),
                    reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                };
            }
            // Any traffic proves the peer alive; tungstenite answers pings itself.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            Message::Text(_) => {
                break TunnelExit::Protocol(DecodeError::NotOneFrame);
            }
        }
    };
    finish(&core, &exit, reason);
}

/// Hands one frame to its stream or to the owner. `Err` ends the tunnel.
async fn dispatch<In: InboundFrame>(
    core: &Arc<Core>,
    events: &mpsc::Sender<Box<TunnelEvent<In>>>,
    frame: In,
) -> Result<(), TunnelExit> {
    match frame.classify() {
        Inbound::Stream(StreamFrame::Data {
            stream,
            fin,
            payload,
        }) => {
            let violated = match core.lock_streams().get(&stream) {
                Some(shared) => shared.deliver(fin, payload).is_err(),
                // Data for a stream this side already closed: it crossed our close.
                None => false,
            };
            if violated {
                close_from_reader(
                    core,
                    stream,
                    CloseCode::ProtocolViolation,
                    "sent past credit",
                );
            }
        }
        Inbound::Stream(StreamFrame::Credit { stream, bytes }) => {
            if let Some(shared) = core.lock_streams().get(&stream) {
                shared.add_credit(bytes);
            }
        }
        Inbound::Stream(StreamFrame::Close {
            stream,
            code,
            message,
        }) => {
            if let Some(shared) = core.remove(stream) {
                shared.end(StreamEnd::Closed { code, message });
            }
        }
        Inbound::Stream(_) => {}
        Inbound::Open(open) => match Core::register(core, open.stream) {
            Ok(stream) => {
                let event = TunnelEvent::Open {
                    stream,
                    server: open.server,
                    meta: open.meta,
                };
                if events.send(Box::new(event)).await.is_err() {
                    return Err(TunnelExit::Closed);
                }
            }
            Err(OpenError::TooManyStreams(open_now)) => {
                core.send_control(StreamFrame::Close {
                    stream: open.stream,
                    code: CloseCode::Overloaded,
                    message: format!("the agent has {open_now} streams open, its limit"),
                });
            }
            Err(OpenError::DuplicateStream(id)) => {
                return Err(TunnelExit::Protocol(DecodeError::InvalidValue {
                    field: "stream",
                    value: u64::from(id.0),
                }));
            }
            Err(OpenError::TunnelClosed) => return Err(TunnelExit::Closed),
        },
        Inbound::Control(frame) => {
            if events
                .send(Box::new(TunnelEvent::Control(frame)))
                .await
                .is_err()
            {
                return Err(TunnelExit::Closed);
            }
        }
    }
    Ok(())
}

fn close_from_reader(core: &Core, stream: outpost_protocol::StreamId, code: CloseCode, why: &str) {
    if let Some(shared) = core.remove(stream) {
        tracing::warn!(%stream, ?code, why, "closing stream");
        shared.end(StreamEnd::Closed {
            code,
            message: why.to_owned(),
        });
        core.send_control(StreamFrame::Close {
            stream,
            code,
            message: why.to_owned(),
        });
    }
}

// === writer ===

async fn write_loop<S, Out>(
    mut sink: futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
    core: Arc<Core>,
    mut lanes: Lanes<Out>,
    exit: ExitSlot,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    Out: Frame,
{
    let mut ping = tokio::time::interval(core.config.heartbeat_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut buf = BytesMut::new();
    // A data frame taken while a control frame sent before it was still mid-send: it goes
    // out once the control lane is drained (see `next_queued`).
    let mut held: Option<StreamFrame> = None;
    loop {
        let first = if held.is_some() {
            tokio::select! {
                biased;
                _ = core.closed.cancelled() => break,
                frame = lanes.control.recv() => match frame {
                    Some(frame) => encode_control::<Out>(*frame, &mut buf),
                    None => encode::<Out>(held.take().expect("held"), &mut buf),
                },
            }
        } else {
            tokio::select! {
                biased;
                _ = core.closed.cancelled() => break,
                Some(frame) = lanes.owner.recv() => frame.to_bytes(),
                Some(frame) = lanes.control.recv() => encode_control::<Out>(*frame, &mut buf),
                Some(frame) = lanes.data.recv() => {
                    if !lanes.control.is_empty() {
                        held = Some(frame);
                        continue;
                    }
                    encode::<Out>(frame, &mut buf)
                }
                _ = ping.tick() => {
                    if let Err(err) = sink.send(Message::Ping(Default::default())).await {
                        finish(&core, &exit, TunnelExit::Io(err.to_string()));
                        return;
                    }
                    continue;
                }
            }
        };
        // Write what is already queued behind the first frame, then flush once.
        let mut result = sink.feed(Message::Binary(first)).await;
        let mut batched = 0;
        while result.is_ok() && batched < MAX_BATCH {
            let Some(next) = next_queued(&mut lanes, &mut held, &mut buf) else {
                break;
            };
            result = sink.feed(Message::Binary(next)).await;
            batched += 1;
        }
        if let Err(err) = result.and(sink.flush().await) {
            finish(&core, &exit, TunnelExit::Io(err.to_string()));
            return;
        }
    }
    let (code, reason) = match current_exit(&core, &exit) {
        TunnelExit::Protocol(err) => (WsCloseCode::Protocol, err.to_string()),
        TunnelExit::TooLarge => (WsCloseCode::Size, "message too large".to_owned()),
        TunnelExit::ShutDown => (WsCloseCode::Away, "shutting down".to_owned()),
        _ => (WsCloseCode::Normal, String::new()),
    };
    let close = Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }));
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        // Frames queued before the close still go out: a draining side's last answers.
        if !matches!(
            current_exit(&core, &exit),
            TunnelExit::Io(_) | TunnelExit::PeerSilent
        ) {
            while let Some(frame) = next_queued(&mut lanes, &mut held, &mut buf) {
                if sink.feed(Message::Binary(frame)).await.is_err() {
                    return;
                }
            }
            if let Some(frame) = held.take()
                && sink
                    .feed(Message::Binary(encode::<Out>(frame, &mut buf)))
                    .await
                    .is_err()
            {
                return;
            }
        }
        let _ = sink.send(close).await;
        let _ = sink.close().await;
    })
    .await;
}

/// The next frame already waiting in a lane, by priority: owner, control, a held data
/// frame, data.
///
/// A stream's `Open` (control lane) must reach the peer before its first data (data lane),
/// or the peer drops data for a stream it does not know and the request is lost. The
/// opener queues `Open` before its data, but this looks at the control lane before the
/// data lane: an `Open` and its data both queued between the two looks would go out in the
/// wrong order. So the control lane is checked again once a data frame is taken; it then
/// shows every frame queued before that data, and if any remain the data frame is held
/// until the control lane has drained. `is_empty` also counts a send begun and not yet
/// finished (one begun after `try_recv` found the lane empty): the write loop's `select!`
/// then waits for it.
fn next_queued<Out: Frame>(
    lanes: &mut Lanes<Out>,
    held: &mut Option<StreamFrame>,
    buf: &mut BytesMut,
) -> Option<bytes::Bytes> {
    if let Ok(frame) = lanes.owner.try_recv() {
        return Some(frame.to_bytes());
    }
    if let Ok(frame) = lanes.control.try_recv() {
        return Some(encode_control::<Out>(*frame, buf));
    }
    if !lanes.control.is_empty() {
        // A control frame is mid-send: the write loop waits for it.
        return None;
    }
    if let Some(frame) = held.take() {
        return Some(encode::<Out>(frame, buf));
    }
    let frame = lanes.data.try_recv().ok()?;
    if !lanes.control.is_empty() {
        *held = Some(frame);
        return None;
    }
    Some(encode::<Out>(frame, buf))
}

fn encode_control<Out: Frame>(frame: Control, buf: &mut BytesMut) -> bytes::Bytes {
    match frame {
        Control::Stream(frame) => encode::<Out>(frame, buf),
        Control::Encoded(bytes) => bytes,
    }
}

fn encode<Out: Frame>(frame: StreamFrame, buf: &mut BytesMut) -> bytes::Bytes {
    Out::from_stream(frame).encode(buf);
    buf.split().freeze()
}

// === ending ===

/// Records the first reason the tunnel ended and stops both loops.
fn finish(core: &Core, exit: &ExitSlot, reason: TunnelExit) {
    exit.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_or_insert(reason);
    core.closed.cancel();
}

/// The recorded reason, or, if the tunnel was stopped from this side, which way.
fn current_exit(core: &Core, exit: &ExitSlot) -> TunnelExit {
    let recorded = exit.lock().unwrap_or_else(PoisonError::into_inner).clone();
    recorded.unwrap_or(if core.shutdown.is_cancelled() {
        TunnelExit::ShutDown
    } else {
        TunnelExit::Closed
    })
}

fn fail_open_streams(core: &Core) {
    let streams: Vec<_> = core.lock_streams().drain().collect();
    for (_, shared) in streams {
        shared.end(StreamEnd::TunnelClosed);
    }
}

/// Frames written before one flush.
const MAX_BATCH: usize = 32;
/// How long the writer tries to say goodbye before dropping the socket.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);
