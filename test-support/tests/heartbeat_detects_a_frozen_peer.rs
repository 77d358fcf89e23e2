//! A peer that stops answering without closing (a frozen process, a dropped route) is
//! detected by heartbeat within two intervals, on both sides: the real binaries, one of
//! them frozen with SIGSTOP.

use std::time::Duration;

use outpost_test_support::{Certs, Process, binary};
use tokio::time::Instant;

struct Pair {
    _dir: tempfile::TempDir,
    _certs: Certs,
    relay: Process,
    agent: Process,
}

async fn start(heartbeat: &str) -> anyhow::Result<Pair> {
    let dir = tempfile::tempdir()?;
    let certs = Certs::generate()?;
    let data = dir.path().join("data");
    let relay_bin = binary("outpost-relay");
    let data_arg = data.to_str().unwrap();
    let mut init = Process::spawn(&relay_bin, &["--data-dir", data_arg, "init"], &[])?;
    anyhow::ensure!(init.wait().await? == Some(0));
    let mut keys = Process::spawn(
        &relay_bin,
        &[
            "--data-dir",
            data_arg,
            "keys",
            "create",
            "--agent",
            "a",
            "--quiet",
        ],
        &[],
    )?;
    anyhow::ensure!(keys.wait().await? == Some(0));
    let key_file = dir.path().join("agent.key");
    std::fs::write(&key_file, keys.output().trim())?;
    let relay_config = dir.path().join("relay.toml");
    std::fs::write(
        &relay_config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {data:?}\n[tunnel]\nheartbeat_interval = \"{heartbeat}\"\n[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
            certs.cert, certs.key
        ),
    )?;
    let mut relay = Process::spawn(
        &relay_bin,
        &["--config", relay_config.to_str().unwrap(), "serve"],
        &[],
    )?;
    let line = relay.wait_for("listening on").await?;
    let port = line.rsplit(':').next().unwrap().trim().to_owned();
    let agent_config = dir.path().join("agent.toml");
    std::fs::write(
        &agent_config,
        format!(
            "relay_url = \"wss://localhost:{port}\"\nkey_file = {key_file:?}\nca_file = {:?}\n\
             [tunnel]\nreconnect_min = \"60s\"\nreconnect_max = \"60s\"\n\
             [servers.cat]\ntype = \"stdio\"\ncommand = \"/bin/cat\"\n",
            certs.ca
        ),
    )?;
    let mut agent = Process::spawn(
        &binary("outpost-agent"),
        &["--config", agent_config.to_str().unwrap()],
        &[],
    )?;
    agent.wait_for("tunnel established").await?;
    relay.wait_for("agent connected").await?;
    Ok(Pair {
        _dir: dir,
        _certs: certs,
        relay,
        agent,
    })
}

fn signal(process: &Process, signal: &str) {
    let pid = process.pid().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_detects_a_frozen_relay() -> anyhow::Result<()> {
    let mut pair = start("1s").await?;
    signal(&pair.relay, "-STOP");
    let frozen = Instant::now();
    pair.agent
        .wait_for("peer silent for two heartbeat intervals")
        .await?;
    let took = frozen.elapsed();
    signal(&pair.relay, "-CONT");
    assert!(
        took >= Duration::from_millis(1000),
        "not before the silence could be real: {took:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "within two intervals and a little: {took:?}"
    );
    pair.agent.terminate().await?;
    pair.relay.terminate().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_detects_a_frozen_agent() -> anyhow::Result<()> {
    let mut pair = start("1s").await?;
    signal(&pair.agent, "-STOP");
    let frozen = Instant::now();
    pair.relay
        .wait_for("peer silent for two heartbeat intervals")
        .await?;
    let took = frozen.elapsed();
    signal(&pair.agent, "-CONT");
    assert!(took >= Duration::from_millis(1000), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    pair.agent.terminate().await?;
    pair.relay.terminate().await?;
    Ok(())
}
