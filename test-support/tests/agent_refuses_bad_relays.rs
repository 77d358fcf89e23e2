//! The agent binary sends its key only to a relay that has proved itself: TLS 1.3 and a
//! certificate, valid today, for the name it dialled, from the CA it trusts. Each test puts
//! `openssl s_server` (a TLS server that is not ours, and prints every byte it decrypts) where
//! the relay should be, with exactly one thing wrong, and asserts that the agent logs a TLS
//! error naming that cause, keeps retrying without ever connecting, and that the server never
//! saw the key. A control test with nothing wrong shows that the server does print the key
//! when the agent sends it, so its absence in the other tests means something.
//!
//! (`agent_guards_its_secrets.rs` checks the refusal of an unknown CA against the real relay;
//! these tests add the other causes and the proof that no credential left the agent.)

use std::time::Duration;

use outpost_test_support::{Certs, Process, binary, find_program};
use tokio::time::Instant;

/// A fake agent key, easy to find in the server's output. The agent does not check the key's
/// format; only a relay would.
const KEY: &str = "ak_live_CanaryAgentKey0123456789abcdefXY";
/// The part of the key after its prefix: not even that may reach the server.
const KEY_SECRET: &str = "CanaryAgentKey0123456789abcdefXY";

/// `openssl s_server` on 127.0.0.1 with an ephemeral port, printing what it decrypts.
struct TlsServer {
    process: Process,
    port: u16,
}

impl TlsServer {
    async fn start(certs: &Certs, version: &str) -> anyhow::Result<Self> {
        let mut process = Process::spawn_with_stdin(
            &find_program("openssl"),
            &[
                "s_server",
                "-accept",
                "127.0.0.1:0",
                "-cert",
                certs.cert.to_str().unwrap(),
                "-key",
                certs.key.to_str().unwrap(),
                version,
            ],
            &[],
        )?;
        let line = process.wait_for("ACCEPT").await?;
        let port = line.rsplit(':').next().unwrap().trim().parse()?;
        Ok(Self { process, port })
    }
}

/// An agent binary dialling `wss://localhost:PORT`, trusting `ca`, with the fake key in
/// `OUTPOST_AGENT_KEY`, a 2 s connect timeout and fast retries.
fn agent(port: u16, ca: &Certs) -> anyhow::Result<(Process, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "relay_url = \"wss://localhost:{port}\"\nca_file = {:?}\n\
             [tunnel]\nconnect_timeout = \"2s\"\nreconnect_min = \"100ms\"\nreconnect_max = \"300ms\"\n\
             [servers.cat]\ntype = \"stdio\"\ncommand = \"/bin/cat\"\n",
            ca.ca
        ),
    )?;
    let process = Process::spawn(
        &binary("outpost-agent"),
        &["--config", config.to_str().unwrap()],
        &[("OUTPOST_AGENT_KEY", KEY)],
    )?;
    Ok((process, dir))
}

/// Waits until `needle` appears `n` times in the output (30 s at most).
async fn wait_for_count(process: &Process, needle: &str, n: usize) -> anyhow::Result<()> {
    let start = Instant::now();
    while process.output().matches(needle).count() < n {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(30),
            "{needle:?} not seen {n} times within 30 s; output:\n{}",
            process.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Runs the agent against `server` and checks the refusal: the TLS error names `cause`, the
/// agent retried (a second failure after `reconnecting`) and is still running, it never
/// connected, and the server printed no part of the key.
async fn assert_refused(
    what: &str,
    mut server: TlsServer,
    trusted: &Certs,
    cause: &[&str],
) -> anyhow::Result<()> {
    let (mut agent, _dir) = agent(server.port, trusted)?;
    wait_for_count(&agent, "cannot establish the tunnel", 2).await?;
    let log = agent.output();
    let first = log
        .lines()
        .find(|l| l.contains("cannot establish the tunnel"))
        .unwrap();
    assert!(
        first.contains("TLS handshake with localhost failed"),
        "{what}: not reported as a TLS failure: {first}"
    );
    assert!(
        cause.iter().all(|c| first.contains(c)),
        "{what}: the error does not name the cause {cause:?}: {first}"
    );
    assert!(log.contains("reconnecting after a delay"), "{what}: {log}");
    assert!(!log.contains("tunnel established"), "{what}: {log}");
    assert!(agent.pid().is_some(), "{what}: the agent exited");
    assert_eq!(agent.terminate().await?, Some(0), "{what}: {log}");

    // Everything the server decrypted or reported is in its output.
    let seen = server.process.output();
    assert!(
        !seen.contains(KEY_SECRET) && !seen.to_lowercase().contains("authorization"),
        "{what}: the server received the key:\n{seen}"
    );
    server.process.terminate().await?;
    let reason = first
        .split("failed: ")
        .nth(1)
        .unwrap_or(first)
        .trim_end_matches(['"', ' ']);
    println!(
        "{what}: refused with {reason:?}, retried, never connected; the server never saw the key"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_a_good_server_does_receive_the_key() -> anyhow::Result<()> {
    let certs = Certs::generate()?;
    let mut server = TlsServer::start(&certs, "-tls1_3").await?;
    let (mut agent, _dir) = agent(server.port, &certs)?;
    // The TLS handshake succeeds and the agent sends its upgrade request, key included,
    // which s_server decrypts and prints. It never answers, so the agent times out.
    let line = server.process.wait_for(KEY_SECRET).await?;
    assert!(
        line.to_lowercase().contains("authorization: bearer"),
        "{line}"
    );
    let error = agent.wait_for("cannot establish the tunnel").await?;
    // Today's wording, or the one that names the step the dial was in.
    assert!(
        error.contains("connecting took longer than 2s") || error.contains("no progress within 2s"),
        "{error}"
    );
    assert_eq!(agent.terminate().await?, Some(0));
    server.process.terminate().await?;
    println!(
        "control: after a good handshake s_server printed {line:?}: absence of the key below is meaningful"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_offering_only_tls12_is_refused() -> anyhow::Result<()> {
    let certs = Certs::generate()?;
    let server = TlsServer::start(&certs, "-tls1_2").await?;
    assert_refused("TLS 1.2 only", server, &certs, &["ProtocolVersion"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_with_a_certificate_from_an_unknown_ca_is_refused() -> anyhow::Result<()> {
    let trusted = Certs::generate()?;
    // As a TLS-inspecting middlebox would present: a CA the agent was never told to trust.
    let stranger = Certs::from_ca_named("Corporate TLS inspection CA")?;
    let server = TlsServer::start(&stranger, "-tls1_3").await?;
    assert_refused(
        "unknown CA",
        server,
        &trusted,
        &["invalid peer certificate", "UnknownIssuer"],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_with_a_certificate_for_another_name_is_refused() -> anyhow::Result<()> {
    let other = Certs::for_names(&["relay.example.com"])?;
    let server = TlsServer::start(&other, "-tls1_3").await?;
    assert_refused(
        "wrong name",
        server,
        &other,
        &[
            "invalid peer certificate",
            "not valid for name",
            "localhost",
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_with_an_expired_certificate_is_refused() -> anyhow::Result<()> {
    let expired = Certs::expired()?;
    let server = TlsServer::start(&expired, "-tls1_3").await?;
    assert_refused(
        "expired certificate",
        server,
        &expired,
        &["invalid peer certificate", "expired"],
    )
    .await
}
