//! The upstream every target reaches: one Rust MCP server (rmcp) with two tools, `echo`
//! (returns `Echo: {message}`) and `big` (returns a text of N bytes), served either over
//! stdio or over Streamable HTTP. The bench runs it as a child process of its own binary
//! (`outpost-bench upstream-stdio` / `upstream-http`), so that its CPU is not mixed with the
//! load generator's, and so that stdio bridges (the agent, supergateway, mcp-proxy) can start
//! it. Does not measure anything.

use std::sync::Arc;

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ServerHandler, ServiceExt, schemars, tool, tool_handler, tool_router};

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
    let router = axum::Router::new().nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening on {}", listener.local_addr()?);
    // Nagle plus delayed ACKs would stall each small response by ~40 ms.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router).await?;
    Ok(())
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
