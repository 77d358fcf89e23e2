//! A real MCP server speaking Streamable HTTP on 127.0.0.1:0, built with rmcp, for the
//! agent's HTTP upstream path. Its tools: `echo`, `fortune` (returns a configured string),
//! `big` (returns N bytes) and `slow` (sleeps, reporting progress).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{ProgressNotificationParam, ServerCapabilities, ServerConfig};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler, schemars, tool, tool_handler, tool_router};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running HTTP MCP server.
#[derive(Debug)]
pub struct HttpMcpServer {
    /// Its MCP endpoint, `http://127.0.0.1:PORT/mcp`.
    pub url: String,
    /// Where it listens.
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
    slow_calls: watch::Receiver<usize>,
}

impl HttpMcpServer {
    /// Starts a server whose `fortune` tool returns `fortune`.
    pub async fn spawn(fortune: &str) -> anyhow::Result<Self> {
        let stop = CancellationToken::new();
        let (slow_tx, slow_calls) = watch::channel(0);
        let tools = TestTools {
            fortune: Arc::new(fortune.to_owned()),
            slow_calls: Arc::new(slow_tx),
        };
        let service = StreamableHttpService::new(
            move || Ok(tools.clone()),
            Arc::new(LocalSessionManager::default()),
            StreamableHttpServerConfig::default().with_cancellation_token(stop.child_token()),
        );
        let router = axum::Router::new().nest_service("/mcp", service);
        let (addr, task) = serve_on_loopback(router, &stop).await?;
        Ok(Self {
            url: format!("http://{addr}/mcp"),
            addr,
            stop,
            task,
            slow_calls,
        })
    }

    /// Waits until at least `count` calls of `slow` are running.
    pub async fn wait_for_slow_calls(&self, count: usize) {
        let mut calls = self.slow_calls.clone();
        let _ = calls.wait_for(|n| *n >= count).await;
    }

    /// Waits until no call of `slow` is running (finished or cancelled).
    pub async fn wait_for_no_slow_calls(&self) {
        let mut calls = self.slow_calls.clone();
        let _ = calls.wait_for(|n| *n == 0).await;
    }

    /// Stops the server and waits for it.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// Serves `app` on an ephemeral loopback port until `stop`; returns where it listens and
/// the serving task.
pub async fn serve_on_loopback(
    app: axum::Router,
    stop: &CancellationToken,
) -> anyhow::Result<(SocketAddr, JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // Without TCP_NODELAY, Nagle's algorithm and delayed ACKs stall small responses by
    // about 40 ms: a benchmark against this server would measure that, not MCP.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let task = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .into_future(),
    );
    Ok((addr, task))
}

#[derive(Debug, Clone)]
struct TestTools {
    fortune: Arc<String>,
    /// Calls of `slow` running now, so tests can act while one is in flight.
    slow_calls: Arc<watch::Sender<usize>>,
}

/// Counts a running `slow` call until dropped (also when the call is cancelled).
struct Running(Arc<watch::Sender<usize>>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

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

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct SlowArgs {
    /// Total duration in milliseconds.
    millis: u64,
    /// Progress notifications to send along the way.
    steps: u32,
}

#[tool_router]
impl TestTools {
    #[tool(description = "Echoes the message back")]
    fn echo(&self, Parameters(EchoArgs { message }): Parameters<EchoArgs>) -> String {
        format!("Echo: {message}")
    }

    #[tool(description = "Returns today's fortune")]
    fn fortune(&self) -> String {
        self.fortune.as_str().to_owned()
    }

    #[tool(description = "Returns a text of the given size")]
    fn big(&self, Parameters(BigArgs { bytes }): Parameters<BigArgs>) -> String {
        "x".repeat(bytes)
    }

    #[tool(description = "Sleeps, reporting progress at each step; stops when cancelled")]
    async fn slow(
        &self,
        Parameters(SlowArgs { millis, steps }): Parameters<SlowArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<String, ErrorData> {
        self.slow_calls.send_modify(|n| *n += 1);
        let _running = Running(self.slow_calls.clone());
        let steps = steps.max(1);
        for step in 1..=steps {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(millis / u64::from(steps))) => {}
                _ = context.ct.cancelled() => return Err(ErrorData::internal_error("cancelled", None)),
            }
            if let Some(token) = context.meta.get_progress_token() {
                let _ = context
                    .peer
                    .notify_progress(
                        ProgressNotificationParam::new(token.clone(), f64::from(step))
                            .with_total(f64::from(steps)),
                    )
                    .await;
            }
        }
        Ok(format!("slept {millis} ms"))
    }
}

#[tool_handler]
impl ServerHandler for TestTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}
