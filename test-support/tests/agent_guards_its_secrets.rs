//! The agent binary keeps credentials on site: a stdio server's environment holds exactly
//! what the configuration names (resolved from `${env:...}`), never the agent's own key or
//! anything else of the agent's environment; and the agent talks to no relay whose
//! certificate it cannot verify.

use outpost_test_support::{Certs, McpClient, Process, binary, relay, server_everything};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdio_server_gets_only_the_environment_its_config_names() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let agent_key = relay.agent_key("laptop").await?;
    let dir = tempfile::tempdir()?;
    let (node, script) = server_everything();
    let config = dir.path().join("agent.toml");
    // The file names a relay that does not exist; the --relay-url flag overrides it.
    std::fs::write(
        &config,
        format!(
            "relay_url = \"wss://nowhere.invalid\"\nca_file = {:?}\n\
             [servers.everything]\ntype = \"stdio\"\ncommand = {node:?}\nargs = [{script:?}, \"stdio\"]\n\
             env = {{ GREETING = \"${{env:GREETING_SOURCE}}\" }}\n",
            relay.state.certs.ca
        ),
    )?;
    let relay_url = relay.tunnel_url();
    let mut agent = Process::spawn(
        &binary("outpost-agent"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--relay-url",
            &relay_url,
        ],
        &[
            ("OUTPOST_AGENT_KEY", agent_key.as_str()),
            ("GREETING_SOURCE", "hello-from-the-config"),
            ("UNRELATED_SECRET", "must-not-leak"),
        ],
    )?;
    agent.wait_for("tunnel established").await?;

    let key = relay.client_key().await?;
    let mut client = McpClient::new(
        relay.http_client(),
        relay.mcp_url("laptop", "everything"),
        &key,
    );
    client.initialize().await?;
    let response = client.call_tool("get-env", json!({})).await?;
    let text = response.result()?["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    let env: Value = serde_json::from_str(&text)?;
    let names: Vec<&str> = env
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    // The child got the variable; its value, a resolved `${env:}` reference, is a secret
    // the agent holds, so its echo never leaves the site.
    assert_eq!(env["GREETING"], outpost_agent::redact::MARKER, "{text}");
    assert!(!text.contains("hello-from-the-config"), "{text}");
    assert!(
        !text.contains(&agent_key) && !text.contains(&agent_key[8..]),
        "the agent key reached the child"
    );
    assert!(
        !text.contains("must-not-leak"),
        "unnamed variables reached the child: {names:?}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("OUTPOST_")),
        "{names:?}"
    );
    assert!(
        names.len() <= 3,
        "only GREETING and what node itself sets: {names:?}"
    );
    assert_eq!(agent.terminate().await?, Some(0));
    relay.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_refuses_a_relay_signed_by_a_ca_it_does_not_trust() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let agent_key = relay.agent_key("laptop").await?;
    let stranger = Certs::generate()?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "relay_url = \"{}\"\nca_file = {:?}\n[servers.cat]\ntype = \"stdio\"\ncommand = \"/bin/cat\"\n",
            relay.tunnel_url(),
            stranger.ca
        ),
    )?;
    let mut agent = Process::spawn(
        &binary("outpost-agent"),
        &["--config", config.to_str().unwrap()],
        &[("OUTPOST_AGENT_KEY", agent_key.as_str())],
    )?;
    let line = agent
        .wait_for("TLS handshake with localhost failed")
        .await?;
    assert!(
        line.contains("UnknownIssuer") || line.contains("invalid peer certificate"),
        "{line}"
    );
    assert!(!agent.output().contains("tunnel established"));
    assert_eq!(agent.terminate().await?, Some(0));
    relay.stop().await;
    Ok(())
}
