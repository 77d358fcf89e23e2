//! `outpost-relay healthcheck`: GETs the relay's own `/livez` over its TLS listener, for
//! container health checks in images without curl. It trusts exactly the certificate
//! the relay is configured to serve, so it needs no CA and checks no name.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use outpost_relay::config::Config;

/// Exits with an error unless `/livez` answers 200 within a few seconds.
pub(crate) async fn run(config: &Config) -> anyhow::Result<()> {
    let mut addr = config.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let expected = CertificateDer::pem_file_iter(&config.tls.cert_file)
        .and_then(|mut certs| certs.next().transpose())
        .with_context(|| format!("reading {}", config.tls.cert_file.display()))?
        .with_context(|| format!("no certificate in {}", config.tls.cert_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(ExactCertificate {
        expected: expected.into_owned(),
        algorithms: provider.signature_verification_algorithms,
    });
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let probe = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let name = ServerName::try_from("localhost")?;
        let mut stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .context("TLS handshake")?;
        stream
            .write_all(b"GET /livez HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut head = Vec::new();
        // The status line is all that is needed.
        let _ = (&mut stream).take(1024).read_to_end(&mut head).await;
        let line = String::from_utf8_lossy(&head);
        let status = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        if status != "200" {
            bail!(
                "/livez answered {:?}",
                line.lines().next().unwrap_or_default()
            );
        }
        Ok(())
    };
    tokio::time::timeout(TIMEOUT, probe)
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {addr} within {TIMEOUT:?}"))?
}

/// Accepts the one certificate the relay is configured with, verifying the handshake
/// signatures as usual.
#[derive(Debug)]
struct ExactCertificate {
    expected: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ExactCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.expected.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the listener serves a different certificate than tls.cert_file".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

const TIMEOUT: Duration = Duration::from_secs(5);
