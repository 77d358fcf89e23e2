use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

fn stream_frame() -> impl Strategy<Value = StreamFrame> {
    let id = any::<u32>().prop_map(StreamId);
    prop_oneof![
        (
            id.clone(),
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..2048)
        )
            .prop_map(|(stream, fin, payload)| StreamFrame::Data {
                stream,
                fin,
                payload: Bytes::from(payload),
            }),
        (id.clone(), any::<u32>())
            .prop_map(|(stream, bytes)| StreamFrame::Credit { stream, bytes }),
        (id, close_code(), ".{0,40}").prop_map(|(stream, code, message)| StreamFrame::Close {
            stream,
            code,
            message,
        }),
    ]
}

fn close_code() -> impl Strategy<Value = CloseCode> {
    (0u16..=7)
        .prop_map(CloseCode::from_u16)
        .boxed()
        .prop_union((8u16..).prop_map(CloseCode::Other).boxed())
}

fn agent_frame() -> impl Strategy<Value = AgentFrame> {
    let server = ("[a-z0-9_-]{1,64}", "[0-9a-f]{0,64}").prop_map(|(name, policy_digest)| {
        ServerAnnouncement {
            name,
            policy_digest,
        }
    });
    prop_oneof![
        proptest::collection::vec(server.clone(), 0..8).prop_map(AgentFrame::Servers),
        (
            any::<u16>(),
            ".{0,20}",
            proptest::collection::vec(server, 0..8)
        )
            .prop_map(
                |(version, agent_version, servers)| AgentFrame::Hello(Hello {
                    version: ProtocolVersion(version),
                    agent_version,
                    servers,
                })
            ),
        Just(AgentFrame::Draining),
        stream_frame().prop_map(AgentFrame::Stream),
    ]
}

fn relay_frame() -> impl Strategy<Value = RelayFrame> {
    let welcome =
        (".{0,20}", "[a-z0-9_-]{1,64}", any::<[u32; 5]>()).prop_map(|(agent_id, agent_name, n)| {
            RelayFrame::Welcome(Welcome {
                agent_id: AgentId(agent_id),
                agent_name,
                heartbeat_interval_ms: n[0],
                limits: Limits {
                    max_frame_len: n[1],
                    max_message_len: n[2],
                    initial_window: n[3],
                    max_streams: n[4],
                },
            })
        });
    let reject = (1u16..=3, ".{0,40}").prop_map(|(code, message)| {
        RelayFrame::Reject(Reject {
            code: RejectCode::from_u16(code),
            message,
        })
    });
    let open = (
        any::<u32>(),
        "[a-z0-9_-]{1,64}",
        proptest::collection::vec(("[a-z-]{1,20}", ".{0,20}"), 0..4),
    )
        .prop_map(|(stream, server, meta)| {
            RelayFrame::Open(Open {
                stream: StreamId(stream),
                server,
                meta,
            })
        });
    prop_oneof![
        welcome,
        reject,
        open,
        stream_frame().prop_map(RelayFrame::Stream)
    ]
}

/// Decoding every prefix of an encoded frame needs more bytes and leaves the buffer alone.
fn assert_incomplete_prefixes<F: Frame + std::fmt::Debug>(encoded: &[u8]) {
    for cut in 0..encoded.len() {
        let mut buf = BytesMut::from(&encoded[..cut]);
        assert!(
            matches!(F::decode(&mut buf), Ok(None)),
            "prefix of {cut} bytes"
        );
        assert_eq!(buf.len(), cut);
    }
}

proptest! {
    #[test]
    fn agent_frames_round_trip(frame in agent_frame()) {
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        let encoded = buf.clone().freeze();
        prop_assert_eq!(AgentFrame::decode(&mut buf).unwrap(), Some(frame.clone()));
        prop_assert!(buf.is_empty());
        prop_assert_eq!(AgentFrame::decode_message(encoded.clone()).unwrap(), frame);
    }

    #[test]
    fn relay_frames_round_trip(frame in relay_frame()) {
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        prop_assert_eq!(RelayFrame::decode(&mut buf).unwrap(), Some(frame));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn back_to_back_frames_decode_in_order(frames in proptest::collection::vec(relay_frame(), 1..6)) {
        let mut buf = BytesMut::new();
        for frame in &frames {
            frame.encode(&mut buf);
        }
        let mut decoded = Vec::new();
        while let Some(frame) = RelayFrame::decode(&mut buf).unwrap() {
            decoded.push(frame);
        }
        prop_assert_eq!(decoded, frames);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = AgentFrame::decode(&mut BytesMut::from(&bytes[..]));
        let _ = RelayFrame::decode(&mut BytesMut::from(&bytes[..]));
    }
}

#[test]
fn partial_frames_need_more_bytes() {
    let hello = AgentFrame::Hello(Hello {
        version: crate::PROTOCOL_VERSION,
        agent_version: "1.2.3".into(),
        servers: vec![ServerAnnouncement {
            name: "erp".into(),
            policy_digest: "ab".into(),
        }],
    });
    assert_incomplete_prefixes::<AgentFrame>(&hello.to_bytes());
    let data = RelayFrame::Stream(StreamFrame::Data {
        stream: StreamId(7),
        fin: true,
        payload: Bytes::from_static(b"{\"jsonrpc\":\"2.0\"}"),
    });
    assert_incomplete_prefixes::<RelayFrame>(&data.to_bytes());
}

#[test]
fn oversized_length_prefix_is_refused_before_buffering() {
    let mut buf = BytesMut::new();
    buf.put_u32(u32::try_from(MAX_FRAME_LEN).unwrap());
    buf.put_u8(TYPE_DATA);
    assert_eq!(
        RelayFrame::decode(&mut buf),
        Err(DecodeError::TooLarge {
            len: MAX_FRAME_LEN + 4,
            max: MAX_FRAME_LEN
        })
    );
}

#[test]
fn unknown_type_is_named() {
    let mut buf = BytesMut::from(&[0, 0, 0, 1, 0x7f][..]);
    assert_eq!(
        AgentFrame::decode(&mut buf),
        Err(DecodeError::UnknownType(0x7f))
    );
}

#[test]
fn frames_of_the_other_direction_are_refused() {
    let welcome = RelayFrame::Welcome(Welcome {
        agent_id: AgentId("a".into()),
        agent_name: "prod".into(),
        heartbeat_interval_ms: 1,
        limits: Limits {
            max_frame_len: 1,
            max_message_len: 1,
            initial_window: 1,
            max_streams: 1,
        },
    });
    assert_eq!(
        AgentFrame::decode_message(welcome.to_bytes()),
        Err(DecodeError::WrongDirection(TYPE_WELCOME))
    );
    assert_eq!(
        RelayFrame::decode_message(AgentFrame::Draining.to_bytes()),
        Err(DecodeError::WrongDirection(TYPE_DRAINING))
    );
    assert_eq!(
        RelayFrame::decode_message(AgentFrame::Servers(vec![]).to_bytes()),
        Err(DecodeError::WrongDirection(TYPE_SERVERS))
    );
}

#[test]
fn trailing_bytes_and_truncated_fields_are_refused() {
    // A credit frame with one byte too many.
    let mut buf = BytesMut::from(&[0, 0, 0, 10, TYPE_CREDIT, 0, 0, 0, 1, 0, 0, 0, 2, 9][..]);
    assert_eq!(
        RelayFrame::decode(&mut buf),
        Err(DecodeError::TrailingBytes(1))
    );
    // A close frame whose message length runs past the frame.
    let mut buf = BytesMut::from(&[0, 0, 0, 9, TYPE_CLOSE, 0, 0, 0, 1, 0, 0, 0, 5][..]);
    assert_eq!(
        RelayFrame::decode(&mut buf),
        Err(DecodeError::Truncated("message"))
    );
    // An empty frame has no type.
    let mut buf = BytesMut::from(&[0, 0, 0, 0][..]);
    assert_eq!(
        RelayFrame::decode(&mut buf),
        Err(DecodeError::Truncated("type"))
    );
}

#[test]
fn unknown_data_flags_are_refused() {
    let mut buf = BytesMut::from(&[0, 0, 0, 6, TYPE_DATA, 0, 0, 0, 1, 0b10][..]);
    assert_eq!(
        AgentFrame::decode(&mut buf),
        Err(DecodeError::InvalidValue {
            field: "flags",
            value: 2
        })
    );
}

#[test]
fn invalid_utf8_is_refused() {
    let mut buf = BytesMut::from(&[0, 0, 0, 9, TYPE_CLOSE, 0, 0, 0, 1, 0, 0, 0, 1, 0xff][..]);
    buf[3] = 10;
    assert_eq!(
        RelayFrame::decode(&mut buf),
        Err(DecodeError::InvalidUtf8("message"))
    );
}

#[test]
fn a_message_with_two_frames_is_refused() {
    let mut two = BytesMut::new();
    AgentFrame::Draining.encode(&mut two);
    AgentFrame::Draining.encode(&mut two);
    let two = two.freeze();
    assert_eq!(
        AgentFrame::decode_message(two.clone()),
        Err(DecodeError::NotOneFrame)
    );
    assert_eq!(
        AgentFrame::decode_message(two.slice(..3)),
        Err(DecodeError::NotOneFrame)
    );
    let data = AgentFrame::Stream(StreamFrame::Data {
        stream: StreamId(1),
        fin: true,
        payload: Bytes::from_static(b"{}"),
    })
    .to_bytes();
    assert_eq!(
        AgentFrame::decode_message(data.slice(..data.len() - 1)),
        Err(DecodeError::NotOneFrame)
    );
}

#[test]
fn a_data_frame_from_a_message_shares_its_bytes() {
    let message = RelayFrame::Stream(StreamFrame::Data {
        stream: StreamId(7),
        fin: false,
        payload: Bytes::from(vec![b'x'; 64 * 1024]),
    })
    .to_bytes();
    let Ok(RelayFrame::Stream(StreamFrame::Data { payload, .. })) =
        RelayFrame::decode_message(message.clone())
    else {
        panic!("a data frame");
    };
    assert_eq!(payload.len(), 64 * 1024);
    let within = message.as_ptr_range();
    assert!(within.contains(&payload.as_ptr()), "the payload was copied");
}

#[test]
fn long_strings_are_cut_at_a_char_boundary() {
    let message = "é".repeat(40_000);
    let frame = RelayFrame::Stream(StreamFrame::Close {
        stream: StreamId(1),
        code: CloseCode::Normal,
        message,
    });
    let RelayFrame::Stream(StreamFrame::Close { message, .. }) =
        RelayFrame::decode_message(frame.to_bytes()).unwrap()
    else {
        panic!("not a close frame")
    };
    assert!(message.len() <= usize::from(u16::MAX));
    assert!(message.chars().all(|c| c == 'é'));
}
