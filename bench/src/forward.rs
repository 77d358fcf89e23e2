//! The floor of a two-hop path on this machine: a forwarder that accepts TLS 1.3 and passes
//! the bytes on, unread, to the next hop, over TLS 1.3 or plain TCP. Two in series
//! (client → TLS → forwarder → TLS → forwarder → upstream) cross the same processes,
//! sockets and encryptions as a call through the relay and the agent, and do nothing else:
//! no HTTP, no MCP, no authentication, no multiplexing. One connection in, one out.
//!
//! The bench runs it as `outpost-bench forward CERT KEY NEXT [CA]` (a process of its own,
//! so that its CPU and memory are its own): it listens on 127.0.0.1:0, prints `listening
//! on ADDR`, and serves until killed. With `CA` it dials `NEXT` over TLS as `localhost`,
//! trusting that CA; without, over plain TCP.
//!
//! It is not a floor in every sense: the tunnel carries every session over one connection,
//! so at high concurrency it can batch what this does one connection at a time.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use outpost_relay::config::TlsFiles;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::client::tls_client_config;

/// Serves as `forward CERT KEY NEXT [CA]`; `args` are the words after `forward`.
pub(crate) async fn serve(args: &[String]) -> anyhow::Result<()> {
    let (cert, key, next, ca) = match args {
        [cert, key, next] => (cert, key, next, None),
        [cert, key, next, ca] => (cert, key, next, Some(ca)),
        _ => anyhow::bail!("usage: outpost-bench forward CERT KEY NEXT [CA]"),
    };
    let next: SocketAddr = next.parse().context("NEXT is an address")?;
    // The relay's own listener configuration: TLS 1.3 only.
    let acceptor = TlsAcceptor::from(outpost_relay::tls_config(&TlsFiles {
        cert_file: cert.into(),
        key_file: key.into(),
    })?);
    let connector = ca
        .map(|ca| tls_client_config(Path::new(ca)))
        .transpose()?
        .map(|config| TlsConnector::from(Arc::new(config)));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("listening on {}", listener.local_addr()?);
    // Every connection's task is owned here and ends with its connection or with the
    // process, which the bench kills.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let tcp = match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(err) => {
                        // Out of file descriptors and the like: pause instead of spinning.
                        eprintln!("forward: accept failed: {err}");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let connector = connector.clone();
                connections.spawn(async move {
                    if let Err(err) = pass_on(tcp, &acceptor, connector.as_ref(), next).await {
                        eprintln!("forward: a connection ended with {err:#}");
                    }
                });
            }
            Some(joined) = connections.join_next() => {
                if let Err(err) = joined {
                    eprintln!("forward: a connection's task failed: {err}");
                }
            }
        }
    }
}

/// Terminates TLS on `tcp`, dials `next`, and copies both ways until either side closes.
async fn pass_on(
    tcp: TcpStream,
    acceptor: &TlsAcceptor,
    connector: Option<&TlsConnector>,
    next: SocketAddr,
) -> anyhow::Result<()> {
    // Nagle plus delayed ACKs would stall each small message by ~40 ms.
    tcp.set_nodelay(true)?;
    let inbound = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .context("the TLS handshake in timed out")??;
    let out = TcpStream::connect(next).await?;
    out.set_nodelay(true)?;
    match connector {
        Some(connector) => {
            let handshake = connector.connect(ServerName::try_from("localhost")?, out);
            let outbound = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
                .await
                .context("the TLS handshake out timed out")??;
            copy_both_ways(inbound, outbound).await
        }
        None => copy_both_ways(inbound, out).await,
    }
}

async fn copy_both_ways(
    mut a: impl AsyncRead + AsyncWrite + Unpin,
    mut b: impl AsyncRead + AsyncWrite + Unpin,
) -> anyhow::Result<()> {
    // 64 KiB each way: as much as one read of the socket usually brings.
    match tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, COPY_BUFFER, COPY_BUFFER).await {
        // A client that hangs up without TLS's close_notify ends its connection all the same.
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => Ok(()),
        Err(err) => Err(err.into()),
        Ok(_) => Ok(()),
    }
}

const COPY_BUFFER: usize = 64 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
