//! The relay takes on at most `limits.max_handshakes` TLS handshakes at once. On a relay
//! bound to 2, two connections that never send their ClientHello hold both turns; a client
//! and an agent that connect meanwhile wait, counted in `outpost_relay_handshakes_waiting`,
//! while `outpost_relay_handshakes_in_progress` stays at 2; each finishes its handshake once
//! the stalled connections go away. Counts, not times: nothing here depends on how fast the
//! machine is.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use outpost_test_support::{agent, relay, tls_client_config};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_beyond_the_bound_wait_their_turn() -> anyhow::Result<()> {
    let relay = relay()
        .max_handshakes(2)
        // The stalled connections keep their turns for the whole test.
        .handshake_timeout(Duration::from_secs(120))
        .spawn()
        .await?;
    let metrics = relay.metrics_addr.context("test relays serve metrics")?;

    let stalled_a = TcpStream::connect(relay.addr).await?;
    let stalled_b = TcpStream::connect(relay.addr).await?;
    wait_for(metrics, IN_PROGRESS, 2).await?;

    // A client's handshake now waits for a turn...
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(tls_client_config(&relay.state.certs)));
    let addr = relay.addr;
    let client = tokio::spawn(async move {
        let tcp = TcpStream::connect(addr).await?;
        let name = rustls_pki_types::ServerName::try_from("localhost")?;
        anyhow::Ok(connector.connect(name, tcp).await?)
    });
    wait_for(metrics, WAITING, 1).await?;
    // ...and so does an agent's.
    let late = tokio::spawn(
        agent(&relay, "late")
            .stdio("cat", "/bin/cat", &[], &[])
            .spawn(),
    );
    wait_for(metrics, WAITING, 2).await?;
    assert_eq!(metric(metrics, IN_PROGRESS).await?, 2);
    assert!(!client.is_finished(), "a handshake ran beyond the bound");
    assert!(!late.is_finished(), "an agent connected beyond the bound");

    drop(stalled_a);
    drop(stalled_b);
    let _tls = client.await??;
    let late = late.await??;
    wait_for(metrics, IN_PROGRESS, 0).await?;
    assert_eq!(metric(metrics, WAITING).await?, 0);
    assert_eq!(metric(metrics, REFUSED).await?, 0);

    late.stop().await;
    relay.stop().await;
    Ok(())
}

/// Polls the relay's metrics every 20 ms until `name` reads `want` (10 s at most).
async fn wait_for(metrics: SocketAddr, name: &str, want: i64) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = metric(metrics, name).await?;
        if now == want {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{name} is {now}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One value of the relay's metrics.
async fn metric(metrics: SocketAddr, name: &str) -> anyhow::Result<i64> {
    let (_, text) = outpost_agent::health_get(metrics, "/metrics").await?;
    text.lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .with_context(|| format!("{name} missing from:\n{text}"))
}

const WAITING: &str = "outpost_relay_handshakes_waiting";
const IN_PROGRESS: &str = "outpost_relay_handshakes_in_progress";
const REFUSED: &str = "outpost_relay_handshakes_refused_total";
