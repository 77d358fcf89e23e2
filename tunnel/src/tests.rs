//! The multiplexer over an in-memory duplex pipe: no sockets, paused time where timing
//! matters.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use outpost_protocol::{AgentFrame, CloseCode, Frame, RelayFrame, StreamFrame, StreamId};
use tokio::io::DuplexStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::*;

fn config() -> TunnelConfig {
    TunnelConfig {
        heartbeat_interval: Duration::from_secs(10),
        chunk_len: 16 * 1024,
        max_message_len: 4 * 1024 * 1024,
        initial_window: 64 * 1024,
        peer_chunk_len: 16 * 1024,
        max_streams: 8,
    }
}

async fn sockets() -> (WebSocketStream<DuplexStream>, WebSocketStream<DuplexStream>) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    (
        WebSocketStream::from_raw_socket(a, Role::Server, None).await,
        WebSocketStream::from_raw_socket(b, Role::Client, None).await,
    )
}

struct Pair {
    relay: Tunnel<RelayFrame>,
    agent: Tunnel<AgentFrame>,
    agent_events: TunnelEvents<RelayFrame>,
    relay_events: TunnelEvents<AgentFrame>,
    relay_driver: tokio::task::JoinHandle<TunnelExit>,
    agent_driver: tokio::task::JoinHandle<TunnelExit>,
}

async fn pair(config: TunnelConfig) -> Pair {
    let (relay_socket, agent_socket) = sockets().await;
    let (relay, relay_events, relay_driver) = Tunnel::<RelayFrame>::start::<_, AgentFrame>(
        relay_socket,
        config,
        CancellationToken::new(),
    );
    let (agent, agent_events, agent_driver) = Tunnel::<AgentFrame>::start::<_, RelayFrame>(
        agent_socket,
        config,
        CancellationToken::new(),
    );
    Pair {
        relay,
        agent,
        agent_events,
        relay_events,
        relay_driver: tokio::spawn(relay_driver),
        agent_driver: tokio::spawn(agent_driver),
    }
}

async fn accept(events: &mut TunnelEvents<RelayFrame>) -> (Stream, String) {
    match events.recv().await.expect("agent events end") {
        TunnelEvent::Open { stream, server, .. } => (stream, server),
        other => panic!("expected an open, got {other:?}"),
    }
}

#[tokio::test]
async fn messages_cross_in_both_directions() {
    let mut p = pair(config()).await;
    let mut relay_side = p.relay.open_stream("erp", vec![]).unwrap();
    relay_side
        .sender
        .send(Bytes::from_static(b"ping"))
        .await
        .unwrap();
    let (mut agent_side, server) = accept(&mut p.agent_events).await;
    assert_eq!(server, "erp");
    assert_eq!(agent_side.id, relay_side.id);
    assert_eq!(agent_side.receiver.recv().await.unwrap(), "ping");
    agent_side
        .sender
        .send(Bytes::from_static(b"pong"))
        .await
        .unwrap();
    assert_eq!(relay_side.receiver.recv().await.unwrap(), "pong");
}

#[tokio::test]
async fn large_messages_are_split_and_reassembled_intact() {
    let mut p = pair(config()).await;
    let relay_side = p.relay.open_stream("erp", vec![]).unwrap();
    let big: Bytes = (0..3 * 1024 * 1024)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let sent = big.clone();
    let send = tokio::spawn(async move { relay_side.sender.send(sent).await });
    let (mut agent_side, _) = accept(&mut p.agent_events).await;
    assert_eq!(agent_side.receiver.recv().await.unwrap(), big);
    send.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_stalled_stream_blocks_only_its_own_sender() {
    let mut p = pair(config()).await;
    let stalled = p.relay.open_stream("big", vec![]).unwrap();
    let (_stalled_agent_side, _) = accept(&mut p.agent_events).await;
    // Nobody reads the stalled stream: its sender must stop at the window.
    let big = Bytes::from(vec![b'x'; 1024 * 1024]);
    let stalled_sender = stalled.sender.clone();
    let mut blocked = tokio::spawn(async move { stalled_sender.send(big).await });
    // Meanwhile another stream carries messages both ways.
    let mut other = p.relay.open_stream("small", vec![]).unwrap();
    let (mut other_agent_side, _) = accept(&mut p.agent_events).await;
    for i in 0..50 {
        let message = Bytes::from(format!("m{i}"));
        other.sender.send(message.clone()).await.unwrap();
        assert_eq!(other_agent_side.receiver.recv().await.unwrap(), message);
        other_agent_side.sender.send(message.clone()).await.unwrap();
        assert_eq!(other.receiver.recv().await.unwrap(), message);
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(50), &mut blocked)
            .await
            .is_err(),
        "a sender with no credit must wait"
    );
    drop(stalled);
    drop(_stalled_agent_side);
}

#[tokio::test]
async fn oversized_messages_are_refused_before_sending() {
    let mut p = pair(config()).await;
    let relay_side = p.relay.open_stream("erp", vec![]).unwrap();
    let too_big = Bytes::from(vec![0; config().max_message_len + 1]);
    assert_eq!(
        relay_side.sender.send(too_big).await,
        Err(StreamError::TooLarge {
            len: config().max_message_len + 1,
            max: config().max_message_len
        })
    );
    // The stream still works.
    relay_side
        .sender
        .send(Bytes::from_static(b"ok"))
        .await
        .unwrap();
    let (mut agent_side, _) = accept(&mut p.agent_events).await;
    assert_eq!(agent_side.receiver.recv().await.unwrap(), "ok");
}

#[tokio::test]
async fn closing_a_stream_tells_the_peer_why() {
    let mut p = pair(config()).await;
    let mut relay_side = p.relay.open_stream("erp", vec![]).unwrap();
    let (agent_side, _) = accept(&mut p.agent_events).await;
    agent_side
        .sender
        .send(Bytes::from_static(b"last words"))
        .await
        .unwrap();
    agent_side
        .sender
        .close(CloseCode::UpstreamExited, "exit status 3")
        .await;
    // Data sent before the close still arrives, then the reason.
    assert_eq!(relay_side.receiver.recv().await.unwrap(), "last words");
    assert_eq!(
        relay_side.receiver.recv().await,
        Err(StreamError::Ended(StreamEnd::Closed {
            code: CloseCode::UpstreamExited,
            message: "exit status 3".into()
        }))
    );
    assert_eq!(p.relay.open_streams(), 0);
    assert!(matches!(
        relay_side.sender.send(Bytes::from_static(b"late")).await,
        Err(StreamError::Ended(_))
    ));
}

#[tokio::test]
async fn dropping_both_halves_closes_the_stream_on_both_sides() {
    let mut p = pair(config()).await;
    let relay_side = p.relay.open_stream("erp", vec![]).unwrap();
    let (mut agent_side, _) = accept(&mut p.agent_events).await;
    drop(relay_side);
    assert!(matches!(
        agent_side.receiver.recv().await,
        Err(StreamError::Ended(StreamEnd::Closed {
            code: CloseCode::Normal,
            ..
        }))
    ));
    assert_eq!(p.relay.open_streams(), 0);
    assert_eq!(p.agent.open_streams(), 0);
}

#[tokio::test]
async fn streams_beyond_the_agents_limit_are_closed_as_overloaded() {
    let relay_config = TunnelConfig {
        max_streams: 4,
        ..config()
    };
    let agent_config = TunnelConfig {
        max_streams: 2,
        ..config()
    };
    let (relay_socket, agent_socket) = sockets().await;
    let (relay, _relay_events, relay_driver) = Tunnel::<RelayFrame>::start::<_, AgentFrame>(
        relay_socket,
        relay_config,
        CancellationToken::new(),
    );
    let (_agent, mut agent_events, agent_driver) = Tunnel::<AgentFrame>::start::<_, RelayFrame>(
        agent_socket,
        agent_config,
        CancellationToken::new(),
    );
    tokio::spawn(relay_driver);
    tokio::spawn(agent_driver);
    let _a = relay.open_stream("s", vec![]).unwrap();
    let _b = relay.open_stream("s", vec![]).unwrap();
    let mut c = relay.open_stream("s", vec![]).unwrap();
    let _accepted = (
        accept(&mut agent_events).await,
        accept(&mut agent_events).await,
    );
    assert!(matches!(
        c.receiver.recv().await,
        Err(StreamError::Ended(StreamEnd::Closed {
            code: CloseCode::Overloaded,
            ..
        }))
    ));
    // The refused stream freed its slot on the relay: two more fit, not three.
    let _d = relay.open_stream("s", vec![]).unwrap();
    let _e = relay.open_stream("s", vec![]).unwrap();
    assert_eq!(
        relay.open_stream("s", vec![]).unwrap_err(),
        OpenError::TooManyStreams(4)
    );
}

#[tokio::test]
async fn closing_the_tunnel_fails_every_waiting_receiver() {
    let mut p = pair(config()).await;
    let mut relay_side = p.relay.open_stream("erp", vec![]).unwrap();
    let (mut agent_side, _) = accept(&mut p.agent_events).await;
    let waiting = tokio::spawn(async move { relay_side.receiver.recv().await });
    p.relay.close();
    assert_eq!(
        waiting.await.unwrap(),
        Err(StreamError::Ended(StreamEnd::TunnelClosed))
    );
    assert_eq!(
        agent_side.receiver.recv().await,
        Err(StreamError::Ended(StreamEnd::TunnelClosed))
    );
    assert_eq!(p.relay_driver.await.unwrap(), TunnelExit::Closed);
    assert!(matches!(
        p.agent_driver.await.unwrap(),
        TunnelExit::PeerClosed {
            code: Some(1000),
            ..
        }
    ));
    assert!(p.relay_events.recv().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_is_detected_within_two_intervals() {
    let (relay_socket, _silent_agent_socket) = sockets().await;
    let (_relay, _events, driver) = Tunnel::<RelayFrame>::start::<_, AgentFrame>(
        relay_socket,
        config(),
        CancellationToken::new(),
    );
    let started = tokio::time::Instant::now();
    assert_eq!(driver.await, TunnelExit::PeerSilent);
    let waited = started.elapsed();
    assert!(waited >= config().heartbeat_interval * 2);
    assert!(waited < config().heartbeat_interval * 2 + Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_live_peer_is_not_mistaken_for_a_silent_one() {
    let mut p = pair(config()).await;
    // Many heartbeat intervals of idleness: both sides keep pinging, nobody gives up.
    tokio::time::sleep(config().heartbeat_interval * 20).await;
    assert!(!p.relay.is_closed() && !p.agent.is_closed());
    let relay_side = p.relay.open_stream("erp", vec![]).unwrap();
    relay_side
        .sender
        .send(Bytes::from_static(b"still here"))
        .await
        .unwrap();
    let (mut agent_side, _) = accept(&mut p.agent_events).await;
    assert_eq!(agent_side.receiver.recv().await.unwrap(), "still here");
}

#[tokio::test]
async fn garbage_from_the_peer_closes_the_tunnel_with_a_protocol_error() {
    let (relay_socket, mut raw_agent) = sockets().await;
    let (_relay, _events, driver) = Tunnel::<RelayFrame>::start::<_, AgentFrame>(
        relay_socket,
        config(),
        CancellationToken::new(),
    );
    raw_agent
        .send(Message::Binary(Bytes::from_static(&[0, 0, 0, 1, 0x7f])))
        .await
        .unwrap();
    let exit = driver.await;
    assert!(matches!(exit, TunnelExit::Protocol(_)), "{exit:?}");
    // The peer is told with WebSocket close code 1002.
    loop {
        match raw_agent.next().await {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), 1002);
                break;
            }
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// An agent's tunnel whose relay side is a bare WebSocket driven by the test, with stream 1
/// opened from that side and accepted by the agent. The agent's events are returned too:
/// the tunnel ends if nobody can receive them.
async fn agent_with_raw_relay(
    config: TunnelConfig,
) -> (
    Tunnel<AgentFrame>,
    WebSocketStream<DuplexStream>,
    Stream,
    TunnelEvents<RelayFrame>,
) {
    let (mut raw_relay, agent_socket) = sockets().await;
    let (agent, mut events, driver) = Tunnel::<AgentFrame>::start::<_, RelayFrame>(
        agent_socket,
        config,
        CancellationToken::new(),
    );
    tokio::spawn(driver);
    let open = RelayFrame::Open(outpost_protocol::Open {
        stream: StreamId(1),
        server: "erp".into(),
        meta: vec![],
    });
    raw_relay
        .send(Message::Binary(open.to_bytes()))
        .await
        .unwrap();
    let (stream, _) = accept(&mut events).await;
    (agent, raw_relay, stream, events)
}

#[tokio::test]
async fn a_peer_sending_past_its_credit_loses_the_stream() {
    let (agent, mut raw_relay, mut stream, _events) = agent_with_raw_relay(config()).await;
    // Two windows' worth, without waiting for credit.
    let piece = Bytes::from(vec![b'a'; config().initial_window as usize]);
    for _ in 0..2 {
        let data = RelayFrame::Stream(StreamFrame::Data {
            stream: StreamId(1),
            fin: false,
            payload: piece.clone(),
        });
        raw_relay
            .send(Message::Binary(data.to_bytes()))
            .await
            .unwrap();
    }
    let mut saw_close = false;
    while let Some(Ok(message)) = raw_relay.next().await {
        if let Message::Binary(bytes) = message
            && let AgentFrame::Stream(StreamFrame::Close { code, .. }) =
                AgentFrame::decode_message(bytes).unwrap()
        {
            assert_eq!(code, CloseCode::ProtocolViolation);
            saw_close = true;
            break;
        }
    }
    assert!(saw_close);
    assert!(matches!(
        stream.receiver.recv().await,
        Err(StreamError::Ended(_))
    ));
    assert_eq!(agent.open_streams(), 0);
}

/// Sends `count` one-piece messages of `len` bytes on stream 1 from a raw relay, has the
/// agent read each, and returns the credit the agent sent back, frame by frame.
async fn credit_returned_for(config: TunnelConfig, count: usize, len: usize) -> Vec<u32> {
    let (_agent, mut raw_relay, mut stream, _events) = agent_with_raw_relay(config).await;
    for _ in 0..count {
        let data = RelayFrame::Stream(StreamFrame::Data {
            stream: StreamId(1),
            fin: true,
            payload: Bytes::from(vec![b'a'; len]),
        });
        raw_relay
            .send(Message::Binary(data.to_bytes()))
            .await
            .unwrap();
        assert_eq!(stream.receiver.recv().await.unwrap().len(), len);
    }
    // Everything the agent queued goes out before this close (same lane, in order).
    stream.sender.abort(CloseCode::Normal, "done");
    let mut credit = Vec::new();
    while let Some(Ok(message)) = raw_relay.next().await {
        let Message::Binary(bytes) = message else {
            continue;
        };
        match AgentFrame::decode_message(bytes).unwrap() {
            AgentFrame::Stream(StreamFrame::Credit { bytes, .. }) => credit.push(bytes),
            AgentFrame::Stream(StreamFrame::Close { .. }) => return credit,
            other => panic!("unexpected frame {other:?}"),
        }
    }
    panic!("the tunnel ended before the close");
}

#[tokio::test]
async fn small_messages_return_credit_in_batches() {
    // 40 messages of 1 KiB against a 64 KiB window: the peer always has room, so credit
    // goes back once per batch (the chunk length, 16 KiB), not once per message.
    let credit = credit_returned_for(config(), 40, 1024).await;
    assert_eq!(credit, vec![16 * 1024, 16 * 1024]);
}

#[tokio::test]
async fn credit_returns_with_each_message_when_the_peer_could_run_short() {
    // The peer's pieces may be as large as the whole window (an older agent sends so):
    // holding back any credit could leave it waiting forever, so each message's credit
    // goes back as soon as it is read.
    let small_window = TunnelConfig {
        initial_window: 16 * 1024,
        peer_chunk_len: 16 * 1024,
        ..config()
    };
    let credit = credit_returned_for(small_window, 5, 1000).await;
    assert_eq!(credit, vec![1000; 5]);
}

#[tokio::test]
async fn concurrent_senders_on_one_stream_never_interleave_messages() {
    let mut p = pair(config()).await;
    let relay_side = p.relay.open_stream("erp", vec![]).unwrap();
    let (mut agent_side, _) = accept(&mut p.agent_events).await;
    // Multi-piece messages from several clones of one sender, at once.
    let mut sends = Vec::new();
    for sender_index in 0..4u8 {
        let sender = relay_side.sender.clone();
        sends.push(tokio::spawn(async move {
            for round in 0..3u8 {
                let message = Bytes::from(vec![b'a' + sender_index * 3 + round; 100 * 1024]);
                sender.send(message).await.unwrap();
            }
        }));
    }
    let mut seen = Vec::new();
    for _ in 0..12 {
        let message = agent_side.receiver.recv().await.unwrap();
        assert_eq!(message.len(), 100 * 1024);
        assert!(
            message.iter().all(|&b| b == message[0]),
            "pieces of two messages mixed"
        );
        seen.push(message[0]);
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..12).map(|i| b'a' + i).collect::<Vec<_>>());
    for send in sends {
        send.await.unwrap();
    }
}

#[tokio::test]
async fn a_window_smaller_than_the_peers_chunk_still_flows() {
    // The relay sends with small pieces and a small window; the agent's own chunk length
    // is larger than that window. Credit must still come back before the message ends.
    let relay_config = TunnelConfig {
        chunk_len: 4 * 1024,
        initial_window: 8 * 1024,
        peer_chunk_len: 64 * 1024,
        ..config()
    };
    let agent_config = TunnelConfig {
        chunk_len: 64 * 1024,
        initial_window: 8 * 1024,
        peer_chunk_len: 4 * 1024,
        ..config()
    };
    let (relay_socket, agent_socket) = sockets().await;
    let (relay, _re, relay_driver) = Tunnel::<RelayFrame>::start::<_, AgentFrame>(
        relay_socket,
        relay_config,
        CancellationToken::new(),
    );
    let (_agent, mut agent_events, agent_driver) = Tunnel::<AgentFrame>::start::<_, RelayFrame>(
        agent_socket,
        agent_config,
        CancellationToken::new(),
    );
    tokio::spawn(relay_driver);
    tokio::spawn(agent_driver);
    let stream = relay.open_stream("s", vec![]).unwrap();
    let big = Bytes::from(vec![7u8; 40 * 1024]);
    let sent = big.clone();
    let sending = tokio::spawn(async move { stream.sender.send(sent).await });
    let (mut agent_side, _) = accept(&mut agent_events).await;
    let received = tokio::time::timeout(Duration::from_secs(5), agent_side.receiver.recv())
        .await
        .expect("no credit deadlock")
        .unwrap();
    assert_eq!(received, big);
    sending.await.unwrap().unwrap();
}

#[tokio::test]
async fn empty_messages_are_refused_and_empty_pieces_break_flow_control() {
    let mut p = pair(config()).await;
    let relay_side = p.relay.open_stream("erp", vec![]).unwrap();
    assert_eq!(
        relay_side.sender.send(Bytes::new()).await,
        Err(StreamError::Empty)
    );
    drop(relay_side);
    let _ = accept(&mut p.agent_events).await;

    let (mut raw_relay, agent_socket) = sockets().await;
    let (_agent, mut events, driver) = Tunnel::<AgentFrame>::start::<_, RelayFrame>(
        agent_socket,
        config(),
        CancellationToken::new(),
    );
    tokio::spawn(driver);
    let open = RelayFrame::Open(outpost_protocol::Open {
        stream: StreamId(1),
        server: "erp".into(),
        meta: vec![],
    });
    raw_relay
        .send(Message::Binary(open.to_bytes()))
        .await
        .unwrap();
    let (mut stream, _) = accept(&mut events).await;
    let empty = RelayFrame::Stream(StreamFrame::Data {
        stream: StreamId(1),
        fin: false,
        payload: Bytes::new(),
    });
    raw_relay
        .send(Message::Binary(empty.to_bytes()))
        .await
        .unwrap();
    assert!(matches!(
        stream.receiver.recv().await,
        Err(StreamError::Ended(StreamEnd::Closed {
            code: CloseCode::ProtocolViolation,
            ..
        }))
    ));
}

#[tokio::test]
async fn a_send_abandoned_mid_message_closes_the_stream() {
    let mut p = pair(TunnelConfig {
        initial_window: 16 * 1024,
        ..config()
    })
    .await;
    let relay_side = p.relay.open_stream("erp", vec![]).unwrap();
    let (mut agent_side, _) = accept(&mut p.agent_events).await;
    // Larger than the window and nobody reads yet: the send stops after the first pieces.
    let sending = relay_side.sender.send(Bytes::from(vec![1u8; 64 * 1024]));
    assert!(
        tokio::time::timeout(Duration::from_millis(50), sending)
            .await
            .is_err()
    );
    let next = agent_side.receiver.recv().await;
    assert!(
        matches!(
            next,
            Err(StreamError::Ended(StreamEnd::Closed {
                code: CloseCode::ProtocolViolation,
                ..
            }))
        ),
        "{next:?}"
    );
}

/// Many openers at once, each opening a stream, sending a request, reading the echo, then
/// aborting the stream and opening the next at once, as the relay does for stateless
/// requests. Every stream must reach the agent before its data (else the request is lost
/// and the echo never comes) and after the closes queued before it (else the agent counts
/// a closed stream beside its successor and refuses the successor as over its limit).
/// Both orderings broke under load before the control lane; the race needs several
/// threads, and thousands of rounds to show.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn opens_follow_earlier_closes_and_precede_their_data_under_load() {
    const OPENERS: usize = 8;
    const ROUNDS: usize = 1_500;
    let mut config = config();
    config.max_streams = OPENERS;
    let mut p = pair(config).await;
    // The agent: echoes each stream's one message until the relay closes it.
    let echo = tokio::spawn(async move {
        let mut echoes = tokio::task::JoinSet::new();
        while let Some(event) = p.agent_events.recv().await {
            if let TunnelEvent::Open { mut stream, .. } = event {
                echoes.spawn(async move {
                    while let Ok(message) = stream.receiver.recv().await {
                        if stream.sender.send(message).await.is_err() {
                            break;
                        }
                    }
                });
            }
        }
    });
    let mut openers = tokio::task::JoinSet::new();
    for opener in 0..OPENERS {
        let relay = p.relay.clone();
        openers.spawn(async move {
            for round in 0..ROUNDS {
                let mut stream = relay.open_stream("echo", vec![]).expect("open");
                let request = Bytes::from(format!("{opener}:{round}"));
                stream.sender.send(request.clone()).await.expect("send");
                let answer = tokio::time::timeout(Duration::from_secs(10), stream.receiver.recv())
                    .await
                    .unwrap_or_else(|_| {
                        panic!("stream {opener}:{round}: no echo: the request was lost")
                    });
                match answer {
                    Ok(answer) => assert_eq!(answer, request),
                    Err(err) => panic!("stream {opener}:{round} refused: {err}"),
                }
                stream.sender.abort(CloseCode::Normal, "answered");
            }
        });
    }
    while let Some(result) = openers.join_next().await {
        result.expect("an opener failed");
    }
    p.relay.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), echo).await;
}

/// A message written in parts arrives whole, and a message sent meanwhile from a clone of
/// the sender waits for it rather than landing between its parts.
#[tokio::test]
async fn a_message_written_in_parts_arrives_whole_and_alone() {
    let mut p = pair(config()).await;
    let relay_side = p.relay.open_stream("erp", vec![]).unwrap();
    let (mut agent_side, _) = accept(&mut p.agent_events).await;
    let parts: Vec<Bytes> = (0..40u8)
        .map(|i| Bytes::from(vec![b'a' + i % 26; 1000 + 997 * usize::from(i)]))
        .collect();
    let whole: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
    let mut writer = relay_side.sender.begin().await;
    let other = relay_side.sender.clone();
    let interloper = tokio::spawn(async move { other.send(Bytes::from_static(b"next")).await });
    // The window is smaller than the message: the other side reads as it comes.
    let received = tokio::spawn(async move {
        let first = agent_side.receiver.recv().await.unwrap();
        let second = agent_side.receiver.recv().await.unwrap();
        (first, second)
    });
    for part in parts {
        writer.write(part).await.unwrap();
        tokio::task::yield_now().await;
    }
    assert_eq!(writer.len(), whole.len());
    writer.write(Bytes::from_static(b"!")).await.unwrap();
    writer.finish().await.unwrap();
    let (first, second) = received.await.unwrap();
    assert_eq!(&first[..whole.len()], &whole[..]);
    assert_eq!(&first[whole.len()..], b"!");
    assert_eq!(second, "next");
    interloper.await.unwrap().unwrap();
}

/// A part that would take the message past the limit is refused and nothing of it sent;
/// the message is then abandoned: what was sent of it arrives followed by one NUL byte
/// (the held part is dropped), and the stream carries the next message as usual.
#[tokio::test]
async fn a_message_outgrowing_the_limit_is_abandoned_and_the_stream_lives_on() {
    let mut p = pair(config()).await;
    let relay_side = p.relay.open_stream("erp", vec![]).unwrap();
    let (mut agent_side, _) = accept(&mut p.agent_events).await;
    let max = config().max_message_len;
    let received = tokio::spawn(async move {
        let first = agent_side.receiver.recv().await.unwrap();
        let second = agent_side.receiver.recv().await.unwrap();
        (first, second)
    });
    let mut writer = relay_side.sender.begin().await;
    writer
        .write(Bytes::from(vec![b'x'; max - 10]))
        .await
        .unwrap();
    assert_eq!(
        writer.write(Bytes::from(vec![b'y'; 11])).await,
        Err(StreamError::TooLarge { len: max + 1, max })
    );
    writer.write(Bytes::from(vec![b'z'; 10])).await.unwrap();
    writer.abandon().await.unwrap();
    relay_side
        .sender
        .send(Bytes::from_static(b"ok"))
        .await
        .unwrap();
    let (spoiled, next) = received.await.unwrap();
    assert_eq!(spoiled.len(), max - 9);
    assert!(spoiled[..max - 10].iter().all(|&b| b == b'x'));
    assert_eq!(spoiled[max - 10], 0);
    assert_eq!(next, "ok");
}

/// Finishing or abandoning a writer that was given nothing sends nothing (an empty message
/// is never sent); dropping one that sent parts abandons its message with a NUL byte, and
/// the stream goes on.
#[tokio::test]
async fn an_empty_writer_sends_nothing_and_a_dropped_one_abandons_its_message() {
    let mut p = pair(config()).await;
    let relay_side = p.relay.open_stream("erp", vec![]).unwrap();
    let (mut agent_side, _) = accept(&mut p.agent_events).await;
    let writer = relay_side.sender.begin().await;
    assert!(writer.is_empty());
    assert_eq!(writer.finish().await, Err(StreamError::Empty));
    relay_side.sender.begin().await.abandon().await.unwrap();
    // Nothing of a message whose only part is still held has left: nothing is sent.
    let mut writer = relay_side.sender.begin().await;
    writer.write(Bytes::from_static(b"{\"held")).await.unwrap();
    writer.abandon().await.unwrap();
    relay_side
        .sender
        .send(Bytes::from_static(b"first"))
        .await
        .unwrap();
    assert_eq!(agent_side.receiver.recv().await.unwrap(), "first");
    let mut writer = relay_side.sender.begin().await;
    writer.write(Bytes::from_static(b"{\"a\":")).await.unwrap();
    writer.write(Bytes::from_static(b"1")).await.unwrap();
    drop(writer);
    assert_eq!(agent_side.receiver.recv().await.unwrap(), &b"{\"a\":\0"[..]);
    relay_side
        .sender
        .send(Bytes::from_static(b"next"))
        .await
        .unwrap();
    assert_eq!(agent_side.receiver.recv().await.unwrap(), "next");
}

/// A write cancelled while it waits for credit leaves the writer torn: it refuses more,
/// and dropped with no credit to spare it closes the stream.
#[tokio::test]
async fn a_writer_cancelled_part_way_refuses_more_and_closes_the_stream_without_credit() {
    let mut p = pair(TunnelConfig {
        initial_window: 16 * 1024,
        ..config()
    })
    .await;
    let relay_side = p.relay.open_stream("erp", vec![]).unwrap();
    let (mut agent_side, _) = accept(&mut p.agent_events).await;
    let mut writer = relay_side.sender.begin().await;
    writer
        .write(Bytes::from(vec![b'x'; 64 * 1024]))
        .await
        .unwrap();
    // Nobody reads: the held part waits for credit after the first pieces.
    let blocked = tokio::time::timeout(
        Duration::from_millis(50),
        writer.write(Bytes::from_static(b"y")),
    )
    .await;
    assert!(blocked.is_err(), "a write with no credit must wait");
    assert_eq!(
        writer.write(Bytes::from_static(b"z")).await,
        Err(StreamError::Torn)
    );
    drop(writer);
    let next = agent_side.receiver.recv().await;
    assert!(
        matches!(
            next,
            Err(StreamError::Ended(StreamEnd::Closed {
                code: CloseCode::ProtocolViolation,
                ..
            }))
        ),
        "{next:?}"
    );
}

/// The next message, which must arrive whole within `from` bytes.
async fn whole(receiver: &mut StreamReceiver, from: usize) -> Bytes {
    match receiver.recv_or_begin(from).await.unwrap() {
        Arrival::Whole(message) => message,
        Arrival::Begun(_) => panic!("a message under {from} bytes was begun"),
    }
}

/// The start of the next message, which must be longer than `from` bytes.
async fn begun(receiver: &mut StreamReceiver, from: usize) -> Bytes {
    match receiver.recv_or_begin(from).await.unwrap() {
        Arrival::Begun(head) => head,
        Arrival::Whole(message) => panic!("a long message arrived whole ({} bytes)", message.len()),
    }
}

/// A receiver reads its parts of a message: as one `Part` after another, collecting.
async fn parts_after(receiver: &mut StreamReceiver, head: Bytes) -> (Vec<u8>, Part, usize) {
    let mut message = head.to_vec();
    let mut count = 0;
    loop {
        match receiver.next_part().await.unwrap() {
            Part::More(part) => {
                message.extend_from_slice(&part);
                count += 1;
            }
            Part::Last(part) => {
                message.extend_from_slice(&part);
                return (message, Part::Last(Bytes::new()), count + 1);
            }
            Part::Abandoned => return (message, Part::Abandoned, count),
        }
    }
}

/// A message longer than the receiver's early mark begins as soon as that much is here
/// and goes on part by part; a short one arrives whole; and a begun message can still be
/// taken whole.
#[tokio::test]
async fn a_long_message_can_be_taken_as_it_arrives() {
    let mut p = pair(config()).await;
    let relay_side = p.relay.open_stream("erp", vec![]).unwrap();
    let big: Bytes = (0..3 * 1024 * 1024)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let sent = big.clone();
    let sender = relay_side.sender.clone();
    let send = tokio::spawn(async move {
        sender.send(sent.clone()).await.unwrap();
        sender.send(Bytes::from_static(b"short")).await.unwrap();
        sender.send(sent).await.unwrap();
    });
    let (mut agent_side, _) = accept(&mut p.agent_events).await;
    let receiver = &mut agent_side.receiver;
    let from = 64 * 1024;
    let head = begun(receiver, from).await;
    assert!(head.len() >= from && head.len() < big.len());
    let (message, end, parts) = parts_after(receiver, head).await;
    assert_eq!(end, Part::Last(Bytes::new()));
    assert!(parts > 1);
    assert_eq!(message, big);
    assert_eq!(whole(receiver, from).await, "short");
    let head = begun(receiver, from).await;
    assert_eq!(receiver.rest_of(head).await.unwrap(), big);
    send.await.unwrap();
}

/// A begun message its sender abandons ends as `Abandoned`, not as a last part, and the
/// stream carries the next message.
#[tokio::test]
async fn a_begun_message_that_is_abandoned_says_so() {
    let mut p = pair(config()).await;
    let relay_side = p.relay.open_stream("erp", vec![]).unwrap();
    let (mut agent_side, _) = accept(&mut p.agent_events).await;
    let writing = tokio::spawn(async move {
        let mut writer = relay_side.sender.begin().await;
        for _ in 0..8 {
            writer
                .write(Bytes::from(vec![b'x'; 16 * 1024]))
                .await
                .unwrap();
        }
        writer.abandon().await.unwrap();
        relay_side
            .sender
            .send(Bytes::from_static(b"next"))
            .await
            .unwrap();
    });
    let receiver = &mut agent_side.receiver;
    let head = begun(receiver, 32 * 1024).await;
    let (message, end, _) = parts_after(receiver, head).await;
    assert_eq!(end, Part::Abandoned);
    // The held last part is dropped, so a little less than was written arrived.
    assert!(message.len() < 8 * 16 * 1024 && message.iter().all(|&b| b == b'x'));
    assert_eq!(whole(receiver, 32 * 1024).await, "next");
    writing.await.unwrap();
}

/// The message limit holds across a begun message's parts: a peer going past it loses
/// the stream, and the receiver hears why.
#[tokio::test]
async fn a_begun_message_past_the_limit_ends_the_stream() {
    let config = TunnelConfig {
        max_message_len: 96 * 1024,
        // Room for all four pieces, so that the raw peer need not wait for credit.
        initial_window: 256 * 1024,
        ..config()
    };
    let (_agent, mut raw_relay, mut stream, _events) = agent_with_raw_relay(config).await;
    let piece = Bytes::from(vec![b'a'; 32 * 1024]);
    let sending = tokio::spawn(async move {
        for _ in 0..4 {
            let data = RelayFrame::Stream(StreamFrame::Data {
                stream: StreamId(1),
                fin: false,
                payload: piece.clone(),
            });
            if raw_relay
                .send(Message::Binary(data.to_bytes()))
                .await
                .is_err()
            {
                break;
            }
        }
        raw_relay
    });
    let head = begun(&mut stream.receiver, 64 * 1024).await;
    assert_eq!(head.len(), 64 * 1024);
    assert_eq!(
        stream.receiver.next_part().await.unwrap(),
        Part::More(Bytes::from(vec![b'a'; 32 * 1024]))
    );
    assert_eq!(
        stream.receiver.next_part().await,
        Err(StreamError::TooLarge {
            len: 128 * 1024,
            max: 96 * 1024
        })
    );
    let _raw_relay = sending.await.unwrap();
}
