//! Workload (f): full TLS 1.3 handshakes per second the relay accepts. Several connectors
//! open TCP, complete a handshake (no session resumption), send close_notify and hang up,
//! for a fixed time. The relay's CPU time over the run gives its cost per handshake, which
//! does not depend on how much CPU the connectors took from it on this shared machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::Settings;
use crate::client::tls_client_config;
use crate::procfs;
use crate::report::{Section, thousands};
use crate::stack::Stack;

pub(crate) async fn run(stack: &Stack, settings: &Settings) -> anyhow::Result<Section> {
    let duration = if settings.quick {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(5)
    };
    let connectors = 16;
    let mut tls = tls_client_config(&stack.home.ca)?;
    tls.resumption = rustls::client::Resumption::disabled();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let addr = stack.relay.addr;
    let pid = stack.relay.pid();

    let mut section = Section::new(
        "f_handshakes",
        format!(
            "(f) full TLS 1.3 handshakes accepted by the relay: {connectors} connectors, {} s × {} rounds",
            duration.as_secs_f64(),
            settings.rounds
        ),
        &[
            "round",
            "handshakes/s",
            "failures",
            "relay CPU µs per handshake",
            "relay CPU use",
            "handshakes/s per relay core",
        ],
    );
    for round in 1..=settings.rounds {
        let done = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let cpu_before = procfs::cpu_time(pid);
        let started = Instant::now();
        let end = started + duration;
        let workers = (0..connectors).map(|_| {
            let connector = connector.clone();
            let done = done.clone();
            let failed = failed.clone();
            tokio::spawn(async move {
                while Instant::now() < end {
                    let name =
                        rustls_pki_types::ServerName::try_from("localhost").expect("valid name");
                    let handshake = async {
                        let tcp = tokio::net::TcpStream::connect(addr).await?;
                        tcp.set_nodelay(true)?;
                        let mut tls = connector.connect(name, tcp).await?;
                        tls.shutdown().await?;
                        anyhow::Ok(())
                    };
                    match handshake.await {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        });
        join_all(workers).await;
        let elapsed = started.elapsed();
        let cpu = procfs::cpu_time(pid).saturating_sub(cpu_before);
        let count = done.load(Ordering::Relaxed);
        let rate = count as f64 / elapsed.as_secs_f64();
        let cpu_per = cpu.as_secs_f64() * 1e6 / count.max(1) as f64;
        let share = cpu.as_secs_f64() / elapsed.as_secs_f64();
        section.row(vec![
            round.to_string(),
            thousands(rate as u64),
            failed.load(Ordering::Relaxed).to_string(),
            format!("{cpu_per:.0}"),
            format!("{:.0}%", share * 100.0),
            thousands((1e6 / cpu_per.max(1.0)) as u64),
        ]);
        section.record(json!({
            "round": round,
            "handshakes": count,
            "failures": failed.load(Ordering::Relaxed),
            "seconds": elapsed.as_secs_f64(),
            "per_sec": rate,
            "relay_cpu_us_per_handshake": cpu_per,
            "relay_cpu_share": share,
        }));
    }
    section.note("Relay CPU comes from /proc/PID/stat at 10 ms resolution; the connectors run in this process on the same two cores, so handshakes/s is what both together reach, and the per-core figure is the relay's own ceiling.");
    Ok(section)
}
