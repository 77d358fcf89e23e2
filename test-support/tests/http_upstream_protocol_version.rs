//! The agent learns an HTTP upstream's protocol version from its answer to `initialize`,
//! and sends it as `MCP-Protocol-Version` on every later request of the session. Only the
//! answer to `initialize` counts: a tool result that happens to name a `protocolVersion`
//! changes nothing.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use outpost_test_support::{agent, relay, serve_on_loopback};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_version_comes_from_the_initialize_answer_only() -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    // The `MCP-Protocol-Version` header of each request after initialize.
    let seen = Arc::new(Mutex::new(Vec::<Option<String>>::new()));
    let recorded = seen.clone();
    let app = axum::Router::new().route(
        "/mcp",
        post(move |headers: HeaderMap, body: Bytes| {
            let recorded = recorded.clone();
            async move { upstream(&recorded, &headers, &body) }
        })
        .get(|| async { StatusCode::METHOD_NOT_ALLOWED })
        .delete(|| async { StatusCode::OK }),
    );
    let (addr, server) = serve_on_loopback(app, &stop).await?;
    let url = format!("http://{addr}/mcp");

    let relay = relay().spawn().await?;
    let agent = agent(&relay, "laptop")
        .http("versioned", &url)
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let mut client = relay.mcp_client(&key, "laptop", "versioned");
    client.initialize().await?;
    for _ in 0..2 {
        let answer = client.call_tool("anything", json!({})).await?;
        answer.result()?;
    }
    assert_eq!(
        *seen.lock().unwrap(),
        [Some("2025-06-18".to_owned()), Some("2025-06-18".to_owned())],
        "each call carries the version of the initialize answer"
    );

    agent.stop().await;
    relay.stop().await;
    stop.cancel();
    server.await??;
    Ok(())
}

/// An upstream that answers `initialize` over SSE with version 2025-06-18, and every
/// other request with a result that names another `protocolVersion`.
fn upstream(recorded: &Mutex<Vec<Option<String>>>, headers: &HeaderMap, body: &[u8]) -> Response {
    let Ok(message) = serde_json::from_slice::<Value>(body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let id = message["id"].clone();
    if id.is_null() {
        return StatusCode::ACCEPTED.into_response();
    }
    if message["method"] == "initialize" {
        let answer = json!({
            "jsonrpc": "2.0",
            "id": id,
            "result": {
                "protocolVersion": "2025-06-18",
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "versioned", "version": "1"}
            }
        });
        return (
            [
                (header::CONTENT_TYPE, "text/event-stream"),
                (header::HeaderName::from_static("mcp-session-id"), "s1"),
            ],
            format!("event: message\ndata: {answer}\n\n"),
        )
            .into_response();
    }
    recorded.lock().unwrap().push(
        headers
            .get("mcp-protocol-version")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    );
    let answer = json!({
        "jsonrpc": "2.0",
        "id": id,
        "result": {
            "content": [{"type": "text", "text": "ok"}],
            "protocolVersion": "1999-01-01"
        }
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        answer.to_string(),
    )
        .into_response()
}
