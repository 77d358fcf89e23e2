//! The relay records usage, never content. Canary strings travel as a tool argument and
//! as a tool result through the real binaries; afterwards none of them is in the relay's
//! SQLite files (the database, its WAL and shared memory) or in its log at trace level,
//! while the usage rows are there.

use std::path::Path;

use outpost_test_support::{
    Certs, HttpMcpServer, McpClient, Process, binary, http_client, server_everything,
};
use serde_json::json;

const ARGUMENT_CANARY: &str = "canary-argument-7f3c9d1e";
const RESULT_CANARY: &str = "canary-result-b84e2a06";
const HTTP_ARGUMENT_CANARY: &str = "canary-http-argument-51d0c7aa";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canaries_reach_the_client_but_not_the_relays_store_or_logs() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = Certs::generate()?;
    let data = dir.path().join("data");
    let relay_bin = binary("outpost-relay");
    let data_arg = data.to_str().unwrap();

    let mut init = Process::spawn(
        &relay_bin,
        &["--data-dir", data_arg, "init", "--org", "acme"],
        &[],
    )?;
    assert_eq!(init.wait().await?, Some(0));
    let client_key = init.output().lines().last().unwrap().trim().to_owned();
    assert!(client_key.starts_with("pk_live_"));
    let mut keys = Process::spawn(
        &relay_bin,
        &[
            "--data-dir",
            data_arg,
            "keys",
            "create",
            "--org",
            "acme",
            "--agent",
            "laptop",
            "--quiet",
        ],
        &[],
    )?;
    assert_eq!(keys.wait().await?, Some(0));
    let agent_key_file = dir.path().join("agent.key");
    std::fs::write(&agent_key_file, keys.output().trim())?;

    let upstream = HttpMcpServer::spawn(RESULT_CANARY).await?;
    let relay_config = dir.path().join("relay.toml");
    std::fs::write(
        &relay_config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {data:?}\n[tls]\ncert_file = {:?}\nkey_file = {:?}\n[usage]\nflush_interval = \"20ms\"\n",
            certs.cert, certs.key
        ),
    )?;
    let mut relay = Process::spawn(
        &relay_bin,
        &["--config", relay_config.to_str().unwrap(), "serve"],
        &[("LOG_LEVEL", "trace")],
    )?;
    let listening = relay.wait_for("outpost-relay listening on").await?;
    let addr = listening.rsplit(' ').next().unwrap().to_owned();
    let port = addr.rsplit(':').next().unwrap();

    let (node, script) = server_everything();
    let agent_config = dir.path().join("agent.toml");
    std::fs::write(
        &agent_config,
        format!(
            "relay_url = \"wss://localhost:{port}\"\nkey_file = {agent_key_file:?}\nca_file = {:?}\n\
             [servers.everything]\ntype = \"stdio\"\ncommand = {node:?}\nargs = [{script:?}, \"stdio\"]\n\
             [servers.rmcp]\ntype = \"http\"\nurl = \"{}\"\n",
            certs.ca, upstream.url
        ),
    )?;
    let mut agent = Process::spawn(
        &binary("outpost-agent"),
        &["--config", agent_config.to_str().unwrap()],
        &[],
    )?;
    agent.wait_for("tunnel established").await?;
    relay.wait_for("agent connected").await?;

    let http = http_client(&certs);
    let url = |server: &str| format!("https://localhost:{port}/mcp/laptop/{server}");
    let mut everything = McpClient::new(http.clone(), url("everything"), &client_key);
    everything.initialize().await?;
    let echo = everything
        .call_tool("echo", json!({"message": ARGUMENT_CANARY}))
        .await?;
    assert_eq!(
        echo.result()?["content"][0]["text"],
        format!("Echo: {ARGUMENT_CANARY}")
    );
    let mut rmcp = McpClient::new(http, url("rmcp"), &client_key);
    rmcp.initialize().await?;
    let fortune = rmcp.call_tool("fortune", json!({})).await?;
    assert_eq!(fortune.result()?["content"][0]["text"], RESULT_CANARY);
    let echo = rmcp
        .call_tool("echo", json!({"message": HTTP_ARGUMENT_CANARY}))
        .await?;
    assert!(echo.result()?.to_string().contains(HTTP_ARGUMENT_CANARY));

    // While running: the usage rows are in (the WAL holds them), the canaries are not.
    let store = outpost_relay::store::SqliteStore::open(&data.join("outpost.db")).await?;
    let usage = wait_for_usage(&store, 5).await?;
    assert!(usage.iter().any(|u| u.tool.as_deref() == Some("fortune")));
    assert!(
        usage
            .iter()
            .any(|u| u.tool.as_deref() == Some("echo") && u.server == "everything")
    );
    store.close().await;
    assert_no_canary_in_files(&data)?;

    let code = agent.terminate().await?;
    assert_eq!(
        code,
        Some(0),
        "the agent exits cleanly on SIGTERM:\n{}",
        agent.output()
    );
    assert_eq!(
        relay.terminate().await?,
        Some(0),
        "the relay exits cleanly on SIGTERM"
    );
    assert_no_canary_in_files(&data)?;

    let log = relay.output();
    assert!(
        log.contains("TRACE"),
        "the relay really logged at trace level"
    );
    assert!(log.contains("agent connected") && log.contains("relay stopped"));
    // A session dispatcher's events name the session's agent and server (its span is made
    // per event, not per session).
    assert!(
        log.lines()
            .any(|line| line.contains("session dispatcher stopped")
                && line.contains("agent=laptop")
                && line.contains("server=everything")),
        "no dispatcher event in its session's span:\n{log}"
    );
    for canary in [ARGUMENT_CANARY, RESULT_CANARY, HTTP_ARGUMENT_CANARY] {
        let leaks: Vec<&str> = log.lines().filter(|l| l.contains(canary)).collect();
        assert!(
            leaks.is_empty(),
            "{canary} in the relay's log:\n{}",
            leaks.join("\n")
        );
    }
    assert!(
        !log.contains(&client_key["pk_live_".len()..]),
        "the client key in the relay's log"
    );

    // The control plane's tables too: the audit trail holds the agent's connection and
    // the keys' creation, exported in full, and neither a canary nor key material.
    let mut export = Process::spawn(
        &relay_bin,
        &["--data-dir", data_arg, "--org", "acme", "audit", "export"],
        &[],
    )?;
    assert_eq!(export.wait().await?, Some(0), "{}", export.output());
    let trail = export.output();
    assert!(
        trail.contains("\"agent.connected\"") && trail.contains("\"key.created\""),
        "{trail}"
    );
    for secret in [
        ARGUMENT_CANARY,
        RESULT_CANARY,
        HTTP_ARGUMENT_CANARY,
        &client_key[8..],
    ] {
        assert!(
            !trail.contains(secret),
            "{secret} in the audit trail:\n{trail}"
        );
    }
    let agent_key = std::fs::read_to_string(&agent_key_file)?;
    assert!(
        !trail.contains(&agent_key.trim()[8..]),
        "the agent key in the audit trail"
    );
    upstream.stop().await;
    Ok(())
}

fn assert_no_canary_in_files(data: &Path) -> anyhow::Result<()> {
    let mut checked = 0;
    for entry in std::fs::read_dir(data)? {
        let path = entry?.path();
        let bytes = std::fs::read(&path)?;
        for canary in [ARGUMENT_CANARY, RESULT_CANARY, HTTP_ARGUMENT_CANARY] {
            assert!(
                !bytes.windows(canary.len()).any(|w| w == canary.as_bytes()),
                "{canary} found in {}",
                path.display()
            );
        }
        checked += 1;
    }
    assert!(checked >= 2, "the database and the pepper at least");
    Ok(())
}

async fn wait_for_usage(
    store: &outpost_relay::store::SqliteStore,
    count: usize,
) -> anyhow::Result<Vec<outpost_relay::store::UsageEvent>> {
    use outpost_relay::store::Store;
    let orgs = store.organisations().await?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let usage = store.usage_since(&orgs[0].id, 0).await?;
        if usage.len() >= count || tokio::time::Instant::now() > deadline {
            return Ok(usage);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
