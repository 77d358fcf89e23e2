//! Workload (e): a relay restart with a fleet connected. N idle agents, then SIGKILL to the
//! relay; once every agent has noticed, a new relay on the same port and store. Measures the
//! time until every agent is back and the rate at which the relay welcomed them.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use crate::fleet::Fleet;
use crate::idle::{CONNECT_LIMIT, DIALING};
use crate::report::{Section, thousands};
use crate::stack::{Binaries, RelayHome};
use crate::{Settings, fleet};

pub(crate) async fn run(binaries: &Binaries, settings: &Settings) -> anyhow::Result<Section> {
    let sizes = settings.fleet_sizes();
    let largest = sizes.iter().copied().max().unwrap_or(0);
    fleet::raise_open_files((largest as u64) * 3 + 4096)?;
    let home = RelayHome::create(binaries).await?;
    let keys = fleet::issue_keys(&home.data_dir(), largest).await?;

    let mut section = Section::new(
        "e_reconnect",
        "(e) relay killed (SIGKILL) and restarted on the same port with the fleet connected",
        &[
            "agents",
            "relay start s",
            "listening → all back s",
            "kill → all back s",
            "mean accepts/s",
            "peak accepts/s (1 s)",
        ],
    );
    for &count in &sizes {
        let relay = home
            .spawn(SocketAddr::from(([127, 0, 0, 1], 0)), &[])
            .await?;
        let addr = relay.addr;
        let fleet = Fleet::start(addr, &home.ca, &keys[..count], DIALING)?;
        fleet.wait_connected(count, CONNECT_LIMIT).await?;

        let killed = Instant::now();
        let mut process = relay.process;
        if let Some(pid) = process.pid() {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(pid)?),
                nix::sys::signal::Signal::SIGKILL,
            )?;
        }
        process.wait().await?;
        fleet.wait_all_dropped(Duration::from_secs(30)).await?;
        let restarting = Instant::now();
        let relay = home.spawn(addr, &[]).await?;
        let listening = Instant::now();
        fleet.wait_connected(count, CONNECT_LIMIT).await?;
        let back = Instant::now();
        let welcomes = fleet.welcomes_since(listening);
        fleet.stop().await;
        drop(relay);

        let span = back - listening;
        let peak = peak_per_second(&welcomes, listening);
        section.row(vec![
            thousands(count as u64),
            format!("{:.2}", (listening - restarting).as_secs_f64()),
            format!("{:.2}", span.as_secs_f64()),
            format!("{:.2}", (back - killed).as_secs_f64()),
            thousands((count as f64 / span.as_secs_f64().max(1e-3)) as u64),
            thousands(peak),
        ]);
        section.record(json!({
            "agents": count,
            "relay_start_seconds": (listening - restarting).as_secs_f64(),
            "listening_to_all_back_seconds": span.as_secs_f64(),
            "kill_to_all_back_seconds": (back - killed).as_secs_f64(),
            "mean_accepts_per_sec": count as f64 / span.as_secs_f64().max(1e-3),
            "peak_accepts_per_sec": peak,
        }));
    }
    section.note("Agents reconnect with the agent's own backoff (a delay between half and all of a step doubling from 0.5 s to 30 s); the first retries hit a closed port, so the backoff they reached is part of the time.");
    Ok(section)
}

/// The most welcomes in any one-second window starting at a welcome.
fn peak_per_second(times: &[Instant], since: Instant) -> u64 {
    let mut offsets: Vec<Duration> = times.iter().map(|t| *t - since).collect();
    offsets.sort();
    let mut peak = 0;
    let mut start = 0;
    for end in 0..offsets.len() {
        while offsets[end] - offsets[start] > Duration::from_secs(1) {
            start += 1;
        }
        peak = peak.max(end - start + 1);
    }
    peak as u64
}
