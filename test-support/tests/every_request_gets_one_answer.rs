//! Every request gets exactly one answer within a bounded time: the upstream's, or a
//! JSON-RPC error saying why (agent offline, unknown server, upstream failed to start or
//! exited, tunnel dropped, call timed out). Errors carry a correlation id.

use std::time::Duration;

use outpost_test_support::{HttpMcpServer, HttpStack, agent, relay};
use serde_json::json;

/// Answers `initialize`, then exits with status 3 on the first request after it.
const DIES_ON_CALL: &str = r#"read line
echo '{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{"tools":{}},"serverInfo":{"name":"dying","version":"1"}}}'
read line
read line
exit 3"#;

/// Answers `initialize`, then answers the next request with a 2 MiB line.
const WRITES_A_HUGE_LINE: &str = r#"read line
echo '{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{"tools":{}},"serverInfo":{"name":"huge","version":"1"}}}'
read line
read line
printf '{"jsonrpc":"2.0","id":2,"result":{"content":[{"type":"text","text":"'
head -c 2097152 /dev/zero | tr '\0' x
printf '"}]}}\n'
read line"#;

/// Answers `initialize`, answers the next request with a line that breaks off after its
/// start, then the one after properly.
const WRITES_A_BROKEN_ANSWER: &str = r#"read line
echo '{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{"tools":{}},"serverInfo":{"name":"broken","version":"1"}}}'
read line
read line
echo '{"jsonrpc":"2.0","id":2,"result":{"content":[{"type":"text","text":"cut'
read line
echo '{"jsonrpc":"2.0","id":3,"result":{"content":[{"type":"text","text":"whole"}]}}'
read line"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_agent_is_named_in_a_jsonrpc_error() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let key = relay.client_key().await?;
    let mut client = relay.mcp_client(&key, "ghost", "erp");
    let response = client.request("initialize", json!({})).await?;
    assert_eq!(response.status, 200);
    assert_eq!(response.error_code(), Some(-32010));
    let message = response.answer()?["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("agent 'ghost' is not connected"),
        "{message}"
    );
    let correlation = response.headers["x-correlation-id"].to_str()?;
    assert!(
        message.contains(correlation),
        "the message carries the correlation id of the response header"
    );
    assert_eq!(response.answer()?["id"], 1);
    relay.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_server_is_an_error_not_a_hang() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let agent = agent(&relay, "laptop")
        .stdio("cat", "/bin/cat", &[], &[])
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let response = relay
        .mcp_client(&key, "laptop", "nope")
        .request("initialize", json!({}))
        .await?;
    assert_eq!(response.error_code(), Some(-32011));
    agent.stop().await;
    relay.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_cannot_start_fails_the_request() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let agent = agent(&relay, "laptop")
        .stdio("broken", "/nonexistent/mcp-server", &[], &[])
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let response = relay
        .mcp_client(&key, "laptop", "broken")
        .request("initialize", json!({}))
        .await?;
    assert_eq!(
        response.error_code(),
        Some(-32012),
        "{:?}",
        response.messages
    );
    agent.stop().await;
    relay.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_keeps_exiting_fails_each_call_then_ends_the_session() -> anyhow::Result<()>
{
    let relay = relay().spawn().await?;
    let agent = agent(&relay, "laptop")
        .stdio("dying", "/bin/sh", &["-c", DIES_ON_CALL], &[])
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let mut client = relay.mcp_client(&key, "laptop", "dying");
    client.initialize().await?;
    // Each crash fails the call in flight; the agent restarts the server and replays the
    // handshake, so the session survives, until the server has failed too often.
    let mut failed = 0;
    let after = loop {
        let response = client.call_tool("anything", json!({})).await?;
        if response.status == 404 {
            break response;
        }
        assert_eq!(
            response.error_code(),
            Some(-32012),
            "{:?}",
            response.messages
        );
        failed += 1;
        assert!(
            failed <= 6,
            "the crashing server was restarted without limit"
        );
    };
    // The first call and five restarts; then the session is gone with its upstream and
    // clients learn it from a 404 and start over.
    assert_eq!(failed, 6);
    assert_eq!(after.status, 404);
    agent.stop().await;
    relay.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_dropped_mid_call_fails_the_call_at_once() -> anyhow::Result<()> {
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
            .call_tool("slow", json!({"millis": 60_000, "steps": 1}))
            .await
    });
    upstream.wait_for_slow_calls(1).await;
    agent.kill().await;
    let response = tokio::time::timeout(Duration::from_secs(10), call).await???;
    assert_eq!(
        response.error_code(),
        Some(-32013),
        "{:?}",
        response.messages
    );
    relay.stop().await;
    upstream.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_over_the_timeout_gets_a_timeout_error_and_the_session_lives_on()
-> anyhow::Result<()> {
    let stack = HttpStack::start(relay().call_timeout(Duration::from_millis(500))).await?;
    let mut client = stack.client().await?;
    let response = client
        .call_tool("slow", json!({"millis": 60_000, "steps": 1}))
        .await?;
    assert_eq!(
        response.error_code(),
        Some(-32014),
        "{:?}",
        response.messages
    );
    // The relay told the upstream to cancel: the minute-long call stops now.
    tokio::time::timeout(
        Duration::from_secs(10),
        stack.upstream.wait_for_no_slow_calls(),
    )
    .await?;
    let echo = client
        .call_tool("echo", json!({"message": "still here"}))
        .await?;
    assert_eq!(echo.result()?["content"][0]["text"], "Echo: still here");
    // initialize, the timed-out call, echo.
    let usage = stack.relay.wait_for_usage(3).await?;
    assert!(
        usage
            .iter()
            .any(|u| u.tool.as_deref() == Some("slow") && u.status.as_str() == "timeout")
    );
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_over_the_message_limit_becomes_an_error_for_that_call_only() -> anyhow::Result<()>
{
    let stack = HttpStack::start(relay().max_message(1024 * 1024)).await?;
    let mut client = stack.client().await?;
    let response = client
        .call_tool("big", json!({"bytes": 2 * 1024 * 1024}))
        .await?;
    assert_eq!(
        response.error_code(),
        Some(-32015),
        "{:?}",
        response.messages
    );
    let message = response.answer()?["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("exceeds"), "{message}");
    // Just under the limit passes, and the session lives on.
    let fits = client
        .call_tool("big", json!({"bytes": 1000 * 1024}))
        .await?;
    assert_eq!(
        fits.result()?["content"][0]["text"].as_str().unwrap().len(),
        1000 * 1024
    );
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_line_from_a_stdio_server_becomes_an_error_for_its_request()
-> anyhow::Result<()> {
    let relay = relay().max_message(1024 * 1024).spawn().await?;
    let agent = agent(&relay, "laptop")
        .stdio("huge", "/bin/sh", &["-c", WRITES_A_HUGE_LINE], &[])
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let mut client = relay.mcp_client(&key, "laptop", "huge");
    client.initialize().await?;
    let response = client.call_tool("anything", json!({})).await?;
    assert_eq!(
        response.error_code(),
        Some(-32015),
        "{:?}",
        response.messages
    );
    assert_eq!(response.answer()?["id"], 2);
    agent.stop().await;
    relay.stop().await;
    Ok(())
}

/// The relay cannot read an answer that is not JSON, so the agent answers its call with an
/// error at once instead of leaving it to the call timeout; the session lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_is_not_json_fails_its_call_at_once() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let agent = agent(&relay, "laptop")
        .stdio("broken", "/bin/sh", &["-c", WRITES_A_BROKEN_ANSWER], &[])
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let mut client = relay.mcp_client(&key, "laptop", "broken");
    client.initialize().await?;
    let response = tokio::time::timeout(
        Duration::from_secs(20),
        client.call_tool("anything", json!({})),
    )
    .await??;
    assert_eq!(
        response.error_code(),
        Some(-32012),
        "{:?}",
        response.messages
    );
    let error = &response.answer()?["error"];
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{error}"
    );
    let next = client.call_tool("anything", json!({})).await?;
    assert_eq!(next.result()?["content"][0]["text"], "whole");
    agent.stop().await;
    relay.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_request_id_is_refused_at_once_and_the_first_call_still_answers()
-> anyhow::Result<()> {
    let stack = HttpStack::start(relay()).await?;
    let client = stack.client().await?;
    let slow = json!({"jsonrpc": "2.0", "id": 77, "method": "tools/call",
        "params": {"name": "slow", "arguments": {"millis": 500, "steps": 1}}});
    let first = tokio::spawn({
        let client = client.clone();
        let slow = slow.clone();
        async move { client.post(slow).await }
    });
    stack.upstream.wait_for_slow_calls(1).await;
    let again = client.post(slow).await?;
    assert_eq!(again.error_code(), Some(-32600), "{:?}", again.messages);
    let first = first.await??;
    assert_eq!(first.result()?["content"][0]["text"], "slept 500 ms");
    // Twice in one batch: the second is refused, the first answered.
    let echo = |id: u64| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": "b"}}})
    };
    let batch = client.post(json!([echo(5), echo(5)])).await?;
    let codes: Vec<_> = batch
        .messages
        .iter()
        .map(|m| m["error"]["code"].as_i64())
        .collect();
    assert_eq!(batch.messages.len(), 2, "{:?}", batch.messages);
    assert!(
        codes.contains(&Some(-32600)) && codes.contains(&None),
        "{codes:?}"
    );
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_of_a_client_that_went_away_still_time_out_and_are_cancelled() -> anyhow::Result<()> {
    let stack = HttpStack::start(relay().call_timeout(Duration::from_millis(500))).await?;
    let mut client = stack.client().await?;
    let call = tokio::spawn(async move {
        client
            .call_tool("slow", json!({"millis": 60_000, "steps": 1}))
            .await
    });
    stack.upstream.wait_for_slow_calls(1).await;
    call.abort(); // the client disconnects mid-call
    tokio::time::timeout(
        Duration::from_secs(10),
        stack.upstream.wait_for_no_slow_calls(),
    )
    .await?;
    let usage = stack.relay.wait_for_usage(2).await?;
    assert!(
        usage
            .iter()
            .any(|u| u.tool.as_deref() == Some("slow") && u.status.as_str() == "timeout")
    );
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_on_one_session_to_an_http_server_run_concurrently() -> anyhow::Result<()> {
    let stack = HttpStack::start_with(relay(), |agent| {
        agent.shutdown_grace(Duration::from_millis(100))
    })
    .await?;
    let client = stack.client().await?;
    let mut calls = Vec::new();
    for id in 100..103 {
        let client = client.clone();
        let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "slow", "arguments": {"millis": 30_000, "steps": 1}}});
        calls.push(tokio::spawn(async move { client.post(call).await }));
    }
    // All three are running at the upstream at once, and a fourth call still answers.
    tokio::time::timeout(
        Duration::from_secs(10),
        stack.upstream.wait_for_slow_calls(3),
    )
    .await?;
    let mut other = client.clone();
    let echo = other
        .call_tool("echo", json!({"message": "meanwhile"}))
        .await?;
    assert_eq!(echo.result()?["content"][0]["text"], "Echo: meanwhile");
    for call in calls {
        call.abort();
    }
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_stops_upstream_and_is_no_longer_pending() -> anyhow::Result<()> {
    let stack = HttpStack::start(relay()).await?;
    let client = stack.client().await?;
    let slow = json!({"jsonrpc": "2.0", "id": 500, "method": "tools/call",
        "params": {"name": "slow", "arguments": {"millis": 60_000, "steps": 1}}});
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.post(slow).await }
    });
    stack.upstream.wait_for_slow_calls(1).await;
    let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
        "params": {"requestId": 500, "reason": "user pressed stop"}});
    assert_eq!(client.post(cancel).await?.status, 202);
    // The upstream stops the call, and the POST ends without an answer, as MCP says.
    tokio::time::timeout(
        Duration::from_secs(10),
        stack.upstream.wait_for_no_slow_calls(),
    )
    .await?;
    let response = tokio::time::timeout(Duration::from_secs(10), call).await???;
    assert!(response.answer().is_err(), "{:?}", response.messages);
    // The id is free again, and the usage says what happened.
    let echo = json!({"jsonrpc": "2.0", "id": 500, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": "again"}}});
    assert_eq!(
        client.post(echo).await?.result()?["content"][0]["text"],
        "Echo: again"
    );
    let usage = stack.relay.wait_for_usage(3).await?;
    assert!(
        usage
            .iter()
            .any(|u| u.tool.as_deref() == Some("slow") && u.status.as_str() == "cancelled")
    );
    stack.stop().await;
    Ok(())
}
