//! A long answer from a stdio server goes on to the relay while the server is still writing
//! it (the agent's cut-through): it arrives intact with secrets redacted even where a secret
//! is cut between two reads, and an answer the agent has begun but cannot finish (the server
//! exits, the call times out) never reaches the client half-made: the call gets the error it
//! would get had the agent read the line whole.

use std::time::Duration;

use outpost_agent::policy::ToolPolicy;
use outpost_test_support::{agent, relay};
use serde_json::json;

/// Answers `initialize`, then the first call with `$HEAD` bytes of `x`, the secret in two
/// writes a moment apart, and `$TAIL` bytes of `x`; then the second call with a short text.
const ANSWERS_WITH_A_SECRET_INSIDE: &str = r#"read line
echo '{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{"tools":{}},"serverInfo":{"name":"long","version":"1"}}}'
read line
read line
printf '{"jsonrpc":"2.0","id":2,"result":{"content":[{"type":"text","text":"'
head -c "$HEAD" /dev/zero | tr '\0' x
printf '%s' "$SECRET" | cut -c1-9 | tr -d '\n'
sleep 0.2
printf '%s' "$SECRET" | cut -c10- | tr -d '\n'
head -c "$TAIL" /dev/zero | tr '\0' x
printf '"}]}}\n'
read line
echo '{"jsonrpc":"2.0","id":3,"result":{"content":[{"type":"text","text":"still here"}]}}'
read line"#;

/// Answers `initialize`, then begins a long answer to the first call and `$THEN`s.
const BEGINS_AN_ANSWER: &str = r#"read line
echo '{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{"tools":{}},"serverInfo":{"name":"long","version":"1"}}}'
read line
read line
printf '{"jsonrpc":"2.0","id":2,"result":{"content":[{"type":"text","text":"'
head -c 1048576 /dev/zero | tr '\0' x
eval "$THEN""#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_answer_arrives_intact_with_a_secret_cut_between_reads_redacted()
-> anyhow::Result<()> {
    const HEAD: usize = 3 * 1024 * 1024 + 17;
    const TAIL: usize = 200_000;
    let secret = "cut-through-secret-4d1f9a";
    let relay = relay().spawn().await?;
    let agent = agent(&relay, "laptop")
        .stdio(
            "long",
            "/bin/sh",
            &["-c", ANSWERS_WITH_A_SECRET_INSIDE],
            &[
                ("SECRET", secret),
                ("HEAD", &HEAD.to_string()),
                ("TAIL", &TAIL.to_string()),
            ],
        )
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let mut client = relay.mcp_client(&key, "laptop", "long");
    client.initialize().await?;
    let response = client.call_tool("long", json!({})).await?;
    assert_eq!(response.messages.len(), 1);
    let text = response.result()?["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    let marker = outpost_agent::redact::MARKER;
    assert_eq!(text.len(), HEAD + marker.len() + TAIL);
    assert!(text[..HEAD].bytes().all(|b| b == b'x'));
    assert_eq!(&text[HEAD..HEAD + marker.len()], marker);
    assert!(text[HEAD + marker.len()..].bytes().all(|b| b == b'x'));
    // The session goes on.
    let next = client.call_tool("short", json!({})).await?;
    assert_eq!(next.result()?["content"][0]["text"], "still here");
    agent.stop().await;
    relay.stop().await;
    Ok(())
}

/// Calls the tool of a server that begins a long answer and then runs `then`, and checks
/// that the client gets one answer for the call: an error with `code`.
async fn call_cut_short(then: &str, policy: ToolPolicy, code: i64) -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let agent = agent(&relay, "laptop")
        .stdio(
            "long",
            "/bin/sh",
            &["-c", BEGINS_AN_ANSWER],
            &[("THEN", then)],
        )
        .policy("long", policy)
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let mut client = relay.mcp_client(&key, "laptop", "long");
    client.initialize().await?;
    let response = client.call_tool("long", json!({})).await?;
    assert_eq!(response.messages.len(), 1, "{:?}", response.messages);
    assert_eq!(response.answer()?["id"], 2);
    assert_eq!(response.error_code(), Some(code), "{:?}", response.messages);
    agent.stop().await;
    relay.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_exits_mid_answer_fails_the_call_with_nothing_half_made() -> anyhow::Result<()>
{
    call_cut_short("exit 3", ToolPolicy::default(), -32012).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_still_arriving_at_the_call_timeout_gives_way_to_the_timeout_error()
-> anyhow::Result<()> {
    let timeout = Some(Duration::from_secs(1));
    let policy = ToolPolicy::new(vec![], vec![], None, timeout)?;
    call_cut_short("sleep 30", policy, -32014).await
}
