//! `subscriptions/listen` at the aggregated endpoint `/mcp`, with the TypeScript SDK v2
//! (2026 era): one stream that merges the upstreams' listens (a 2025 server bridged, a
//! 2026 server passed through) and the relay's own list changes. The client hears the
//! update of a resource it named by its wrapped URI, with the URI wrapped, and
//! `notifications/tools/list_changed` when a third agent connects and when it disconnects.
//! The 2026 server's own tool list change and resource update pass too. `server/discover`
//! says so; an unknown wrapped URI or a bad filter is -32602. When the
//! client goes, the upstream listens end with it (the agent has nothing left in flight).

use std::time::Duration;

use outpost_test_support::conformance::Target;
use outpost_test_support::listen::{ListenClient, raw_listen};
use outpost_test_support::{McpClient, agent, relay};
use serde_json::json;

const WATCHED: &str = "outpost://alpha/conf/test://watched-resource";
const MODERN_WATCHED: &str = "outpost://alpha/modern/test://watched-resource";
const TOOLS_CHANGED: &str = "notifications/tools/list_changed";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2026_client_hears_agents_come_and_go_and_wrapped_updates() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let modern = Target::start("tests/conformance-2026/server-2026.mjs").await?;
    let alpha = agent(&relay, "alpha")
        .conformance_2025("conf")
        .http("modern", &modern.url)
        .shutdown_grace(Duration::from_secs(30))
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let url = format!("{}/mcp", relay.base_url());

    let discover = McpClient::new(relay.http_client(), url.clone(), &key)
        .post_raw(
            json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {}})
                .to_string()
                .into_bytes(),
            &[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "server/discover"),
            ],
        )
        .await?
        .result()?;
    assert_eq!(
        discover["capabilities"]["tools"]["listChanged"], true,
        "{discover}"
    );
    assert_eq!(
        discover["capabilities"]["resources"]["subscribe"], true,
        "{discover}"
    );

    let unknown = raw_listen(
        &relay,
        &key,
        &url,
        json!({"resourceSubscriptions": ["outpost://nobody/conf/test://x"]}),
    )
    .await?;
    assert_eq!(unknown.status, 400, "{:?}", unknown.messages);
    assert_eq!(unknown.error_code(), Some(-32602), "{:?}", unknown.messages);
    let bad = raw_listen(&relay, &key, &url, json!({"resourceSubscriptions": "all"})).await?;
    assert_eq!(bad.error_code(), Some(-32602), "{:?}", bad.messages);

    let filter = json!({"toolsListChanged": true,
        "resourceSubscriptions": [WATCHED, MODERN_WATCHED]});
    let (mut listen, acked) = ListenClient::open(&relay, &key, &url, &filter).await?;
    assert_eq!(acked, filter);
    listen.update_of(WATCHED).await?;

    // The 2026 server's own changes, through its passed-through listen.
    let tools = McpClient::new(relay.http_client(), url.clone(), &key);
    let call = |tool: &'static str| {
        let body = json!({"jsonrpc": "2.0", "id": tool, "method": "tools/call",
            "params": {"name": tool, "arguments": {}, "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {}}}});
        let tools = tools.clone();
        async move {
            tools
                .post_raw(
                    body.to_string().into_bytes(),
                    &[
                        ("mcp-protocol-version", "2026-07-28"),
                        ("mcp-method", "tools/call"),
                        ("mcp-name", tool),
                    ],
                )
                .await?
                .result()
        }
    };
    call("modern__test_trigger_tool_change").await?;
    listen
        .next_of(TOOLS_CHANGED, Duration::from_secs(15))
        .await?;
    call("modern__test_trigger_resource_change").await?;
    listen.update_of(MODERN_WATCHED).await?;

    let gamma = agent(&relay, "gamma")
        .server_everything("extra")
        .spawn()
        .await?;
    let joined = listen
        .next_of(TOOLS_CHANGED, Duration::from_secs(15))
        .await?;
    assert_eq!(
        joined["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"], "listen:0",
        "{joined}"
    );
    gamma.stop().await;
    listen
        .next_of(TOOLS_CHANGED, Duration::from_secs(15))
        .await?;

    // The client goes: every upstream listen ends with it, so the agent has nothing left
    // in flight and stops at once instead of waiting out its grace period.
    listen.stop().await?;
    let stopped = tokio::time::timeout(Duration::from_secs(10), alpha.stop()).await;
    assert!(stopped.is_ok(), "an upstream listen outlived its client");
    drop(modern);
    relay.stop().await;
    Ok(())
}
