//! A 2025-era client's `resources/subscribe` on a 2026-era server, bridged by the relay:
//! the relay holds a `subscriptions/listen` upstream for the session's subscribed URIs and
//! sends the server's `notifications/resources/updated` on the session's GET stream, as a
//! 2025 server would. The 2026 conformance target (Streamable HTTP) updates its
//! `test://watched-resource` when its `test_trigger_resource_change` tool is called.

use std::time::Duration;

use outpost_test_support::conformance::Target;
use outpost_test_support::{agent, relay};
use serde_json::{Value, json};

const WATCHED: &str = "test://watched-resource";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2025_client_gets_updates_of_a_2026_server_on_its_get_stream() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let modern = Target::start("tests/conformance-2026/server-2026.mjs").await?;
    let site = agent(&relay, "site")
        .http("modern", &modern.url)
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let mut client = relay.mcp_client(&key, "site", "modern");
    let init = client.initialize().await?;
    assert_eq!(
        init["capabilities"]["resources"]["subscribe"], true,
        "{init}"
    );

    // The session's GET stream, read as it comes.
    let session = client.session.clone().unwrap_or_default();
    let mut get = relay
        .http_client()
        .get(relay.mcp_url("site", "modern"))
        .bearer_auth(&key)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-06-18")
        .send()
        .await?;
    assert_eq!(get.status(), 200);

    let subscribed = client
        .request("resources/subscribe", json!({"uri": WATCHED}))
        .await?;
    assert_eq!(subscribed.result()?, json!({}));
    client
        .call_tool("test_trigger_resource_change", json!({}))
        .await?
        .result()?;

    let updated = tokio::time::timeout(Duration::from_secs(15), async {
        let mut seen = String::new();
        while let Some(chunk) = get.chunk().await? {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            for line in seen.lines() {
                let Some(data) = line.strip_prefix("data: ") else {
                    continue;
                };
                let message: Value = serde_json::from_str(data).unwrap_or_default();
                if message["method"] == "notifications/resources/updated" {
                    return anyhow::Ok(message);
                }
            }
        }
        anyhow::bail!("the GET stream ended: {seen}")
    })
    .await??;
    assert_eq!(updated["params"]["uri"], WATCHED, "{updated}");

    let unsubscribed = client
        .request("resources/unsubscribe", json!({"uri": WATCHED}))
        .await?;
    assert_eq!(unsubscribed.result()?, json!({}));

    drop(get);
    client.delete().await?;
    site.stop().await;
    drop(modern);
    relay.stop().await;
    Ok(())
}
