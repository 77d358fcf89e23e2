//! The optional local health port (`health.listen`): `/livez` (the process serves),
//! `/readyz` (200 only while a tunnel is registered at the relay) and `/metrics`
//! (Prometheus text). Plain HTTP, meant for the kubelet or a local scraper; it carries no
//! secret and no content. The agent's only listening socket.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::{AgentInner, Status};

/// Serves until `shutdown` fires.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    agent: Arc<AgentInner>,
    shutdown: CancellationToken,
) {
    let app = Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(agent);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "health endpoint listening");
    }
    if let Err(err) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
    {
        tracing::error!(%err, "health endpoint failed");
    }
}

async fn livez() -> &'static str {
    "ok\n"
}

async fn readyz(State(agent): State<Arc<AgentInner>>) -> (StatusCode, String) {
    match agent.status_now() {
        Status::Connected { agent_name } => (
            StatusCode::OK,
            format!("ready: tunnel registered as {agent_name}\n"),
        ),
        Status::Disconnected => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no tunnel to the relay\n".into(),
        ),
        Status::Draining => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: draining\n".into(),
        ),
        Status::Stopped => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: stopped\n".into(),
        ),
    }
}

async fn metrics(State(agent): State<Arc<AgentInner>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        agent.metrics().encode(),
    )
}

/// GETs `path` from a health endpoint: (status, body). For `outpost-agent healthcheck`,
/// which runs in images without curl.
pub async fn probe(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut socket = tokio::net::TcpStream::connect(addr).await?;
        socket
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut response = Vec::new();
        socket
            .take(MAX_HEALTH_RESPONSE)
            .read_to_end(&mut response)
            .await?;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Response::new(&mut headers);
        let invalid = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer");
        let body_at = match parsed.parse(&response) {
            Ok(httparse::Status::Complete(at)) => at,
            _ => return Err(invalid()),
        };
        let status = parsed.code.ok_or_else(invalid)?;
        Ok((
            status,
            String::from_utf8_lossy(&response[body_at..]).into_owned(),
        ))
    };
    tokio::time::timeout(HEALTH_TIMEOUT, exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time"))?
}

const MAX_HEALTH_RESPONSE: u64 = 1024 * 1024;
const HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
