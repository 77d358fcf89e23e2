//! Many AI clients onto one stdio server configuration. The model: a child process per
//! client session (sessions never share a process, so one client's state, subscriptions
//! and server-initiated requests cannot reach another), capped per server by
//! `max_sessions`, expired with the relay's `session_idle_timeout`, and every process
//! reaped when its session ends: no zombie, no orphan.

use std::path::{Path, PathBuf};
use std::time::Duration;

use outpost_agent::policy::ToolPolicy;
use outpost_test_support::{TestRelay, agent, python, relay, server_everything, workspace_root};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;

/// server-everything behind a shell that records its PID (`exec` keeps it).
const RECORDS_ITS_PID: &str = r#"echo $$ >> "$STATE/pids"; exec "$NODE" "$SCRIPT" stdio"#;

fn pids(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("pids"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Whether a process exists at all: a zombie still has its /proc entry.
fn exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

async fn wait_until_gone(pids: &[u32]) -> Vec<u32> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|p| exists(*p)).collect();
        if left.is_empty() || tokio::time::Instant::now() > deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn everything_with_pids(
    builder: outpost_test_support::AgentBuilder,
    state: &Path,
) -> outpost_test_support::AgentBuilder {
    let (node, script) = server_everything();
    builder.stdio(
        "everything",
        "/bin/sh",
        &["-c", RECORDS_ITS_PID],
        &[
            ("STATE", state.to_str().unwrap()),
            ("NODE", node.to_str().unwrap()),
            ("SCRIPT", script.to_str().unwrap()),
        ],
    )
}

async fn sessions_gauge(addr: std::net::SocketAddr) -> Option<f64> {
    let (_, metrics) = outpost_agent::health_get(addr, "/metrics").await.ok()?;
    metrics
        .lines()
        .find(|l| l.starts_with("outpost_agent_sessions{server=\"everything\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn python_clients(
    relay: &TestRelay,
    key: &str,
    clients: usize,
    go: &PathBuf,
) -> tokio::process::Child {
    tokio::process::Command::new(python())
        .arg(workspace_root().join("test-support/python/many_clients.py"))
        .env("OUTPOST_URL", relay.mcp_url("site", "everything"))
        .env("OUTPOST_KEY", key)
        .env("OUTPOST_CA", &relay.state.certs.ca)
        .env("CLIENTS", clients.to_string())
        .env("GO_FILE", go)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_sdk_clients_get_a_process_each_and_leave_none_behind() -> anyhow::Result<()> {
    const CLIENTS: usize = 50;
    let state = tempfile::tempdir()?;
    let relay = relay().spawn().await?;
    let agent = everything_with_pids(agent(&relay, "site"), state.path())
        .health()
        .spawn()
        .await?;
    let health = agent.health.unwrap();
    let key = relay.client_key().await?;
    let go = state.path().join("go");
    let mut clients = python_clients(&relay, &key, CLIENTS, &go);

    // Every client has initialized and had its first call answered.
    let mut stderr = tokio::io::BufReader::new(clients.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    let opened = tokio::time::timeout(Duration::from_secs(180), async {
        while let Some(line) = stderr.next_line().await? {
            if line.contains("ALL OPEN") {
                return Ok::<bool, std::io::Error>(true);
            }
            seen.push_str(&line);
            seen.push('\n');
        }
        Ok(false)
    })
    .await??;
    assert!(opened, "the clients did not all connect:\n{seen}");
    let running = pids(state.path());
    assert_eq!(running.len(), CLIENTS, "one process per session");
    assert!(running.iter().all(|p| exists(*p)));
    assert_eq!(sessions_gauge(health).await, Some(CLIENTS as f64));

    // Each makes a second call with all 50 open, then closes its session (DELETE).
    std::fs::write(&go, b"")?;
    let output =
        tokio::time::timeout(Duration::from_secs(120), clients.wait_with_output()).await??;
    assert!(output.status.success(), "python clients failed:\n{seen}");
    let report: Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(report["sessions"], CLIENTS, "{report}");
    assert_eq!(report["echoes"], 2 * CLIENTS, "{report}");
    assert_eq!(
        report["echoes_match"], true,
        "each answer reached its own client"
    );

    let left = wait_until_gone(&running).await;
    assert!(
        left.is_empty(),
        "processes left (zombie or orphan): {left:?}"
    );
    assert_eq!(sessions_gauge(health).await, Some(0.0));
    agent.stop().await;
    relay.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_sessions_refuses_the_next_session_and_idle_sessions_expire() -> anyhow::Result<()> {
    let state = tempfile::tempdir()?;
    let relay = relay()
        .session_idle_timeout(Duration::from_secs(5))
        .spawn()
        .await?;
    let policy = ToolPolicy::new(vec![], vec![], None, None)?.with_max_sessions(Some(2));
    let agent = everything_with_pids(agent(&relay, "site"), state.path())
        .policy("everything", policy)
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let mut first = relay.mcp_client(&key, "site", "everything");
    let mut second = relay.mcp_client(&key, "site", "everything");
    first.initialize().await?;
    second.initialize().await?;

    // A third session finds the cap: an error that names the cause, no process started.
    let mut third = relay.mcp_client(&key, "site", "everything");
    let refused = third
        .request(
            "initialize",
            serde_json::json!({"protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "third", "version": "1"}}),
        )
        .await?;
    assert_eq!(refused.error_code(), Some(-32016), "{:?}", refused.messages);
    assert_eq!(pids(state.path()).len(), 2);

    // Both sit idle past the relay's idle timeout: closed, their processes reaped.
    let running = pids(state.path());
    let left = wait_until_gone(&running).await;
    assert!(
        left.is_empty(),
        "idle sessions kept their processes: {left:?}"
    );
    let gone = first
        .call_tool("echo", serde_json::json!({"message": "late"}))
        .await?;
    assert_eq!(gone.status, 404, "an expired session is unknown");

    // Their places are free again.
    let mut fourth = relay.mcp_client(&key, "site", "everything");
    fourth.initialize().await?;
    let echo = fourth
        .call_tool("echo", serde_json::json!({"message": "fourth"}))
        .await?;
    assert_eq!(echo.result()?["content"][0]["text"], "Echo: fourth");
    assert_eq!(fourth.delete().await?, 204);
    agent.stop().await;
    relay.stop().await;
    Ok(())
}
