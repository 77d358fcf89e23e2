//! The HTTPS listener: accepts TCP under a connection limit, runs the TLS 1.3 handshake
//! inside each connection's own task once the handshake gate gives it a turn (see
//! `handshake_gate.rs`), all under a timeout, and serves HTTP/1.1 with upgrades.
//! On shutdown it stops accepting, lets in-flight requests finish within the grace period,
//! then drops what is left. Does not route (see `lib.rs`).

use std::path::Path;
use std::sync::Arc;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::{Limits, TlsFiles};
use crate::handshake_gate::HandshakeGate;

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the certificate or key.
    #[error("certificate or key refused: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Builds the listener's TLS configuration: TLS 1.3 only, HTTP/1.1.
pub fn tls_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = CertificateDer::pem_file_iter(&files.cert_file)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_error(&files.cert_file, e))?;
    if certs.is_empty() {
        return Err(pem_error(&files.cert_file, "no certificate found"));
    }
    let key =
        PrivateKeyDer::from_pem_file(&files.key_file).map_err(|e| pem_error(&files.key_file, e))?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn pem_error(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Serves `router` on `listener` until `shutdown` fires, then drains.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    router: axum::Router,
    limits: Limits,
    gate: HandshakeGate,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let acceptor = TlsAcceptor::from(tls);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    // Tracks live connections apart from the relay's other tasks, to drain them alone.
    let connections = TaskTracker::new();
    loop {
        // Take a permit before accepting, so a full relay leaves connections in the backlog.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let gate = gate.clone();
        let router = router.clone();
        let live = connections.token();
        let stop = shutdown.clone();
        let handshake_timeout = limits.handshake_timeout;
        let max_header_bytes = limits.max_header_bytes;
        let span = tracing::debug_span!("conn", client.addr = %peer);
        tasks.spawn(
            async move {
                let _permit = permit;
                // The timeout counts from the accept: waiting for a turn is part of it.
                let deadline = tokio::time::Instant::now() + handshake_timeout;
                let Some(turn) = gate.enter(deadline).await else {
                    tracing::debug!("no handshake turn within the handshake timeout");
                    return;
                };
                let handshake = tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await;
                drop(turn);
                let tls = match handshake {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(err)) => {
                        tracing::debug!(%err, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("TLS handshake timed out");
                        return;
                    }
                };
                // Handlers learn the client's address from this extension (audit, limits).
                let router = tower::ServiceExt::map_request(
                    router,
                    move |mut request: http::Request<hyper::body::Incoming>| {
                        request
                            .extensions_mut()
                            .insert(crate::admin::PeerAddr(peer));
                        request
                    },
                );
                let service = TowerToHyperService::new(router);
                // HTTP/1.1 only (the ALPN offer): hyper-util's auto builder would first wait
                // for a protocol preface with no timeout. With a timer, hyper closes a
                // connection whose request headers do not arrive in time, so a client that
                // completes TLS and sends nothing cannot hold a connection permit forever.
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(handshake_timeout)
                    // A request head over this is answered 431 by hyper.
                    .max_buf_size(max_header_bytes);
                let connection = builder
                    .serve_connection(TokioIo::new(tls), service)
                    .with_upgrades();
                let _live = live;
                let mut connection = std::pin::pin!(connection);
                let result = tokio::select! {
                    result = connection.as_mut() => result,
                    _ = stop.cancelled() => {
                        // Finish the request in flight, take no new one on this connection.
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    }
                };
                if let Err(err) = result {
                    tracing::debug!(%err, "connection ended with an error");
                }
            }
            .instrument(span),
        );
    }
    drop(listener);
    tracing::info!("stopped accepting; draining in-flight requests");
    connections.close();
    if tokio::time::timeout(limits.shutdown_grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing the remaining connections");
    }
}

const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);
