//! A client whose connection breaks in the middle of a long call loses nothing. An
//! official SDK client (Python 1.x, TypeScript v1) calls server-everything's long-running
//! tool (over stdio, behind a real agent) through a proxy that breaks every open
//! connection after the second progress notification. The SDK comes back with `GET` and
//! `Last-Event-ID`; the relay, which kept collecting the call's messages while nobody
//! listened, replays what the client missed and goes on live: every progress notification
//! and the result arrive, in order, once each. Both clients speak 2025-11-25, so they get
//! the priming event first and handle it.

use std::path::PathBuf;

use outpost_test_support::{
    CutProxy, Process, agent, find_program, python, relay, tools_dir, workspace_root,
};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_resumes_a_call_whose_connection_broke() -> anyhow::Result<()> {
    let script = workspace_root().join("test-support/python/resume_client.py");
    cut_mid_call_and_check(python(), script).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_sdk_resumes_a_call_whose_connection_broke() -> anyhow::Result<()> {
    let script = workspace_root().join("test-support/node/resume_client.mjs");
    cut_mid_call_and_check(find_program("node"), script).await
}

/// Runs `script` with `interpreter` against the relay through a [`CutProxy`], cuts after
/// the second progress notification, and checks the client's report.
async fn cut_mid_call_and_check(interpreter: PathBuf, script: PathBuf) -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let agent = agent(&relay, "laptop")
        .server_everything("everything")
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let proxy = CutProxy::start(relay.addr).await?;
    let url = format!("https://localhost:{}/mcp/laptop/everything", proxy.port());
    let ca = relay.state.certs.ca.to_string_lossy().into_owned();
    let sdk = tools_dir().join("node_modules/@modelcontextprotocol/sdk");
    let mut client = Process::spawn(
        &interpreter,
        &[script.to_str().unwrap()],
        &[
            ("OUTPOST_URL", &url),
            ("OUTPOST_KEY", &key),
            ("OUTPOST_CA", &ca),
            ("NODE_EXTRA_CA_CERTS", &ca),
            ("MCP_SDK_DIR", sdk.to_str().unwrap()),
            ("STEPS", &STEPS.to_string()),
            // One progress notification a second: the clients wait about a second to
            // reconnect, so at least one arrives while they are away.
            ("DURATION", &STEPS.to_string()),
        ],
    )?;

    client.wait_for("progress 2").await?;
    let connections = proxy.accepted();
    proxy.cut();
    let code = client.wait().await?;
    let output = client.output();
    assert_eq!(code, Some(0), "the client failed:\n{output}");
    assert!(
        proxy.accepted() > connections,
        "the client came back on a new connection"
    );
    let report: Value = serde_json::from_str(
        output
            .lines()
            .rev()
            .find(|line| line.starts_with('{'))
            .ok_or_else(|| anyhow::anyhow!("no report in:\n{output}"))?,
    )?;
    assert_eq!(report["protocol_version"], "2025-11-25", "{report}");
    let progress: Vec<f64> = report["progress"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("no progress in {report}"))?
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    let expected: Vec<f64> = (1..=STEPS).map(f64::from).collect();
    assert_eq!(
        progress, expected,
        "every progress notification once, in order"
    );
    assert_eq!(report["is_error"], false, "{report}");
    assert!(
        report["result"]
            .as_str()
            .is_some_and(|text| text.contains("Long running operation completed")),
        "{report}"
    );

    agent.stop().await;
    relay.stop().await;
    Ok(())
}

/// Progress steps of the call, one a second.
const STEPS: u32 = 6;
