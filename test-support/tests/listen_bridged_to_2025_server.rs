//! A 2026-era client's `subscriptions/listen` on a 2025-era server, bridged by the relay:
//! the TypeScript SDK v2 listens for a resource of the 2025 conformance target (stdio),
//! which the relay subscribes to with `resources/subscribe` on a session of its own; the
//! update the server sends reaches the client on the listen stream, tied to it. A bad
//! filter is -32602; a listen stream over the key's cap is refused with 429, and closing a
//! stream gives its slot back.

use std::time::Duration;

use outpost_test_support::listen::{ListenClient, raw_listen};
use outpost_test_support::{agent, relay};
use serde_json::json;

const WATCHED: &str = "test://watched-resource";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2026_client_hears_resource_updates_of_a_2025_server() -> anyhow::Result<()> {
    let relay = relay().max_listen_streams_per_key(1).spawn().await?;
    let alpha = agent(&relay, "alpha")
        .conformance_2025("conf")
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let url = relay.mcp_url("alpha", "conf");

    let bad = raw_listen(&relay, &key, &url, json!({"toolsListChanged": "yes"})).await?;
    assert_eq!(bad.status, 400, "{:?}", bad.messages);
    assert_eq!(bad.error_code(), Some(-32602), "{:?}", bad.messages);

    let filter = json!({"resourceSubscriptions": [WATCHED], "toolsListChanged": true});
    let (mut listen, acked) = ListenClient::open(&relay, &key, &url, &filter).await?;
    assert_eq!(acked, filter);
    let updated = listen.update_of(WATCHED).await?;
    assert_eq!(
        updated["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"], "listen:0",
        "{updated}"
    );

    // The key's one listen stream is open: another is refused, as a limit.
    let over = raw_listen(&relay, &key, &url, json!({"toolsListChanged": true})).await?;
    assert_eq!(over.status, 429, "{:?}", over.messages);
    assert_eq!(over.error_code(), Some(-32019), "{:?}", over.messages);
    let message = over.answer()?["error"]["message"].to_string();
    assert!(message.contains("listen"), "{message}");

    // Closing the stream gives the slot back: the next refusal is for the filter again.
    listen.stop().await?;
    let freed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let answer = raw_listen(&relay, &key, &url, json!([])).await?;
            if answer.error_code() == Some(-32602) {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(freed.is_ok(), "the listen slot was not given back");

    alpha.stop().await;
    relay.stop().await;
    Ok(())
}
