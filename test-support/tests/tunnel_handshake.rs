//! The relay's side of the tunnel handshake: the upgrade needs an agent key; the first
//! frame must be a hello of a protocol version the relay speaks, with valid, unique server
//! names; anything else is rejected with a reason the agent can log.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use outpost_protocol::{
    AgentFrame, Frame, Hello, ProtocolVersion, RejectCode, RelayFrame, ServerAnnouncement,
};
use outpost_test_support::relay;
use tokio_tungstenite::tungstenite::{Error, Message};

fn hello(version: u16, servers: &[&str]) -> Message {
    Message::Binary(
        AgentFrame::Hello(Hello {
            version: ProtocolVersion(version),
            agent_version: "test".into(),
            servers: servers
                .iter()
                .map(|name| ServerAnnouncement {
                    name: (*name).into(),
                    policy_digest: String::new(),
                })
                .collect(),
        })
        .to_bytes(),
    )
}

async fn first_frame<S>(socket: &mut tokio_tungstenite::WebSocketStream<S>) -> RelayFrame
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match socket.next().await.expect("an answer").expect("a message") {
            Message::Binary(bytes) => {
                return RelayFrame::decode_message(bytes).expect("a valid frame");
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a frame, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_needs_an_agent_key() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let client_key = relay.client_key().await?;
    for key in [None, Some(client_key.as_str()), Some("ak_live_0000")] {
        match relay.raw_tunnel(key).await? {
            Err(Error::Http(response)) => assert_eq!(response.status().as_u16(), 401, "{key:?}"),
            other => panic!("{key:?}: expected 401, got {:?}", other.map(|_| ())),
        }
    }
    // A plain GET is told to upgrade.
    let response = relay
        .http_client()
        .get(format!("{}/tunnel/v1", relay.base_url()))
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 426);
    relay.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_hellos_are_rejected_with_a_reason() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let key = relay.agent_key("laptop").await?;
    let cases = [
        (
            hello(99, &["erp"]),
            RejectCode::UnsupportedVersion,
            "version 99",
        ),
        (
            hello(1, &["Bad Name"]),
            RejectCode::InvalidHello,
            "Bad Name",
        ),
        (hello(1, &["erp", "erp"]), RejectCode::InvalidHello, "twice"),
        (
            Message::Binary(Bytes::from_static(b"\0\0\0\x01\x7f")),
            RejectCode::InvalidHello,
            "unknown frame type",
        ),
        (
            Message::Text("hello".into()),
            RejectCode::InvalidHello,
            "binary",
        ),
        (
            Message::Binary(AgentFrame::Draining.to_bytes()),
            RejectCode::InvalidHello,
            "must be a hello",
        ),
    ];
    for (message, code, reason) in cases {
        let mut socket = relay.raw_tunnel(Some(&key)).await??;
        socket.send(message).await?;
        match first_frame(&mut socket).await {
            RelayFrame::Reject(reject) => {
                assert_eq!(reject.code, code);
                assert!(
                    reject.message.contains(reason),
                    "{:?} lacks {reason:?}",
                    reject.message
                );
            }
            other => panic!("expected a reject, got {other:?}"),
        }
    }
    relay.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_hello_is_welcomed_with_the_agents_name_and_limits() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let key = relay.agent_key("prod-eu").await?;
    let mut socket = relay.raw_tunnel(Some(&key)).await??;
    socket.send(hello(1, &["erp", "db"])).await?;
    match first_frame(&mut socket).await {
        RelayFrame::Welcome(welcome) => {
            assert_eq!(welcome.agent_name, "prod-eu");
            assert!(welcome.limits.max_message_len >= 10 * 1024 * 1024);
            assert!(welcome.limits.initial_window > 0 && welcome.limits.max_streams > 0);
            assert!(welcome.heartbeat_interval_ms > 0);
        }
        other => panic!("expected a welcome, got {other:?}"),
    }
    relay.stop().await;
    Ok(())
}
