//! What a key may reach and how fast, on `/mcp`: scopes give 403 insufficient_scope
//! (not 401) and hide tools from lists; token buckets and in-flight caps give 429 with
//! Retry-After and a JSON-RPC error per request, on the aggregated `/mcp` too; a flood of bad keys from one address is
//! slowed without locking out a valid key from the same address; oversized headers and
//! deep JSON are refused before anything is routed.

use std::time::Duration;

use tokio::time::Instant;

use outpost_relay::config::RateLimits;
use outpost_relay::store::Scopes;
use outpost_test_support::{HttpMcpServer, McpClient, agent, relay};
use serde_json::{Value, json};

fn scopes(servers: &[&str], tools: &[&str]) -> Scopes {
    Scopes {
        servers: servers.iter().map(|s| (*s).to_owned()).collect(),
        tools: tools.iter().map(|s| (*s).to_owned()).collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_limit_servers_and_tools() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let org = relay.org_id().to_owned();
    let site = agent(&relay, "site")
        .server_everything("everything")
        .server_everything("other")
        .spawn()
        .await?;
    let key = relay
        .key_with(
            &org,
            "member",
            scopes(&["site/everything"], &["echo", "get-sum"]),
        )
        .await?;

    // A server out of scope: 403 insufficient_scope, with the RFC 6750 challenge.
    let outside = relay.mcp_client(&key, "site", "other");
    let refused = outside
        .post(json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}))
        .await?;
    assert_eq!(refused.status, 403);
    let challenge = refused.headers["www-authenticate"].to_str()?;
    assert!(challenge.contains("insufficient_scope"), "{challenge}");

    // In scope: the list shows only the key's tools, and other tools are refused.
    let mut client = relay.mcp_client(&key, "site", "everything");
    client.initialize().await?;
    let tools: Vec<String> = client.request("tools/list", json!({})).await?.result()?["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(tools, vec!["echo".to_owned(), "get-sum".to_owned()]);
    let denied = client.call_tool("get-env", json!({})).await?;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.error_code(), Some(-32018), "{:?}", denied.messages);
    // A malformed `_meta` must not hide the tool's name from the scope check.
    let hidden = client
        .post(json!({"jsonrpc": "2.0", "id": 90, "method": "tools/call",
            "params": {"name": "get-env", "arguments": {}, "_meta": 5}}))
        .await?;
    assert_eq!(hidden.status, 403, "{:?}", hidden.messages);
    let nameless = client
        .post(json!({"jsonrpc": "2.0", "id": 91, "method": "tools/call", "params": {"name": 7}}))
        .await?;
    assert_eq!(nameless.status, 400, "{:?}", nameless.messages);
    let allowed = client
        .call_tool("echo", json!({"message": "in scope"}))
        .await?;
    assert!(allowed.result().is_ok());
    site.stop().await;
    relay.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_rate_a_key_gets_429_with_retry_after() -> anyhow::Result<()> {
    let relay = relay()
        .rate_limits(RateLimits {
            requests_per_second: 5,
            burst: 5,
            ..RateLimits::default()
        })
        .spawn()
        .await?;
    let site = agent(&relay, "site")
        .server_everything("everything")
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let mut client = relay.mcp_client(&key, "site", "everything");
    client.initialize().await?; // 2 requests: initialize and initialized
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..6 {
        let response = client.call_tool("echo", json!({"message": "x"})).await?;
        statuses.push(response.status);
        if response.status == 429 {
            limited = Some(response);
            break;
        }
    }
    let limited = limited.unwrap_or_else(|| panic!("never limited: {statuses:?}"));
    let retry: u64 = limited.headers["retry-after"].to_str()?.parse()?;
    assert!((1..=2).contains(&retry), "{retry}");
    // The JSON-RPC error answers the call by its id.
    assert_eq!(limited.error_code(), Some(-32019), "{:?}", limited.messages);
    assert!(limited.answer()?["id"].is_number());
    // Another key is not affected.
    let other = relay.client_key().await?;
    let mut second = relay.mcp_client(&other, "site", "everything");
    second.initialize().await?;
    // After the wait, the first key works again.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert!(
        client
            .call_tool("echo", json!({"message": "x"}))
            .await?
            .result()
            .is_ok()
    );
    let metrics = relay.metrics().await?;
    assert!(
        metrics.contains("outpost_relay_rate_limited_total{scope=\"key\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("outpost_relay_agents_connected 1"),
        "{metrics}"
    );
    site.stop().await;
    relay.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_caps_hold_per_key() -> anyhow::Result<()> {
    let upstream = HttpMcpServer::spawn("f").await?;
    let relay = relay()
        .rate_limits(RateLimits {
            max_in_flight_per_key: 1,
            ..RateLimits::default()
        })
        .spawn()
        .await?;
    let site = agent(&relay, "site")
        .http("rmcp", &upstream.url)
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let mut first = relay.mcp_client(&key, "site", "rmcp");
    first.initialize().await?;
    let slow = tokio::spawn(async move {
        first
            .call_tool("slow", json!({"millis": 1000, "steps": 1}))
            .await
    });
    upstream.wait_for_slow_calls(1).await;
    let mut second = relay.mcp_client(&key, "site", "rmcp");
    second.initialize().await?;
    let busy = second.call_tool("echo", json!({"message": "x"})).await?;
    assert_eq!(busy.status, 429, "{:?}", busy.messages);
    assert!(slow.await??.result().is_ok());
    assert!(
        second
            .call_tool("echo", json!({"message": "x"}))
            .await?
            .result()
            .is_ok()
    );
    site.stop().await;
    relay.stop().await;
    upstream.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_key_flood_is_slowed_but_valid_keys_pass() -> anyhow::Result<()> {
    let relay = relay()
        .rate_limits(RateLimits {
            failures_per_minute: 3,
            failure_tarpit: Duration::from_millis(400),
            ..RateLimits::default()
        })
        .spawn()
        .await?;
    let site = agent(&relay, "site")
        .server_everything("everything")
        .spawn()
        .await?;
    let bad = "pk_live_0000000000000000000000000000000A";
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let mut client = relay.mcp_client(bad, "site", "everything");
        statuses.push(client.initialize().await.map(|_| 200).unwrap_or(401));
    }
    assert_eq!(statuses, vec![401, 401, 401]);
    // Over the limit: slowed, and 429.
    let flooding = relay.mcp_client(bad, "site", "everything");
    let started = Instant::now();
    let slowed = flooding
        .post(json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .await?;
    assert_eq!(slowed.status, 429);
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert!(slowed.headers.contains_key("retry-after"));
    // A valid key from the same address still gets in: it is checked, not held.
    let key = relay.client_key().await?;
    let mut good = relay.mcp_client(&key, "site", "everything");
    good.initialize().await?;
    assert!(
        good.call_tool("echo", json!({"message": "x"}))
            .await?
            .result()
            .is_ok()
    );
    site.stop().await;
    relay.stop().await;
    // The failures reached the audit trail, aggregated per source.
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_and_deep_json_are_refused_before_routing() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let key = relay.client_key().await?;
    let big = "x".repeat(32 * 1024);
    // The relay answers 431 and closes while the head is still arriving; the kernel may
    // then reset the connection before the client reads the answer, so allow retries.
    let mut seen = Vec::new();
    for _ in 0..5 {
        match relay
            .raw_request(
                &format!(
                    "POST /mcp/site/everything HTTP/1.1\r\nAuthorization: Bearer {key}\r\nX-Filler: {big}"
                ),
                b"{}",
            )
            .await
        {
            Ok((status, _)) => {
                seen.push(status.to_string());
                if status == 431 {
                    break;
                }
            }
            Err(err) => seen.push(err.to_string()),
        }
    }
    assert_eq!(seen.last().map(String::as_str), Some("431"), "{seen:?}");
    let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
    let client = McpClient::new(
        relay.http_client(),
        relay.mcp_url("site", "everything"),
        &key,
    );
    let response = client.post_raw(deep.into_bytes(), &[]).await?;
    assert_eq!(response.status, 400, "{:?}", response.messages);
    let body: Value = response.messages.first().cloned().unwrap_or(Value::Null);
    assert!(body.to_string().contains("nested deeper"), "{body}");
    relay.stop().await;
    Ok(())
}

/// The aggregated endpoint holds the same in-flight cap as `/mcp/{agent}/{server}`: a slow
/// call routed through `/mcp` holds the key's only slot, so a second call, in either era,
/// is refused with -32019 until the first is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_caps_hold_on_the_aggregated_endpoint() -> anyhow::Result<()> {
    let upstream = HttpMcpServer::spawn("f").await?;
    let relay = relay()
        .rate_limits(RateLimits {
            max_in_flight_per_key: 1,
            ..RateLimits::default()
        })
        .spawn()
        .await?;
    let site = agent(&relay, "site")
        .http("rmcp", &upstream.url)
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let aggregate_url = format!("{}/mcp", relay.base_url());
    let mut first = McpClient::new(relay.http_client(), aggregate_url.clone(), &key);
    first.initialize().await?;
    let slow = tokio::spawn(async move {
        first
            .call_tool("rmcp__slow", json!({"millis": 1500, "steps": 1}))
            .await
    });
    upstream.wait_for_slow_calls(1).await;

    let mut second = McpClient::new(relay.http_client(), aggregate_url.clone(), &key);
    second.initialize().await?;
    let busy = second
        .call_tool("rmcp__echo", json!({"message": "x"}))
        .await?;
    assert_eq!(busy.error_code(), Some(-32019), "{:?}", busy.messages);

    let stateless = McpClient::new(relay.http_client(), aggregate_url, &key);
    let call = json!({
        "jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {
            "name": "rmcp__echo", "arguments": {"message": "x"},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"},
            },
        },
    });
    let headers = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "rmcp__echo"),
    ];
    let busy = stateless
        .post_raw(call.to_string().into_bytes(), &headers)
        .await?;
    assert_eq!(busy.error_code(), Some(-32019), "{:?}", busy.messages);

    assert!(slow.await??.result().is_ok());
    let answered = second
        .call_tool("rmcp__echo", json!({"message": "x"}))
        .await?;
    assert!(answered.result().is_ok(), "{:?}", answered.messages);
    let answered = stateless
        .post_raw(call.to_string().into_bytes(), &headers)
        .await?;
    assert!(
        answered.answer()?.get("result").is_some(),
        "{:?}",
        answered.messages
    );
    site.stop().await;
    relay.stop().await;
    upstream.stop().await;
    Ok(())
}
