//! The official Python SDK of the current era (2.x, revision 2026-07-28) through the relay:
//! against a 2026-era server it discovers, lists, calls, answers a Multi Round-Trip
//! Request, reads and gets prompts, each request stateless; against 2025-era servers the
//! relay bridges: it answers the discovery from the server's `initialize`, serves each
//! request on a session of its own, and turns the server's sampling and elicitation
//! requests into Multi Round-Trip input requests.

use outpost_test_support::conformance::{Target, node22};
use outpost_test_support::{TestRelay, agent, relay, tools_dir, workspace_root};
use serde_json::Value;

async fn run(relay: &TestRelay, key: &str, server: &str, scenario: &str) -> anyhow::Result<Value> {
    let output = tokio::process::Command::new(tools_dir().join("venv-mcp2/bin/python"))
        .arg(workspace_root().join("test-support/python/modern_client.py"))
        .env("OUTPOST_URL", relay.mcp_url("site", server))
        .env("OUTPOST_KEY", key)
        .env("OUTPOST_CA", &relay.state.certs.ca)
        .env("SCENARIO", scenario)
        .kill_on_drop(true)
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "modern client failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_2026_python_sdk_works_through_the_relay_in_both_eras() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let target = Target::start("tests/conformance-2026/server-2026.mjs").await?;
    let conf = workspace_root().join("tests/conformance/server-2025.mjs");
    let agent = agent(&relay, "site")
        .http("modern", &target.url)
        .server_everything("everything")
        .stdio(
            "conf",
            node22().to_str().unwrap(),
            &[conf.to_str().unwrap(), "--stdio"],
            &[],
        )
        .spawn()
        .await?;
    let key = relay.client_key().await?;

    let modern = run(&relay, &key, "modern", "modern").await?;
    assert_eq!(modern["protocol_version"], "2026-07-28", "{modern}");
    assert!(
        modern["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "test_simple_text"),
        "{modern}"
    );
    assert_eq!(
        modern["simple"],
        "This is a simple text response for testing."
    );
    assert_eq!(modern["mrtr"], "Hello, Ada!", "{modern}");
    assert_eq!(
        modern["elicited"],
        serde_json::json!(["What is your name?"])
    );
    assert!(modern["prompt"].as_str().is_some_and(|p| !p.is_empty()));
    assert!(modern["resource"].as_str().is_some_and(|r| !r.is_empty()));

    // A 2025 server: the relay answers the SDK's discovery itself and bridges each
    // stateless request to a session of its own with the server.
    let legacy = run(&relay, &key, "everything", "legacy").await?;
    assert_eq!(legacy["protocol_version"], "2026-07-28", "{legacy}");
    assert_eq!(legacy["echo"], "Echo: from the modern SDK");

    // Pinned to 2026-07-28 on the 2025 conformance target: its sampling and elicitation
    // requests reach the client as Multi Round-Trip input requests.
    let pinned = run(&relay, &key, "conf", "pinned").await?;
    assert_eq!(pinned["protocol_version"], "2026-07-28", "{pinned}");
    assert_eq!(pinned["sampling"], "LLM response: Paris", "{pinned}");
    assert!(
        pinned["elicitation"].as_str().unwrap().contains("ada"),
        "{pinned}"
    );
    assert_eq!(
        pinned["asked"],
        serde_json::json!(["sampling", "who?"]),
        "{pinned}"
    );
    assert!(pinned["prompt"].as_str().is_some_and(|p| !p.is_empty()));

    agent.stop().await;
    relay.stop().await;
    Ok(())
}
