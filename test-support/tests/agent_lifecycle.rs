//! The life of agents and relays around the tunnel: each drains on shutdown (in-flight
//! calls finish, new work is refused), the agent reconnects when the relay restarts, a
//! newer tunnel replaces an older one, and a large result does not hold up small calls.

use std::time::Duration;

use outpost_test_support::{HttpMcpServer, agent, relay};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_calls_and_refuses_new_sessions() -> anyhow::Result<()> {
    let upstream = HttpMcpServer::spawn("f").await?;
    let relay = relay().spawn().await?;
    let mut agent = agent(&relay, "laptop")
        .http("rmcp", &upstream.url)
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let mut client = relay.mcp_client(&key, "laptop", "rmcp");
    client.initialize().await?;
    let call = tokio::spawn(async move {
        let params = json!({"name": "slow", "arguments": {"millis": 1500, "steps": 3}, "_meta": {"progressToken": "p1"}});
        client.request("tools/call", params).await
    });
    upstream.wait_for_slow_calls(1).await;

    agent.begin_stop();
    // The relay hears that the agent drains and sends new sessions nowhere.
    let mut late = relay.mcp_client(&key, "laptop", "rmcp");
    let refused = loop {
        let response = late.request("initialize", json!({})).await?;
        if response.error_code() != Some(-32012) && response.error_code().is_some() {
            break response;
        }
    };
    assert!(
        matches!(refused.error_code(), Some(-32016) | Some(-32010)),
        "busy while draining, offline once gone: {:?}",
        refused.messages
    );
    let response = tokio::time::timeout(Duration::from_secs(20), call).await???;
    assert_eq!(
        response.result()?["content"][0]["text"],
        "slept 1500 ms",
        "the in-flight call finished"
    );
    assert_eq!(response.notifications("notifications/progress").len(), 3);
    agent.wait_disconnected().await?;
    agent.stop().await;
    relay.stop().await;
    upstream.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reconnects_after_a_relay_restart() -> anyhow::Result<()> {
    let relay_before = relay().spawn().await?;
    let mut agent = agent(&relay_before, "laptop")
        .server_everything("everything")
        .spawn()
        .await?;
    let key = relay_before.client_key().await?;
    let mut client = relay_before.mcp_client(&key, "laptop", "everything");
    client.initialize().await?;

    let addr = relay_before.addr;
    let restart = relay().restart_of(&relay_before);
    relay_before.stop().await;
    agent.wait_disconnected().await?;
    let relay = restart.spawn().await?;
    assert_eq!(relay.addr, addr);
    agent.wait_connected().await?;

    // Sessions do not survive the restart; a new one works at once.
    assert_eq!(
        client
            .call_tool("echo", json!({"message": "old"}))
            .await?
            .status,
        404
    );
    let mut client = relay.mcp_client(&key, "laptop", "everything");
    client.initialize().await?;
    let echo = client.call_tool("echo", json!({"message": "back"})).await?;
    assert_eq!(echo.result()?["content"][0]["text"], "Echo: back");
    agent.stop().await;
    relay.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_tunnel_replaces_the_older_one() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    // The first agent is slow to come back, as a terminated pod would be: otherwise the two
    // would take turns (one tunnel per agent name; several per agent is future work).
    let mut first = agent(&relay, "laptop")
        .server_everything("everything")
        .reconnect(Duration::from_secs(60), Duration::from_secs(60))
        .spawn()
        .await?;
    // A second agent process with the same name (a redeploy) takes over.
    let second = agent(&relay, "laptop")
        .server_everything("everything")
        .spawn()
        .await?;
    first.wait_disconnected().await?;
    let key = relay.client_key().await?;
    let mut client = relay.mcp_client(&key, "laptop", "everything");
    client.initialize().await?;
    let echo = client
        .call_tool("echo", json!({"message": "newest wins"}))
        .await?;
    assert_eq!(echo.result()?["content"][0]["text"], "Echo: newest wins");
    first.kill().await;
    second.stop().await;
    relay.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_mebibyte_result_arrives_intact_while_small_calls_keep_answering()
-> anyhow::Result<()> {
    let upstream = HttpMcpServer::spawn("f").await?;
    let relay = relay().spawn().await?;
    let agent = agent(&relay, "laptop")
        .http("rmcp", &upstream.url)
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let mut big = relay.mcp_client(&key, "laptop", "rmcp");
    big.initialize().await?;
    let mut small = relay.mcp_client(&key, "laptop", "rmcp");
    small.initialize().await?;
    const SIZE: usize = 10 * 1024 * 1024;
    let big_call = tokio::spawn(async move { big.call_tool("big", json!({"bytes": SIZE})).await });
    for i in 0..20 {
        let echo = small
            .call_tool("echo", json!({"message": format!("m{i}")}))
            .await?;
        assert_eq!(echo.result()?["content"][0]["text"], format!("Echo: m{i}"));
    }
    let response = big_call.await??;
    let text = response.result()?["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(text.len(), SIZE);
    assert!(text.bytes().all(|b| b == b'x'));
    agent.stop().await;
    relay.stop().await;
    upstream.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_shutdown_finishes_in_flight_calls_and_stops_accepting() -> anyhow::Result<()> {
    let upstream = HttpMcpServer::spawn("f").await?;
    let relay = relay().spawn().await?;
    let agent = agent(&relay, "laptop")
        .http("rmcp", &upstream.url)
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let mut client = relay.mcp_client(&key, "laptop", "rmcp");
    client.initialize().await?;
    let call = tokio::spawn(async move {
        client
            .call_tool("slow", json!({"millis": 1500, "steps": 1}))
            .await
    });
    upstream.wait_for_slow_calls(1).await;
    let addr = relay.addr;
    let stopping = tokio::spawn(relay.stop());
    let response = tokio::time::timeout(Duration::from_secs(20), call).await???;
    assert_eq!(response.result()?["content"][0]["text"], "slept 1500 ms");
    tokio::time::timeout(Duration::from_secs(20), stopping).await??;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "nothing listens any more"
    );
    agent.stop().await;
    upstream.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_an_agent_key_closes_its_live_tunnel() -> anyhow::Result<()> {
    let relay = relay()
        .heartbeat(Duration::from_millis(300))
        .spawn()
        .await?;
    let mut agent = agent(&relay, "laptop")
        .server_everything("everything")
        .spawn()
        .await?;
    relay.revoke(&agent.key).await?;
    // Within a heartbeat interval the relay notices and closes the tunnel; the agent's
    // reconnects are refused from then on, so clients find the agent offline.
    agent.wait_disconnected().await?;
    let key = relay.client_key().await?;
    let response = relay
        .mcp_client(&key, "laptop", "everything")
        .request("initialize", json!({}))
        .await?;
    assert_eq!(
        response.error_code(),
        Some(-32010),
        "{:?}",
        response.messages
    );
    agent.stop().await;
    relay.stop().await;
    Ok(())
}
