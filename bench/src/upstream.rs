//! The upstream every target reaches: a Rust MCP server with two tools, `echo` (returns
//! `Echo: {message}`) and `big` (returns a text of N bytes), served either over stdio or
//! over Streamable HTTP, in either protocol era:
//!
//! - 2025 era: an rmcp server (`upstream-stdio` / `upstream-http`).
//! - 2026 era (MCP 2026-07-28, stateless; `upstream-stdio-2026` / `upstream-http-2026`): rmcp
//!   does not speak it, so the few answers the bench needs are written here: `server/discover`,
//!   `tools/list` and `tools/call`, with `resultType: "complete"`, after checking the request's
//!   `_meta` envelope and, over HTTP, its `Mcp-Method`/`Mcp-Name` headers.
//!
//! The bench runs it as a child process of its own binary, so that its CPU is not mixed with
//! the load generator's, and so that stdio bridges (the agent, supergateway, mcp-proxy) can
//! start it. Does not measure anything.

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ServerHandler, ServiceExt, schemars, tool, tool_handler, tool_router};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::client::STATELESS_VERSION;

/// Serves the tools on stdin/stdout until stdin closes.
pub(crate) async fn serve_stdio() -> anyhow::Result<()> {
    let running = BenchTools
        .serve((tokio::io::stdin(), tokio::io::stdout()))
        .await?;
    running.waiting().await?;
    Ok(())
}

/// Serves the tools over Streamable HTTP on 127.0.0.1:0 at `/mcp`, printing
/// `listening on ADDR` once bound; runs until killed.
pub(crate) async fn serve_http() -> anyhow::Result<()> {
    let service = StreamableHttpService::new(
        || Ok(BenchTools),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    );
    serve_router(axum::Router::new().nest_service("/mcp", service)).await
}

/// Serves the tools in the 2026 era on stdin/stdout (one JSON-RPC message a line) until
/// stdin closes. Requests are answered in order: each answer is immediate.
pub(crate) async fn serve_stdio_2026() -> anyhow::Result<()> {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    while let Some(line) = lines.next_line().await? {
        let answer = match serde_json::from_str::<Value>(&line) {
            Ok(message) => stateless_answer(&message),
            Err(err) => Some(error(&Value::Null, -32700, &format!("parse error: {err}"))),
        };
        if let Some(answer) = answer {
            let mut bytes = serde_json::to_vec(&answer)?;
            bytes.push(b'\n');
            out.write_all(&bytes).await?;
            out.flush().await?;
        }
    }
    Ok(())
}

/// Serves the tools in the 2026 era over Streamable HTTP on 127.0.0.1:0 at `/mcp` (POST
/// only: no session, no GET stream), printing `listening on ADDR`; runs until killed.
pub(crate) async fn serve_http_2026() -> anyhow::Result<()> {
    serve_router(axum::Router::new().route("/mcp", axum::routing::post(stateless_post))).await
}

async fn serve_router(router: axum::Router) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening on {}", listener.local_addr()?);
    // Nagle plus delayed ACKs would stall each small response by ~40 ms.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router).await?;
    Ok(())
}

/// One stateless POST: one message, whose `Mcp-Method` and `Mcp-Name` headers must repeat
/// the body (-32020 and 400 otherwise, as the revision says); answered as JSON.
async fn stateless_post(headers: HeaderMap, body: axum::body::Bytes) -> axum::response::Response {
    let message: Value = match serde_json::from_slice(&body) {
        Ok(message) => message,
        Err(err) => {
            let answer = error(&Value::Null, -32700, &format!("parse error: {err}"));
            return (StatusCode::BAD_REQUEST, axum::Json(answer)).into_response();
        }
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let method = message["method"].as_str();
    let name = message["params"]["name"].as_str();
    let version = message["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"].as_str();
    if header("mcp-method") != method
        || (method == Some("tools/call") && header("mcp-name") != name)
        || header("mcp-protocol-version") != version
    {
        let answer = error(
            &message["id"],
            -32020,
            "the Mcp-Method, Mcp-Name or MCP-Protocol-Version header does not match the body",
        );
        return (StatusCode::BAD_REQUEST, axum::Json(answer)).into_response();
    }
    match stateless_answer(&message) {
        Some(answer) => axum::Json(answer).into_response(),
        None => StatusCode::ACCEPTED.into_response(),
    }
}

/// The answer to one 2026-era message; none to a notification.
fn stateless_answer(message: &Value) -> Option<Value> {
    let id = message.get("id")?;
    let params = &message["params"];
    let meta = &params["_meta"];
    if meta["io.modelcontextprotocol/protocolVersion"].as_str() != Some(STATELESS_VERSION)
        || !meta["io.modelcontextprotocol/clientCapabilities"].is_object()
    {
        return Some(error(
            id,
            -32602,
            "_meta must carry the protocol version 2026-07-28 and the client capabilities",
        ));
    }
    let result = match message["method"].as_str() {
        Some("server/discover") => json!({
            "supportedVersions": [STATELESS_VERSION],
            "capabilities": {"tools": {}},
            "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "outpost-bench", "version": "1"}},
        }),
        Some("tools/list") => json!({
            "tools": [
                {"name": "echo", "description": "Echoes the message back",
                 "inputSchema": {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]}},
                {"name": "big", "description": "Returns a text of the given size",
                 "inputSchema": {"type": "object", "properties": {"bytes": {"type": "integer"}}, "required": ["bytes"]}},
            ],
            "ttlMs": 0,
            "cacheScope": "private",
        }),
        Some("tools/call") => {
            let arguments = &params["arguments"];
            let text = match (
                params["name"].as_str(),
                arguments["message"].as_str(),
                arguments["bytes"].as_u64(),
            ) {
                (Some("echo"), Some(message), _) => format!("Echo: {message}"),
                (Some("big"), _, Some(bytes)) => "x".repeat(usize::try_from(bytes).unwrap_or(0)),
                _ => return Some(error(id, -32602, "unknown tool or bad arguments")),
            };
            json!({"content": [{"type": "text", "text": text}]})
        }
        Some("ping") => json!({}),
        _ => return Some(error(id, -32601, "method not found")),
    };
    let mut result = result;
    result["resultType"] = json!("complete");
    Some(json!({"jsonrpc": "2.0", "id": id, "result": result}))
}

fn error(id: &Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

#[derive(Debug, Clone)]
struct BenchTools;

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct EchoArgs {
    /// Text to echo.
    message: String,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct BigArgs {
    /// Size of the result text in bytes.
    bytes: usize,
}

#[tool_router]
impl BenchTools {
    #[tool(description = "Echoes the message back")]
    fn echo(&self, Parameters(EchoArgs { message }): Parameters<EchoArgs>) -> String {
        format!("Echo: {message}")
    }

    #[tool(description = "Returns a text of the given size")]
    fn big(&self, Parameters(BigArgs { bytes }): Parameters<BigArgs>) -> String {
        "x".repeat(bytes)
    }
}

#[tool_handler]
impl ServerHandler for BenchTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}
