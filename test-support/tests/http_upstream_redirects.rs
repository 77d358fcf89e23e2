//! An HTTP upstream that answers with a redirect is not followed. The agent sends a
//! server's configured headers (its credentials) to that server's URL only; a redirect to
//! anywhere else reaches the client as the upstream's error, and nothing reaches the
//! redirect's target.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::{StatusCode, header};
use outpost_test_support::{agent, relay, serve_on_loopback};
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_from_an_http_upstream_is_not_followed() -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    // The redirect's target counts every request that reaches it.
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let target = axum::Router::new().fallback(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        async { "{}" }
    });
    let target_url = serve(target, &stop).await?;
    let moved = axum::Router::new().fallback(move || {
        let location = target_url.clone();
        async move {
            (
                StatusCode::TEMPORARY_REDIRECT,
                [(header::LOCATION, location)],
            )
        }
    });
    let moved_url = serve(moved, &stop).await?;

    let relay = relay().spawn().await?;
    let agent = agent(&relay, "laptop")
        .http("moved", &moved_url)
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let mut client = relay.mcp_client(&key, "laptop", "moved");
    let params = json!({
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"}
    });
    let response = client.request("initialize", params).await?;
    assert_eq!(
        response.error_code(),
        Some(-32012),
        "the upstream's error: {:?}",
        response.messages
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the redirect was followed");

    agent.stop().await;
    relay.stop().await;
    stop.cancel();
    Ok(())
}

/// Serves `app` on an ephemeral loopback port until `stop`; returns its `/mcp` URL.
async fn serve(app: axum::Router, stop: &CancellationToken) -> anyhow::Result<String> {
    let (addr, _server) = serve_on_loopback(app, stop).await?;
    Ok(format!("http://{addr}/mcp"))
}
