//! The session's GET stream is resumable like a POST's: a client whose GET connection
//! broke comes back with `Last-Event-ID` and gets the server messages it missed, after the
//! last one it saw, and not that one again. The upstream here is a small stdio server that
//! sends a log notification, unrelated to any request, with each answer; such messages go
//! to the GET stream. The calls are answered as JSON, so no POST stream can carry them.

use outpost_test_support::{McpClient, agent, relay};
use serde_json::{Value, json};

/// Answers `initialize`, and each `tools/call` with a log notification `note ID` first.
const NOTIFIER: &str = r#"
while read -r line; do
  id=$(printf '%s' "$line" | sed -n 's/.*"id":\([0-9]*\).*/\1/p')
  case "$line" in
    *'"initialize"'*)
      echo "{\"jsonrpc\":\"2.0\",\"id\":$id,\"result\":{\"protocolVersion\":\"2025-06-18\",\"capabilities\":{\"tools\":{},\"logging\":{}},\"serverInfo\":{\"name\":\"notifier\",\"version\":\"1\"}}}" ;;
    *'"tools/call"'*)
      echo "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{\"level\":\"info\",\"data\":\"note $id\"}}"
      echo "{\"jsonrpc\":\"2.0\",\"id\":$id,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"noted\"}]}}" ;;
  esac
done
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_get_stream_resumes_after_its_last_event() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let agent = agent(&relay, "laptop")
        .stdio("notifier", "/bin/sh", &["-c", NOTIFIER], &[])
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let mut client = relay.mcp_client(&key, "laptop", "notifier");
    client.initialize().await?;
    let session = client.session.clone().unwrap();
    let url = relay.mcp_url("laptop", "notifier");
    let http = relay.http_client();
    let get = |last: Option<&str>| {
        let mut request = http
            .get(&url)
            .bearer_auth(&key)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", &session);
        if let Some(last) = last {
            request = request.header("last-event-id", last);
        }
        request.send()
    };

    let mut stream = get(None).await?;
    assert_eq!(stream.status(), 200);
    call(&client, 10).await?;
    let (first_id, first) = next_event(&mut stream).await?;
    assert_eq!(first["params"]["data"], "note 10");

    // The connection breaks; the server speaks while the client is away.
    drop(stream);
    call(&client, 11).await?;

    let mut resumed = get(Some(&first_id)).await?;
    assert_eq!(resumed.status(), 200);
    let (second_id, second) = next_event(&mut resumed).await?;
    assert_eq!(
        second["params"]["data"], "note 11",
        "the missed message, not the seen one"
    );
    assert_ne!(second_id, first_id);
    // Live again on the resumed stream.
    call(&client, 12).await?;
    let (_, third) = next_event(&mut resumed).await?;
    assert_eq!(third["params"]["data"], "note 12");
    drop(resumed);

    agent.stop().await;
    relay.stop().await;
    Ok(())
}

/// Calls the tool with request id `id`, answered as JSON.
async fn call(client: &McpClient, id: u64) -> anyhow::Result<()> {
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": "note", "arguments": {}}});
    let answer = client
        .post_raw(
            body.to_string().into_bytes(),
            &[("accept", "application/json")],
        )
        .await?;
    assert_eq!(answer.result()?["content"][0]["text"], "noted");
    Ok(())
}

/// Reads the next SSE event with data from `stream`: its id and message.
async fn next_event(stream: &mut reqwest::Response) -> anyhow::Result<(String, Value)> {
    let mut text = String::new();
    loop {
        if let Some(end) = text.find("\n\n") {
            let event: String = text.drain(..end + 2).collect();
            let id = event.lines().find_map(|l| l.strip_prefix("id: "));
            let data = event.lines().find_map(|l| l.strip_prefix("data: "));
            if let (Some(id), Some(data)) = (id, data.filter(|d| !d.is_empty())) {
                anyhow::ensure!(text.is_empty(), "one event at a time, got more: {text}");
                return Ok((id.to_owned(), serde_json::from_str(data)?));
            }
            continue;
        }
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), stream.chunk())
            .await??
            .ok_or_else(|| anyhow::anyhow!("the stream ended; so far: {text}"))?;
        text.push_str(std::str::from_utf8(&chunk)?);
    }
}
