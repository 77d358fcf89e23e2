//! The official Python MCP SDK, as an AI client would use it, calls real MCP servers
//! through a real relay and agent: server-everything over stdio and an rmcp server over
//! Streamable HTTP. Initialize, tools/list, tools/call, and a long call whose progress
//! notifications reach the client as they happen.

use outpost_test_support::{HttpMcpServer, TestRelay, agent, python, relay, workspace_root};
use serde_json::Value;

async fn run_python(
    relay: &TestRelay,
    key: &str,
    server: &str,
    scenario: &str,
) -> anyhow::Result<Value> {
    let script = workspace_root().join("test-support/python/sdk_client.py");
    let output = tokio::process::Command::new(python())
        .arg(script)
        .env("OUTPOST_URL", relay.mcp_url("laptop", server))
        .env("OUTPOST_KEY", key)
        .env("OUTPOST_CA", &relay.state.certs.ca)
        .env("SCENARIO", scenario)
        .env("CANARY", "hello from python")
        .kill_on_drop(true)
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "python client failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_reaches_server_everything_over_stdio() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let agent = agent(&relay, "laptop")
        .server_everything("everything")
        .spawn()
        .await?;
    let key = relay.client_key().await?;

    let report = run_python(&relay, &key, "everything", "everything").await?;

    assert_eq!(report["session_id_set"], true);
    // The SDK proposes its newest stateful revision and server-everything accepts it.
    let version = report["protocol_version"].as_str().unwrap();
    assert!(["2025-06-18", "2025-11-25"].contains(&version), "{version}");
    let tools: Vec<&str> = report["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        tools.contains(&"echo") && tools.contains(&"trigger-long-running-operation"),
        "{tools:?}"
    );
    assert_eq!(report["echo"], "Echo: hello from python");
    assert_eq!(report["echo_is_error"], false);
    assert!(
        report["long"]
            .as_str()
            .unwrap()
            .contains("Long running operation completed")
    );
    let progress: Vec<f64> = report["progress"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    assert_eq!(
        progress,
        vec![1.0, 2.0, 3.0, 4.0],
        "every progress notification, in order"
    );

    let usage = relay.wait_for_usage(4).await?;
    let calls: Vec<_> = usage.iter().filter(|u| u.method == "tools/call").collect();
    assert_eq!(calls.len(), 2);
    assert!(calls.iter().any(|u| u.tool.as_deref() == Some("echo")
        && u.agent == "laptop"
        && u.server == "everything"));
    assert!(usage.iter().all(|u| u.bytes_in > 0 && u.bytes_out > 0));
    agent.stop().await;
    relay.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_reaches_a_streamable_http_server() -> anyhow::Result<()> {
    let upstream = HttpMcpServer::spawn("fortune").await?;
    let relay = relay().spawn().await?;
    let agent = agent(&relay, "laptop")
        .http("rmcp", &upstream.url)
        .spawn()
        .await?;
    let key = relay.client_key().await?;

    let report = run_python(&relay, &key, "rmcp", "rmcp").await?;

    let tools: Vec<&str> = report["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(tools, vec!["big", "echo", "fortune", "slow"]);
    assert_eq!(report["echo"], "Echo: hello from python");
    assert_eq!(report["long"], "slept 800 ms");
    let progress: Vec<f64> = report["progress"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    assert_eq!(progress, vec![1.0, 2.0, 3.0, 4.0]);
    // A 3 MiB result, which the agent and the relay each send on as it arrives.
    assert_eq!(report["big_len"], 3 * 1024 * 1024 + 7);
    assert_eq!(report["big_is_error"], false);
    assert_eq!(report["after_big"], "Echo: after big");
    agent.stop().await;
    relay.stop().await;
    upstream.stop().await;
    Ok(())
}
