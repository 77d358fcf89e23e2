//! A 2025-era client (the Python SDK 1.x) on a 2026-era server (the conformance target,
//! over Streamable HTTP and over stdio), bridged by the relay: `initialize` is answered
//! from `server/discover`, every request goes upstream as a stateless request, and the
//! server's Multi Round-Trip input requests reach the client as sampling and elicitation
//! requests whose answers go back as `inputResponses`.

use outpost_test_support::conformance::{Target, node22};
use outpost_test_support::{TestRelay, agent, python, relay, workspace_root};
use serde_json::Value;

const TARGET: &str = "tests/conformance-2026/server-2026.mjs";

async fn run(relay: &TestRelay, key: &str, server: &str) -> anyhow::Result<Value> {
    let output = tokio::process::Command::new(python())
        .arg(workspace_root().join("test-support/python/bridged_client.py"))
        .env("OUTPOST_URL", relay.mcp_url("site", server))
        .env("OUTPOST_KEY", key)
        .env("OUTPOST_CA", &relay.state.certs.ca)
        .kill_on_drop(true)
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "bridged client failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

fn check(report: &Value) {
    assert_eq!(report["session_id_set"], true, "{report}");
    let version = report["protocol_version"].as_str().unwrap();
    assert!(version.starts_with("2025-"), "{report}");
    assert!(
        report["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "test_simple_text"),
        "{report}"
    );
    assert_eq!(
        report["simple"],
        "This is a simple text response for testing."
    );
    assert_eq!(report["elicited"], "Hello, Ada!", "{report}");
    assert_eq!(report["sampled"], "Sampling said: Paris", "{report}");
    assert_eq!(
        report["asked"],
        serde_json::json!(["elicitation", "sampling"]),
        "{report}"
    );
    assert_eq!(
        report["progress"].as_array().map(Vec::len),
        Some(3),
        "{report}"
    );
    assert!(report["prompt"].as_str().is_some_and(|p| !p.is_empty()));
    assert!(report["resource"].as_str().is_some_and(|r| !r.is_empty()));
    assert_eq!(report["ping"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2025_client_uses_a_2026_server_through_the_bridge() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let target = Target::start(TARGET).await?;
    let node = node22();
    let script = workspace_root().join(TARGET);
    let agent = agent(&relay, "site")
        .http("web", &target.url)
        .stdio(
            "local",
            node.to_str().unwrap(),
            &[script.to_str().unwrap(), "--stdio"],
            &[],
        )
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let over_http = run(&relay, &key, "web").await?;
    check(&over_http);
    let over_stdio = run(&relay, &key, "local").await?;
    check(&over_stdio);
    agent.stop().await;
    relay.stop().await;
    Ok(())
}
