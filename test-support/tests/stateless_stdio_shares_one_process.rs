//! Stateless (2026-07-28) requests to a stdio server share ONE process per server: many
//! concurrent clients reach the same process, each answer (and each progress notification)
//! reaches its own client although all of them use the same request id and progress token,
//! a burst of requests to a server of unknown era sends it one `server/discover` probe,
//! a client that takes only JSON gets its answer as JSON, a client that disconnects
//! mid-call has its request cancelled upstream, and a crashed process fails only the
//! requests it had in flight and is restarted for the next one.

use std::path::Path;
use std::time::Duration;

use outpost_test_support::conformance::node22;
use outpost_test_support::{TestRelay, agent, relay};
use serde_json::{Value, json};

/// A minimal stateless stdio server: it answers `server/discover` (the relay asks it once, to
/// learn its era, and records that it did), `whoami` answers with its pid and argument after a short wait (reporting
/// progress first), `slow` never answers, `broken` answers with a line that breaks off
/// after its start, `crash` exits. It records
/// the requests it started and the cancellations it received.
const SERVER: &str = r#"
const fs = require('fs');
const state = process.env.STATE;
const write = (m) => process.stdout.write(JSON.stringify(m) + '\n');
require('readline').createInterface({ input: process.stdin }).on('line', (line) => {
  const msg = JSON.parse(line);
  if (msg.method === 'notifications/cancelled') {
    fs.appendFileSync(state + '/cancelled', JSON.stringify(msg.params.requestId) + '\n');
    return;
  }
  if (msg.id === undefined) return;
  if (msg.method === 'server/discover') {
    fs.appendFileSync(state + '/discovered', '1\n');
    return write({ jsonrpc: '2.0', id: msg.id, result: { supportedVersions: ['2026-07-28'], capabilities: { tools: {} } } });
  }
  if (msg.method === 'tools/list') {
    return write({ jsonrpc: '2.0', id: msg.id, result: { tools: [] } });
  }
  const name = msg.params && msg.params.name;
  const args = (msg.params && msg.params.arguments) || {};
  const token = msg.params && msg.params._meta && msg.params._meta.progressToken;
  fs.appendFileSync(state + '/started', name + '\n');
  if (name === 'whoami') {
    if (token !== undefined) {
      write({ jsonrpc: '2.0', method: 'notifications/progress', params: { progressToken: token, progress: 1, message: String(args.n) } });
    }
    setTimeout(() => write({ jsonrpc: '2.0', id: msg.id, result: { content: [{ type: 'text', text: `${process.pid} ${args.n}` }] } }), 20 + Math.random() * 80);
  } else if (name === 'broken') {
    process.stdout.write('{"jsonrpc":"2.0","id":' + JSON.stringify(msg.id) + ',"result":{"content":[\n');
  } else if (name === 'crash') {
    process.exit(3);
  }
});
"#;

fn lines(dir: &Path, file: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One stateless `tools/call`, id 1 and progress token "tok" like every other client's.
async fn call(relay: &TestRelay, key: &str, tool: &str, arguments: Value) -> anyhow::Result<Value> {
    let client = relay.mcp_client(key, "site", "shared");
    call_with(client, tool, arguments, SSE_OR_JSON).await
}

const SSE_OR_JSON: &str = "application/json, text/event-stream";

/// As [`call`], with the client's `Accept` header.
async fn call_with(
    client: outpost_test_support::McpClient,
    tool: &str,
    arguments: Value,
    accept: &str,
) -> anyhow::Result<Value> {
    let body = json!({
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": tool,
            "arguments": arguments,
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
                "progressToken": "tok",
            },
        },
    });
    let response = client
        .post_raw(
            body.to_string().into_bytes(),
            &[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
                ("mcp-name", tool),
                ("accept", accept),
            ],
        )
        .await?;
    let content_type = response
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    Ok(json!({
        "status": response.status,
        "content_type": content_type,
        "messages": response.messages,
    }))
}

fn answer(response: &Value) -> &Value {
    response["messages"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m.get("method").is_none()))
        .unwrap_or(&Value::Null)
}

/// A relay (`build`) and an agent serving [`SERVER`] as `site`/`shared`, its state in `state`.
async fn stack(
    build: outpost_test_support::RelayBuilder,
    state: &Path,
) -> anyhow::Result<(TestRelay, outpost_test_support::TestAgent)> {
    let script = state.join("server.js");
    std::fs::write(&script, SERVER)?;
    let node = node22();
    let relay = build.spawn().await?;
    let agent = agent(&relay, "site")
        .stdio(
            "shared",
            "/bin/sh",
            &["-c", r#"echo $$ >> "$STATE/pids"; exec "$NODE" "$SCRIPT""#],
            &[
                ("STATE", state.to_str().unwrap()),
                ("NODE", node.to_str().unwrap()),
                ("SCRIPT", script.to_str().unwrap()),
            ],
        )
        .spawn()
        .await?;
    Ok((relay, agent))
}

/// A stateless call past the relay's call timeout gets the relay's timeout error, over
/// SSE and as JSON alike: the wait for the answer ends at the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateless_call_past_the_timeout_gets_the_timeout_error() -> anyhow::Result<()> {
    let state = tempfile::tempdir()?;
    let build = relay().call_timeout(Duration::from_millis(500));
    let (relay, agent) = stack(build, state.path()).await?;
    let key = relay.client_key().await?;
    for accept in [SSE_OR_JSON, "application/json"] {
        let client = relay.mcp_client(&key, "site", "shared");
        let response = call_with(client, "slow", json!({}), accept).await?;
        assert_eq!(
            answer(&response)["error"]["code"],
            outpost_relay::error::CODE_TIMEOUT,
            "{accept}: {response}"
        );
    }
    agent.stop().await;
    relay.stop().await;
    Ok(())
}

/// An answer that is not JSON fails its call at once with an upstream error, rather than
/// leaving it to the call timeout; the process serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateless_answer_that_is_not_json_fails_its_call_at_once() -> anyhow::Result<()> {
    let state = tempfile::tempdir()?;
    let (relay, agent) = stack(relay(), state.path()).await?;
    let key = relay.client_key().await?;
    let broken = tokio::time::timeout(
        Duration::from_secs(20),
        call(&relay, &key, "broken", json!({})),
    )
    .await??;
    let error = &answer(&broken)["error"];
    assert_eq!(error["code"], -32012, "{broken}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{broken}"
    );
    let after = call(&relay, &key, "whoami", json!({ "n": 5 })).await?;
    let pids = lines(state.path(), "pids");
    assert_eq!(
        answer(&after)["result"]["content"][0]["text"],
        format!("{} 5", pids[0]),
        "the same process answers: {after}"
    );
    agent.stop().await;
    relay.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_requests_share_one_process_per_server() -> anyhow::Result<()> {
    const CLIENTS: usize = 20;
    let state = tempfile::tempdir()?;
    let (relay, agent) = stack(relay(), state.path()).await?;
    let key = relay.client_key().await?;

    // Many concurrent clients, one process; each gets its own answer and progress.
    let calls = (0..CLIENTS).map(|n| call(&relay, &key, "whoami", json!({ "n": n })));
    let responses = futures_util::future::join_all(calls).await;
    let pids = lines(state.path(), "pids");
    assert_eq!(
        pids.len(),
        1,
        "one process for all stateless requests: {pids:?}"
    );
    // The burst found the server's era unknown: one probe, which all of them waited for.
    assert_eq!(
        lines(state.path(), "discovered").len(),
        1,
        "one era probe for a burst of {CLIENTS} requests"
    );
    for (n, response) in responses.into_iter().enumerate() {
        let response = response?;
        let answer = answer(&response);
        assert_eq!(answer["id"], 1, "the client's own id: {response}");
        let text = answer["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or("");
        assert_eq!(text, format!("{} {n}", pids[0]), "{response}");
        let progresses: Vec<&Value> = response["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["method"] == "notifications/progress")
            .collect();
        assert_eq!(progresses.len(), 1, "its own progress, once: {response}");
        for progress in progresses {
            assert_eq!(progress["params"]["progressToken"], "tok", "{response}");
            assert_eq!(progress["params"]["message"], n.to_string(), "{response}");
        }
    }

    // A client that takes JSON only gets its answer alone, as JSON: the progress the
    // server sends first has no stream to go on.
    let json_only = relay.mcp_client(&key, "site", "shared");
    let response = call_with(
        json_only,
        "whoami",
        json!({ "n": "json" }),
        "application/json",
    )
    .await?;
    assert_eq!(response["status"], 200, "{response}");
    assert_eq!(response["content_type"], "application/json", "{response}");
    let messages = response["messages"].as_array().map(Vec::len);
    assert_eq!(messages, Some(1), "{response}");
    assert_eq!(
        answer(&response)["result"]["content"][0]["text"],
        format!("{} json", pids[0]),
        "{response}"
    );

    // A client that leaves mid-call has its request cancelled in the process.
    let leaving = tokio::time::timeout(
        Duration::from_secs(3),
        call(&relay, &key, "slow", json!({})),
    )
    .await;
    assert!(leaving.is_err(), "slow is never answered");
    wait_for("the process is asked to cancel the abandoned call", || {
        !lines(state.path(), "cancelled").is_empty()
    })
    .await;
    let cancelled = lines(state.path(), "cancelled");
    assert!(cancelled[0].starts_with("\"o:"), "{cancelled:?}");

    // A crash fails the calls in flight, and only those; the next call gets a new process.
    let slow = tokio::spawn(call_with(
        relay.mcp_client(&key, "site", "shared"),
        "slow",
        json!({}),
        SSE_OR_JSON,
    ));
    wait_for("the second slow call reaches the process", || {
        lines(state.path(), "started")
            .iter()
            .filter(|l| *l == "slow")
            .count()
            == 2
    })
    .await;
    let crashed = call(&relay, &key, "crash", json!({})).await?;
    assert_eq!(answer(&crashed)["error"]["code"], -32012, "{crashed}");
    let slow = slow.await??;
    assert_eq!(answer(&slow)["error"]["code"], -32012, "{slow}");
    let after = call(&relay, &key, "whoami", json!({ "n": 99 })).await?;
    let pids = lines(state.path(), "pids");
    assert_eq!(pids.len(), 2, "restarted once: {pids:?}");
    assert_eq!(
        answer(&after)["result"]["content"][0]["text"],
        format!("{} 99", pids[1]),
        "{after}"
    );

    agent.stop().await;
    relay.stop().await;
    Ok(())
}
