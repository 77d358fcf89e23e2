//! Dials the relay: TCP, then TLS 1.3 with certificate verification always on (system
//! roots or a CA file), then the WebSocket upgrade carrying the agent key. Owns the TLS
//! client configuration; does not speak the tunnel protocol (see `session.rs`).

use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::config::Config;

/// A connected, upgraded tunnel socket.
pub(crate) type TunnelSocket = WebSocketStream<TlsStream<TcpStream>>;

/// Why dialing failed. Each variant names the step, so an operator knows which rule to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// The relay's host name did not resolve or no address accepted TCP.
    #[error("cannot reach {target}: {source}")]
    Connect {
        /// host:port
        target: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS handshake failed (untrusted or expired certificate, wrong name, TLS < 1.3).
    #[error("TLS handshake with {host} failed: {source}")]
    Tls {
        /// The relay's host.
        host: String,
        /// Why.
        source: std::io::Error,
    },
    /// The relay refused the upgrade (401: the key was refused).
    #[error("the relay refused the tunnel: HTTP {status}")]
    Refused {
        /// HTTP status.
        status: u16,
    },
    /// The WebSocket handshake failed otherwise.
    #[error("WebSocket handshake failed: {0}")]
    Handshake(String),
    /// The whole dial took longer than `tunnel.connect_timeout`.
    #[error("connecting took longer than {0:?}")]
    Timeout(std::time::Duration),
}

/// Why the TLS client configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// The CA file could not be read or holds no certificate.
    #[error("ca_file {path}: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// No usable system root certificate.
    #[error("no system root certificates found; set ca_file")]
    NoRoots,
    /// rustls refused the configuration.
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
}

/// Builds the TLS client configuration: TLS 1.3 only, verification always on.
pub fn tls_config(config: &Config) -> Result<Arc<ClientConfig>, TrustError> {
    let mut roots = RootCertStore::empty();
    match &config.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                .map_err(|e| TrustError::CaFile {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(TrustError::CaFile {
                    path: path.display().to_string(),
                    reason: "no usable certificate".into(),
                });
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                return Err(TrustError::NoRoots);
            }
        }
    }
    let mut tls =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

/// Dials the relay and upgrades to the tunnel WebSocket.
pub(crate) async fn dial(
    url: &url::Url,
    key: &SecretString,
    tls: Arc<ClientConfig>,
    timeout: std::time::Duration,
) -> Result<TunnelSocket, DialError> {
    tokio::time::timeout(timeout, dial_inner(url, key, tls))
        .await
        .map_err(|_| DialError::Timeout(timeout))?
}

async fn dial_inner(
    url: &url::Url,
    key: &SecretString,
    tls: Arc<ClientConfig>,
) -> Result<TunnelSocket, DialError> {
    let host = url.host_str().unwrap_or_default().to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    // Bracketed IPv6 literals are how URLs write them; sockets and SNI want them bare.
    let bare_host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let target = format!("{host}:{port}");
    let tcp = TcpStream::connect((bare_host.as_str(), port))
        .await
        .map_err(|source| DialError::Connect {
            target: target.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let server_name = ServerName::try_from(bare_host.clone()).map_err(|e| DialError::Tls {
        host: host.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
    })?;
    let tls_stream = TlsConnector::from(tls)
        .connect(server_name, tcp)
        .await
        .map_err(|source| DialError::Tls {
            host: host.clone(),
            source,
        })?;
    let mut tunnel_url = url.clone();
    tunnel_url.set_path(TUNNEL_PATH);
    let mut request = tunnel_url
        .as_str()
        .into_client_request()
        .map_err(|e| DialError::Handshake(e.to_string()))?;
    let mut authorization = http::HeaderValue::from_str(&format!("Bearer {}", key.expose_secret()))
        .map_err(|_| DialError::Handshake("the agent key is not a valid header value".into()))?;
    authorization.set_sensitive(true);
    request
        .headers_mut()
        .insert(http::header::AUTHORIZATION, authorization);
    request.headers_mut().insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_static(concat!("outpost-agent/", env!("CARGO_PKG_VERSION"))),
    );
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_WS_MESSAGE))
        .max_frame_size(Some(MAX_WS_MESSAGE))
        .read_buffer_size(READ_BUFFER);
    match tokio_tungstenite::client_async_with_config(request, tls_stream, Some(config)).await {
        Ok((socket, _response)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(DialError::Refused {
            status: response.status().as_u16(),
        }),
        Err(err) => Err(DialError::Handshake(err.to_string())),
    }
}

/// The relay's tunnel endpoint.
pub(crate) const TUNNEL_PATH: &str = "/tunnel/v1";
/// The largest WebSocket message accepted: the protocol's hard frame ceiling.
const MAX_WS_MESSAGE: usize = outpost_protocol::MAX_FRAME_LEN;
/// Read buffer of the tunnel socket; small because idle tunnels are the common case.
const READ_BUFFER: usize = 8 * 1024;
