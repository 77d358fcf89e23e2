//! The aggregated endpoint `/mcp`: two agents with two servers each (server-everything on
//! both, the conformance target on one, an rmcp Streamable HTTP server on the other),
//! used by the official Python SDK. Names are prefixed by server, and by agent where two
//! agents have a server of the same name; calls, prompts and resources reach the right
//! upstream; the order is deterministic; a third agent connecting sends `list_changed`.

use std::time::Duration;

use outpost_test_support::conformance::node22;
use outpost_test_support::{HttpMcpServer, agent, python, relay, workspace_root};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_sees_every_server_under_collision_free_names() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let node = node22();
    let conf = workspace_root().join("tests/conformance/server-2025.mjs");
    let alpha = agent(&relay, "alpha")
        .server_everything("everything")
        .stdio(
            "conf",
            node.to_str().unwrap(),
            &[conf.to_str().unwrap(), "--stdio"],
            &[],
        )
        .spawn()
        .await?;
    let fortune = HttpMcpServer::spawn("aggregated fortune").await?;
    let beta = agent(&relay, "beta")
        .server_everything("everything")
        .http("fortune", &fortune.url)
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let state = tempfile::tempdir()?;
    let go = state.path().join("go");

    let mut client = tokio::process::Command::new(python())
        .arg(workspace_root().join("test-support/python/aggregate_client.py"))
        .env("OUTPOST_URL", format!("{}/mcp", relay.base_url()))
        .env("OUTPOST_KEY", &key)
        .env("OUTPOST_CA", &relay.state.certs.ca)
        .env("GO_FILE", &go)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stderr = tokio::io::BufReader::new(client.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    let listed = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = stderr.next_line().await? {
            if line.contains("LISTED") {
                return Ok::<bool, std::io::Error>(true);
            }
            seen.push_str(&line);
            seen.push('\n');
        }
        Ok(false)
    })
    .await??;
    assert!(listed, "the client failed before listing:\n{seen}");

    // A third agent connects: the client hears list_changed and finds its tools.
    let gamma = agent(&relay, "gamma")
        .server_everything("extra")
        .spawn()
        .await?;
    std::fs::write(&go, b"")?;
    let output = tokio::time::timeout(Duration::from_secs(60), client.wait_with_output()).await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "client failed:\n{seen}\n{stdout}");
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap())?;

    assert_eq!(report["server"], "outpost");
    let capabilities: Vec<&str> = report["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for capability in ["tools", "prompts", "resources"] {
        assert!(capabilities.contains(&capability), "{capabilities:?}");
    }
    let tools: Vec<&str> = report["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for name in [
        "alpha__everything__echo",
        "beta__everything__echo",
        "conf__test_simple_text",
        "fortune__fortune",
    ] {
        assert!(tools.contains(&name), "{name} missing from {tools:?}");
    }
    // Deterministic: by agent, then server name (alpha/conf, alpha/everything,
    // beta/everything, beta/fortune), each upstream's own order kept.
    let first_of = |prefix: &str| tools.iter().position(|t| t.starts_with(prefix)).unwrap();
    assert!(first_of("conf__") < first_of("alpha__everything__"));
    assert!(first_of("alpha__everything__") < first_of("beta__everything__"));
    assert!(first_of("beta__everything__") < first_of("fortune__"));
    assert_eq!(report["tools_stable"], true);

    assert_eq!(
        report["echoes"]["alpha__everything__echo"],
        "Echo: via alpha__everything__echo"
    );
    assert_eq!(
        report["echoes"]["beta__everything__echo"],
        "Echo: via beta__everything__echo"
    );
    assert_eq!(report["echoes"]["fortune__echo"], "Echo: via fortune__echo");
    assert_eq!(
        report["conf_simple"],
        "This is a simple text response for testing."
    );
    // As MCP answers an unknown tool: invalid params.
    assert_eq!(report["unknown_error"], -32602);

    let prompts: Vec<&str> = report["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(prompts.contains(&"conf__test_simple_prompt"), "{prompts:?}");
    assert!(
        prompts.iter().any(|p| p.starts_with("alpha__everything__")),
        "{prompts:?}"
    );
    assert!(
        report["prompt_text"].as_str().unwrap().contains("simple"),
        "{report}"
    );
    assert_eq!(
        report["read_uri"],
        "outpost://alpha/conf/test://static-text"
    );
    assert!(
        report["resources"].as_array().unwrap().iter().any(|u| u
            .as_str()
            .unwrap()
            .starts_with("outpost://beta/everything/")),
        "{report}"
    );
    assert!(
        report["templates"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "outpost://alpha/conf/test://template/{id}/data"),
        "{report}"
    );

    assert_eq!(report["list_changed"], true);
    let after: Vec<&str> = report["tools_after"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(after.contains(&"extra__echo"), "{after:?}");

    gamma.stop().await;
    beta.stop().await;
    alpha.stop().await;
    fortune.stop().await;
    relay.stop().await;
    Ok(())
}

/// The official TypeScript SDK through `/mcp`: requests the upstream sends the client
/// (sampling, elicitation) find their way back, progress streams, cancellation reaches
/// the upstream and stops its work, and completion routes by prompt name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_sdk_answers_upstream_requests_through_the_aggregate() -> anyhow::Result<()>
{
    let relay = relay().spawn().await?;
    let node = node22();
    let conf = workspace_root().join("tests/conformance/server-2025.mjs");
    let alpha = agent(&relay, "alpha")
        .stdio(
            "conf",
            node.to_str().unwrap(),
            &[conf.to_str().unwrap(), "--stdio"],
            &[],
        )
        .spawn()
        .await?;
    let fortune = HttpMcpServer::spawn("ts fortune").await?;
    let beta = agent(&relay, "beta")
        .http("fortune", &fortune.url)
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(&node)
            .arg(workspace_root().join("tests/conformance/sdk-client.mjs"))
            .env("OUTPOST_URL", format!("{}/mcp", relay.base_url()))
            .env("OUTPOST_KEY", &key)
            .env("NODE_EXTRA_CA_CERTS", &relay.state.certs.ca)
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "TypeScript client failed:\n{}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap())?;
    assert_eq!(report["server"], "outpost");
    assert_eq!(
        report["sampling"],
        "LLM response: sampled: hello through two hops"
    );
    assert_eq!(report["samplingRequests"], 1);
    assert!(
        report["elicitation"].as_str().unwrap().contains("ada"),
        "{report}"
    );
    assert_eq!(
        report["progress"],
        serde_json::json!([0, 50, 100]),
        "{report}"
    );
    assert_eq!(report["cancelled"], true);
    // The cancellation reached the upstream: its slow call stopped well before its 10 s.
    tokio::time::timeout(Duration::from_secs(5), fortune.wait_for_no_slow_calls())
        .await
        .map_err(|_| anyhow::anyhow!("the upstream kept running the cancelled call"))?;
    assert!(report["prompt"].as_str().unwrap().contains('a'), "{report}");
    assert!(
        report["completion"]
            .as_array()
            .is_some_and(|v| !v.is_empty()),
        "{report}"
    );
    beta.stop().await;
    alpha.stop().await;
    fortune.stop().await;
    relay.stop().await;
    Ok(())
}

/// A client of the 2026 era (the Python SDK 2.x) on `/mcp`, over servers of both eras: a
/// 2026 server over HTTP and 2025 servers over stdio and HTTP. No session: each request is
/// answered from the upstreams it concerns, and a Multi Round-Trip Request's retry finds
/// its server again by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2026_era_client_uses_the_aggregate_across_eras() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let modern =
        outpost_test_support::conformance::Target::start("tests/conformance-2026/server-2026.mjs")
            .await?;
    let alpha = agent(&relay, "alpha")
        .server_everything("everything")
        .http("modern", &modern.url)
        .spawn()
        .await?;
    let fortune = HttpMcpServer::spawn("modern fortune").await?;
    let beta = agent(&relay, "beta")
        .server_everything("everything")
        .http("fortune", &fortune.url)
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(
            outpost_test_support::tools_dir().join("venv-mcp2/bin/python"),
        )
        .arg(workspace_root().join("test-support/python/aggregate_modern_client.py"))
        .env("OUTPOST_URL", format!("{}/mcp", relay.base_url()))
        .env("OUTPOST_KEY", &key)
        .env("OUTPOST_CA", &relay.state.certs.ca)
        .kill_on_drop(true)
        .output(),
    )
    .await??;
    assert!(
        output.status.success(),
        "client failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(report["protocol_version"], "2026-07-28", "{report}");
    assert_eq!(report["server"], "outpost");
    let tools: Vec<&str> = report["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for name in [
        "alpha__everything__echo",
        "beta__everything__echo",
        "fortune__fortune",
        "modern__test_simple_text",
    ] {
        assert!(tools.contains(&name), "{name} missing from {tools:?}");
    }
    assert_eq!(
        report["echoes"]["beta__everything__echo"],
        "Echo: via beta__everything__echo"
    );
    assert_eq!(report["echoes"]["fortune__echo"], "Echo: via fortune__echo");
    assert_eq!(
        report["modern_simple"],
        "This is a simple text response for testing."
    );
    assert_eq!(report["mrtr"], "Hello, Ada!", "{report}");
    assert_eq!(
        report["read_uri"],
        "outpost://alpha/modern/test://static-text"
    );
    beta.stop().await;
    alpha.stop().await;
    fortune.stop().await;
    relay.stop().await;
    Ok(())
}

/// Runs the TypeScript SDK v2 client (2026 era) of `tests/clients-2026`.
async fn ts2_client(
    relay: &outpost_test_support::TestRelay,
    key: &str,
    url: &str,
    scenario: &str,
) -> anyhow::Result<Value> {
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(node22())
            .arg(workspace_root().join("tests/clients-2026/client.mjs"))
            .env("OUTPOST_URL", url)
            .env("OUTPOST_KEY", key)
            .env("NODE_EXTRA_CA_CERTS", &relay.state.certs.ca)
            .env("SCENARIO", scenario)
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "TypeScript v2 client failed:\n{}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_str(stdout.lines().last().unwrap_or("{}"))?)
}

/// The TypeScript SDK v2 (2026 era): on `/mcp` over servers of both eras, and pinned to
/// 2026-07-28 on a 2025 server, whose sampling and elicitation requests the relay turns
/// into Multi Round-Trip input requests that the SDK fulfils.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_sdk_v2_uses_the_aggregate_and_the_bridge() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let modern =
        outpost_test_support::conformance::Target::start("tests/conformance-2026/server-2026.mjs")
            .await?;
    let node = node22();
    let conf = workspace_root().join("tests/conformance/server-2025.mjs");
    let alpha = agent(&relay, "alpha")
        .server_everything("everything")
        .http("modern", &modern.url)
        .stdio(
            "conf",
            node.to_str().unwrap(),
            &[conf.to_str().unwrap(), "--stdio"],
            &[],
        )
        .spawn()
        .await?;
    let fortune = HttpMcpServer::spawn("ts2 fortune").await?;
    let beta = agent(&relay, "beta")
        .http("fortune", &fortune.url)
        .spawn()
        .await?;
    let key = relay.client_key().await?;

    let aggregate = ts2_client(
        &relay,
        &key,
        &format!("{}/mcp", relay.base_url()),
        "aggregate",
    )
    .await?;
    assert_eq!(aggregate["protocolVersion"], "2026-07-28", "{aggregate}");
    assert_eq!(aggregate["server"], "outpost", "{aggregate}");
    assert_eq!(aggregate["legacyEcho"], "Echo: ts2", "{aggregate}");
    assert_eq!(aggregate["fortune"], "ts2 fortune", "{aggregate}");
    assert_eq!(aggregate["mrtr"], "Hello, Ada!", "{aggregate}");

    let pinned = ts2_client(&relay, &key, &relay.mcp_url("alpha", "conf"), "pinned").await?;
    assert_eq!(pinned["protocolVersion"], "2026-07-28", "{pinned}");
    assert_eq!(pinned["sampling"], "LLM response: Paris", "{pinned}");
    assert!(
        pinned["elicitation"].as_str().unwrap_or("").contains("ada"),
        "{pinned}"
    );
    assert_eq!(
        pinned["asked"],
        serde_json::json!(["sampling", "elicitation"]),
        "{pinned}"
    );
    beta.stop().await;
    alpha.stop().await;
    fortune.stop().await;
    relay.stop().await;
    Ok(())
}
