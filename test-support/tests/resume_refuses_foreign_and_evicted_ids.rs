//! `Last-Event-ID` resumes only the stream it names, in its own session, for the key that
//! owns that session. Within the session's replay buffer, `GET` with an id replays exactly
//! what came after it on that stream. An id of another session gets 404, as does one
//! sent with another key (the session is not found for it); an id the relay never issued
//! gets 400; an id whose later events were evicted from the buffer (here held to three
//! events) gets 404 saying it is too old. Each outcome is counted in the metrics.

use outpost_test_support::{McpResponse, agent, relay};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumption_stays_in_its_session_and_its_buffer() -> anyhow::Result<()> {
    let relay = relay().replay_limits(3, 1024 * 1024).spawn().await?;
    let agent = agent(&relay, "laptop")
        .server_everything("everything")
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let mut owner = relay.mcp_client(&key, "laptop", "everything");
    owner.initialize().await?;

    let call = owner
        .request(
            "tools/call",
            json!({
                "name": "trigger-long-running-operation",
                "arguments": {"duration": 1, "steps": 4},
                "_meta": {"progressToken": "resume-test"},
            }),
        )
        .await?;
    assert_eq!(call.notifications("notifications/progress").len(), 4);
    let ids = &call.event_ids;
    assert_eq!(ids.len(), call.messages.len(), "every event has an id");
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "ids are unique: {ids:?}");

    // After the second-to-last event: the answer again, with its id, and nothing else.
    let last = ids.len() - 1;
    let resumed = owner.resume(&ids[last - 1]).await?;
    assert_eq!(resumed.status, 200);
    assert_eq!(resumed.event_ids, vec![ids[last].clone()]);
    assert_eq!(resumed.answer()?, call.answer()?);

    // The buffer holds three events: those after the first were evicted.
    let evicted = owner.resume(&ids[0]).await?;
    assert_refused(&evicted, 404, "too old");

    // Another session of the same key cannot read this one's stream.
    let mut other_session = relay.mcp_client(&key, "laptop", "everything");
    other_session.initialize().await?;
    assert_refused(&other_session.resume(&ids[last - 1]).await?, 404, "unknown");

    // Another key cannot reach the session at all.
    let other_key = relay.client_key().await?;
    let mut intruder = relay.mcp_client(&other_key, "laptop", "everything");
    intruder.session = owner.session.clone();
    assert_refused(
        &intruder.resume(&ids[last - 1]).await?,
        404,
        "session not found",
    );

    // An id the relay never issued.
    assert_refused(
        &owner.resume("not-an-event-id").await?,
        400,
        "Last-Event-ID",
    );

    // Operators see why resumptions fail (the intruder's never reached a session).
    let metrics = relay.metrics().await?;
    for (result, count) in [
        ("resumed", 1),
        ("evicted", 1),
        ("unknown", 1),
        ("invalid", 1),
    ] {
        let line = format!("outpost_relay_stream_resumptions_total{{result=\"{result}\"}} {count}");
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }

    agent.stop().await;
    relay.stop().await;
    Ok(())
}

fn assert_refused(response: &McpResponse, status: u16, says: &str) {
    assert_eq!(response.status, status, "{:?}", response.messages);
    assert!(response.event_ids.is_empty(), "no event of any stream");
    let message = response.messages[0]["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains(says), "{message:?} should say {says:?}");
}
