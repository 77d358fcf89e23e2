//! A long, silent call completes: nothing on the path (client to relay, the tunnel, the
//! agent to its upstream) has an idle timeout, and SSE keep-alive comments hold the
//! client's connection open. Scaled down: with a keep-alive every 250 ms, a 12 s call
//! spans 48 keep-alive periods, as a 12-minute call does at the default 15 s. Both
//! upstream kinds run at once: Streamable HTTP (rmcp) and stdio.

use std::time::Duration;

use outpost_test_support::{HttpMcpServer, agent, relay};
use serde_json::json;

const CALL: Duration = Duration::from_secs(12);

/// Answers `initialize`, then answers every `tools/call` after `$SLEEP` seconds of
/// silence.
const SILENT: &str = r#"
while read -r line; do
  id=$(printf '%s' "$line" | sed -n 's/.*"id":\([0-9]*\).*/\1/p')
  case "$line" in
    *'"initialize"'*)
      echo "{\"jsonrpc\":\"2.0\",\"id\":$id,\"result\":{\"protocolVersion\":\"2025-06-18\",\"capabilities\":{\"tools\":{}},\"serverInfo\":{\"name\":\"silent\",\"version\":\"1\"}}}" ;;
    *'"tools/call"'*)
      sleep "$SLEEP"
      echo "{\"jsonrpc\":\"2.0\",\"id\":$id,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"done after silence\"}]}}" ;;
  esac
done
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_silent_call_completes_over_keep_alives() -> anyhow::Result<()> {
    let keepalive = Duration::from_millis(250);
    let relay = relay()
        .sse_keepalive(keepalive)
        .heartbeat(Duration::from_millis(500))
        .spawn()
        .await?;
    let http = HttpMcpServer::spawn("unused").await?;
    let sleep = CALL.as_secs().to_string();
    let agent = agent(&relay, "site")
        .http("web", &http.url)
        .stdio("shell", "/bin/sh", &["-c", SILENT], &[("SLEEP", &sleep)])
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let mut web = relay.mcp_client(&key, "site", "web");
    let mut shell = relay.mcp_client(&key, "site", "shell");
    web.initialize().await?;
    shell.initialize().await?;

    let started = tokio::time::Instant::now();
    let millis = u64::try_from(CALL.as_millis())?;
    let (web_answer, shell_answer) = tokio::join!(
        // No progress: the upstream says nothing until its answer.
        web.call_tool("slow", json!({"millis": millis, "steps": 0})),
        shell.call_tool("wait", json!({})),
    );
    let (web_answer, shell_answer) = (web_answer?, shell_answer?);
    assert!(started.elapsed() >= CALL);
    assert!(
        web_answer.result()?["content"][0]["text"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{:?}",
        web_answer.messages
    );
    assert_eq!(
        shell_answer.result()?["content"][0]["text"],
        "done after silence"
    );
    // Keep-alives flowed the whole time (allowing for scheduling slack on a busy machine).
    let expected = (CALL.as_millis() / keepalive.as_millis()) as usize;
    for answer in [&web_answer, &shell_answer] {
        assert!(
            answer.comments >= expected / 2,
            "{} keep-alive comments in a {CALL:?} call, expected about {expected}",
            answer.comments
        );
    }
    agent.stop().await;
    http.stop().await;
    relay.stop().await;
    Ok(())
}
