//! A long answer from a stdio server goes on to the relay while the server is still writing
//! it (the agent's cut-through): it arrives intact with secrets redacted even where a secret
//! is cut between two reads, and an answer the agent has begun but cannot finish (the server
//! exits, the call times out) never reaches the client half-made: the call gets the error it
//! would get had the agent read the line whole.

use std::time::Duration;

use outpost_agent::policy::ToolPolicy;
use outpost_test_support::{
    McpClient, McpResponse, RelayBuilder, TestAgent, TestRelay, agent, find_program, python, relay,
    tools_dir, workspace_root,
};
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

/// A relay, an agent serving a `/bin/sh` script as the stdio server `long`, and a client
/// with a session on it.
struct LongServer {
    relay: TestRelay,
    agent: TestAgent,
    client: McpClient,
}

impl LongServer {
    async fn start(
        relay: RelayBuilder,
        script: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let relay = relay.spawn().await?;
        let agent = agent(&relay, "laptop")
            .stdio("long", "/bin/sh", &["-c", script], env)
            .spawn()
            .await?;
        let key = relay.client_key().await?;
        let mut client = relay.mcp_client(&key, "laptop", "long");
        client.initialize().await?;
        Ok(Self {
            relay,
            agent,
            client,
        })
    }

    /// POSTs the call to `long` with id 2 (and the progress token `t` when `progress`),
    /// for its response to be read as it comes.
    async fn open_call(&self, progress: bool) -> anyhow::Result<Reading> {
        let mut params = json!({"name": "long", "arguments": {}});
        if progress {
            params["_meta"] = json!({"progressToken": "t"});
        }
        let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": params});
        let response = self
            .client
            .post_open(call.to_string().into_bytes(), &[])
            .await?;
        Ok(Reading {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            response,
            body: Vec::new(),
        })
    }

    async fn stop(self) {
        self.agent.stop().await;
        self.relay.stop().await;
    }
}

/// A response read as it comes.
struct Reading {
    status: u16,
    headers: reqwest::header::HeaderMap,
    response: reqwest::Response,
    body: Vec<u8>,
}

impl Reading {
    /// Reads until the body holds `len` bytes, within 20 s.
    async fn read_at_least(&mut self, len: usize) -> anyhow::Result<()> {
        let reading = async {
            while self.body.len() < len {
                match self.response.chunk().await? {
                    Some(chunk) => self.body.extend_from_slice(&chunk),
                    None => anyhow::bail!("the response ended after {} bytes", self.body.len()),
                }
            }
            anyhow::Ok(())
        };
        tokio::time::timeout(Duration::from_secs(20), reading)
            .await
            .map_err(|_| anyhow::anyhow!("{len} bytes did not come within 20 s"))?
    }

    /// Reads the rest, within 20 s: the whole body, and its messages.
    async fn finish(mut self) -> anyhow::Result<(String, McpResponse)> {
        let reading = async {
            while let Some(chunk) = self.response.chunk().await? {
                self.body.extend_from_slice(&chunk);
            }
            anyhow::Ok(())
        };
        tokio::time::timeout(Duration::from_secs(20), reading)
            .await
            .map_err(|_| anyhow::anyhow!("the response did not end within 20 s"))??;
        let body = String::from_utf8(self.body)?;
        let answer = McpResponse::parse(self.status, self.headers, &body)?;
        Ok((body, answer))
    }
}

/// A text result of 1 MiB of `x` and then 1 MiB of `y`.
fn assert_x_then_y(answer: &McpResponse) -> anyhow::Result<()> {
    let text = answer.result()?["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(text.len(), 2 * 1024 * 1024);
    assert!(text[..1024 * 1024].bytes().all(|b| b == b'x'));
    assert!(text[1024 * 1024..].bytes().all(|b| b == b'y'));
    Ok(())
}

/// The call got one answer, the error `code`, after its broken event ended as
/// `abandoned`.
fn assert_abandoned_for(body: &str, answer: &McpResponse, code: i64) -> anyhow::Result<()> {
    assert!(
        body.contains("\nevent: abandoned\n\n"),
        "the broken event ends as abandoned"
    );
    assert_eq!(answer.messages.len(), 1, "{:?}", answer.messages);
    assert_eq!(answer.answer()?["id"], 2);
    assert_eq!(answer.error_code(), Some(code), "{:?}", answer.messages);
    Ok(())
}

/// Answers `initialize`, then begins a long answer to the first call with 1 MiB of `x`
/// (after a progress notification for the token `t` when `$PROGRESS` is set), and finishes
/// it with 1 MiB of `y` only once the file `$GO` exists.
const FINISHES_ON_A_SIGNAL: &str = r#"read line
echo '{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{"tools":{}},"serverInfo":{"name":"long","version":"1"}}}'
read line
read line
if [ -n "$PROGRESS" ]; then
  echo '{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"t","progress":1}}'
fi
printf '{"jsonrpc":"2.0","id":2,"result":{"content":[{"type":"text","text":"'
head -c 1048576 /dev/zero | tr '\0' x
while [ ! -e "$GO" ]; do sleep 0.02; done
head -c 1048576 /dev/zero | tr '\0' y
printf '"}]}}\n'
read line"#;

/// `FINISHES_ON_A_SIGNAL` behind a relay built by `relay`; the file whose creation lets it
/// finish, in a directory kept with it.
async fn on_a_signal(
    relay: RelayBuilder,
    progress: bool,
) -> anyhow::Result<(LongServer, tempfile::TempDir, std::path::PathBuf)> {
    let dir = tempfile::tempdir()?;
    let go = dir.path().join("go");
    let progress = if progress { "1" } else { "" };
    let env = [("GO", go.to_str().unwrap()), ("PROGRESS", progress)];
    let server = LongServer::start(relay, FINISHES_ON_A_SIGNAL, &env).await?;
    Ok((server, dir, go))
}

/// The relay, too, sends a long answer on as it arrives: the client reads the start of the
/// answer's event while the server has not yet written its end, and the whole arrives
/// intact once it has. The event's id (the stream is resumable) comes after its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reads_a_long_answer_before_the_server_has_finished_it() -> anyhow::Result<()> {
    let (server, _dir, go) = on_a_signal(relay(), false).await?;
    let mut reading = server.open_call(false).await?;
    let start = b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":2,\"result\":";
    // Not all of the first MiB: the agent holds back its last read (redaction looks for a
    // secret across reads) and the tunnel its last part, until more comes.
    reading.read_at_least(start.len() + 512 * 1024).await?;
    let body = &reading.body;
    assert_eq!(&body[..start.len()], start);
    let text_at = body.windows(8).position(|w| w == b"\"text\":\"").unwrap() + 8;
    assert!(body[text_at..].iter().all(|&b| b == b'x'));
    std::fs::write(&go, b"")?;
    let (body, answer) = reading.finish().await?;
    assert_eq!(answer.messages.len(), 1);
    assert_x_then_y(&answer)?;
    assert_eq!(answer.event_ids.len(), 1, "{:?}", answer.event_ids);
    assert!(body.ends_with(&format!("\nid: {}\n\n", answer.event_ids[0])));
    // Usage counts the answer whole.
    let usage = server.relay.wait_for_usage(2).await?;
    let call = usage.iter().find(|u| u.method == "tools/call").unwrap();
    assert!(call.bytes_out > 2 * 1024 * 1024, "{call:?}");
    server.stop().await;
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
    let relay = relay().replay_limits(64, replay_bytes);
    let env = [("LEN", len.to_string())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut server = LongServer::start(relay, PROGRESS_THEN_A_LONG_ANSWER, &env).await?;
    let call = server
        .client
        .request(
            "tools/call",
            json!({"name": "long", "arguments": {}, "_meta": {"progressToken": "t"}}),
        )
        .await?;
    assert_eq!(call.messages.len(), 2, "{:?}", call.event_ids);
    assert_eq!(call.event_ids.len(), 2);
    let text = call.result()?["content"][0]["text"].as_str().unwrap().len();
    assert_eq!(text, len);
    let resumed = server.client.resume(&call.event_ids[0]).await?;
    if resumed.status == 200 {
        assert_eq!(resumed.event_ids, vec![call.event_ids[1].clone()]);
        assert_eq!(resumed.answer()?, call.answer()?);
    }
    server.stop().await;
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

/// A client's connection breaks while a long answer is going on to it, and the client
/// resumes from the progress event before the answer, before the answer has ended. With
/// `replay_bytes` per session, returns what the resumed stream carried. With
/// `unnoticed`, the old connection stays open (unread) until the end, as a dead one the
/// relay has not noticed does.
async fn break_mid_answer_and_resume(
    replay_bytes: usize,
    unnoticed: bool,
) -> anyhow::Result<McpResponse> {
    let relay = relay().replay_limits(64, replay_bytes);
    let (server, _dir, go) = on_a_signal(relay, true).await?;
    let mut reading = server.open_call(true).await?;
    reading.read_at_least(256 * 1024).await?;
    let body = String::from_utf8_lossy(&reading.body).into_owned();
    let progress_id = body
        .lines()
        .find_map(|line| line.strip_prefix("id: "))
        .ok_or_else(|| anyhow::anyhow!("no event id before the answer: {}", &body[..200]))?
        .to_owned();
    // The connection breaks.
    let old = unnoticed.then_some(reading);
    let resumed = tokio::spawn({
        let client = server.client.clone();
        async move { client.resume(&progress_id).await }
    });
    let resumed_line = "outpost_relay_stream_resumptions_total{result=\"resumed\"} 1";
    let resuming = async {
        while !server.relay.metrics().await?.contains(resumed_line) {
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
    server.stop().await;
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
        assert_eq!(kept.status, 200, "unnoticed: {unnoticed}");
        assert_x_then_y(&kept)?;
    }
    let lost = break_mid_answer_and_resume(512 * 1024, false).await?;
    assert_eq!(lost.status, 200);
    assert_eq!(lost.messages.len(), 1, "{:?}", lost.messages);
    assert_eq!(lost.answer()?["id"], 2);
    assert_eq!(lost.error_code(), Some(-32015), "{:?}", lost.messages);
    Ok(())
}

/// Answers `initialize`, then the first call with a long answer of `$LEN` bytes of `x`, with
/// `$SPOIL` (a raw control character, say) in its middle, then the second call with a
/// short text.
const A_LONG_ANSWER_THEN_A_SHORT_ONE: &str = r#"read line
echo '{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{"tools":{}},"serverInfo":{"name":"long","version":"1"}}}'
read line
read line
printf '{"jsonrpc":"2.0","id":2,"result":{"content":[{"type":"text","text":"'
head -c "$LEN" /dev/zero | tr '\0' x
printf "$SPOIL"
head -c "$LEN" /dev/zero | tr '\0' x
printf '"}]}}\n'
read line
echo '{"jsonrpc":"2.0","id":3,"result":{"content":[{"type":"text","text":"still here"}]}}'
read line"#;

/// The session's second call, answered with a short text.
async fn still_here(client: &McpClient) -> anyhow::Result<()> {
    let next = client
        .post(json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
            "params": {"name": "short", "arguments": {}}}))
        .await?;
    assert_eq!(next.result()?["content"][0]["text"], "still here");
    Ok(())
}

/// A long answer whose JSON breaks part-way, which the relay had begun to send on, ends
/// its event as `abandoned`, and the call gets -32012 in its place; the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_answer_that_is_not_json_gives_way_to_an_error() -> anyhow::Result<()> {
    let env = [("LEN", "1048576"), ("SPOIL", "\\001")];
    let server = LongServer::start(relay(), A_LONG_ANSWER_THEN_A_SHORT_ONE, &env).await?;
    let (body, answer) = server.open_call(false).await?.finish().await?;
    assert_abandoned_for(&body, &answer, -32012)?;
    assert!(
        answer.answer()?["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not valid JSON"))
    );
    let usage = server.relay.wait_for_usage(2).await?;
    let call = usage.iter().find(|u| u.method == "tools/call").unwrap();
    assert_eq!(call.error_code, Some(-32012), "{call:?}");
    // The session goes on.
    still_here(&server.client).await?;
    server.stop().await;
    Ok(())
}

/// A client that stops reading a long answer holds the upstream back only until its
/// response has taken nothing for `limits.client_stall_timeout` (1 s here): then the
/// relay stops waiting for it, and the session's next answer reaches its own POST. The
/// answer (15 MiB) is larger than loopback's socket buffers hold at Linux's defaults, so
/// that the client's not reading reaches the relay; and larger than the replay budget, so
/// that when the client reads on at last, it finds the event ended as `abandoned` and the
/// error -32015 in the answer's place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_long_answer_holds_its_session_only_for_a_keep_alive_period()
-> anyhow::Result<()> {
    let relay = relay()
        .client_stall_timeout(Duration::from_secs(1))
        .call_timeout(Duration::from_secs(60));
    let env = [("LEN", "7864320"), ("SPOIL", "")];
    let server = LongServer::start(relay, A_LONG_ANSWER_THEN_A_SHORT_ONE, &env).await?;
    // Its headers come, and then nobody reads its body.
    let stuck = server.open_call(false).await?;
    assert_eq!(stuck.status, 200);
    still_here(&server.client).await?;
    let (body, answer) = stuck.finish().await?;
    assert_abandoned_for(&body, &answer, -32015)?;
    server.stop().await;
    Ok(())
}

/// A session deleted while a long answer is going on to its client: the broken event
/// ends as `abandoned` and the call gets one answer, the session's close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_deleted_mid_answer_answers_the_call_once() -> anyhow::Result<()> {
    let (server, _dir, go) = on_a_signal(relay(), false).await?;
    let mut reading = server.open_call(false).await?;
    reading.read_at_least(256 * 1024).await?;
    assert_eq!(server.client.delete().await?, 204);
    std::fs::write(&go, b"")?;
    let (body, answer) = reading.finish().await?;
    assert_abandoned_for(&body, &answer, -32017)?;
    server.stop().await;
    Ok(())
}

/// An upstream that stops in the middle of a long answer, which the relay had begun to send
/// on, gets the call the relay's timeout at its deadline, as an answer read whole would:
/// the broken event ends as `abandoned`, then -32014.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_answer_still_arriving_at_the_relays_deadline_gives_way_to_its_timeout()
-> anyhow::Result<()> {
    let relay = relay().call_timeout(Duration::from_secs(2));
    // The signal never comes.
    let (server, _dir, _go) = on_a_signal(relay, false).await?;
    let (body, answer) = server.open_call(false).await?.finish().await?;
    assert_abandoned_for(&body, &answer, -32014)?;
    server.stop().await;
    Ok(())
}

/// Answers `initialize` and begins a long answer to the first call, then exits, reading
/// the ids from the requests (the Python SDK counts from 0).
const BEGINS_AN_ANSWER_TO_ANY_ID: &str = r#"id_of() { printf '%s' "$1" | sed -n 's/.*"id":\([0-9]*\).*/\1/p'; }
read line
echo '{"jsonrpc":"2.0","id":'"$(id_of "$line")"',"result":{"protocolVersion":"2025-06-18","capabilities":{"tools":{}},"serverInfo":{"name":"long","version":"1"}}}'
read line
read line
printf '{"jsonrpc":"2.0","id":%s,"result":{"content":[{"type":"text","text":"' "$(id_of "$line")"
head -c 1048576 /dev/zero | tr '\0' x
exit 3"#;

/// An official SDK client (`interpreter` running `script`) calls a server that begins a
/// long answer and exits: returns the client's report and what it wrote to stderr.
async fn sdk_meets_an_abandoned_answer(
    interpreter: std::path::PathBuf,
    script: &str,
) -> anyhow::Result<(serde_json::Value, String)> {
    let relay = relay().spawn().await?;
    let agent = agent(&relay, "laptop")
        .stdio("long", "/bin/sh", &["-c", BEGINS_AN_ANSWER_TO_ANY_ID], &[])
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let sdk = tools_dir().join("node_modules/@modelcontextprotocol/sdk");
    let output = tokio::process::Command::new(interpreter)
        .arg(workspace_root().join(script))
        .env("OUTPOST_URL", relay.mcp_url("laptop", "long"))
        .env("OUTPOST_KEY", &key)
        .env("OUTPOST_CA", &relay.state.certs.ca)
        .env("NODE_EXTRA_CA_CERTS", &relay.state.certs.ca)
        .env("MCP_SDK_DIR", sdk)
        .kill_on_drop(true)
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    anyhow::ensure!(output.status.success(), "the client failed:\n{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    agent.stop().await;
    relay.stop().await;
    Ok((report, stderr))
}

/// The official Python SDK, as a client uses it, meets a long answer that breaks off
/// part-way: it drops the `abandoned` event (logging it as an unknown event, not failing on
/// half a message), and its call raises the error that answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_drops_an_abandoned_answer_and_gets_the_error() -> anyhow::Result<()> {
    let script = "test-support/python/long_answer_client.py";
    let (report, stderr) = sdk_meets_an_abandoned_answer(python(), script).await?;
    assert_eq!(report["error_code"], -32012, "{report}");
    assert!(
        stderr.contains("Unknown SSE event: abandoned"),
        "the SDK saw the abandoned event and dropped it:\n{stderr}"
    );
    Ok(())
}

/// The official TypeScript SDK v1 likewise: the response carries the `abandoned` event
/// (seen through a `fetch` that watches the body), the SDK ignores it silently (its
/// transport reports no error, as it would for half a message ended as `message`), and its
/// call rejects with the error that answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_sdk_drops_an_abandoned_answer_and_gets_the_error() -> anyhow::Result<()> {
    let script = "test-support/node/long_answer_client.mjs";
    let (report, _) = sdk_meets_an_abandoned_answer(find_program("node"), script).await?;
    assert_eq!(report["error_code"], -32012, "{report}");
    assert_eq!(report["errors"], serde_json::json!([]), "{report}");
    assert_eq!(report["saw_abandoned"], true, "{report}");
    Ok(())
}
