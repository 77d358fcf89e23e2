//! A `subscriptions/listen` client for tests: the TypeScript SDK v2 client of
//! `tests/clients-2026/listen.mjs` as a child process, read one event at a time, and a raw
//! listen request for asserting on refusals.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

use crate::{McpResponse, TestRelay, conformance::node22, workspace_root};

/// A running listen client; killed when dropped.
#[derive(Debug)]
pub struct ListenClient {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl ListenClient {
    /// Starts the client on `url` with `key`, listening with `filter`.
    pub fn spawn(relay: &TestRelay, key: &str, url: &str, filter: &Value) -> anyhow::Result<Self> {
        let mut child = tokio::process::Command::new(node22())
            .arg(workspace_root().join("tests/clients-2026/listen.mjs"))
            .env("OUTPOST_URL", url)
            .env("OUTPOST_KEY", key)
            .env("NODE_EXTRA_CA_CERTS", &relay.state.certs.ca)
            .env("FILTER", filter.to_string())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        Ok(Self {
            child,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// Starts the client as [`ListenClient::spawn`] does and waits for its
    /// acknowledgement; returns the client and the honored filter.
    pub async fn open(
        relay: &TestRelay,
        key: &str,
        url: &str,
        filter: &Value,
    ) -> anyhow::Result<(Self, Value)> {
        let mut client = Self::spawn(relay, key, url, filter)?;
        let event = client.next(ACK_WITHIN).await?;
        let acked = event
            .get("acked")
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("not acknowledged: {event}"))?;
        Ok((client, acked))
    }

    /// The next `notifications/resources/updated`; it must be for `uri`.
    pub async fn update_of(&mut self, uri: &str) -> anyhow::Result<Value> {
        let updated = self
            .next_of("notifications/resources/updated", EVENT_WITHIN)
            .await?;
        anyhow::ensure!(updated["params"]["uri"] == uri, "{updated}");
        Ok(updated)
    }

    /// The next event the client printed, within `within`.
    pub async fn next(&mut self, within: Duration) -> anyhow::Result<Value> {
        let line = tokio::time::timeout(within, self.lines.next_line())
            .await
            .map_err(|_| anyhow::anyhow!("no listen event within {within:?}"))??
            .ok_or_else(|| anyhow::anyhow!("the listen client exited"))?;
        Ok(serde_json::from_str(&line)?)
    }

    /// The next event whose `method` is `method` (others are skipped), within `within`.
    pub async fn next_of(&mut self, method: &str, within: Duration) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = self.next(left).await?;
            if event["method"] == method {
                return Ok(event);
            }
        }
    }

    /// Stops the client, which drops its listen stream.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

/// How long the client may take to start and be acknowledged.
const ACK_WITHIN: Duration = Duration::from_secs(30);
/// How long an expected notification may take.
const EVENT_WITHIN: Duration = Duration::from_secs(15);

/// POSTs one stateless `subscriptions/listen` with `filter` to `url` and reads the whole
/// answer: for refusals only (an accepted listen does not end).
pub async fn raw_listen(
    relay: &TestRelay,
    key: &str,
    url: &str,
    filter: Value,
) -> anyhow::Result<McpResponse> {
    let client = crate::McpClient::new(relay.http_client(), url.to_owned(), key);
    let body = json!({"jsonrpc": "2.0", "id": "raw-listen", "method": "subscriptions/listen",
        "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"},
            "notifications": filter}});
    client
        .post_raw(
            body.to_string().into_bytes(),
            &[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "subscriptions/listen"),
            ],
        )
        .await
}
