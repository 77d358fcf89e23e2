//! The agent's local policy is the ceiling, whatever the relay asks: hidden tools are
//! absent from lists and refused on call, a server's concurrency cap and call timeout
//! hold. Crashed and hung stdio servers are restarted without losing the client's session,
//! and leave no process behind. The health port tells the truth about all of it.

use std::time::Duration;

use outpost_agent::policy::ToolPolicy;
use outpost_test_support::{HttpMcpServer, agent, relay};
use serde_json::{Value, json};

fn policy(deny: &[&str], max: Option<usize>, timeout: Option<Duration>) -> ToolPolicy {
    ToolPolicy::new(
        vec![],
        deny.iter().map(|s| (*s).to_owned()).collect(),
        max,
        timeout,
    )
    .unwrap()
}

fn tool_names(result: &Value) -> Vec<String> {
    result["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    outpost_agent::health_get(addr, path).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_tools_are_absent_from_lists_and_refused_on_call() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let agent = agent(&relay, "site")
        .server_everything("everything")
        .policy("everything", policy(&["get-env", "*-long-*"], None, None))
        .health()
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let mut client = relay.mcp_client(&key, "site", "everything");
    client.initialize().await?;
    let tools = tool_names(&client.request("tools/list", json!({})).await?.result()?);
    assert!(tools.contains(&"echo".to_owned()), "{tools:?}");
    assert!(!tools.contains(&"get-env".to_owned()), "{tools:?}");
    assert!(!tools.iter().any(|t| t.contains("-long-")), "{tools:?}");

    let refused = client.call_tool("get-env", json!({})).await?;
    assert_eq!(refused.error_code(), Some(-32602), "{:?}", refused.messages);
    let echoed = client.call_tool("echo", json!({"message": "hi"})).await?;
    assert!(
        echoed.result()?["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("hi")
    );

    let (_, metrics) = get(agent.health.unwrap(), "/metrics").await;
    assert!(
        metrics
            .contains(r#"outpost_agent_policy_denials_total{server="everything",reason="tool"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"outpost_agent_calls_total{server="everything",tool="echo",status="ok"} 1"#
        ),
        "{metrics}"
    );
    agent.stop().await;
    relay.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_cap_holds_across_sessions() -> anyhow::Result<()> {
    let upstream = HttpMcpServer::spawn("f").await?;
    let relay = relay().spawn().await?;
    let agent = agent(&relay, "site")
        .http("rmcp", &upstream.url)
        .policy("rmcp", policy(&[], Some(1), None))
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let mut first = relay.mcp_client(&key, "site", "rmcp");
    first.initialize().await?;
    let mut second = relay.mcp_client(&key, "site", "rmcp");
    second.initialize().await?;
    let slow = tokio::spawn(async move {
        first
            .call_tool("slow", json!({"millis": 1500, "steps": 1}))
            .await
    });
    upstream.wait_for_slow_calls(1).await;
    let busy = second.call_tool("echo", json!({"message": "x"})).await?;
    assert_eq!(busy.error_code(), Some(-32016), "{:?}", busy.messages);
    assert!(slow.await??.result().is_ok());
    // The slot is free again.
    let echoed = second.call_tool("echo", json!({"message": "x"})).await?;
    assert!(echoed.result().is_ok(), "{:?}", echoed.messages);
    agent.stop().await;
    relay.stop().await;
    upstream.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_over_the_agents_timeout_is_answered_and_cancelled_upstream() -> anyhow::Result<()> {
    let upstream = HttpMcpServer::spawn("f").await?;
    let relay = relay().spawn().await?;
    let agent = agent(&relay, "site")
        .http("rmcp", &upstream.url)
        .policy("rmcp", policy(&[], None, Some(Duration::from_millis(300))))
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let mut client = relay.mcp_client(&key, "site", "rmcp");
    client.initialize().await?;
    let response = client
        .call_tool("slow", json!({"millis": 60_000, "steps": 1}))
        .await?;
    assert_eq!(
        response.error_code(),
        Some(-32014),
        "{:?}",
        response.messages
    );
    // The upstream got the cancellation and stopped the tool.
    tokio::time::timeout(Duration::from_secs(10), upstream.wait_for_no_slow_calls()).await?;
    let echoed = client
        .call_tool("echo", json!({"message": "after"}))
        .await?;
    assert!(echoed.result().is_ok(), "{:?}", echoed.messages);
    agent.stop().await;
    relay.stop().await;
    upstream.stop().await;
    Ok(())
}

/// A stdio server that crashes on its first `tools/call` and works after a restart (the
/// marker file remembers the crash). It writes each run's PID to `pids`.
const CRASHES_ONCE: &str = r#"
echo $$ >> "$STATE/pids"
while read -r line; do
  id=$(printf '%s' "$line" | sed -n 's/.*"id":\([0-9]*\).*/\1/p')
  case "$line" in
    *'"initialize"'*)
      echo "{\"jsonrpc\":\"2.0\",\"id\":$id,\"result\":{\"protocolVersion\":\"2025-06-18\",\"capabilities\":{\"tools\":{}},\"serverInfo\":{\"name\":\"flaky\",\"version\":\"1\"}}}" ;;
    *'"tools/call"'*)
      if [ ! -e "$STATE/crashed" ]; then touch "$STATE/crashed"; exit 7; fi
      echo "{\"jsonrpc\":\"2.0\",\"id\":$id,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"fine\"}]}}" ;;
  esac
done
"#;

/// Answers `initialize`, then never answers anything again and ignores cancellation.
const HANGS: &str = r#"
echo $$ >> "$STATE/pids"
read -r line
id=$(printf '%s' "$line" | sed -n 's/.*"id":\([0-9]*\).*/\1/p')
echo "{\"jsonrpc\":\"2.0\",\"id\":$id,\"result\":{\"protocolVersion\":\"2025-06-18\",\"capabilities\":{\"tools\":{}},\"serverInfo\":{\"name\":\"stuck\",\"version\":\"1\"}}}"
trap '' TERM
while true; do sleep 1; done
"#;

fn pids(dir: &std::path::Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("pids"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Whether a process exists at all: a zombie still has its /proc entry.
fn exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_server_fails_its_call_and_is_restarted_within_the_session() -> anyhow::Result<()>
{
    let state = tempfile::tempdir()?;
    let relay = relay().spawn().await?;
    let agent = agent(&relay, "site")
        .stdio(
            "flaky",
            "/bin/sh",
            &["-c", CRASHES_ONCE],
            &[("STATE", state.path().to_str().unwrap())],
        )
        .health()
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let mut client = relay.mcp_client(&key, "site", "flaky");
    client.initialize().await?;
    let crashed = client.call_tool("work", json!({})).await?;
    assert_eq!(crashed.error_code(), Some(-32012), "{:?}", crashed.messages);
    // Same session, restarted server, handshake replayed by the agent.
    let fine = client.call_tool("work", json!({})).await?;
    assert_eq!(fine.result()?["content"][0]["text"], "fine");
    let runs = pids(state.path());
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(!exists(runs[0]), "the crashed server was not reaped");
    let (_, metrics) = get(agent.health.unwrap(), "/metrics").await;
    assert!(
        metrics.contains(r#"outpost_agent_upstream_restarts_total{server="flaky"} 1"#),
        "{metrics}"
    );
    assert_eq!(client.delete().await?, 204);
    agent.stop().await;
    relay.stop().await;
    for pid in pids(state.path()) {
        assert!(!exists(pid), "server {pid} outlived its session");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_server_times_out_is_killed_and_leaves_no_process() -> anyhow::Result<()> {
    let state = tempfile::tempdir()?;
    let relay = relay().spawn().await?;
    let agent = agent(&relay, "site")
        .stdio(
            "stuck",
            "/bin/sh",
            &["-c", HANGS],
            &[("STATE", state.path().to_str().unwrap())],
        )
        .policy("stuck", policy(&[], None, Some(Duration::from_millis(500))))
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let mut client = relay.mcp_client(&key, "site", "stuck");
    client.initialize().await?;
    let first = pids(state.path())[0];
    let timed_out = client.call_tool("work", json!({})).await?;
    assert_eq!(
        timed_out.error_code(),
        Some(-32014),
        "{:?}",
        timed_out.messages
    );
    // Silent for another timeout after that: killed (it ignores SIGTERM), reaped, and a
    // fresh one started for the session.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while exists(first) || pids(state.path()).len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hung server was not replaced"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.stop().await;
    relay.stop().await;
    for pid in pids(state.path()) {
        assert!(!exists(pid), "server {pid} outlived the agent");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_follow_the_tunnel() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let mut agent = agent(&relay, "site")
        .server_everything("everything")
        .health()
        .reconnect(Duration::from_secs(30), Duration::from_secs(30))
        .spawn()
        .await?;
    let addr = agent.health.unwrap();
    assert_eq!(get(addr, "/livez").await.0, 200);
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(
        (status, body.trim()),
        (200, "ready: tunnel registered as site")
    );
    let (_, metrics) = get(addr, "/metrics").await;
    assert!(metrics.contains("outpost_agent_tunnel_up 1"), "{metrics}");
    let state = relay.stop().await;
    agent.wait_disconnected().await?;
    assert_eq!(get(addr, "/readyz").await.0, 503);
    assert_eq!(get(addr, "/livez").await.0, 200);
    let (_, metrics) = get(addr, "/metrics").await;
    assert!(metrics.contains("outpost_agent_tunnel_up 0"), "{metrics}");
    assert!(
        metrics.contains("outpost_agent_reconnects_total 1"),
        "{metrics}"
    );
    drop(state);
    agent.stop().await;
    Ok(())
}
