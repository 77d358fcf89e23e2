//! A long answer from a stdio server goes on to the relay while the server is still writing
//! it (the agent's cut-through): it arrives intact with secrets redacted even where a secret
//! is cut between two reads, and an answer the agent has begun but cannot finish (the server
//! exits, the call times out) never reaches the client half-made: the call gets the error it
//! would get had the agent read the line whole.

use std::time::Duration;

use outpost_agent::policy::ToolPolicy;
use outpost_test_support::{McpResponse, agent, relay};
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

/// Answers `initialize`, then begins a long answer to the first call with 1 MiB of `x`,
/// and finishes it with 1 MiB of `y` only once the file `$GO` exists.
const FINISHES_ON_A_SIGNAL: &str = r#"read line
echo '{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{"tools":{}},"serverInfo":{"name":"long","version":"1"}}}'
read line
read line
printf '{"jsonrpc":"2.0","id":2,"result":{"content":[{"type":"text","text":"'
head -c 1048576 /dev/zero | tr '\0' x
while [ ! -e "$GO" ]; do sleep 0.02; done
head -c 1048576 /dev/zero | tr '\0' y
printf '"}]}}\n'
read line"#;

/// The relay, too, sends a long answer on as it arrives: the client reads the start of the
/// answer's event while the server has not yet written its end, and the whole arrives
/// intact once it has. The event's id (the stream is resumable) comes after its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reads_a_long_answer_before_the_server_has_finished_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let go = dir.path().join("go");
    let relay = relay().spawn().await?;
    let agent = agent(&relay, "laptop")
        .stdio(
            "long",
            "/bin/sh",
            &["-c", FINISHES_ON_A_SIGNAL],
            &[("GO", go.to_str().unwrap())],
        )
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let mut client = relay.mcp_client(&key, "laptop", "long");
    client.initialize().await?;
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "long", "arguments": {}}});
    let mut response = client.post_open(call.to_string().into_bytes(), &[]).await?;
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    let mut body = Vec::new();
    let start = b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":2,\"result\":";
    // Not all of the first MiB: the agent holds back its last read (redaction looks for a
    // secret across reads) and the tunnel its last part, until more comes.
    let half = start.len() + 512 * 1024;
    let read_start = tokio::time::timeout(Duration::from_secs(20), async {
        while body.len() < half {
            match response.chunk().await? {
                Some(chunk) => body.extend_from_slice(&chunk),
                None => anyhow::bail!("the response ended after {} bytes", body.len()),
            }
        }
        anyhow::Ok(())
    });
    read_start
        .await
        .map_err(|_| anyhow::anyhow!("the answer's start did not come before its end"))??;
    assert_eq!(&body[..start.len()], start);
    let text_at = body.windows(8).position(|w| w == b"\"text\":\"").unwrap() + 8;
    assert!(body[text_at..].iter().all(|&b| b == b'x'));
    std::fs::write(&go, b"")?;
    while let Some(chunk) = response.chunk().await? {
        body.extend_from_slice(&chunk);
    }
    let body = String::from_utf8(body)?;
    let answer = McpResponse::parse(status, headers, &body)?;
    assert_eq!(answer.messages.len(), 1);
    let text = answer.result()?["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(text.len(), 2 * 1024 * 1024);
    assert!(text[..1024 * 1024].bytes().all(|b| b == b'x'));
    assert!(text[1024 * 1024..].bytes().all(|b| b == b'y'));
    assert_eq!(answer.event_ids.len(), 1, "{:?}", answer.event_ids);
    assert!(body.ends_with(&format!("\nid: {}\n\n", answer.event_ids[0])));
    // Usage counts the answer whole.
    let usage = relay.wait_for_usage(2).await?;
    let call = usage.iter().find(|u| u.method == "tools/call").unwrap();
    assert!(call.bytes_out > 2 * 1024 * 1024, "{call:?}");
    agent.stop().await;
    relay.stop().await;
    Ok(())
}

/// Answers `initialize`, then the first call with a progress notification for the token
/// `t` and a long answer of `$LEN` bytes of `x`.
const PROGRESS_THEN_A_LONG_ANSWER: &str = r#"read line
echo '{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{"tools":{}},"serverInfo":{"name":"long","version":"1"}}}'
read line
read line
echo '{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"t","progress":1}}'
printf '{"jsonrpc":"2.0","id":2,"result":{"content":[{"type":"text","text":"'
head -c "$LEN" /dev/zero | tr '\0' x
printf '"}]}}\n'
read line"#;

/// Calls a server that sends a progress notification and then a long answer of `len`
/// bytes, through a relay keeping `replay_bytes` per session, and resumes the call's
/// stream from the notification's event id.
async fn resume_after_progress(len: usize, replay_bytes: usize) -> anyhow::Result<McpResponse> {
    let relay = relay().replay_limits(64, replay_bytes).spawn().await?;
    let agent = agent(&relay, "laptop")
        .stdio(
            "long",
            "/bin/sh",
            &["-c", PROGRESS_THEN_A_LONG_ANSWER],
            &[("LEN", &len.to_string())],
        )
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let mut client = relay.mcp_client(&key, "laptop", "long");
    client.initialize().await?;
    let call = client
        .request(
            "tools/call",
            json!({"name": "long", "arguments": {}, "_meta": {"progressToken": "t"}}),
        )
        .await?;
    assert_eq!(call.messages.len(), 2, "{:?}", call.event_ids);
    assert_eq!(call.event_ids.len(), 2);
    let text = call.result()?["content"][0]["text"].as_str().unwrap().len();
    assert_eq!(text, len);
    let resumed = client.resume(&call.event_ids[0]).await?;
    if resumed.status == 200 {
        assert_eq!(resumed.event_ids, vec![call.event_ids[1].clone()]);
        assert_eq!(resumed.answer()?, call.answer()?);
    }
    agent.stop().await;
    relay.stop().await;
    Ok(resumed)
}

/// A long answer sent on as it arrived is kept for resumption like any other, while it
/// fits the session's replay budget; one larger is numbered but not kept, and a
/// resumption from before it is refused as too old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_answer_sent_as_it_arrived_is_kept_for_resumption_within_the_budget()
-> anyhow::Result<()> {
    let kept = resume_after_progress(1024 * 1024, 4 * 1024 * 1024).await?;
    assert_eq!(kept.status, 200);
    let over = resume_after_progress(1024 * 1024, 512 * 1024).await?;
    assert_eq!(over.status, 404);
    assert!(
        over.answer()?["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("too old")),
        "{:?}",
        over.messages
    );
    Ok(())
}

/// Answers `initialize`, then the first call with a progress notification for the token
/// `t`, 1 MiB of `x` of a long answer, and, once the file `$GO` exists, 1 MiB of `y` to
/// finish it.
const PROGRESS_THEN_AN_ANSWER_ON_A_SIGNAL: &str = r#"read line
echo '{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{"tools":{}},"serverInfo":{"name":"long","version":"1"}}}'
read line
read line
echo '{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"t","progress":1}}'
printf '{"jsonrpc":"2.0","id":2,"result":{"content":[{"type":"text","text":"'
head -c 1048576 /dev/zero | tr '\0' x
while [ ! -e "$GO" ]; do sleep 0.02; done
head -c 1048576 /dev/zero | tr '\0' y
printf '"}]}}\n'
read line"#;

/// A client's connection breaks while a long answer is going on to it, and the client
/// resumes from the progress event before the answer, before the answer has ended. With
/// `replay_bytes` per session, returns what the resumed stream carried. With
/// `unnoticed`, the old connection stays open (unread) until the end, as a dead one the
/// relay has not noticed does.
async fn break_mid_answer_and_resume(
    replay_bytes: usize,
    unnoticed: bool,
) -> anyhow::Result<McpResponse> {
    let dir = tempfile::tempdir()?;
    let go = dir.path().join("go");
    let relay = relay().replay_limits(64, replay_bytes).spawn().await?;
    let agent = agent(&relay, "laptop")
        .stdio(
            "long",
            "/bin/sh",
            &["-c", PROGRESS_THEN_AN_ANSWER_ON_A_SIGNAL],
            &[("GO", go.to_str().unwrap())],
        )
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let mut client = relay.mcp_client(&key, "laptop", "long");
    client.initialize().await?;
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "long", "arguments": {}, "_meta": {"progressToken": "t"}}});
    let mut response = client.post_open(call.to_string().into_bytes(), &[]).await?;
    let mut body = Vec::new();
    let read_some = tokio::time::timeout(Duration::from_secs(20), async {
        while body.len() < 256 * 1024 {
            match response.chunk().await? {
                Some(chunk) => body.extend_from_slice(&chunk),
                None => anyhow::bail!("the response ended after {} bytes", body.len()),
            }
        }
        anyhow::Ok(())
    });
    read_some
        .await
        .map_err(|_| anyhow::anyhow!("the answer did not begin"))??;
    let body = String::from_utf8_lossy(&body).into_owned();
    let progress_id = body
        .lines()
        .find_map(|line| line.strip_prefix("id: "))
        .ok_or_else(|| anyhow::anyhow!("no event id before the answer: {}", &body[..200]))?
        .to_owned();
    // The connection breaks.
    let old = unnoticed.then_some(response);
    let resumed = tokio::spawn({
        let client = client.clone();
        async move { client.resume(&progress_id).await }
    });
    let resumed_line = "outpost_relay_stream_resumptions_total{result=\"resumed\"} 1";
    let resuming = async {
        while !relay.metrics().await?.contains(resumed_line) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(20), resuming)
        .await
        .map_err(|_| anyhow::anyhow!("the resumption was never counted"))??;
    std::fs::write(&go, b"")?;
    let resumed = resumed.await??;
    drop(old);
    agent.stop().await;
    relay.stop().await;
    Ok(resumed)
}

/// Whether the answer a client resumes after its connection broke in the middle of it is
/// the answer whole (it fit the replay budget) or an error in its place (it did not); the
/// same when the relay has not noticed the old connection is dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_resumes_mid_answer_gets_it_whole_or_an_error_in_its_place()
-> anyhow::Result<()> {
    for unnoticed in [false, true] {
        let kept = break_mid_answer_and_resume(4 * 1024 * 1024, unnoticed).await?;
        assert_eq!(kept.status, 200);
        let text = kept.result()?["content"][0]["text"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(text.len(), 2 * 1024 * 1024, "unnoticed: {unnoticed}");
        assert!(text[..1024 * 1024].bytes().all(|b| b == b'x'));
        assert!(text[1024 * 1024..].bytes().all(|b| b == b'y'));
    }

    let lost = break_mid_answer_and_resume(512 * 1024, false).await?;
    assert_eq!(lost.status, 200);
    assert_eq!(lost.messages.len(), 1, "{:?}", lost.messages);
    assert_eq!(lost.answer()?["id"], 2);
    assert_eq!(lost.error_code(), Some(-32015), "{:?}", lost.messages);
    Ok(())
}

/// Answers `initialize`, then the first call with a long answer that has a raw control
/// character in its text (not JSON), then the second call with a short text.
const A_LONG_ANSWER_THAT_IS_NOT_JSON: &str = r#"read line
echo '{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{"tools":{}},"serverInfo":{"name":"long","version":"1"}}}'
read line
read line
printf '{"jsonrpc":"2.0","id":2,"result":{"content":[{"type":"text","text":"'
head -c 1048576 /dev/zero | tr '\0' x
printf '\001'
head -c 1048576 /dev/zero | tr '\0' x
printf '"}]}}\n'
read line
echo '{"jsonrpc":"2.0","id":3,"result":{"content":[{"type":"text","text":"still here"}]}}'
read line"#;

/// A long answer whose JSON breaks part-way, which the relay had begun to send on, ends
/// its event as `abandoned`, and the call gets -32012 in its place; the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_answer_that_is_not_json_gives_way_to_an_error() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let agent = agent(&relay, "laptop")
        .stdio(
            "long",
            "/bin/sh",
            &["-c", A_LONG_ANSWER_THAT_IS_NOT_JSON],
            &[],
        )
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let mut client = relay.mcp_client(&key, "laptop", "long");
    client.initialize().await?;
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "long", "arguments": {}}});
    let response = client.post_open(call.to_string().into_bytes(), &[]).await?;
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    let body = response.text().await?;
    assert!(
        body.contains("\nevent: abandoned\n\n"),
        "the broken event ends as abandoned"
    );
    let answer = McpResponse::parse(status, headers, &body)?;
    assert_eq!(answer.messages.len(), 1, "{:?}", answer.messages);
    assert_eq!(answer.answer()?["id"], 2);
    assert_eq!(answer.error_code(), Some(-32012), "{:?}", answer.messages);
    assert!(
        answer.answer()?["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not valid JSON"))
    );
    let usage = relay.wait_for_usage(2).await?;
    let call = usage.iter().find(|u| u.method == "tools/call").unwrap();
    assert_eq!(call.error_code, Some(-32012), "{call:?}");
    // The session goes on.
    let next = client
        .post(json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
            "params": {"name": "short", "arguments": {}}}))
        .await?;
    assert_eq!(next.result()?["content"][0]["text"], "still here");
    agent.stop().await;
    relay.stop().await;
    Ok(())
}

/// Answers `initialize`, then the first call with a 15 MiB answer (more than loopback's
/// socket buffers hold), then the second with a short text.
const A_LONG_ANSWER_THEN_A_SHORT_ONE: &str = r#"read line
echo '{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{"tools":{}},"serverInfo":{"name":"long","version":"1"}}}'
read line
read line
printf '{"jsonrpc":"2.0","id":2,"result":{"content":[{"type":"text","text":"'
head -c 15728640 /dev/zero | tr '\0' x
printf '"}]}}\n'
read line
echo '{"jsonrpc":"2.0","id":3,"result":{"content":[{"type":"text","text":"still here"}]}}'
read line"#;

/// A client that stops reading a long answer holds the upstream back only until its
/// response has taken nothing for a keep-alive period (1 s here): then the relay stops
/// waiting for it, and the session's next answer reaches its own POST well within that
/// call's deadline (10 s). The answer is larger than loopback's socket buffers hold at
/// Linux's defaults, so that the client's not reading reaches the relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_long_answer_holds_its_session_only_for_a_keep_alive_period()
-> anyhow::Result<()> {
    let relay = relay()
        .sse_keepalive(Duration::from_secs(1))
        .call_timeout(Duration::from_secs(10))
        .spawn()
        .await?;
    let agent = agent(&relay, "laptop")
        .stdio(
            "long",
            "/bin/sh",
            &["-c", A_LONG_ANSWER_THEN_A_SHORT_ONE],
            &[],
        )
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let mut client = relay.mcp_client(&key, "laptop", "long");
    client.initialize().await?;
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "long", "arguments": {}}});
    // Its headers come, and then nobody reads its body.
    let stuck = client.post_open(call.to_string().into_bytes(), &[]).await?;
    assert_eq!(stuck.status(), 200);
    let next = client
        .post(json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
            "params": {"name": "short", "arguments": {}}}))
        .await?;
    assert_eq!(next.result()?["content"][0]["text"], "still here");
    drop(stuck);
    agent.stop().await;
    relay.stop().await;
    Ok(())
}

/// A session deleted while a long answer is going on to its client: the broken event
/// ends as `abandoned` and the call gets one answer, the session's close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_deleted_mid_answer_answers_the_call_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let go = dir.path().join("go");
    let relay = relay().spawn().await?;
    let agent = agent(&relay, "laptop")
        .stdio(
            "long",
            "/bin/sh",
            &["-c", FINISHES_ON_A_SIGNAL],
            &[("GO", go.to_str().unwrap())],
        )
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let mut client = relay.mcp_client(&key, "laptop", "long");
    client.initialize().await?;
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "long", "arguments": {}}});
    let mut response = client.post_open(call.to_string().into_bytes(), &[]).await?;
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    let mut body = Vec::new();
    let read_start = tokio::time::timeout(Duration::from_secs(20), async {
        while body.len() < 256 * 1024 {
            match response.chunk().await? {
                Some(chunk) => body.extend_from_slice(&chunk),
                None => anyhow::bail!("the response ended after {} bytes", body.len()),
            }
        }
        anyhow::Ok(())
    });
    read_start
        .await
        .map_err(|_| anyhow::anyhow!("the answer did not begin"))??;
    assert_eq!(client.delete().await?, 204);
    std::fs::write(&go, b"")?;
    while let Some(chunk) = response.chunk().await? {
        body.extend_from_slice(&chunk);
    }
    let body = String::from_utf8(body)?;
    assert!(
        body.contains("\nevent: abandoned\n\n"),
        "the broken event ends as abandoned"
    );
    let answer = McpResponse::parse(status, headers, &body)?;
    assert_eq!(answer.messages.len(), 1, "{:?}", answer.messages);
    assert_eq!(answer.answer()?["id"], 2);
    assert_eq!(answer.error_code(), Some(-32017), "{:?}", answer.messages);
    agent.stop().await;
    relay.stop().await;
    Ok(())
}

/// An upstream that stops in the middle of a long answer, which the relay had begun to send
/// on, gets the call the relay's timeout at its deadline, as an answer read whole would:
/// the broken event ends as `abandoned`, then -32014.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_answer_still_arriving_at_the_relays_deadline_gives_way_to_its_timeout()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let go = dir.path().join("never");
    let relay = relay().call_timeout(Duration::from_secs(2)).spawn().await?;
    let agent = agent(&relay, "laptop")
        .stdio(
            "long",
            "/bin/sh",
            &["-c", FINISHES_ON_A_SIGNAL],
            &[("GO", go.to_str().unwrap())],
        )
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let mut client = relay.mcp_client(&key, "laptop", "long");
    client.initialize().await?;
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "long", "arguments": {}}});
    let response = client.post_open(call.to_string().into_bytes(), &[]).await?;
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    let body = tokio::time::timeout(Duration::from_secs(20), response.text())
        .await
        .map_err(|_| anyhow::anyhow!("the response did not end after the deadline"))??;
    assert!(
        body.contains("\nevent: abandoned\n\n"),
        "the broken event ends as abandoned"
    );
    let answer = McpResponse::parse(status, headers, &body)?;
    assert_eq!(answer.messages.len(), 1, "{:?}", answer.messages);
    assert_eq!(answer.answer()?["id"], 2);
    assert_eq!(answer.error_code(), Some(-32014), "{:?}", answer.messages);
    agent.stop().await;
    relay.stop().await;
    Ok(())
}
