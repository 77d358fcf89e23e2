//! Workload (d): idle agents. A fresh relay, then N agent tunnels (TLS, each with its own
//! key) held by this process; the relay's RSS before and after gives its memory per idle
//! agent, and its CPU time over one heartbeat interval with nothing but heartbeats (and key
//! rechecks) its idle CPU.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;

use crate::fleet::Fleet;
use crate::procfs;
use crate::report::{Section, thousands};
use crate::stack::{Binaries, RelayHome};
use crate::{Settings, fleet};

pub(crate) async fn run(binaries: &Binaries, settings: &Settings) -> anyhow::Result<Section> {
    let sizes = settings.fleet_sizes();
    let largest = sizes.iter().copied().max().unwrap_or(0);
    fleet::raise_open_files((largest as u64) * 3 + 4096)?;
    let home = RelayHome::create(binaries).await?;
    let keys = fleet::issue_keys(&home.data_dir(), largest).await?;
    let window = if settings.quick {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(20)
    };
    let settle = if settings.quick {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(1)
    };

    let mut section = Section::new(
        "d_idle_agents",
        format!(
            "(d) idle TLS agents held by the load process; relay CPU measured over {} s of idleness (heartbeat interval 20 s)",
            window.as_secs_f64()
        ),
        &[
            "agents",
            "connect all s",
            "relay RSS before MiB",
            "relay RSS after MiB",
            "relay KB per agent",
            "relay idle CPU",
            "relay CPU µs per agent per s",
        ],
    );
    for &count in &sizes {
        let mut relay = home
            .spawn(SocketAddr::from(([127, 0, 0, 1], 0)), &settings.relay_under)
            .await?;
        let pid = relay.pid();
        tokio::time::sleep(settle).await;
        let before = procfs::rss_kib(pid);
        let fleet = Fleet::start(relay.addr, &home.ca, &keys[..count], DIALING)?;
        let connect = fleet.wait_connected(count, CONNECT_LIMIT).await?;
        tokio::time::sleep(settle).await;
        let cpu_before = procfs::cpu_time(pid);
        tokio::time::sleep(window).await;
        let cpu = procfs::cpu_time(pid).saturating_sub(cpu_before);
        let after = procfs::rss_kib(pid);
        let still = fleet.connected();
        fleet.stop().await;
        // SIGTERM, so that a relay under valgrind writes its profile.
        let _ = relay.process.terminate().await;

        let per_agent_kb = (after.saturating_sub(before)) as f64 * 1024.0 / 1000.0 / count as f64;
        let share = cpu.as_secs_f64() / window.as_secs_f64();
        section.row(vec![
            thousands(count as u64),
            format!("{:.1}", connect.as_secs_f64()),
            format!("{:.1}", before as f64 / 1024.0),
            format!("{:.1}", after as f64 / 1024.0),
            format!("{per_agent_kb:.1}"),
            format!("{:.1}%", share * 100.0),
            format!(
                "{:.2}",
                cpu.as_secs_f64() * 1e6 / window.as_secs_f64() / count as f64
            ),
        ]);
        section.record(json!({
            "agents": count,
            "still_connected_at_end": still,
            "connect_seconds": connect.as_secs_f64(),
            "relay_rss_before_kib": before,
            "relay_rss_after_kib": after,
            "relay_bytes_per_agent": (after.saturating_sub(before)) as f64 * 1024.0 / count as f64,
            "idle_window_seconds": window.as_secs_f64(),
            "relay_idle_cpu_share": share,
        }));
    }
    section.note("KB per agent = (RSS with the agents − RSS before) / agents, in 1000-byte KB as the issue's target. The agents dial from 127.0.0.2–127.0.0.17, at most 256 between TCP connect and welcome at once.");
    Ok(section)
}

/// Agents between TCP connect and welcome at once, in the load process.
pub(crate) const DIALING: usize = 256;
/// How long connecting a whole fleet may take.
pub(crate) const CONNECT_LIMIT: Duration = Duration::from_secs(180);
