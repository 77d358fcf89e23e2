//! A POST's SSE headers wait for the stream's first message, so that a quick answer leaves
//! the relay in one write with them (one TLS record, one read for the client). A call that
//! stays silent for a whole keep-alive period gets its headers then, opening with a
//! keep-alive comment. A client that gets a priming event (MCP 2025-11-25 on) gets the
//! headers and its priming event at once, whatever the call does.
//!
//! Through the real relay and agent, to the rmcp test server's `slow` tool.

use std::time::Duration;

use outpost_test_support::{HttpMcpServer, McpClient, agent, relay};
use serde_json::json;
use tokio::time::Instant;

const KEEPALIVE: Duration = Duration::from_millis(700);

/// What a client saw of one `slow` call: when the headers came, the first chunk of the
/// body, and the whole body.
struct Seen {
    headers_after: Duration,
    first_chunk: String,
    body: String,
}

async fn call_slow(
    client: &McpClient,
    http: &reqwest::Client,
    url: &str,
    key: &str,
    id: u64,
    version: &str,
    millis: u64,
) -> anyhow::Result<Seen> {
    let session = client.session.as_deref().expect("initialized");
    let started = Instant::now();
    let mut response = http
        .post(url)
        .bearer_auth(key)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-session-id", session)
        .header("mcp-protocol-version", version)
        .timeout(Duration::from_secs(60))
        .body(
            json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                   "params": {"name": "slow", "arguments": {"millis": millis, "steps": 0}}})
            .to_string(),
        )
        .send()
        .await?;
    let headers_after = started.elapsed();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream",
        "an SSE answer"
    );
    let first_chunk = String::from_utf8(response.chunk().await?.unwrap_or_default().to_vec())?;
    let mut body = first_chunk.clone();
    while let Some(chunk) = response.chunk().await? {
        body.push_str(std::str::from_utf8(&chunk)?);
    }
    Ok(Seen {
        headers_after,
        first_chunk,
        body,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_headers_wait_for_the_first_message_or_a_keep_alive_period() -> anyhow::Result<()> {
    let relay = relay().sse_keepalive(KEEPALIVE).spawn().await?;
    let upstream = HttpMcpServer::spawn("unused").await?;
    let agent = agent(&relay, "site")
        .http("web", &upstream.url)
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let url = relay.mcp_url("site", "web");
    let http = relay.http_client();
    let mut client = relay.mcp_client(&key, "site", "web");
    client.initialize().await?;

    // A call answered within the period: the headers came with the answer, not before it,
    // and the body's first chunk is the answer's event.
    let quick = call_slow(&client, &http, &url, &key, 2, "2025-06-18", 300).await?;
    assert!(
        quick.headers_after >= Duration::from_millis(300),
        "the headers came after {:?}, before the answer",
        quick.headers_after
    );
    assert!(
        quick.first_chunk.starts_with("id: ") || quick.first_chunk.starts_with("data: "),
        "the first chunk is an event: {:?}",
        quick.first_chunk
    );
    assert!(
        quick.first_chunk.contains("\"id\":2"),
        "{:?}",
        quick.first_chunk
    );

    // A call silent for longer: the headers came after one period, with a keep-alive
    // comment first, and the answer followed on the open stream.
    let silent = call_slow(&client, &http, &url, &key, 3, "2025-06-18", 3_000).await?;
    assert!(
        silent.headers_after >= KEEPALIVE && silent.headers_after < Duration::from_millis(2_500),
        "the headers came after {:?}",
        silent.headers_after
    );
    assert_eq!(silent.first_chunk, ": keep-alive\n\n");
    assert!(silent.body.contains("\"id\":3"), "{:?}", silent.body);

    // A client of 2025-11-25 gets its priming event at once, before a slow answer.
    let primed = call_slow(&client, &http, &url, &key, 4, "2025-11-25", 3_000).await?;
    assert!(
        primed.headers_after < Duration::from_millis(2_500),
        "the headers came after {:?}",
        primed.headers_after
    );
    assert!(
        primed.first_chunk.starts_with("id: ") && primed.first_chunk.ends_with("data: \n\n"),
        "a priming event first: {:?}",
        primed.first_chunk
    );
    assert!(primed.body.contains("\"id\":4"), "{:?}", primed.body);

    agent.stop().await;
    upstream.stop().await;
    relay.stop().await;
    Ok(())
}
