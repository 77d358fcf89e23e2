//! Dials the relay, one named step at a time: TCP to the relay or to the HTTP proxy,
//! CONNECT through the proxy, TLS 1.3 with certificate verification always on (system
//! roots or a CA file) and optional public-key pins, then the WebSocket upgrade carrying
//! the agent key. The key is sent only after every TLS check passed. Owns the TLS client
//! configuration; does not speak the tunnel protocol (see `session.rs`).
//!
//! `outpost-agent check` runs the same steps one by one (see `check.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::config::{Config, Proxy};

/// A connected, upgraded tunnel socket.
pub(crate) type TunnelSocket = WebSocketStream<TlsStream<TcpStream>>;

/// Why dialing failed. Each variant names the step, so an operator knows which rule to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// The host name did not resolve or no address accepted TCP.
    #[error("cannot reach {target}: {source}")]
    Connect {
        /// host:port of the relay, or of the proxy.
        target: String,
        /// Why.
        source: std::io::Error,
    },
    /// The proxy answered CONNECT with something other than 2xx.
    #[error("the proxy {proxy} refused CONNECT to {target}: HTTP {status} {reason}{}", proxy_hint(*status))]
    ProxyRefused {
        /// host:port of the proxy.
        proxy: String,
        /// host:port of the relay.
        target: String,
        /// The status code.
        status: u16,
        /// The reason phrase.
        reason: String,
    },
    /// The proxy closed the connection or answered something that is not HTTP.
    #[error("the proxy {proxy} failed CONNECT to {target}: {reason}")]
    ProxyProtocol {
        /// host:port of the proxy.
        proxy: String,
        /// host:port of the relay.
        target: String,
        /// What went wrong.
        reason: String,
    },
    /// The TLS handshake failed (untrusted or expired certificate, wrong name, TLS < 1.3,
    /// a pin mismatch).
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
    #[error("no progress within {after:?} while {step}")]
    Timeout {
        /// The limit.
        after: std::time::Duration,
        /// What the dial was waiting for.
        step: &'static str,
    },
}

fn proxy_hint(status: u16) -> &'static str {
    match status {
        407 => {
            " (proxy authentication required or refused: check the user in `proxy` and `proxy_password`)"
        }
        403 => {
            " (the proxy's policy forbids this destination: allow CONNECT to the relay's host and port 443)"
        }
        _ => "",
    }
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
    /// The verifier could not be built from the roots.
    #[error("certificate verifier: {0}")]
    Verifier(String),
}

/// Builds the TLS client configuration: TLS 1.3 only, verification always on, and the
/// relay's public key checked against `relay_spki_sha256` when pins are configured.
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
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let mut tls = if config.relay_pins.is_empty() {
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| TrustError::Verifier(e.to_string()))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                inner,
                pins: config.relay_pins.clone(),
            }))
            .with_no_client_auth()
    };
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

/// The relay's host and port, as dialed.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Host without IPv6 brackets: for sockets and SNI.
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl Target {
    pub(crate) fn of(url: &url::Url) -> Self {
        let host = url.host_str().unwrap_or_default();
        Self {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: url.port_or_known_default().unwrap_or(443),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Dials the relay and upgrades to the tunnel WebSocket, within `tunnel.connect_timeout`.
pub(crate) async fn dial(
    config: &Config,
    tls: Arc<ClientConfig>,
) -> Result<TunnelSocket, DialError> {
    let step = AtomicUsize::new(0);
    let after = config.tunnel.connect_timeout;
    let dial = async {
        let target = Target::of(&config.relay_url);
        let tcp = match &config.proxy {
            Some(proxy) => {
                let mut tcp = connect_tcp(&proxy.host, proxy.port).await?;
                step.store(1, Ordering::Relaxed);
                proxy_connect(&mut tcp, proxy, &target).await?;
                tcp
            }
            None => connect_tcp(&target.host, target.port).await?,
        };
        step.store(2, Ordering::Relaxed);
        let tls_stream = tls_handshake(tcp, tls, &target).await?;
        step.store(3, Ordering::Relaxed);
        upgrade(tls_stream, &config.relay_url, &config.key).await
    };
    tokio::time::timeout(after, dial).await.map_err(|_| {
        let step = STEPS[step.load(Ordering::Relaxed).min(STEPS.len() - 1)];
        DialError::Timeout { after, step }
    })?
}

const STEPS: [&str; 4] = [
    "connecting over TCP",
    "waiting for the proxy to answer CONNECT",
    "in the TLS handshake",
    "waiting for the relay to accept the WebSocket upgrade",
];

/// TCP to `host:port`, with Nagle off.
pub(crate) async fn connect_tcp(host: &str, port: u16) -> Result<TcpStream, DialError> {
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|source| DialError::Connect {
            target: Target {
                host: host.to_owned(),
                port,
            }
            .to_string(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Asks the proxy on `tcp` for a tunnel to `target` (HTTP CONNECT, basic auth when a user
/// is configured). Reads the answer's head exactly, so no byte of the relay's is lost.
pub(crate) async fn proxy_connect(
    tcp: &mut TcpStream,
    proxy: &Proxy,
    target: &Target,
) -> Result<(), DialError> {
    let proxy_name = Target {
        host: proxy.host.clone(),
        port: proxy.port,
    }
    .to_string();
    let protocol = |reason: String| DialError::ProxyProtocol {
        proxy: proxy_name.clone(),
        target: target.to_string(),
        reason,
    };
    let mut request =
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: {USER_AGENT}\r\n")
            .into_bytes();
    if let Some(user) = &proxy.username {
        let mut credentials = format!(
            "{user}:{}",
            proxy
                .password
                .as_ref()
                .map(ExposeSecret::expose_secret)
                .map_or("", |p| p)
        );
        let encoded = base64::engine::general_purpose::STANDARD.encode(credentials.as_bytes());
        zeroize::Zeroize::zeroize(&mut credentials);
        request.extend_from_slice(b"Proxy-Authorization: Basic ");
        request.extend_from_slice(encoded.as_bytes());
        request.extend_from_slice(b"\r\n");
        drop(zeroize::Zeroizing::new(encoded));
    }
    request.extend_from_slice(b"\r\n");
    let written = tcp.write_all(&request).await;
    zeroize::Zeroize::zeroize(&mut request);
    written.map_err(|e| protocol(format!("cannot send CONNECT: {e}")))?;

    // Read until the end of the head. A proxy sends nothing after its 200 until the
    // client speaks, so reading in small pieces cannot swallow TLS bytes.
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 256];
    loop {
        let n = tcp
            .read(&mut buf)
            .await
            .map_err(|e| protocol(format!("reading its answer: {e}")))?;
        if n == 0 {
            return Err(protocol(
                "it closed the connection without answering".into(),
            ));
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = find_head_end(&head) {
            // A refusal may carry an error page, which is ignored; after a 2xx, any byte
            // would belong to the tunnel and must not be there yet.
            let extra = head.len() - end;
            head.truncate(end);
            if extra > 0 && is_success(&head) {
                return Err(protocol("it sent data after its 200 answer".into()));
            }
            break;
        }
        if head.len() > MAX_PROXY_HEAD {
            return Err(protocol(format!(
                "its answer's head exceeds {MAX_PROXY_HEAD} bytes"
            )));
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(protocol("its answer is not HTTP".into())),
    }
    let status = response.code.unwrap_or(0);
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(DialError::ProxyRefused {
            proxy: proxy_name,
            target: target.to_string(),
            status,
            reason: response.reason.unwrap_or_default().to_owned(),
        })
    }
}

fn is_success(head: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    matches!(response.parse(head), Ok(httparse::Status::Complete(_)))
        && response.code.is_some_and(|code| (200..300).contains(&code))
}

fn find_head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// TLS 1.3 over `tcp`, verifying the relay's certificate for `target.host`.
pub(crate) async fn tls_handshake(
    tcp: TcpStream,
    tls: Arc<ClientConfig>,
    target: &Target,
) -> Result<TlsStream<TcpStream>, DialError> {
    let tls_error = |source| DialError::Tls {
        host: target.host.clone(),
        source,
    };
    let server_name = ServerName::try_from(target.host.clone())
        .map_err(|e| tls_error(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
    TlsConnector::from(tls)
        .connect(server_name, tcp)
        .await
        .map_err(tls_error)
}

/// Upgrades to the tunnel WebSocket, presenting the agent key.
pub(crate) async fn upgrade(
    tls_stream: TlsStream<TcpStream>,
    relay_url: &url::Url,
    key: &SecretString,
) -> Result<TunnelSocket, DialError> {
    let mut tunnel_url = relay_url.clone();
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
        http::HeaderValue::from_static(USER_AGENT),
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

/// The pin of a certificate: base64 of the SHA-256 of its SubjectPublicKeyInfo, the form
/// `relay_spki_sha256` takes (and HPKP's `pin-sha256`).
pub fn spki_pin(cert: &[u8]) -> Option<[u8; 32]> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    Some(Sha256::digest(parsed.tbs_certificate.subject_pki.raw).into())
}

/// A pin as configured: base64.
pub fn pin_text(pin: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(pin)
}

/// Checks the pins before the chain, so an intercepting middlebox is named as such even
/// when its CA is unknown; then the usual WebPKI verification, which must pass too.
#[derive(Debug)]
struct PinnedVerifier {
    inner: Arc<WebPkiServerVerifier>,
    pins: Vec<[u8; 32]>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Only the end-entity key: intermediates are whatever the server chose to send,
        // and an interceptor could append the real relay's certificate to match a pin.
        let seen: Vec<[u8; 32]> = spki_pin(end_entity).into_iter().collect();
        if !seen.iter().any(|pin| self.pins.contains(pin)) {
            let list = |pins: &[[u8; 32]]| pins.iter().map(pin_text).collect::<Vec<_>>().join(", ");
            return Err(rustls::Error::General(format!(
                "the relay's public key matches no pin: expected one of [{}], seen [{}] \
                 (a TLS-intercepting proxy between here and the relay, or the relay's key changed)",
                list(&self.pins),
                list(&seen)
            )));
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The relay's tunnel endpoint.
pub(crate) const TUNNEL_PATH: &str = "/tunnel/v1";
/// The largest WebSocket message accepted: the protocol's hard frame ceiling.
const MAX_WS_MESSAGE: usize = outpost_protocol::MAX_FRAME_LEN;
/// Read buffer of the tunnel socket; small because idle tunnels are the common case, and
/// because tungstenite zero-fills this much before every read (see docs/benchmarks.md).
const READ_BUFFER: usize = 4 * 1024;
/// A proxy's answer to CONNECT larger than this is refused.
const MAX_PROXY_HEAD: usize = 16 * 1024;
const USER_AGENT: &str = concat!("outpost-agent/", env!("CARGO_PKG_VERSION"));

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn proxy(port: u16, user: Option<&str>, password: Option<&str>) -> Proxy {
        Proxy {
            host: "127.0.0.1".into(),
            port,
            username: user.map(str::to_owned),
            password: password.map(SecretString::from),
            source: "proxy".into(),
        }
    }

    /// A one-shot proxy that records the request head and answers `answer`.
    async fn fake_proxy(answer: &'static [u8]) -> (u16, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while find_head_end(&head).is_none() {
                let n = socket.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            socket.write_all(answer).await.unwrap();
            String::from_utf8(head).unwrap()
        });
        (port, task)
    }

    #[tokio::test]
    async fn connect_sends_basic_auth_and_accepts_2xx() {
        let (port, seen) = fake_proxy(b"HTTP/1.1 200 Connection established\r\n\r\n").await;
        let mut tcp = connect_tcp("127.0.0.1", port).await.unwrap();
        let target = Target {
            host: "relay.example.com".into(),
            port: 443,
        };
        proxy_connect(&mut tcp, &proxy(port, Some("ops"), Some("pa:ss")), &target)
            .await
            .unwrap();
        let head = seen.await.unwrap();
        assert!(
            head.starts_with("CONNECT relay.example.com:443 HTTP/1.1\r\n"),
            "{head}"
        );
        // base64("ops:pa:ss")
        assert!(
            head.contains("Proxy-Authorization: Basic b3BzOnBhOnNz\r\n"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn refusals_name_the_status_and_the_fix() {
        for (answer, status, hint) in [
            (
                &b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n"
                    [..],
                407,
                "proxy_password",
            ),
            (&b"HTTP/1.1 403 Forbidden\r\n\r\n"[..], 403, "allow CONNECT"),
            // Squid sends an error page with its refusals.
            (
                &b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 20\r\n\r\n<html>denied</html>\n"[..],
                407,
                "proxy_password",
            ),
        ] {
            let (port, _) = fake_proxy(answer).await;
            let mut tcp = connect_tcp("127.0.0.1", port).await.unwrap();
            let target = Target {
                host: "relay.example.com".into(),
                port: 443,
            };
            let err = proxy_connect(&mut tcp, &proxy(port, None, None), &target)
                .await
                .unwrap_err();
            assert!(
                matches!(err, DialError::ProxyRefused { status: s, .. } if s == status),
                "{err}"
            );
            assert!(err.to_string().contains(hint), "{err}");
        }
    }

    #[tokio::test]
    async fn a_proxy_that_hangs_up_or_speaks_nonsense_is_an_error() {
        for answer in [&b""[..], &b"SSH-2.0-OpenSSH\r\n\r\n"[..]] {
            let (port, _) = fake_proxy(answer).await;
            let mut tcp = connect_tcp("127.0.0.1", port).await.unwrap();
            let target = Target {
                host: "r".into(),
                port: 443,
            };
            let err = proxy_connect(&mut tcp, &proxy(port, None, None), &target)
                .await
                .unwrap_err();
            assert!(matches!(err, DialError::ProxyProtocol { .. }), "{err}");
        }
    }
}
